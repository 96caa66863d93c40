"""``run_task``: one modeller and its workers, in-process, under one nursery."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import attrs
import trio

from .._algo._protocols import ProtocolRegistry, registry
from .._base._errors import ConfigError, PodResponseError
from .._base._reports import ErrorReport, log_error_report
from .._core._engine import Step
from .._wire._messages import AbortReason, JobRequestBody, Message
from ._collector import collector_tuned
from ._executor import Violation
from ._modeller import (
    DEFAULT_TIMEOUTS,
    Progress,
    ResultKey,
    TaskStatus,
    TaskTimeouts,
    WorkerOutcome,
    run_modeller,
)
from ._transport import memory_transport_pair
from ._trio_only import require_trio
from ._worker import Pod, WorkerReport, run_worker

_LOG = logging.getLogger("fsm_protocol.runtime")


@attrs.frozen
class Hooks:
    """Callbacks into a run. Each is optional and must not block.

    An exception from ``on_state_change``, ``on_message`` or ``on_progress`` does
    not stop the run: it is logged and kept in :attr:`TaskOutcome.errors`.

    Args:
        on_state_change: ``(who, step)`` after every step of any machine;
            ``who`` is ``"modeller:<pod>"`` or ``"worker:<pod>"``.
        on_message: ``(who, message)`` for every message sent or received.
        on_progress: The slowest worker's batch, whenever it changes.
        around_run: An async context manager factory wrapped around the whole
            run, given the task id (for tracing spans, timing, resources). What
            its entry raises is raised (the task never started); what its exit
            raises after the task ended is kept in :attr:`TaskOutcome.errors`,
            so the task's results are never lost to it.
    """

    on_state_change: Callable[[str, Step], None] | None = None
    on_message: Callable[[str, Message], None] | None = None
    on_progress: Callable[[Progress], None] | None = None
    around_run: Callable[[str], AbstractAsyncContextManager[Any]] | None = None


@attrs.frozen
class TaskOutcome:
    """Everything a task produced, however it ended.

    ``results`` are keyed by :class:`ResultKey` (worker, batch id or retry);
    results received before an abort are kept. ``failed_items``,
    ``worker_reports`` and ``errors`` come from in-process workers, which report
    their own account of every item; ``errors`` holds every exception their
    algorithm, datasource or hooks raised, with its traceback, in pod order.
    """

    task_id: str
    status: TaskStatus
    workers: Mapping[str, WorkerOutcome]
    results: Mapping[ResultKey, Any]
    abort_reasons: Mapping[str, AbortReason]
    failed_items: Mapping[str, tuple[str, ...]]
    trace: tuple[Message, ...]
    violations: tuple[Violation, ...] = ()
    final_result: Any = None
    worker_reports: Mapping[str, WorkerReport] = attrs.field(factory=dict)
    errors: tuple[ErrorReport, ...] = ()

    def results_for(self, worker: str) -> dict[ResultKey, Any]:
        return {k: v for k, v in self.results.items() if k.worker == worker}


def _guarded(
    hook: Callable[..., None] | None, where: str, errors: list[ErrorReport]
) -> Callable[..., None] | None:
    """``hook``, made safe to call from the runtime: what it raises is kept and logged.

    A hook is the user's code watching the run; its bug must not break the
    protocol for everyone, so the run goes on and the outcome says what happened.
    """
    if hook is None:
        return None

    def call(*args: Any) -> None:
        try:
            hook(*args)
        except Exception as exc:
            report = ErrorReport.from_exception(exc, where=where)
            errors.append(report)
            log_error_report(_LOG, report, exc, level=logging.ERROR)

    return call


def _hook(hooks: Hooks, prefix: str, errors: list[ErrorReport]) -> tuple[Any, Any]:
    step = _guarded(hooks.on_state_change, "on_state_change", errors)
    msg = _guarded(hooks.on_message, "on_message", errors)
    on_step = (lambda key, s: step(f"{prefix}:{key}", s)) if step else None
    on_message = (lambda key, m: msg(f"{prefix}:{key}", m)) if msg else None
    return on_step, on_message


@contextlib.asynccontextmanager
async def _nothing(_task_id: str) -> AsyncIterator[None]:
    yield


async def run_task(
    protocol: object,
    pods: Sequence[Pod],
    *,
    batched_execution: bool = False,
    run_on_new_data_only: bool = False,
    force_rerun_failed_files: bool = True,
    test_run: bool = False,
    project_id: str | None = None,
    require_all_pods: bool = False,
    task_id: str | None = None,
    timeouts: TaskTimeouts = DEFAULT_TIMEOUTS,
    hooks: Hooks = Hooks(),
    protocols: ProtocolRegistry = registry,
    modeller_algorithm: Any = None,
    cancel: trio.Event | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> TaskOutcome:
    """Run one task between a modeller and in-process workers.

    Args:
        protocol: A registered protocol configuration, e.g. ``EchoProtocol(...)``.
        pods: The workers, each with its own data.
        batched_execution: Stream batches (with resilience) instead of one run.
        run_on_new_data_only: Skip items a pod already processed (needs its
            ``results_dir``).
        force_rerun_failed_files: With the above, rerun items that failed before.
        test_run: Run only each pod's first item.
        project_id: Sent in the job request; also scopes the pods' caches.
        require_all_pods: A rejection or a missing answer cancels the task and
            raises :class:`PodResponseError`.
        task_id: Defaults to a fresh random id.
        timeouts: Every wait, modeller and worker side.
        hooks: Callbacks on steps, messages, progress, and around the run.
        protocols: Where ``protocol`` is registered; also the protocols of every
            pod that has no registry of its own.
        modeller_algorithm: The modeller half; by default the protocol's own.
        cancel: Set this event to cancel the task (TASK_CANCEL to every worker).
        overrides: Per-pod replacements for fields of the protocol JSON.

    Returns:
        The outcome: status, results, aborts, failed items and the trace.

    Raises:
        PodResponseError: ``require_all_pods`` and a pod rejected or did not answer.
        ConfigError: The protocol is not registered, two pods share an id, or it
            was awaited outside trio (e.g. from asyncio; the message says how to run it).
    """
    require_trio("run_task")
    with collector_tuned():
        return await _run_task(
            protocol,
            pods,
            batched_execution=batched_execution,
            run_on_new_data_only=run_on_new_data_only,
            force_rerun_failed_files=force_rerun_failed_files,
            test_run=test_run,
            project_id=project_id,
            require_all_pods=require_all_pods,
            task_id=task_id,
            timeouts=timeouts,
            hooks=hooks,
            protocols=protocols,
            modeller_algorithm=modeller_algorithm,
            cancel=cancel,
            overrides=overrides,
        )


async def _run_task(
    protocol: object,
    pods: Sequence[Pod],
    *,
    batched_execution: bool,
    run_on_new_data_only: bool,
    force_rerun_failed_files: bool,
    test_run: bool,
    project_id: str | None,
    require_all_pods: bool,
    task_id: str | None,
    timeouts: TaskTimeouts,
    hooks: Hooks,
    protocols: ProtocolRegistry,
    modeller_algorithm: Any,
    cancel: trio.Event | None,
    overrides: Mapping[str, Mapping[str, Any]] | None,
) -> TaskOutcome:
    ids = [pod.pod_id for pod in pods]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"pod ids must be unique, found {ids}")
    task_id = task_id or f"t-{uuid.uuid4().hex[:12]}"
    factory = protocols.factory_for(protocol)
    base = protocols.dump(protocol)
    jobs: dict[str, JobRequestBody] = {}
    configs: dict[str, object] = {}
    everyone = tuple(ids)
    shared: tuple[object, JobRequestBody] | None = None  # for the pods without overrides

    def job_for(spec: dict[str, Any]) -> tuple[object, JobRequestBody]:
        try:
            config = protocols.load(spec)
        except ConfigError:
            # A deliberately bad override is the pod's to refuse (JOB_REJECT).
            config = protocol
        return config, JobRequestBody(
            protocol=spec,
            pod_identifiers=everyone,
            batched_execution=batched_execution,
            run_on_new_data_only=run_on_new_data_only,
            force_rerun_failed_files=force_rerun_failed_files,
            test_run=test_run,
            project_id=project_id,
            options=dict(timeouts.worker_options()),
        )

    for pod_id in ids:
        override = (overrides or {}).get(pod_id)
        if override is not None:
            configs[pod_id], jobs[pod_id] = job_for({**base, **override})
            continue
        if shared is None:  # one job value for them all: a task of 1,000 pods holds one
            shared = job_for(dict(base))
        configs[pod_id], jobs[pod_id] = shared
    if modeller_algorithm is None and factory.modeller is not None:
        modeller_algorithm = factory.modeller(protocol)

    reports: dict[str, WorkerReport] = {}
    links = {}
    around = hooks.around_run or _nothing
    hook_errors: list[ErrorReport] = []

    async def serve(pod: Pod, transport: Any) -> None:
        on_step, on_message = _hook(hooks, "worker", hook_errors)
        if pod.registry is None:
            pod = attrs.evolve(pod, registry=protocols)
        try:
            reports[pod.pod_id] = await run_worker(
                pod, transport, on_step=on_step, on_message=on_message
            )
        finally:
            # A worker that crashed must not leave the modeller waiting on it.
            await transport.aclose()

    on_step, on_message = _hook(hooks, "modeller", hook_errors)
    around_run = around(task_id)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(around_run)
        async with trio.open_nursery() as nursery:
            for pod in pods:
                modeller_end, worker_end = memory_transport_pair()
                links[pod.pod_id] = modeller_end
                nursery.start_soon(serve, pod, worker_end)
            run = await run_modeller(
                task_id=task_id,
                jobs=jobs,
                configs=configs,
                links=links,
                algorithm=modeller_algorithm,
                timeouts=timeouts,
                require_all_pods=require_all_pods,
                cancel=cancel,
                on_step=on_step,
                on_message=on_message,
                on_progress=_guarded(hooks.on_progress, "on_progress", hook_errors),
            )
        # The task has ended: from here, what the hook's exit raises is kept, not raised.
        exit_stack = stack.pop_all()
    try:
        await exit_stack.aclose()
    except Exception as exc:
        report = ErrorReport.from_exception(exc, where="around_run")
        hook_errors.append(report)
        log_error_report(_LOG, report, exc, level=logging.ERROR)
    outcome = TaskOutcome(
        task_id=task_id,
        status=run.status,
        workers=run.workers,
        results=run.results,
        abort_reasons={
            p: w.abort_reason for p, w in run.workers.items() if w.abort_reason is not None
        },
        failed_items={p: r.failed for p, r in reports.items() if r.failed},
        trace=run.trace,
        violations=run.violations,
        final_result=run.final_result,
        worker_reports=reports,
        errors=(
            *(e for pod_id in ids if pod_id in reports for e in reports[pod_id].errors),
            *run.errors,
            *hook_errors,
        ),
    )
    if run.pods_missing:
        raise PodResponseError(
            f"require_all_pods: {', '.join(run.pods_missing)} did not accept the job; "
            "the pods that accepted were cancelled",
            pods=run.pods_missing,
            outcome=outcome,
        )
    return outcome
