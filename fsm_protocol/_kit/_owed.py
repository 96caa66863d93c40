"""What a modeller under test owes the kit's pods, and how long the kit waits for it.

The kit feeds the live trace to the trace checker, which knows the modeller's
obligations: a JOB_REQUEST to every pod of the scenario, ALGORITHM_EXCHANGE after
an accept with an initial setup, TASK_CANCEL after another pod's abort or a late
accept, ONLINE_RESPONSE to an ONLINE_CHECK, TASK_START once every accepted pod is
ready, TASK_COMPLETE once every counted pod is done. Each obligation gets its own
wait from the line that made it owed; when one runs out, the kit ends the case and
its verdict names the message that did not come. A violation ends the case too:
the first violation of a trace does not depend on what follows it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final, final

import attrs
import trio

from .._check._checker import TraceChecker, _Link
from ._limits import OWED_WAIT, REQUEST_WAIT

# The modeller chart's states in which the modeller owes TASK_START (once every
# accepted pod is ready) and TASK_COMPLETE (once every counted pod is done).
_READY: Final = frozenset({"single_ready", "batch_ready"})
_DONE: Final = "final_step"


@final
@attrs.frozen
class Owed:
    """A message the modeller owes one pod, since when, and why."""

    pod: str
    message: str
    since: float
    line: int
    cause: str
    wait: float

    @property
    def deadline(self) -> float:
        return self.since + self.wait

    def text(self) -> str:
        """The verdict when the kit's own wait ran out."""
        return (
            f"expected {self.message} to {self.pod} within {self.wait:.3g} s after"
            f" {self.cause}, got nothing"
        )

    def gave_up_text(self, waited: float) -> str:
        """The verdict when the pod's own chart timer ran out first."""
        return (
            f"expected {self.message} to {self.pod} after {self.cause}, got nothing in the"
            f" {waited:.2g} s until the pod's own timer ran out"
        )


def _cause(link: _Link, message: str, line: int, checker_cause: str) -> str:
    where = f"(line {line})"
    if message == "TASK_CANCEL" and link.late:
        return f"its late JOB_ACCEPT {where}"
    if message == "ONLINE_RESPONSE":
        return f"its ONLINE_CHECK {where}"
    if message == "ALGORITHM_EXCHANGE":
        return f"its JOB_ACCEPT of a job with an initial setup {where}"
    return f"{checker_cause} {where}"


@final
class OwedWatch:
    """Follows the trace of one modeller case and says what the modeller owes whom.

    Args:
        task_id: The case's task.
        pods: Every pod of the scenario: each is owed a JOB_REQUEST from the start.
        silent: Pods that never answer (the checker lets the trace end without them).
        scale: The run's time scale.
        response_timeout: The modeller's wait for answers, scaled: while a pod has
            not answered, TASK_START may wait that long on top.
        interleaved: The lines come from one connection per pod, read
            concurrently (see ``TraceChecker(interleaved=...)``).
    """

    def __init__(
        self,
        task_id: str,
        pods: Iterable[str],
        *,
        silent: Iterable[str],
        scale: float,
        response_timeout: float,
        interleaved: bool = False,
    ) -> None:
        self.task_id = task_id
        self.pods = tuple(pods)
        self.scale = scale
        self.response_timeout = response_timeout
        self.checker = TraceChecker(unanswered_ok=silent, interleaved=interleaved)
        now = trio.current_time()
        self.owed: dict[tuple[str, str], Owed] = {
            (pod, "JOB_REQUEST"): Owed(
                pod, "JOB_REQUEST", now, 0, "the CONFORMANCE_SCENARIO line", REQUEST_WAIT * scale
            )
            for pod in self.pods
        }
        # What each pod was still owed when it ended on its own (say, on its own timeout).
        self.abandoned: dict[str, list[Owed]] = {}
        self.expired: Owed | None = None
        self._changed = trio.Event()

    @property
    def violated(self) -> bool:
        return self.checker.finding is not None

    def feed(self, raw: bytes) -> None:
        """Take the next line of the trace."""
        if self.checker.finding is not None:
            return
        self.checker.feed(raw)
        self._update()

    def _update(self) -> None:
        now = trio.current_time()
        checker = self.checker
        task = checker.tasks.get(self.task_id)
        links = task.links if task is not None else {}
        wanted: dict[tuple[str, str], tuple[int, str, float]] = {}
        for pod in self.pods:
            if pod not in links:
                old = self.owed.get((pod, "JOB_REQUEST"))
                if old is not None:
                    wanted[(pod, "JOB_REQUEST")] = (old.line, old.cause, old.wait)
        if task is not None and checker.finding is None:
            unanswered = any(link.leaf == "requested" for link in links.values())
            base = OWED_WAIT * self.scale
            for link in links.values():
                for message, (line, cause) in (link.owed or {}).items():
                    wanted[(link.pod, message)] = (line, _cause(link, message, line, cause), base)
                if link.leaf in _READY and task.all_ready():
                    # While a pod has not answered, the modeller may wait out its response
                    # timeout before the barrier opens.
                    extra = self.response_timeout if unanswered else 0.0
                    wanted[(link.pod, "TASK_START")] = (
                        checker.line,
                        f"every accepted pod had sent TASK_START (line {checker.line})",
                        base + extra,
                    )
                if link.leaf == _DONE and task.all_done() and not link.cancel_sent:
                    wanted[(link.pod, "TASK_COMPLETE")] = (
                        checker.line,
                        f'every counted pod had sent BATCHES_COMPLETE "TASK_COMPLETE"'
                        f" (line {checker.line})",
                        base,
                    )
        changed = False
        for key, owed in list(self.owed.items()):
            if key not in wanted:
                del self.owed[key]
                changed = True
                ended = links.get(owed.pod)
                if ended is not None and not ended.row and ended.ended_by.startswith("recv:"):
                    self.abandoned.setdefault(owed.pod, []).append(owed)
        for key, (line, cause, wait) in wanted.items():
            if key not in self.owed:
                self.owed[key] = Owed(key[0], key[1], now, line, cause, wait)
                changed = True
        if changed or checker.finding is not None:
            self._changed.set()
            self._changed = trio.Event()

    async def watch(self, stop: Callable[[], None]) -> None:
        """Call ``stop`` when an owed message is overdue, or at the first violation."""
        while self.checker.finding is None:
            changed = self._changed
            if not self.owed:
                await changed.wait()
                continue
            first = min(self.owed.values(), key=lambda owed: owed.deadline)
            with trio.move_on_at(first.deadline):
                await changed.wait()
            if changed.is_set():
                continue
            if self.owed.get((first.pod, first.message)) is first:
                self.expired = first
                break
        stop()

    def unowed(self) -> frozenset[str]:
        """Pods whose answer reached the modeller after the task ended: owed nothing (M-4.19)."""
        task = self.checker.tasks.get(self.task_id)
        if task is None:
            return frozenset()
        return frozenset(pod for pod, link in task.links.items() if link.unowed)

    def owed_to(self, pod: str) -> list[Owed]:
        """What the modeller owed ``pod`` when it ended on its own, or owes it now."""
        return self.abandoned.get(pod) or [o for o in self.owed.values() if o.pod == pod]
