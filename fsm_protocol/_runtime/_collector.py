"""Python's garbage collector, tuned while a run is under way and restored after.

A run with many workers keeps many objects alive (machines, bindings, links),
and every collection of the older generations visits all of them, while what
a message allocates dies young. So while any executor of this process runs,
the young generation is collected every :data:`YOUNG_THRESHOLD` allocations
instead of CPython's 700, and what was built before each run started (its
machines and bindings) is frozen out of collections (:func:`gc.freeze`). When
the last run of the process ends, the thresholds are put back as they were
and what was frozen is unfrozen, so garbage left by the runs is collected.

The collector is left alone when the application has disabled it, and
nothing is frozen when the application has frozen objects itself (then
unfreezing at the end would undo its choice).
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
# What to put back when the last run ends: the thresholds, and whether we froze.
_saved: tuple[tuple[int, ...], bool] | None = None


@contextlib.contextmanager
def collector_tuned() -> Iterator[None]:
    """Tune the collector for the length of a run; runs may nest and overlap (threads too)."""
    global _runs, _saved
    with _lock:
        if _runs == 0:
            if gc.isenabled():
                thresholds = gc.get_threshold()
                _saved = (thresholds, gc.get_freeze_count() == 0)
                gc.set_threshold(max(thresholds[0], YOUNG_THRESHOLD), *thresholds[1:])
            else:
                _saved = None
        _runs += 1
        if _saved is not None and _saved[1]:
            gc.freeze()  # cheap: moves the generations' lists, visits nothing
    try:
        yield
    finally:
        with _lock:
            _runs -= 1
            if _runs == 0 and _saved is not None:
                before, froze = _saved
                _saved = None
                gc.set_threshold(*before)
                if froze:
                    gc.unfreeze()
