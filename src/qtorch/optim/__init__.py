"""Low-precision optimizer wrapper."""

from qtorch.optim.optim_lp import OptimLP

__all__ = ["OptimLP"]
