"""Runs chart machines under trio: one event at a time, I/O between steps.

The executor owns the event queue of one side (a worker, or the modeller with
one machine per worker). Messages received, activities finishing and timers
expiring all become events on that queue; the engine processes them one by
one, run to completion, and the executor then does the I/O the step asked
for. Nothing protocol-related is decided here: the charts decide.
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, final

import attrs
import trio

from .._base._errors import DecodeError, InternalError, ProtocolViolation, TransportError
from .._core._engine import Machine, Step
from .._wire._messages import Message
from ._transport import Transport


@attrs.frozen
class ActivityContext:
    """Handed to a state's ``do`` activity: where it runs and how it reports.

    Events posted after the state was left are dropped, so an activity that
    was overtaken (a cancel arrived mid-batch) can never act on a stale state.
    """

    key: str
    state: str
    _poster: Callable[[str, Any], None] = attrs.field(alias="poster", repr=False)

    def post(self, event: str, data: Any = None) -> None:
        """Raise an internal event (the activity's outcome) on this machine."""
        self._poster(event, data)

    def send(self, message: Message) -> None:
        """Ask to send ``message``; its ``seq`` is stamped when it goes out."""
        self._poster(f"send:{message.type.value}", message)


@attrs.frozen
class Violation:
    """A peer message the chart refused, kept for the outcome and the report."""

    key: str
    state: str
    event: str
    message: str


@attrs.frozen
class _Item:
    key: str
    name: str
    data: Any
    origin: tuple[str, int] | None = None
    # Set once the item was processed: a peer with MAX_QUEUED messages waiting has its
    # next line read only then (bounded memory per peer).
    done: trio.Event | None = None


@attrs.define
class Slot:
    """One machine and the peer it talks to."""

    key: str
    machine: Machine
    bindings: object
    transport: Transport | None
    eof_event: str
    bad_input_event: str = "bad_input"
    idle_timeout: float | None = None
    idle_ok: Callable[[Machine], bool] | None = None
    outbox: trio.MemorySendChannel[Message] | None = None
    last_seq: int = -1
    queued: int = 0


_CALL = "__call__"

MAX_QUEUED = 8
"""Decoded messages of one peer that may wait for the chart; then reading from it pauses."""

# After an idle deadline, a last short wait for a line that may already have arrived: a
# deadline can pass while this process is paused, with the peer's lines in the socket.
_IDLE_GRACE_S = 0.05

StepHook = Callable[[str, Step], None]
MessageHook = Callable[[str, Message], None]


@final
class Executor:
    """Drives the machines of one side until each reaches a final state."""

    def __init__(
        self,
        *,
        options: Mapping[str, float],
        first_seq: int = 0,
        on_step: StepHook | None = None,
        on_message: MessageHook | None = None,
        expected_task: str | None = None,
        keep_trace: bool = True,
    ) -> None:
        self._options = dict(options)
        self._keep_trace = keep_trace
        self._seq = first_seq
        self._on_step = on_step
        self._on_message = on_message
        self._expected_task = expected_task
        self._slots: dict[str, Slot] = {}
        self._internal: deque[_Item] = deque()
        self._send, self._queue = trio.open_memory_channel[_Item](math.inf)
        self._tokens: dict[tuple[str, str], int] = {}
        self._scopes: dict[tuple[str, str], trio.CancelScope] = {}
        self._next_token = 0
        self._nursery: trio.Nursery | None = None
        self.trace: list[Message] = []
        self.violations: list[Violation] = []

    # ---------------------------------------------------------------- setup

    def add(self, slot: Slot) -> None:
        self._slots[slot.key] = slot

    def slot(self, key: str) -> Slot:
        return self._slots[key]

    @property
    def slots(self) -> Mapping[str, Slot]:
        return self._slots

    def option(self, name: str) -> float:
        return self._options[name]

    @property
    def options(self) -> Mapping[str, float]:
        """The chart's options (timer lengths) as this run has set them."""
        return self._options

    def set_option(self, name: str, value: float) -> None:
        """Change a timer length; states entered from now on use the new value."""
        self._options[name] = value

    def expect_task(self, task_id: str) -> None:
        """From now on, refuse messages of any other task."""
        self._expected_task = task_id

    # --------------------------------------------------------------- events

    def post(self, key: str, name: str, data: Any = None) -> None:
        """Queue an external event (a message, a timer, a transport fault)."""
        self._send.send_nowait(_Item(key, name, data))

    def raise_event(self, key: str, name: str, data: Any = None) -> None:
        """Queue an internal event; it is processed before any external one."""
        self._internal.append(_Item(key, name, data))

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` in the event loop, between steps (e.g. a user's cancel)."""
        self._send.send_nowait(_Item("", _CALL, callback))

    def start_timer(self, key: str, seconds: float, name: str, data: Any = None) -> None:
        """Post ``name`` after ``seconds`` unless the run ends first."""
        nursery = self._require_nursery()

        async def timer() -> None:
            await trio.sleep(seconds)
            self.post(key, name, data)

        nursery.start_soon(timer)

    async def _next(self) -> _Item:
        if self._internal:
            return self._internal.popleft()
        return await self._queue.receive()

    # ------------------------------------------------------------------ run

    async def run(self) -> None:
        """Run every machine to a final state, then flush and close transports."""
        async with trio.open_nursery() as outer:
            for slot in self._slots.values():
                if slot.transport is not None:
                    send, recv = trio.open_memory_channel[Message](math.inf)
                    slot.outbox = send
                    outer.start_soon(self._send_loop, slot, recv)
            async with trio.open_nursery() as inner:
                self._nursery = inner
                for slot in self._slots.values():
                    if slot.transport is not None:
                        inner.start_soon(self._receive_loop, slot)
                    leaf = slot.machine.state
                    for state in reversed(tuple(slot.machine.chart.ancestors(leaf))):
                        self._activate(slot, state)
                while not all(s.machine.is_final for s in self._slots.values()):
                    item = await self._next()
                    # Killed while an event was on its way: act on nothing more (the
                    # send loop may already be gone).
                    await trio.lowlevel.checkpoint_if_cancelled()
                    self._process(item)
                    if item.name.startswith("recv:"):
                        self._applied(self._slots[item.key], item.data)
                    if item.done is not None:
                        self._slots[item.key].queued -= 1
                        item.done.set()
                inner.cancel_scope.cancel()
            self._nursery = None
            for slot in self._slots.values():
                if slot.outbox is not None:
                    slot.outbox.close()

    @staticmethod
    def _applied(slot: Slot, message: Message) -> None:
        """Tell a transport that acknowledges (a broker's) that ``message`` was applied."""
        applied = getattr(slot.transport, "applied", None)
        if applied is not None:
            applied(message)

    def _require_nursery(self) -> trio.Nursery:
        if self._nursery is None:
            raise InternalError("the executor is not running")
        return self._nursery

    async def _send_loop(self, slot: Slot, outbox: trio.MemoryReceiveChannel[Message]) -> None:
        transport = slot.transport
        assert transport is not None
        failed = False
        async with outbox:
            async for message in outbox:
                if failed:
                    continue  # drain: the peer is gone, later messages cannot reach it
                try:
                    await transport.send(message)
                except TransportError as exc:
                    failed = True
                    self.post(slot.key, slot.eof_event, exc)
        with contextlib.suppress(TransportError):
            await transport.aclose()

    async def _receive_loop(self, slot: Slot) -> None:
        transport = slot.transport
        assert transport is not None
        while True:
            try:
                with trio.move_on_after(slot.idle_timeout or math.inf) as idle:
                    message = await transport.receive()
                if idle.cancelled_caught:
                    if slot.idle_ok is not None and slot.idle_ok(slot.machine):
                        continue  # silence is expected here: the peer waits on us
                    with trio.move_on_after(_IDLE_GRACE_S) as grace:
                        message = await transport.receive()
                    if grace.cancelled_caught:
                        self.post(
                            slot.key,
                            slot.eof_event,
                            TransportError(f"{slot.key} sent nothing for {slot.idle_timeout:g} s"),
                        )
                        return
            except (trio.EndOfChannel, trio.ClosedResourceError, trio.BrokenResourceError):
                self.post(slot.key, slot.eof_event, None)
                return
            except DecodeError as exc:
                self.post(slot.key, slot.bad_input_event, exc)
                continue
            except TransportError as exc:
                self.post(slot.key, slot.eof_event, exc)
                return
            problem = self._envelope_problem(slot, message)
            if problem is not None:
                self.post(slot.key, slot.bad_input_event, ProtocolViolation(problem))
                continue
            done = trio.Event()
            slot.queued += 1
            self._send.send_nowait(
                _Item(slot.key, f"recv:{message.type.value}", message, None, done)
            )
            if slot.queued >= MAX_QUEUED:
                await done.wait()

    def _envelope_problem(self, slot: Slot, message: Message) -> str | None:
        if self._expected_task is not None and message.task_id != self._expected_task:
            return (
                f"message {message.type.value} is for task {message.task_id!r}, "
                f"expected task {self._expected_task!r}"
            )
        if message.seq <= slot.last_seq:
            return (
                f"seq of {message.type.value} did not rise: found {message.seq}, "
                f"expected more than {slot.last_seq}"
            )
        slot.last_seq = message.seq
        return None

    # ------------------------------------------------------------ stepping

    def _process(self, item: _Item) -> None:
        if item.name == _CALL:
            item.data()
            return
        slot = self._slots[item.key]
        if (
            item.origin is not None
            and self._tokens.get((item.key, item.origin[0])) != item.origin[1]
        ):
            return  # posted by an activity or timer of a state since left
        machine = slot.machine
        name, data = item.name, item.data
        if machine.is_final:
            if name.startswith("recv:"):
                self._violation(slot, name, f"{name} arrived after the end ({machine.state})")
            return  # internal events for an ended machine have nothing left to do
        if name.startswith("send:"):
            data = attrs.evolve(data, seq=self._seq)
        try:
            step = machine.fire(name, data)
        except ProtocolViolation as exc:
            if name.startswith("send:"):
                raise InternalError(
                    f"this side tried to send {name[5:]} in state {machine.state!r}, "
                    f"which its own chart forbids: {exc}"
                ) from exc
            if not name.startswith("recv:") and name != slot.bad_input_event:
                raise InternalError(f"internal event refused: {exc}") from exc
            self._violation(slot, name, str(exc))
            if name != slot.bad_input_event and machine.accepts(slot.bad_input_event, exc):
                self._process(_Item(item.key, slot.bad_input_event, exc))
            return
        if name.startswith("send:"):
            self._seq += 1
            if slot.outbox is not None:
                slot.outbox.send_nowait(data)
            self._record(slot, data)
        elif name.startswith("recv:"):
            self._record(slot, data)
        if self._on_step is not None:
            self._on_step(slot.key, step)
        for state in step.exited:
            self._deactivate(slot, state)
        for state in step.entered:
            self._activate(slot, state)

    def _record(self, slot: Slot, message: Message) -> None:
        if self._keep_trace:
            self.trace.append(message)
        if self._on_message is not None:
            self._on_message(slot.key, message)

    def _violation(self, slot: Slot, event: str, text: str) -> None:
        self.violations.append(Violation(slot.key, slot.machine.state, event, text))

    # ---------------------------------------------------- activities, timers

    def _activate(self, slot: Slot, state_name: str) -> None:
        state = slot.machine.chart.state(state_name)
        self._next_token += 1
        token = self._next_token
        self._tokens[(slot.key, state_name)] = token
        if state.do is None and not state.after:
            return
        nursery = self._require_nursery()
        scope = trio.CancelScope()
        self._scopes[(slot.key, state_name)] = scope
        origin = (state_name, token)

        def post(name: str, data: Any = None) -> None:
            self._send.send_nowait(_Item(slot.key, name, data, origin))

        jobs: list[Callable[[], Awaitable[None]]] = []
        if state.do is not None:
            activity = getattr(slot.bindings, f"do_{state.do}")
            context = ActivityContext(slot.key, state_name, post)
            jobs.append(lambda: activity(context))
        for timer in state.after:
            seconds = (
                self._options[timer.seconds] if isinstance(timer.seconds, str) else timer.seconds
            )

            async def expire(seconds: float = seconds, event: str = timer.event) -> None:
                await trio.sleep(seconds)
                post(event)

            jobs.append(expire)

        async def activation() -> None:
            with scope:
                async with trio.open_nursery() as jobs_nursery:
                    for job in jobs:
                        jobs_nursery.start_soon(job)

        nursery.start_soon(activation)

    def _deactivate(self, slot: Slot, state_name: str) -> None:
        self._tokens.pop((slot.key, state_name), None)
        scope = self._scopes.pop((slot.key, state_name), None)
        if scope is not None:
            scope.cancel()
