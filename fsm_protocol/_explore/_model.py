"""The explorer's side of the two charts: thin bindings over plain, hashable data.

``explore`` steps the compiled charts with the engine (:class:`Machine`); these
classes are the guards, actions and activities the charts name, written so that
everything they know fits in a tuple that the explorer hashes and copies.

Why not the runtime's own bindings (``WorkerBindings``, ``LinkBindings``)?
They are built on the trio executor: importing them imports trio, their data
holds ``Message`` objects, open caches and the executor itself, and the
modeller's sends are raised by ``_Task.check_progress`` after it has checked
the barrier itself, so a chart whose guard was removed would not show it. Here
the chart decides: the modeller *offers* ``TASK_START`` and ``TASK_COMPLETE``
to every link in a state that expects them, and the chart's guards
(``all_ready``, ``all_done``) decide whether it goes. Activities follow the
runtime's ``do_*`` (same outputs, same order) with the conformance Echo
algorithm as the data, and each fault is a choice an activity makes.

A message is a tuple ``(type, body, batch)``: ``body`` is an int, a string, a
tuple of item numbers (``EVALUATION_RESULTS``) or ``(reason, noted)``
(``TASK_ABORT``); ``batch`` is ``meta.batch_number``.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final, final

import attrs

from .._algo._echo_model import CONSECUTIVE_FAILURE_LIMIT
from .._core._chart import Chart
from .._core._compiled import CompiledChart, Event
from .._core._engine import Machine
from .._wire._catalogue import BODY_GUARDS

Msg = tuple[str, Any, Any]
Output = tuple[str, Any]

FAULTS: Final = (
    "cancel",
    "reject",
    "late-accept",
    "crash",
    "silence",
    "limit",
    "fail-in-batch",
    "fail-alone",
    "duplicate",
)

EOF: Final[Msg] = ("EOF", None, None)
# An output event ``OFFER_SEND + "NUMBER_OF_BATCHES"`` is a send the activity *offers*:
# it goes out only if the chart takes it, and is dropped otherwise (no violation).
OFFER_SEND: Final = "offer:send:"
# The mark of a message that the ``duplicate`` fault sent a second time (its 4th field).
DUPLICATE: Final = "duplicate"
ONLINE_TOKEN: Final = "online"

# What each cause of an abort means, from the worker chart's events (spec section 4/5):
# the reason its TASK_ABORT must give.
ABORT_REASONS: Final = {
    "recv:TASK_CANCEL": "CANCELLED_BY_MODELLER",
    "input_closed": "MODELLER_TIMEOUT",
    "start_timeout": "MODELLER_TIMEOUT",
    "hard_timeout": "MODELLER_TIMEOUT",
    "bad_input": "PROTOCOL_ERROR",
    "no_data": "NO_DATA",
    "worker_error": "WORKER_ERROR",
    "batch_failed": "WORKER_ERROR",
    "run_failed": "WORKER_ERROR",
    "resilience_done": "WORKER_ERROR",
    "limit_reached": "LIMITS_EXCEEDED",
}


@attrs.frozen
class Bounds:
    """What to explore: how many workers, items and batches, and which faults.

    Args:
        workers: Identical workers (the same Echo job each).
        items: Items per worker.
        batch_size: Items per batch.
        batched: ``batched_execution`` of the job; False runs all items at once.
        faults: Any subset of :data:`FAULTS`.
        initial_setup: The Echo job asks for the initial setup exchange.
    """

    workers: int = 2
    items: int = 2
    batch_size: int = 1
    batched: bool = True
    faults: frozenset[str] = frozenset()
    initial_setup: bool = False

    @property
    def batches(self) -> int:
        if not self.batched:
            return 1 if self.items else 0
        return -(-self.items // self.batch_size)

    @property
    def limit(self) -> int:
        """The inference limit the ``limit`` fault sets: the last item is cut."""
        return max(1, self.items - 1)

    def batch_items(self, batch: int) -> tuple[int, ...]:
        if not self.batched:
            return tuple(range(self.items))
        start = batch * self.batch_size
        return tuple(range(start, min(start + self.batch_size, self.items)))


# --------------------------------------------------------------------------- worker

_W_FIELDS: Final = (
    "rej",  # chose to reject the job
    "lim",  # the job carries the inference limit
    "cur",  # current batch id, -1 before the first
    "fails",  # consecutive failed batches
    "succ",  # some batch or retry succeeded
    "est",  # the estimate was sent
    "retry",  # ((item, fails_alone), ...) waiting for the resilience phase
    "fld",  # bitmask: items failed for good
    "fib",  # bitmask: batches that failed in batch
    "usage",  # inferences used (only with the limit)
    "abort",  # the reason noted for aborting, or None
    "setup",  # the setup values arrived
    "cause",  # the event that entered the aborting state, or ""
)
W_INITIAL: Final = (False, False, -1, 0, False, False, (), 0, 0, 0, None, False, "")


@final
class WorkerBindings:
    """Guards, actions and activities of the worker chart, over :data:`W_INITIAL`-shaped data."""

    __slots__ = ("bounds", *_W_FIELDS)

    rej: bool
    lim: bool
    cur: int
    fails: int
    succ: bool
    est: bool
    retry: tuple[tuple[int, bool], ...]
    fld: int
    fib: int
    usage: int
    abort: str | None
    setup: bool
    cause: str

    def __init__(self, bounds: Bounds, data: tuple[Any, ...] = W_INITIAL) -> None:
        self.bounds = bounds
        (
            self.rej,
            self.lim,
            self.cur,
            self.fails,
            self.succ,
            self.est,
            self.retry,
            self.fld,
            self.fib,
            self.usage,
            self.abort,
            self.setup,
            self.cause,
        ) = data

    def data(self) -> tuple[Any, ...]:
        return (
            self.rej,
            self.lim,
            self.cur,
            self.fails,
            self.succ,
            self.est,
            self.retry,
            self.fld,
            self.fib,
            self.usage,
            self.abort,
            self.setup,
            self.cause,
        )

    # ---------------------------------------------------------------- guards

    def guard_batched_job(self, event: Event) -> bool:
        return self.bounds.batched

    def guard_count_is_one(self, event: Event) -> bool:
        return bool(event.data[1] == 1)

    def guard_count_is_unknown(self, event: Event) -> bool:
        return bool(event.data[1] == -1)

    def guard_is_estimate(self, event: Event) -> bool:
        body = event.data[1]
        return isinstance(body, int) and body > 0

    def guard_estimate_sent(self, event: Event) -> bool:
        return self.est

    def guard_initial_setup(self, event: Event) -> bool:
        return self.bounds.initial_setup

    def guard_wants_setup_values(self, event: Event) -> bool:
        return self.bounds.initial_setup and not self.setup

    def guard_has_setup_values(self, event: Event) -> bool:
        return self.setup

    def guard_is_next_batch_id(self, event: Event) -> bool:
        return bool(event.data[1] == self.cur + 1)

    def guard_is_batch_result(self, event: Event) -> bool:
        return bool(event.data[2] == self.cur)

    def guard_is_unbatched_result(self, event: Event) -> bool:
        return event.data[2] is None

    def guard_is_retry_result(self, event: Event) -> bool:
        return event.data[2] is None

    def guard_is_batches_only(self, event: Event) -> bool:
        return bool(event.data[1] == "BATCHES_ONLY")

    def guard_is_task_complete(self, event: Event) -> bool:
        return bool(event.data[1] == "TASK_COMPLETE")

    def guard_at_failure_limit(self, event: Event) -> bool:
        return self.fails + 1 >= CONSECUTIVE_FAILURE_LIMIT

    def guard_nothing_succeeded(self, event: Event) -> bool:
        return not self.succ

    # --------------------------------------------------------------- actions

    def action_store_job(self, event: Event) -> None:
        pass

    def action_store_setup(self, event: Event) -> None:
        self.setup = True

    def action_note_batch_id(self, event: Event) -> None:
        self.cur = event.data[1]

    def action_note_result(self, event: Event) -> None:
        self.succ = True

    def action_note_failure(self, event: Event) -> None:
        self.fails += 1

    def action_note_estimate(self, event: Event) -> None:
        self.est = True

    def _set_abort(self, reason: str) -> None:
        if self.abort is None:
            self.abort = reason

    def action_note_cancelled(self, event: Event) -> None:
        self._set_abort("CANCELLED_BY_MODELLER")

    def action_note_modeller_lost(self, event: Event) -> None:
        self._set_abort("MODELLER_TIMEOUT")

    def action_note_modeller_timeout(self, event: Event) -> None:
        self._set_abort("MODELLER_TIMEOUT")

    def action_note_protocol_error(self, event: Event) -> None:
        self._set_abort("PROTOCOL_ERROR")

    def action_note_no_data(self, event: Event) -> None:
        self._set_abort("NO_DATA")

    def action_note_worker_error(self, event: Event) -> None:
        self._set_abort("WORKER_ERROR")

    def action_note_limits_exceeded(self, event: Event) -> None:
        self._set_abort("LIMITS_EXCEEDED")

    # ------------------------------------------------------------ activities
    # Each returns the events the runtime's activity posts, in order. An
    # activity with a fault to choose has a ``choices_<name>`` beside it.

    def choices_vet_job(self) -> list[Any]:
        found: list[Any] = ["accept"]
        if "limit" in self.bounds.faults:
            found.append("limit")
        if "reject" in self.bounds.faults:
            found.append("reject")
        return found

    def do_vet_job(self, choice: Any) -> list[Output]:
        if choice == "reject":
            self.rej = True
            return [("send:JOB_REJECT", ("JOB_REJECT", "TASK_SETUP_ERROR", None))]
        self.lim = choice == "limit"
        return [("send:JOB_ACCEPT", ("JOB_ACCEPT", None, None))]

    def do_prepare_data(self, choice: Any) -> list[Output]:
        return [("send:PREPARING_DATA", ("PREPARING_DATA", None, None))]

    def do_configure_task(self, choice: Any) -> list[Output]:
        return [("send:CONFIGURING_TASK", ("CONFIGURING_TASK", None, None))]

    def do_finish_preparing(self, choice: Any) -> list[Output]:
        return [("prepared", None)] if self.bounds.items else [("no_data", None)]

    def do_check_online(self, choice: Any) -> list[Output]:
        return [("send:ONLINE_CHECK", ("ONLINE_CHECK", ONLINE_TOKEN, None))]

    def do_run_initial_setup(self, choice: Any) -> list[Output]:
        return [("setup_done", None)]

    def do_plan_batches(self, choice: Any) -> list[Output]:
        if self.bounds.batched:
            return [("send:PREPARING_DATA_BATCHES", ("PREPARING_DATA_BATCHES", None, None))]
        return [("send:NUMBER_OF_BATCHES", ("NUMBER_OF_BATCHES", 1, None))]

    def do_count_batches(self, choice: Any) -> list[Output]:
        return [("send:NUMBER_OF_BATCHES", ("NUMBER_OF_BATCHES", -1, None))]

    def do_announce_first_batch(self, choice: Any) -> list[Output]:
        return [("send:CURRENT_BATCH_ID", ("CURRENT_BATCH_ID", 0, None))]

    def do_send_task_start(self, choice: Any) -> list[Output]:
        out: list[Output] = []
        if self.bounds.batched and not self.est:
            out.append(("send:NUMBER_OF_BATCHES", ("NUMBER_OF_BATCHES", self.bounds.batches, None)))
        out.append(("send:TASK_START", ("TASK_START", None, None)))
        return out

    def _deliver(self, items: tuple[int, ...], batch: int | None, out: list[Output]) -> bool:
        """Send a successful run's results; False when the inference limit ended the task."""
        allowed, over = len(items), False
        if self.lim:
            self.usage += len(items)
            limit = self.bounds.limit
            if self.usage >= limit:
                allowed = max(0, len(items) - (self.usage - limit))
                over = True
        out.append(("send:EVALUATION_RESULTS", ("EVALUATION_RESULTS", items[:allowed], batch)))
        if over:
            out.append(("limit_reached", None))
        return not over

    def choices_run_all(self) -> list[Any]:
        faults = self.bounds.faults
        found: list[Any] = [None]
        if "fail-in-batch" in faults or "fail-alone" in faults:
            found.append("fail")
        return found

    def do_run_all(self, choice: Any) -> list[Output]:
        out: list[Output] = []
        if choice == "fail":
            self.fib |= 1
            if "fail-in-batch" not in self.bounds.faults:
                self.fld |= 1  # the first item fails alone as well
            return [("run_failed", None)]
        if self._deliver(self.bounds.batch_items(0), None, out):
            out.append(("run_done", None))
        return out

    def choices_run_batch(self) -> list[Any]:
        found: list[Any] = [None]
        batch = self.bounds.batch_items(self.cur) if self.cur >= 0 else ()
        faults = self.bounds.faults
        if "fail-in-batch" in faults:
            found.append(frozenset())
        if "fail-alone" in faults:
            for size in range(1, len(batch) + 1):
                found.extend(frozenset(c) for c in itertools.combinations(batch, size))
        return found

    def do_run_batch(self, choice: Any) -> list[Output]:
        batch_id = self.cur
        items = self.bounds.batch_items(batch_id)
        # A streaming worker may learn its batch count as it goes: the estimate is offered
        # at every batch, and the chart's guard ("!estimate_sent") lets out only the first.
        # The runtime checks the same flag in Python and sends one; here the chart decides.
        out: list[Output] = [
            (OFFER_SEND + "NUMBER_OF_BATCHES", ("NUMBER_OF_BATCHES", self.bounds.batches, None))
        ]
        if choice is not None:
            self.retry += tuple((item, item in choice) for item in items)
            self.fib |= 1 << batch_id
            out.append(("batch_failed", None))
        else:
            self.fails = 0
            if not self._deliver(items, batch_id, out):
                return out
        if batch_id + 1 < self.bounds.batches:
            out.append(("send:CURRENT_BATCH_ID", ("CURRENT_BATCH_ID", batch_id + 1, None)))
        else:
            out.append(("send:BATCHES_COMPLETE", ("BATCHES_COMPLETE", "BATCHES_ONLY", None)))
        return out

    def do_retry_failed(self, choice: Any) -> list[Output]:
        out: list[Output] = []
        while self.retry:
            (item, alone), self.retry = self.retry[0], self.retry[1:]
            if alone:
                self.fld |= 1 << item
                continue
            if not self._deliver((item,), None, out):
                return out
        out.append(("resilience_done", None))
        return out

    def do_run_final_step(self, choice: Any) -> list[Output]:
        return [("send:BATCHES_COMPLETE", ("BATCHES_COMPLETE", "TASK_COMPLETE", None))]

    def do_send_abort(self, choice: Any) -> list[Output]:
        # The runtime's fallback when nothing was noted: WORKER_ERROR, "aborted".
        reason = self.abort or "WORKER_ERROR"
        return [("send:TASK_ABORT", ("TASK_ABORT", (reason, self.abort is not None), None))]


# ------------------------------------------------------------------------- modeller

_L_FIELDS: Final = (
    "acc",  # accepted
    "ans",  # answered
    "late",  # accepted after the response timeout
    "csent",  # TASK_CANCEL went out
    "craised",  # TASK_CANCEL was asked for
    "setup_sent",
    "cur",  # batch id of the last CURRENT_BATCH_ID, -1 before
    "est",  # an estimate arrived
    "slots",  # bitmask of result slots taken: bit 0 no batch, bit b+1 batch b
    "items",  # bitmask of items received in results
    "dup",  # some item arrived twice
    "ts",  # the worker's TASK_START arrived
    "done",  # the worker's BATCHES_COMPLETE("TASK_COMPLETE") arrived
    "ssent",  # our TASK_START went out
    "dsent",  # our TASK_COMPLETE went out
    "wend",  # the worker's TASK_ABORT or JOB_REJECT arrived: it has ended
)
L_INITIAL: Final = (False, False, False, False, False, False, -1, False, 0, 0, False) + (
    False,
    False,
    False,
    False,
    False,
)

OFFER: Final = "offer"


@final
class LinkBindings:
    """Guards and actions of the modeller chart for one worker."""

    __slots__ = ("index", "machine", "task", *_L_FIELDS)

    acc: bool
    ans: bool
    late: bool
    csent: bool
    craised: bool
    setup_sent: bool
    cur: int
    est: bool
    slots: int
    items: int
    dup: bool
    ts: bool
    done: bool
    ssent: bool
    dsent: bool
    wend: bool

    def __init__(self, task: ModellerTask, index: int, data: tuple[Any, ...]) -> None:
        self.task = task
        self.index = index
        self.machine: Machine
        (
            self.acc,
            self.ans,
            self.late,
            self.csent,
            self.craised,
            self.setup_sent,
            self.cur,
            self.est,
            self.slots,
            self.items,
            self.dup,
            self.ts,
            self.done,
            self.ssent,
            self.dsent,
            self.wend,
        ) = data

    def data(self) -> tuple[Any, ...]:
        return (
            self.acc,
            self.ans,
            self.late,
            self.csent,
            self.craised,
            self.setup_sent,
            self.cur,
            self.est,
            self.slots,
            self.items,
            self.dup,
            self.ts,
            self.done,
            self.ssent,
            self.dsent,
            self.wend,
        )

    def expects(self, event: str) -> bool:
        machine = self.machine
        return not machine.is_final and event in machine.expected()

    # ---------------------------------------------------------------- guards

    def guard_initial_setup(self, event: Event) -> bool:
        return self.task.bounds.initial_setup

    def guard_batched_job(self, event: Event) -> bool:
        return self.task.bounds.batched

    def guard_cancel_sent(self, event: Event) -> bool:
        return self.csent

    def guard_setup_pending(self, event: Event) -> bool:
        return self.task.bounds.initial_setup and not self.setup_sent

    def guard_setup_settled(self, event: Event) -> bool:
        return not self.task.bounds.initial_setup or self.setup_sent

    def guard_count_is_one(self, event: Event) -> bool:
        return BODY_GUARDS["count_is_one"](event.data[1])

    def guard_count_is_unknown(self, event: Event) -> bool:
        return BODY_GUARDS["count_is_unknown"](event.data[1])

    def guard_is_estimate(self, event: Event) -> bool:
        return BODY_GUARDS["is_estimate"](event.data[1])

    def guard_estimate_seen(self, event: Event) -> bool:
        return self.est

    def guard_is_next_batch_id(self, event: Event) -> bool:
        return bool(event.data[1] == self.cur + 1)

    def guard_is_batch_result(self, event: Event) -> bool:
        return event.data[2] is not None and event.data[2] == self.cur

    def guard_is_unbatched_result(self, event: Event) -> bool:
        return event.data[2] is None

    def guard_is_retry_result(self, event: Event) -> bool:
        return event.data[2] is None

    def guard_duplicate_result(self, event: Event) -> bool:
        return bool(self.slots & _slot(event.data[2]))

    def guard_is_batches_only(self, event: Event) -> bool:
        return BODY_GUARDS["is_batches_only"](event.data[1])

    def guard_is_task_complete(self, event: Event) -> bool:
        return BODY_GUARDS["is_task_complete"](event.data[1])

    def guard_all_ready(self, event: Event) -> bool:
        return self.task.all_ready()

    def guard_all_done(self, event: Event) -> bool:
        return self.task.all_done()

    # --------------------------------------------------------------- actions

    def action_note_accept(self, event: Event) -> None:
        self.acc = self.ans = True

    def action_note_late(self, event: Event) -> None:
        self.late = True

    def action_note_reject(self, event: Event) -> None:
        self.ans = True

    def action_note_no_answer(self, event: Event) -> None:
        pass

    def action_note_bad_input(self, event: Event) -> None:
        self.ans = True

    def action_note_link_lost(self, event: Event) -> None:
        self.ans = True

    def action_note_abort(self, event: Event) -> None:
        if not self.csent:
            self.task.own_abort = True

    def action_cancel_others(self, event: Event) -> None:
        self.task.own_abort = True
        self.task.cancel_all(except_index=self.index)

    def action_send_setup(self, event: Event) -> None:
        self.task.raise_event(
            self.index, "send:ALGORITHM_EXCHANGE", ("ALGORITHM_EXCHANGE", None, None)
        )

    def action_note_setup_sent(self, event: Event) -> None:
        self.setup_sent = True

    def action_send_cancel(self, event: Event) -> None:
        if not self.craised:
            self.craised = True
            self.task.raise_event(self.index, "send:TASK_CANCEL", ("TASK_CANCEL", None, None))

    def action_note_cancel_sent(self, event: Event) -> None:
        self.csent = True  # and the cancel_unconfirmed timer is armed from now on

    def action_answer_online_check(self, event: Event) -> None:
        self.task.raise_event(
            self.index, "send:ONLINE_RESPONSE", ("ONLINE_RESPONSE", event.data[1], None)
        )

    def action_note_batch_id(self, event: Event) -> None:
        self.cur = event.data[1]

    def action_note_estimate(self, event: Event) -> None:
        self.est = True

    def _receive(self, items: tuple[int, ...]) -> None:
        mask = 0
        for item in items:
            mask |= 1 << item
        if self.items & mask:
            self.dup = True
        self.items |= mask

    def action_store_result(self, event: Event) -> None:
        self.slots |= _slot(event.data[2])
        self._receive(event.data[1])

    def action_store_retry_result(self, event: Event) -> None:
        self._receive(event.data[1])

    def action_check_progress(self, event: Event) -> None:
        self.task.check_progress()


def _slot(batch: int | None) -> int:
    return 1 if batch is None else 1 << (batch + 1)


@final
class ModellerTask:
    """The modeller-wide rules: what the links' guards and actions look across."""

    __slots__ = ("bounds", "crossed", "links", "own_abort", "queue", "user_cancelled")

    def __init__(self, bounds: Bounds, own_abort: bool, user_cancelled: bool) -> None:
        self.bounds = bounds
        self.own_abort = own_abort
        self.user_cancelled = user_cancelled
        self.links: list[LinkBindings] = []
        self.queue: deque[tuple[int, str, Any]] = deque()
        self.crossed = False  # a rule looked across the links (for the explorer's reductions)

    def raise_event(self, index: int, name: str, data: Any = None) -> None:
        self.queue.append((index, name, data))

    def counted(self) -> list[LinkBindings]:
        self.crossed = True
        return [link for link in self.links if link.acc and not link.late and not link.csent]

    def responses_in(self) -> bool:
        self.crossed = True
        return all(link.ans or link.machine.state != "requested" for link in self.links)

    def all_ready(self) -> bool:
        counted = self.counted()
        return (
            self.responses_in()
            and bool(counted)
            and all(link.ssent or link.expects("send:TASK_START") for link in counted)
        )

    def all_done(self) -> bool:
        counted = self.counted()
        return (
            not self.stopping()
            and self.responses_in()
            and bool(counted)
            and all(link.dsent or link.expects("send:TASK_COMPLETE") for link in counted)
        )

    def stopping(self) -> bool:
        return self.own_abort or self.user_cancelled

    def check_progress(self) -> None:
        """Offer the barrier messages to every link that waits for them; the chart decides."""
        self.crossed = True
        if not self.stopping():
            for link in self.links:
                if not link.ssent and link.expects("send:TASK_START"):
                    self.raise_event(link.index, OFFER, "send:TASK_START")
            for link in self.links:
                if not link.dsent and link.expects("send:TASK_COMPLETE"):
                    self.raise_event(link.index, OFFER, "send:TASK_COMPLETE")
        if all(link.machine.is_final or link.expects("task_ended") for link in self.links):
            for link in self.links:
                if link.expects("task_ended"):
                    self.raise_event(link.index, "task_ended")

    def cancel_all(self, *, except_index: int | None = None) -> None:
        self.crossed = True
        for link in self.links:
            if link.index != except_index and link.expects("cancel_requested"):
                self.raise_event(link.index, "cancel_requested")


# ------------------------------------------------------------------------- charts


def activities(chart: Chart) -> dict[str, str]:
    """State name → its ``do`` activity, for the states that have one."""
    return {s.name: s.do for s in chart.states if s.do is not None}


def timers(compiled: CompiledChart) -> dict[str, tuple[str, ...]]:
    """Leaf → the events of every ``after`` timer armed while it is active."""
    chart = compiled.chart
    return {
        leaf: tuple(t.event for s in chart.ancestors(leaf) for t in chart.state(s).after)
        for leaf in compiled.leaves()
    }


def alternatives(
    bindings: WorkerBindings, activity: str
) -> Iterable[tuple[tuple[Any, ...], list[Output]]]:
    """Every way ``activity`` can go from ``bindings``' data: (data after, outputs)."""
    chooser: Callable[[], list[Any]] | None = getattr(bindings, f"choices_{activity}", None)
    base = bindings.data()
    for choice in chooser() if chooser is not None else [None]:
        copy = WorkerBindings(bindings.bounds, base)
        out = getattr(copy, f"do_{activity}")(choice)
        yield copy.data(), out
