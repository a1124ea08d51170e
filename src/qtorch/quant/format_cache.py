"""One format object per argument list, for the functional quantizers.

``fixed_point_quantize(x, 8, 4)`` and its siblings build their format on every call. A
build validates its parameters (about 17 µs after a large kernel has filled the caches with
tensor data), and a new object has no plan (:func:`qtorch.kernels.fused.run_planned`), so
every such call ran the full dispatch: ``fixed_point_quantize`` on 100,000 float32
elements took 188 µs against 106 µs for ``qtorch.quantize`` with one format object (2
threads, compiled, after a 4,194,304-element ``torch.mul``). Formats are frozen, so one
object can serve every call with the same arguments.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable
from typing import Any, TypeVar, cast

F = TypeVar("F")

#: Argument lists remembered (least recently used ones are dropped beyond this).
MAX_FORMATS = 1024


@functools.lru_cache(maxsize=MAX_FORMATS, typed=True)
def _built(cls: type[Any], *args: Any) -> Any:
    return cls(*args)


def format_of(cls: type[F], *args: Any) -> F:
    """``cls(*args)``, the same object for equal arguments of the same types.

    The arguments' types are part of the key (``typed``), so ``clamp=1`` is not served the
    format built for ``clamp=True`` (which equals 1) and still raises the format's
    ``TypeError``. Errors are not remembered; unhashable arguments build a new object
    (whose constructor says what is wrong with them).
    """
    try:
        hash(args)
    except TypeError:
        return cls(*args)
    key = cast(Hashable, cls)  # a class is hashable; typeshed's type[F] does not say so
    return cast(F, _built(key, *args))
