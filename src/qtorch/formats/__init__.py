"""Number formats: one frozen dataclass per format family, and named presets."""

from qtorch.formats.base import Format
from qtorch.formats.block import BlockFloatingPoint
from qtorch.formats.codebook import Boundary, Codebook, nf4
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

__all__ = [
    "MX",
    "NVFP4",
    "BlockFloatingPoint",
    "Boundary",
    "Codebook",
    "FixedPoint",
    "FloatingPoint",
    "Format",
    "Posit",
    "Positbf",
    "ScaleRule",
    "bfloat16",
    "float4_e2m1fn",
    "float6_e2m3fn",
    "float6_e3m2fn",
    "float8_e4m3",
    "float8_e4m3fn",
    "float8_e5m2",
    "float16",
    "mxfp4_e2m1",
    "mxfp6_e2m3",
    "mxfp6_e3m2",
    "mxfp8_e4m3",
    "mxfp8_e5m2",
    "mxint8",
    "nf4",
    "nvfp4",
    "tf32",
]
