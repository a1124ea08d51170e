"""Pure tensor functions on float bits: no format objects, no Python branching on values."""
