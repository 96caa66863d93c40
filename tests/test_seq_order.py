"""Multi-pod tasks over every transport meet the strict reading of the wire order.

Spec section 2: each sender's ``seq`` goes up by exactly 1 with every message
it writes, whoever receives it, and a trace checker checks the exact +1. The
modeller of a task with several pods is where this can break (one counter, one
conversation per pod). Hypothesis draws tasks of 2 to 4 Echo pods (items,
batch sizes, failing items, initial setup, a pod that refuses its job) and
each runs over the in-memory transport, over one shared stdout and stdin
(``fsm-protocol modeller --stdio``), and over TCP on loopback. Every trace
is checked by the strict :class:`TraceChecker`:

* the modeller's own record of the task (``ModellerRun.trace``), on every
  transport;
* over stdio, also the lines as a harness sees them: the modeller's in the
  order they came out of stdout, the pods' in the order they were written to
  stdin. This is the order another team's checker sees.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import attrs
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fsm_protocol import (
    EchoProtocol,
    JobRequestBody,
    Message,
    MessageType,
    Pod,
    TransportError,
    decode,
    encode,
    memory_transport_pair,
    registry,
    run_modeller,
    run_worker,
)
from fsm_protocol._check._checker import TraceChecker
from fsm_protocol._cli._stdio_cli import run_modeller_stdio_task
from fsm_protocol._net._tcp import PodListener, connect
from fsm_protocol._wire._messages import ScenarioBody

TASK_ID = "t-seq"
LOCAL = "127.0.0.1"


@attrs.frozen
class PodPlan:
    pod_id: str
    echo: EchoProtocol
    refuses: bool  # its job names batch size 0: it answers with JOB_REJECT


@attrs.frozen
class TaskPlan:
    pods: tuple[PodPlan, ...]
    batched: bool
    pauses: tuple[int, ...] = ()  # scheduler rounds each stdout write takes, in turn

    def job(self, pod: PodPlan) -> JobRequestBody:
        protocol = registry.dump(pod.echo)
        if pod.refuses:
            protocol = {**protocol, "batch_size": 0}
        return JobRequestBody(
            protocol=protocol,
            pod_identifiers=tuple(p.pod_id for p in self.pods),
            batched_execution=self.batched,
        )


@st.composite
def pod_plans(draw: st.DrawFn, pod_id: str) -> PodPlan:
    items = tuple(f"i{n}" for n in range(draw(st.integers(0, 5))))
    failing = st.lists(st.sampled_from(items), unique=True) if items else st.just([])
    return PodPlan(
        pod_id,
        EchoProtocol(
            items=items,
            batch_size=draw(st.integers(1, 3)),
            fail_in_batch=tuple(draw(failing)),
            fail_alone=tuple(draw(failing)),
            initial_setup=draw(st.booleans()),
        ),
        refuses=draw(st.integers(0, 5)) == 0,
    )


@st.composite
def task_plans(draw: st.DrawFn) -> TaskPlan:
    count = draw(st.integers(2, 4))
    pods = tuple(draw(pod_plans(f"pod-{n}")) for n in range(count))
    pauses = draw(st.lists(st.integers(0, 3), max_size=40))
    return TaskPlan(pods, batched=draw(st.booleans()), pauses=tuple(pauses))


def strict(lines: Sequence[Message | bytes]) -> None:
    """The trace passes the strict checker, the modeller's seq in the order given."""
    checker = TraceChecker()
    checker.feed_lines(line if isinstance(line, bytes) else encode(line) for line in lines)
    result = checker.finish()
    assert result.ok, result.finding
    modeller = [decode(line) if isinstance(line, bytes) else line for line in lines]
    seqs = [m.seq for m in modeller if m.sender == "modeller"]
    assert seqs == list(range(len(seqs)))


async def _serve(pod: PodPlan, transport: Any) -> None:
    await run_worker(Pod(pod.pod_id), transport)


async def run_in_memory(plan: TaskPlan) -> tuple[Message, ...]:
    links: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        for pod in plan.pods:
            links[pod.pod_id], end = memory_transport_pair()
            nursery.start_soon(_serve, pod, end)
        run = await run_modeller(
            task_id=TASK_ID,
            jobs={p.pod_id: plan.job(p) for p in plan.pods},
            configs={p.pod_id: p.echo for p in plan.pods},
            links=links,
        )
    return run.trace


async def run_over_tcp(plan: TaskPlan) -> tuple[Message, ...]:
    ids = [pod.pod_id for pod in plan.pods]
    listener = await PodListener.open(LOCAL, 0, pods=ids)
    try:
        async with trio.open_nursery() as nursery:

            async def dial(pod: PodPlan) -> None:
                transport = await connect(LOCAL, listener.port, pod_id=pod.pod_id)
                try:
                    await run_worker(Pod(pod.pod_id), transport)
                finally:
                    await transport.aclose()

            for pod in plan.pods:
                nursery.start_soon(dial, pod)
            links = await listener.wait_for_pods(10)
            run = await run_modeller(
                task_id=TASK_ID,
                jobs={p.pod_id: plan.job(p) for p in plan.pods},
                configs={p.pod_id: p.echo for p in plan.pods},
                links=dict(links),
            )
    finally:
        await listener.aclose()
    return run.trace


async def run_over_stdio(plan: TaskPlan) -> tuple[tuple[Message, ...], list[bytes]]:
    """The stdio modeller with our pods behind a harness; its trace and the harness's."""
    stdin_send, stdin_receive = trio.testing.memory_stream_one_way_pair()
    stdout_send, stdout_receive = trio.testing.memory_stream_one_way_pair()
    pauses = iter(plan.pauses)
    pump = stdout_send.send_all_hook
    assert pump is not None

    async def slow_pipe() -> None:
        # A pipe that is sometimes full: the write takes a few scheduler rounds.
        for _ in range(next(pauses, 0)):
            await trio.lowlevel.checkpoint()
        await pump()

    stdout_send.send_all_hook = slow_pipe
    seen: list[bytes] = []
    lock = trio.Lock()
    control = Message.make(
        MessageType.CONFORMANCE_SCENARIO,
        task_id=TASK_ID,
        sender="harness",
        recipient="modeller",
        seq=0,
        body=ScenarioBody(
            pods=tuple(p.pod_id for p in plan.pods),
            job=plan.job(plan.pods[0]),
            response_timeout_s=300,
            require_all_pods=False,
            job_overrides={
                p.pod_id: dict(plan.job(p).protocol)
                for p in plan.pods
                if plan.job(p).protocol != plan.job(plan.pods[0]).protocol
            },
        ),
    )

    async def write(line: bytes) -> None:
        async with lock:
            seen.append(line)
            await stdin_send.send_all(line)

    ends: dict[str, Any] = {}

    async def pod_side(pod: PodPlan, harness_end: Any, worker_end: Any) -> None:
        async with trio.open_nursery() as nursery:

            async def forward() -> None:
                while True:
                    try:
                        message = await harness_end.receive()
                    except trio.EndOfChannel:
                        return
                    await write(encode(message))

            nursery.start_soon(forward)
            await run_worker(Pod(pod.pod_id), worker_end)
            await worker_end.aclose()

    async def read_stdout() -> None:
        buffer = b""
        while True:
            chunk = await stdout_receive.receive_some(65536)
            if not chunk:
                return
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for raw in lines:
                line = raw + b"\n"
                seen.append(line)
                message = decode(line)
                with contextlib.suppress(TransportError):  # that pod has ended already
                    await ends[message.recipient].send(message)

    async with trio.open_nursery() as nursery:
        await stdin_send.send_all(encode(control))
        for pod in plan.pods:
            ends[pod.pod_id], worker_end = memory_transport_pair()
            nursery.start_soon(pod_side, pod, ends[pod.pod_id], worker_end)
        nursery.start_soon(read_stdout)
        run = await run_modeller_stdio_task(stdin_receive, stdout_send)
        await stdout_send.aclose()
        await stdin_send.aclose()
    return run.trace, seen


T = TypeVar("T")

RUN_BOUND_S = 120
"""A run takes well under a second: past this bound it fails (with a traceback of where it
waited) instead of holding up the suite. One full-suite run once waited here for minutes."""


def run_bounded(run: Callable[[TaskPlan], Awaitable[T]], plan: TaskPlan) -> T:
    async def bounded() -> T:
        with trio.fail_after(RUN_BOUND_S):
            return await run(plan)

    return trio.run(bounded)


SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(task_plans())
def test_in_memory_multi_pod_traces_pass_the_strict_checker(plan: TaskPlan) -> None:
    strict(run_bounded(run_in_memory, plan))


@SETTINGS
@given(task_plans())
def test_stdio_multi_pod_traces_pass_the_strict_checker(plan: TaskPlan) -> None:
    trace, seen = run_bounded(run_over_stdio, plan)
    strict(trace)
    strict(seen)


@SETTINGS
@given(task_plans())
def test_tcp_multi_pod_traces_pass_the_strict_checker(plan: TaskPlan) -> None:
    strict(run_bounded(run_over_tcp, plan))


def test_a_stdio_modeller_writes_its_seq_in_order_with_four_pods() -> None:
    """Four pods in lockstep send at once on one stdout: the lines still come out 0, 1, 2, ..."""
    plan = TaskPlan(
        tuple(
            PodPlan(f"pod-{n}", EchoProtocol(items=("a", "b", "c"), batch_size=1), refuses=False)
            for n in range(4)
        ),
        batched=True,
    )
    _, seen = run_bounded(run_over_stdio, plan)
    strict(seen)
    assert len([line for line in seen if decode(line).sender == "modeller"]) >= 12


@pytest.mark.parametrize("refuses", [False, True])
def test_every_pod_is_answered_over_stdio(refuses: bool) -> None:
    plan = TaskPlan(
        (
            PodPlan("pod-0", EchoProtocol(items=("a",)), refuses=False),
            PodPlan("pod-1", EchoProtocol(items=("b",)), refuses=refuses),
        ),
        batched=False,
    )
    trace, _ = run_bounded(run_over_stdio, plan)
    kinds = {(m.recipient, m.type) for m in trace if m.sender == "modeller"}
    assert ("pod-0", MessageType.TASK_COMPLETE) in kinds
    assert (("pod-1", MessageType.TASK_COMPLETE) in kinds) is not refuses
