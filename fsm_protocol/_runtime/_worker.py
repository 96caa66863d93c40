"""The worker side: the bindings that ``statecharts/worker.yaml`` names, and its runner.

Guards answer questions about the job and the message at hand, actions record
facts, and activities (``do_``) do the work of a state and post the event that
ends it. Which event is allowed, and where it leads, is the chart's business.
"""

from __future__ import annotations

import inspect
import logging
import traceback
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, final

import attrs

from .._algo._algorithms import (
    BatchInfo,
    Datasource,
    Item,
    ListDatasource,
    call_maybe_async,
    default_results_body,
    optional_hook,
)
from .._algo._protocols import ProtocolRegistry, UsageLimit, WorkerContext, WorkerPlan, registry
from .._base._errors import ConfigError, DecodeError
from .._base._reports import ErrorReport, log_error_report
from .._core._bindings import BindingNames
from .._core._engine import Event, Machine
from .._core._shipped import shipped_chart_for
from .._wire._catalogue import RESUME_OPTION
from .._wire._messages import (
    MAX_WAIT_S,
    MODELLER,
    AbortReason,
    JobRejectBody,
    JobRequestBody,
    Message,
    MessageType,
    Meta,
    RejectReason,
    ResourceConsumed,
    TaskAbortBody,
    body_of,
    value_problem,
    wire_text,
)
from ._cache import ItemCache
from ._executor import ActivityContext, Executor, Slot
from ._logs import LogHandle
from ._transport import Transport
from ._trio_only import require_trio

_LOG = logging.getLogger("fsm_protocol.runtime")

# Bodies that go on the wire as they are (anything else is a typed body to convert).
_RAW_BODIES = frozenset({dict, list, str, int, float, bool, type(None)})

FAILURE_LIMIT = 5
"""Consecutive failed batches after which a worker gives up (the platform's default)."""


@attrs.frozen
class Pod:
    """One worker's identity, data and configuration.

    Args:
        pod_id: Its identifier, ``owner/name`` by convention.
        datasource: Its items. Protocols such as Echo bring their own.
        results_dir: Where its caches live; needed for ``run_on_new_data_only``.
        registry: The protocols it can run. None (the default) means the protocols
            of the task: ``run_task(..., protocols=...)`` gives them to every pod
            without one of its own; a worker serving on its own uses the default
            registry.
        vet: Called with the job request before accepting; return a reject
            reason and details to refuse the job (authorisation hooks in here).
    """

    pod_id: str
    datasource: Datasource = attrs.field(factory=ListDatasource)
    results_dir: Path | None = None
    registry: ProtocolRegistry | None = None
    vet: Callable[[Message, JobRequestBody], tuple[RejectReason, Sequence[str]] | None] | None = (
        attrs.field(default=None, eq=False)
    )


@attrs.frozen
class WorkerReport:
    """How one in-process worker ended, with its own account of every item."""

    pod_id: str
    state: str
    abort_reason: AbortReason | None = None
    abort_message: str = ""
    delivered: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    cut: tuple[str, ...] = ()
    not_run: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    errors: tuple[ErrorReport, ...] = ()


@attrs.frozen
class _Delivery:
    """The items behind one EVALUATION_RESULTS: those it holds, and those the limit cut."""

    kept: Sequence[Item]
    cut: Sequence[Item]


@attrs.define
class _Abort:
    reason: AbortReason
    message: str
    error: BaseException | None = None


def _resume_from(job: JobRequestBody) -> int:
    value = job.options.get(RESUME_OPTION, 0)
    if type(value) is not int or not 0 <= value <= 2**53:
        raise ConfigError(f"options.{RESUME_OPTION} must be an int >= 0, found {value!r}")
    return value


def _summary(error: BaseException | None) -> tuple[str | None, str | None]:
    if error is None:
        return None, None
    lines = traceback.format_exception_only(type(error), error)
    return type(error).__name__, "".join(lines).strip()[-500:]


@final
class WorkerBindings:
    """Guards, actions and activities of the worker chart, for one task."""

    def __init__(
        self,
        pod: Pod,
        executor: Executor,
        *,
        failure_limit: int = FAILURE_LIMIT,
        markers: bool = True,
    ) -> None:
        self.pod = pod
        self.executor = executor
        self.failure_limit = failure_limit
        # Send the optional progress markers PREPARING_DATA and PREPARING_DATA_BATCHES.
        self.markers = markers
        self.request: Message | None = None
        self.job: JobRequestBody | None = None
        self.config: Any = None
        self.plan: WorkerPlan | None = None
        self.items: list[Item] = []
        self.batches: list[list[Item]] = []
        self.skipped: list[str] = []
        self.setup_values: Any = None
        self.current_batch = -1
        self.next_batch_id = 0
        self.consecutive_failures = 0
        self.successes = 0
        self.estimate_sent = False
        self.retry_queue: list[Item] = []
        self.delivered: list[str] = []
        self.failed: dict[str, str] = {}
        self.cut: list[str] = []
        # Results handed to the executor but not sent yet, by batch id (None for a
        # retry or a non-batched run), oldest first. A cancel can overtake them.
        self.unsent: dict[int | None, list[_Delivery]] = {}
        self.run_items: set[str] = set()
        self.usage: UsageLimit | None = None
        self.abort: _Abort | None = None
        self.online_tokens = 0
        self.cache: ItemCache | None = None
        self.resume_from = 0
        self.errors: list[ErrorReport] = []
        self.last_error: BaseException | None = None
        # Looked up once per task: the algorithm's results_body hook, and the
        # resources_consumed entry of a result of so many items.
        self._results_body: Callable[[Sequence[Item], Sequence[Any]], Any] | None = None
        self._consumed: dict[int, tuple[ResourceConsumed, ...]] = {}

    def _user_error(
        self, where: str, error: BaseException, items: Sequence[Item] = (), *, retried: bool = False
    ) -> None:
        """Keep and log an exception from user code; ``retried`` when its items get another go."""
        report = ErrorReport.from_exception(
            error, where=where, pod_id=self.pod.pod_id, items=tuple(i.name for i in items)
        )
        self.errors.append(report)
        self.last_error = error
        log_error_report(_LOG, report, error, level=logging.WARNING if retried else logging.ERROR)

    # ----------------------------------------------------------- messages

    @property
    def task_id(self) -> str:
        return self.request.task_id if self.request is not None else ""

    @property
    def modeller(self) -> str:
        return self.request.sender if self.request is not None else MODELLER

    def message(self, type_: MessageType, body: Any = None, meta: Meta | None = None) -> Message:
        request = self.request
        task_id, modeller = ("", MODELLER) if request is None else (request.task_id, request.sender)
        if body.__class__ not in _RAW_BODIES:  # a typed body: make() writes its wire form
            return Message.make(
                type_,
                task_id=task_id,
                sender=self.pod.pod_id,
                recipient=modeller,
                seq=0,
                body=body,
                meta=meta,
            )
        if meta is None:
            return Message(
                type=type_, task_id=task_id, sender=self.pod.pod_id, recipient=modeller, seq=0,
                body=body,
            )  # fmt: skip
        return Message(
            type=type_, task_id=task_id, sender=self.pod.pod_id, recipient=modeller, seq=0,
            body=body, meta=meta,
        )  # fmt: skip

    # -------------------------------------------------------------- guards

    def guard_batched_job(self, event: Event) -> bool:
        return self.job is not None and self.job.batched_execution

    def guard_count_is_one(self, event: Event) -> bool:
        return bool(event.data.body == 1)

    def guard_count_is_unknown(self, event: Event) -> bool:
        return bool(event.data.body == -1)

    def guard_is_estimate(self, event: Event) -> bool:
        return isinstance(event.data.body, int) and event.data.body > 0

    def guard_estimate_sent(self, event: Event) -> bool:
        return self.estimate_sent

    def guard_initial_setup(self, event: Event) -> bool:
        return bool(getattr(self.config, "initial_setup", False))

    def guard_wants_setup_values(self, event: Event) -> bool:
        return self.guard_initial_setup(event) and self.setup_values is None

    def guard_has_setup_values(self, event: Event) -> bool:
        return self.setup_values is not None

    def guard_is_next_batch_id(self, event: Event) -> bool:
        return bool(event.data.body == self.next_batch_id)

    def guard_is_batch_result(self, event: Event) -> bool:
        return bool(event.data.meta.batch_number == self.current_batch)

    def guard_is_unbatched_result(self, event: Event) -> bool:
        return event.data.meta.batch_number is None

    def guard_is_retry_result(self, event: Event) -> bool:
        return event.data.meta.batch_number is None

    def guard_is_batches_only(self, event: Event) -> bool:
        return bool(event.data.body == "BATCHES_ONLY")

    def guard_is_task_complete(self, event: Event) -> bool:
        return bool(event.data.body == "TASK_COMPLETE")

    def guard_at_failure_limit(self, event: Event) -> bool:
        return self.consecutive_failures + 1 >= self.failure_limit

    def guard_nothing_succeeded(self, event: Event) -> bool:
        return self.successes == 0

    # ------------------------------------------------------------- actions

    def action_store_job(self, event: Event) -> None:
        self.request = event.data
        self.executor.expect_task(event.data.task_id)

    def action_store_setup(self, event: Event) -> None:
        self.setup_values = event.data.body

    def action_note_batch_id(self, event: Event) -> None:
        self.current_batch = event.data.body
        self.next_batch_id = self.current_batch + 1

    def action_note_result(self, event: Event) -> None:
        # Items count as delivered, and are cached, only once their results go out.
        self.successes += 1
        waiting = self.unsent.get(event.data.meta.batch_number)
        if not waiting:
            return
        delivery = waiting.pop(0)
        self.delivered.extend(i.name for i in delivery.kept)
        self.cut.extend(i.name for i in delivery.cut)
        if self.cache is not None:
            self.cache.mark_processed(
                self._cache_scope(), [(i.name, i.modified or "") for i in delivery.kept]
            )

    def action_note_failure(self, event: Event) -> None:
        self.consecutive_failures += 1

    def action_note_estimate(self, event: Event) -> None:
        self.estimate_sent = True

    def _set_abort(self, reason: AbortReason, message: str, error: Any = None) -> None:
        if self.abort is None:
            err = error if isinstance(error, BaseException) else None
            if err is None and reason is AbortReason.WORKER_ERROR:
                # e.g. no batch and no retry succeeded: the last error is the one to show.
                err = self.last_error
            self.abort = _Abort(reason, message, err)

    def action_note_cancelled(self, event: Event) -> None:
        self._set_abort(AbortReason.CANCELLED_BY_MODELLER, "the modeller cancelled the task")

    def action_note_modeller_lost(self, event: Event) -> None:
        self._set_abort(AbortReason.MODELLER_TIMEOUT, "the modeller's stream ended", event.data)

    def action_note_modeller_timeout(self, event: Event) -> None:
        waited = {
            "start_timeout": "TASK_START",
            "hard_timeout": "an answer to ONLINE_CHECK",
        }.get(event.name, "the modeller")
        self._set_abort(AbortReason.MODELLER_TIMEOUT, f"timed out waiting for {waited}")

    def action_note_protocol_error(self, event: Event) -> None:
        self._set_abort(AbortReason.PROTOCOL_ERROR, f"protocol error: {event.data}", event.data)

    def action_note_no_data(self, event: Event) -> None:
        # Items exist but the caches skipped them all: the platform's NO_NEW_DATA.
        reason = AbortReason.NO_NEW_DATA if self.skipped else AbortReason.NO_DATA
        self._set_abort(reason, str(event.data or "there are no items to run"))

    def action_note_worker_error(self, event: Event) -> None:
        error = event.data if isinstance(event.data, BaseException) else None
        if event.name == "batch_failed":
            text = f"{self.failure_limit} consecutive batches failed"
        elif event.name == "resilience_done":
            text = "no batch and no retry succeeded"
        else:
            text = f"the algorithm failed: {error}" if error else "the algorithm failed"
        self._set_abort(AbortReason.WORKER_ERROR, text, error)

    def action_note_limits_exceeded(self, event: Event) -> None:
        self._set_abort(AbortReason.LIMITS_EXCEEDED, str(event.data or "usage limit exceeded"))

    # ----------------------------------------------------------- activities

    async def do_vet_job(self, ctx: ActivityContext) -> None:
        assert self.request is not None
        try:
            job = body_of(self.request)
        except DecodeError as exc:
            self._reject(ctx, RejectReason.TASK_SETUP_ERROR, [str(exc)])
            return
        self.job = job
        if self.pod.vet is not None:
            verdict = self.pod.vet(self.request, job)
            if verdict is not None:
                self._reject(ctx, verdict[0], list(verdict[1]))
                return
        # Vetted: keep the envelope and the typed job, not the raw body. The job names
        # every pod of the task, which a pod never reads again (a thousand names, here).
        self.request = attrs.evolve(self.request, body=None)
        self.job = attrs.evolve(job, pod_identifiers=())
        try:
            self._apply_options(job)
            self.resume_from = _resume_from(job)
            protocols = self.pod.registry if self.pod.registry is not None else registry
            self.config = protocols.load(job.protocol)
            factory = protocols[job.protocol["class_name"]]
            self.plan = factory.worker(
                self.config, WorkerContext(self.pod.pod_id, self.pod.datasource)
            )
            if self.plan.batch_size < 1:
                raise ConfigError(f"batch size must be at least 1, found {self.plan.batch_size}")
            if job.run_on_new_data_only and self.pod.results_dir is None:
                raise ConfigError("run_on_new_data_only needs the pod to have a results folder")
        except ConfigError as exc:
            forget = getattr(self.pod.vet, "forget", None)
            if forget is not None:  # the vet remembered this task id; it was not used
                forget(self.request.task_id)
            self._reject(ctx, RejectReason.TASK_SETUP_ERROR, [str(exc)])
            return
        except Exception as exc:  # the protocol's worker factory (or its datasource) raised
            self._user_error("worker_plan", exc)
            self._reject(ctx, RejectReason.TASK_SETUP_ERROR, [f"{type(exc).__name__}: {exc}"])
            return
        self.usage = self.plan.usage_limit
        ctx.send(self.message(MessageType.JOB_ACCEPT, {"ACCEPT": self.pod.pod_id}))

    def _apply_options(self, job: JobRequestBody) -> None:
        # The options a job may set are the ones the worker chart declares.
        for name in self.executor.options:
            value = job.options.get(name)
            if value is None:
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not 0 < value <= MAX_WAIT_S
            ):
                raise ConfigError(
                    f"options.{name} must be a number above 0 and at most {MAX_WAIT_S:g}, "
                    f"found {value!r}"
                )
            self.executor.set_option(name, float(value))

    def _reject(self, ctx: ActivityContext, reason: RejectReason, details: list[str]) -> None:
        details = [wire_text(detail) for detail in details]
        ctx.send(self.message(MessageType.JOB_REJECT, JobRejectBody(reason, tuple(details))))

    async def do_prepare_data(self, ctx: ActivityContext) -> None:
        assert self.plan is not None and self.job is not None
        try:
            self.items = self._select_items(list(self.plan.items), self.job)
        except Exception as exc:  # a datasource failure is the worker's error, reported
            self._user_error("datasource", exc)
            ctx.post("worker_error", exc)
            return
        if not self.markers:
            await self.do_configure_task(ctx)  # straight to CONFIGURING_TASK
            return
        ctx.send(self.message(MessageType.PREPARING_DATA))

    def _cache_scope(self) -> str:
        assert self.job is not None
        return self.job.project_id or str(self.job.protocol.get("class_name"))

    def _select_items(self, items: list[Item], job: JobRequestBody) -> list[Item]:
        if job.run_on_new_data_only:
            assert self.pod.results_dir is not None
            self.cache = ItemCache(Path(self.pod.results_dir) / "item-cache.sqlite")
            scope = self._cache_scope()
            done = self.cache.processed(scope)
            failed = {} if job.force_rerun_failed_files else self.cache.failed(scope)
            kept = []
            for item in items:
                seen = done.get(item.name)
                if (seen is not None and seen == (item.modified or "")) or item.name in failed:
                    self.skipped.append(item.name)
                else:
                    kept.append(item)
            items = kept
        if job.test_run:
            items = items[:1]
        return items

    async def do_configure_task(self, ctx: ActivityContext) -> None:
        assert self.plan is not None
        setup = optional_hook(self.plan.algorithm, "setup")
        if setup is not None:
            try:
                await call_maybe_async(setup)
            except Exception as exc:
                self._user_error("setup", exc)
                ctx.post("worker_error", exc)
                return
        ctx.send(self.message(MessageType.CONFIGURING_TASK))

    async def do_finish_preparing(self, ctx: ActivityContext) -> None:
        assert self.plan is not None and self.job is not None
        if not self.items:
            ctx.post(
                "no_data",
                "there are no items to run"
                + (" (all skipped by the caches)" if self.skipped else ""),
            )
            return
        size = self.plan.batch_size if self.job.batched_execution else len(self.items)
        self.batches = [self.items[i : i + size] for i in range(0, len(self.items), size)]
        if self.job.batched_execution and self.resume_from:
            # A resumed task: the modeller kept the batches before this one.
            self.next_batch_id = min(self.resume_from, len(self.batches) - 1)
        ctx.post("prepared")

    async def do_check_online(self, ctx: ActivityContext) -> None:
        self.online_tokens += 1
        ctx.send(self.message(MessageType.ONLINE_CHECK, f"{self.pod.pod_id}-{self.online_tokens}"))

    async def do_run_initial_setup(self, ctx: ActivityContext) -> None:
        assert self.plan is not None
        hook = optional_hook(self.plan.algorithm, "initial_setup")
        if hook is not None:
            try:
                await call_maybe_async(hook, self.setup_values)
            except Exception as exc:
                self._user_error("initial_setup", exc)
                ctx.post("worker_error", exc)
                return
        ctx.post("setup_done")

    async def do_plan_batches(self, ctx: ActivityContext) -> None:
        assert self.job is not None
        if self.job.batched_execution and not self.markers:
            await self.do_count_batches(ctx)  # straight to NUMBER_OF_BATCHES(-1)
        elif self.job.batched_execution:
            ctx.send(self.message(MessageType.PREPARING_DATA_BATCHES))
        else:
            ctx.send(self.message(MessageType.NUMBER_OF_BATCHES, 1))

    async def do_count_batches(self, ctx: ActivityContext) -> None:
        ctx.send(self.message(MessageType.NUMBER_OF_BATCHES, -1))

    async def do_announce_first_batch(self, ctx: ActivityContext) -> None:
        ctx.send(self.message(MessageType.CURRENT_BATCH_ID, self.next_batch_id))

    async def do_send_task_start(self, ctx: ActivityContext) -> None:
        assert self.job is not None
        if self.job.batched_execution and not self.estimate_sent:
            ctx.send(self.message(MessageType.NUMBER_OF_BATCHES, len(self.batches)))
        ctx.send(self.message(MessageType.TASK_START))

    async def _run(self, items: list[Item], info: BatchInfo) -> Any:
        results = self._call_run_batch(items, info)
        if inspect.isawaitable(results):
            results = await results
        return _checked(items, results)

    def _call_run_batch(self, items: list[Item], info: BatchInfo) -> Any:
        """The algorithm's answer for ``items``: its results, or an awaitable of them."""
        assert self.plan is not None
        self.run_items.update(i.name for i in items)
        return self.plan.algorithm.run_batch(items, info)

    def _deliver(
        self, ctx: ActivityContext, items: list[Item], results: Any, batch: int | None
    ) -> bool:
        """Send the results of a successful run; False when the usage limit ended the task."""
        assert self.plan is not None
        allowed = len(items)
        over = False
        if self.usage is not None:
            total = self.usage.total_usage + len(items)
            self.usage = attrs.evolve(self.usage, total_usage=total)
            if total >= self.usage.limit:
                overrun = total - self.usage.limit
                allowed = max(0, len(items) - overrun)
                over = True
        kept, kept_results = items[:allowed], list(results)[:allowed]
        body_hook = self._results_body
        if body_hook is None:
            body_hook = optional_hook(self.plan.algorithm, "results_body") or default_results_body
            self._results_body = body_hook
        try:
            body = body_hook(kept, kept_results)
            problem = value_problem(body, "results")
        except Exception as exc:  # the algorithm's results_body hook failed
            ctx.post("worker_error", exc)
            return False
        if problem is not None:
            # NaN, a non-JSON object, a lone surrogate...: the peer would refuse the line.
            ctx.post("worker_error", ValueError(f"the results cannot be sent: {problem}"))
            return False
        consumed = self._consumed.get(allowed)
        if consumed is None:
            consumed = (ResourceConsumed("MODEL_INFERENCE", self._protocol_name(), allowed),)
            self._consumed[allowed] = consumed
        self.unsent.setdefault(batch, []).append(_Delivery(kept, items[allowed:]))
        ctx.send(
            self.message(
                MessageType.EVALUATION_RESULTS,
                body,
                Meta(batch_number=batch, resources_consumed=consumed),
            )
        )
        if over:
            assert self.usage is not None
            ctx.post(
                "limit_reached",
                f"usage limit {self.usage.limit} reached: {allowed} of {len(items)} results sent",
            )
        return not over

    def _protocol_name(self) -> str:
        return str(self.job.protocol.get("class_name")) if self.job else ""

    def _fail(self, items: Sequence[Item], error: BaseException) -> None:
        for item in items:
            self.failed[item.name] = f"{type(error).__name__}: {error}"
        if self.cache is not None:
            self.cache.mark_failed(
                self._cache_scope(), [(i.name, self.failed[i.name]) for i in items]
            )

    async def do_run_all(self, ctx: ActivityContext) -> None:
        items = self.batches[0]
        try:
            results = await self._run(items, BatchInfo(None))
        except Exception as exc:
            self._user_error("run_batch", exc, items)
            self._fail(items, exc)
            ctx.post("run_failed", exc)
            return
        if self._deliver(ctx, items, results, None):
            ctx.post("run_done")

    def do_run_batch(self, ctx: ActivityContext) -> Awaitable[None] | None:
        """Run the current batch, then announce the next one (or the end of the batches).

        A plain function, so a plain ``run_batch`` runs without a task of its
        own; an async one (or one that returns an awaitable) is finished by the
        awaitable this returns.
        """
        batch_id = self.current_batch
        items = self.batches[batch_id]
        try:
            results = self._call_run_batch(items, BatchInfo(batch_id))
            if results.__class__ is not list and inspect.isawaitable(results):
                return self._finish_batch(ctx, batch_id, items, results)
            results = _checked(items, results)
        except Exception as exc:
            self._batch_failed(ctx, items, exc)
        else:
            if not self._batch_ran(ctx, batch_id, items, results):
                return None
        self._announce_next(ctx, batch_id)
        return None

    async def _finish_batch(
        self, ctx: ActivityContext, batch_id: int, items: list[Item], pending: Awaitable[Any]
    ) -> None:
        try:
            results = _checked(items, await pending)
        except Exception as exc:
            self._batch_failed(ctx, items, exc)
        else:
            if not self._batch_ran(ctx, batch_id, items, results):
                return
        self._announce_next(ctx, batch_id)

    def _batch_failed(self, ctx: ActivityContext, items: list[Item], error: Exception) -> None:
        self._user_error("run_batch", error, items, retried=True)
        self.retry_queue.extend(items)
        ctx.post("batch_failed", error)

    def _batch_ran(
        self, ctx: ActivityContext, batch_id: int, items: list[Item], results: Any
    ) -> bool:
        """Send a batch's results; False when the usage limit ended the task."""
        self.consecutive_failures = 0
        return self._deliver(ctx, items, results, batch_id)

    def _announce_next(self, ctx: ActivityContext, batch_id: int) -> None:
        if batch_id + 1 < len(self.batches):
            ctx.send(self.message(MessageType.CURRENT_BATCH_ID, batch_id + 1))
        else:
            ctx.send(self.message(MessageType.BATCHES_COMPLETE, "BATCHES_ONLY"))

    async def do_retry_failed(self, ctx: ActivityContext) -> None:
        while self.retry_queue:
            item = self.retry_queue.pop(0)
            try:
                results = await self._run([item], BatchInfo(None, retry=True))
            except Exception as exc:
                self._user_error("run_batch", exc, [item])
                self._fail([item], exc)
                continue
            if not self._deliver(ctx, [item], results, None):
                return
        ctx.post("resilience_done")

    async def do_run_final_step(self, ctx: ActivityContext) -> None:
        assert self.plan is not None
        hook = optional_hook(self.plan.algorithm, "final_step")
        if hook is not None:
            try:
                await call_maybe_async(hook)
            except Exception as exc:
                self._user_error("final_step", exc)
                ctx.post("worker_error", exc)
                return
        ctx.send(self.message(MessageType.BATCHES_COMPLETE, "TASK_COMPLETE"))

    async def do_send_abort(self, ctx: ActivityContext) -> None:
        abort = self.abort or _Abort(AbortReason.WORKER_ERROR, "aborted")
        exception_type, summary = _summary(abort.error)
        body = TaskAbortBody(
            wire_text(abort.message),
            abort.reason,
            exception_type,
            None if summary is None else wire_text(summary),
        )
        ctx.send(self.message(MessageType.TASK_ABORT, body, Meta(reason=abort.reason.value)))

    # -------------------------------------------------------------- report

    def report(self, state: str) -> WorkerReport:
        accounted = set(self.delivered) | set(self.failed) | set(self.cut)
        pending = [i.name for i in self.retry_queue]
        failed = [*self.failed, *[p for p in pending if p not in self.failed]]
        if state != "complete":
            failed = list(self.failed)
        not_run = [i.name for i in self.items if i.name not in accounted and i.name not in failed]
        return WorkerReport(
            pod_id=self.pod.pod_id,
            state=state,
            abort_reason=self.abort.reason if self.abort and state == "aborted" else None,
            abort_message=self.abort.message if self.abort and state == "aborted" else "",
            delivered=tuple(self.delivered),
            failed=tuple(failed),
            cut=tuple(self.cut),
            not_run=tuple(not_run),
            skipped=tuple(self.skipped),
            errors=tuple(self.errors),
        )


def _checked(items: Sequence[Item], results: Any) -> Any:
    """``results`` of a run of ``items``, if there is one per item; raises ValueError if not."""
    if len(results) != len(items):
        raise ValueError(f"run_batch returned {len(results)} results for {len(items)} items")
    return results


async def run_worker(
    pod: Pod,
    transport: Transport,
    *,
    on_step: Callable[[str, Any], None] | None = None,
    on_message: Callable[[str, Message], None] | None = None,
    failure_limit: int = FAILURE_LIMIT,
) -> WorkerReport:
    """Serve one task as ``pod`` over ``transport``, until the worker chart ends.

    Returns:
        The worker's own report: its final state, abort reason and item account.
    """
    return await run_worker_for_kit(
        pod, transport, on_step=on_step, on_message=on_message, failure_limit=failure_limit
    )


async def run_worker_for_kit(
    pod: Pod,
    transport: Transport,
    *,
    on_step: Callable[[str, Any], None] | None = None,
    on_message: Callable[[str, Message], None] | None = None,
    failure_limit: int = FAILURE_LIMIT,
    markers: bool = True,
    logs: LogHandle | None = None,
) -> WorkerReport:
    """:func:`run_worker`, with the conformance kit's pods' extras (not public API).

    ``markers`` False leaves out the optional progress markers PREPARING_DATA
    and PREPARING_DATA_BATCHES; ``logs`` lets the caller send LOG_MESSAGE lines
    to the modeller while the task runs.
    """
    require_trio("run_worker")
    chart = shipped_chart_for("worker", BindingNames.from_class(WorkerBindings))
    # Nobody reads a worker's trace (its report says how it ended): keep none.
    executor = Executor(
        options=chart.options, on_step=on_step, on_message=on_message, keep_trace=False
    )
    bindings = WorkerBindings(pod, executor, failure_limit=failure_limit, markers=markers)
    if logs is not None:
        logs.bind(executor, lambda _key, body: bindings.message(MessageType.LOG_MESSAGE, body))
    machine = Machine.from_chart(chart, bindings)
    executor.add(Slot(pod.pod_id, machine, bindings, transport, eof_event="input_closed"))
    try:
        await executor.run()
    finally:
        if bindings.cache is not None:
            bindings.cache.close()
    return bindings.report(machine.state)
