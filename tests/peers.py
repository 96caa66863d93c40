"""Hand-scripted peers for tests: they write exact lines at exact moments.

The engine's own worker and modeller never misbehave on purpose, so tests that
need a burst, a bad line or silence script the other side here.
"""

from __future__ import annotations

from typing import Any

import trio

from fsm_protocol import MODELLER, Message, MessageType, Meta
from fsm_protocol._runtime._transport import MemoryTransport


class Scripted:
    """One side of a conversation, writing messages with a rising seq."""

    def __init__(self, transport: MemoryTransport, *, me: str, peer: str, task_id: str) -> None:
        self.transport = transport
        self.me = me
        self.peer = peer
        self.task_id = task_id
        self.seq = 0
        self.received: list[Message] = []

    def message(self, type_: str, body: Any = None, meta: Meta | None = None) -> Message:
        msg = Message.make(
            MessageType(type_),
            task_id=self.task_id,
            sender=self.me,
            recipient=self.peer,
            seq=self.seq,
            body=body,
            meta=meta,
        )
        self.seq += 1
        return msg

    async def send(self, type_: str, body: Any = None, meta: Meta | None = None) -> None:
        await self.transport.send(self.message(type_, body, meta))

    async def expect(self, type_: str) -> Message:
        """Receive the next message and check its type."""
        msg = await self.transport.receive()
        self.received.append(msg)
        assert msg.type.value == type_, f"expected {type_}, got {msg.type.value}: {msg}"
        return msg

    async def receive_rest(self) -> list[Message]:
        """Everything until the peer closes."""
        rest = []
        while True:
            try:
                msg = await self.transport.receive()
            except trio.EndOfChannel:
                return rest
            self.received.append(msg)
            rest.append(msg)


def scripted_worker(transport: MemoryTransport, pod_id: str, task_id: str) -> Scripted:
    return Scripted(transport, me=pod_id, peer=MODELLER, task_id=task_id)


def scripted_modeller(transport: MemoryTransport, pod_id: str, task_id: str) -> Scripted:
    return Scripted(transport, me=MODELLER, peer=pod_id, task_id=task_id)


def results_meta(batch: int | None) -> Meta:
    return Meta(batch_number=batch)
