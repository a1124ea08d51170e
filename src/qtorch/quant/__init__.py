"""The QPyTorch / qtorch+ functional API: same names, parameters and defaults."""

__all__: list[str] = []
