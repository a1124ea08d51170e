"""OCP Microscaling (MX v1.0) block formats: one E8M0 scale per block of elements."""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from qtorch.formats.base import EagerPieces, Format
from qtorch.formats.fixed import FixedPoint
from qtorch.formats.presets import (
    float4_e2m1fn,
    float6_e2m3fn,
    float6_e3m2fn,
    float8_e4m3fn,
    float8_e5m2,
)
from qtorch.kernels import mx as kernel
from qtorch.rounding import Rounding, parse_option


class ScaleRule(enum.Enum):
    """How the power-of-two scale of a block is chosen from the block's largest magnitude."""

    #: The OCP MX v1.0 rule (section 6.3): 2**(floor(log2(amax)) - emax_elem). The block
    #: maximum may exceed the element maximum and then saturates (957 -> 896 in MXFP8 E4M3).
    FLOOR = "floor"
    #: Round the scale up so that the block maximum never saturates:
    #: 2**ceil(log2(amax / elem_max)), NVIDIA's "RCEIL" for MXFP8 (torchao
    #: ``ScaleCalculationMode.RCEIL``). One binade coarser than FLOOR in blocks where they differ.
    CEIL = "ceil"

    @classmethod
    def parse(cls, value: ScaleRule | str) -> ScaleRule:
        """Return the member for ``value`` (a member or its string name).

        >>> ScaleRule.parse("ceil")
        <ScaleRule.CEIL: 'ceil'>
        """
        return parse_option(cls, value, "MX: scale_rule")


def check_element(owner: str, element: Any) -> None:
    """Reject element formats that cannot serve in a block format (ValueError/TypeError)."""
    if not isinstance(element, Format):
        raise TypeError(f"{owner}: element must be a qtorch format, got {type(element).__name__}")
    for name in ("max", "bits", "encode", "decode"):
        if not hasattr(element, name):
            raise ValueError(f"{owner}: element must be a fixed-width format with {name!r}")
    if getattr(element, "saturate", True) is False or getattr(element, "clamp", True) is False:
        raise ValueError(f"{owner}: element must saturate (saturate=True / clamp=True)")
    elem_max = float(element.max)  # type: ignore[attr-defined]
    if not (math.isfinite(elem_max) and elem_max > 0):
        raise ValueError(f"{owner}: element max must be finite and positive, got {elem_max}")


def check_block(owner: str, block_size: int, dim: int) -> None:
    """Validate ``block_size`` (1..2**20) and ``dim`` (an int)."""
    if isinstance(block_size, bool) or not isinstance(block_size, int):
        raise ValueError(f"{owner}: block_size must be an int, got {block_size!r}")
    if not 1 <= block_size <= 2**20:
        raise ValueError(f"{owner}: block_size must be in 1..1048576, got {block_size}")
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise ValueError(f"{owner}: dim must be an int, got {dim!r}")


class BlocksAlongDim:
    """The compiled kernel's view of a format with blocks of ``block_size`` consecutive
    elements along ``dim`` (MX, NVFP4): which sizes are constants, the branches its code
    takes on the shape, and the layout its noise is made in (:mod:`qtorch.kernels.mx`).
    Put before :class:`~qtorch.formats.base.Format` among the bases."""

    block_size: int
    dim: int

    def static_sizes(self, shape: Sequence[int]) -> tuple[bool, ...]:
        """Sizes of 1, and the blocks' dimension when it is one whole block
        (:func:`qtorch.kernels.mx.static_sizes`)."""
        return kernel.static_sizes(shape, self.block_size, self.dim)

    def shape_branches(self, shape: Sequence[int], device_type: str) -> tuple[bool, ...]:
        """Whether the blocks' dimension is padded to whole blocks, and whether it holds
        one block (:func:`qtorch.kernels.mx.shape_branches`), on every device."""
        return kernel.shape_branches(shape, self.block_size, self.dim)

    def kernel_extent(self, shape: Sequence[int]) -> int:
        """x's element count with the blocks' dimension padded to whole blocks
        (:func:`qtorch.kernels.mx.padded_numel`)."""
        return kernel.padded_numel(shape, self.block_size, self.dim)

    def noise_layout(self, shape: Sequence[int]) -> tuple[tuple[int, ...], int | None]:
        """The blocks' layout, when they run along the last dimension and fill it."""
        return kernel.noise_layout(shape, self.block_size, self.dim, type(self).__name__)


@dataclass(frozen=True, repr=False)
class MX(BlocksAlongDim, Format):
    """An OCP Microscaling block format: blocks along ``dim`` share one E8M0 scale.

    Per block of ``block_size`` consecutive elements along ``dim`` (the last block is shorter
    when the length is not a multiple of ``block_size``; other dimensions are independent):

    1. ``amax`` = largest magnitude in the block;
    2. shared exponent ``e = floor(log2(amax)) - emax_elem`` (``scale_rule="floor"``, the
       spec) or ``ceil(log2(amax / elem_max))`` (``"ceil"``: never saturates), clamped to the
       E8M0 range -127..127; the scale is ``2**e`` (E8M0 code ``e + 127``);
    3. each element is ``x / 2**e`` rounded in ``element`` (nearest ties-to-even, or
       stochastic with per-element noise), saturating at ±element max; the result is
       ``element * 2**e``. Every step is exact except the element rounding.

    Special values: a NaN or ±Inf anywhere in a block makes its scale NaN (code 255) and,
    as the spec says of a NaN scale, every element of the block NaN — as in the reference
    implementation of the spec's authors (microsoft/microxcaling); gfloat instead clips the
    scale of an Inf block to 2**127 and saturates the Inf. An all-zero block gets the
    smallest scale 2**-127 (code 0, as gfloat and microxcaling) and stays zero, signs kept.
    Values far below the block maximum underflow to (signed) zero; finite maxima above the
    E8M0 range (only possible for float64 inputs) clamp the scale to 2**127 and saturate.

    Args:
        element: the element format: ``FloatingPoint`` (saturating) or ``FixedPoint``.
        block_size: elements per block, 1..2**20 (32 in the spec).
        dim: the dimension along which blocks run; checked when a tensor is quantized.
        scale_rule: ``"floor"`` (spec, default) or ``"ceil"``, see :class:`ScaleRule`.

    >>> import qtorch
    >>> x = torch.tensor([957.0, 1.0, -3.3, 0.01])
    >>> qtorch.quantize(x, qtorch.mxfp8_e4m3)  # scale 2**(9 - 8): 957 saturates to 448 * 2
    tensor([ 8.9600e+02,  1.0000e+00, -3.2500e+00,  1.1719e-02])
    >>> qtorch.mxfp8_e4m3.encode(x)  # element codes, E8M0 scale codes (one block)
    (tensor([126,  48, 189,   3], dtype=torch.int32), tensor([128], dtype=torch.int32))
    >>> qtorch.quantize(x, MX(qtorch.float8_e4m3fn, scale_rule="ceil"))[0]
    tensor(960.)
    """

    element: Format
    block_size: int = 32
    dim: int = -1
    scale_rule: ScaleRule | str = ScaleRule.FLOOR

    def __post_init__(self) -> None:
        check_element("MX", self.element)
        check_block("MX", self.block_size, self.dim)
        object.__setattr__(self, "scale_rule", ScaleRule.parse(self.scale_rule))
        # a plain float, read by the kernel (not a field: eq, hash and repr ignore it)
        object.__setattr__(self, "_elem_max", float(self.element.max))  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        rule = ScaleRule.parse(self.scale_rule).value
        return (
            f"MX(element={self.element!r}, block_size={self.block_size}, dim={self.dim}, "
            f"scale_rule={rule!r})"
        )

    @property
    def bits(self) -> int:
        """Bits of one element (the shared 8-bit scale of each block is not counted)."""
        return int(self.element.bits)  # type: ignore[attr-defined]

    @property
    def scale_bits(self) -> int:
        """Bits of the shared scale of one block (E8M0: 8)."""
        return 8

    @property
    def max(self) -> float:
        """Largest finite value: element max times the largest scale 2**127."""
        return math.ldexp(float(self.element.max), kernel.E8M0_EMAX)  # type: ignore[attr-defined]

    @property
    def min_positive(self) -> float:
        """Smallest positive value: element min_positive times the smallest scale 2**-127."""
        smallest = float(self.element.min_positive)  # type: ignore[attr-defined]
        return math.ldexp(smallest, kernel.E8M0_EMIN)

    @property
    def emax_elem(self) -> int:
        """floor(log2(element max)): the exponent the block maximum is scaled to."""
        return math.frexp(float(self.element.max))[1] - 1  # type: ignore[attr-defined]

    roundings: ClassVar[frozenset[Rounding]] = frozenset({Rounding.NEAREST, Rounding.STOCHASTIC})
    #: Each result depends on its whole block: the compiled path must keep the shape.
    elementwise: ClassVar[bool] = False
    #: quantize_ computes out of place and copies into x: the CPU kernel that wrote into x
    #: took 1.21 (nearest) and 12.1 (stochastic) times as long (4,194,304 float32, 2 threads)
    writes_into_x: ClassVar[bool] = False

    def _dim_for(self, x: torch.Tensor) -> int:
        return kernel.normalize_dim(self.dim, x.dim(), "MX")

    def eager_pieces(self, x: torch.Tensor, dtype: torch.dtype, chunk: int) -> EagerPieces | None:
        """Pieces of whole blocks (:func:`qtorch.kernels.mx.piece_layout`): whole rows where
        the blocks run along the last dimension."""
        if x.dim() == 0:
            return None
        unit, align = kernel.piece_layout(x.shape, self.block_size, self.dim, "MX")
        return EagerPieces(unit, self.quantize_kernel, align)

    def quantize_kernel(
        self, x: torch.Tensor, rounding: Rounding, noise: torch.Tensor | None
    ) -> torch.Tensor:
        """Round x blockwise (see the class docstring); x is never modified."""
        dim = self._dim_for(x)
        return kernel.quantize_mx(
            x,
            self.block_size,
            dim,
            self._elem_max,  # type: ignore[attr-defined]
            self.scale_rule is ScaleRule.CEIL,
            self.element.quantize_kernel,
            rounding,
            noise,
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Round x to nearest and return ``(element_codes, scale_codes)``.

        ``element_codes`` has x's shape (the element format's codes); ``scale_codes`` (int32,
        E8M0: 0..254 for 2**(code - 127), 255 for NaN) has x's shape with ``dim`` shortened
        to the number of blocks. Elements of a NaN-scale block are encoded as zero. A 0-d x
        is treated as one element.
        """
        dim = self._dim_for(x)
        work = x.reshape(1) if x.dim() == 0 else x
        work = work if work.dtype in (torch.float32, torch.float64) else work.float()
        scaled, codes = kernel.scaled_elements(
            work,
            self.block_size,
            dim,
            self._elem_max,  # type: ignore[attr-defined]
            self.scale_rule is ScaleRule.CEIL,
        )
        element_codes = self.element.encode(scaled)  # type: ignore[attr-defined]
        return element_codes.reshape(x.shape), codes

    def decode(
        self,
        element_codes: torch.Tensor,
        scale_codes: torch.Tensor,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Values of an encoded tensor: element value times 2**(scale_code - 127) per block.

        ``scale_codes`` must have ``element_codes``' shape with ``dim`` shortened to the
        number of blocks; code 255 (NaN) makes the whole block NaN.
        """
        dim = self._dim_for(element_codes)
        codes = element_codes.reshape(1) if element_codes.dim() == 0 else element_codes
        blocks = -(-codes.shape[dim] // self.block_size)
        expected = list(codes.shape)
        expected[dim] = blocks
        if list(scale_codes.shape) != expected:
            raise ValueError(
                f"MX: scale_codes must have shape {tuple(expected)}, got {tuple(scale_codes.shape)}"
            )
        work_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        values = self.element.decode(codes, dtype=work_dtype)  # type: ignore[attr-defined]
        q = kernel.apply_scale_codes(values, scale_codes, self.block_size, dim)
        return q.reshape(element_codes.shape).to(dtype)


#: MXFP8 with OCP FP8 E4M3 elements (max 448), blocks of 32.
mxfp8_e4m3 = MX(float8_e4m3fn)
#: MXFP8 with OCP FP8 E5M2 elements (max 57344), blocks of 32.
mxfp8_e5m2 = MX(float8_e5m2)
#: MXFP6 with FP6 E3M2 elements (max 28), blocks of 32.
mxfp6_e3m2 = MX(float6_e3m2fn)
#: MXFP6 with FP6 E2M3 elements (max 7.5), blocks of 32.
mxfp6_e2m3 = MX(float6_e2m3fn)
#: MXFP4 with FP4 E2M1 elements (max 6), blocks of 32.
mxfp4_e2m1 = MX(float4_e2m1fn)
#: MXINT8: 8-bit two's-complement elements k * 2**-6 (-2 .. 1 63/64), blocks of 32. The
#: code 0x80 (-2) is used, as in gfloat; ``MX(FixedPoint(8, 6, symmetric=True))`` keeps the
#: symmetric range ±1 63/64 (as microsoft/microxcaling does).
mxint8 = MX(FixedPoint(8, 6))
