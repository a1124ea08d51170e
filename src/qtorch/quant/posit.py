"""qtorch+'s posit functions: same names, parameters and defaults, exact semantics.

``posit_quantize`` and ``bfloat16_posit8_quantize`` are :func:`qtorch.quantize` with a
:class:`~qtorch.Posit` / :class:`~qtorch.Positbf`; ``convert_to_posit`` returns bit patterns;
``posit_sigmoid`` / ``posit_tanh`` / ``posit_tanh_enhanced`` are the fast posit<n,0>
activations built on a bit trick (sigmoid(x) ~ the posit whose code is the code of x with its
top bit flipped, shifted right by 2).
"""

from __future__ import annotations

import torch

from qtorch.formats.posit import Posit, Positbf
from qtorch.kernels.posit import decode_posit, encode_posit
from qtorch.quant.format_cache import format_of
from qtorch.quantize import quantize, working_tensor
from qtorch.rounding import Rounding

__all__ = [
    "bfloat16_posit8_quantize",
    "convert_to_posit",
    "posit_quantize",
    "posit_sigmoid",
    "posit_tanh",
    "posit_tanh_enhanced",
]

#: posit_tanh_enhanced: outputs beyond this magnitude are pushed out by TANH_OFFSET.
TANH_THRESHOLD = 0.7583
#: posit_tanh_enhanced: the correction added (subtracted) beyond ``TANH_THRESHOLD``.
TANH_OFFSET = 0.06795


def posit_quantize(
    x: torch.Tensor,
    nsize: int,
    es: int,
    scale: float = 1.0,
    rounding: Rounding | str = "nearest",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Round x to posit<nsize, es> with ``scale``: ``qtorch.quantize(x, Posit(nsize, es, scale))``.

    See :class:`qtorch.Posit` for ties, saturation, NaN/Inf and ``scale``. Unlike qtorch+,
    ``rounding="stochastic"`` really rounds stochastically (from ``generator`` or the
    device's torch RNG), and nsize 2..32 with es 0..4 all work.

    >>> posit_quantize(torch.tensor([0.3, 10.0, 1e9]), nsize=8, es=1)
    tensor([2.9688e-01, 1.0000e+01, 4.0960e+03])
    """
    return quantize(x, format_of(Posit, nsize, es, scale), rounding, generator)


def convert_to_posit(x: torch.Tensor, nsize: int, es: int, scale: float = 1.0) -> torch.Tensor:
    """Posit<nsize, es> bit patterns of ``x * scale`` in qtorch+'s layout (nsize 2..16).

    The result is a ``torch.uint16`` tensor holding the nsize-bit code (rounded to nearest,
    as :meth:`qtorch.Posit.encode`) in its most significant bits: posit<8,*> of 1.0 is
    0x4000, NaR (from ±Inf and NaN) is 0x8000, zero is 0. qtorch+ ignored ``scale``; here the
    code is that of ``x * scale``, consistent with :func:`posit_quantize`.

    >>> convert_to_posit(torch.tensor([1.0, -1.0, 0.5]), nsize=8, es=0)
    tensor([16384, 49152,  8192], dtype=torch.uint16)
    """
    fmt = Posit(nsize, es, scale)
    if nsize > 16:
        raise ValueError(f"convert_to_posit: nsize must be in 2..16, got {nsize}")
    codes = fmt.encode(working_tensor(x, "convert_to_posit"))
    word = (codes & ((1 << nsize) - 1)) << (16 - nsize)
    return word.to(torch.uint16)


def bfloat16_posit8_quantize(
    x: torch.Tensor,
    nsize: int,
    es: int,
    scale: float = 1.0,
    rounding: Rounding | str = "nearest",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Round a bfloat16 tensor to posit<nsize, es> (nsize 2..8); bfloat16 in, bfloat16 out.

    The value is the posit rounding of the bfloat16 input times ``scale``, divided by
    ``scale``: ``qtorch.quantize(x, Positbf(nsize, es, scale))``. Every posit of at most 8
    bits is a bfloat16 number, so nothing rounds twice. Saturation, NaN and Inf as
    :class:`qtorch.Posit` (qtorch+ returned 0 beyond maxpos, below minpos and for NaN/Inf,
    and misrounded nsize < 8).

    Raises:
        TypeError: x is not a bfloat16 tensor.

    >>> x = torch.tensor([2.5, 1e-30, float("inf")], dtype=torch.bfloat16)
    >>> bfloat16_posit8_quantize(x, nsize=7, es=2)
    tensor([2.5000e+00, 9.5367e-07,        nan], dtype=torch.bfloat16)
    """
    if not isinstance(x, torch.Tensor) or x.dtype != torch.bfloat16:
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"bfloat16_posit8_quantize: x must be a bfloat16 tensor, got {got}")
    return quantize(x, format_of(Positbf, nsize, es, scale), rounding, generator)


def _check_activation(caller: str, nsize: int, rounding: Rounding | str) -> None:
    if isinstance(nsize, bool) or nsize not in (8, 16):
        raise ValueError(f"{caller}: nsize must be 8 or 16, got {nsize!r}")
    Rounding.parse(rounding)


def _sigmoid_trick(work: torch.Tensor, nsize: int, prescale: float) -> torch.Tensor:
    """The posit sigmoid of ``work * prescale`` in ``work``'s dtype (see posit_sigmoid)."""
    codes = encode_posit(work, nsize, 0, prescale)
    word = (codes & ((1 << nsize) - 1)) << (16 - nsize)
    word = (word ^ 0x8000) >> 2  # flip the sign bit; logical shift (the word is >= 0)
    s = decode_posit(word, 16, 0, 1.0, work.dtype)
    s = torch.where(work == torch.inf, 1.0, s)
    s = torch.where(work == -torch.inf, 0.0, s)
    return torch.where(torch.isnan(work), torch.nan, s)


def posit_sigmoid(
    x: torch.Tensor,
    nsize: int,
    es: int = 0,
    scale: float = 1.0,
    rounding: Rounding | str = "nearest",
) -> torch.Tensor:
    """The posit sigmoid approximation: a bit trick on posit<nsize, 0> codes (nsize 8 or 16).

    x is encoded as posit<nsize, 0> (nearest), the code is placed at the top of a 16-bit
    word, the word's top bit is flipped, the word is shifted right by 2 (logical), and the
    result is read as a posit<16, 0>. So for nsize 8 the output keeps 2 bits more than
    posit<8,0> has (as in qtorch+). Max error against the true sigmoid about 0.05.
    ``es``, ``scale`` and ``rounding`` are accepted for compatibility and ignored (as in
    qtorch+; ``rounding`` must still be a valid name). The result has x's dtype.

    Specials: +Inf gives 1 and -Inf gives 0 (the limits; qtorch+ gave 0 for +Inf), NaN gives
    NaN; ±0 gives 0.5. Finite values beyond maxpos saturate like maxpos.

    Raises:
        ValueError: nsize is not 8 or 16.

    >>> posit_sigmoid(torch.tensor([-4.0, 0.0, 1.0, 4.0]), nsize=8)
    tensor([0.0625, 0.5000, 0.7500, 0.9375])
    """
    _check_activation("posit_sigmoid", nsize, rounding)
    work = working_tensor(x, "posit_sigmoid")
    return _sigmoid_trick(work, nsize, 1.0).to(x.dtype)


def posit_tanh(
    x: torch.Tensor,
    nsize: int,
    es: int = 0,
    scale: float = 1.0,
    rounding: Rounding | str = "nearest",
) -> torch.Tensor:
    """The posit tanh approximation: 2 * posit_sigmoid(2x) - 1 (nsize 8 or 16).

    The sigmoid is the bit trick of :func:`posit_sigmoid`; 2x is formed exactly inside the
    encoding (a finite x whose double overflows saturates at maxpos). ``es``, ``scale`` and
    ``rounding`` are accepted and ignored. Max error against the true tanh about 0.1.
    Specials: ±Inf give ±1 (qtorch+ gave -1 for +Inf), NaN gives NaN, ±0 gives 0.

    >>> posit_tanh(torch.tensor([-1.0, 0.0, 0.5, 2.0]), nsize=16)
    tensor([-0.7500,  0.0000,  0.5000,  0.8750])
    """
    _check_activation("posit_tanh", nsize, rounding)
    work = working_tensor(x, "posit_tanh")
    return (2.0 * _sigmoid_trick(work, nsize, 2.0) - 1.0).to(x.dtype)


def posit_tanh_enhanced(
    x: torch.Tensor,
    nsize: int,
    es: int = 0,
    scale: float = 1.0,
    rounding: Rounding | str = "nearest",
) -> torch.Tensor:
    """:func:`posit_tanh` corrected near the ends (max error about 0.04 instead of 0.1).

    y = posit_tanh(x); then y + 0.06795 where y > 0.7583, y - 0.06795 where y < -0.7583,
    and the result clamped to [-1, 1]; computed in x's working dtype (float32 for 16-bit
    floats). ``es``, ``scale`` and ``rounding`` are accepted and ignored. Specials: ±Inf give
    ±1, NaN gives NaN.

    >>> posit_tanh_enhanced(torch.tensor([-1.0, 0.5, 2.0]), nsize=16)  # only |y| > 0.7583 moves
    tensor([-0.7500,  0.5000,  0.9430])
    """
    _check_activation("posit_tanh_enhanced", nsize, rounding)
    work = working_tensor(x, "posit_tanh_enhanced")
    y = 2.0 * _sigmoid_trick(work, nsize, 2.0) - 1.0
    y = torch.where(y > TANH_THRESHOLD, y + TANH_OFFSET, y)
    y = torch.where(y < -TANH_THRESHOLD, y - TANH_OFFSET, y)
    return y.clamp(-1.0, 1.0).to(x.dtype)
