"""A subprocess as a peer: NDJSON over its stdin and stdout (spec section 1).

The conformance kit starts the implementation under test with
:meth:`ProcessPeer.start`. Its stdout is read as lines, never more than one
line of ``max_line_bytes`` at a time; its stderr is drained in the background
and only the tail is kept, for the report of a crash.

* :class:`StdioTransport` is one conversation over one process: the kit's
  modeller talks to each worker under test this way.
* :class:`SharedStdio` serves many conversations over one process: a modeller
  under test writes every pod's messages to the same stdout, so the lines are
  demultiplexed by ``recipient``.
"""

from __future__ import annotations

import contextlib
import errno
import math
import subprocess
from collections.abc import Callable, Sequence
from typing import final

import trio

from .._base._errors import BrokenTransportError, ClosedTransportError, DecodeError
from .._wire._messages import DEFAULT_MAX_LINE_BYTES, Message, decode, encode

_CHUNK = 65536
_SPAWN_TRIES = 3
_STDERR_TAIL = 4096
_EXCERPT = 200


@final
class ProcessPeer:
    """One started process, spoken to in lines.

    ``read_line`` returns one line with its newline, raises
    :class:`trio.EndOfChannel` at the end of the output, and returns an
    over-long line cut to ``max_line_bytes + 1`` bytes (the rest of that line
    is skipped), so that a decoder rejects it without the kit holding it whole.
    """

    def __init__(self, process: trio.Process, name: str, max_line_bytes: int) -> None:
        self.process = process
        self.name = name
        self.max_line_bytes = max_line_bytes
        self._buffer = bytearray()
        self._skipping = False
        self._eof = False
        self._stderr = bytearray()
        self._write_lock = trio.Lock()
        self._input_closed = False

    @classmethod
    async def start(
        cls,
        nursery: trio.Nursery,
        command: Sequence[str],
        *,
        name: str,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ) -> ProcessPeer:
        """Start ``command`` with pipes on all three streams; drain its stderr in ``nursery``.

        Raises:
            OSError: The command cannot be started (not found, not executable).
        """
        for attempt in range(_SPAWN_TRIES):
            try:
                process = await trio.lowlevel.open_process(
                    list(command),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
                break
            except OSError as exc:
                # EBADF while spawning is this process's trouble (trio runs Popen in a
                # thread while this loop opens and closes other pipes), never the
                # command's: seen once in many kit runs under load. Try again.
                if exc.errno != errno.EBADF or attempt == _SPAWN_TRIES - 1:
                    raise
        peer = cls(process, name, max_line_bytes)
        nursery.start_soon(peer._drain_stderr)
        return peer

    # ---------------------------------------------------------------- output

    async def read_line(self) -> bytes:
        stdout = self.process.stdout
        assert stdout is not None
        limit = self.max_line_bytes
        while True:
            newline = self._buffer.find(b"\n")
            if newline != -1:
                line = bytes(self._buffer[: newline + 1])
                del self._buffer[: newline + 1]
                if self._skipping:
                    self._skipping = False
                    continue
                return line
            if len(self._buffer) > limit:
                if self._skipping:
                    self._buffer.clear()
                else:
                    self._skipping = True
                    line = bytes(self._buffer[: limit + 1])
                    self._buffer.clear()
                    return line
            if self._eof:
                if self._buffer and not self._skipping:
                    line = bytes(self._buffer)
                    self._buffer.clear()
                    return line  # a last line without its newline
                raise trio.EndOfChannel
            try:
                chunk = await stdout.receive_some(_CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                chunk = b""
            if not chunk:
                self._eof = True
            else:
                self._buffer += chunk

    async def _drain_stderr(self) -> None:
        stderr = self.process.stderr
        assert stderr is not None
        try:
            while chunk := await stderr.receive_some(_CHUNK):
                self._stderr += chunk
                if len(self._stderr) > 4 * _STDERR_TAIL:
                    del self._stderr[:-_STDERR_TAIL]
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def stderr_tail(self, size: int = _STDERR_TAIL) -> str:
        """The last ``size`` bytes the process wrote on stderr, as text."""
        return bytes(self._stderr[-size:]).decode(errors="replace")

    # ----------------------------------------------------------------- input

    async def write(self, line: bytes) -> None:
        """Write one line to the process's stdin.

        Raises:
            BrokenTransportError: The process closed its stdin (or exited).
            ClosedTransportError: The kit closed it already.
        """
        stdin = self.process.stdin
        assert stdin is not None
        async with self._write_lock:
            if self._input_closed:
                raise ClosedTransportError(f"the input of {self.name} was closed")
            try:
                await stdin.send_all(line)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise BrokenTransportError(f"{self.name} closed its input") from exc

    async def close_input(self) -> None:
        """Close the process's stdin: it sees the end of its input."""
        if self._input_closed:
            return
        self._input_closed = True
        stdin = self.process.stdin
        assert stdin is not None
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stdin.aclose()

    @property
    def input_closed(self) -> bool:
        return self._input_closed

    # -------------------------------------------------------------- lifetime

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    async def wait_exit(self, seconds: float) -> int | None:
        """The exit status, or None if the process is still running after ``seconds``."""
        with trio.move_on_after(seconds):
            return await self.process.wait()
        return self.process.returncode

    async def kill(self) -> None:
        """Kill the process if it still runs, and reap it."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await self.process.wait()


def _excerpt(line: bytes) -> bytes:
    return line[:_EXCERPT]


@final
class StdioTransport:
    """One conversation with one process over its stdin and stdout.

    ``aclose`` closes the process's stdin only; its stdout can still be read
    with :meth:`receive`, so the kit sees what the process writes after the end.
    """

    def __init__(self, peer: ProcessPeer) -> None:
        self.peer = peer

    async def send(self, message: Message) -> None:
        await self.peer.write(encode(message))

    async def receive(self) -> Message:
        line = await self.peer.read_line()
        return decode(line, max_line_bytes=self.peer.max_line_bytes)

    async def aclose(self) -> None:
        await self.peer.close_input()


@final
class SharedStdio:
    """Many pods' conversations over one process: its lines are routed by ``recipient``.

    Call :meth:`run` in a task: it reads the process's stdout until the end,
    calls ``on_line(raw, message)`` for every line in the order read (``message``
    is None for an invalid line, which ends the reading), and hands each
    message to the transport of its recipient. ``on_problem`` hears about a
    line that is not a valid message or that names no known pod.
    """

    def __init__(
        self,
        peer: ProcessPeer,
        pods: Sequence[str],
        *,
        on_line: Callable[[bytes, Message | None], None],
        on_problem: Callable[[str, bytes], None],
        max_lines: int = 100_000,
    ) -> None:
        self.peer = peer
        self._max_lines = max_lines
        self._on_line = on_line
        self._on_problem = on_problem
        self._channels: dict[str, tuple[trio.MemorySendChannel[Message], _PodEnd]] = {}
        for pod in pods:
            send, receive = trio.open_memory_channel[Message](math.inf)
            self._channels[pod] = (send, _PodEnd(peer, receive))

    def transport(self, pod: str) -> _PodEnd:
        return self._channels[pod][1]

    async def run(self) -> None:
        count = 0
        try:
            while True:
                try:
                    line = await self.peer.read_line()
                except trio.EndOfChannel:
                    return
                count += 1
                if count > self._max_lines:
                    self._on_problem(f"the modeller wrote more than {self._max_lines} lines", line)
                    return
                try:
                    message = decode(line, max_line_bytes=self.peer.max_line_bytes)
                except DecodeError as exc:
                    self._on_line(_excerpt(line), None)
                    self._on_problem(f"the modeller wrote an invalid line: {exc}", line)
                    return
                self._on_line(line, message)
                channel = self._channels.get(message.recipient)
                if channel is None:
                    self._on_problem(
                        f"the modeller wrote {message.type.value} to {message.recipient!r},"
                        " which is not one of the scenario's pods",
                        line,
                    )
                    return
                # A pod that has ended closed its channel; the line is in the trace already.
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    channel[0].send_nowait(message)
        finally:
            for send, _ in self._channels.values():
                send.close()


@final
class _PodEnd:
    """One pod's end of a :class:`SharedStdio`."""

    def __init__(self, peer: ProcessPeer, incoming: trio.MemoryReceiveChannel[Message]) -> None:
        self._peer = peer
        self._incoming = incoming
        self._closed = False

    async def send(self, message: Message) -> None:
        if self._closed:
            raise ClosedTransportError("this pod's conversation was closed")
        await self._peer.write(encode(message))

    async def receive(self) -> Message:
        if self._closed:
            raise ClosedTransportError("this pod's conversation was closed")
        return await self._incoming.receive()

    async def aclose(self) -> None:
        # The process's stdin is shared by every pod: the kit closes it once all have ended.
        if not self._closed:
            self._closed = True
            await self._incoming.aclose()
