"""Model lowering: insert quantizers after chosen layer types."""

from qtorch.auto_low.lower import (
    LAYER_TYPES,
    ParametrizedWeightQuantizer,
    WeightQuantizer,
    lower,
    sequential_lower,
)

__all__ = [
    "LAYER_TYPES",
    "ParametrizedWeightQuantizer",
    "WeightQuantizer",
    "lower",
    "sequential_lower",
]
