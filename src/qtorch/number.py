"""QPyTorch's ``qtorch.number`` module: the format classes under their old import path.

``Number`` was QPyTorch's base class of all formats; here it is
:class:`qtorch.formats.base.Format`.
"""

from qtorch.formats.base import Format as Number
from qtorch.formats.block import BlockFloatingPoint
from qtorch.formats.fixed import FixedPoint
from qtorch.formats.floating import FloatingPoint
from qtorch.formats.posit import Posit

__all__ = ["BlockFloatingPoint", "FixedPoint", "FloatingPoint", "Number", "Posit"]
