"""A broker transport: a task's messages travel through NATS JetStream.

Both sides dial out to the broker; neither listens. The layout, per task:

- one stream ``FSMP_<task>`` holding the subjects ``fsmp.<task>.<recipient>``;
- one durable pull consumer per recipient (every pod, and the modeller),
  the stream's ``max_consumers`` set from the pod count;
- job offers to idle pods on the control stream ``FSMP_CONTROL``, subject
  ``fsmp._control.<pod>`` (a work queue: an offer goes once the pod acks it,
  which it does when its part of the task has ended);
- the task's stream is removed once the task has ended and every pod took
  its last messages (or a bounded wait ran out).

Names go into subjects escaped (see :func:`token`), so a pod id such as
``alice/pod-a`` is one subject token.

Sending: every message is published with the JetStream message id
``<task>:<sender>:<seq>`` (``Nats-Msg-Id``: the server drops a repeat it
has seen within the stream's duplicate window) and a header ``Fsmp-Seq``
numbering the messages of one link (one sender to one recipient) 0, 1, 2...
Publishing is batched: one trip into asyncio publishes many messages and
waits for their confirmations. A message not confirmed in time, or lost to
a reconnect, stays in the outbox and is published again with the same id.

Receiving: messages are handed to the chart per link in ``Fsmp-Seq`` order:
an already handed number is dropped, a gap is held until it fills. A header
``Fsmp-After`` says how many messages of the link's other direction the
sender had read when it sent this one; a receiver that has not yet sent that
many (a restarted pod replaying its inbox) holds the message until it has,
so a replay sees the modeller's answers in the order the first run did. A message
is acknowledged only once the chart has applied it (``ack_when="applied"``),
or once a durability hook says its effects are on disk (``"durable"``), and
in both cases only once the broker confirmed every message this side had
produced by then; or at the end of the conversation (``"end"``: a worker
keeps nothing on disk, so a restarted pod replays its whole inbox and its
repeated sends are dropped as duplicates by their message ids).

The NATS client is the maintained ``nats-py``, run under ``trio-asyncio``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import re
import ssl
import sys
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar, final

import attrs
import trio

if sys.version_info < (3, 11):  # pragma: no cover - trio brings the backport there
    from exceptiongroup import BaseExceptionGroup

from .._base._errors import (
    BrokenTransportError,
    ClosedTransportError,
    ConfigError,
    DecodeError,
    TransportError,
)
from .._runtime._modeller import DEFAULT_TIMEOUTS, ModellerRun, TaskTimeouts, run_modeller
from .._runtime._results import ResultsFolder
from .._runtime._transport import Transport
from .._runtime._worker import Pod, WorkerReport, run_worker
from .._wire._messages import (
    DEFAULT_MAX_LINE_BYTES,
    MODELLER,
    JobRequestBody,
    Message,
    decode,
    encode,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable


PREFIX: Final = "fsmp"
CONTROL_STREAM: Final = "FSMP_CONTROL"
CONTROL_SUBJECTS: Final = f"{PREFIX}._control.>"
SEQ_HEADER: Final = "Fsmp-Seq"
SENDER_HEADER: Final = "Fsmp-Sender"
END_HEADER: Final = "Fsmp-End"
AFTER_HEADER: Final = "Fsmp-After"
MSG_ID_HEADER: Final = "Nats-Msg-Id"

AckWhen = Literal["applied", "durable", "end"]

_T = TypeVar("_T")
_SAFE = re.compile(r"[A-Za-z0-9-]")


@functools.lru_cache(maxsize=4096)
def token(name: str) -> str:
    """``name`` as one NATS subject token and part of a stream or consumer name.

    Letters, digits and ``-`` stay; every other character becomes ``_`` and
    the hex of its UTF-8 bytes (``alice/pod-a`` is ``alice_2Fpod-a``), so two
    names never share a token and no token holds ``.``, ``*``, ``>`` or a space.
    """
    if not name:
        raise ValueError("an empty name cannot be a subject token")
    return "".join(
        char if _SAFE.fullmatch(char) else "".join(f"_{b:02X}" for b in char.encode())
        for char in name
    )


@attrs.frozen
class TaskLayout:
    """The stream, subjects and consumer names of one task."""

    task_id: str

    @property
    def stream(self) -> str:
        return f"FSMP_{token(self.task_id)}"

    def subject(self, recipient: str) -> str:
        return f"{PREFIX}.{token(self.task_id)}.{token(recipient)}"

    def consumer(self, recipient: str) -> str:
        return f"to_{token(recipient)}"

    def deliver_subject(self, recipient: str) -> str:
        """Where the recipient's consumer pushes (outside the stream's subjects)."""
        return f"{PREFIX}-deliver.{token(self.task_id)}.{token(recipient)}"

    def msg_id(self, sender: str, seq: int | str) -> str:
        return f"{self.task_id}:{sender}:{seq}"


def control_subject(pod_id: str) -> str:
    """Where job offers for ``pod_id`` are published."""
    return f"{PREFIX}._control.{token(pod_id)}"


@attrs.frozen
class Offer:
    """A job offer read from the control stream: which task a pod is to join."""

    task_id: str
    modeller: str
    pod_id: str


@attrs.frozen
class BrokerOptions:
    """How to reach the broker and how patient to be with it.

    Args:
        servers: ``nats://HOST:PORT`` (or ``tls://``) URLs; several for a cluster.
        ssl_context: TLS to the broker (its CA; a client certificate for mutual TLS).
        user, password, token, creds_file, nkeys_seed_file: the broker's own
            credentials (see the NATS server's authentication docs).
        publish_timeout_s: A publish not confirmed after this is sent again, same id.
        give_up_s: A message still unconfirmed after this breaks its link.
        ack_wait_s: The consumers' ack wait: an unacknowledged delivery comes
            again after it.
        duplicate_window_s: How long the server remembers message ids.
        replicas: Stream replicas (1 for a single server, 3 for a cluster of 3).
        max_batch: Most messages carried by one trip into asyncio.
        max_unconfirmed: A sender waits while this many messages await confirmation.
        max_unacked: The server pushes no more to a recipient holding this many
            unacknowledged messages.
        connect_for_s: Keep trying to reach the broker at start for this long.
        linger_s: At the end, how long the modeller waits for every pod that
            took part to end its side before it removes the task's stream.
    """

    servers: tuple[str, ...]
    ssl_context: ssl.SSLContext | None = None
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds_file: str | None = None
    nkeys_seed_file: str | None = None
    publish_timeout_s: float = 5.0
    give_up_s: float = 300.0
    ack_wait_s: float = 30.0
    duplicate_window_s: float = 3600.0
    replicas: int = 1
    max_batch: int = 512
    max_unconfirmed: int = 20_000
    max_unacked: int = 20_000
    connect_for_s: float = 30.0
    linger_s: float = 30.0
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES


@attrs.frozen
class BrokerStats:
    """What one connection did: for benchmarks and the outcome's stats."""

    published: int
    confirmed: int
    resent: int
    duplicates: int
    batches: int
    received: int
    dropped_repeats: int
    acked: int


def _aio(function: Callable[..., Awaitable[_T]]) -> Callable[..., Awaitable[_T]]:
    import trio_asyncio  # type: ignore[import-untyped]

    wrapped: Callable[..., Awaitable[_T]] = trio_asyncio.aio_as_trio(function)
    return wrapped


# ---------------------------------------------------------------- sending


@attrs.define(eq=False)
class _SendLink:
    """One sender to one recipient: its ``Fsmp-Seq`` counter and failures."""

    layout: TaskLayout
    sender: str
    recipient: str
    next_seq: int = 0
    unconfirmed: int = 0
    failure: str | None = None
    drained: trio.Event = attrs.field(factory=trio.Event)
    sent_more: trio.Event = attrs.field(factory=trio.Event)


@attrs.define(eq=False)
class _Out:
    subject: str
    payload: bytes
    headers: dict[str, str]
    stream: str | None
    link: _SendLink | None
    first_sent: float
    wire_seq: int | None = None
    attempts: int = 0
    due: float = 0.0
    done: trio.Event = attrs.field(factory=trio.Event)
    error: str | None = None


# -------------------------------------------------------------- receiving


@attrs.define(eq=False)
class _RecvLink:
    """What one recipient received from one sender, put back in order.

    ``handed`` holds, by ``Fsmp-Seq``, what went to the chart and is not yet
    acknowledged, with the newest delivery of each (the one to acknowledge).
    """

    sender: str
    next_seq: int = 0
    held: dict[int, tuple[bytes, Any, bool, int]] = attrs.field(factory=dict)
    ready: deque[tuple[int, bytes, Any, bool, int]] = attrs.field(factory=deque)
    handed: dict[int, tuple[Message | None, Any]] = attrs.field(factory=dict)
    arrived: trio.Event = attrs.field(factory=trio.Event)
    ended: bool = False
    end_seen: bool = False
    anything: bool = False
    handed_count: int = 0


@final
class _Pushed:
    """The deliveries of one push subscription, handed to trio.

    nats-py calls :meth:`on_msg` in asyncio for each delivery; it only queues
    the message and wakes the trio side, so receiving costs no trip into
    asyncio per message.
    """

    def __init__(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._arrivals: deque[Any] = deque()
        self._wake = trio.Event()
        self.count = 0

    def _woken(self) -> None:
        self._wake.set()

    async def on_msg(self, msg: Any) -> None:  # runs in asyncio
        self.count += 1
        self._arrivals.append(msg)
        if len(self._arrivals) == 1:
            self._token.run_sync_soon(self._woken)

    async def _wait(self) -> None:
        while not self._arrivals:
            self._wake = trio.Event()
            await self._wake.wait()

    async def take_all(self) -> list[Any]:
        await self._wait()
        taken = list(self._arrivals)
        self._arrivals.clear()
        return taken

    async def take_one(self) -> Any:
        await self._wait()
        return self._arrivals.popleft()


@final
class _Inbox:
    """The durable consumer of one recipient, fetched in batches, split by sender."""

    def __init__(
        self,
        broker: Broker,
        layout: TaskLayout,
        recipient: str,
        ack_when: AckWhen,
        max_held: int = 10_000,
    ) -> None:
        self.broker = broker
        self.layout = layout
        self.recipient = recipient
        self.ack_when = ack_when
        self.max_held = max_held
        self.links: dict[str, _RecvLink] = {}
        self.scope = trio.CancelScope()
        self.failure: str | None = None
        self._sub: Any = None

    def link(self, sender: str) -> _RecvLink:
        if sender not in self.links:
            self.links[sender] = _RecvLink(sender)
        return self.links[sender]

    async def run(self) -> None:
        """Bind to the recipient's push consumer and route what arrives, in batches.

        A watchdog looks at the consumer every ack wait: when the task's stream
        is gone, the links fail (the peer's side is over); when messages wait on
        the server but none came since the last look (a subscription lost to a
        node's death, say), it binds again.
        """
        with self.scope:
            while True:
                pushed = _Pushed()
                if not await self._bind(pushed):
                    return
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._watch, pushed, nursery.cancel_scope)
                        while True:
                            for msg in await pushed.take_all():
                                self._route(msg)
                finally:
                    sub, self._sub = self._sub, None
                    await _unsubscribe(sub)
                if self.failure is not None:
                    return

    async def _bind(self, pushed: _Pushed) -> bool:
        misses = 0
        while self._sub is None:
            try:
                self._sub = await _aio(self.broker._bind)(
                    self.layout, self.recipient, pushed.on_msg
                )
            except Exception as exc:
                gone = await self.broker._task_gone(self.layout)
                misses = misses + 1 if gone else 0
                if misses >= 3:
                    self._fail(f"the task's stream {self.layout.stream} is gone ({exc!r})")
                    return False
                await trio.sleep(0.2)
        return True

    async def _watch(self, pushed: _Pushed, scope: trio.CancelScope) -> None:
        seen = pushed.count
        gone = 0
        while True:
            await trio.sleep(self.broker.options.ack_wait_s)
            state = await self.broker._consumer_state(self.layout, self.recipient)
            if state == "gone":
                gone += 1
                if gone >= 2:
                    self._fail(f"the task's stream {self.layout.stream} was removed")
                    scope.cancel()
                    return
                continue
            gone = 0
            if state == "waiting" and pushed.count == seen:
                scope.cancel()  # messages wait, none came: bind again
                return
            seen = pushed.count

    def _fail(self, text: str) -> None:
        self.failure = text
        for link in self.links.values():
            link.arrived.set()

    def _route(self, msg: Any) -> None:
        self.broker._received += 1
        headers = msg.headers or {}
        sender = headers.get(SENDER_HEADER)
        seq_text = headers.get(SEQ_HEADER, "")
        if sender is None or sender not in self.links or not _is_number(seq_text):
            # Not ours to hand on (a stranger, or no link header): never redeliver it.
            self.broker._queue_ack(msg)
            return
        link = self.links[sender]
        seq = int(seq_text)
        end = headers.get(END_HEADER) == "1"
        after_text = headers.get(AFTER_HEADER, "0")
        after = int(after_text) if _is_number(after_text) else 0
        link.anything = True
        if end:
            link.end_seen = True
            self.broker._peer_ended.set()
        if seq < link.next_seq:
            self.broker._dropped += 1
            if seq in link.handed:
                # Handed, not yet acknowledged: acknowledge this newest delivery instead.
                link.handed[seq] = (link.handed[seq][0], msg)
            elif not any(entry[0] == seq for entry in link.ready):
                self.broker._queue_ack(msg)  # applied and acknowledged before: ack again
            return
        if seq > link.next_seq:
            if seq not in link.held and len(link.held) < self.max_held:
                link.held[seq] = (msg.data, msg, end, after)
            return  # a gap before it: wait (redelivery fills it)
        link.ready.append((seq, msg.data, msg, end, after))
        link.next_seq += 1
        while link.next_seq in link.held:
            data, held, held_end, held_after = link.held.pop(link.next_seq)
            link.ready.append((link.next_seq, data, held, held_end, held_after))
            link.next_seq += 1
        link.arrived.set()


# ------------------------------------------------------------- transport


@final
class BrokerTransport:
    """One link through the broker: this side to one peer, for one task.

    Made by :meth:`Broker.transport`. ``send`` returns once the message is in
    the outbox (it waits only while the outbox is full); confirmation and
    resending happen behind it. ``receive`` hands the peer's messages in order.
    """

    def __init__(
        self, broker: Broker, inbox: _Inbox, send_link: _SendLink, recv_link: _RecvLink
    ) -> None:
        self._broker = broker
        self._inbox = inbox
        self._send_link = send_link
        self._recv = recv_link
        self._closed = False
        self.failure: str | None = None

    @property
    def peer(self) -> str:
        return self._send_link.recipient

    async def send(self, message: Message) -> None:
        if self._closed:
            raise ClosedTransportError("this transport was closed; no more messages can be sent")
        if self._send_link.failure is not None:
            raise BrokenTransportError(self._send_link.failure)
        await self._broker._publish_on(
            self._send_link, encode(message), str(message.seq), after=self._recv.handed_count
        )

    async def receive(self) -> Message:
        if self._closed:
            raise ClosedTransportError("this transport was closed; nothing more can be received")
        link = self._recv
        sent = self._send_link
        while not link.ready or link.ready[0][4] > sent.next_seq:
            if link.ended:
                raise trio.EndOfChannel
            failure = sent.failure or self._inbox.failure
            if failure is not None:
                self.failure = failure
                raise BrokenTransportError(failure)
            if link.ready:
                # The peer sent this after reading more from us than we have sent so
                # far: we are replaying (restarted), and it answers what comes next.
                sent.sent_more = trio.Event()
                await sent.sent_more.wait()
            else:
                link.arrived = trio.Event()
                await link.arrived.wait()
        seq, data, msg, end, _ = link.ready.popleft()
        link.handed_count += 1
        if end:
            link.ended = True
            self._consumed(seq, msg)
            raise trio.EndOfChannel
        try:
            message = decode(data, max_line_bytes=self._broker.options.max_line_bytes)
        except Exception:
            self._consumed(seq, msg)
            raise
        if message.sender != self.peer:
            self._consumed(seq, msg)
            raise DecodeError(
                f"field $.sender: expected {self.peer!r} (the sender this subject and "
                f"{SENDER_HEADER} name), found {message.sender!r}",
                field="$.sender",
                line=data[:200],
            )
        link.handed[seq] = (message, msg)
        return message

    def _consumed(self, seq: int, msg: Any) -> None:
        """A delivery the chart will never apply (an end marker, an undecodable line)."""
        if self._inbox.ack_when == "end":
            self._recv.handed[seq] = (None, msg)
        else:
            self._broker._queue_ack(msg)

    def applied(self, message: Message) -> None:
        """The chart has applied ``message`` (the executor calls this after its step).

        With ``ack_when="applied"`` it is acknowledged now, with anything handed
        before it that the chart refused; with ``"durable"`` once :meth:`durable`
        is called for it; with ``"end"`` at :meth:`aclose`.
        """
        if self._inbox.ack_when == "applied":
            self._settle(message)

    def durable(self, message: Message) -> None:
        """The hook for a results folder that writes durably (issue 14): ``message``'s
        effects are on disk, so it may be acknowledged (``ack_when="durable"``)."""
        if self._inbox.ack_when == "durable":
            self._settle(message)

    def _settle(self, message: Message) -> None:
        handed = self._recv.handed
        if not any(entry[0] is message for entry in handed.values()):
            return  # not from this link, or settled already
        me = self._send_link.sender
        for seq in list(handed):
            handed_message, msg = handed.pop(seq)
            self._broker._ack_once_sent(msg, (self._send_link.layout.task_id, me))
            if handed_message is message:
                return

    async def confirmed(self) -> None:
        """Wait until every message sent on this link is confirmed (or failed)."""
        while self._send_link.unconfirmed:
            self._send_link.drained = trio.Event()
            await self._send_link.drained.wait()

    async def aclose(self) -> None:
        """Say this side is done (an end marker in the peer's order), flush, ack.

        Waits, bounded by the options' ``give_up_s``, until what was sent is confirmed.
        """
        if self._closed:
            return
        self._closed = True
        link = self._send_link
        for _, msg in self._recv.handed.values():
            self._broker._queue_ack(msg)
        self._recv.handed.clear()
        await self._broker._flush_acks()
        if link.failure is None:
            with contextlib.suppress(TransportError):
                await self._broker._publish_on(
                    link, b"", f"end:{link.recipient}", end=True, after=self._recv.handed_count
                )
        with trio.move_on_after(self._broker.options.give_up_s):
            await self.confirmed()


# ---------------------------------------------------------------- broker


@final
class Broker:
    """One connection to the broker, shared by every link of this process.

    Open it with :meth:`connect` (an async context manager, inside ``trio.run``).
    """

    def __init__(self, options: BrokerOptions, nc: Any, nursery: trio.Nursery) -> None:
        self.options = options
        self._nc = nc
        self._js: Any = nc.jetstream(publish_async_max_pending=max(options.max_unconfirmed, 1))
        self._nursery = nursery
        self._queue_send, self._queue = trio.open_memory_channel[_Out](math.inf)
        self._room = trio.Semaphore(options.max_unconfirmed)
        self._retry: list[_Out] = []
        self._acks: list[tuple[Any, bytes]] = []
        self._acks_waiting = trio.Event()
        self._inboxes: dict[tuple[str, str], _Inbox] = {}
        self._peer_ended = trio.Event()
        self._offer_boxes: dict[str, _Pushed] = {}
        self._unsent: dict[tuple[str, str], dict[int, str]] = {}
        self._held_acks: dict[tuple[str, str], deque[tuple[int, Any, float]]] = {}
        self._failed_links: set[tuple[tuple[str, str], str]] = set()
        self._ran: set[tuple[str, str]] = set()
        self._reconnects = 0
        self._published = 0
        self._confirmed = 0
        self._resent = 0
        self._duplicates = 0
        self._batches = 0
        self._received = 0
        self._dropped = 0
        self._acked = 0

    # ------------------------------------------------------------ connect

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls, options: BrokerOptions, *, log: Callable[[str], None] = lambda text: None
    ) -> AsyncIterator[Broker]:
        """Connect (retrying for ``options.connect_for_s``), and close on exit.

        Raises:
            BrokenTransportError: The broker could not be reached in time.
        """
        import trio_asyncio

        try:
            async with trio_asyncio.open_loop():
                nc = await _connect(options, log)
                try:
                    async with trio.open_nursery() as nursery:
                        broker = cls(options, nc, nursery)
                        nc._reconnected_cb = broker._on_reconnect
                        for _ in range(2):
                            nursery.start_soon(broker._publish_pump)
                        nursery.start_soon(broker._retry_pump)
                        nursery.start_soon(broker._ack_pump)
                        try:
                            yield broker
                        finally:
                            with trio.CancelScope(shield=True), trio.move_on_after(5):
                                await broker._flush_acks()
                            nursery.cancel_scope.cancel()
                finally:
                    with (
                        trio.CancelScope(shield=True),
                        trio.move_on_after(5),
                        contextlib.suppress(Exception),
                    ):
                        await _aio(nc.close)()
        except BaseExceptionGroup as group:
            # The caller's own error (or ours) comes out as itself, not inside the
            # groups of the nurseries it crossed.
            single = single_exception(group)
            if single is None:
                raise
            raise single from None

    async def _on_reconnect(self) -> None:  # runs in asyncio
        self._reconnects += 1

    def stats(self) -> BrokerStats:
        return BrokerStats(
            published=self._published,
            confirmed=self._confirmed,
            resent=self._resent,
            duplicates=self._duplicates,
            batches=self._batches,
            received=self._received,
            dropped_repeats=self._dropped,
            acked=self._acked,
        )

    # -------------------------------------------------------------- layout

    async def create_task(self, task_id: str, recipients: Sequence[str]) -> TaskLayout:
        """Make the task's stream and one durable consumer per recipient."""
        layout = TaskLayout(task_id)
        # A cluster that is still electing leaders (or placing replicas) refuses for a
        # moment; keep trying for connect_for_s, then say why.
        last: Exception | None = None
        with trio.move_on_after(self.options.connect_for_s):
            while True:
                try:
                    await _aio(self._create_task)(layout, tuple(recipients))
                    return layout
                except Exception as exc:
                    last = exc
                await trio.sleep(0.5)
        raise BrokenTransportError(
            f"the broker did not make the task's stream {layout.stream}: {last or 'timed out'}"
        )

    async def _create_task(self, layout: TaskLayout, recipients: tuple[str, ...]) -> None:
        from nats.js import api

        options = self.options
        await self._js.add_stream(
            api.StreamConfig(
                name=layout.stream,
                subjects=[f"{PREFIX}.{token(layout.task_id)}.>"],
                retention=api.RetentionPolicy.LIMITS,
                storage=api.StorageType.FILE,
                num_replicas=options.replicas,
                max_consumers=len(recipients),
                duplicate_window=options.duplicate_window_s,
                max_msg_size=options.max_line_bytes,
            )
        )
        for recipient in recipients:
            await self._add_consumer(layout, recipient)

    async def _add_consumer(self, layout: TaskLayout, recipient: str) -> None:
        from nats.js import api

        options = self.options
        await self._js.add_consumer(
            layout.stream,
            api.ConsumerConfig(
                name=layout.consumer(recipient),
                durable_name=layout.consumer(recipient),
                filter_subject=layout.subject(recipient),
                deliver_subject=layout.deliver_subject(recipient),
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=options.ack_wait_s,
                max_deliver=-1,
                max_ack_pending=options.max_unacked,
                deliver_policy=api.DeliverPolicy.ALL,
                num_replicas=options.replicas,
            ),
        )

    async def rejoin_task(self, task_id: str, me: str) -> TaskLayout | None:
        """Take up a task whose stream exists (a resumed modeller): ``me``'s durable
        consumer is made again from the stream's start, so ``me`` replays its whole
        inbox (the stream keeps acknowledged messages until it is removed).

        Returns:
            The task's layout, or None when it has no stream (never made, or removed).

        Raises:
            BrokenTransportError: The broker did not remake the consumer in time.
        """
        import nats.js.errors

        layout = TaskLayout(task_id)
        if await self._task_gone(layout):
            return None
        last: Exception | None = None
        with trio.move_on_after(self.options.connect_for_s):
            while True:
                try:
                    with contextlib.suppress(nats.js.errors.NotFoundError):
                        await _aio(self._js.delete_consumer)(layout.stream, layout.consumer(me))
                    await _aio(self._add_consumer)(layout, me)
                    return layout
                except Exception as exc:
                    last = exc
                await trio.sleep(0.5)
        raise BrokenTransportError(
            f"the broker did not remake the consumer {layout.consumer(me)} of the task's "
            f"stream {layout.stream}: {last or 'timed out'}"
        )

    async def remove_task(self, layout: TaskLayout, me: str, pods: Sequence[str]) -> list[str]:
        """Remove the task's stream once every pod that took part has ended its side
        (its end marker arrived), ``linger_s`` at most. Returns the pods not waited for
        to the end."""
        inbox = self._inboxes.get((layout.task_id, me))

        def waiting() -> list[str]:
            if inbox is None:
                return []
            return [
                pod
                for pod in pods
                if pod in inbox.links
                and inbox.links[pod].anything
                and not inbox.links[pod].end_seen
            ]

        with trio.move_on_after(self.options.linger_s):
            while waiting():
                self._peer_ended = trio.Event()
                await self._peer_ended.wait()
        left = waiting()
        self.close_inbox(layout.task_id, me)
        with contextlib.suppress(Exception):
            await _aio(self._js.delete_stream)(layout.stream)
        return left

    async def _consumer_state(self, layout: TaskLayout, recipient: str) -> str:
        """``gone`` (no such stream), ``waiting`` (messages not yet delivered, or
        no subscriber bound), or ``ok`` (also when the broker cannot say)."""
        import nats.js.errors

        try:
            info = await _aio(self._js.consumer_info)(layout.stream, layout.consumer(recipient))
        except nats.js.errors.NotFoundError:
            return "gone" if await self._task_gone(layout) else "ok"
        except Exception:
            return "ok"
        if info.num_pending or info.push_bound is False:
            return "waiting"
        return "ok"

    async def _task_gone(self, layout: TaskLayout) -> bool:
        import nats.js.errors

        try:
            await _aio(self._js.stream_info)(layout.stream)
        except nats.js.errors.NotFoundError:
            return True
        except Exception:
            return False
        return False

    async def _bind(
        self, layout: TaskLayout, recipient: str, callback: Callable[[Any], Awaitable[None]]
    ) -> Any:
        info = await self._js.consumer_info(layout.stream, layout.consumer(recipient))
        return await self._js.subscribe_bind(
            layout.stream,
            info.config,
            layout.consumer(recipient),
            cb=callback,
            manual_ack=True,
            pending_msgs_limit=-1,
            pending_bytes_limit=-1,
        )

    # --------------------------------------------------------------- links

    def transport(
        self, layout: TaskLayout, *, me: str, peer: str, ack_when: AckWhen = "applied"
    ) -> BrokerTransport:
        """A transport from ``me`` to ``peer`` in the task; starts ``me``'s inbox."""
        key = (layout.task_id, me)
        inbox = self._inboxes.get(key)
        if inbox is None:
            inbox = _Inbox(self, layout, me, ack_when)
            self._inboxes[key] = inbox
            self._nursery.start_soon(inbox.run)
        recv = inbox.link(peer)
        send = _SendLink(layout, me, peer)
        return BrokerTransport(self, inbox, send, recv)

    def close_inbox(self, task_id: str, me: str) -> None:
        """Stop receiving for ``me`` in the task (its links are done)."""
        inbox = self._inboxes.pop((task_id, me), None)
        if inbox is not None:
            inbox.scope.cancel()

    # ------------------------------------------------------------- offers

    async def offer_all(
        self, layout: TaskLayout, pods: Sequence[str], modeller: str, *, again: bool = False
    ) -> None:
        """Offer the task to every pod on the control stream (kept until each acks).

        An offer's message id is ``offer:<task>:<pod>``, so offering twice offers once;
        ``again`` adds a fresh suffix, for a task whose stream was made anew.

        Raises:
            BrokenTransportError: An offer was not confirmed within ``give_up_s``.
        """
        await _aio(self._ensure_control)()
        suffix = f":{uuid.uuid4().hex}" if again else ""
        outs = []
        for pod_id in pods:
            body = json.dumps({"task_id": layout.task_id, "modeller": modeller, "pod": pod_id})
            out = _Out(
                control_subject(pod_id),
                body.encode(),
                {MSG_ID_HEADER: f"offer:{layout.task_id}:{pod_id}{suffix}"},
                CONTROL_STREAM,
                None,
                trio.current_time(),
            )
            await self._submit(out)
            outs.append(out)
        for out in outs:
            await out.done.wait()
            if out.error is not None:
                raise BrokenTransportError(f"a job offer was not confirmed: {out.error}")

    async def _ensure_control(self) -> None:
        from nats.js import api

        with contextlib.suppress(Exception):
            await self._js.stream_info(CONTROL_STREAM)
            return
        with contextlib.suppress(Exception):  # a concurrent creator won: fine
            await self._js.add_stream(
                api.StreamConfig(
                    name=CONTROL_STREAM,
                    subjects=[CONTROL_SUBJECTS],
                    retention=api.RetentionPolicy.WORK_QUEUE,
                    storage=api.StorageType.FILE,
                    num_replicas=self.options.replicas,
                    max_consumers=100_000,
                    duplicate_window=self.options.duplicate_window_s,
                    max_msg_size=4096,
                )
            )

    async def next_offer(self, pod_id: str) -> tuple[Offer, Any]:
        """Wait for the next job offer to ``pod_id``; ack it with :meth:`done_with`.

        The pod's control consumer holds one unacknowledged offer at a time, so
        tasks come one after another. Offers of tasks this connection already
        ran (a redelivery) are acknowledged and skipped.
        """
        box = self._offer_boxes.get(pod_id)
        while box is None:
            pushed = _Pushed()
            try:
                await _aio(self._bind_control)(pod_id, pushed.on_msg)
            except Exception:
                await trio.sleep(0.5)
                continue
            box = self._offer_boxes[pod_id] = pushed
        while True:
            msg = await box.take_one()
            try:
                data = json.loads(msg.data)
                offer = Offer(str(data["task_id"]), str(data["modeller"]), pod_id)
            except (ValueError, KeyError, TypeError):
                self._queue_ack(msg)  # not an offer: drop it for good
                continue
            if (pod_id, offer.task_id) in self._ran:
                self._queue_ack(msg)
                continue
            return offer, msg

    async def _bind_control(self, pod_id: str, callback: Callable[[Any], Awaitable[None]]) -> Any:
        from nats.js import api

        await self._ensure_control()
        name = f"pod_{token(pod_id)}"
        config = api.ConsumerConfig(
            name=name,
            durable_name=name,
            filter_subject=control_subject(pod_id),
            deliver_subject=f"{PREFIX}-deliver._control.{token(pod_id)}",
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.options.ack_wait_s,
            max_deliver=-1,
            max_ack_pending=1,
            num_replicas=self.options.replicas,
        )
        try:
            info = await self._js.consumer_info(CONTROL_STREAM, name)
        except Exception:
            info = await self._js.add_consumer(CONTROL_STREAM, config)
        return await self._js.subscribe_bind(
            CONTROL_STREAM, info.config, name, cb=callback, manual_ack=True
        )

    def working_on(self, offer_msg: Any) -> None:
        """Tell the broker the offer is in progress (its ack wait starts again)."""
        self._acks.append((offer_msg, b"+WPI"))
        self._acks_waiting.set()

    async def done_with(self, offer: Offer, offer_msg: Any, *, ran: bool = True) -> None:
        """Ack a job offer: this pod's part of the task is over (``ran``), or the
        offer was dropped unrun, so a later offer of the task is taken."""
        if ran:
            self._ran.add((offer.pod_id, offer.task_id))
        self._queue_ack(offer_msg)
        await self._flush_acks()

    async def task_exists(self, task_id: str) -> bool:
        return not await self._task_gone(TaskLayout(task_id))

    # ----------------------------------------------------------- publishing

    async def _publish_on(
        self, link: _SendLink, payload: bytes, seq: str, *, end: bool = False, after: int = 0
    ) -> None:
        headers = {
            MSG_ID_HEADER: link.layout.msg_id(link.sender, seq),
            SENDER_HEADER: link.sender,
            SEQ_HEADER: str(link.next_seq),
            AFTER_HEADER: str(after),
        }
        if end:
            headers[END_HEADER] = "1"
        link.next_seq += 1
        link.sent_more.set()
        link.unconfirmed += 1
        out = _Out(
            link.layout.subject(link.recipient),
            payload,
            headers,
            link.layout.stream,
            link,
            trio.current_time(),
            wire_seq=int(seq) if _is_number(seq) else None,
        )
        await self._submit(out)

    async def _submit(self, out: _Out) -> None:
        await self._room.acquire()
        self._published += 1
        self._queue_send.send_nowait(out)

    async def _publish_pump(self) -> None:
        while True:
            batch = [await self._queue.receive()]
            while len(batch) < self.options.max_batch:
                try:
                    batch.append(self._queue.receive_nowait())
                except trio.WouldBlock:
                    break
            self._batches += 1
            results = await _aio(self._publish_batch)(batch)
            now = trio.current_time()
            for out, result in zip(batch, results, strict=True):
                out.attempts += 1
                if result is None or result == "duplicate":
                    self._confirmed += 1
                    if result == "duplicate":
                        self._duplicates += 1
                    self._finish(out, None)
                elif now - out.first_sent >= self.options.give_up_s:
                    self._finish(out, f"not confirmed after {out.attempts} tries: {result}")
                else:
                    out.due = now + min(self.options.publish_timeout_s, 0.1 * 2**out.attempts)
                    self._retry.append(out)
            self._release_acks()

    def _finish(self, out: _Out, error: str | None) -> None:
        out.error = error
        out.done.set()
        self._room.release()
        link = out.link
        if link is not None and out.wire_seq is not None:
            self._unsent.get((link.layout.task_id, link.sender), {}).pop(out.wire_seq, None)
        if link is not None:
            if error is not None and link.failure is None:
                link.failure = f"the broker did not take a message to {link.recipient}: {error}"
                link.sent_more.set()
                self.forget_unsent_to((link.layout.task_id, link.sender), link.recipient)
            link.unconfirmed -= 1
            if link.unconfirmed == 0:
                link.drained.set()

    async def _retry_pump(self) -> None:
        seen = self._reconnects
        while True:
            await trio.sleep(0.05)
            if any(self._held_acks.values()):
                self._release_acks()  # those held past give_up_s go now
            if not self._retry:
                continue
            now = trio.current_time()
            reconnected = self._reconnects != seen
            seen = self._reconnects
            due = [out for out in self._retry if reconnected or out.due <= now]
            if due:
                self._retry = [out for out in self._retry if not (reconnected or out.due <= now)]
                due.sort(key=lambda out: int(out.headers.get(SEQ_HEADER, "0")))
                for out in due:
                    self._resent += 1
                    self._queue_send.send_nowait(out)

    async def _publish_batch(self, batch: list[_Out]) -> list[str | None]:
        """In asyncio: publish every message, then wait for the confirmations together."""
        futures: list[asyncio.Future[Any] | str] = []
        for out in batch:
            try:
                futures.append(
                    await self._js.publish_async(
                        out.subject,
                        out.payload,
                        wait_stall=None,  # our own outbox bounds what is in flight
                        stream=out.stream,
                        headers=dict(out.headers),
                    )
                )
            except Exception as exc:
                futures.append(repr(exc))
        pending = [f for f in futures if not isinstance(f, str)]
        if pending:
            await asyncio.wait(pending, timeout=self.options.publish_timeout_s)
        results: list[str | None] = []
        for future in futures:
            if isinstance(future, str):
                results.append(future)
            elif not future.done():
                future.cancel()
                results.append("no confirmation in time")
            elif future.cancelled():
                results.append("cancelled")
            elif future.exception() is not None:
                results.append(repr(future.exception()))
            else:
                results.append("duplicate" if future.result().duplicate else None)
        return results

    # ------------------------------------------------------------------ acks

    # Acks wait for this side's earlier sends: a message is acknowledged only once
    # every message its sender (``me``) had produced when the chart applied it is
    # confirmed by the broker, so a crash cannot lose an answer whose cause is gone.

    def expect_sent(self, sender: str, message: Message) -> None:
        """``sender``'s chart produced ``message`` (the executor's on_message hook, in
        the step itself); acks asked for from now on wait until the broker confirmed it."""
        key = (message.task_id, sender)
        if (key, message.recipient) not in self._failed_links:
            self._unsent.setdefault(key, {})[message.seq] = message.recipient

    def forget_unsent_to(self, key: tuple[str, str], recipient: str) -> None:
        """The link to ``recipient`` failed: what it never sent is no longer awaited."""
        self._failed_links.add((key, recipient))
        unsent = self._unsent.get(key, {})
        for seq in [seq for seq, to in unsent.items() if to == recipient]:
            del unsent[seq]
        self._release_acks()

    def _ack_once_sent(self, msg: Any, key: tuple[str, str]) -> None:
        unsent = self._unsent.get(key)
        if not unsent:
            self._queue_ack(msg)
            return
        self._held_acks.setdefault(key, deque()).append((max(unsent), msg, trio.current_time()))

    def _release_acks(self) -> None:
        limit = trio.current_time() - self.options.give_up_s
        for key, held in self._held_acks.items():
            unsent = self._unsent.get(key, {})
            floor = min(unsent) if unsent else math.inf
            while held and (held[0][0] < floor or held[0][2] < limit):
                self._queue_ack(held.popleft()[1])

    def _queue_ack(self, msg: Any) -> None:
        self._acks.append((msg, b"+ACK"))
        self._acks_waiting.set()

    async def _ack_pump(self) -> None:
        while True:
            await self._acks_waiting.wait()
            await self._flush_acks()

    async def _flush_acks(self) -> None:
        self._acks_waiting = trio.Event()
        while self._acks:
            batch, self._acks = self._acks, []
            self._acked += len(batch)
            await _aio(_ack_all)(batch)


async def _ack_all(acks: list[tuple[Any, bytes]]) -> None:
    for msg, kind in acks:
        with contextlib.suppress(Exception):  # the link is down: it is delivered again
            await msg._client.publish(msg.reply, kind)


def _is_number(text: str) -> bool:
    """ASCII digits only (``str.isdigit`` also takes ``²``), and not absurdly long."""
    return 0 < len(text) <= 18 and text.isascii() and text.isdigit()


def single_exception(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception inside nested single-member groups, or None."""
    found: BaseException = group
    while isinstance(found, BaseExceptionGroup):
        if len(found.exceptions) != 1:
            return None
        found = found.exceptions[0]
    return found


async def _unsubscribe(sub: Any) -> None:
    if sub is None:
        return
    with (
        trio.CancelScope(shield=True),
        trio.move_on_after(2),
        contextlib.suppress(Exception),
    ):
        await _aio(sub.unsubscribe)()


async def _connect(options: BrokerOptions, log: Callable[[str], None]) -> Any:
    import nats

    kwargs: dict[str, Any] = {
        "servers": list(options.servers),
        "name": "fsm-protocol",
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.2,
        "connect_timeout": 2,
        "ping_interval": 5,
        "max_outstanding_pings": 3,
    }
    if options.ssl_context is not None:
        kwargs["tls"] = options.ssl_context
    for name in ("user", "password", "token"):
        if getattr(options, name) is not None:
            kwargs[name] = getattr(options, name)
    if options.creds_file is not None:
        kwargs["user_credentials"] = options.creds_file
    if options.nkeys_seed_file is not None:
        kwargs["nkeys_seed"] = options.nkeys_seed_file

    seen: list[Exception] = []

    async def on_error(exc: Exception) -> None:  # runs in asyncio, for every failed attempt
        seen.append(exc)
        del seen[:-1]
        if not connected and _refused(exc):
            raise _Refused(exc)  # the broker said no: retrying cannot help

    connected = False
    kwargs["error_cb"] = on_error
    last: Exception | None = None
    with trio.move_on_after(options.connect_for_s):
        while True:
            try:
                nc = await _aio(nats.connect)(**kwargs)
                connected = True
                return nc
            except _Refused as exc:
                last = exc.cause
                break
            except Exception as exc:
                last = exc
                if _refused(exc):
                    break
                await trio.sleep(0.5)
    last = last or (seen[-1] if seen else None)
    raise BrokenTransportError(
        f"cannot reach the broker at {', '.join(options.servers)}: "
        f"{_describe(last) if last is not None else 'timed out'}"
    )


class _Refused(Exception):
    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _refused(exc: BaseException) -> bool:
    """An answer from the broker that another try will not change: credentials, TLS."""
    text = str(exc).lower()
    return "authorization" in text or "authentication" in text or isinstance(exc, ssl.SSLError)


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


# --------------------------------------------------------------- running


async def run_modeller_via_broker(
    broker: Broker,
    *,
    task_id: str,
    jobs: Mapping[str, JobRequestBody],
    configs: Mapping[str, object],
    algorithm: Any = None,
    timeouts: TaskTimeouts = DEFAULT_TIMEOUTS,
    require_all_pods: bool = False,
    on_message: Callable[[str, Message], None] | None = None,
    results: ResultsFolder | None = None,
    ack_when: AckWhen | None = None,
    rejoin: bool = False,
    log: Callable[[str], None] = lambda text: None,
) -> ModellerRun:
    """Make the task's stream, offer the task to its pods, run it, remove the stream.

    With ``results``, every message goes to its folder too, and a pod's message
    is acknowledged only once its effects are on disk (``ack_when="durable"``,
    the default then; else ``"applied"``): a modeller killed before the results
    were synced gets those messages again from the stream when it resumes.

    With ``rejoin`` (a resumed modeller) and the task's stream still there, the
    modeller takes the task up again instead: it replays its inbox from the
    stream's start (see :meth:`Broker.rejoin_task`), so its chart reaches the
    state the killed modeller had; what it sends again carries the same
    ``Fsmp-Seq`` and is dropped by the pods, which carry on where they were.
    """
    pods = list(jobs)
    layout = await broker.rejoin_task(task_id, MODELLER) if rejoin else None
    again = rejoin and layout is None
    if layout is not None:
        log(f"task {task_id}: stream {layout.stream} found; replaying the modeller's inbox")
    else:
        layout = await broker.create_task(task_id, [*pods, MODELLER])

    if ack_when is None:
        ack_when = "durable" if results is not None else "applied"
    if ack_when == "durable" and results is None:
        raise ConfigError('ack_when="durable" needs results: a folder that says when it is')

    def seen(key: str, message: Message) -> None:
        if message.sender == MODELLER:
            broker.expect_sent(MODELLER, message)
        if results is not None:
            results.on_message(key, message)
        if on_message is not None:
            on_message(key, message)

    transports = {
        pod: broker.transport(layout, me=MODELLER, peer=pod, ack_when=ack_when) for pod in pods
    }
    if results is not None:
        results.on_durable = lambda pod, message: transports[pod].durable(message)
    links: dict[str, Transport] = dict(transports)
    # A task made again (its stream was gone) is offered under new ids: the broker
    # still remembers the earlier offers' ids and would drop them as repeats.
    await broker.offer_all(layout, pods, MODELLER, again=again)
    log(f"task {task_id}: stream {layout.stream} ready; offered to {len(pods)} pods")
    run = await run_modeller(
        task_id=task_id,
        jobs=jobs,
        configs=configs,
        links=links,
        algorithm=algorithm,
        timeouts=timeouts,
        require_all_pods=require_all_pods,
        on_message=seen,
    )
    left = await broker.remove_task(layout, MODELLER, pods)
    if left:
        log(f"task {task_id}: removed the stream before {', '.join(left)} ended its side")
    return run


async def serve_offers(
    broker: Broker,
    pod: Pod,
    *,
    serve: bool = False,
    stop: trio.Event | None = None,
    on_report: Callable[[str, WorkerReport], None] = lambda task_id, report: None,
    on_message: Callable[[str, Message], None] | None = None,
    log: Callable[[str], None] = lambda text: None,
) -> list[WorkerReport]:
    """Take job offers for ``pod`` and run each task; one unless ``serve``.

    Between tasks, ``stop`` (a SIGTERM, say) ends the loop; during a task it
    ends the loop once that task has ended. An offer is acknowledged only
    when its task ended here, so a pod killed mid-task gets it again on restart
    and replays the task from its inbox.
    """
    stop = stop if stop is not None else trio.Event()
    reports: list[WorkerReport] = []
    while not stop.is_set():
        taken: tuple[Offer, Any] | None = None
        with trio.CancelScope() as waiting:

            async def watch(scope: trio.CancelScope = waiting) -> None:
                await stop.wait()
                scope.cancel()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                taken = await broker.next_offer(pod.pod_id)
                nursery.cancel_scope.cancel()
        if taken is None:
            break
        offer, offer_msg = taken
        if not await broker.task_exists(offer.task_id):
            log(f"offer of task {offer.task_id} dropped: its stream is gone (the task ended)")
            await broker.done_with(offer, offer_msg, ran=False)
            continue
        log(f"task {offer.task_id}: offered; running it")
        layout = TaskLayout(offer.task_id)
        transport = broker.transport(layout, me=pod.pod_id, peer=offer.modeller, ack_when="end")
        async with trio.open_nursery() as nursery:

            async def keep_offer(message: Any = offer_msg) -> None:
                while True:
                    await trio.sleep(broker.options.ack_wait_s / 3)
                    broker.working_on(message)

            nursery.start_soon(keep_offer)
            report = await run_worker(pod, transport, on_message=on_message)
            nursery.cancel_scope.cancel()
        broker.close_inbox(offer.task_id, pod.pod_id)
        await broker.done_with(offer, offer_msg)
        reports.append(report)
        on_report(offer.task_id, report)
        if not serve:
            break
    return reports
