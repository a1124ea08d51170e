"""Cold caches for the benchmark: evict the data caches before each timed call.

At 4,194,304 float32 elements, ``torch.mul(x, 2.0)`` moves 16 MiB in and 16 MiB out: as
much as the 32 MiB L3 cache of the machine the targets were set on. With the caches as
the previous call left them, part of x and of the reused output buffer is still there, by
an amount that depends on what else the cache holds; in one day's runs the reference took
0.36-1.19 ms for the same code. Reading a buffer several times the largest cache before
each timed call leaves every call to DRAM, which is where a memory-bound limit is defined
and how a quantizer runs in a training step, after kernels that streamed other tensors.
"""

from __future__ import annotations

import glob

import torch

#: Bytes read per eviction, as a multiple of the largest cache (replacement is not exact
#: LRU, and an exclusive L3 holds what the L2s evicted).
CACHE_MULTIPLE = 4

#: Bytes read when the cache sizes cannot be read (no Linux ``sysfs``, no CUDA property).
FALLBACK_BYTES = 256 * 2**20


def _parse_size(text: str) -> int | None:
    """``"32768K"`` / ``"32M"`` / ``"1024"`` (sysfs cache sizes) in bytes, None if unreadable."""
    text = text.strip().upper()
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    unit = text[-1:] if text[-1:] in units else ""
    digits = text[: len(text) - len(unit)]
    return int(digits) * units.get(unit, 1) if digits.isdigit() else None


def largest_cache_bytes(device: torch.device) -> int | None:
    """The largest data cache of ``device``: the CPU's from sysfs, a CUDA device's L2; None
    if unknown."""
    if device.type == "cuda":
        size = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0)
        return int(size) or None
    sizes = []
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            with open(path, encoding="ascii") as f:
                size = _parse_size(f.read())
        except OSError:
            continue
        if size:
            sizes.append(size)
    return max(sizes, default=None)


def eviction_bytes(device: torch.device) -> int:
    """How many bytes an :class:`Evictor` reads on ``device``."""
    size = largest_cache_bytes(device)
    return FALLBACK_BYTES if size is None else CACHE_MULTIPLE * size


class Evictor:
    """Evicts ``device``'s data caches when called, for calls that must start cold.

    A call reads a float32 buffer of :func:`eviction_bytes` (a maximum over it) and, on
    CUDA, waits for the read. The buffer is written once when made: the pages of a buffer
    that was never written map to one shared zero page, whose reads stay in the cache and
    evict nothing (reading such a buffer left ``torch.mul`` at its warm 0.36 ms).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.buffer = torch.ones(eviction_bytes(device) // 4, dtype=torch.float32, device=device)

    def __call__(self) -> None:
        self.buffer.amax()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
