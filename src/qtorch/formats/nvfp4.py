"""NVFP4: FP4 E2M1 elements, an FP8 E4M3 scale per block of 16, an optional tensor scale."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from qtorch.formats.base import EagerPieces, Format, pieces_of
from qtorch.formats.mx import BlocksAlongDim, check_block
from qtorch.formats.presets import float4_e2m1fn, float8_e4m3fn
from qtorch.kernels import mx as kernel
from qtorch.kernels.block import streams_branch
from qtorch.rounding import Rounding

#: The ``tensor_scale`` value that asks for NVIDIA's per-tensor scale, computed from x.
DYNAMIC = "amax"


def _scale_e4m3(raw: torch.Tensor) -> torch.Tensor:
    return float8_e4m3fn.quantize_kernel(raw, Rounding.NEAREST, None)


@dataclass(frozen=True)
class NVFP4(BlocksAlongDim, Format):
    """NVIDIA's NVFP4: E2M1 elements with an E4M3 scale per block and a float32 tensor scale.

    Blocks are ``block_size`` consecutive elements along ``dim`` (the last block is shorter
    when the length is not a multiple). With ``amax`` the block's largest magnitude and
    ``g`` the per-tensor decode scale (1 when there is none):

    1. block scale ``s = E4M3(amax / 6 / g)``: rounded to nearest (ties to even) in
       ``float8_e4m3fn``, saturating at 448, and at least 2**-9 (the smallest positive
       E4M3) so that no block divides by zero (an all-zero block stays zero);
    2. ``d = s * g``; elements ``E2M1(x / d)`` (nearest or stochastic, saturating at ±6);
       result ``element * d``.

    Divisions and products are rounded in the working dtype (float32 for float32 input), as
    NVIDIA's and torchao's reference code do; without a tensor scale every step but the two
    roundings to E4M3 and E2M1 is exact, so the result is the exactly rounded one.

    ``tensor_scale`` (the second-level, per-tensor float32 scale ``g``):

    * ``None`` (default): one level, ``g = 1``; the block scales then cover
      2**-9 .. 448 and values up to 6 * 448 = 2688.
    * a positive float: a fixed (calibrated) decode scale, rounded to float32 here.
    * ``"amax"``: NVIDIA's dynamic scale, ``g = amax(|x|) / (6 * 448)`` over the finite
      values of the whole tensor (1 if they are all zero), so the tensor's largest block
      gets the largest E4M3 scale (TransformerEngine's NVFP4 recipe; torchao
      ``per_tensor_amax_to_scale``). :meth:`tensor_scale_of` returns it.

    Special values: a NaN or ±Inf in a block makes the block's scale NaN and every element
    of the block NaN, as in :class:`qtorch.MX` (torchao instead saturates an Inf to
    6 * 448). -0 stays -0.

    >>> import qtorch
    >>> qtorch.quantize(torch.tensor([6.0, 1.0, -0.3, 2.5]), qtorch.nvfp4)  # scale 1
    tensor([ 6.0000,  1.0000, -0.5000,  2.0000])
    >>> qtorch.quantize(torch.tensor([5.0, 1.0]), qtorch.nvfp4)  # scale E4M3(5/6) = 0.8125
    tensor([4.8750, 0.8125])
    """

    block_size: int = 16
    dim: int = -1
    tensor_scale: float | str | None = None

    roundings: ClassVar[frozenset[Rounding]] = frozenset({Rounding.NEAREST, Rounding.STOCHASTIC})
    #: Each result depends on its whole block: the compiled path must keep the shape.
    elementwise: ClassVar[bool] = False
    #: quantize_ computes out of place and copies into x: the CPU kernel that wrote into x
    #: took 1.03 (nearest) and 11.2 (stochastic) times as long (4,194,304 float32, 2 threads)
    writes_into_x: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_block("NVFP4", self.block_size, self.dim)
        g = self.tensor_scale
        if g is None or g == DYNAMIC:
            return
        if isinstance(g, bool) or not isinstance(g, (int, float)):
            raise ValueError(
                f'NVFP4: tensor_scale must be None, "amax" or a positive float, got {g!r}'
            )
        with np.errstate(over="ignore"):  # beyond float32: Inf, refused below
            g32 = float(np.float32(g))  # (not a torch tensor: meta or fake default devices)
        if not (math.isfinite(g32) and g32 > 0):
            raise ValueError(
                f"NVFP4: tensor_scale must be positive and finite in float32, got {g!r}"
            )
        object.__setattr__(self, "tensor_scale", g32)

    @property
    def bits(self) -> int:
        """Bits of one element (the 8-bit scale of each block is not counted)."""
        return 4

    @property
    def scale_bits(self) -> int:
        """Bits of the scale of one block (E4M3: 8)."""
        return 8

    @property
    def max(self) -> float:
        """Largest value: 6 * 448 * tensor scale (``inf`` for ``"amax"``: it follows x)."""
        if self.tensor_scale == DYNAMIC:
            return math.inf
        return kernel.NVFP4_RANGE * float(self.tensor_scale or 1.0)

    @property
    def min_positive(self) -> float:
        """Smallest positive value: 0.5 * 2**-9 * tensor scale (0 for ``"amax"``)."""
        if self.tensor_scale == DYNAMIC:
            return 0.0
        return 0.5 * kernel.E4M3_MIN_POSITIVE * float(self.tensor_scale or 1.0)

    def shape_branches(self, shape: Sequence[int], device_type: str) -> tuple[bool, ...]:
        """The blocks' branches (:meth:`BlocksAlongDim.shape_branches`) and, with ``"amax"``,
        the tensor maximum's (:func:`qtorch.kernels.mx.finite_amax`:
        :func:`~qtorch.kernels.block.streams_branch`)."""
        branches = super().shape_branches(shape, device_type)
        if self.tensor_scale == DYNAMIC:
            branches += streams_branch(shape, device_type)
        return branches

    def tensor_scale_of(self, x: torch.Tensor) -> torch.Tensor | None:
        """The tensor scale g used for x: None, the fixed value, or NVIDIA's amax / 2688."""
        if self.tensor_scale is None:
            return None
        work = x if x.dtype in (torch.float32, torch.float64) else x.float()
        if self.tensor_scale == DYNAMIC:
            return kernel.dynamic_tensor_scale(work)
        return torch.tensor(self.tensor_scale, dtype=work.dtype, device=x.device)

    def _dim_for(self, x: torch.Tensor) -> int:
        return kernel.normalize_dim(self.dim, x.dim(), "NVFP4")

    def eager_pieces(self, x: torch.Tensor, dtype: torch.dtype, chunk: int) -> EagerPieces | None:
        """Pieces of whole blocks (:func:`qtorch.kernels.mx.piece_layout`): whole rows where
        the blocks run along the last dimension (an ``"amax"`` tensor scale is taken first,
        piece by piece)."""
        if x.dim() == 0:
            return None
        unit, align = kernel.piece_layout(x.shape, self.block_size, self.dim, "NVFP4")
        if self.tensor_scale != DYNAMIC:
            return EagerPieces(unit, self.quantize_kernel, align)
        largest = torch.stack([kernel.finite_amax(p) for p in pieces_of(x, dtype, chunk)])
        g = kernel.tensor_scale_from_max(largest.amax())

        def scaled(
            piece: torch.Tensor, rounding: Rounding, noise: torch.Tensor | None
        ) -> torch.Tensor:
            return self._quantize(piece, rounding, noise, g)

        return EagerPieces(unit, scaled, align)

    def quantize_kernel(
        self, x: torch.Tensor, rounding: Rounding, noise: torch.Tensor | None
    ) -> torch.Tensor:
        """Round x blockwise (see the class docstring); x is never modified."""
        return self._quantize(x, rounding, noise, self.tensor_scale_of(x))

    def _quantize(
        self,
        x: torch.Tensor,
        rounding: Rounding,
        noise: torch.Tensor | None,
        g: torch.Tensor | None,
    ) -> torch.Tensor:
        """:meth:`quantize_kernel` with the tensor scale ``g`` given."""
        return kernel.quantize_nvfp4(
            x,
            self.block_size,
            self._dim_for(x),
            g,
            _scale_e4m3,
            float4_e2m1fn.quantize_kernel,
            rounding,
            noise,
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Round x to nearest; return ``(element_codes, scale_codes)`` (int32).

        ``element_codes`` (E2M1 bit patterns, 0..15) has x's shape; ``scale_codes`` (E4M3
        bit patterns; the NaN code for a NaN/Inf block, whose elements are encoded as 0)
        has x's shape with ``dim`` shortened to the number of blocks. The tensor scale is not
        included: get it from :meth:`tensor_scale_of` for ``"amax"``.
        """
        dim = self._dim_for(x)
        work = x.reshape(1) if x.dim() == 0 else x
        work = work if work.dtype in (torch.float32, torch.float64) else work.float()
        g = self.tensor_scale_of(work)
        amax = kernel.block_amax(work, self.block_size, dim)
        s, nan = kernel.nvfp4_block_scales(amax, g, _scale_e4m3)
        d = kernel.per_element(torch.where(nan, 1.0, s if g is None else s * g), dim)
        blocks = kernel.to_blocks(work, self.block_size, dim)
        scaled = torch.where(kernel.per_element(nan, dim), 0.0, blocks / d)
        scaled = kernel.from_blocks(scaled, dim, work.shape[dim])
        return float4_e2m1fn.encode(scaled).reshape(x.shape), float8_e4m3fn.encode(s)

    def decode(
        self,
        element_codes: torch.Tensor,
        scale_codes: torch.Tensor,
        tensor_scale: torch.Tensor | float | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Values of an encoded tensor: element * (scale * tensor scale), per block.

        ``tensor_scale`` is required for ``"amax"`` formats (the value
        :meth:`tensor_scale_of` gave for the encoded tensor); otherwise the format's own.
        """
        dim = self._dim_for(element_codes)
        codes = element_codes.reshape(1) if element_codes.dim() == 0 else element_codes
        expected = list(codes.shape)
        expected[dim] = -(-codes.shape[dim] // self.block_size)
        if list(scale_codes.shape) != expected:
            raise ValueError(
                f"NVFP4: scale_codes must have shape {tuple(expected)}, "
                f"got {tuple(scale_codes.shape)}"
            )
        if self.tensor_scale == DYNAMIC and tensor_scale is None:
            raise ValueError('NVFP4: decode needs the tensor_scale of an "amax" format')
        g = self.tensor_scale if tensor_scale is None else tensor_scale
        work_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        s = float8_e4m3fn.decode(scale_codes, dtype=work_dtype)
        d = s if g is None else s * torch.as_tensor(g, dtype=work_dtype)
        values = float4_e2m1fn.decode(codes, dtype=work_dtype)
        q = kernel.scale_blocks(values, d, self.block_size, dim)
        return q.reshape(element_codes.shape).to(dtype)


#: NVFP4 with one level of scaling (E4M3 block scales only), blocks of 16 along dim -1.
nvfp4 = NVFP4()
