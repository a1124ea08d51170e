"""Block scaling: per-block maxima, E8M0 shared exponents, and scaled element rounding.

Pure tensor functions for the OCP Microscaling (MX) formats and NVFP4. A *block* is
``block_size`` consecutive elements along one dimension ``dim``; when the length of ``dim`` is
not a multiple of ``block_size`` the last block is shorter (it is padded with zeros, which
never change a block maximum, and the padding is dropped again). Per-block tensors have x's
shape with ``dim`` shortened to the number of blocks, ``ceil(n / block_size)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from qtorch.kernels.bits import exponent, ldexp
from qtorch.rounding import Rounding

#: E8M0 (the MX scale): value 2**(code - 127) for codes 0..254; code 255 is NaN.
E8M0_BIAS = 127
E8M0_EMIN = -127
E8M0_EMAX = 127
E8M0_NAN = 255

ElementQuantizer = Callable[[torch.Tensor, Rounding, "torch.Tensor | None"], torch.Tensor]


def normalize_dim(dim: int, ndim: int, caller: str) -> int:
    """``dim`` as a non-negative index into a tensor with ``ndim`` dimensions (0-d counts as 1).

    Raises ``ValueError`` naming ``caller`` when ``dim`` is out of range.
    """
    size = max(ndim, 1)
    if not -size <= dim < size:
        raise ValueError(
            f"{caller}: dim must be in {-size}..{size - 1} for a tensor with {ndim} "
            f"dimension(s), got {dim}"
        )
    return dim % size


def block_amax(x: torch.Tensor, block_size: int, dim: int) -> torch.Tensor:
    """The largest magnitude of each block along ``dim`` (NaN if the block holds a NaN).

    ``dim`` must be non-negative and x at least 1-d and non-empty.
    """
    moved = x.abs().movedim(dim, -1)
    n = moved.shape[-1]
    blocks = -(-n // block_size)
    pad = blocks * block_size - n
    if pad:
        moved = torch.nn.functional.pad(moved, (0, pad))
    amax = moved.reshape(*moved.shape[:-1], blocks, block_size).amax(dim=-1)
    return amax.movedim(-1, dim)


def expand_blocks(per_block: torch.Tensor, block_size: int, dim: int, length: int) -> torch.Tensor:
    """Repeat each per-block entry ``block_size`` times along ``dim`` and cut to ``length``."""
    expanded = per_block.repeat_interleave(block_size, dim=dim)
    return expanded.narrow(dim, 0, length)


def shared_exponent(
    amax: torch.Tensor, elem_max: float, round_up: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The E8M0 scale exponents of blocks with maxima ``amax``, and which blocks are NaN.

    Spec rule (``round_up=False``, OCP MX v1.0 section 6.3):
    ``floor(log2(amax)) - emax_elem`` with ``emax_elem = floor(log2(elem_max))``. With
    ``round_up=True`` the exponent is raised by one where the spec rule would let the block
    maximum exceed ``elem_max`` (so it never saturates): ``ceil(log2(amax / elem_max))``.
    Both are clamped to -127..127; an all-zero block gets -127. A block whose maximum is
    NaN or ±Inf is flagged (its exponent is returned as 0). Returns int32 exponents and the
    bool NaN flags.
    """
    emax_elem = math.frexp(elem_max)[1] - 1
    special = ~torch.isfinite(amax)
    e = exponent(amax) - emax_elem
    if round_up:
        safe = torch.where(special, 0.0, amax)
        e = e + (ldexp(safe, -e) > elem_max).to(e.dtype)
    e = e.clamp(E8M0_EMIN, E8M0_EMAX)
    return torch.where(special, 0, e), special


def scale_codes(e: torch.Tensor, nan: torch.Tensor) -> torch.Tensor:
    """E8M0 codes (int32, 0..255) of the exponents ``e`` with NaN flags ``nan``."""
    return torch.where(nan, E8M0_NAN, e + E8M0_BIAS).to(torch.int32)


def scale_exponents(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exponents (int32) and NaN flags of E8M0 codes (their low 8 bits are read)."""
    codes = codes.to(torch.int32) & 0xFF
    nan = codes == E8M0_NAN
    return torch.where(nan, 0, codes - E8M0_BIAS), nan


def quantize_mx(
    x: torch.Tensor,
    block_size: int,
    dim: int,
    elem_max: float,
    round_up: bool,
    quantize_element: ElementQuantizer,
    rounding: Rounding,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """x rounded to an MX format: shared E8M0 scale per block, elements saturating.

    ``quantize_element(y, rounding, noise)`` rounds the scaled elements y = x / 2**e (exact)
    and must saturate at ±``elem_max``; the result is element * 2**e (exact). Blocks whose
    maximum is NaN or ±Inf become NaN. ``dim`` must be valid for x (see
    :func:`normalize_dim`); empty and 0-d tensors work.
    """
    if x.numel() == 0:
        return x.clone()
    work = x.reshape(1) if x.dim() == 0 else x
    e, nan = shared_exponent(block_amax(work, block_size, dim), elem_max, round_up)
    n = work.shape[dim]
    e_full = expand_blocks(e, block_size, dim, n)
    nan_full = expand_blocks(nan, block_size, dim, n)
    scaled = ldexp(work, -e_full)
    if noise is not None:
        noise = noise.reshape(work.shape)
    q = ldexp(quantize_element(scaled, rounding, noise), e_full)
    q = torch.where(nan_full, math.nan, q)
    return q.reshape(x.shape)


def scaled_elements(
    x: torch.Tensor, block_size: int, dim: int, elem_max: float, round_up: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """x / 2**e per block (zero in NaN blocks) and the per-block E8M0 codes, for encoding.

    x must be at least 1-d; ``dim`` non-negative.
    """
    e, nan = shared_exponent(block_amax(x, block_size, dim), elem_max, round_up)
    n = x.shape[dim]
    scaled = ldexp(x, -expand_blocks(e, block_size, dim, n))
    scaled = torch.where(expand_blocks(nan, block_size, dim, n), 0.0, scaled)
    return scaled, scale_codes(e, nan)


def apply_scale_codes(
    elements: torch.Tensor, codes: torch.Tensor, block_size: int, dim: int
) -> torch.Tensor:
    """elements * 2**(code - 127) per block; every element of a NaN-scale block is NaN."""
    e, nan = scale_exponents(codes)
    n = elements.shape[dim]
    q = ldexp(elements, expand_blocks(e, block_size, dim, n))
    return torch.where(expand_blocks(nan, block_size, dim, n), math.nan, q)


# -- NVFP4: E2M1 elements, an E4M3 scale per block, an optional float32 tensor scale ---------

#: Largest E2M1 element (6) times largest E4M3 scale (448): the tensor scale's divisor.
NVFP4_RANGE = 6.0 * 448.0
#: Smallest positive E4M3 value: the floor of a block scale, so no block divides by zero.
E4M3_MIN_POSITIVE = 2.0**-9


def dynamic_tensor_scale(x: torch.Tensor) -> torch.Tensor:
    """NVIDIA's per-tensor decode scale: (largest finite |x|) / (6 * 448), 1 if that is 0.

    Computed in x's dtype (a 0-d tensor); ±Inf and NaN are left out of the maximum.
    """
    finite = torch.where(torch.isfinite(x), x.abs(), 0.0)
    g = finite.amax() / NVFP4_RANGE if x.numel() else torch.zeros((), dtype=x.dtype)
    return torch.where(g > 0, g, 1.0)


def nvfp4_block_scales(
    amax: torch.Tensor,
    tensor_scale: torch.Tensor | float | None,
    quantize_scale: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block scales (E4M3 values, in amax's dtype) and NaN flags, from block maxima.

    ``s = E4M3(amax / 6)``, or ``E4M3((amax / 6) / tensor_scale)`` with a tensor scale, each
    division rounded in the working dtype and ``quantize_scale`` rounding to nearest E4M3
    with saturation at 448; a result below the smallest positive E4M3 (2**-9) is raised to
    it. Blocks whose maximum is NaN or ±Inf are flagged (scale NaN).
    """
    special = ~torch.isfinite(amax)
    raw = torch.where(special, 0.0, amax) / 6.0
    if tensor_scale is not None:
        raw = raw / tensor_scale
    s = quantize_scale(raw).clamp(min=E4M3_MIN_POSITIVE)
    return torch.where(special, math.nan, s), special


def quantize_nvfp4(
    x: torch.Tensor,
    block_size: int,
    dim: int,
    tensor_scale: torch.Tensor | float | None,
    quantize_scale: Callable[[torch.Tensor], torch.Tensor],
    quantize_element: ElementQuantizer,
    rounding: Rounding,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """x rounded to NVFP4: e = E2M1(x / d), result e * d with d = s (or s * tensor_scale).

    ``d`` and ``x / d`` are rounded in the working dtype, as NVIDIA's and torchao's reference
    code do; without a tensor scale both are exact. NaN/±Inf blocks become NaN.
    """
    if x.numel() == 0:
        return x.clone()
    work = x.reshape(1) if x.dim() == 0 else x
    s, nan = nvfp4_block_scales(block_amax(work, block_size, dim), tensor_scale, quantize_scale)
    d = s if tensor_scale is None else s * tensor_scale
    n = work.shape[dim]
    d_full = expand_blocks(d, block_size, dim, n)
    nan_full = expand_blocks(nan, block_size, dim, n)
    d_full = torch.where(nan_full, 1.0, d_full)
    if noise is not None:
        noise = noise.reshape(work.shape)
    q = quantize_element(work / d_full, rounding, noise) * d_full
    q = torch.where(nan_full, math.nan, q)
    return q.reshape(x.shape)
