"""Regression tests for the reference platform's races; ours must not have them.

Each test scripts a worker's exact bytes and timing, so the interleaving that
breaks the platform happens every time here.
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from fsm_protocol import (
    AbortReason,
    EchoProtocol,
    JobRequestBody,
    Pod,
    ResultKey,
    TaskStatus,
    memory_transport_pair,
    registry,
    run_modeller,
    run_worker,
)

from .peers import results_meta, scripted_worker


def job(protocol: EchoProtocol, pods: list[str], *, batched: bool) -> JobRequestBody:
    return JobRequestBody(
        protocol=registry.dump(protocol), pod_identifiers=tuple(pods), batched_execution=batched
    )


async def test_a_task_start_before_acceptance_is_recorded_does_not_hang(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """(a) The platform hangs when a worker's TASK_START overtakes its recorded accept.

    Here the eager worker's whole opening, up to its TASK_START, is already
    queued before the modeller has read a single line, and a second worker is
    still preparing. The modeller must still open the barrier exactly once.
    """
    task_id = "t-race-a"
    protocol = EchoProtocol(items=("x",), batch_size=1)
    (m_fast, w_fast), (m_slow, w_slow) = memory_transport_pair(), memory_transport_pair()
    fast = scripted_worker(w_fast, "fast/p", task_id)
    for type_, body in [
        ("JOB_ACCEPT", {"ACCEPT": "fast/p"}),
        ("PREPARING_DATA", None),
        ("CONFIGURING_TASK", None),
        ("NUMBER_OF_BATCHES", 1),
        ("TASK_START", None),
    ]:
        await fast.send(type_, body)

    async def fast_rest() -> None:
        await fast.expect("JOB_REQUEST")
        await fast.expect("TASK_START")
        await fast.send("EVALUATION_RESULTS", {"items": ["x"]}, results_meta(None))
        await fast.send("BATCHES_COMPLETE", "TASK_COMPLETE")
        await fast.expect("TASK_COMPLETE")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fast_rest)
        nursery.start_soon(run_worker, Pod("slow/p"), w_slow)
        with trio.fail_after(3600):  # a hang would show as Cancelled here, not as a pass
            run = await run_modeller(
                task_id=task_id,
                jobs={
                    p: job(protocol, ["fast/p", "slow/p"], batched=False)
                    for p in ("fast/p", "slow/p")
                },
                configs={"fast/p": protocol, "slow/p": protocol},
                links={"fast/p": m_fast, "slow/p": m_slow},
            )
    assert run.status is TaskStatus.COMPLETE
    starts = [
        m.recipient for m in run.trace if m.sender == "modeller" and m.type.value == "TASK_START"
    ]
    assert sorted(starts) == ["fast/p", "slow/p"]
    assert run.violations == ()


async def test_b_a_burst_of_results_loses_nothing() -> None:
    """(b) The platform drops results when messages arrive quickly.

    After the handshake the worker writes 500 batches of results without ever
    yielding to the scheduler, so they all sit in the modeller's input at once.
    """
    task_id = "t-race-b"
    batches = 500
    protocol = EchoProtocol(items=tuple(f"i{n}" for n in range(batches)), batch_size=1)
    m_end, w_end = memory_transport_pair()
    peer = scripted_worker(w_end, "burst/p", task_id)

    async def burst_worker() -> None:
        await peer.expect("JOB_REQUEST")
        for type_, body in [
            ("JOB_ACCEPT", {"ACCEPT": "burst/p"}),
            ("NUMBER_OF_BATCHES", -1),
            ("CURRENT_BATCH_ID", 0),
            ("TASK_START", None),
        ]:
            await peer.send(type_, body)
        await peer.expect("TASK_START")
        for batch in range(batches):
            if batch:
                w_end._outgoing.send_nowait(_line(peer, "CURRENT_BATCH_ID", batch))
            w_end._outgoing.send_nowait(
                _line(peer, "EVALUATION_RESULTS", {"items": [f"i{batch}"]}, results_meta(batch))
            )
        w_end._outgoing.send_nowait(_line(peer, "BATCHES_COMPLETE", "BATCHES_ONLY"))
        w_end._outgoing.send_nowait(_line(peer, "BATCHES_COMPLETE", "TASK_COMPLETE"))
        await peer.expect("TASK_COMPLETE")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(burst_worker)
        run = await run_modeller(
            task_id=task_id,
            jobs={"burst/p": job(protocol, ["burst/p"], batched=True)},
            configs={"burst/p": protocol},
            links={"burst/p": m_end},
        )
    assert run.status is TaskStatus.COMPLETE
    assert len(run.results) == batches
    assert all(run.results[ResultKey("burst/p", b)] == {"items": [f"i{b}"]} for b in range(batches))


def _line(peer: Any, type_: str, body: Any, meta: Any = None) -> bytes:
    from fsm_protocol import encode

    return encode(peer.message(type_, body, meta))


async def test_c_a_failed_batch_does_not_shift_later_results() -> None:
    """(c) The platform pairs results with batches by arrival position.

    Batch 1 fails and sends nothing; every later result must still be filed
    under the batch id the worker named, and the retried items separately.
    """
    from fsm_protocol import run_task

    items = tuple(f"i{n}" for n in range(8))
    outcome = await run_task(
        EchoProtocol(items=items, batch_size=2, fail_in_batch=("i2",)),
        [Pod("a/p")],
        batched_execution=True,
    )
    assert outcome.results == {
        ResultKey("a/p", 0): {"items": ["i0", "i1"]},
        ResultKey("a/p", 2): {"items": ["i4", "i5"]},
        ResultKey("a/p", 3): {"items": ["i6", "i7"]},
        ResultKey("a/p", None, 0): {"items": ["i2"]},
        ResultKey("a/p", None, 1): {"items": ["i3"]},
    }


async def test_c_results_are_filed_by_meta_even_when_out_of_step() -> None:
    """A worker whose results name the wrong batch is refused, not misfiled."""
    task_id = "t-race-c"
    protocol = EchoProtocol(items=("a", "b"), batch_size=1)
    m_end, w_end = memory_transport_pair()
    peer = scripted_worker(w_end, "odd/p", task_id)

    async def worker() -> None:
        await peer.expect("JOB_REQUEST")
        for type_, body in [
            ("JOB_ACCEPT", {"ACCEPT": "odd/p"}),
            ("NUMBER_OF_BATCHES", -1),
            ("CURRENT_BATCH_ID", 0),
            ("TASK_START", None),
        ]:
            await peer.send(type_, body)
        await peer.expect("TASK_START")
        await peer.send("EVALUATION_RESULTS", {"items": ["b"]}, results_meta(1))  # claims batch 1
        # Treated as this worker's abort: the modeller ends its side and closes.
        assert await peer.receive_rest() == []

    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker)
        run = await run_modeller(
            task_id=task_id,
            jobs={"odd/p": job(protocol, ["odd/p"], batched=True)},
            configs={"odd/p": protocol},
            links={"odd/p": m_end},
        )
    assert run.results == {}
    assert run.workers["odd/p"].state == "lost"
    (violation,) = run.violations
    assert "recv:EVALUATION_RESULTS" in violation.message and violation.state == "running_batch"


async def test_d_results_received_before_an_abort_are_kept() -> None:
    """(d) The platform loses every result already received when a worker aborts."""
    from fsm_protocol import UsageLimit, run_task

    items = tuple(f"i{n}" for n in range(10))
    outcome = await run_task(
        EchoProtocol(items=items, batch_size=2, inference_limit=UsageLimit(limit=5)),
        [Pod("a/p"), Pod("b/p")],
        batched_execution=True,
        overrides={"b/p": {"inference_limit": None}},
    )
    assert outcome.status is TaskStatus.ABORTED
    assert outcome.abort_reasons["a/p"] is AbortReason.LIMITS_EXCEEDED
    assert outcome.abort_reasons["b/p"] is AbortReason.CANCELLED_BY_MODELLER
    kept = outcome.results_for("a/p")
    assert kept == {
        ResultKey("a/p", 0): {"items": ["i0", "i1"]},
        ResultKey("a/p", 1): {"items": ["i2", "i3"]},
        ResultKey("a/p", 2): {"items": ["i4"]},  # truncated at the limit
    }
    # The other worker's results from before the cancel are kept too.
    assert ResultKey("b/p", 0) in outcome.results
