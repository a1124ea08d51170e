"""Model lowering: insert quantizers after chosen layer types."""

from qtorch.auto_low.lower import LAYER_TYPES, WeightQuantizer, lower, sequential_lower

__all__ = ["LAYER_TYPES", "WeightQuantizer", "lower", "sequential_lower"]
