"""The QPyTorch / qtorch+ functional API: same names, parameters and defaults."""

from qtorch.quant.posit import (
    bfloat16_posit8_quantize,
    convert_to_posit,
    posit_quantize,
    posit_sigmoid,
    posit_tanh,
    posit_tanh_enhanced,
)
from qtorch.quant.qpytorch import block_quantize, fixed_point_quantize, float_quantize
from qtorch.quant.quantizer import Quantizer, quantizer
from qtorch.quant.table import (
    act_format_quantize,
    configurable_table_quantize,
    configurable_table_quantize_geomean,
    configurable_table_quantize_rounding_hint,
    new_format_quantize,
)

__all__: list[str] = [
    "Quantizer",
    "act_format_quantize",
    "bfloat16_posit8_quantize",
    "block_quantize",
    "configurable_table_quantize",
    "configurable_table_quantize_geomean",
    "configurable_table_quantize_rounding_hint",
    "convert_to_posit",
    "fixed_point_quantize",
    "float_quantize",
    "new_format_quantize",
    "posit_quantize",
    "posit_sigmoid",
    "posit_tanh",
    "posit_tanh_enhanced",
    "quantizer",
]
