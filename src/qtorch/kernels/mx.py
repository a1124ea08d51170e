"""Block scaling: per-block maxima, E8M0 shared exponents, and scaled element rounding.

Pure tensor functions for the OCP Microscaling (MX) formats and NVFP4. A *block* is
``block_size`` consecutive elements along one dimension ``dim``; when the length of ``dim`` is
not a multiple of ``block_size`` the last block is shorter (it is padded with zeros, which
never change a block maximum, and the padding is dropped again). Per-block tensors have x's
shape with ``dim`` shortened to the number of blocks, ``ceil(n / block_size)``.

Speed (compiled path): the block maxima are taken on x with ``dim`` split into
``(n_blocks, block_size)`` (:func:`to_blocks`, a view unless padding is needed). For MX the
per-block factors are then computed once per block into a small buffer
(:func:`qtorch.kernels.per_block.stored`), and the element pass runs on the same split view,
reading one factor per block: a vectorized loop over each block's elements with no
per-element index arithmetic. (Computing the factors inside that loop instead recomputes
them for every vector of elements: A/B 1.15 for MX nearest; a single loop that also takes
each block's maximum measured 1.29.) NVFP4 does the same with its block scales. Its element
pass used to run on x with the scales repeated along ``dim`` (``repeat_interleave``); with a
symbolic length Inductor indexed them as ``(i // 16) % (n // 16)``, an integer division per
vector of 16 elements (A/B of the split view against that: 0.85 nearest, 0.88 stochastic,
4,194,304 float32, 2 threads, through ``qtorch.quantize``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from qtorch.kernels.bits import exponent, isnan, layout, ldexp, mul_pow2
from qtorch.kernels.block import whole_max
from qtorch.kernels.per_block import stored
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


def to_blocks(x: torch.Tensor, block_size: int, dim: int) -> torch.Tensor:
    """x with ``dim`` split into ``(n_blocks, block_size)``, zero-padded to whole blocks.

    A view of x when ``block_size`` divides the length of ``dim``, else a padded copy.
    ``dim`` must be non-negative and x at least 1-d.
    """
    short = x.shape[dim] % block_size
    if short:
        # F.pad lists (before, after) pairs from the last dimension backwards
        x = torch.nn.functional.pad(x, [0, 0] * (x.dim() - 1 - dim) + [0, block_size - short])
    return x.unflatten(dim, (x.shape[dim] // block_size, block_size))


def noise_layout(
    shape: Sequence[int], block_size: int, dim: int, caller: str
) -> tuple[tuple[int, ...], int | None]:
    """Where blocks run along the last dimension and fill it: the blocked shape and its rows.

    For :meth:`qtorch.formats.base.Format.noise_layout` of a format with blocks of
    ``block_size`` along ``dim`` (any valid index, see :func:`normalize_dim`):
    ``(shape with the last dimension split into (n_blocks, block_size), block_size)``, the
    layout of :func:`to_blocks`'s view, in which the element pass runs; otherwise
    ``(shape, None)``.
    """
    last = len(shape) - 1
    if last >= 0 and normalize_dim(dim, len(shape), caller) == last and shape[-1] % block_size == 0:
        return (*shape[:-1], shape[-1] // block_size, block_size), block_size
    return tuple(shape), None


def static_sizes(shape: Sequence[int], block_size: int, dim: int) -> tuple[bool, ...]:
    """For :meth:`qtorch.formats.base.Format.static_sizes` of a format with blocks of
    ``block_size`` along ``dim``: the sizes of 1, and ``dim``'s when it is one whole block.

    There :func:`to_blocks` views the dimension as (1, block_size); Dynamo specializes the
    block count 1, with it the size (``s // block_size == 1`` and ``s % block_size == 0``
    make it ``block_size``), and a compile for the size marked dynamic failed: an
    (n, 32) tensor under MX, (n, 16) under NVFP4, marked the kernel broken for every
    shape of the same rank. (A shorter dimension, padded to one block, compiles.) An
    invalid ``dim`` is left to the kernel to reject.
    """
    static = [size == 1 for size in shape]
    d = dim + len(shape) if dim < 0 else dim
    if 0 <= d < len(shape) and shape[d] == block_size:
        static[d] = True
    return tuple(static)


def shape_branches(shape: Sequence[int], block_size: int, dim: int) -> tuple[bool, ...]:
    """For :meth:`qtorch.formats.base.Format.shape_branches` of a format with blocks of
    ``block_size`` along ``dim``: whether :func:`to_blocks` pads ``dim`` (its length is
    not a multiple of ``block_size``), and whether ``dim`` holds a single block.

    Compiled for a length that is a multiple, the kernel's graph holds the guard
    ``s % block_size == 0``, and the first padded length made Dynamo compile another
    (and the other way round); compiled for several blocks, it holds ``n_blocks != 1``
    (torch's contiguity check specializes a size of 1), and a length short of one block
    made a third. An invalid ``dim`` is left to the kernel to reject.
    """
    d = dim + len(shape) if dim < 0 else dim
    if not 0 <= d < len(shape):
        return (False, False)
    return (shape[d] % block_size != 0, shape[d] <= block_size)


def padded_numel(shape: Sequence[int], block_size: int, dim: int) -> int:
    """The element count of x of ``shape`` once :func:`to_blocks` pads ``dim`` to whole
    blocks of ``block_size`` (x's own count if no padding is needed, or ``dim`` is invalid)."""
    d = dim + len(shape) if dim < 0 else dim
    if not 0 <= d < len(shape):
        return math.prod(shape)
    return (
        math.prod(shape[:d]) * -(-shape[d] // block_size) * block_size * math.prod(shape[d + 1 :])
    )


def piece_layout(
    shape: Sequence[int], block_size: int, dim: int, caller: str
) -> tuple[tuple[int, ...], int]:
    """For :meth:`qtorch.formats.base.Format.eager_pieces` of a format with blocks of
    ``block_size`` along ``dim``: ``(unit, align)`` of
    :class:`~qtorch.formats.base.EagerPieces`, with ``len(shape)`` dimensions in ``unit``
    (so that ``dim`` means the same in a piece).

    ``dim`` 0 (a 1-D tensor too): the slices ``x[i]``, cut at whole blocks
    (``align = block_size``); the last piece ends with the tensor's last block, padded as in
    the whole tensor. A later ``dim``: the sub-tensors that hold whole columns along it,
    ``x[i0, ..., i(dim-1)]`` (rows, where ``dim`` is the last).
    """
    d = normalize_dim(dim, len(shape), caller)
    if d == 0:
        return (1, *shape[1:]), block_size
    return (*([1] * d), *shape[d:]), 1


def from_blocks(blocked: torch.Tensor, dim: int, length: int) -> torch.Tensor:
    """Undo :func:`to_blocks`: merge dims ``dim``, ``dim + 1`` and cut to ``length``."""
    return blocked.flatten(dim, dim + 1).narrow(dim, 0, length)


def block_amax(x: torch.Tensor, block_size: int, dim: int) -> torch.Tensor:
    """The largest magnitude of each block along ``dim`` (NaN if the block holds a NaN).

    ``dim`` must be non-negative and x at least 1-d and non-empty.
    """
    return to_blocks(x, block_size, dim).abs().amax(dim=dim + 1)


def per_element(per_block: torch.Tensor, dim: int) -> torch.Tensor:
    """A per-block tensor (``dim`` of length n_blocks) shaped to broadcast against blocks."""
    return per_block.unsqueeze(dim + 1)


def block_scale(
    amax: torch.Tensor, elem_max: float, round_up: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The E8M0 scales 2**e of blocks with maxima ``amax``, as two factors of amax's dtype.

    Spec rule (``round_up=False``, OCP MX v1.0 section 6.3):
    ``e = floor(log2(amax)) - emax_elem`` with ``emax_elem = floor(log2(elem_max))``. With
    ``round_up=True`` e is raised by one where the spec rule would let the block maximum
    exceed ``elem_max`` (so it never saturates): ``ceil(log2(amax / elem_max))``. Both are
    clamped to -127..127; an all-zero block gets 2**-127. A block whose maximum is NaN or
    ±Inf gets a NaN scale.

    Returns ``(scale, low)`` with ``2**e = scale * low``: ``scale`` = 2**max(e, -126) (NaN for
    NaN blocks) and ``low`` = 0.5 where e = -127, else 1, so that no factor is a float32
    subnormal (which flush-to-zero modes would read as 0).

    Computed on floats, exactly: masking the fraction bits of amax (normalised first when
    subnormal) gives 2**floor(log2(amax)); below 2**-126 the scale may round, but only to
    values that the clamp raises to 2**-127, as it would the exact ones.
    """
    emax_elem = math.frexp(elem_max)[1] - 1
    lay = layout(amax.dtype)
    shift = lay.mantissa_bits + 1
    exponent_mask = ((1 << lay.exponent_bits) - 1) << lay.mantissa_bits
    small = amax < 2.0**lay.min_normal_exp
    normal = torch.where(small, amax * 2.0**shift, amax)
    top = (normal.view(lay.int_dtype) & exponent_mask).view(amax.dtype)  # 2**floor(log2)
    scale = torch.where(small, mul_pow2(top, -shift - emax_elem), mul_pow2(top, -emax_elem))
    if round_up:
        scale = torch.where(amax > scale * elem_max, scale * 2.0, scale)
    low = torch.where(scale < 2.0 ** (E8M0_EMIN + 1), 0.5, 1.0).to(amax.dtype)
    scale = scale.clamp(2.0 ** (E8M0_EMIN + 1), 2.0**E8M0_EMAX)
    return torch.where(amax < math.inf, scale, math.nan), low  # NaN and +Inf maxima: NaN


def factors_in_kernel(x: torch.Tensor) -> bool:
    """Whether the per-block factors of x's blocks may be left inside the element kernel.

    On CUDA (True), Inductor fuses the block maxima, the factors and the element pass into
    one Triton kernel that reads x once; MX and NVFP4 do so where their blocks fill the
    dimension, and store the factors where the last block is padded (see
    :mod:`qtorch.kernels.per_block`). On the CPU (False) the factors are stored once per
    block (:func:`qtorch.kernels.per_block.stored`): left inside, the element loop would
    recompute them for every vector of elements.
    """
    return x.is_cuda


def scale_codes(scale: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """E8M0 codes (int32, 0..255) of the block scales ``scale * low`` (NaN gives 255)."""
    e = exponent(scale) - (low < 1.0).to(torch.int32)
    return torch.where(isnan(scale), E8M0_NAN, e + E8M0_BIAS).to(torch.int32)


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
    scale, low = block_scale(block_amax(work, block_size, dim), elem_max, round_up)
    n = work.shape[dim]
    # x / 2**e as x * 2**-e: a power of two (normal: at most 2**127), so the product is
    # x / 2**e rounded once (exact unless it falls below the working dtype's normal range,
    # far below every element quantum). NaN blocks have a NaN scale: all NaN.
    factors: tuple[torch.Tensor, ...] = (1.0 / scale / low, scale, low)
    if not (factors_in_kernel(work) and n % block_size == 0):
        factors = stored(*factors)
    down, up, low = (per_element(f, dim) for f in factors)
    if noise is not None:
        noise = to_blocks(noise.reshape(work.shape), block_size, dim)
    q = quantize_element(to_blocks(work, block_size, dim) * down, rounding, noise) * up
    # times 0.5 only in blocks with e = -127: q * 2**-127 in two exact steps
    q = from_blocks(q * low, dim, n)
    return q.reshape(x.shape)


def scaled_elements(
    x: torch.Tensor, block_size: int, dim: int, elem_max: float, round_up: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """x / 2**e per block (zero in NaN blocks) and the per-block E8M0 codes, for encoding.

    x must be at least 1-d; ``dim`` non-negative.
    """
    scale, low = block_scale(block_amax(x, block_size, dim), elem_max, round_up)
    down = per_element(1.0 / scale / low, dim)
    scaled = torch.where(isnan(down), 0.0, to_blocks(x, block_size, dim) * down)
    return from_blocks(scaled, dim, x.shape[dim]), scale_codes(scale, low)


def apply_scale_codes(
    elements: torch.Tensor, codes: torch.Tensor, block_size: int, dim: int
) -> torch.Tensor:
    """elements * 2**(code - 127) per block; every element of a NaN-scale block is NaN."""
    e, nan = scale_exponents(codes)
    blocks = to_blocks(elements, block_size, dim)
    q = ldexp(blocks, per_element(e, dim))
    q = torch.where(per_element(nan, dim), math.nan, q)
    return from_blocks(q, dim, elements.shape[dim])


def scale_blocks(
    x: torch.Tensor, per_block: torch.Tensor, block_size: int, dim: int
) -> torch.Tensor:
    """x times its block's entry of ``per_block`` (x's shape, ``dim`` shortened to n_blocks)."""
    q = to_blocks(x, block_size, dim) * per_element(per_block, dim)
    return from_blocks(q, dim, x.shape[dim])


# -- NVFP4: E2M1 elements, an E4M3 scale per block, an optional float32 tensor scale ---------

#: Largest E2M1 element (6) times largest E4M3 scale (448): the tensor scale's divisor.
NVFP4_RANGE = 6.0 * 448.0
#: Smallest positive E4M3 value: the floor of a block scale, so no block divides by zero.
E4M3_MIN_POSITIVE = 2.0**-9


def dynamic_tensor_scale(x: torch.Tensor) -> torch.Tensor:
    """NVIDIA's per-tensor decode scale: (largest finite |x|) / (6 * 448), 1 if that is 0.

    Computed in x's dtype (a 0-d tensor); ±Inf and NaN are left out of the maximum.
    """
    return tensor_scale_from_max(finite_amax(x))


def finite_amax(x: torch.Tensor) -> torch.Tensor:
    """The largest finite |x| (0-d, x's dtype; 0 for an empty x or one without finite values).

    Compiled for the CPU, from :data:`~qtorch.kernels.block.STREAMED_MIN` elements, read as
    rows at once (:func:`~qtorch.kernels.block.whole_max`; ``NVFP4.shape_branches`` gives
    those sizes a kernel of their own)."""
    if x.numel() == 0:
        return torch.zeros((), dtype=x.dtype, device=x.device)
    magnitude = x.abs()
    return whole_max(torch.where(magnitude < math.inf, magnitude, 0.0))


def tensor_scale_from_max(largest: torch.Tensor) -> torch.Tensor:
    """:func:`dynamic_tensor_scale` from the largest finite magnitude: largest / 2688, or 1."""
    g = largest / NVFP4_RANGE
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
    special = ~(amax < math.inf)  # NaN or +Inf (amax >= 0)
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
    s, special = nvfp4_block_scales(block_amax(work, block_size, dim), tensor_scale, quantize_scale)
    d = s if tensor_scale is None else s * tensor_scale  # NaN in NaN/Inf blocks
    n = work.shape[dim]
    # Stored once per block (the flags only make the stack two tensors: see per_block),
    # except on CUDA for whole blocks: rows that end in a padded block failed to compile
    # there without the stack (an AssertionError inside Inductor, torch 2.11).
    if not (factors_in_kernel(work) and n % block_size == 0):
        d = stored(d, special.to(d.dtype))[0]
    d = per_element(d, dim)
    if noise is not None:
        noise = to_blocks(noise.reshape(work.shape), block_size, dim)
    # a NaN d makes x / d NaN, which the element rounding keeps, and the product NaN
    q = quantize_element(to_blocks(work, block_size, dim) / d, rounding, noise) * d
    return from_blocks(q, dim, n).reshape(x.shape)
