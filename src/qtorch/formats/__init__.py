"""Number formats: one frozen dataclass per format family, and named presets."""

from qtorch.formats.base import Format

__all__ = ["Format"]
