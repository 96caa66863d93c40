"""The trace of one case, in the order the kit's side processed it."""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Final

import attrs
import trio

from .._core._chart import Chart
from ._coverage import CoverageRecorder
from ._reports import Note


@attrs.frozen
class Marker:
    """An internal event of the kit's modeller, for the checker: not a line."""

    pod: str
    event: str
    excuse: bool = False


FAULTED: Final = object()  # in a pod's arrivals: a message the kit faulted on purpose
MARKED_EVENTS: Final = frozenset({"response_timeout", "task_ended", "cancel_requested"})
FAULT_EVENTS: Final = frozenset({"bad_input", "link_lost", "cancel_unconfirmed"})


class Recorder:
    """The trace of one case, in the order the kit's side processed it."""

    def __init__(self, chart: Chart, coverage: CoverageRecorder) -> None:
        self.entries: list[bytes | Marker] = []
        self.arrivals: dict[str, collections.deque[object]] = collections.defaultdict(
            collections.deque
        )
        self.coverage = coverage
        self.chart = chart
        self.faulted: set[str] = set()
        self.swallowed: set[str] = set()
        self.cut: set[str] = set()  # pods the kit stopped listening to
        # Kit pods whose line could not be written: the modeller had gone.
        self.undelivered: set[str] = set()
        self.online_checks: set[str] = set()
        self.problems: list[tuple[str, bytes]] = []
        self.after_fault: dict[str, list[bytes]] = collections.defaultdict(list)
        self.states: dict[str, str] = {}
        self.notes: list[Note] = []
        self.answered: dict[str, trio.Event] = collections.defaultdict(trio.Event)
        self.ended_from: dict[str, str] = {}
        self.lost_at: dict[str, int] = {}
        self.requested_at: dict[str, float] = {}
        self.latency = 0.0
        # The lines come from several streams read concurrently (one TCP connection per
        # pod), not from one stream in the order written: see TraceChecker(interleaved=...).
        self.interleaved = False
        # Per pod: the set-up-dependent messages it wrote before the kit wrote its
        # ALGORITHM_EXCHANGE (which a fault held back), so it cannot have waited for it.
        self.before_setup: dict[str, list[str]] = {}
        # Sees each line as it is recorded (the modeller case's watch on what is owed).
        self.on_line: Callable[[bytes], None] | None = None

    @property
    def line_count(self) -> int:
        return sum(1 for e in self.entries if isinstance(e, bytes))

    def note(self, pod: str, text: str) -> None:
        self.notes.append(Note(self.line_count, pod, text))

    def line(self, raw: bytes) -> None:
        raw = raw if raw.endswith(b"\n") else raw + b"\n"
        self.entries.append(raw)
        if self.on_line is not None:
            self.on_line(raw)
