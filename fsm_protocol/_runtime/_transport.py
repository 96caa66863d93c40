"""Transports: how encoded messages travel between the modeller and a worker.

A transport is one ordered, bidirectional NDJSON conversation with one peer.
The in-memory pair is the embedded default; TCP and stdio implement the same
small interface, so the runtime never knows which one it has.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol, final

import trio

from .._base._errors import BrokenTransportError, ClosedTransportError, DecodeError
from .._wire._messages import DEFAULT_MAX_LINE_BYTES, Message, decode, encode


class Transport(Protocol):
    """One conversation with one peer.

    ``receive`` returns the next message, raises :class:`trio.EndOfChannel`
    when the peer has finished sending, :class:`~fsm_protocol.DecodeError`
    for a line that is not a valid message (the conversation may go on), and
    :class:`~fsm_protocol.TransportError` when the connection broke.
    """

    async def send(self, message: Message) -> None: ...

    async def receive(self) -> Message: ...

    async def aclose(self) -> None: ...


@final
class MemoryTransport:
    """One end of an in-process pair made by :func:`memory_transport_pair`.

    Lines really are encoded and decoded, so an in-process run exercises the
    same codec, and the same limits, as a run over the network. A receiver
    that takes lines as they are sent (:meth:`deliver_to`, as the runtime's
    executor does) has each one decoded in the sender's :meth:`send_nowait`
    and handed over then, instead of buffered for a task to read.
    """

    def __init__(
        self,
        outgoing: trio.MemorySendChannel[bytes],
        incoming: trio.MemoryReceiveChannel[bytes],
        *,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ) -> None:
        self._outgoing = outgoing
        self._incoming = incoming
        self._max_line_bytes = max_line_bytes
        self._closed = False
        # The other end, when made by memory_transport_pair.
        self._peer: MemoryTransport | None = None
        # Set by deliver_to: what takes this end's incoming lines as they are sent.
        self._take: Callable[[Message], None] | None = None
        self._refuse: Callable[[DecodeError], None] | None = None

    async def send(self, message: Message) -> None:
        await self.send_raw(encode(message))

    def send_nowait(self, message: Message) -> None:
        """Send without waiting: the buffer is unbounded, so a send never blocks.

        The executor uses this when a transport has it, instead of a send task.
        """
        if self._closed:
            raise ClosedTransportError("this transport was closed; no more messages can be sent")
        self._put(encode(message))

    async def send_raw(self, line: bytes) -> None:
        """Send bytes as they are: for tests that feed a peer malformed input."""
        if self._closed:
            raise ClosedTransportError("this transport was closed; no more messages can be sent")
        await trio.lowlevel.checkpoint()
        self._put(line)

    def _put(self, line: bytes) -> None:
        peer = self._peer
        if peer is not None and peer._take is not None:
            peer._hand_over(line)
            return
        try:
            self._outgoing.send_nowait(line)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise BrokenTransportError("the peer closed its end of the conversation") from exc

    def _hand_over(self, line: bytes) -> None:
        assert self._take is not None and self._refuse is not None
        try:
            message = decode(line, max_line_bytes=self._max_line_bytes)
        except DecodeError as exc:
            self._refuse(exc)
            return
        self._take(message)

    def deliver_to(
        self, take: Callable[[Message], None], refuse: Callable[[DecodeError], None]
    ) -> None:
        """From now on, hand each line the peer sends to ``take``, decoded, as it is sent.

        A line that does not decode goes to ``refuse``. Lines already buffered
        are handed over first, in order. :meth:`receive` then sees only the end
        of the peer's input. Both run in the sender's task: they must only queue.
        """
        if self._closed:
            raise ClosedTransportError("this transport was closed; nothing more can be received")
        self._take, self._refuse = take, refuse
        while True:
            try:
                line = self._incoming.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return
            self._hand_over(line)

    async def receive(self) -> Message:
        if self._closed:
            raise ClosedTransportError("this transport was closed; nothing more can be received")
        line = await self._incoming.receive()  # EndOfChannel when the peer closed
        return decode(line, max_line_bytes=self._max_line_bytes)

    def receive_nowait(self) -> Message:
        """The next message if one is already here; raises :class:`trio.WouldBlock` if not.

        Raises as :meth:`receive` does otherwise (``trio.EndOfChannel`` at the end).
        """
        if self._closed:
            raise ClosedTransportError("this transport was closed; nothing more can be received")
        line = self._incoming.receive_nowait()
        return decode(line, max_line_bytes=self._max_line_bytes)

    async def aclose(self) -> None:
        """Stop sending; the peer sees the end of its input after what was sent."""
        if not self._closed:
            self._closed = True
            self._take = self._refuse = None
            await self._outgoing.aclose()
            await self._incoming.aclose()


def memory_transport_pair(
    *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> tuple[MemoryTransport, MemoryTransport]:
    """Two connected in-process transports, unbounded in both directions.

    Unbounded buffers mean a sender never waits for a slow receiver, which is
    how a network with buffering behaves and what the platform's races need.
    """
    a_send, b_recv = trio.open_memory_channel[bytes](math.inf)
    b_send, a_recv = trio.open_memory_channel[bytes](math.inf)
    a = MemoryTransport(a_send, a_recv, max_line_bytes=max_line_bytes)
    b = MemoryTransport(b_send, b_recv, max_line_bytes=max_line_bytes)
    a._peer, b._peer = b, a
    return a, b
