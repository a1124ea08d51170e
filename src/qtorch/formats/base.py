"""The protocol every number format implements.

A format is a frozen dataclass holding only its defining parameters; everything else is a
derived property. :func:`qtorch.quantize` talks to a format only through this protocol.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Iterator, Sequence
from typing import ClassVar, NamedTuple

import torch

from qtorch.rounding import Rounding


class EagerPieces(NamedTuple):
    """How the eager path may round a large tensor in pieces (:meth:`Format.eager_pieces`).

    ``unit`` is ``(1, *rest)``: the tensor's elements in row-major order, viewed as
    ``(-1, *rest)`` and cut along the first dimension at multiples of ``align`` units, give
    pieces for which ``kernel(piece, rounding, noise)`` (the piece in the working dtype, its
    noise the slice of the tensor's) returns the tensor's result for those elements. With
    ``align`` > 1 the tensor need not hold a whole number of them: the last piece may end
    inside one (MX's and NVFP4's blocks along a 1-D tensor, the last one padded).
    """

    unit: tuple[int, ...]
    kernel: Callable[[torch.Tensor, Rounding, torch.Tensor | None], torch.Tensor]
    align: int = 1


class Format(abc.ABC):
    """Base class of all number formats.

    Subclasses are ``@dataclass(frozen=True)`` and implement :meth:`quantize_kernel`. Formats
    with a fixed bit width also implement :meth:`encode` and :meth:`decode` (exact inverses on
    representable values) and, for at most 16 bits, :meth:`values`.
    """

    #: Rounding modes the format accepts; :func:`qtorch.quantize` rejects the others.
    roundings: ClassVar[frozenset[Rounding]] = frozenset({Rounding.NEAREST, Rounding.STOCHASTIC})

    #: True when each output element depends only on the same input element (and its noise),
    #: so the compiled path may flatten the tensor. Formats that reduce over the tensor
    #: (block floating point, MX: a shared exponent per block) set this to False.
    elementwise: ClassVar[bool] = True

    #: Whether a stochastic kernel on the CPU computes on the ``(n / 16, 16)`` view of x it
    #: is handed when 16 divides n (else on x flattened inside the kernel). Its noise is
    #: made in rows of 16 either way (the index built per row, see
    #: :mod:`qtorch.kernels.noise`); on the view the kernel is faster for most formats
    #: (fixed point: x flat took 1.13 times as long). Off the CPU the view is always used
    #: (:func:`qtorch.kernels.fused.computes_on_rows`).
    row_view_noise: ClassVar[bool] = True

    #: Whether ``quantize_`` on a contiguous x has the compiled kernel write its result into
    #: x, rather than compute out of place and copy the result in (a second pass over x).
    #: Elementwise formats and block floating point do; MX and NVFP4 opt out.
    writes_into_x: ClassVar[bool] = True

    @property
    def flat_kernel(self) -> bool:
        """Whether the compiled path may run the kernel on x flattened to 1-D (x contiguous).

        True where the result does not depend on x's shape: elementwise formats, and block
        floating point with one block per tensor. Such formats get one compiled kernel for
        every shape, and their stochastic noise made in rows of 16.
        """
        return self.elementwise

    def static_sizes(self, shape: Sequence[int]) -> tuple[bool, ...]:
        """Which sizes of x a compiled kernel that is not flat (:attr:`flat_kernel`) takes
        as constants rather than symbols; they are part of its cache key.

        Dynamo specializes a size of 1 (and a size derived from the symbols that comes out
        as 1, with the symbols it follows from); a size marked dynamic that it specializes
        fails the compile. Default: the dimensions of size 1.
        """
        return tuple(size == 1 for size in shape)

    def shape_branches(self, shape: Sequence[int], device_type: str) -> tuple[bool, ...]:
        """The choices on x's shape that the code of a kernel compiled for ``device_type``
        makes in Python while it is traced (a flat kernel's, :attr:`flat_kernel`: on x's
        element count); they are part of its cache key.

        Dynamo guards on such a choice and, when a later shape makes the other one,
        compiles a second graph behind qtorch's back: not under its compile lock, not
        checked on a probe (:mod:`qtorch.kernels.verify`). In the key, each choice gets
        its own kernel, compiled and checked like the first. Default: none.
        """
        return ()

    def kernel_extent(self, shape: Sequence[int]) -> int:
        """The element count of the largest tensor a kernel compiled off the CPU for x of
        ``shape`` reads or makes: x's own (default). A format whose kernel pads x makes
        more (MX and NVFP4: the blocks' dimension, to whole blocks; block floating point
        with one block: x, to whole rows).

        With x's own count it decides the kernel's index widths, part of its cache key
        (:class:`qtorch.kernels.fused.KernelKey`): Inductor's Triton code indexes a loop
        over at most 2**31 - 1 elements in 32 bits, with a guard on the size, and a larger
        one in 64 bits.
        """
        return math.prod(shape)

    @abc.abstractmethod
    def quantize_kernel(
        self, x: torch.Tensor, rounding: Rounding, noise: torch.Tensor | None
    ) -> torch.Tensor:
        """Quantize ``x`` (float32 or float64, any shape and strides) in pure tensor code.

        ``noise`` is uniform on [0, 1), of ``x``'s shape and dtype, when ``rounding`` is
        :attr:`Rounding.STOCHASTIC`, else ``None``. Must not modify ``x`` and must not branch
        in Python on tensor values, so that ``torch.compile`` can fuse it.
        """

    def noise_layout(self, shape: Sequence[int]) -> tuple[tuple[int, ...], int | None]:
        """The shape a compiled kernel makes x's noise in, and that shape's static row length.

        Stochastic noise is a function of each element's row-major index, so any shape with
        x's elements in the same row-major order gives the same numbers once viewed as x's
        shape. A format whose kernel works on a view of x with a last dimension of constant
        length (MX and NVFP4: blocks along the last dimension) returns that view's shape and
        length, and the noise's index is then built per row, which is faster
        (:func:`qtorch.kernels.noise.uniform_from_counter`). Default: ``(shape, None)``.
        """
        return tuple(shape), None

    def eager_pieces(self, x: torch.Tensor, dtype: torch.dtype, chunk: int) -> EagerPieces | None:
        """How the eager path may round x (rounded in the working ``dtype``) in pieces.

        The eager path works on large CPU tensors in cache-sized pieces
        (:mod:`qtorch.kernels.eager`). A format whose blocks span x computes here, in pieces
        of ``chunk`` elements, what the pieces share (a maximum), and returns a kernel that
        uses it. ``None``: x is rounded whole. Default: single elements and
        :meth:`quantize_kernel` for elementwise formats, else ``None``.
        """
        return EagerPieces((1,), self.quantize_kernel) if self.elementwise else None

    def check_rounding(self, rounding: Rounding | str) -> Rounding:
        """Parse ``rounding`` and check that this format supports it (``ValueError`` if not)."""
        mode = Rounding.parse(rounding)
        if mode not in self.roundings:
            allowed = ", ".join(sorted(repr(m.value) for m in self.roundings))
            raise ValueError(
                f"{type(self).__name__}: rounding must be one of {allowed}, got {mode.value!r}"
            )
        return mode


def pieces_of(x: torch.Tensor, dtype: torch.dtype, chunk: int) -> Iterator[torch.Tensor]:
    """x's elements in row-major order, in runs of ``chunk`` (the last shorter), in ``dtype``.

    For :meth:`Format.eager_pieces` hooks that take a maximum over x piece by piece.
    """
    for piece in x.reshape(-1).split(chunk):
        yield piece.to(dtype)
