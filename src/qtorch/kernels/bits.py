"""Bit-level helpers on IEEE binary32 / binary64 tensors.

All functions are branch-free elementwise tensor code that works for float32 (int32 views)
and float64 (int64 views), on any device, and under ``torch.compile``. They use only
operations that Inductor's CPU code generator vectorizes: bit views, shifts, masks,
comparisons, ``torch.where`` and float arithmetic; not integer division, ``torch.signbit``
or ``torch.isnan``/``isinf``, which it compiles to scalar loops (several times slower).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FloatLayout:
    """The bit layout of a working float dtype."""

    dtype: torch.dtype
    int_dtype: torch.dtype
    mantissa_bits: int
    exponent_bits: int

    @property
    def bias(self) -> int:
        return (1 << (self.exponent_bits - 1)) - 1

    @property
    def min_normal_exp(self) -> int:
        return 1 - self.bias

    @property
    def magnitude_mask(self) -> int:
        """The bits of a pattern other than the sign bit."""
        return (1 << (self.mantissa_bits + self.exponent_bits)) - 1


FLOAT32 = FloatLayout(torch.float32, torch.int32, 23, 8)
FLOAT64 = FloatLayout(torch.float64, torch.int64, 52, 11)


def layout(dtype: torch.dtype) -> FloatLayout:
    """Layout of a working dtype (float32 or float64)."""
    if dtype == torch.float32:
        return FLOAT32
    if dtype == torch.float64:
        return FLOAT64
    raise TypeError(f"working dtype must be float32 or float64, got {dtype}")


def pattern(value: float, dtype: torch.dtype) -> int:
    """The bit pattern of ``value`` in ``dtype`` (float32 or float64), as a signed integer:
    the value of ``torch.tensor(value, dtype=dtype).view(int_dtype)``, without a tensor.
    ``value`` must be exact in dtype (NaN and ±Inf included)."""
    lay = layout(dtype)
    codes = ("<f", "<i") if lay is FLOAT32 else ("<d", "<q")
    packed = struct.pack(codes[0], value)
    (stored,) = struct.unpack(codes[0], packed)
    if stored != value and value == value:
        raise ValueError(f"{value!r} is not exact in {dtype}")
    (bits,) = struct.unpack(codes[1], packed)
    return int(bits)


def signbit(x: torch.Tensor) -> torch.Tensor:
    """``torch.signbit(x)``: True where the sign bit is set (-0.0 and negative NaN included).

    Read from the bit pattern, which Inductor vectorizes (it does not vectorize signbit).
    """
    return x.view(layout(x.dtype).int_dtype) < 0


def copysign(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``torch.copysign(v, x)``: |v| with the sign bit of x, for every v and x (NaN too).

    Compiled without an autograd graph to build, it is :func:`flip_sign` of ``|v|``.
    Inductor (torch 2.13) compiles ``torch.copysign`` on the CPU to a call of
    ``Sleef_copysignf16`` per vector of 16, which spills every live vector register around
    the call; and a negation would lose the sign of zero on CUDA (see :func:`flip_sign`).
    Eagerly (or when a graph is built, where copysign keeps x in it) it is
    ``torch.copysign``: one operation.
    """
    if compiled_without_graph(v, x):
        return flip_sign(v.abs(), x)
    return torch.copysign(v, x)


def compiled_without_graph(*tensors: torch.Tensor) -> bool:
    """Whether this code is being compiled and no autograd graph is built for ``tensors``.

    There, kernels may take bit-level forms that the compiler fuses better; eagerly, or
    where the result must join an autograd graph, they keep plain torch operations.
    """
    if not torch.compiler.is_compiling():
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def flip_sign(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """v with its sign bit flipped where x's sign bit is set: ``where(signbit(x), -v, v)``.

    Zeros and NaN flip too, on every backend. x may be the int view of the sign's source
    (its own sign bit is read). The form depends on where it runs, the bits do not:

    * compiled for the CPU: that ``where`` (the bit form cost codebook stochastic 2-3 %, A/B);
    * compiled for other devices: the bit patterns (an AND and an XOR), because Triton (3.6)
      compiles unary minus on floats as ``0 - v``, which turns +0 into +0: the compiled CUDA
      kernels gave +0 where the eager path gave -0 (found by benchmarks/gpu_check.py);
    * eager, building an autograd graph for v: the ``where`` (it keeps v in the graph, and
      eager negation flips the sign bit on every device);
    * eager otherwise: the bit patterns. An eager boolean select costs far more than two
      integer operations on the CPU (2**18 float32, 2 threads: 595 against 48 us).
    """
    lay = layout(v.dtype)
    bits = x if x.dtype == lay.int_dtype else x.view(lay.int_dtype)
    if torch.compiler.is_compiling():
        select = v.device.type == "cpu"
    else:
        select = v.requires_grad and torch.is_grad_enabled()
    if select:
        return torch.where(bits < 0, -v, v)
    return flip_sign_bits(v, bits)


def flip_sign_bits(v: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """:func:`flip_sign` on the bit patterns (``bits``: the int view of the sign's source)."""
    lay = layout(v.dtype)
    sign = -(1 << (lay.mantissa_bits + lay.exponent_bits))  # the sign bit, as a signed int
    return (v.view(lay.int_dtype) ^ (bits & sign)).view(v.dtype)


def isnan(x: torch.Tensor) -> torch.Tensor:
    """``torch.isnan(x)``, written as ``x != x`` (which Inductor vectorizes)."""
    return x != x


def mul_pow2(x: torch.Tensor, n: int) -> torch.Tensor:
    """x * 2**n for a Python int n, by constant multiplications.

    Exact whenever the exact product is representable. 2**n is applied in two halves when it
    lies outside the dtype's normal range (|n| up to twice the bias), so that no constant is
    subnormal or infinite; the intermediate product then lies between x and the result.
    """
    lay = layout(x.dtype)
    if lay.min_normal_exp <= n <= lay.bias:
        return x * 2.0**n
    half = n >> 1
    return x * 2.0**half * 2.0 ** (n - half)


def exponent(x: torch.Tensor) -> torch.Tensor:
    """floor(log2(|x|)) as an int32 tensor, exact for every finite nonzero x.

    Subnormal inputs are normalised first (an exact power-of-two scaling). For ±0 the result
    is ``min_normal_exp - mantissa_bits - 2`` (below every nonzero value); for ±Inf and NaN it
    is ``bias + 1``.
    """
    lay = layout(x.dtype)
    shift = lay.mantissa_bits + 1
    small = x.abs() < 2.0**lay.min_normal_exp
    xs = torch.where(small, x * 2.0**shift, x)
    field = (xs.view(lay.int_dtype) >> lay.mantissa_bits) & ((1 << lay.exponent_bits) - 1)
    e = field - lay.bias - small.to(lay.int_dtype) * shift
    return e.to(torch.int32)


def pow2(e: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """2**e in ``dtype``, exact; ``e`` is clamped to the dtype's normal exponent range."""
    lay = layout(dtype)
    e = e.to(lay.int_dtype).clamp(lay.min_normal_exp, lay.bias)
    return ((e + lay.bias) << lay.mantissa_bits).view(dtype)


def ldexp(x: torch.Tensor, e: torch.Tensor | int) -> torch.Tensor:
    """x * 2**e, exact whenever the result and x * 2**(e // 2) are representable.

    The power of two is applied in two halves so that e itself may lie outside the dtype's
    exponent range (|e| up to twice the bias), as when a float32 subnormal is scaled to an
    integer. ±Inf and NaN pass through; overflow gives ±Inf.
    """
    if isinstance(e, int):
        e = torch.tensor(e, dtype=torch.int32, device=x.device)
    e1 = e >> 1  # floor(e / 2); a shift vectorizes where integer division does not
    return x * pow2(e1, x.dtype) * pow2(e - e1, x.dtype)
