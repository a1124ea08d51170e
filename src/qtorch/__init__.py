"""qtorch: exact simulation of low-precision number formats in PyTorch."""

from qtorch.formats.base import Format
from qtorch.quantize import quantize, quantize_
from qtorch.rounding import Rounding

__all__ = ["Format", "Rounding", "quantize", "quantize_"]
__version__ = "0.1.0"
