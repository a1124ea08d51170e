"""qtorch: exact simulation of low-precision number formats in PyTorch."""

from qtorch.formats.base import Format
from qtorch.formats.block import BlockFloatingPoint
from qtorch.formats.codebook import Codebook, nf4
from qtorch.formats.fixed import FixedPoint
from qtorch.formats.floating import FloatingPoint
from qtorch.formats.mx import (
    MX,
    ScaleRule,
    mxfp4_e2m1,
    mxfp6_e2m3,
    mxfp6_e3m2,
    mxfp8_e4m3,
    mxfp8_e5m2,
    mxint8,
)
from qtorch.formats.nvfp4 import NVFP4, nvfp4
from qtorch.formats.parse import format_from_string
from qtorch.formats.posit import Posit, Positbf
from qtorch.formats.presets import (
    bfloat16,
    float4_e2m1fn,
    float6_e2m3fn,
    float6_e3m2fn,
    float8_e4m3,
    float8_e4m3fn,
    float8_e5m2,
    float16,
    tf32,
)
from qtorch.kernel_mode import get_kernel_mode, kernel_mode, set_kernel_mode
from qtorch.nn.posit_activation import (
    PositSigmoidModule,
    PositTanhModule,
    PositTanhModuleEnhanced,
    RefTanhModule,
)
from qtorch.quant.quantizer import Quantizer, quantizer
from qtorch.quantize import quantize, quantize_
from qtorch.rounding import Rounding

__all__ = [
    "MX",
    "NVFP4",
    "BlockFloatingPoint",
    "Codebook",
    "FixedPoint",
    "FloatingPoint",
    "Format",
    "Posit",
    "PositSigmoidModule",
    "PositTanhModule",
    "PositTanhModuleEnhanced",
    "Positbf",
    "Quantizer",
    "RefTanhModule",
    "Rounding",
    "ScaleRule",
    "bfloat16",
    "float4_e2m1fn",
    "float6_e2m3fn",
    "float6_e3m2fn",
    "float8_e4m3",
    "float8_e4m3fn",
    "float8_e5m2",
    "float16",
    "format_from_string",
    "get_kernel_mode",
    "kernel_mode",
    "mxfp4_e2m1",
    "mxfp6_e2m3",
    "mxfp6_e3m2",
    "mxfp8_e4m3",
    "mxfp8_e5m2",
    "mxint8",
    "nf4",
    "nvfp4",
    "quantize",
    "quantize_",
    "quantizer",
    "set_kernel_mode",
    "tf32",
]
__version__ = "0.1.0"
