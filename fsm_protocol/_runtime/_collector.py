"""Python's garbage collector, tuned while a run is under way and restored after.

A run with many workers keeps many objects alive (machines, bindings, links),
and every collection of the older generations visits all of them, while what
a message allocates dies young. So while any executor of this process runs,
the young generation is collected every :data:`YOUNG_THRESHOLD` allocations
instead of CPython's 700. When the last run of the process ends, the
thresholds are put back as they were. The collector is left alone when the
application has disabled it.

Nothing is frozen (:func:`gc.freeze`): freezing at each run's start also froze
the garbage of earlier runs, and a process running many short tasks (the
fault benchmark's fuzzer) grew by about 100 KiB per task; it did not make the
runtime benchmark faster.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

YOUNG_THRESHOLD = 50_000
"""Allocations between two collections of the young generation while a run is under way."""

_lock = threading.Lock()
_runs = 0
# What to put back when the last run ends: the thresholds.
_saved: tuple[int, ...] | None = None


@contextlib.contextmanager
def collector_tuned() -> Iterator[None]:
    """Tune the collector for the length of a run; runs may nest and overlap (threads too)."""
    global _runs, _saved
    with _lock:
        if _runs == 0:
            if gc.isenabled():
                thresholds = gc.get_threshold()
                _saved = thresholds
                gc.set_threshold(max(thresholds[0], YOUNG_THRESHOLD), *thresholds[1:])
            else:
                _saved = None
        _runs += 1
    try:
        yield
    finally:
        with _lock:
            _runs -= 1
            if _runs == 0 and _saved is not None:
                before = _saved
                _saved = None
                gc.set_threshold(*before)
