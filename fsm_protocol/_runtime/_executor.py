"""Runs chart machines under trio: one event at a time, I/O between steps.

The executor owns the event queue of one side (a worker, or the modeller with
one machine per worker). Messages received, activities finishing and timers
expiring all become events on that queue; the engine processes them one by
one, run to completion, and the executor then does the I/O the step asked
for. Nothing protocol-related is decided here: the charts decide.
"""

from __future__ import annotations

import contextlib
import heapq
import inspect
import math
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple, final

import attrs
import trio

from .._base._errors import DecodeError, InternalError, ProtocolViolation, TransportError
from .._core._chart import Chart
from .._core._engine import Machine, Step
from .._wire._messages import Message, MessageType
from ._collector import collector_tuned
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
        self._poster(_SEND[message.type], message)


@attrs.frozen
class Violation:
    """A peer message the chart refused, kept for the outcome and the report."""

    key: str
    state: str
    event: str
    message: str


class _Item(NamedTuple):
    """One event on the queue (a tuple: one is made for every message)."""

    key: str
    name: str
    data: Any
    origin: tuple[str, int] | None = None
    # A message read by the receive loop: counted against MAX_QUEUED until the chart
    # has taken it, and acknowledged to a transport that wants to know.
    received: bool = False


# The event names of sending and receiving each message type, made once.
_SEND: Mapping[MessageType, str] = {t: f"send:{t.value}" for t in MessageType}
_RECV: Mapping[MessageType, str] = {t: f"recv:{t.value}" for t in MessageType}


@attrs.define
class Slot:
    """One machine and the peer it talks to.

    ``after_step`` is called after every step of ``machine``, before the
    executor does the step's I/O (the modeller refreshes the link's marks there).
    """

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
    # Decoded messages of this peer waiting for the chart (at most MAX_QUEUED, then
    # reading pauses until ``drained`` is set).
    queued: int = 0
    drained: trio.Event | None = None
    after_step: Callable[[Step], None] | None = None
    # Sends go straight to the transport (its send_nowait) instead of through outbox.
    direct: Callable[[Message], None] | None = None
    send_failed: bool = False
    tokens: dict[str, int] = attrs.field(factory=dict)
    scopes: dict[str, trio.CancelScope] = attrs.field(factory=dict)
    # When the peer was last heard from (trio time), for the idle watch.
    heard: float = 0.0
    # What entering each state of the machine's chart starts (the executor's, cached).
    plans: Mapping[str, _Plan | None] | None = None


@attrs.frozen
class _Plan:
    """What entering a state starts: its ``do`` activity and its ``after`` timers."""

    do: str | None
    timers: tuple[tuple[float | str, str], ...]
    method: str = attrs.field(init=False)  # the bindings' method: do_<do>

    @method.default
    def _method(self) -> str:
        return f"do_{self.do}"


_CALL = "__call__"
# Start a plain (not ``async def``) activity: it runs in the run loop, as an event.
_START = "__start__"

MAX_QUEUED = 8
"""Decoded messages of one peer that may wait for the chart; then reading from it pauses."""

# After an idle deadline, a last short wait for a line that may already have arrived: a
# deadline can pass while this process is paused, with the peer's lines in the socket.
_IDLE_GRACE_S = 0.05

StepHook = Callable[[str, Step], None]
MessageHook = Callable[[str, Message], None]


@final
class Executor:
    """Drives the machines of one side until each reaches a final state.

    Per event: one engine step, its actions, then its I/O. Received messages
    and expired timers arrive on one queue, which the run loop drains in
    rounds: each round takes the events queued when it began, then lets the
    other tasks run. Timers live in one heap served by one task. A state's
    ``async def`` activity is one task, started only for states that declare
    one; a plain-function activity (``def do_x(ctx)``) runs in the loop as an
    event of the round after its state was entered, without a task, and may
    return an awaitable, which then gets its task. A peer whose transport can
    hand over its lines as they are sent (the in-memory one) has them decoded
    straight onto the queue. ``keep_trace=False`` keeps no copy of the
    messages (the ``on_message`` hook still sees each one).
    """

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
        self._keep_trace = keep_trace
        self._slots: dict[str, Slot] = {}
        self._internal: deque[_Item] = deque()
        self._events: deque[_Item] = deque()
        # The run loop, while it waits for an event.
        self._parked: trio.lowlevel.Task | None = None
        self._next_token = 0
        self._nursery: trio.Nursery | None = None
        self._plans: dict[int, dict[str, _Plan | None]] = {}
        self._async: dict[tuple[type, str], bool] = {}
        self._timers: list[tuple[float, int, _Item]] = []
        self._timer_count = 0
        self._timer_scope: trio.CancelScope | None = None
        self._live = 0
        self._queued = False
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
        self._put(_Item(key, name, data))

    def _put(self, item: _Item) -> None:
        self._events.append(item)
        if self._parked is not None:
            task, self._parked = self._parked, None
            trio.lowlevel.reschedule(task)

    async def _wait(self) -> None:
        """Park the run loop until an event is queued."""
        self._parked = trio.lowlevel.current_task()

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._parked = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def raise_event(self, key: str, name: str, data: Any = None) -> None:
        """Queue an internal event; it is processed before any external one."""
        self._internal.append(_Item(key, name, data))

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` in the event loop, between steps (e.g. a user's cancel)."""
        self._put(_Item("", _CALL, callback))

    def start_timer(self, key: str, seconds: float, name: str, data: Any = None) -> None:
        """Post ``name`` after ``seconds`` unless the run ends first."""
        self._require_nursery()
        self._arm(seconds, _Item(key, name, data))

    def _arm(self, seconds: float, item: _Item) -> None:
        deadline = trio.current_time() + seconds
        self._timer_count += 1
        heapq.heappush(self._timers, (deadline, self._timer_count, item))
        scope = self._timer_scope
        if scope is not None and deadline < scope.deadline:
            scope.deadline = deadline

    async def _timer_loop(self) -> None:
        """Post each timer's event when it is due; one task for every timer of the run."""
        timers = self._timers
        while True:
            with trio.CancelScope(deadline=timers[0][0] if timers else math.inf) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            now = trio.current_time()
            while timers and timers[0][0] <= now:
                item = heapq.heappop(timers)[2]
                if item.origin is None or self._current(item):
                    self._put(item)

    def _current(self, item: _Item) -> bool:
        """Whether the state that posted ``item`` (an activity or a timer) is still active."""
        assert item.origin is not None
        slot = self._slots[item.key]
        return slot.tokens.get(item.origin[0]) == item.origin[1]

    # ------------------------------------------------------------------ run

    async def run(self) -> None:
        """Run every machine to a final state, then flush and close transports."""
        with collector_tuned():
            await self._run()

    async def _run(self) -> None:
        async with trio.open_nursery() as outer:
            for slot in self._slots.values():
                transport = slot.transport
                if transport is None:
                    continue
                slot.heard = trio.current_time()
                deliver_to = getattr(transport, "deliver_to", None)
                if deliver_to is not None:
                    deliver_to(*self._taker(slot))
                direct = getattr(transport, "send_nowait", None)
                if direct is not None:
                    slot.direct = direct
                else:
                    send, recv = trio.open_memory_channel[Message](math.inf)
                    slot.outbox = send
                    outer.start_soon(self._send_loop, slot, recv)
            async with trio.open_nursery() as inner:
                self._nursery = inner
                inner.start_soon(self._timer_loop)
                self._live = 0
                for slot in self._slots.values():
                    if slot.transport is not None:
                        inner.start_soon(self._receive_loop, slot)
                    leaf = slot.machine.state
                    for state in reversed(tuple(slot.machine.chart.ancestors(leaf))):
                        self._activate(slot, state)
                    if not slot.machine.is_final:
                        self._live += 1
                await self._loop()
                inner.cancel_scope.cancel()
            self._nursery = None
            self._timer_scope = None
            for slot in self._slots.values():
                if slot.outbox is not None:
                    slot.outbox.close()
                elif slot.direct is not None and slot.transport is not None:
                    with contextlib.suppress(TransportError):
                        await slot.transport.aclose()

    async def _loop(self) -> None:
        internal = self._internal
        events = self._events
        # Each round takes the events queued when it began (and what plain activities
        # of the round post): a modeller keeps up with however many workers fill its
        # queue, and an in-memory worker takes one batch per round, so no side races
        # ahead of the others. A step that queued a message for a send loop (over a
        # network) ends the round: the send loop gets its turn at once, as a
        # transport's own send would take one.
        # Invariant: every round begins at a checkpoint, so a run killed while events
        # were on their way acts on none of them (its send loops may already be gone).
        quota = 0
        while self._live:
            if internal:
                item = internal.popleft()
            else:
                if not events:
                    await self._wait()
                    quota = len(events)
                elif not quota:
                    await trio.lowlevel.checkpoint()
                    quota = len(events)
                item = events.popleft()
                quota -= 1
            if item.name is _START:
                queued = len(events)
                self._start(item)
                quota += len(events) - queued
                continue
            self._process(item)
            if item.received:
                slot = self._slots[item.key]
                self._applied(slot, item.data)
                slot.queued -= 1
                if slot.drained is not None and slot.queued < MAX_QUEUED:
                    slot.drained.set()
                    slot.drained = None
            if self._queued:
                # A send loop has a message to write: the round ends, and the next begins
                # only after it has had its turn (two scheduler batches: trio runs the
                # tasks of a batch in any order). So this side's messages leave in the
                # order of their seq even when several links share one stream (stdio).
                self._queued = False
                await trio.lowlevel.checkpoint()
                await trio.lowlevel.checkpoint()
                quota = len(events)

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
                if not failed:  # else drain: the peer is gone, later messages cannot reach it
                    try:
                        await transport.send(message)
                    except TransportError as exc:
                        failed = True
                        self.post(slot.key, slot.eof_event, exc)
        with contextlib.suppress(TransportError):
            await transport.aclose()

    async def _receive_loop(self, slot: Slot) -> None:
        """Receive until the peer ends; a silence of ``idle_timeout`` ends the link too.

        The idle watch is one cancel scope per idle period, not one per message:
        when it expires early (a message came meanwhile), it is set again from
        the time of the last message. Lines a transport hands over as they are
        sent (:meth:`_taker`) count as heard too; this loop then sees only the
        end of the peer's input (and lines written around the hand-over).
        """
        transport = slot.transport
        assert transport is not None
        idle = math.inf if slot.idle_timeout is None else slot.idle_timeout
        current_time = trio.current_time
        more: Callable[[], Message] | None = getattr(transport, "receive_nowait", None)
        slot.heard = current_time()
        while True:
            with trio.CancelScope(deadline=slot.heard + idle):
                while True:
                    try:
                        message = await transport.receive()
                    except (trio.EndOfChannel, trio.ClosedResourceError, trio.BrokenResourceError):
                        self.post(slot.key, slot.eof_event, None)
                        return
                    except DecodeError as exc:
                        slot.heard = current_time()
                        self.post(slot.key, slot.bad_input_event, exc)
                        continue
                    except TransportError as exc:
                        self.post(slot.key, slot.eof_event, exc)
                        return
                    slot.heard = current_time()
                    self._received(slot, message)
                    if more is not None:
                        # Take what is already there without a scheduler round trip each.
                        while slot.drained is None:
                            try:
                                message = more()
                            except (
                                trio.WouldBlock,
                                trio.EndOfChannel,
                                trio.ClosedResourceError,
                                trio.BrokenResourceError,
                                TransportError,
                            ):
                                break  # the awaiting receive above meets whatever ended it
                            except DecodeError as exc:
                                self.post(slot.key, slot.bad_input_event, exc)
                                continue
                            self._received(slot, message)
                    if slot.drained is not None:
                        break  # MAX_QUEUED of its messages wait for the chart
            if slot.drained is not None:
                # Bounded memory per peer: read on once the chart has caught up. The wait
                # is ours, not the peer's silence, so the idle watch starts again after it.
                await slot.drained.wait()
                slot.heard = current_time()
                continue
            if current_time() - slot.heard < idle:
                continue  # heard from it since the watch was set: watch the rest
            if slot.idle_ok is not None and slot.idle_ok(slot.machine):
                slot.heard = current_time()
                continue  # silence is expected here: the peer waits on us
            # A deadline can pass while this process is paused with the peer's lines in
            # the socket: read what already arrived before declaring the peer silent.
            try:
                with trio.move_on_after(_IDLE_GRACE_S) as grace:
                    message = await transport.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError, trio.BrokenResourceError):
                self.post(slot.key, slot.eof_event, None)
                return
            except DecodeError as exc:
                slot.heard = current_time()
                self.post(slot.key, slot.bad_input_event, exc)
                continue
            except TransportError as exc:
                self.post(slot.key, slot.eof_event, exc)
                return
            if not grace.cancelled_caught:
                slot.heard = current_time()
                self._received(slot, message)
                continue
            if current_time() - slot.heard < idle:
                continue  # a line was handed over during the grace
            self.post(
                slot.key,
                slot.eof_event,
                TransportError(f"{slot.key} sent nothing for {slot.idle_timeout:g} s"),
            )
            return

    def _taker(self, slot: Slot) -> tuple[Callable[[Message], None], Callable[[DecodeError], None]]:
        """What a transport that hands over lines as they are sent calls for each one.

        Runs in the sender's task, so it only queues: a message, after the same
        envelope checks as the receive loop's, or the line's decoding error.
        """
        watch = slot.idle_timeout is not None
        current_time = trio.lowlevel.current_clock().current_time
        key = slot.key

        def take(message: Message) -> None:
            if watch:
                slot.heard = current_time()
            problem = self._envelope_problem(slot, message)
            if problem is not None:
                self.post(key, slot.bad_input_event, ProtocolViolation(problem))
                return
            self._put(_Item(key, _RECV[message.type], message))

        def refuse(error: DecodeError) -> None:
            if watch:
                slot.heard = current_time()
            self.post(key, slot.bad_input_event, error)

        return take, refuse

    def _received(self, slot: Slot, message: Message) -> None:
        problem = self._envelope_problem(slot, message)
        if problem is not None:
            self.post(slot.key, slot.bad_input_event, ProtocolViolation(problem))
            return
        slot.queued += 1
        if slot.queued >= MAX_QUEUED and slot.drained is None:
            slot.drained = trio.Event()
        self._put(_Item(slot.key, _RECV[message.type], message, received=True))

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
        name = item.name
        if name == _CALL:
            item.data()
            return
        slot = self._slots[item.key]
        origin = item.origin
        if origin is not None and slot.tokens.get(origin[0]) != origin[1]:
            return  # posted by an activity or timer of a state since left
        machine = slot.machine
        data = item.data
        kind = name[:5]
        if machine.is_final:
            if kind == "recv:":
                self._violation(slot, name, f"{name} arrived after the end ({machine.state})")
            return  # internal events for an ended machine have nothing left to do
        if kind == "send:":
            data = _stamped(data, self._seq)
        try:
            step = machine.fire(name, data)
        except ProtocolViolation as exc:
            if kind == "send:":
                raise InternalError(
                    f"this side tried to send {name[5:]} in state {machine.state!r}, "
                    f"which its own chart forbids: {exc}"
                ) from exc
            if kind != "recv:" and name != slot.bad_input_event:
                raise InternalError(f"internal event refused: {exc}") from exc
            self._violation(slot, name, str(exc))
            if name != slot.bad_input_event and machine.accepts(slot.bad_input_event, exc):
                self._process(_Item(item.key, slot.bad_input_event, exc))
            return
        if slot.after_step is not None:
            slot.after_step(step)
        if kind == "send:":
            self._seq += 1
            self._transmit(slot, data)
        if kind == "send:" or kind == "recv:":
            if self._keep_trace:
                self.trace.append(data)
            if self._on_message is not None:
                self._on_message(slot.key, data)
        if self._on_step is not None:
            self._on_step(slot.key, step)
        if step.exited or step.entered:
            for state in step.exited:
                self._deactivate(slot, state)
            for state in step.entered:
                self._activate(slot, state)
            if machine.is_final:
                self._live -= 1

    def _transmit(self, slot: Slot, message: Message) -> None:
        if slot.outbox is not None:
            slot.outbox.send_nowait(message)
            self._queued = True
        elif slot.direct is not None and not slot.send_failed:
            try:
                slot.direct(message)
            except TransportError as exc:
                slot.send_failed = True  # the peer is gone: later messages cannot reach it
                self.post(slot.key, slot.eof_event, exc)

    def _violation(self, slot: Slot, event: str, text: str) -> None:
        self.violations.append(Violation(slot.key, slot.machine.state, event, text))

    # ---------------------------------------------------- activities, timers

    def _plan(self, slot: Slot, state_name: str) -> _Plan | None:
        plans = slot.plans
        if plans is None:
            chart = slot.machine.chart
            plans = self._plans.get(id(chart))
            if plans is None:
                plans = self._plans[id(chart)] = _plans_of(chart)
            slot.plans = plans
        return plans[state_name]

    def _activate(self, slot: Slot, state_name: str) -> None:
        plan = self._plan(slot, state_name)
        if plan is None:
            return  # nothing to start, and nothing it could post later
        self._require_nursery()
        self._next_token += 1
        token = self._next_token
        slot.tokens[state_name] = token
        origin = (state_name, token)
        for seconds, event in plan.timers:
            length = self._options[seconds] if isinstance(seconds, str) else seconds
            self._arm(length, _Item(slot.key, event, None, origin))
        if plan.do is not None:
            key = slot.key

            def post(name: str, data: Any = None) -> None:
                self._put(_Item(key, name, data, origin))

            activity = getattr(slot.bindings, plan.method)
            context = ActivityContext(key, state_name, post)
            if not self._is_async(slot.bindings, plan.method):
                self._put(_Item(key, _START, (activity, context), origin))
                return
            scope = trio.CancelScope()
            slot.scopes[state_name] = scope
            run = _run_activity if slot.outbox is None else _run_activity_after_sends
            self._require_nursery().start_soon(run, scope, activity, context)

    def _is_async(self, bindings: object, method: str) -> bool:
        """Whether ``bindings``' activity ``method`` is an ``async def`` (cached per class)."""
        key = (type(bindings), method)
        known = self._async.get(key)
        if known is None:
            known = self._async[key] = inspect.iscoroutinefunction(getattr(bindings, method))
        return known

    def _start(self, item: _Item) -> None:
        """Run a plain activity whose state is still active; an awaitable it returns gets a task."""
        if not self._current(item):
            return
        activity, context = item.data
        pending = activity(context)
        if pending is not None:
            scope = trio.CancelScope()
            self._slots[item.key].scopes[context.state] = scope
            self._require_nursery().start_soon(_await_activity, scope, pending)

    def _deactivate(self, slot: Slot, state_name: str) -> None:
        if slot.tokens.pop(state_name, None) is None:
            return
        scope = slot.scopes.pop(state_name, None)
        if scope is not None:
            scope.cancel()


def _stamped(message: Message, seq: int) -> Message:
    """``message`` with ``seq``: ``attrs.evolve`` spelt out, at half its cost."""
    return Message(
        v=message.v,
        type=message.type,
        task_id=message.task_id,
        sender=message.sender,
        recipient=message.recipient,
        seq=seq,
        body=message.body,
        meta=message.meta,
    )


def _plans_of(chart: Chart) -> dict[str, _Plan | None]:
    """What entering each state of ``chart`` starts; computed once per chart."""
    cached = _plan_cache.get(id(chart))
    if cached is not None and cached[0]() is chart:
        return cached[1]
    plans = {
        state.name: (
            _Plan(state.do, tuple((t.seconds, t.event) for t in state.after))
            if state.do is not None or state.after
            else None
        )
        for state in chart.states
    }
    _plan_cache[id(chart)] = (weakref.ref(chart), plans)
    weakref.finalize(chart, _plan_cache.pop, id(chart), None)
    return plans


# Charts are not hashable (frozen attrs with dict fields): key by id, and drop the
# entry when the chart is collected.
_plan_cache: dict[int, tuple[weakref.ref[Chart], dict[str, _Plan | None]]] = {}


Activity = Callable[[ActivityContext], "Awaitable[None] | None"]


async def _call(activity: Activity, context: ActivityContext) -> None:
    pending = activity(context)
    if pending is not None:
        await pending


async def _await_activity(scope: trio.CancelScope, pending: Awaitable[None]) -> None:
    with scope:
        await pending


async def _run_activity(
    scope: trio.CancelScope, activity: Activity, context: ActivityContext
) -> None:
    with scope:
        await _call(activity, context)


async def _run_activity_after_sends(
    scope: trio.CancelScope, activity: Activity, context: ActivityContext
) -> None:
    """As :func:`_run_activity`, a scheduling round later, for a transport with a send loop.

    Such a transport's send loop needs a round to take what the last step
    queued; starting the activity after it keeps the order in which a worker's
    sends and its next activity's work reach the scheduler as it always was.
    """
    with scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_call, activity, context)
