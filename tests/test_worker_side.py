"""The worker runtime against a scripted modeller: waits, liveness and bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
import trio.testing

from fsm_protocol import (
    AbortReason,
    EchoProtocol,
    JobRequestBody,
    Pod,
    WorkerReport,
    encode,
    memory_transport_pair,
    registry,
    run_worker,
)
from fsm_protocol._algo._algorithms import ListDatasource
from fsm_protocol._algo._protocols import EchoWorker, WorkerPlan
from fsm_protocol._core._engine import Event
from fsm_protocol._runtime._cache import ItemCache
from fsm_protocol._runtime._executor import ActivityContext, Executor
from fsm_protocol._runtime._worker import WorkerBindings

from .peers import Scripted, scripted_modeller

TASK = "t-worker"


def request_body(protocol: Any = None, *, batched: bool = False, **options: float) -> Any:
    from fsm_protocol._wire._messages import _converter

    body = JobRequestBody(
        protocol=registry.dump(protocol or EchoProtocol(items=("a", "b"), batch_size=1)),
        pod_identifiers=("a/p",),
        batched_execution=batched,
        options=dict(options),
    )
    return _converter.unstructure(body)


async def start(nursery: trio.Nursery, reports: list[WorkerReport]) -> Scripted:
    m_end, w_end = memory_transport_pair()

    async def serve() -> None:
        reports.append(await run_worker(Pod("a/p"), w_end))

    nursery.start_soon(serve)
    return scripted_modeller(m_end, "a/p", TASK)


async def opening(peer: Scripted, *, batched: bool = False, **options: float) -> None:
    await peer.send("JOB_REQUEST", request_body(batched=batched, **options))
    await peer.expect("JOB_ACCEPT")
    await peer.expect("PREPARING_DATA")
    await peer.expect("CONFIGURING_TASK")
    await peer.expect("NUMBER_OF_BATCHES")
    await peer.expect("TASK_START")


async def test_liveness_soft_wait_online_check_then_hard_wait_abort(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reports: list[WorkerReport] = []
    async with trio.open_nursery() as nursery:
        peer = await start(nursery, reports)
        await opening(peer, soft_timeout_s=50, hard_timeout_s=20)
        await peer.send("TASK_START")
        await peer.expect("EVALUATION_RESULTS")
        await peer.expect("BATCHES_COMPLETE")
        done_at = trio.current_time()
        check = await peer.expect("ONLINE_CHECK")
        assert trio.current_time() - done_at == 50
        await peer.send("ONLINE_RESPONSE", check.body)  # alive: the soft wait restarts
        await peer.expect("ONLINE_CHECK")
        assert trio.current_time() - done_at == 100
        abort = await peer.expect("TASK_ABORT")  # no answer this time
        assert trio.current_time() - done_at == 120
        assert abort.body["reason"] == "MODELLER_TIMEOUT"
    assert reports[0].state == "aborted"


async def test_task_start_wait_is_not_restarted_by_other_messages(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reports: list[WorkerReport] = []
    async with trio.open_nursery() as nursery:
        peer = await start(nursery, reports)
        await opening(peer, task_start_timeout_s=30)
        started = trio.current_time()
        await trio.sleep(20)
        await peer.send("LOG_MESSAGE", {"level": "INFO", "message": "still here"})
        abort = await peer.expect("TASK_ABORT")
        assert trio.current_time() - started == 30
        assert abort.body["reason"] == "MODELLER_TIMEOUT"
        assert "TASK_START" in abort.body["message"]


async def test_modeller_eof_after_accept_aborts_with_modeller_timeout() -> None:
    reports: list[WorkerReport] = []
    async with trio.open_nursery() as nursery:
        peer = await start(nursery, reports)
        await opening(peer)
        await peer.transport._outgoing.aclose()  # the modeller's stream ends
        abort = await peer.expect("TASK_ABORT")
        assert abort.body["reason"] == "MODELLER_TIMEOUT"
    assert reports[0].abort_reason is AbortReason.MODELLER_TIMEOUT


async def test_bad_first_line_writes_nothing_and_ends() -> None:
    reports: list[WorkerReport] = []
    async with trio.open_nursery() as nursery:
        peer = await start(nursery, reports)
        await peer.transport.send_raw(b'{"not": "a message"}\n')
        assert await peer.receive_rest() == []
    assert reports[0].state == "closed"


async def test_bad_line_after_accept_aborts_with_protocol_error() -> None:
    reports: list[WorkerReport] = []
    async with trio.open_nursery() as nursery:
        peer = await start(nursery, reports)
        await opening(peer)
        await peer.transport.send_raw(b"{this is not json\n")
        abort = await peer.expect("TASK_ABORT")
        assert abort.body["reason"] == "PROTOCOL_ERROR"
        assert "$" in abort.body["message"]  # names where the line went wrong


async def test_out_of_order_message_aborts_with_protocol_error() -> None:
    reports: list[WorkerReport] = []
    async with trio.open_nursery() as nursery:
        peer = await start(nursery, reports)
        await opening(peer)
        await peer.send("TASK_COMPLETE")  # before TASK_START: not allowed here
        abort = await peer.expect("TASK_ABORT")
        assert abort.body["reason"] == "PROTOCOL_ERROR"
        assert "TASK_COMPLETE" in abort.body["message"]


async def test_message_of_another_task_is_refused() -> None:
    reports: list[WorkerReport] = []
    async with trio.open_nursery() as nursery:
        peer = await start(nursery, reports)
        await opening(peer)
        stray = peer.message("TASK_START")
        await peer.transport.send_raw(encode(stray).replace(TASK.encode(), b"t-other"))
        abort = await peer.expect("TASK_ABORT")
        assert "t-other" in abort.body["message"]


async def test_unknown_protocol_is_rejected_with_task_setup_error() -> None:
    reports: list[WorkerReport] = []
    async with trio.open_nursery() as nursery:
        peer = await start(nursery, reports)
        body = request_body()
        body["protocol"] = {"class_name": "nope.Unknown"}
        await peer.send("JOB_REQUEST", body)
        reject = await peer.expect("JOB_REJECT")
        assert list(reject.body) == ["TASK_SETUP_ERROR"]
        assert "nope.Unknown" in reject.body["TASK_SETUP_ERROR"][0]
    assert reports[0].state == "rejected"


async def test_cancel_mid_batch_answers_with_cancelled_by_modeller(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reports: list[WorkerReport] = []
    async with trio.open_nursery() as nursery:
        peer = await start(nursery, reports)
        await opening(peer)
        await peer.send("TASK_CANCEL")  # crosses the worker's wait for TASK_START
        abort = await peer.expect("TASK_ABORT")
        assert abort.body["reason"] == "CANCELLED_BY_MODELLER"
        assert await peer.receive_rest() == []  # nothing follows the end


async def test_worker_vet_hook_can_refuse_a_job() -> None:
    from fsm_protocol import RejectReason

    m_end, w_end = memory_transport_pair()
    pod = Pod("a/p", vet=lambda message, job: (RejectReason.UNAUTHORISED, ["unknown modeller"]))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_worker, pod, w_end)
        peer = scripted_modeller(m_end, "a/p", TASK)
        await peer.send("JOB_REQUEST", request_body())
        reject = await peer.expect("JOB_REJECT")
        assert reject.body == {"UNAUTHORISED": ["unknown modeller"]}


def test_items_count_as_delivered_only_once_their_results_go_out(tmp_path: Path) -> None:
    """A result a cancel overtakes never leaves; its items must not be cached as done.

    Found by the thorough property run: the worker used to count the items, and mark
    them processed for ``run_on_new_data_only``, when the batch activity handed the
    message over, so a dropped message still hid its items from the next run.
    """
    bindings = WorkerBindings(Pod("w/p", results_dir=tmp_path), Executor(options={}))
    protocol = EchoProtocol(items=("a", "b"))
    bindings.job = JobRequestBody(protocol={"class_name": "x"}, project_id="proj")
    items = ListDatasource.from_names(protocol.items).items()
    bindings.plan = WorkerPlan(EchoWorker(protocol), items)
    bindings.cache = cache = ItemCache(tmp_path / "cache.sqlite")
    handed_over: list[tuple[str, Any]] = []
    ctx = ActivityContext("w/p", "running_batch", poster=lambda n, d: handed_over.append((n, d)))

    bindings._deliver(ctx, list(bindings.plan.items), ["a", "b"], 0)

    [(event, message)] = handed_over
    assert event == "send:EVALUATION_RESULTS"
    assert bindings.report("aborted").delivered == () and cache.processed("proj") == {}

    bindings.action_note_result(Event(event, message))  # the message went out

    assert bindings.report("complete").delivered == ("a", "b")
    assert sorted(cache.processed("proj")) == ["a", "b"]
    cache.close()
