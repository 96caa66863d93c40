"""The trio runtime: a modeller and workers driven by the charts.

Time is trio's MockClock (the ``autojump_clock`` fixture): timeouts of
minutes take no wall time, and every assertion about "when" is exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from fsm_protocol import (
    AbortReason,
    EchoProtocol,
    Hooks,
    Item,
    JobRequestBody,
    ListDatasource,
    Message,
    MessageType,
    Pod,
    PodResponseError,
    ProtocolFactory,
    ResultKey,
    TaskStatus,
    TaskTimeouts,
    UsageLimit,
    WorkerPlan,
    memory_transport_pair,
    registry,
    run_modeller,
    run_task,
    run_worker,
)
from fsm_protocol._runtime._modeller import Progress

from .peers import scripted_worker


def types_between(trace: tuple[Message, ...], pod: str) -> list[str]:
    """The message types of one worker's conversation, in observed order."""
    return [m.type.value for m in trace if pod in (m.sender, m.recipient)]


def echo(**kwargs: Any) -> EchoProtocol:
    kwargs.setdefault("items", tuple(f"i{n}" for n in range(6)))
    kwargs.setdefault("batch_size", 2)
    return EchoProtocol(**kwargs)


# ------------------------------------------------------------------ modes


async def test_non_batched_run_sends_one_result_without_batch_number() -> None:
    outcome = await run_task(echo(), [Pod("a/p")])
    assert outcome.status is TaskStatus.COMPLETE
    assert outcome.results == {ResultKey("a/p", None): {"items": [f"i{n}" for n in range(6)]}}
    assert types_between(outcome.trace, "a/p") == [
        "JOB_REQUEST", "JOB_ACCEPT", "PREPARING_DATA", "CONFIGURING_TASK",
        "NUMBER_OF_BATCHES", "TASK_START", "TASK_START", "EVALUATION_RESULTS",
        "BATCHES_COMPLETE", "TASK_COMPLETE",
    ]  # fmt: skip
    counts = [m.body for m in outcome.trace if m.type is MessageType.NUMBER_OF_BATCHES]
    assert counts == [1]


async def test_streaming_run_announces_batches_and_one_estimate() -> None:
    outcome = await run_task(echo(), [Pod("a/p")], batched_execution=True)
    assert outcome.status is TaskStatus.COMPLETE
    sent = [(m.type.value, m.body) for m in outcome.trace if m.sender == "a/p"]
    assert sent[3:8] == [
        ("PREPARING_DATA_BATCHES", None),
        ("NUMBER_OF_BATCHES", -1),
        ("CURRENT_BATCH_ID", 0),
        ("NUMBER_OF_BATCHES", 3),  # the estimate, once, after batch 0 is announced
        ("TASK_START", None),
    ]
    assert [b for t, b in sent if t == "CURRENT_BATCH_ID"] == [0, 1, 2]
    assert [b for t, b in sent if t == "BATCHES_COMPLETE"] == ["BATCHES_ONLY", "TASK_COMPLETE"]
    assert outcome.results == {
        ResultKey("a/p", 0): {"items": ["i0", "i1"]},
        ResultKey("a/p", 1): {"items": ["i2", "i3"]},
        ResultKey("a/p", 2): {"items": ["i4", "i5"]},
    }
    assert outcome.workers["a/p"].estimate == 3


async def test_seq_rises_by_one_per_sender() -> None:
    outcome = await run_task(echo(), [Pod("a/p"), Pod("b/p")], batched_execution=True)
    for sender in ("modeller", "a/p", "b/p"):
        seqs = [m.seq for m in outcome.trace if m.sender == sender]
        assert seqs == list(range(len(seqs)))


# ------------------------------------------------------------- resilience


async def test_failed_batch_items_are_retried_one_by_one() -> None:
    protocol = echo(fail_in_batch=("i2",), fail_alone=("i3",))
    outcome = await run_task(protocol, [Pod("a/p")], batched_execution=True)
    assert outcome.status is TaskStatus.COMPLETE
    assert outcome.results == {
        ResultKey("a/p", 0): {"items": ["i0", "i1"]},
        ResultKey("a/p", 2): {"items": ["i4", "i5"]},
        ResultKey("a/p", None, 0): {"items": ["i2"]},  # retried alone, succeeds
    }
    assert outcome.failed_items == {"a/p": ("i3",)}
    report = outcome.worker_reports["a/p"]
    assert sorted(report.delivered) == ["i0", "i1", "i2", "i4", "i5"]
    assert report.not_run == ()


async def test_five_consecutive_failed_batches_abort_with_worker_error() -> None:
    items = tuple(f"i{n}" for n in range(8))
    protocol = echo(items=items, batch_size=1, fail_alone=items[1:6])
    outcome = await run_task(protocol, [Pod("a/p")], batched_execution=True)
    assert outcome.status is TaskStatus.ABORTED
    assert outcome.abort_reasons == {"a/p": AbortReason.WORKER_ERROR}
    assert "5 consecutive" in outcome.workers["a/p"].abort_message
    # Batch 0 succeeded before the failures: its result is kept.
    assert outcome.results == {ResultKey("a/p", 0): {"items": ["i0"]}}
    ids = [m.body for m in outcome.trace if m.type is MessageType.CURRENT_BATCH_ID]
    assert ids == [0, 1, 2, 3, 4, 5]  # the fifth failure is batch 5; no batch 6


async def test_four_failures_then_a_success_resets_the_count() -> None:
    items = tuple(f"i{n}" for n in range(10))
    protocol = echo(items=items, batch_size=1, fail_in_batch=items[0:4] + items[5:9])
    outcome = await run_task(protocol, [Pod("a/p")], batched_execution=True)
    assert outcome.status is TaskStatus.COMPLETE
    assert len([k for k in outcome.results if k.retry is not None]) == 8


async def test_nothing_succeeding_aborts_with_worker_error() -> None:
    outcome = await run_task(
        echo(items=("x", "y"), fail_alone=("x", "y")), [Pod("a/p")], batched_execution=True
    )
    assert outcome.abort_reasons == {"a/p": AbortReason.WORKER_ERROR}
    assert outcome.failed_items == {"a/p": ("x", "y")}


async def test_non_batched_failure_aborts_without_resilience() -> None:
    outcome = await run_task(echo(fail_in_batch=("i1",)), [Pod("a/p")])
    assert outcome.abort_reasons == {"a/p": AbortReason.WORKER_ERROR}
    assert outcome.results == {}
    assert "BATCHES_COMPLETE" not in types_between(outcome.trace, "a/p")


# ------------------------------------------------------- setup, final step


@attrs.define
class Recording:
    """A worker algorithm that records what the runtime called it with."""

    calls: list[Any] = attrs.field(factory=list)

    def setup(self) -> None:
        self.calls.append("setup")

    async def initial_setup(self, values: Any) -> None:
        self.calls.append(("initial_setup", values))

    def run_batch(self, items: Any, info: Any) -> list[str]:
        self.calls.append(("run", [i.name for i in items], info.batch_id))
        return [i.name.upper() for i in items]

    def final_step(self) -> None:
        self.calls.append("final_step")


@attrs.frozen
class RecordingConfig:
    items: tuple[str, ...] = ("a", "b", "c")
    initial_setup: bool = True


def recording_registry(algorithm: Recording) -> Any:
    return registry.with_protocol(
        ProtocolFactory(
            "test.Recording",
            RecordingConfig,
            lambda config, ctx: WorkerPlan(algorithm, [Item(n) for n in config.items], 2),
            modeller=lambda config: attrs.make_class("M", [])(),
        )
    )


async def test_initial_setup_values_reach_the_worker_before_any_batch() -> None:
    algorithm = Recording()
    protocols = recording_registry(algorithm)

    class Modeller:
        def setup_values(self) -> dict[str, int]:
            return {"threshold": 7}

    outcome = await run_task(
        RecordingConfig(),
        [Pod("a/p", registry=protocols)],
        protocols=protocols,
        batched_execution=True,
        modeller_algorithm=Modeller(),
    )
    assert outcome.status is TaskStatus.COMPLETE
    assert algorithm.calls == [
        "setup",
        ("initial_setup", {"threshold": 7}),
        ("run", ["a", "b"], 0),
        ("run", ["c"], 1),
        "final_step",
    ]
    exchange = [m for m in outcome.trace if m.type is MessageType.ALGORITHM_EXCHANGE]
    assert [m.body for m in exchange] == [{"threshold": 7}]
    assert outcome.results[ResultKey("a/p", 0)] == {"items": ["a", "b"], "results": ["A", "B"]}


async def test_modeller_final_step_gets_every_result() -> None:
    seen: list[Any] = []

    class Modeller:
        def on_results(self, worker: str, batch: int | None, body: Any) -> None:
            seen.append((worker, batch))

        def final_step(self, results: Any) -> int:
            return len(results)

    outcome = await run_task(
        echo(), [Pod("a/p"), Pod("b/p")], batched_execution=True, modeller_algorithm=Modeller()
    )
    assert outcome.final_result == 6
    assert sorted(seen) == [(w, b) for w in ("a/p", "b/p") for b in (0, 1, 2)]


# ------------------------------------------------------------ usage limits


async def test_limit_overrun_truncates_results_and_aborts() -> None:
    # The platform's example: 10 used of 20, a batch of 14 -> overrun 4, allowed 10.
    items = tuple(f"i{n}" for n in range(14))
    protocol = echo(
        items=items, batch_size=14, inference_limit=UsageLimit(limit=20, total_usage=10)
    )
    outcome = await run_task(protocol, [Pod("a/p")], batched_execution=True)
    assert outcome.abort_reasons == {"a/p": AbortReason.LIMITS_EXCEEDED}
    (result,) = [m for m in outcome.trace if m.type is MessageType.EVALUATION_RESULTS]
    assert result.body == {"items": list(items[:10])}
    assert [r.amount for r in result.meta.resources_consumed] == [10]
    assert outcome.worker_reports["a/p"].cut == items[10:]
    assert "BATCHES_COMPLETE" not in types_between(outcome.trace, "a/p")


async def test_reaching_the_limit_exactly_also_aborts() -> None:
    protocol = echo(items=("a", "b", "c", "d"), batch_size=2, inference_limit=UsageLimit(4, 2))
    outcome = await run_task(protocol, [Pod("a/p")], batched_execution=True)
    assert outcome.abort_reasons == {"a/p": AbortReason.LIMITS_EXCEEDED}
    assert outcome.results == {ResultKey("a/p", 0): {"items": ["a", "b"]}}


async def test_limit_already_exceeded_sends_empty_results() -> None:
    protocol = echo(items=("a", "b"), batch_size=2, inference_limit=UsageLimit(3, 5))
    outcome = await run_task(protocol, [Pod("a/p")], batched_execution=True)
    (result,) = [m for m in outcome.trace if m.type is MessageType.EVALUATION_RESULTS]
    assert result.body == {"items": []}  # allowed is clamped to 0, never negative
    assert result.meta.resources_consumed[0].amount == 0


async def test_limit_applies_to_resilience_retries() -> None:
    protocol = echo(
        items=("a", "b", "c"), batch_size=3, fail_in_batch=("a",), inference_limit=UsageLimit(2)
    )
    outcome = await run_task(protocol, [Pod("a/p")], batched_execution=True)
    assert outcome.abort_reasons == {"a/p": AbortReason.LIMITS_EXCEEDED}
    assert outcome.results == {
        ResultKey("a/p", None, 0): {"items": ["a"]},
        ResultKey("a/p", None, 1): {"items": ["b"]},
    }


# ------------------------------------------------------ test run, no data


async def test_test_run_processes_only_the_first_item() -> None:
    outcome = await run_task(echo(), [Pod("a/p")], batched_execution=True, test_run=True)
    assert outcome.results == {ResultKey("a/p", 0): {"items": ["i0"]}}


async def test_no_items_accepts_then_aborts_with_no_data() -> None:
    outcome = await run_task(echo(items=()), [Pod("a/p")])
    assert types_between(outcome.trace, "a/p")[:2] == ["JOB_REQUEST", "JOB_ACCEPT"]
    assert outcome.abort_reasons == {"a/p": AbortReason.NO_DATA}


async def test_bad_protocol_parameters_are_rejected() -> None:
    outcome = await run_task(echo(), [Pod("a/p")], overrides={"a/p": {"batch_size": 0}})
    assert outcome.status is TaskStatus.REJECTED
    reject = outcome.workers["a/p"].reject
    assert reject is not None and reject.reason.value == "TASK_SETUP_ERROR"
    assert "batch_size must be at least 1" in reject.details[0]


# ---------------------------------------------------------------- caches


@attrs.frozen
class FromPod:
    """A protocol that runs the pod's own datasource (caches apply to it)."""

    batch_size: int = 2


class Upper:
    def run_batch(self, items: Any, info: Any) -> list[str]:
        if any(i.name == "bad" for i in items) and info.retry:
            raise ValueError("bad item")
        if any(i.name == "bad" for i in items):
            raise ValueError("bad batch")
        return [i.name.upper() for i in items]


pod_registry = registry.with_protocol(
    ProtocolFactory(
        "test.FromPod",
        FromPod,
        lambda config, ctx: WorkerPlan(Upper(), ctx.datasource.items(), config.batch_size),
    )
)


def data_pod(tmp_path: Path, *entries: tuple[str, str]) -> Pod:
    source = ListDatasource(tuple(Item(name, modified=stamp) for name, stamp in entries))
    return Pod("a/p", datasource=source, results_dir=tmp_path, registry=pod_registry)


async def test_run_on_new_data_only_skips_processed_items_across_restarts(tmp_path: Path) -> None:
    async def run(pod: Pod, **kwargs: Any) -> Any:
        kwargs.setdefault("force_rerun_failed_files", False)
        return await run_task(
            FromPod(), [pod], protocols=pod_registry, batched_execution=True,
            run_on_new_data_only=True, **kwargs,
        )  # fmt: skip

    first = await run(data_pod(tmp_path, ("x", "1"), ("y", "1"), ("bad", "1")))
    assert first.status is TaskStatus.COMPLETE
    assert first.failed_items == {"a/p": ("bad",)}
    # A new run (a new Pod, a new cache connection) only sees what changed.
    second = await run(data_pod(tmp_path, ("x", "1"), ("y", "2"), ("z", "1"), ("bad", "1")))
    assert second.worker_reports["a/p"].skipped == ("x", "bad")
    assert sorted(second.worker_reports["a/p"].delivered) == ["y", "z"]
    # Nothing new at all: the platform's NO_NEW_DATA.
    third = await run(data_pod(tmp_path, ("x", "1"), ("y", "2"), ("z", "1"), ("bad", "1")))
    assert third.abort_reasons == {"a/p": AbortReason.NO_NEW_DATA}
    # force_rerun_failed_files brings the failed item back.
    fourth = await run(data_pod(tmp_path, ("x", "1"), ("bad", "1")), force_rerun_failed_files=True)
    assert fourth.worker_reports["a/p"].skipped == ("x",)
    assert (tmp_path / "item-cache.sqlite").exists()


async def test_run_on_new_data_only_without_results_folder_is_rejected() -> None:
    pod = Pod("a/p", registry=pod_registry, datasource=ListDatasource.from_names(["x"]))
    outcome = await run_task(FromPod(), [pod], protocols=pod_registry, run_on_new_data_only=True)
    assert outcome.status is TaskStatus.REJECTED


# --------------------------------------------------------- several pods


async def test_require_all_pods_cancels_the_accepted_and_raises() -> None:
    with pytest.raises(PodResponseError) as caught:
        await run_task(
            echo(), [Pod("a/p"), Pod("b/p")], require_all_pods=True,
            overrides={"b/p": {"batch_size": 0}},
        )  # fmt: skip
    assert caught.value.pods == ("b/p",)
    outcome = caught.value.outcome
    assert outcome.workers["a/p"].cancel_sent and outcome.workers["a/p"].cancel_confirmed
    assert outcome.abort_reasons["a/p"] is AbortReason.CANCELLED_BY_MODELLER
    assert "TASK_START" not in [m.type.value for m in outcome.trace if m.sender == "modeller"]


async def test_task_start_waits_for_every_worker(autojump_clock: trio.testing.MockClock) -> None:
    class Slow:
        def __init__(self, delay: float) -> None:
            self.delay = delay

        async def setup(self) -> None:
            await trio.sleep(self.delay)

        def run_batch(self, items: Any, info: Any) -> list[str]:
            return [i.name for i in items]

    @attrs.frozen
    class Delay:
        seconds: float = 0.0

    protocols = registry.with_protocol(
        ProtocolFactory(
            "test.Delay", Delay, lambda c, ctx: WorkerPlan(Slow(c.seconds), [Item("x")], 1)
        )
    )
    pods = [Pod(p, registry=protocols) for p in ("a/p", "b/p", "c/p")]
    outcome = await run_task(
        Delay(), pods, protocols=protocols, overrides={"c/p": {"seconds": 100.0}}
    )
    assert outcome.status is TaskStatus.COMPLETE
    trace = [(m.sender, m.type.value) for m in outcome.trace]
    first_start = trace.index(("modeller", "TASK_START"))
    assert ("c/p", "TASK_START") in trace[:first_start]  # the slow one was waited for


async def test_progress_shows_the_slowest_worker() -> None:
    seen: list[Progress] = []
    await run_task(
        echo(), [Pod("a/p"), Pod("b/p")], batched_execution=True,
        hooks=Hooks(on_progress=seen.append),
    )  # fmt: skip
    assert seen and all(p.batch <= 2 for p in seen)
    assert seen[-1].batch == 2
    # Never ahead of a worker that has not reached that batch.
    assert [p.batch for p in seen] == sorted(p.batch for p in seen)


async def test_user_cancel_sends_task_cancel_and_reports_confirmations(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Sleepy:
        async def run_batch(self, items: Any, info: Any) -> list[str]:
            await trio.sleep(10)
            return [i.name for i in items]

    @attrs.frozen
    class Nap:
        n: int = 6

    protocols = registry.with_protocol(
        ProtocolFactory(
            "test.Nap",
            Nap,
            lambda c, ctx: WorkerPlan(Sleepy(), [Item(str(i)) for i in range(c.n)], 2),
        )
    )
    cancel = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _set_after(cancel, 15))
        outcome = await run_task(
            Nap(), [Pod("a/p", registry=protocols), Pod("b/p", registry=protocols)],
            protocols=protocols, batched_execution=True, cancel=cancel,
        )  # fmt: skip
    assert outcome.status is TaskStatus.CANCELLED
    assert trio.current_time() == 15  # no waiting once both confirmed
    for worker in outcome.workers.values():
        assert worker.cancel_sent and worker.cancel_confirmed
    # Batch 0 finished at t=10, before the cancel: kept.
    assert set(outcome.results) == {ResultKey("a/p", 0), ResultKey("b/p", 0)}


async def _set_after(event: trio.Event, seconds: float) -> None:
    await trio.sleep(seconds)
    event.set()


async def test_cancel_wait_is_bounded_for_a_worker_that_ignores_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    (m_end, w_end) = memory_transport_pair()
    task_id = "t-ignore"
    job = job_body(echo(), ["a/p"], batched=False)
    cancel = trio.Event()

    async def deaf_worker() -> None:
        peer = scripted_worker(w_end, "a/p", task_id)
        await peer.expect("JOB_REQUEST")
        await peer.send("JOB_ACCEPT", {"ACCEPT": "a/p"})
        cancel.set()
        await peer.expect("TASK_CANCEL")
        await trio.sleep_forever()  # never answers

    async with trio.open_nursery() as nursery:
        nursery.start_soon(deaf_worker)
        run = await run_modeller(
            task_id=task_id, jobs={"a/p": job}, configs={"a/p": echo()}, links={"a/p": m_end},
            timeouts=TaskTimeouts(cancel_timeout_s=30), cancel=cancel,
        )  # fmt: skip
        nursery.cancel_scope.cancel()
    assert run.status is TaskStatus.CANCELLED
    assert run.workers["a/p"].state == "unconfirmed"
    assert run.workers["a/p"].cancel_confirmed is False
    assert trio.current_time() == 30


def job_body(protocol: Any, pods: list[str], *, batched: bool, **options: float) -> JobRequestBody:
    return JobRequestBody(
        protocol=registry.dump(protocol),
        pod_identifiers=tuple(pods),
        batched_execution=batched,
        options=dict(options),
    )


async def test_pod_that_never_answers_is_left_out_after_the_response_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    links = {}
    ends = {}
    for pod in ("a/p", "silent/p"):
        links[pod], ends[pod] = memory_transport_pair()
    task_id = "t-left-out"
    jobs = {p: job_body(echo(), list(links), batched=True) for p in links}

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_worker, Pod("a/p"), ends["a/p"])
        run = await run_modeller(
            task_id=task_id, jobs=jobs, configs={p: echo() for p in links}, links=links,
            timeouts=TaskTimeouts(response_timeout_s=60),
        )  # fmt: skip
        nursery.cancel_scope.cancel()
    assert run.status is TaskStatus.COMPLETE
    assert run.workers["silent/p"].state == "unanswered"
    first_start = next(
        m for m in run.trace if m.type is MessageType.TASK_START and m.sender == "modeller"
    )
    assert first_start  # the barrier opened without the silent pod
    assert trio.current_time() == 60


async def test_late_accept_is_cancelled(autojump_clock: trio.testing.MockClock) -> None:
    links, ends = {}, {}
    for pod in ("a/p", "late/p"):
        links[pod], ends[pod] = memory_transport_pair()
    task_id = "t-late"
    jobs = {p: job_body(echo(), list(links), batched=True) for p in links}

    class Slow:
        async def run_batch(self, items: Any, info: Any) -> list[str]:
            await trio.sleep(100)
            return [i.name for i in items]

    async def late_worker() -> None:
        peer = scripted_worker(ends["late/p"], "late/p", task_id)
        await peer.expect("JOB_REQUEST")
        await trio.sleep(61)
        await peer.send("JOB_ACCEPT", {"ACCEPT": "late/p"})
        await peer.expect("TASK_CANCEL")
        await peer.send("TASK_ABORT", abort_body("CANCELLED_BY_MODELLER"))

    slow_registry = registry.with_protocol(
        ProtocolFactory(
            "conformance.Echo", EchoProtocol, lambda c, ctx: WorkerPlan(Slow(), [Item("x")], 1)
        )
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_worker, Pod("a/p", registry=slow_registry), ends["a/p"])
        nursery.start_soon(late_worker)
        run = await run_modeller(
            task_id=task_id, jobs=jobs, configs={p: echo() for p in links}, links=links,
            timeouts=TaskTimeouts(response_timeout_s=60),
        )  # fmt: skip
    assert run.status is TaskStatus.COMPLETE
    assert run.workers["late/p"].late and run.workers["late/p"].state == "aborted"
    assert run.workers["a/p"].state == "complete"


def abort_body(reason: str) -> dict[str, Any]:
    return {"message": "stop", "reason": reason, "exception_type": None, "traceback_summary": None}


async def test_an_around_run_hook_that_fails_on_exit_loses_no_result() -> None:
    class Span:
        def __init__(self, task_id: str) -> None:
            pass

        async def __aenter__(self) -> None:
            pass

        async def __aexit__(self, *exc: object) -> None:
            raise RuntimeError("the tracing backend is down")

    outcome = await run_task(echo(), [Pod("a/p")], hooks=Hooks(around_run=Span))
    assert outcome.status is TaskStatus.COMPLETE
    assert outcome.results
    (error,) = [e for e in outcome.errors if e.where == "around_run"]
    assert error.type == "RuntimeError" and error.message == "the tracing backend is down"
    assert "raise RuntimeError" in error.traceback


async def test_an_around_run_hook_that_fails_on_entry_stops_the_task_before_it_starts() -> None:
    class Span:
        def __init__(self, task_id: str) -> None:
            pass

        async def __aenter__(self) -> None:
            raise RuntimeError("no span")

        async def __aexit__(self, *exc: object) -> None:
            pass

    with pytest.raises(RuntimeError, match="no span"):
        await run_task(echo(), [Pod("a/p")], hooks=Hooks(around_run=Span))


async def test_hooks_see_every_step_and_message() -> None:
    steps: list[str] = []
    messages: list[str] = []
    entered: list[str] = []

    class Around:
        def __init__(self, task_id: str) -> None:
            entered.append(task_id)

        async def __aenter__(self) -> None:
            entered.append("enter")

        async def __aexit__(self, *exc: object) -> None:
            entered.append("exit")

    outcome = await run_task(
        echo(), [Pod("a/p")], task_id="t-hooks",
        hooks=Hooks(
            on_state_change=lambda who, step: steps.append(f"{who} {step.source}->{step.target}"),
            on_message=lambda who, msg: messages.append(f"{who} {msg.type.value}"),
            around_run=Around,
        ),
    )  # fmt: skip
    assert entered == ["t-hooks", "enter", "exit"]
    assert "worker:a/p idle->vetting" in steps
    assert "modeller:a/p idle->requested" in steps
    modeller_messages = [m for m in messages if m.startswith("modeller:")]
    assert len(modeller_messages) == len(outcome.trace)
