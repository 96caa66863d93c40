"""How the kit reaches the implementation under test: over stdio, or TCP on loopback.

A launcher starts the command and returns endpoints; ``WORKER_TRANSPORTS`` and
``MODELLER_TRANSPORTS`` map ``--transport NAME`` to one.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import socket
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final, Protocol, final

import attrs
import trio

from .._base._errors import (
    BrokenTransportError,
    ClosedTransportError,
    ConfigError,
    DecodeError,
    TransportError,
)
from .._core._chart import Role
from .._net._stdio import ProcessPeer, SharedStdio, StdioTransport
from .._net._tcp import Limits, PodListener, TcpTransport, connect
from .._runtime._transport import Transport
from .._wire._messages import Message, decode
from ._limits import MAX_DRAIN_LINES, MAX_LINES, STDERR_LINES


class WorkerEndpoint(Protocol):
    """One worker under test, as the kit's modeller reaches it.

    ``transport`` carries the conversation. After the task, :meth:`drain`
    returns what the worker still wrote (until it closed its output or
    ``seconds`` passed), and :meth:`finish` its exit status (None if it still
    runs); :meth:`close` kills it.
    """

    transport: Transport

    async def write_raw(self, line: bytes) -> None: ...

    async def cut(self) -> None: ...

    async def drain(self, seconds: float) -> list[bytes]: ...

    async def finish(self, seconds: float) -> int | None: ...

    def stderr_tail(self) -> str: ...

    async def close(self) -> None: ...


class ModellerEndpoint(Protocol):
    """One modeller under test, as the kit's pods reach it.

    :meth:`run` reads the modeller's messages until it stops writing and
    hands each to its pod's ``transport(pod)``. An endpoint that reads several
    streams concurrently (one connection per pod) sets ``interleaved = True``:
    its lines are then not in the order the modeller wrote them.
    """

    def transport(self, pod: str) -> Transport: ...

    async def run(self) -> None: ...

    async def end_input(self) -> None: ...

    async def finish(self, seconds: float) -> int | None: ...

    def stderr_tail(self) -> str: ...

    async def close(self) -> None: ...


WorkerLauncher = Callable[
    [trio.Nursery, Sequence[str], Sequence[str]], Awaitable[dict[str, WorkerEndpoint]]
]
"""Starts the workers of one case: ``(nursery, command, pods) -> {pod: endpoint}``.

It starts the command once per pod (``{pod}`` in an argument is replaced by the
pod's id) and returns one endpoint per pod; on failure it raises ``OSError``
after cleaning up what it started.
"""
ModellerLauncher = Callable[
    [
        trio.Nursery,
        Sequence[str],
        bytes,
        Sequence[str],
        Callable[[bytes, Message | None], None],
        Callable[[str, bytes], None],
    ],
    Awaitable[ModellerEndpoint],
]


@final
class _WholeLines:
    """A worker's stdio conversation whose refused lines keep all their bytes.

    ``decode()`` keeps an excerpt of a bad line; the kit records the whole line
    (at most the line limit + 1 byte), so the checker cites the rule that line
    breaks, not the framing rule an excerpt would.
    """

    def __init__(self, peer: ProcessPeer) -> None:
        self.inner = StdioTransport(peer)
        self.peer = peer

    async def send(self, message: Message) -> None:
        await self.inner.send(message)

    async def receive(self) -> Message:
        line = await self.peer.read_line()
        try:
            return decode(line, max_line_bytes=self.peer.max_line_bytes)
        except DecodeError as exc:
            exc.line = line
            raise

    async def aclose(self) -> None:
        await self.inner.aclose()


@final
class _StdioWorker:
    def __init__(self, peer: ProcessPeer) -> None:
        self.peer = peer
        self.transport: Transport = _WholeLines(peer)

    async def write_raw(self, line: bytes) -> None:
        await self.peer.write(line)

    async def cut(self) -> None:
        await self.peer.close_input()

    async def drain(self, seconds: float) -> list[bytes]:
        lines: list[bytes] = []
        with trio.move_on_after(seconds):
            while len(lines) < MAX_DRAIN_LINES:
                try:
                    lines.append(await self.peer.read_line())
                except trio.EndOfChannel:
                    break
        return lines

    async def finish(self, seconds: float) -> int | None:
        await self.peer.close_input()
        return await self.peer.wait_exit(seconds)

    def stderr_tail(self) -> str:
        return self.peer.stderr_tail()

    async def close(self) -> None:
        await self.peer.kill()


def pod_command(command: Sequence[str], pod: str) -> list[str]:
    """``command`` with ``{pod}`` in its arguments replaced by the pod's id."""
    return [part.replace("{pod}", pod) for part in command]


async def open_stdio_workers(
    nursery: trio.Nursery, command: Sequence[str], pods: Sequence[str]
) -> dict[str, WorkerEndpoint]:
    """Start ``command`` once per pod; each conversation is that process's stdin and stdout."""
    started: dict[str, WorkerEndpoint] = {}
    try:
        for pod in pods:
            peer = await ProcessPeer.start(nursery, pod_command(command, pod), name=pod)
            started[pod] = _StdioWorker(peer)
    except OSError:
        with trio.CancelScope(shield=True):
            for endpoint in started.values():
                await endpoint.close()
        raise
    return started


@final
class _StdioModeller:
    def __init__(self, peer: ProcessPeer, shared: SharedStdio) -> None:
        self.peer = peer
        self.shared = shared

    def transport(self, pod: str) -> Transport:
        return self.shared.transport(pod)

    async def run(self) -> None:
        await self.shared.run()

    async def end_input(self) -> None:
        await self.peer.close_input()

    async def finish(self, seconds: float) -> int | None:
        return await self.peer.wait_exit(seconds)

    def stderr_tail(self) -> str:
        return self.peer.stderr_tail()

    async def close(self) -> None:
        await self.peer.kill()


async def open_stdio_modeller(
    nursery: trio.Nursery,
    command: Sequence[str],
    scenario_line: bytes,
    pods: Sequence[str],
    on_line: Callable[[bytes, Message | None], None],
    on_problem: Callable[[str, bytes], None],
) -> ModellerEndpoint:
    """Start ``command`` once, write the scenario line, and route its lines by recipient."""
    peer = await ProcessPeer.start(nursery, command, name="modeller")
    await peer.write(scenario_line)
    shared = SharedStdio(peer, pods, on_line=on_line, on_problem=on_problem, max_lines=MAX_LINES)
    return _StdioModeller(peer, shared)


# --- TCP: the same conversations over loopback connections -------------------------------------

TCP_HOST: Final = "127.0.0.1"
"""The kit listens and connects on loopback only."""

# The kit's own limits on a connection: generous, since the kit judges what it reads.
_KIT_LIMITS: Final = Limits(max_messages_per_second=100_000.0, burst=100_000, keepalive=False)
_CONNECT_WAIT: Final = 5.0
_EXIT_GRACE: Final = 0.5
# The exit statuses of a process after a task that did not fail it: the CLI's
# ``worker`` and ``modeller serve`` exit 1 when their task did not complete.
_TCP_CLEAN_EXITS: Final = frozenset({0, 1})


def tcp_command(command: Sequence[str], **values: object) -> list[str]:
    """``command`` with ``{host}``, ``{port}``, ``{pod}``, ``{task}``, ``{port_file}`` filled in.

    Only the placeholders given in ``values`` are replaced; other braces are left alone.
    """
    out = []
    for part in command:
        for name, value in values.items():
            part = part.replace("{" + name + "}", str(value))
        out.append(part)
    return out


def _uses(command: Sequence[str], name: str) -> bool:
    return any("{" + name + "}" in part for part in command)


def check_tcp_command(role: Role, command: Sequence[str]) -> None:
    """Raise ConfigError when ``command`` cannot be told where to connect or listen."""
    if role is Role.WORKER and not _uses(command, "port"):
        raise ConfigError(
            "--transport tcp --role worker: the command must take the kit's port as {port}"
            " (and may take {host} and {pod}), e.g."
            " fsm-protocol worker --connect {host}:{port} --pod-id {pod}"
        )
    if role is Role.MODELLER and not (_uses(command, "port") or _uses(command, "port_file")):
        raise ConfigError(
            "--transport tcp --role modeller: the command must listen on {port} (a free port the"
            " kit picks) or write the port it listens on to {port_file}, and read the task from"
            " {task}, e.g. fsm-protocol modeller serve --listen {host}:{port} --task {task}"
        )
    if role is Role.MODELLER and not _uses(command, "task"):
        raise ConfigError(
            "--transport tcp --role modeller: the command must read the task file {task}"
            " (the CONFORMANCE_SCENARIO body as TASK.json)"
        )


async def _discard_output(peer: ProcessPeer) -> None:
    """Read a TCP implementation's stdout, which the kit does not judge, so it never blocks."""
    with contextlib.suppress(trio.EndOfChannel):
        while True:
            await peer.read_line()


async def _half_close(conn: TcpTransport) -> None:
    """Send EOF on the connection but keep reading it; a full close if it cannot half-close."""
    await conn.send_eof()


def _unbounded_reads(conn: TcpTransport) -> None:
    # receive_line waits at most handshake_timeout_s; after the hello the case deadline rules.
    conn.limits = attrs.evolve(conn.limits, handshake_timeout_s=math.inf)


@final
class _TcpKitSide:
    """The kit modeller's side of one accepted worker connection: closing it half-closes."""

    def __init__(self, conn: TcpTransport) -> None:
        self.conn = conn
        self.eof_sent = False

    async def send(self, message: Message) -> None:
        await self.conn.send(message)

    async def receive(self) -> Message:
        return await self.conn.receive()

    async def aclose(self) -> None:
        # Like closing a worker's stdin: it sees the end, and the kit still reads what follows.
        if not self.eof_sent:
            self.eof_sent = True
            await _half_close(self.conn)


@final
class _TcpWorker:
    clean_exits: frozenset[int] = _TCP_CLEAN_EXITS

    def __init__(self, peer: ProcessPeer, conn: TcpTransport) -> None:
        self.peer = peer
        self.conn = conn
        self.side = _TcpKitSide(conn)
        self.transport: Transport = self.side

    async def write_raw(self, line: bytes) -> None:
        await self.conn.send_line(line)

    async def cut(self) -> None:
        await self.side.aclose()

    async def drain(self, seconds: float) -> list[bytes]:
        lines: list[bytes] = []
        _unbounded_reads(self.conn)
        with trio.move_on_after(seconds):
            while len(lines) < MAX_DRAIN_LINES:
                try:
                    lines.append(await self.conn.receive_line(self.conn.limits.max_line_bytes))
                except (trio.EndOfChannel, TransportError, DecodeError):
                    break
        return lines

    async def finish(self, seconds: float) -> int | None:
        await self.side.aclose()
        return await self.peer.wait_exit(seconds)

    def stderr_tail(self) -> str:
        return self.peer.stderr_tail()

    async def close(self) -> None:
        await self.conn.aclose()
        await self.peer.kill()


async def _admit_workers(
    listener: PodListener, peers: Mapping[str, ProcessPeer], timeout: float
) -> dict[str, TcpTransport]:
    """Wait for the pods to connect; stop early once every process has exited."""
    admitted: dict[str, TcpTransport] = {}
    async with trio.open_nursery() as nursery:

        async def wait() -> None:
            admitted.update(await listener.wait_for_pods(timeout))
            nursery.cancel_scope.cancel()

        async def all_exited() -> None:
            for peer in peers.values():
                await peer.process.wait()
            await trio.sleep(_EXIT_GRACE)  # a hello already sent is still admitted
            nursery.cancel_scope.cancel()

        nursery.start_soon(wait)
        nursery.start_soon(all_exited)
    return admitted


async def open_tcp_workers(
    nursery: trio.Nursery, command: Sequence[str], pods: Sequence[str]
) -> dict[str, WorkerEndpoint]:
    """Listen on loopback, start ``command`` once per pod, and take each pod's connection.

    ``{host}``, ``{port}`` and ``{pod}`` in the command are filled in; each
    process must dial ``{host}:{port}`` and say hello as ``{pod}``.
    """
    listener = await PodListener.open(TCP_HOST, 0, pods=pods, limits=_KIT_LIMITS)
    peers: dict[str, ProcessPeer] = {}
    admitted: dict[str, TcpTransport] = {}
    try:
        for pod in pods:
            argv = tcp_command(command, host=TCP_HOST, port=listener.port, pod=pod)
            peers[pod] = await ProcessPeer.start(nursery, argv, name=pod)
            nursery.start_soon(_discard_output, peers[pod])
        admitted = await _admit_workers(listener, peers, _CONNECT_WAIT)
        missing = [pod for pod in pods if pod not in admitted]
        if missing:
            problems = []
            for pod in missing:
                code = peers[pod].returncode
                state = "still running" if code is None else f"exited with status {code}"
                tail = " | ".join(stderr_detail(peers[pod].stderr_tail())[-3:])
                problems.append(
                    f"pod {pod} did not connect to {TCP_HOST}:{listener.port} within"
                    f" {_CONNECT_WAIT:g} s (its process {state})"
                    + (f"; stderr: {tail}" if tail else "")
                )
            raise OSError("; ".join(problems))
    except BaseException:
        with trio.CancelScope(shield=True):
            await listener.aclose()
            for conn in admitted.values():
                await conn.aclose()
            for peer in peers.values():
                await peer.kill()
        raise
    endpoints: dict[str, WorkerEndpoint] = {}
    for pod in pods:
        conn = admitted[pod]
        # The kit judges every line itself, as over stdio: no sender check, no early close.
        conn.expect_sender = None
        conn.close_on_bad_frame = False
        endpoints[pod] = _TcpWorker(peers[pod], conn)
    return endpoints


@final
class _TcpPodEnd:
    """One kit pod's end of its own connection to the modeller under test."""

    def __init__(self, conn: TcpTransport, incoming: trio.MemoryReceiveChannel[Message]) -> None:
        self.conn = conn
        self._incoming = incoming
        self._closed = False

    async def send(self, message: Message) -> None:
        if self._closed:
            raise ClosedTransportError("this pod's conversation was closed")
        await self.conn.send(message)

    async def receive(self) -> Message:
        if self._closed:
            raise ClosedTransportError("this pod's conversation was closed")
        return await self._incoming.receive()

    async def aclose(self) -> None:
        # A pod that has ended says so with EOF; the kit keeps reading for the trace.
        if not self._closed:
            self._closed = True
            await self._incoming.aclose()
            await _half_close(self.conn)


@final
class _TcpModeller:
    clean_exits: frozenset[int] = _TCP_CLEAN_EXITS

    def __init__(
        self,
        peer: ProcessPeer,
        conns: dict[str, TcpTransport],
        folder: str,
        on_line: Callable[[bytes, Message | None], None],
        on_problem: Callable[[str, bytes], None],
    ) -> None:
        self.peer = peer
        self.conns = conns
        # Each pod's connection is read on its own: lines written to two of them may be
        # read in either order, so the trace cannot show the order they were written.
        self.interleaved = len(conns) > 1
        self.folder = folder
        self._on_line = on_line
        self._on_problem = on_problem
        self._channels: dict[str, trio.MemorySendChannel[Message]] = {}
        self._ends: dict[str, _TcpPodEnd] = {}
        self._count = 0
        for pod, conn in conns.items():
            send, receive = trio.open_memory_channel[Message](math.inf)
            self._channels[pod] = send
            self._ends[pod] = _TcpPodEnd(conn, receive)

    def transport(self, pod: str) -> Transport:
        return self._ends[pod]

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                for pod, conn in self.conns.items():
                    nursery.start_soon(self._read, pod, conn, nursery.cancel_scope)
        finally:
            for send in self._channels.values():
                send.close()

    async def _read(self, pod: str, conn: TcpTransport, stop: trio.CancelScope) -> None:
        limit = conn.limits.max_line_bytes
        try:
            while True:
                try:
                    line = await conn.receive_line(limit)
                except (trio.EndOfChannel, TransportError):
                    return
                except DecodeError as exc:
                    raw = exc.line if isinstance(exc.line, bytes) else b""
                    self._on_line(raw[:200], None)
                    self._on_problem(f"the modeller wrote an invalid line to pod {pod}: {exc}", raw)
                    stop.cancel()
                    return
                self._count += 1
                if self._count > MAX_LINES:
                    self._on_problem(f"the modeller wrote more than {MAX_LINES} lines", line)
                    stop.cancel()
                    return
                try:
                    message = decode(line, max_line_bytes=limit)
                except DecodeError as exc:
                    self._on_line(line[:200], None)
                    self._on_problem(f"the modeller wrote an invalid line: {exc}", line)
                    stop.cancel()
                    return
                self._on_line(line, message)
                if message.recipient != pod:
                    known = message.recipient in self.conns
                    self._on_problem(
                        f"the modeller wrote {message.type.value} to {message.recipient!r} on pod"
                        f" {pod}'s connection"
                        + ("" if known else ", and it is not one of the scenario's pods"),
                        line,
                    )
                    stop.cancel()
                    return
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    self._channels[pod].send_nowait(message)
        finally:
            self._channels[pod].close()

    async def end_input(self) -> None:
        for conn in self.conns.values():
            await _half_close(conn)
        await self.peer.close_input()

    async def finish(self, seconds: float) -> int | None:
        return await self.peer.wait_exit(seconds)

    def stderr_tail(self) -> str:
        return self.peer.stderr_tail()

    async def close(self) -> None:
        for conn in self.conns.values():
            await conn.aclose()
        await self.peer.kill()
        shutil.rmtree(self.folder, ignore_errors=True)


def clean_exit_statuses(endpoints: Iterable[object]) -> frozenset[int]:
    """The exit statuses that are no crash: 0, and over TCP 1 (a task that did not complete)."""
    found: set[int] = set()
    for endpoint in endpoints:
        found |= getattr(endpoint, "clean_exits", frozenset({0}))
    return frozenset(found or {0})


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


async def _modeller_port(peer: ProcessPeer, port_file: Path, timeout: float) -> int:
    with trio.move_on_after(timeout):
        while True:
            with contextlib.suppress(OSError, ValueError):
                return int(port_file.read_text().strip())
            if peer.returncode is not None:
                break
            await trio.sleep(0.02)
    raise OSError(
        f"the modeller wrote no port to {port_file} within {timeout:g} s"
        + (f" (it exited with status {peer.returncode})" if peer.returncode is not None else "")
    )


async def _dial(peer: ProcessPeer, port: int, pod: str, timeout: float) -> TcpTransport:
    """Connect as ``pod``, retrying while the modeller starts up."""
    deadline = trio.current_time() + timeout
    while True:
        try:
            conn = await connect(TCP_HOST, port, pod_id=pod, limits=_KIT_LIMITS, job_timeout_s=None)
        except BrokenTransportError as exc:
            if peer.returncode is not None:
                raise OSError(
                    f"the modeller exited with status {peer.returncode} before pod {pod} could"
                    " connect"
                ) from exc
            if trio.current_time() > deadline:
                raise OSError(f"pod {pod} could not connect within {timeout:g} s: {exc}") from exc
            await trio.sleep(0.05)
            continue
        except TransportError as exc:  # the hello was refused
            raise OSError(f"pod {pod} could not connect: {exc}") from exc
        _unbounded_reads(conn)
        return conn


async def open_tcp_modeller(
    nursery: trio.Nursery,
    command: Sequence[str],
    scenario_line: bytes,
    pods: Sequence[str],
    on_line: Callable[[bytes, Message | None], None],
    on_problem: Callable[[str, bytes], None],
) -> ModellerEndpoint:
    """Write the scenario as TASK.json, start ``command`` once, and connect every pod.

    ``{task}`` is the task file (the ``CONFORMANCE_SCENARIO`` body, with its
    ``task_id``); the command listens on ``{host}:{port}`` (a free port the
    kit picked) or writes the port it listens on to ``{port_file}``.
    """
    wire = json.loads(scenario_line)
    folder = tempfile.mkdtemp(prefix="fsm-conform-")
    conns: dict[str, TcpTransport] = {}
    peer: ProcessPeer | None = None
    try:
        task = Path(folder, "task.json")
        task.write_text(json.dumps({**wire["body"], "task_id": wire["task_id"]}), "utf-8")
        port_file = Path(folder, "port")
        by_file = _uses(command, "port_file")
        port = 0 if by_file else _free_port(TCP_HOST)
        argv = tcp_command(command, host=TCP_HOST, port=port, task=task, port_file=port_file)
        peer = await ProcessPeer.start(nursery, argv, name="modeller")
        nursery.start_soon(_discard_output, peer)
        if by_file:
            port = await _modeller_port(peer, port_file, _CONNECT_WAIT)
        for pod in pods:
            conns[pod] = await _dial(peer, port, pod, _CONNECT_WAIT)
    except BaseException as exc:
        with trio.CancelScope(shield=True):
            for conn in conns.values():
                await conn.aclose()
            if peer is not None:
                await peer.kill()
            shutil.rmtree(folder, ignore_errors=True)
        if isinstance(exc, OSError) and peer is not None:
            tail = " | ".join(stderr_detail(peer.stderr_tail())[-3:])
            if tail:
                raise OSError(f"{exc}; stderr: {tail}") from exc
        raise
    return _TcpModeller(peer, conns, folder, on_line, on_problem)


WORKER_TRANSPORTS: Final[dict[str, WorkerLauncher]] = {
    "stdio": open_stdio_workers,
    "tcp": open_tcp_workers,
}
"""How ``--transport NAME`` starts a worker under test."""

MODELLER_TRANSPORTS: Final[dict[str, ModellerLauncher]] = {
    "stdio": open_stdio_modeller,
    "tcp": open_tcp_modeller,
}
"""How ``--transport NAME`` starts a modeller under test."""


def stderr_detail(text: str) -> list[str]:
    tail = [line for line in text.strip().splitlines() if line.strip()][-STDERR_LINES:]
    return ["stderr (last lines):", *("  " + line for line in tail)] if tail else []
