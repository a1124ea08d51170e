"""Neural-network building blocks: posit activation modules."""

from qtorch.nn.posit_activation import (
    PositSigmoidModule,
    PositTanhModule,
    PositTanhModuleEnhanced,
    RefTanhModule,
)

__all__ = ["PositSigmoidModule", "PositTanhModule", "PositTanhModuleEnhanced", "RefTanhModule"]
