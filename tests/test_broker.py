"""The broker transport against real ``nats-server`` processes on 127.0.0.1.

Every test starts its own server (or three-node cluster) with a temporary
store, and runs the modeller and its pods in this process over one NATS
connection, on real time with bounded waits (the broker is a real process,
so trio's MockClock cannot stand in for it). Fault tests compare with what
an uninterrupted run keeps: every result exactly once, no message applied
twice, and a trace that ``fsm-protocol check`` passes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio_asyncio
from hypothesis import given
from hypothesis import strategies as st

from fsm_protocol import JobRequestBody, Message, MessageType, Pod, TaskStatus, encode, registry
from fsm_protocol._cli._main import main as cli
from fsm_protocol._net._broker import (
    END_HEADER,
    MSG_ID_HEADER,
    SENDER_HEADER,
    SEQ_HEADER,
    Broker,
    BrokerOptions,
    BrokerStats,
    TaskLayout,
    run_modeller_via_broker,
    serve_offers,
    token,
)
from fsm_protocol._runtime._modeller import ModellerRun
from fsm_protocol._runtime._worker import WorkerReport
from tests.broker_servers import NatsCluster, NatsServer, nats_cluster, nats_server
from tests.net_algorithms import SLOW_ECHO, SlowEcho

__all__ = ["nats_cluster", "nats_server"]  # the fixtures, imported for pytest

PROTOCOLS = registry.with_protocol(SLOW_ECHO)
TEST_TIMEOUT_S = 60


def slow_echo(batches: int, delay_s: float = 0.0) -> SlowEcho:
    return SlowEcho(items=tuple(f"i{n}" for n in range(batches)), batch_size=1, delay_s=delay_s)


def job(protocol: SlowEcho, pods: Sequence[str]) -> JobRequestBody:
    return JobRequestBody(
        protocol={
            "class_name": "test.SlowEcho",
            "items": list(protocol.items),
            "batch_size": protocol.batch_size,
            "delay_s": protocol.delay_s,
        },
        pod_identifiers=tuple(pods),
        batched_execution=True,
    )


@attrs.define
class Task:
    """A modeller and its pods in this process, through one broker connection."""

    servers: tuple[str, ...]
    pods: Sequence[str]
    protocol: SlowEcho
    replicas: int = 1
    reports: dict[str, WorkerReport] = attrs.field(factory=dict)
    worker_traces: dict[str, list[Message]] = attrs.field(factory=dict)
    results_seen: int = 0
    result_arrived: trio.Event = attrs.field(factory=trio.Event)
    stats: BrokerStats | None = None

    def options(self) -> BrokerOptions:
        return BrokerOptions(
            servers=self.servers,
            replicas=self.replicas,
            publish_timeout_s=1.0,
            ack_wait_s=2.0,
            linger_s=10.0,
            connect_for_s=10.0,
        )

    def on_modeller_message(self, key: str, message: Message) -> None:
        if message.type is MessageType.EVALUATION_RESULTS and message.sender == key:
            self.results_seen += 1
            self.result_arrived.set()

    async def results_reach(self, count: int) -> None:
        while self.results_seen < count:
            self.result_arrived = trio.Event()
            await self.result_arrived.wait()

    async def run(self, during: Callable[[Broker], Awaitable[None]] | None = None) -> ModellerRun:
        with trio.fail_after(TEST_TIMEOUT_S):
            async with Broker.connect(self.options()) as broker, trio.open_nursery() as side:
                if during is not None:
                    side.start_soon(during, broker)
                async with trio.open_nursery() as nursery:
                    for pod in self.pods:
                        nursery.start_soon(self.worker, broker, pod)
                    run = await run_modeller_via_broker(
                        broker,
                        task_id="t-b",
                        jobs={pod: job(self.protocol, self.pods) for pod in self.pods},
                        configs=dict.fromkeys(self.pods, self.protocol),
                        on_message=self.on_modeller_message,
                    )
                side.cancel_scope.cancel()
                self.stats = broker.stats()
            return run

    async def worker(self, broker: Broker, pod_id: str) -> None:
        trace = self.worker_traces.setdefault(pod_id, [])
        reports = await serve_offers(
            broker,
            Pod(pod_id, registry=PROTOCOLS),
            on_message=lambda key, message: trace.append(message),
        )
        self.reports[pod_id] = reports[0]


def assert_as_uninterrupted(task: Task, run: ModellerRun, folder: Path) -> None:
    """Every result once, nothing applied twice, and ``fsm-protocol check`` passes."""
    assert run.status is TaskStatus.COMPLETE, run.workers
    batches = len(task.protocol.items)
    assert sorted((key.worker, key.batch) for key in run.results) == sorted(
        (pod, batch) for pod in task.pods for batch in range(batches)
    )
    applied = Counter((m.sender, m.recipient, m.seq) for m in run.trace)
    assert [key for key, n in applied.items() if n > 1] == []
    for pod, trace in task.worker_traces.items():
        seen = Counter((m.sender, m.seq) for m in trace)
        assert [key for key, n in seen.items() if n > 1] == [], pod
    assert {pod: report.state for pod, report in task.reports.items()} == dict.fromkeys(
        task.pods, "complete"
    )
    path = folder / "trace.ndjson"
    path.write_bytes(b"".join(encode(m) for m in run.trace))
    assert cli(["check", str(path)]) == 0


# ----------------------------------------------------------------- layout


@given(st.text(min_size=1, max_size=30), st.text(min_size=1, max_size=30))
def test_names_become_distinct_tokens_with_no_subject_syntax(a: str, b: str) -> None:
    ta, tb = token(a), token(b)
    assert (ta == tb) == (a == b)
    assert not set(ta) & set(".*> \t\r\n/\\")
    assert ta.isascii()


def test_the_layout_names_one_stream_per_task_and_a_subject_per_recipient() -> None:
    layout = TaskLayout("t-42")
    assert layout.stream == "FSMP_t-42"
    assert layout.subject("alice/pod-a") == "fsmp.t-42.alice_2Fpod-a"
    assert layout.msg_id("alice/pod-a", 7) == "t-42:alice/pod-a:7"


# --------------------------------------------------------------- running


async def test_a_task_runs_through_a_local_jetstream_server(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    task = Task((nats_server.url,), ["alice/pod-a", "bob/pod-b", "carol/pod-c"], slow_echo(6))
    run = await task.run()
    assert_as_uninterrupted(task, run, tmp_path)
    # The task's stream is gone; the pods' offers were taken.
    async with Broker.connect(task.options()) as broker:
        assert not await broker.task_exists("t-b")


async def test_a_task_runs_through_a_three_node_cluster(
    nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    task = Task(nats_cluster.urls, ["a/p", "b/p"], slow_echo(5), replicas=3)
    run = await task.run()
    assert_as_uninterrupted(task, run, tmp_path)


# ---------------------------------------------------------------- faults


async def test_the_broker_killed_and_restarted_mid_task(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    task = Task((nats_server.url,), ["a/p", "b/p"], slow_echo(12, 0.05))

    async def crash(broker: Broker) -> None:
        await task.results_reach(4)
        await trio.to_thread.run_sync(nats_server.kill)
        await trio.sleep(0.5)
        await trio.to_thread.run_sync(nats_server.start)

    run = await task.run(crash)
    assert_as_uninterrupted(task, run, tmp_path)
    assert task.results_seen >= 4


async def test_one_node_of_three_killed_mid_task(nats_cluster: NatsCluster, tmp_path: Path) -> None:
    task = Task(nats_cluster.urls, ["a/p", "b/p"], slow_echo(12, 0.05), replicas=3)

    async def crash(broker: Broker) -> None:
        await task.results_reach(4)
        await trio.to_thread.run_sync(nats_cluster.nodes[0].kill)

    run = await task.run(crash)
    print(task.stats)
    assert_as_uninterrupted(task, run, tmp_path)


async def test_duplicates_injected_into_the_stream_are_applied_once(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """Every message is published a second time under another message id, so the
    server stores both; each receiver must drop the repeat by its link number."""
    import nats

    task = Task((nats_server.url,), ["a/p", "b/p"], slow_echo(6, 0.01))
    copies = 0

    async def duplicate(broker: Broker) -> None:
        nonlocal copies
        async with trio_asyncio.open_loop():
            nc = await trio_asyncio.aio_as_trio(nats.connect)(nats_server.url)
            js = nc.jetstream()

            async def again(msg: Any) -> None:
                nonlocal copies
                headers = dict(msg.headers or {})
                if END_HEADER in headers or headers.get("Test-Copy"):
                    return
                headers[MSG_ID_HEADER] = "copy:" + headers[MSG_ID_HEADER]
                headers["Test-Copy"] = "1"
                await js.publish(msg.subject, msg.data, headers=headers)
                copies += 1

            await trio_asyncio.aio_as_trio(nc.subscribe)("fsmp.t-b.>", cb=again)
            try:
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    await trio_asyncio.aio_as_trio(nc.close)()

    run = await task.run(duplicate)
    assert copies > 10
    assert_as_uninterrupted(task, run, tmp_path)


async def test_a_repeated_message_id_is_dropped_by_the_server(nats_server: NatsServer) -> None:
    async with Broker.connect(BrokerOptions(servers=(nats_server.url,))) as broker:
        layout = await broker.create_task("t-d", ["a/p", "modeller"])
        link = broker.transport(layout, me="modeller", peer="a/p")
        message = Message.make(
            MessageType.TASK_START, task_id="t-d", sender="modeller", recipient="a/p", seq=0
        )
        await link.send(message)
        # The same message again, as an outbox resend after a lost confirmation would.
        await broker._publish_on(link._send_link, encode(message), "0")
        await link.confirmed()
        assert broker.stats().duplicates == 1
        assert SEQ_HEADER and SENDER_HEADER  # the headers the receivers order by


async def test_a_bad_line_or_another_senders_message_is_refused_and_acknowledged(
    nats_server: NatsServer,
) -> None:
    from fsm_protocol import DecodeError

    async with Broker.connect(BrokerOptions(servers=(nats_server.url,))) as broker:
        layout = await broker.create_task("t-x", ["a/p", "modeller"])
        to_pod = broker.transport(layout, me="modeller", peer="a/p")
        pod_side = broker.transport(layout, me="a/p", peer="modeller")

        def line(sender: str, seq: int) -> bytes:
            return encode(
                Message.make(
                    MessageType.TASK_START, task_id="t-x", sender=sender, recipient="a/p", seq=seq
                )
            )

        link = to_pod._send_link
        await broker._publish_on(link, b"not json\n", "0")
        await broker._publish_on(link, line("someone-else", 1), "1")
        await to_pod.send(
            Message.make(
                MessageType.TASK_START, task_id="t-x", sender="modeller", recipient="a/p", seq=2
            )
        )
        with trio.fail_after(10):
            with pytest.raises(DecodeError, match="JSON"):
                await pod_side.receive()
            with pytest.raises(DecodeError, match=r"\$\.sender"):
                await pod_side.receive()
            good = await pod_side.receive()
        assert good.seq == 2 and good.sender == "modeller"
        pod_side.applied(good)
        assert pod_side._recv.handed == {}


async def test_a_gap_is_held_until_it_fills_and_messages_come_out_in_order(
    nats_server: NatsServer,
) -> None:
    async with Broker.connect(BrokerOptions(servers=(nats_server.url,))) as broker:
        layout = await broker.create_task("t-g", ["a/p", "modeller"])
        to_pod = broker.transport(layout, me="modeller", peer="a/p")
        pod_side = broker.transport(layout, me="a/p", peer="modeller")
        link = to_pod._send_link

        def line(seq: int) -> bytes:
            return encode(
                Message.make(
                    MessageType.TASK_START,
                    task_id="t-g",
                    sender="modeller",
                    recipient="a/p",
                    seq=seq,
                )
            )

        link.next_seq = 1
        await broker._publish_on(link, line(11), "11")
        link.next_seq = 0
        await broker._publish_on(link, line(10), "10")
        with trio.fail_after(10):
            assert [(await pod_side.receive()).seq for _ in range(2)] == [10, 11]


async def test_an_ack_waits_until_what_the_step_sent_is_confirmed(
    nats_server: NatsServer,
) -> None:
    """The modeller acknowledges a message only once the messages its chart had produced
    by then are confirmed by the broker: a crash in between replays the cause."""
    async with Broker.connect(BrokerOptions(servers=(nats_server.url,))) as broker:
        layout = await broker.create_task("t-a", ["a/p", "modeller"])
        modeller_side = broker.transport(layout, me="modeller", peer="a/p")
        pod_side = broker.transport(layout, me="a/p", peer="modeller")

        def message(type_: MessageType, sender: str, seq: int) -> Message:
            recipient = "a/p" if sender == "modeller" else "modeller"
            return Message.make(type_, task_id="t-a", sender=sender, recipient=recipient, seq=seq)

        async def unacked() -> int:
            await broker._flush_acks()
            await trio_asyncio.aio_as_trio(broker._nc.flush)()
            info = await trio_asyncio.aio_as_trio(broker._js.consumer_info)(
                layout.stream, layout.consumer("modeller")
            )
            return int(info.num_ack_pending)

        await pod_side.send(message(MessageType.PREPARING_DATA, "a/p", 0))
        with trio.fail_after(10):
            received = await modeller_side.receive()
            # The step that applied it produced TASK_START; it is not yet published.
            answer = message(MessageType.TASK_START, "modeller", 5)
            broker.expect_sent("modeller", answer)
            modeller_side.applied(received)
            # Any ack queued by now goes out first, on the same connection as the query.
            assert await unacked() == 1
            await modeller_side.send(answer)
            await modeller_side.confirmed()
            while await unacked():
                await trio.sleep(0.05)
