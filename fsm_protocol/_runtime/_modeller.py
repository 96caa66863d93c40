"""The modeller side: one ``statecharts/modeller.yaml`` machine per worker.

Each link's machine follows one worker. The rules that span workers (the
TASK_START barrier, TASK_COMPLETE only after every worker, cancelling the
others after an abort) are the guards ``all_ready``/``all_done`` and the
actions ``check_progress``/``cancel_others`` the chart names; :class:`_Task`
holds what they look across.

Those rules never scan the workers. Each link keeps a few marks (counted,
still to answer, ready, done, over, ...), recomputed by :meth:`LinkBindings.refresh`
whenever its leaf or one of its flags changes; :class:`_Task` keeps how many
links have each mark, and the links that have the marks it must act on, so a
message costs the same with 10 workers or 10,000. Which leaves count as
"ready" or "done" is read off the compiled chart (the leaves whose expected
events hold ``send:TASK_START``, ``send:TASK_COMPLETE``, ...), never listed here.

Results are stored under the batch id the worker put in ``meta``, never by
arrival position, so a failed batch cannot shift the results after it.
"""

from __future__ import annotations

import enum
import functools
import heapq
import logging
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar, final, overload

import attrs

from .._algo._algorithms import call_maybe_async, optional_hook
from .._algo._protocols import has_initial_setup
from .._base._errors import InternalError
from .._base._reports import ErrorReport, log_error_report
from .._core._bindings import BindingNames
from .._core._compiled import CompiledChart
from .._core._engine import Event, Machine, Step
from .._core._shipped import shipped_chart, shipped_chart_for
from .._wire._catalogue import BODY_GUARDS, first_batch_id, result_slot
from .._wire._messages import (
    AbortReason,
    JobRejectBody,
    JobRequestBody,
    Message,
    MessageType,
    body_of,
)
from ._executor import Executor, Slot, Violation
from ._logs import LogHandle
from ._transport import Transport
from ._trio_only import require_trio

_LOG = logging.getLogger("fsm_protocol.runtime")


class TaskStatus(str, enum.Enum):
    """How a task ended, from the modeller's point of view."""

    COMPLETE = "complete"
    ABORTED = "aborted"
    CANCELLED = "cancelled"
    REJECTED = "rejected"


@attrs.frozen(order=True)
class ResultKey:
    """Where a result belongs: its worker, its batch id or retry number, its algorithm.

    ``batch`` is the id the worker sent in ``meta.batch_number``; a result
    without one (non-batched, or a resilience retry) has ``batch`` None and
    ``retry`` counting from 0 in arrival order for that worker. ``algorithm``
    is ``meta.algorithm_index``: a batch may carry one result per algorithm.

    Keys sort by worker, then batch, then retry, then algorithm, a missing
    batch or retry first: ``sorted(outcome.results)`` lists each worker's
    retries, then its batches in order.
    """

    worker: str
    batch: int | None = attrs.field(default=None, order=lambda v: -1 if v is None else v)
    retry: int | None = attrs.field(default=None, order=lambda v: -1 if v is None else v)
    algorithm: int = 0


@attrs.frozen
class WorkerOutcome:
    """How one worker's part of the task ended, as the modeller saw it."""

    pod_id: str
    state: str
    accepted: bool = False
    late: bool = False
    reject: JobRejectBody | None = None
    abort_reason: AbortReason | None = None
    abort_message: str = ""
    problem: str = ""
    cancel_sent: bool = False
    cancel_confirmed: bool | None = None
    last_batch: int | None = None
    estimate: int | None = None


@attrs.frozen
class Progress:
    """The slowest running worker's batch: what the modeller shows a person."""

    batch: int
    total_estimate: int | None
    worker: str


@attrs.frozen
class TaskTimeouts:
    """Every modeller-side wait, in seconds; the worker's go in the job request.

    Args:
        response_timeout_s: How long pods have to answer the job request.
        cancel_timeout_s: How long a cancelled worker has to confirm with TASK_ABORT.
        worker_idle_timeout_s: How long a worker may stay silent while the
            modeller waits on it (not while it waits on the modeller). A busy
            worker sends nothing during a batch or its whole resilience phase,
            so this must exceed the longest of those, or it ends ``lost``.
        task_start_timeout_s: Sent to workers: their wait for our TASK_START.
        soft_timeout_s: Sent to workers: quiet time before their ONLINE_CHECK.
        hard_timeout_s: Sent to workers: wait for the answer to ONLINE_CHECK.
    """

    response_timeout_s: float = 300.0
    cancel_timeout_s: float = 30.0
    worker_idle_timeout_s: float | None = 3600.0
    task_start_timeout_s: float = 1170.0
    soft_timeout_s: float = 180.0
    hard_timeout_s: float = 180.0

    def worker_options(self) -> dict[str, float]:
        """The worker chart's options, as the job request carries them."""
        return {name: getattr(self, name) for name in shipped_chart("worker").options}


DEFAULT_TIMEOUTS = TaskTimeouts()


# The marks a link has, as positions in its marks tuple. Each is a fact about one
# link; _Task counts the links that have each one.
COUNTED = 0  # accepted on time and not cancelled: the barrier and completion wait for it
PENDING = 1  # the job request went out and no answer came yet
READY = 2  # counted, and TASK_START was raised or its leaf expects send:TASK_START
DONE = 3  # counted, and TASK_COMPLETE was raised or its leaf expects send:TASK_COMPLETE
NOT_OVER = 4  # neither final nor waiting only for task_ended
WAITS_START = 5  # counted, its leaf expects send:TASK_START, not raised yet
WAITS_COMPLETE = 6  # counted, its leaf expects send:TASK_COMPLETE, not raised yet
ENDS = 7  # its leaf expects task_ended
CANCELLABLE = 8  # its leaf expects cancel_requested
UNACCEPTED = 9  # it has not accepted (yet)
_MARKS = 10
_NO_MARKS = (False,) * _MARKS
# The marks whose links _Task keeps by link index, to act on them in link order.
_KEPT = (WAITS_START, WAITS_COMPLETE, ENDS, CANCELLABLE)


@attrs.frozen
class _Leaves:
    """The leaves of the modeller chart that expect the events the task-wide rules raise."""

    start: frozenset[str]
    complete: frozenset[str]
    task_ended: frozenset[str]
    cancel: frozenset[str]
    finals: frozenset[str]

    @classmethod
    def of(cls, compiled: CompiledChart) -> _Leaves:
        def expecting(event: str) -> frozenset[str]:
            return frozenset(leaf for leaf, events in compiled.expected.items() if event in events)

        return cls(
            start=expecting("send:TASK_START"),
            complete=expecting("send:TASK_COMPLETE"),
            task_ended=expecting("task_ended"),
            cancel=expecting("cancel_requested"),
            finals=compiled.finals,
        )


_T = TypeVar("_T")


class _Tracked(Generic[_T]):
    """A flag of a link that its marks depend on: setting it refreshes them."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.private = f"_{name}"

    @overload
    def __get__(self, obj: None, owner: type) -> _Tracked[_T]: ...

    @overload
    def __get__(self, obj: LinkBindings, owner: type) -> _T: ...

    def __get__(self, obj: LinkBindings | None, owner: type) -> _T | _Tracked[_T]:
        if obj is None:
            return self
        value: _T = obj.__dict__[self.private]
        return value

    def __set__(self, obj: LinkBindings, value: _T) -> None:
        obj.__dict__[self.private] = value
        obj.refresh()


@final
class LinkBindings:
    """Guards and actions of the modeller chart for one worker.

    Building one registers it with ``task`` (its marks start counting there);
    put it in ``task.links`` under its pod id.
    """

    # Setting any of these refreshes the link's marks (see refresh()).
    accepted = _Tracked[bool]()
    answered = _Tracked[bool]()
    late = _Tracked[bool]()
    cancel_sent = _Tracked[bool]()
    start_raised = _Tracked[bool]()
    complete_raised = _Tracked[bool]()

    def __init__(self, task: _Task, pod_id: str, job: JobRequestBody, config: object) -> None:
        self.task = task
        self.pod_id = pod_id
        self.job = job
        self.config = config
        self.index = task.new_index()
        self._machine: Machine | None = None
        self._marks = _NO_MARKS
        self._accepted = False
        self._answered = False
        self._late = False
        self._cancel_sent = False
        self._start_raised = False
        self._complete_raised = False
        self._current_batch: int | None = None
        self.reject: JobRejectBody | None = None
        self.abort_reason: AbortReason | None = None
        self.abort_message = ""
        self.problem = ""
        self.cancel_raised = False
        self.setup_sent = False
        # A resumed task starts later (modeller serve --resume).
        self.next_batch_id = first_batch_id(getattr(job, "options", None))
        self.estimate: int | None = None
        self.result_slots: set[tuple[int | None, int]] = set()
        self.retries = 0
        self.refresh()

    @property
    def machine(self) -> Machine | None:
        return self._machine

    @machine.setter
    def machine(self, machine: Machine | None) -> None:
        self._machine = machine
        self.refresh()

    @property
    def current_batch(self) -> int | None:
        return self._current_batch

    @current_batch.setter
    def current_batch(self, batch: int | None) -> None:
        self._current_batch = batch
        if batch is not None and self._marks[COUNTED]:
            self.task.note_running(self)

    @property
    def state(self) -> str:
        assert self._machine is not None
        return self._machine.state

    def refresh(self) -> None:
        """Recompute this link's marks from its leaf and flags; the task adjusts its counts.

        Called after every step of the link's machine, and whenever a flag it
        reads is set. Constant work: a few set lookups.
        """
        counted = self._accepted and not self._late and not self._cancel_sent
        machine = self._machine
        if machine is None:
            marks = (counted, False, False, False, True, False, False, False, False, True)
        else:
            leaf = machine.state
            leaves = self.task.leaves(machine.compiled)
            starts = leaf in leaves.start
            completes = leaf in leaves.complete
            ends = leaf in leaves.task_ended
            marks = (
                counted,
                not self._answered and leaf == "requested",
                counted and (self._start_raised or starts),
                counted and (self._complete_raised or completes),
                not (ends or leaf in leaves.finals),
                counted and starts and not self._start_raised,
                counted and completes and not self._complete_raised,
                ends,
                leaf in leaves.cancel,
                not self._accepted,
            )
        old = self._marks
        if marks != old:
            self._marks = marks
            self.task.moved(self, old, marks)

    def after_step(self, step: Step) -> None:
        """The executor's hook after each step of this link's machine."""
        if step.target != step.source:
            self.refresh()

    def expects(self, event: str) -> bool:
        assert self.machine is not None
        return not self.machine.is_final and event in self.machine.expected()

    def send(self, type_: MessageType, body: Any = None) -> None:
        self.task.executor.raise_event(
            self.pod_id, f"send:{type_.value}", self.task.message(self.pod_id, type_, body)
        )

    # -------------------------------------------------------------- guards

    def guard_initial_setup(self, event: Event) -> bool:
        return has_initial_setup(self.config)

    def guard_batched_job(self, event: Event) -> bool:
        return self.job.batched_execution

    def guard_cancel_sent(self, event: Event) -> bool:
        return self.cancel_sent

    def guard_setup_pending(self, event: Event) -> bool:
        return has_initial_setup(self.config) and not self.setup_sent

    def guard_setup_settled(self, event: Event) -> bool:
        return not has_initial_setup(self.config) or self.setup_sent

    def guard_count_is_one(self, event: Event) -> bool:
        return BODY_GUARDS["count_is_one"](event.data.body)

    def guard_count_is_unknown(self, event: Event) -> bool:
        return BODY_GUARDS["count_is_unknown"](event.data.body)

    def guard_is_estimate(self, event: Event) -> bool:
        return BODY_GUARDS["is_estimate"](event.data.body)

    def guard_estimate_seen(self, event: Event) -> bool:
        return self.estimate is not None

    def guard_is_next_batch_id(self, event: Event) -> bool:
        return bool(event.data.body == self.next_batch_id)

    def guard_is_batch_result(self, event: Event) -> bool:
        return (
            event.data.meta.batch_number is not None
            and event.data.meta.batch_number == self.current_batch
        )

    def guard_is_unbatched_result(self, event: Event) -> bool:
        return event.data.meta.batch_number is None

    def guard_is_retry_result(self, event: Event) -> bool:
        return event.data.meta.batch_number is None

    def guard_duplicate_result(self, event: Event) -> bool:
        meta = event.data.meta
        return result_slot(meta.batch_number, meta.algorithm_index) in self.result_slots

    def guard_is_batches_only(self, event: Event) -> bool:
        return BODY_GUARDS["is_batches_only"](event.data.body)

    def guard_is_task_complete(self, event: Event) -> bool:
        return BODY_GUARDS["is_task_complete"](event.data.body)

    def guard_all_ready(self, event: Event) -> bool:
        self.refresh()
        return self.task.all_ready()

    def guard_all_done(self, event: Event) -> bool:
        self.refresh()
        return self.task.all_done()

    # ------------------------------------------------------------- actions

    def action_note_accept(self, event: Event) -> None:
        self.accepted = self.answered = True

    def action_note_late(self, event: Event) -> None:
        self.late = True

    def action_note_reject(self, event: Event) -> None:
        self.answered = True
        self.reject = body_of(event.data)

    def action_note_no_answer(self, event: Event) -> None:
        self.problem = "no answer to the job request within the response timeout"

    def action_note_bad_input(self, event: Event) -> None:
        self.answered = True
        self.problem = f"protocol error: {event.data}"

    def action_note_link_lost(self, event: Event) -> None:
        self.answered = True
        self.problem = f"connection lost: {event.data}" if event.data else "connection closed"

    def action_note_abort(self, event: Event) -> None:
        body = body_of(event.data)
        self.abort_reason = body.reason
        self.abort_message = body.message
        if not self.cancel_sent:
            self.task.own_abort = True

    def action_cancel_others(self, event: Event) -> None:
        self.task.own_abort = True
        self.task.cancel_all(except_pod=self.pod_id)

    def action_send_setup(self, event: Event) -> None:
        self.send(MessageType.ALGORITHM_EXCHANGE, self.task.setup_values())

    def action_note_setup_sent(self, event: Event) -> None:
        self.setup_sent = True

    def action_send_cancel(self, event: Event) -> None:
        # Two reasons to cancel can arrive before the first TASK_CANCEL goes out;
        # TASK_CANCEL still goes at most once.
        if not self.cancel_raised:
            self.cancel_raised = True
            self.send(MessageType.TASK_CANCEL)

    def action_note_cancel_sent(self, event: Event) -> None:
        self.cancel_sent = True
        self.task.executor.start_timer(
            self.pod_id, self.task.timeouts.cancel_timeout_s, "cancel_unconfirmed"
        )

    def action_answer_online_check(self, event: Event) -> None:
        self.send(MessageType.ONLINE_RESPONSE, event.data.body)

    def action_note_batch_id(self, event: Event) -> None:
        self.current_batch = event.data.body
        self.next_batch_id = event.data.body + 1
        self.task.report_progress()

    def action_note_estimate(self, event: Event) -> None:
        self.estimate = event.data.body

    def action_store_result(self, event: Event) -> None:
        message: Message = event.data
        batch = message.meta.batch_number
        algorithm = message.meta.algorithm_index
        self.result_slots.add(result_slot(batch, algorithm))
        self.task.store_result(ResultKey(self.pod_id, batch, None, algorithm), message)

    def action_store_retry_result(self, event: Event) -> None:
        message: Message = event.data
        key = ResultKey(self.pod_id, None, self.retries, message.meta.algorithm_index)
        self.retries += 1
        self.task.store_result(key, message)

    def action_check_progress(self, event: Event) -> None:
        self.refresh()  # its leaf changed in this very step
        self.task.check_progress()

    def outcome(self) -> WorkerOutcome:
        confirmed = None
        if self.cancel_sent:
            confirmed = self.state == "aborted"
        return WorkerOutcome(
            pod_id=self.pod_id,
            state=self.state,
            accepted=self.accepted,
            late=self.late,
            reject=self.reject,
            abort_reason=self.abort_reason,
            abort_message=self.abort_message,
            problem=self.problem,
            cancel_sent=self.cancel_sent,
            cancel_confirmed=confirmed,
            last_batch=self.current_batch,
            estimate=self.estimate,
        )


@attrs.define
class _Task:
    """What the modeller-wide rules look across: every link of one task.

    ``counts[mark]`` is how many links have ``mark``; ``kept[mark]`` holds,
    by link index, the links with each mark in ``_KEPT``. Links keep both up to
    date through :meth:`moved`, so no rule here visits every link.
    """

    task_id: str
    sender: str
    executor: Executor
    timeouts: TaskTimeouts
    algorithm: Any
    require_all_pods: bool
    on_progress: Callable[[Progress], None] | None = None
    links: dict[str, LinkBindings] = attrs.field(factory=dict)
    results: dict[ResultKey, Any] = attrs.field(factory=dict)
    own_abort: bool = False
    user_cancelled: bool = False
    pods_missing: list[str] = attrs.field(factory=list)
    last_progress: Progress | None = None
    keep_bodies: bool = True
    counts: list[int] = attrs.field(factory=lambda: [0] * _MARKS)
    kept: dict[int, dict[int, LinkBindings]] = attrs.field(
        factory=lambda: {mark: {} for mark in _KEPT}
    )
    # (batch, link index, link) of running links, smallest first; stale entries are
    # dropped when they come to the top.
    running: list[tuple[int, int, LinkBindings]] = attrs.field(factory=list)
    _indices: int = 0
    _leaves: tuple[CompiledChart, _Leaves] | None = None
    # The algorithm's on_results hook (None: it has none), looked up at the first result.
    _on_results: Callable[[str, int | None, Any], None] | None = None
    _on_results_known: bool = False

    def new_index(self) -> int:
        self._indices += 1
        return self._indices - 1

    def leaves(self, compiled: CompiledChart) -> _Leaves:
        if self._leaves is None or self._leaves[0] is not compiled:
            self._leaves = (compiled, _Leaves.of(compiled))
        return self._leaves[1]

    def moved(self, link: LinkBindings, old: tuple[bool, ...], new: tuple[bool, ...]) -> None:
        """Adjust the counts and kept links after ``link``'s marks changed from old to new."""
        counts = self.counts
        for mark in range(_MARKS):
            if old[mark] is new[mark]:
                continue
            counts[mark] += 1 if new[mark] else -1
            if mark in self.kept:
                if new[mark]:
                    self.kept[mark][link.index] = link
                else:
                    del self.kept[mark][link.index]
        if new[COUNTED] and not old[COUNTED] and link.current_batch is not None:
            self.note_running(link)

    def in_order(self, mark: int) -> list[LinkBindings]:
        """The links that have ``mark`` (one of ``_KEPT``), in the order they were added."""
        kept = self.kept[mark]
        return [kept[index] for index in sorted(kept)]

    def message(self, pod_id: str, type_: MessageType, body: Any = None) -> Message:
        return Message.make(
            type_, task_id=self.task_id, sender=self.sender, recipient=pod_id, seq=0, body=body
        )

    def setup_values(self) -> Any:
        hook = optional_hook(self.algorithm, "setup_values")
        values = hook() if hook is not None else {}
        return dict(values) if values is not None else {}

    def store_result(self, key: ResultKey, message: Message) -> None:
        self.results[key] = message.body if self.keep_bodies else None
        if not self._on_results_known:
            self._on_results = optional_hook(self.algorithm, "on_results")
            self._on_results_known = True
        hook = self._on_results
        if hook is not None:
            hook(key.worker, key.batch, message.body)

    def counted(self) -> list[LinkBindings]:
        """Workers the barrier and completion wait for: accepted on time, not cancelled.

        Visits every link: for the end of the task, not for each message.
        """
        return [
            link
            for link in self.links.values()
            if link.accepted and not link.late and not link.cancel_sent
        ]

    def responses_in(self) -> bool:
        return self.counts[PENDING] == 0

    def all_ready(self) -> bool:
        """Every answer is in, and every counted worker is ready (or was sent TASK_START)."""
        counted = self.counts[COUNTED]
        every_one_ready = self.counts[READY] == counted
        return self.responses_in() and counted > 0 and every_one_ready

    def all_done(self) -> bool:
        """Not stopping, every answer is in, and every counted worker is done."""
        counted = self.counts[COUNTED]
        every_one_done = self.counts[DONE] == counted
        return not self.stopping() and self.responses_in() and counted > 0 and every_one_done

    def stopping(self) -> bool:
        """Whether the whole task is being cancelled (own abort, user cancel, missing pod)."""
        return self.own_abort or self.user_cancelled or bool(self.pods_missing)

    def check_progress(self) -> None:
        """Apply the modeller-wide rules after any link changed."""
        if (
            self.require_all_pods
            and self.responses_in()
            and not self.pods_missing
            and self.counts[UNACCEPTED]
        ):
            self.pods_missing = [pod for pod, link in self.links.items() if not link.accepted]
            self.cancel_all()
        # Once the task is being cancelled the barrier stays shut, even for links whose
        # TASK_CANCEL is still queued (they are counted until it goes out).
        if not self.stopping() and self.all_ready():
            for link in self.in_order(WAITS_START):
                link.start_raised = True
                link.send(MessageType.TASK_START)
        if self.all_done():
            for link in self.in_order(WAITS_COMPLETE):
                link.complete_raised = True
                link.send(MessageType.TASK_COMPLETE)
        if self.counts[NOT_OVER] == 0:
            for link in self.in_order(ENDS):
                self.executor.raise_event(link.pod_id, "task_ended")

    def cancel_all(self, *, except_pod: str | None = None) -> None:
        for link in self.in_order(CANCELLABLE):
            if link.pod_id != except_pod:
                self.executor.raise_event(link.pod_id, "cancel_requested")

    def note_running(self, link: LinkBindings) -> None:
        """``link`` is counted and at a batch: a candidate for the slowest worker."""
        if self.on_progress is not None and link.current_batch is not None:
            heapq.heappush(self.running, (link.current_batch, link.index, link))

    def report_progress(self) -> None:
        if self.on_progress is None:
            return
        running = self.running
        while running:
            batch, _, slowest = running[0]
            if slowest._marks[COUNTED] and slowest.current_batch == batch:
                break
            heapq.heappop(running)
        else:
            return
        progress = Progress(batch, slowest.estimate, slowest.pod_id)
        if progress != self.last_progress:
            self.last_progress = progress
            self.on_progress(progress)

    def status(self) -> TaskStatus:
        links = list(self.links.values())
        if self.user_cancelled:
            return TaskStatus.CANCELLED
        if not any(link.accepted and not link.late for link in links):
            return TaskStatus.REJECTED
        if (
            all(link.state == "complete" for link in self.counted())
            and self.counted()
            and not self.own_abort
        ):
            return TaskStatus.COMPLETE
        return TaskStatus.ABORTED


@attrs.frozen
class ModellerRun:
    """What :func:`run_modeller` returns; :func:`run_task` adds worker reports to it."""

    task_id: str
    status: TaskStatus
    workers: Mapping[str, WorkerOutcome]
    results: Mapping[ResultKey, Any]
    trace: tuple[Message, ...]
    violations: tuple[Violation, ...]
    final_result: Any
    pods_missing: tuple[str, ...]
    errors: tuple[ErrorReport, ...] = ()


async def run_modeller(
    *,
    task_id: str,
    jobs: Mapping[str, JobRequestBody],
    configs: Mapping[str, object],
    links: Mapping[str, Transport],
    algorithm: Any = None,
    timeouts: TaskTimeouts = DEFAULT_TIMEOUTS,
    require_all_pods: bool = False,
    sender: str = "modeller",
    cancel: Any = None,
    on_step: Callable[[str, Step], None] | None = None,
    on_message: Callable[[str, Message], None] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    keep: bool = True,
) -> ModellerRun:
    """Run the modeller side of one task over one transport per pod.

    ``jobs`` gives each pod its job request body (they differ only when a
    conformance scenario overrides one pod's protocol). ``cancel`` is an
    optional :class:`trio.Event`; setting it cancels the task. With ``keep``
    False, result bodies and the trace are not held in memory (the caller's
    ``on_message`` writes them out): the run's ``results`` map keys to None and
    its ``trace`` is empty.
    """
    return await run_modeller_for_kit(
        task_id=task_id,
        jobs=jobs,
        configs=configs,
        links=links,
        algorithm=algorithm,
        timeouts=timeouts,
        require_all_pods=require_all_pods,
        sender=sender,
        cancel=cancel,
        on_step=on_step,
        on_message=on_message,
        on_progress=on_progress,
        keep=keep,
    )


async def run_modeller_for_kit(
    *,
    task_id: str,
    jobs: Mapping[str, JobRequestBody],
    configs: Mapping[str, object],
    links: Mapping[str, Transport],
    algorithm: Any = None,
    timeouts: TaskTimeouts = DEFAULT_TIMEOUTS,
    require_all_pods: bool = False,
    sender: str = "modeller",
    cancel: Any = None,
    on_step: Callable[[str, Step], None] | None = None,
    on_message: Callable[[str, Message], None] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    keep: bool = True,
    logs: LogHandle | None = None,
    quiet_ok: Callable[[str, str], bool] | None = None,
) -> ModellerRun:
    """:func:`run_modeller`, with the conformance kit's extras (not public API).

    ``logs`` lets the caller send LOG_MESSAGE to the workers. ``quiet_ok(pod,
    state)`` says when a worker's silence is not its own (the kit holds its
    message, or its answer has its own wait), so the idle watch lets it be.
    """
    require_trio("run_modeller")
    import trio

    chart = shipped_chart_for("modeller", BindingNames.from_class(LinkBindings))
    options = {**chart.options, "response_timeout_s": timeouts.response_timeout_s}
    executor = Executor(
        options=options,
        on_step=on_step,
        on_message=on_message,
        expected_task=task_id,
        keep_trace=keep,
    )
    task = _Task(task_id, sender, executor, timeouts, algorithm, require_all_pods, on_progress)
    task.keep_bodies = keep
    if logs is not None:
        logs.bind(executor, lambda pod, body: task.message(pod, MessageType.LOG_MESSAGE, body))
    bodies: dict[int, Any] = {}
    for pod_id, transport in links.items():
        link = LinkBindings(task, pod_id, jobs[pod_id], configs[pod_id])
        link.machine = Machine.from_chart(chart, link)
        task.links[pod_id] = link
        executor.add(
            Slot(
                pod_id,
                link.machine,
                link,
                transport,
                eof_event="link_lost",
                idle_timeout=timeouts.worker_idle_timeout_s,
                idle_ok=(
                    _waiting_on_modeller
                    if quiet_ok is None
                    else functools.partial(_quiet_or_waiting, quiet_ok, pod_id)
                ),
                after_step=link.after_step,
            )
        )
        # Pods given the same job share one wire body: it names every pod of the task.
        body = bodies.get(id(jobs[pod_id]))
        if body is None:
            body = bodies[id(jobs[pod_id])] = task.message(
                pod_id, MessageType.JOB_REQUEST, jobs[pod_id]
            ).body
        executor.raise_event(
            pod_id, "send:JOB_REQUEST", task.message(pod_id, MessageType.JOB_REQUEST, body)
        )

    async def watch_cancel() -> None:
        await cancel.wait()
        task.user_cancelled = True
        executor.call_soon(task.cancel_all)

    async with trio.open_nursery() as nursery:
        if cancel is not None:
            nursery.start_soon(watch_cancel)
        await executor.run()
        nursery.cancel_scope.cancel()

    final_result = None
    errors: list[ErrorReport] = []
    if task.status() is TaskStatus.COMPLETE:
        hook = optional_hook(algorithm, "final_step")
        if hook is not None:
            try:
                final_result = await call_maybe_async(hook, dict(task.results))
            except Exception as exc:  # the user's code: kept in the outcome, not raised
                report = ErrorReport.from_exception(exc, where="final_step")
                errors.append(report)
                log_error_report(_LOG, report, exc, level=logging.ERROR)
    for link in task.links.values():
        if link.machine is None:
            raise InternalError("a link has no machine")
    return ModellerRun(
        task_id=task_id,
        status=task.status(),
        workers={pod: link.outcome() for pod, link in task.links.items()},
        results=dict(sorted(task.results.items(), key=lambda kv: _sort_key(kv[0]))),
        trace=tuple(executor.trace),
        violations=tuple(executor.violations),
        final_result=final_result,
        pods_missing=tuple(task.pods_missing),
        errors=tuple(errors),
    )


def _sort_key(key: ResultKey) -> tuple[str, int, int, int]:
    return (
        key.worker,
        -1 if key.batch is None else key.batch,
        -1 if key.retry is None else key.retry,
        key.algorithm,
    )


def _quiet_or_waiting(quiet_ok: Callable[[str, str], bool], pod: str, machine: Machine) -> bool:
    return _waiting_on_modeller(machine) or quiet_ok(pod, machine.state)


def _waiting_on_modeller(machine: Machine) -> bool:
    """A silent worker is fine while it waits for our TASK_START or TASK_COMPLETE."""
    expected = machine.expected()
    return "send:TASK_START" in expected or "send:TASK_COMPLETE" in expected
