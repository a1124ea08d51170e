"""Posit rounding on float bit patterns: pure tensor code of plain ints.

The key identity: for a finite positive float y with exponent E = floor(log2 y) and F stored
fraction bits, the integer

    ef = E * 2**F + fraction          (the float's bit pattern less the exponent bias)

splits, for a posit with es exponent bits, as ``ef = k * 2**(es + F) + tail``: the high part
``k = ef >> (es + F)`` is the posit's regime value and the low ``es + F`` bits ``tail`` are the
posit's exponent field followed by the fraction, exactly the bits that follow the regime in
the posit's unbounded encoding. With P = nsize - 1 magnitude bits, a regime of length
R = k + 2 (k >= 0) or 1 - k (k < 0) leaves ``avail = P - R`` bits for the tail, so rounding
the encoding to P bits is rounding ``ef`` to a multiple of ``2**d`` with
``d = es + F - avail``: a carry out of the tail moves into the regime exactly as the next
posit code does. Ties go to the even code: the code's last bit is bit d of ``ef``, except when
no tail bit survives (avail <= 0), where it is the regime's terminating bit (1 for k < 0).

Every posit of at most 32 bits and es <= 4 lies in float64's normal range. For float32
inputs the same holds when 2**es * (nsize - 2) <= 126 ("narrow" formats: no float32
subnormal needs normalising, they all lie below minpos). Wider formats (es 3 with nsize >= 18,
es 4 with nsize >= 10) normalise float32 subnormals and clamp results to the posits float32
holds; see :func:`working_bounds`.
"""

from __future__ import annotations

import torch

from qtorch.kernels.bits import (
    FLOAT32,
    FLOAT64,
    FloatLayout,
    compiled_without_graph,
    copysign,
    exponent,
    layout,
)
from qtorch.rounding import Rounding


def fits_normal_range(nsize: int, es: int, lay: FloatLayout) -> bool:
    """Whether minpos and maxpos of posit<nsize, es> are normal numbers of the layout."""
    return (1 << es) * (nsize - 2) <= lay.bias - 1


def _step_exp(ef: int, nsize: int, es: int, frac_bits: int) -> int:
    """The rounding step exponent d at ``ef`` (Python ints; mirrors the tensor code)."""
    k = ef >> (es + frac_bits)
    regime = k + 2 if k >= 0 else 1 - k
    return min(max(es + frac_bits - (nsize - 1 - regime), 0), es + frac_bits)


def working_bounds(nsize: int, es: int, lay: FloatLayout) -> tuple[int, int]:
    """``ef`` of the smallest and largest positive posit that the working dtype holds exactly.

    That is minpos and maxpos, except for float32 with the wide formats, where it is the
    smallest posit >= 2**-149 and the largest posit <= float32 max (both float32 numbers).
    """
    scale = (1 << es) * (nsize - 2)
    lo, hi = -scale << lay.mantissa_bits, scale << lay.mantissa_bits
    smallest = (lay.min_normal_exp - lay.mantissa_bits) << lay.mantissa_bits
    largest = ((lay.bias + 1) << lay.mantissa_bits) - 1
    if lo < smallest:
        d = _step_exp(smallest, nsize, es, lay.mantissa_bits)
        lo = -((-smallest) >> d << d)  # round up to the posit grid
    if hi > largest:
        d = _step_exp(largest, nsize, es, lay.mantissa_bits)
        hi = largest >> d << d  # round down to the posit grid
    return lo, hi


def abs_bits(x: torch.Tensor) -> torch.Tensor:
    """The bit pattern of |x| as an integer (int32 for float32, int64 for float64)."""
    lay = layout(x.dtype)
    return x.view(lay.int_dtype) & ((1 << (lay.mantissa_bits + lay.exponent_bits)) - 1)


def magnitude_ef(y: torch.Tensor, normalise: bool) -> torch.Tensor:
    """``ef`` of |y| (int32 for float32, int64 for float64).

    Without ``normalise`` subnormals (and zero) get an ``ef`` below every normal number, which
    is all a narrow format needs (they saturate to minpos). ±Inf and NaN give an ``ef`` above
    every finite number.
    """
    lay = layout(y.dtype)
    if not normalise:
        return abs_bits(y).sub_(lay.bias << lay.mantissa_bits)
    shift = lay.mantissa_bits + 1
    a = y.abs()
    small = a < 2.0**lay.min_normal_exp
    a = torch.where(small, a * 2.0**shift, a)
    bias = small.to(lay.int_dtype) * shift + lay.bias
    return a.view(lay.int_dtype) - (bias << lay.mantissa_bits)


def ef_value(ef: torch.Tensor, dtype: torch.dtype, normalise: bool) -> torch.Tensor:
    """The positive float whose ``ef`` is given (inverse of :func:`magnitude_ef`).

    ``ef`` must belong to a normal number, or (with ``normalise``) to a subnormal one.
    """
    lay = layout(dtype)
    bits = ef.to(lay.int_dtype) + (lay.bias << lay.mantissa_bits)
    if not normalise:
        return bits.view(dtype)
    shift = lay.mantissa_bits + 1
    small = ef < (lay.min_normal_exp << lay.mantissa_bits)
    bits = torch.where(small, bits + (shift << lay.mantissa_bits), bits)
    return bits.view(dtype) * torch.where(small, 2.0**-shift, 1.0).to(dtype)


def _regime_run(ef: torch.Tensor, tail_bits: int) -> torch.Tensor:
    """R - 2 for the regime length R: k for k >= 0, -1 - k for k < 0 (k XOR its sign)."""
    k = ef >> tail_bits
    return k ^ (k >> (ef.element_size() * 8 - 1))


def step_exponent(ef: torch.Tensor, nsize: int, es: int, frac_bits: int) -> torch.Tensor:
    """d: the posit with ``ef`` in its regime keeps ``ef``'s bits above bit d (0..es+F)."""
    tail_bits = es + frac_bits
    return (_regime_run(ef, tail_bits) + (tail_bits + 2 - (nsize - 1))).clamp(0, tail_bits)


def round_ef_nearest(ef: torch.Tensor, nsize: int, es: int, frac_bits: int) -> torch.Tensor:
    """Round ``ef`` to the nearest posit on the encoding, ties to the even code (unclamped).

    Written with in-place updates of fresh temporaries (never of ``ef``): eager mode then
    allocates a few tensors instead of one per operation.
    """
    tail_bits = es + frac_bits
    sign_shift = ef.element_size() * 8 - 1
    run = ef >> tail_bits  # k, the regime value
    run ^= run >> sign_shift  # R - 2: k for k >= 0, -1 - k for k < 0
    offset = tail_bits + 2 - (nsize - 1)
    # run >= 0, so d >= offset: the lower clamp matters only for a negative offset
    d = (run + offset).clamp_max_(tail_bits)
    if offset < 0:
        d = d.clamp_min_(0)
    # The code's last kept bit is bit d of ef, except when no tail bit survives (d == es + F):
    # then it is the regime's terminating bit, 1 iff k < 0, while bit d of ef is k's low bit;
    # the two differ exactly when run is odd.
    flip = tail_bits - 1 - d
    flip >>= sign_shift  # all ones iff d == es + F
    flip &= run
    rounded = ef >> d
    rounded ^= flip
    rounded &= 1  # the last kept code bit
    step = 1 << d
    # Adding (step - 1 + lsb) // 2, then truncating to a multiple of step, rounds half to even.
    rounded += step
    rounded -= 1
    rounded >>= 1
    rounded += ef
    return rounded.bitwise_and_(step.neg_())


def round_posit(
    x: torch.Tensor,
    nsize: int,
    es: int,
    scale: float,
    rounding: Rounding,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """Round x (float32 or float64) to posit<nsize, es> after scaling: q(x * scale) / scale.

    Nearest rounds on the encoding with ties to the even code; stochastic picks the lower or
    upper neighbouring posit with probability linear in the value distance (round up when
    ``noise * (upper - lower) < |y| - lower``). Nonzero finite values saturate at ±minpos and
    ±maxpos (for wide formats in float32: at the posits nearest the float32 range ends), in
    both modes. ±0 gives +0; ±Inf and NaN give NaN. Results keep the input's sign.
    """
    lay = layout(x.dtype)
    frac_bits = lay.mantissa_bits
    normalise = not fits_normal_range(nsize, es, lay)
    lo, hi = working_bounds(nsize, es, lay)
    y = x * scale if scale != 1.0 else x
    ef = magnitude_ef(y, normalise)
    if rounding is Rounding.NEAREST:
        rounded = round_ef_nearest(ef, nsize, es, frac_bits).clamp_min_(lo).clamp_max_(hi)
        q = ef_value(rounded, x.dtype, normalise)
    elif rounding is Rounding.STOCHASTIC:
        if noise is None:
            raise ValueError("stochastic rounding needs noise")
        step = 1 << step_exponent(ef, nsize, es, frac_bits)
        lower_ef = ef & -step
        lower = ef_value(lower_ef.clamp(lo, hi), x.dtype, normalise)
        upper = ef_value((lower_ef + step).clamp(lo, hi), x.dtype, normalise)
        up = noise * (upper - lower) < y.abs() - lower
        q = torch.where(up, upper, lower)
    else:
        raise ValueError(f"posit rounding must be nearest or stochastic, got {rounding.value!r}")
    if scale != 1.0:
        q = q.div_(scale)  # q is a fresh tensor of magnitudes: in-place updates from here on
    return _signed_with_specials(q, x)


def _signed_with_specials(q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The magnitudes q (a fresh tensor, overwritten) with x's sign; +0 for ±0, NaN for ±Inf
    and NaN, all decided on x's own bits (x * scale may over- or underflow).

    Integer arithmetic where eager code would need boolean masks (a clamp turns "nonzero"
    and "special" into 0 or 1): eager comparisons, ``where`` and ``masked_fill`` build
    boolean tensors, which on the CPU cost 5-30 times an integer operation. The sign comes
    from :func:`~qtorch.kernels.bits.copysign` (``torch.copysign`` whenever an autograd
    graph is built, so an input that requires grad gets a result in its graph, as with every
    format), and adding +0 turns the -0 of a negative zero into +0. Compiled (without an
    autograd graph) it is two ``where`` and an OR of x's sign bit instead: the same bits,
    and no integer multiplications, which are slow vector instructions (A/B 0.89 posit(8,2)
    nearest, 4,194,304 float32, 2 threads).
    """
    lay = layout(x.dtype)
    bits = x.view(lay.int_dtype)
    magnitude = bits & lay.magnitude_mask
    infinity = ((1 << lay.exponent_bits) - 1) << lay.mantissa_bits
    quiet_nan = infinity | (1 << (lay.mantissa_bits - 1))
    if compiled_without_graph(x):
        # the same bits by comparisons and bit operations, which fuse into a few vector
        # instructions (the integer multiplications below are slow ones). ``>`` and not
        # ``>=``: GCC 12.2 swaps the blend of an inverted integer mask in AVX2 code built
        # with AVX-512 flags (qtorch.kernels.verify), and ATen's AVX2 ``>=`` is ``~(<)``.
        signed = torch.where(magnitude > infinity - 1, quiet_nan, q.view(lay.int_dtype))
        signed = signed | (bits & ~lay.magnitude_mask)
        return torch.where(magnitude == 0, 0, signed).view(x.dtype)
    nonzero = magnitude.clamp(max=1)
    special = magnitude.sub_(infinity - 1).clamp_min_(0).clamp_max_(1)  # (magnitude: unused)
    out = q.view(lay.int_dtype).mul_(nonzero)  # 0 for ±0; maxpos (< Inf) for specials
    out = out.clamp_min_(special.mul_(quiet_nan))  # NaN for specials (vmap: not out=, clamp_)
    return copysign(out.view(x.dtype), x) + 0.0  # not in place: copysign saves it


def encode_posit(x: torch.Tensor, nsize: int, es: int, scale: float) -> torch.Tensor:
    """nsize-bit two's-complement posit codes (int32) of x * scale rounded to nearest.

    Every code is exact (no working-dtype clamp); ±0 gives 0; ±Inf and NaN give NaR, the code
    -2**(nsize-1).
    """
    lay = layout(x.dtype)
    tail_bits = es + lay.mantissa_bits
    scale_exp = (1 << es) * (nsize - 2)
    p = nsize - 1
    y = x * scale if scale != 1.0 else x
    ef = magnitude_ef(y, normalise=True).to(torch.int64)
    ef = round_ef_nearest(ef, nsize, es, lay.mantissa_bits)
    ef = ef.clamp(-scale_exp << lay.mantissa_bits, scale_exp << lay.mantissa_bits)
    # Work with 52 fraction bits so that every tail bit of the code exists in ef.
    ef = ef << (52 - lay.mantissa_bits)
    tail_bits += 52 - lay.mantissa_bits
    k = ef >> tail_bits
    tail = ef & ((1 << tail_bits) - 1)
    avail = (p - torch.where(k >= 0, k + 2, 1 - k)).clamp(min=0)
    regime = torch.where(k >= 0, (1 << p) - (1 << (p - 1 - k).clamp(min=0)), 1 << (p - 1 + k))
    code = regime + (tail >> (tail_bits - avail))
    code = torch.where(torch.signbit(x), -code, code)  # x's sign: y may underflow to -0
    code = torch.where(x == 0, 0, code)
    code = torch.where(torch.isfinite(x), code, -(1 << p))
    return code.to(torch.int32)


def _highest_bit(t: torch.Tensor) -> torch.Tensor:
    """floor(log2(t)) of positive int64 t < 2**32 (via float32, corrected if it rounded up)."""
    e = exponent(t.to(torch.float32)).to(torch.int64).clamp(0, 32)
    return e - ((1 << e) > t).to(torch.int64)


def decode_posit(
    codes: torch.Tensor, nsize: int, es: int, scale: float, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Values / scale of nsize-bit posit codes (the low nsize bits of each integer), in dtype.

    0 gives +0 and NaR gives NaN. The values are built exactly in float32 when float32 holds
    every value of the format (and dtype is not float64), else in float64 (which holds every
    posit<=32, es<=4>), then cast to ``dtype``.
    """
    p = nsize - 1
    # The most fraction bits a posit has: n - 3 - es, just above or below 1.
    in_float32 = dtype != torch.float64 and (
        fits_normal_range(nsize, es, FLOAT32) and nsize - 3 - es <= FLOAT32.mantissa_bits
    )
    lay = FLOAT32 if in_float32 else FLOAT64
    tail_bits = es + lay.mantissa_bits
    c = codes.to(torch.int64) & ((1 << nsize) - 1)
    c = (c ^ (1 << p)) - (1 << p)  # sign-extend
    mag = c.abs()
    top = (mag >> (p - 1)) & 1
    # Run length of the regime: leading ones (top set) or zeros within the p magnitude bits.
    t = torch.where(top == 1, mag ^ ((1 << p) - 1), mag)
    run = p - 1 - torch.where(t > 0, _highest_bit(t.clamp(min=1)), -1)
    k = torch.where(top == 1, run - 1, -run)
    avail = (p - 1 - run).clamp(0, tail_bits)
    rest = mag & ((1 << avail) - 1)
    ef = (k.clamp(-p, p) << tail_bits) + (rest << (tail_bits - avail))
    value = ef_value(ef, lay.dtype, normalise=False)
    value = torch.where(c < 0, -value, value)
    if scale != 1.0:
        value = value / scale
    value = torch.where(c == 0, 0.0, value)
    return torch.where(c == -(1 << p), torch.nan, value).to(dtype)
