"""The TCP transport: framing and limits, the hello, TLS, and faults over loopback.

Framing and limits run over trio's in-memory streams under the MockClock.
Everything that needs a real socket uses 127.0.0.1 and real time, with short
timeouts, since the MockClock would jump ahead while the kernel moves bytes.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
import trustme

from fsm_protocol import (
    AbortReason,
    BrokenTransportError,
    DecodeError,
    EchoProtocol,
    Item,
    JobRequestBody,
    Message,
    MessageType,
    Pod,
    ProtocolFactory,
    ResultKey,
    TaskStatus,
    WorkerPlan,
    WorkerReport,
    encode,
    registry,
    run_modeller,
    run_worker,
)
from fsm_protocol._net._tcp import (
    HandshakeError,
    Limits,
    PodListener,
    TcpTransport,
    client_ssl_context,
    connect,
    hello_line,
    parse_hello,
    server_ssl_context,
)
from fsm_protocol._runtime._modeller import ModellerRun

LOCAL = "127.0.0.1"


def message(type_: str, body: Any = None, *, sender: str = "modeller", seq: int = 0) -> Message:
    recipient = "modeller" if sender != "modeller" else "a/p"
    return Message.make(
        MessageType(type_), task_id="t-1", sender=sender, recipient=recipient, seq=seq, body=body
    )


def pair(**kwargs: Any) -> tuple[trio.abc.Stream, TcpTransport]:
    """A raw stream for the test, and a transport reading from the other end."""
    raw, end = trio.testing.memory_stream_pair()
    return raw, TcpTransport(end, peer="the test peer", **kwargs)


# -------------------------------------------------------------- framing


async def test_lines_split_and_joined_arbitrarily_are_framed() -> None:
    raw, transport = pair()
    first, second = encode(message("TASK_START")), encode(message("TASK_COMPLETE", seq=1))
    data = first + second
    await raw.send_all(data[:5])
    await raw.send_all(data[5 : len(first) + 3])
    await raw.send_all(data[len(first) + 3 :])
    assert (await transport.receive()).type is MessageType.TASK_START
    assert (await transport.receive()).type is MessageType.TASK_COMPLETE
    await raw.aclose()
    with pytest.raises(trio.EndOfChannel):
        await transport.receive()


async def test_a_bad_line_is_refused_and_reading_stops() -> None:
    raw, transport = pair()
    await raw.send_all(b"{not json\n" + encode(message("TASK_START")))
    with pytest.raises(DecodeError, match="expected JSON"):
        await transport.receive()
    with pytest.raises(BrokenTransportError, match="stopped after a malformed line"):
        await transport.receive()
    # Without close_on_bad_frame the worker can still write its TASK_ABORT.
    await transport.send(message("LOG_MESSAGE", {"level": "info", "message": "bye"}))


async def test_a_bad_line_closes_the_connection_on_the_modeller_side() -> None:
    raw, transport = pair(close_on_bad_frame=True)
    await raw.send_all(b'{"v": 1}\n')
    with pytest.raises(DecodeError, match="field"):
        await transport.receive()
    assert await raw.receive_some() == b""  # the peer sees the end at once
    with pytest.raises(BrokenTransportError):
        await transport.send(message("TASK_CANCEL"))


async def test_a_line_over_the_limit_is_refused_before_it_ends() -> None:
    raw, transport = pair(limits=Limits(max_line_bytes=1024), close_on_bad_frame=True)
    await raw.send_all(b"x" * 5000)  # no newline: must not wait for one
    with pytest.raises(DecodeError, match="at most 1024 bytes"):
        await transport.receive()
    assert transport.failure is not None and "1024" in transport.failure


async def test_a_line_cut_by_the_end_of_the_stream_is_a_broken_connection() -> None:
    raw, transport = pair()
    await raw.send_all(b'{"v": 1, "ty')
    await raw.aclose()
    with pytest.raises(BrokenTransportError, match="in the middle of a line"):
        await transport.receive()


async def test_a_message_from_another_sender_is_refused() -> None:
    raw, transport = pair(expect_sender="a/p", close_on_bad_frame=True)
    await raw.send_all(encode(message("JOB_ACCEPT", {"ACCEPT": "b/p"}, sender="b/p")))
    with pytest.raises(DecodeError, match=r"\$\.sender: expected 'a/p'.*found 'b/p'"):
        await transport.receive()


async def test_fast_peers_are_slowed_to_the_message_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    raw, transport = pair(limits=Limits(max_messages_per_second=100, burst=10))
    line = encode(message("LOG_MESSAGE", {"level": "info", "message": "x"}))
    await raw.send_all(line * 60)
    start = trio.current_time()
    for _ in range(60):
        await transport.receive()
    # 10 at once, then 50 more at 100 per second.
    assert trio.current_time() - start == pytest.approx(0.5)


async def test_waiting_for_the_first_message_is_bounded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    _raw, transport = pair(first_message_timeout_s=30)
    with pytest.raises(BrokenTransportError, match="no complete line for 30 s"):
        await transport.receive()
    assert trio.current_time() == 30


async def test_a_peer_that_reads_nothing_fails_the_send(
    autojump_clock: trio.testing.MockClock,
) -> None:
    _raw, end = trio.testing.lockstep_stream_pair()  # a send waits for the reader
    transport = TcpTransport(end, peer="a stuck modeller", limits=Limits(send_timeout_s=60))
    with pytest.raises(BrokenTransportError, match="read nothing for 60 s"):
        await transport.send(message("TASK_START", sender="a/p"))
    assert trio.current_time() == 60


def test_hello_lines_are_checked() -> None:
    assert parse_hello(hello_line("alice/pod-a")) == "alice/pod-a"
    with pytest.raises(HandshakeError, match="expected a hello line first"):
        parse_hello(encode(message("JOB_ACCEPT", {"ACCEPT": "a/p"}, sender="a/p")))
    with pytest.raises(HandshakeError, match="version 2"):
        parse_hello(b'{"hello": "fsm-protocol", "v": 2, "pod_id": "a"}\n')
    with pytest.raises(HandshakeError, match="pod_id"):
        parse_hello(b'{"hello": "fsm-protocol", "v": 1, "pod_id": ""}\n')


# ------------------------------------------------------------------ TLS


@attrs.frozen
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    authority: trustme.CA
    folder: Path

    def client(self, common_name: str) -> tuple[Path, Path]:
        """A client certificate (and key) whose common name is ``common_name``."""
        stem = common_name.replace("/", "-")
        leaf = self.authority.issue_cert(f"{stem}.pods.invalid", common_name=common_name)
        cert, key = self.folder / f"{stem}.pem", self.folder / f"{stem}.key"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        return cert, key


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    folder = tmp_path_factory.mktemp("certs")
    authority = trustme.CA()
    server = authority.issue_cert(LOCAL)
    authority.cert_pem.write_to_path(str(folder / "ca.pem"))
    server.cert_chain_pems[0].write_to_path(str(folder / "server.pem"))
    server.private_key_pem.write_to_path(str(folder / "server.key"))
    return Certs(folder / "ca.pem", folder / "server.pem", folder / "server.key", authority, folder)


# --------------------------------------------------- running over loopback


def job(protocol: Any, pods: Sequence[str], *, batched: bool = True, **options: Any) -> Any:
    return JobRequestBody(
        protocol=DUMP.dump(protocol),
        pod_identifiers=tuple(pods),
        batched_execution=batched,
        options=dict(options),
    )


@attrs.define
class Remote:
    """A modeller and in-process workers that talk over real TCP (and maybe TLS)."""

    server_context: ssl.SSLContext | None = None
    client_context: ssl.SSLContext | None = None
    limits: Limits = attrs.field(factory=lambda: Limits(handshake_timeout_s=5))
    reports: dict[str, WorkerReport] = attrs.field(factory=dict)
    failures: dict[str, str | None] = attrs.field(factory=dict)
    transports: dict[str, TcpTransport] = attrs.field(factory=dict)
    scopes: dict[str, trio.CancelScope] = attrs.field(factory=dict)

    async def worker(self, port: int, pod: Pod, **kwargs: Any) -> None:
        transport = await connect(
            LOCAL, port, pod_id=pod.pod_id, ssl_context=self.client_context, **kwargs
        )
        self.transports[pod.pod_id] = transport
        try:
            with self.scopes.setdefault(pod.pod_id, trio.CancelScope()):
                self.reports[pod.pod_id] = await run_worker(pod, transport)
        finally:
            await transport.aclose()
            self.failures[pod.pod_id] = transport.failure

    async def run(
        self,
        protocol: Any,
        pods: Sequence[Pod],
        *,
        extra: Callable[[trio.Nursery, int], Awaitable[None]] | None = None,
        extra_pods: Sequence[str] = (),
    ) -> ModellerRun:
        ids = [pod.pod_id for pod in pods] + list(extra_pods)
        listener = await PodListener.open(
            LOCAL, 0, pods=ids, ssl_context=self.server_context, limits=self.limits
        )
        async with trio.open_nursery() as nursery:
            for pod in pods:
                nursery.start_soon(self.worker, listener.port, pod)
            if extra is not None:
                await extra(nursery, listener.port)
            links = await listener.wait_for_pods(5)
            assert sorted(links) == sorted(ids)
            run = await run_modeller(
                task_id="t-1",
                jobs={p: job(protocol, ids) for p in ids},
                configs={p: protocol for p in ids},
                links=links,
            )
        return run


def echo(n: int = 6, batch_size: int = 2) -> EchoProtocol:
    return EchoProtocol(items=tuple(f"i{k}" for k in range(n)), batch_size=batch_size)


async def test_a_task_completes_over_tls(certs: Certs) -> None:
    remote = Remote(
        server_ssl_context(certs.server_cert, certs.server_key),
        client_ssl_context(ca=certs.ca),
    )
    run = await remote.run(echo(), [Pod("a/p"), Pod("b/p")])
    assert run.status is TaskStatus.COMPLETE
    assert len(run.results) == 6
    assert {r.state for r in remote.reports.values()} == {"complete"}


async def test_mutual_tls_admits_the_pod_its_certificate_names(certs: Certs) -> None:
    cert, key = certs.client("a/p")
    remote = Remote(
        server_ssl_context(certs.server_cert, certs.server_key, client_ca=certs.ca),
        client_ssl_context(ca=certs.ca, cert=cert, key=key),
    )
    run = await remote.run(echo(), [Pod("a/p")])
    assert run.status is TaskStatus.COMPLETE


async def test_mutual_tls_refuses_a_certificate_for_another_pod(certs: Certs) -> None:
    cert, key = certs.client("mallory/p")
    listener = await PodListener.open(
        LOCAL,
        0,
        pods=["a/p"],
        ssl_context=server_ssl_context(certs.server_cert, certs.server_key, client_ca=certs.ca),
    )
    client = client_ssl_context(ca=certs.ca, cert=cert, key=key)
    without = client_ssl_context(ca=certs.ca)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(listener.wait_for_pods, 5)
        with pytest.raises(HandshakeError, match=r"issued to 'mallory/p'.*not to pod 'a/p'"):
            await connect(LOCAL, listener.port, pod_id="a/p", ssl_context=client)
        with pytest.raises(HandshakeError, match="client certificate"):
            await connect(LOCAL, listener.port, pod_id="a/p", ssl_context=without)
        nursery.cancel_scope.cancel()
    await listener.aclose()


async def test_a_worker_refuses_a_modeller_its_ca_did_not_sign(
    certs: Certs, tmp_path: Path
) -> None:
    other = trustme.CA()
    other.cert_pem.write_to_path(str(tmp_path / "other.pem"))
    listener = await PodListener.open(
        LOCAL, 0, pods=["a/p"], ssl_context=server_ssl_context(certs.server_cert, certs.server_key)
    )
    client = client_ssl_context(ca=tmp_path / "other.pem")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(listener.wait_for_pods, 5)
        with pytest.raises(HandshakeError, match="CERTIFICATE_VERIFY_FAILED"):
            await connect(LOCAL, listener.port, pod_id="a/p", ssl_context=client)
        nursery.cancel_scope.cancel()
    await listener.aclose()


async def test_the_hello_refuses_strangers_and_duplicates() -> None:
    listener = await PodListener.open(LOCAL, 0, pods=["a/p", "b/p"])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(listener.wait_for_pods, 5)
        first = await connect(LOCAL, listener.port, pod_id="a/p")
        with pytest.raises(HandshakeError, match="'a/p' is already connected"):
            await connect(LOCAL, listener.port, pod_id="a/p")
        with pytest.raises(HandshakeError, match="'z/p' is not part of this task"):
            await connect(LOCAL, listener.port, pod_id="z/p")
        raw = await trio.open_tcp_stream(LOCAL, listener.port)
        await raw.send_all(b"GET / HTTP/1.1\r\n\r\n")
        reply = await raw.receive_some()
        assert b'"refused":"expected a hello line first' in reply
        await raw.aclose()
        nursery.cancel_scope.cancel()
    await first.aclose()
    await listener.aclose()


async def test_silent_connections_delay_but_do_not_block_the_pods() -> None:
    limits = Limits(max_pending_handshakes=1, handshake_timeout_s=0.5)
    listener = await PodListener.open(LOCAL, 0, pods=["a/p"], limits=limits)
    silent = await trio.open_tcp_stream(LOCAL, listener.port)  # takes the one slot, says nothing
    async with trio.open_nursery() as nursery:
        nursery.start_soon(listener.wait_for_pods, 5)
        start = trio.current_time()
        worker = await connect(LOCAL, listener.port, pod_id="a/p")
        assert 0.4 < trio.current_time() - start < 3  # admitted once the silent one timed out
        assert await silent.receive_some() == b""  # closed without a word
    await worker.aclose()
    await silent.aclose()
    await listener.aclose()


async def test_unreachable_modeller_is_a_clear_error() -> None:
    listener = await PodListener.open(LOCAL, 0, pods=["a/p"])
    port = listener.port
    await listener.aclose()
    with pytest.raises(BrokenTransportError, match=f"cannot connect to the modeller at {LOCAL}"):
        await connect(LOCAL, port, pod_id="a/p", retry_for_s=0.3)


# ----------------------------------------------------------------- faults


@attrs.frozen
class Gated:
    """A protocol whose worker stops after ``pass_batches`` batches until released."""

    items: tuple[str, ...] = ("x0", "x1", "x2", "x3", "x4", "x5")
    pass_batches: int = 2


class GatedWorker:
    def __init__(self, config: Gated, reached: trio.Event) -> None:
        self.config = config
        self.reached = reached

    async def run_batch(self, items: Sequence[Item], info: Any) -> list[str]:
        if info.batch_id is not None and info.batch_id >= self.config.pass_batches:
            self.reached.set()
            await trio.sleep_forever()
        return [item.name for item in items]


DUMP = registry.with_protocol(ProtocolFactory("test.Gated", Gated, lambda c, ctx: None))  # type: ignore[arg-type,return-value]


def gated_pod(pod_id: str, reached: trio.Event) -> Pod:
    factory = ProtocolFactory(
        "test.Gated",
        Gated,
        lambda config, ctx: WorkerPlan(
            GatedWorker(config, reached), [Item(n) for n in config.items], 1
        ),
    )
    return Pod(pod_id, registry=registry.with_protocol(factory))


async def test_a_worker_whose_connection_drops_ends_lost_and_its_results_are_kept() -> None:
    events = {pod: trio.Event() for pod in ("a/p", "b/p", "c/p")}
    pods = [gated_pod(pod, event) for pod, event in events.items()]
    remote = Remote()

    async def crash_b_when_all_are_busy(nursery: trio.Nursery, port: int) -> None:
        async def crash() -> None:
            for event in events.values():
                await event.wait()
            remote.scopes["b/p"].cancel()  # the worker dies; its socket is closed under it

        nursery.start_soon(crash)

    run = await remote.run(Gated(), pods, extra=crash_b_when_all_are_busy)
    assert run.status is TaskStatus.ABORTED
    assert run.workers["b/p"].state == "lost"
    assert "connection" in run.workers["b/p"].problem
    for other in ("a/p", "c/p"):
        assert run.workers[other].state == "aborted"
        assert run.workers[other].abort_reason is AbortReason.CANCELLED_BY_MODELLER
        assert remote.reports[other].abort_reason is AbortReason.CANCELLED_BY_MODELLER
    # Every result received before the drop is kept, the lost worker's too.
    assert set(run.results) == {ResultKey(p, b) for p in events for b in (0, 1)}


async def scripted(port: int, pod_id: str) -> TcpTransport:
    """A hand-driven worker: hello done, nothing else."""
    return await connect(LOCAL, port, pod_id=pod_id, retry_for_s=1)


async def test_a_malformed_frame_mid_task_loses_that_worker_and_closes_its_connection() -> None:
    seen: dict[str, Any] = {}

    async def bad_worker(nursery: trio.Nursery, port: int) -> None:
        async def play() -> None:
            transport = await scripted(port, "bad/p")
            request = await transport.receive()
            assert request.type is MessageType.JOB_REQUEST
            accept = Message.make(
                MessageType.JOB_ACCEPT,
                task_id="t-1",
                sender="bad/p",
                recipient="modeller",
                seq=0,
                body={"ACCEPT": "bad/p"},
            )
            await transport.send(accept)
            await transport.send_line(b'{"v": 1, "type": "TASK_START", "oops"\n')
            try:
                seen["after"] = await transport.receive()
            except (trio.EndOfChannel, BrokenTransportError) as exc:
                seen["after"] = exc
            await transport.aclose()

        nursery.start_soon(play)

    remote = Remote()
    run = await remote.run(echo(), [Pod("a/p"), Pod("b/p")], extra=bad_worker, extra_pods=["bad/p"])
    assert run.workers["bad/p"].state == "lost"
    assert "protocol error: field $: expected JSON" in run.workers["bad/p"].problem
    assert isinstance(seen["after"], (trio.EndOfChannel, BrokenTransportError))  # closed on it
    # An abort after acceptance cancels the others that accepted (spec section 4); a pod
    # that had not answered yet is owed nothing once every other worker has ended, and
    # its worker ends through the end of its connection.
    for pod in ("a/p", "b/p"):
        if run.workers[pod].state == "aborted":
            assert remote.reports[pod].abort_reason is AbortReason.CANCELLED_BY_MODELLER
        else:
            assert run.workers[pod].state == "unanswered"
            assert remote.reports[pod].abort_reason is AbortReason.MODELLER_TIMEOUT


async def test_a_malformed_frame_before_answering_leaves_the_others_running() -> None:
    async def bad_worker(nursery: trio.Nursery, port: int) -> None:
        async def play() -> None:
            transport = await scripted(port, "bad/p")
            await transport.receive()
            await transport.send_line(b"\xff\xfe garbage\n")
            with pytest.raises((trio.EndOfChannel, BrokenTransportError)):
                await transport.receive()
            await transport.aclose()

        nursery.start_soon(play)

    remote = Remote()
    run = await remote.run(echo(), [Pod("a/p"), Pod("b/p")], extra=bad_worker, extra_pods=["bad/p"])
    assert run.status is TaskStatus.COMPLETE
    assert run.workers["bad/p"].state == "lost"
    assert "expected UTF-8" in run.workers["bad/p"].problem
    assert len(run.results) == 6


async def test_a_line_over_the_limit_is_refused_and_its_connection_closed() -> None:
    async def bad_worker(nursery: trio.Nursery, port: int) -> None:
        async def play() -> None:
            transport = await scripted(port, "big/p")
            await transport.receive()
            with pytest.raises(BrokenTransportError):
                for _ in range(64):  # the modeller closes long before the line ends
                    await transport.send_line(b"x" * 1024)
                    await trio.sleep(0.01)
            await transport.aclose()

        nursery.start_soon(play)

    remote = Remote(limits=Limits(max_line_bytes=4096, handshake_timeout_s=5))
    run = await remote.run(echo(), [Pod("a/p")], extra=bad_worker, extra_pods=["big/p"])
    assert run.status is TaskStatus.COMPLETE
    assert "at most 4096 bytes" in run.workers["big/p"].problem


# ------------------------------------------------------ a vanished modeller


async def silent_modeller(
    pods: Sequence[str],
    protocol: Any,
    *,
    answer_start: bool,
    batched: bool = False,
    **options: float,
) -> tuple[dict[str, WorkerReport], dict[str, list[str]], float]:
    """Send each pod its job, then stop answering (but keep the connections open)."""
    listener = await PodListener.open(LOCAL, 0, pods=pods)
    remote = Remote()
    heard: dict[str, list[str]] = {pod: [] for pod in pods}
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for pod in pods:
            nursery.start_soon(remote.worker, listener.port, Pod(pod))
        links = await listener.wait_for_pods(5)
        for pod, link in links.items():
            request = Message.make(
                MessageType.JOB_REQUEST,
                task_id="t-1",
                sender="modeller",
                recipient=pod,
                seq=0,
                body=job(protocol, pods, batched=batched, **options),
            )
            await link.send(request)

        async def listen(pod: str, link: TcpTransport) -> None:
            seq = 1
            while True:
                try:
                    received = await link.receive()
                except (trio.EndOfChannel, BrokenTransportError):
                    return
                heard[pod].append(received.type.value)
                if received.type is MessageType.TASK_START and answer_start:
                    await link.send(message("TASK_START", seq=seq))
                    seq += 1

        async with trio.open_nursery() as listeners:
            for pod, link in links.items():
                listeners.start_soon(listen, pod, link)
        for link in links.values():
            await link.aclose()
    return remote.reports, heard, trio.current_time() - start


async def test_workers_of_a_silent_modeller_end_through_the_task_start_timeout() -> None:
    reports, heard, elapsed = await silent_modeller(
        ["a/p", "b/p"], echo(), answer_start=False, task_start_timeout_s=0.5
    )
    for pod, report in reports.items():
        assert report.state == "aborted"
        assert report.abort_reason is AbortReason.MODELLER_TIMEOUT
        assert "TASK_START" in report.abort_message
        assert heard[pod][-1] == "TASK_ABORT"
    assert elapsed < 5


async def test_workers_of_a_silent_modeller_end_through_the_online_check() -> None:
    reports, heard, elapsed = await silent_modeller(
        ["a/p", "b/p"], echo(), answer_start=True, soft_timeout_s=0.3, hard_timeout_s=0.3
    )
    for pod, report in reports.items():
        assert report.state == "aborted"
        assert report.abort_reason is AbortReason.MODELLER_TIMEOUT
        assert "ONLINE_CHECK" in report.abort_message
        assert heard[pod][-3:] == ["BATCHES_COMPLETE", "ONLINE_CHECK", "TASK_ABORT"]
    assert elapsed < 5


async def test_a_worker_answers_a_malformed_line_with_its_abort_then_closes() -> None:
    listener = await PodListener.open(LOCAL, 0, pods=["a/p"])
    remote = Remote()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(remote.worker, listener.port, Pod("a/p"))
        link = (await listener.wait_for_pods(5))["a/p"]
        request = Message.make(
            MessageType.JOB_REQUEST,
            task_id="t-1",
            sender="modeller",
            recipient="a/p",
            seq=0,
            body=job(echo(), ["a/p"]),
        )
        await link.send(request)
        assert (await link.receive()).type is MessageType.JOB_ACCEPT
        await link.send_line(b'{"v": 1, "type": "TASK_START"}\n')
        heard = []
        with pytest.raises(trio.EndOfChannel):
            while True:
                heard.append(await link.receive())
        await link.aclose()
    abort = heard[-1]
    assert abort.type is MessageType.TASK_ABORT
    assert abort.body["reason"] == "PROTOCOL_ERROR"
    assert "field $.task_id" in abort.body["message"]
    assert remote.reports["a/p"].abort_reason is AbortReason.PROTOCOL_ERROR


async def test_a_worker_gives_up_when_no_job_request_comes() -> None:
    listener = await PodListener.open(LOCAL, 0, pods=["a/p"])
    remote = Remote()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: remote.worker(listener.port, Pod("a/p"), job_timeout_s=0.3))
        links = await listener.wait_for_pods(5)
    assert remote.reports["a/p"].state == "closed"
    failure = remote.failures["a/p"]
    assert failure is not None and "waiting for the first message" in failure
    await links["a/p"].aclose()


async def test_a_worker_aborts_at_once_when_the_modeller_connection_drops() -> None:
    listener = await PodListener.open(LOCAL, 0, pods=["a/p"])
    remote = Remote()
    reached = trio.Event()
    start = math.inf
    async with trio.open_nursery() as nursery:
        nursery.start_soon(remote.worker, listener.port, gated_pod("a/p", reached))
        links = await listener.wait_for_pods(5)
        link = links["a/p"]
        body = job(Gated(items=("x0", "x1", "x2"), pass_batches=1), ["a/p"])
        await link.send(
            Message.make(
                MessageType.JOB_REQUEST,
                task_id="t-1",
                sender="modeller",
                recipient="a/p",
                seq=0,
                body=body,
            )
        )
        while (await link.receive()).type is not MessageType.TASK_START:
            pass
        await link.send(message("TASK_START", seq=1))
        await reached.wait()
        start = trio.current_time()
        await link.aclose()  # the modeller process dies
    report = remote.reports["a/p"]
    assert report.state == "aborted" and report.abort_reason is AbortReason.MODELLER_TIMEOUT
    assert trio.current_time() - start < 1
