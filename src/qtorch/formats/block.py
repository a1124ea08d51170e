"""Block floating point: a shared exponent per block, QPyTorch's grid."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from qtorch.formats.base import EagerPieces, Format, pieces_of
from qtorch.formats.fixed import check_int
from qtorch.kernels import block as block_kernel
from qtorch.kernels.block import block_max, quantize_block
from qtorch.rounding import Rounding

__all__ = ["BlockFloatingPoint"]


@dataclass(frozen=True)
class BlockFloatingPoint(Format):
    """Block floating point: each block shares one exponent, elements keep wl-bit mantissas.

    For a block with largest magnitude m, e = floor(log2(m)); its elements are rounded to
    multiples of the step 2**(e + 2 - wl) and clamped to ±(2**(e+1) - step): a sign and
    wl - 1 magnitude bits (QPyTorch's grid). With wl = 4 and block maximum 1.0 the step is
    0.25, so 0.3 -> 0.25 and -0.7 -> -0.75.

    Args:
        wl: word length, sign included, 2..64.
        dim: -1 makes the whole tensor one block (QPyTorch's meaning of -1, not "the last
            dimension"); d >= 0 makes one block per index i along dimension d, i.e. the
            elements of ``x.select(d, i)`` share an exponent. Checked against the tensor's
            number of dimensions when quantizing.

    Rounding: all five modes; ``"nearest"`` sends ties to even, ``"stochastic"`` is unbiased
    except where the clamp cuts off the top. An all-zero block stays zero (the sign of each
    zero is kept); a block that holds NaN or ±Inf comes back all NaN. Values near the
    dtype's largest number keep their sign. Empty tensors come back empty.

    >>> import qtorch
    >>> qtorch.quantize(torch.tensor([1.0, 0.3, -0.7, 0.125]), BlockFloatingPoint(4))
    tensor([ 1.0000,  0.2500, -0.7500,  0.0000])
    >>> qtorch.quantize(torch.tensor([[1.0, 0.3], [-5.0, -3.3]]), BlockFloatingPoint(4, dim=0))
    tensor([[ 1.0000,  0.2500],
            [-5.0000, -3.0000]])
    """

    wl: int
    dim: int = -1

    roundings: ClassVar[frozenset[Rounding]] = frozenset(Rounding)
    elementwise: ClassVar[bool] = False  # a block's elements share one exponent
    #: One block per tensor (dim=-1) is flattened for the compiled kernel (see Format), but
    #: on the CPU not computed on the (n / 16, 16) view: there Inductor split the stochastic
    #: kernel into loops joined by a buffer (38 ms against 2.9 flat at 4,194,304 elements).
    row_view_noise: ClassVar[bool] = False

    @property
    def flat_kernel(self) -> bool:
        """One block per tensor (``dim=-1``): the result does not depend on x's shape."""
        return self.dim == -1

    def shape_branches(self, shape: Sequence[int], device_type: str) -> tuple[bool, ...]:
        """``dim=-1``: the whole tensor's maximum's (:func:`qtorch.kernels.block.whole_max`:
        :func:`~qtorch.kernels.block.streams_branch`)."""
        return block_kernel.streams_branch(shape, device_type) if self.dim == -1 else ()

    def kernel_extent(self, shape: Sequence[int]) -> int:
        """``dim=-1``: x padded to whole rows, as a kernel compiled off the CPU takes the
        block's maximum; other ``dim``: x, or the blocks' four stored factors if more
        (:func:`qtorch.kernels.block.kernel_extent`)."""
        return block_kernel.kernel_extent(shape, self.dim)

    def eager_pieces(self, x: torch.Tensor, dtype: torch.dtype, chunk: int) -> EagerPieces | None:
        """``dim=0``: whole slices ``x[i]``. ``dim=-1``: any pieces, once the one block's
        maximum is known (taken piece by piece). Other ``dim``: ``None``."""
        if self.dim == 0 and x.dim() >= 1:
            return EagerPieces((1, *x.shape[1:]), self.quantize_kernel)
        if self.dim != -1 or x.numel() == 0:
            return None
        top = torch.stack([block_max(piece, -1) for piece in pieces_of(x, dtype, chunk)]).amax()
        wl = self.wl

        def shared(
            piece: torch.Tensor, rounding: Rounding, noise: torch.Tensor | None
        ) -> torch.Tensor:
            return quantize_block(piece, wl, -1, rounding, noise, top=top)

        return EagerPieces((1,), shared)

    def __post_init__(self) -> None:
        object.__setattr__(self, "wl", check_int("BlockFloatingPoint", "wl", self.wl, 2, 64))
        object.__setattr__(
            self, "dim", check_int("BlockFloatingPoint", "dim", self.dim, -1, 2**31 - 1)
        )

    @property
    def bits(self) -> int:
        """Bits per element (sign and mantissa; the shared exponent is not counted)."""
        return self.wl

    def quantize_kernel(
        self, x: torch.Tensor, rounding: Rounding, noise: torch.Tensor | None
    ) -> torch.Tensor:
        if self.dim >= x.ndim:
            allowed = "-1" if x.ndim == 0 else f"-1 or in 0..{x.ndim - 1}"
            raise ValueError(
                f"BlockFloatingPoint: dim must be {allowed} for a tensor with {x.ndim} "
                f"dimensions, got {self.dim}"
            )
        if x.numel() == 0:
            return x.clone()
        return quantize_block(x, self.wl, self.dim, rounding, noise)
