"""Named floating-point formats (the names ml_dtypes and torch use).

Every preset uses the :class:`FloatingPoint` defaults apart from its layout, so it saturates:
a finite value beyond ``max`` becomes ±max, as ``float_quantize`` in QPyTorch does, and
``quantize(x, float16)`` equals ``float_quantize(x, 5, 10, "nearest")``. With saturation off
(``dataclasses.replace(float16, saturate=False)``) nearest rounding is bit-identical to the
torch cast (``x.half()``, ``x.bfloat16()``) or the ml_dtypes type of the same name, overflow
included. ±Inf inputs stay ±Inf in formats with Inf either way.

>>> float8_e4m3fn.max, float8_e4m3.max, float4_e2m1fn.max
(448.0, 240.0, 6.0)
"""

from __future__ import annotations

from qtorch.formats.floating import FloatingPoint

__all__ = [
    "bfloat16",
    "float4_e2m1fn",
    "float6_e2m3fn",
    "float6_e3m2fn",
    "float8_e4m3",
    "float8_e4m3fn",
    "float8_e5m2",
    "float16",
    "tf32",
]

#: IEEE 754 binary16 (``torch.float16``): max 65504.
float16 = FloatingPoint(5, 10)
#: bfloat16 (``torch.bfloat16``): float32's range with 7 fraction bits.
bfloat16 = FloatingPoint(8, 7)
#: NVIDIA TensorFloat-32: float32's range with float16's 10 fraction bits.
tf32 = FloatingPoint(8, 10)
#: OCP FP8 E5M2 (IEEE-like, with ±Inf and NaN): max 57344.
float8_e5m2 = FloatingPoint(5, 2)
#: IEEE-like FP8 E4M3 with ±Inf and NaN (ml_dtypes ``float8_e4m3``): max 240.
float8_e4m3 = FloatingPoint(4, 3)
#: OCP FP8 E4M3 (no Inf; only the all-ones codes are NaN): max 448.
float8_e4m3fn = FloatingPoint(4, 3, has_inf=False)
#: OCP FP6 E3M2 (no Inf, no NaN): max 28.
float6_e3m2fn = FloatingPoint(3, 2, has_inf=False, has_nan=False)
#: OCP FP6 E2M3 (no Inf, no NaN): max 7.5.
float6_e2m3fn = FloatingPoint(2, 3, has_inf=False, has_nan=False)
#: OCP FP4 E2M1 (no Inf, no NaN): max 6.
float4_e2m1fn = FloatingPoint(2, 1, has_inf=False, has_nan=False)
