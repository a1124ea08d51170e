"""qtorch+'s import path for the posit activation modules (see :mod:`qtorch.nn`)."""

from qtorch.nn.posit_activation import (
    PositSigmoidModule,
    PositTanhModule,
    PositTanhModuleEnhanced,
    RefTanhModule,
)

__all__ = ["PositSigmoidModule", "PositTanhModule", "PositTanhModuleEnhanced", "RefTanhModule"]
