"""Property-test a chart with Hypothesis: :func:`machine_from_chart`.

This is the only module of the package that imports Hypothesis (install it
with the ``test`` extra); the rest of fsm-protocol does not need it.

:func:`machine_from_chart` turns any chart, a shipped one or your own, into a
Hypothesis ``RuleBasedStateMachine`` with one rule per transition. Each rule
can run only while its source state is active; it draws the event's data,
fires the event on a :class:`~fsm_protocol.Machine`, and checks that the step
did what the chart says. Your invariants run after every step. Two more rules
check the refusals: an event the current state has no transition for, and
any event after the end, must raise :class:`~fsm_protocol.ProtocolViolation`
and change nothing.

Example:
    >>> from hypothesis import settings
    >>> from hypothesis.stateful import run_state_machine_as_test
    >>> from fsm_protocol import load_chart_text
    >>> from fsm_protocol.testing import machine_from_chart
    >>> chart = load_chart_text('''
    ... chart: door
    ... initial: closed
    ... events: {open: open it, close: close it, lock: lock it}
    ... states:
    ...   closed:
    ...     transitions:
    ...       - {event: open, target: opened}
    ...       - {event: lock, target: locked, guards: [has_key]}
    ...   opened:
    ...     transitions: [{event: close, target: closed}]
    ...   locked: {final: true}
    ... ''')
    >>> def locked_only_from_closed(run):
    ...     return run.machine.state != "locked" or run.steps[-1].source == "closed"
    >>> Door = machine_from_chart(chart, invariants=[locked_only_from_closed])
    >>> run_state_machine_as_test(Door, settings=settings(max_examples=10, database=None))

    In pytest, expose the class's test case at module level instead:
    ``TestDoor = Door.TestCase``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, final

import attrs
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from ._base._errors import ConfigError, ProtocolViolation
from ._core._bindings import ACTION_PREFIX, GUARD_PREFIX
from ._core._chart import Chart, Role, Transition, parse_guard, parse_message_event
from ._core._engine import Event, Machine, Snapshot, Step
from ._wire._messages import (
    AbortReason,
    JobRejectBody,
    JobRequestBody,
    LogMessageBody,
    Message,
    MessageType,
    Meta,
    RejectReason,
    TaskAbortBody,
)

__all__ = ["ChartRun", "default_message_data", "machine_from_chart"]

Invariant = Callable[["ChartRun"], object]
"""Checks one run after every step: raise ``AssertionError`` or return False to fail."""

DataFor = Callable[[str], "st.SearchStrategy[Any] | None"]
"""Maps an event name to a strategy for its data, or None for the default."""


@final
@attrs.define
class ChartRun:
    """What an invariant sees: the machine, its bindings, and what happened so far.

    Attributes:
        machine: The machine under test.
        bindings: The object whose ``guard_``/``action_`` methods the machine calls.
        steps: Every step fired so far, in order (refusals are not steps).
        fired: How often each transition fired, by its index in ``chart.transitions``.
    """

    machine: Machine
    bindings: object
    steps: list[Step] = attrs.field(factory=list)
    fired: Counter[int] = attrs.field(factory=Counter)

    @property
    def chart(self) -> Chart:
        return self.machine.chart


# ----------------------------------------------------------- stand-ins


class _StandIn:
    """Bindings for any chart: guards answer what the rule drew, actions are recorded."""

    def __init__(self) -> None:
        self.choices: dict[str, bool] = {}
        self.calls: list[str] = []


def _stand_in_class(chart: Chart) -> type[_StandIn]:
    """A class with one ``guard_``/``action_`` method per name the chart uses."""
    namespace: dict[str, Any] = {}
    for guard in {parse_guard(g)[0] for t in chart.transitions for g in t.guards}:
        namespace[GUARD_PREFIX + guard] = lambda self, event, _g=guard: self.choices.get(_g, False)
    actions = {a for t in chart.transitions for a in t.actions}
    actions |= {a for s in chart.states for a in (*s.on_entry, *s.on_exit)}
    for action in actions:
        namespace[ACTION_PREFIX + action] = lambda self, event, _a=action: self.calls.append(_a)
    return type(f"StandIn_{_identifier(chart.name)}", (_StandIn,), namespace)


# -------------------------------------------------------- default data


def _bodies(kind: MessageType) -> st.SearchStrategy[Any]:
    tokens = st.text(alphabet="abc123", min_size=1, max_size=4)
    if kind is MessageType.JOB_REQUEST:
        return st.builds(
            JobRequestBody,
            protocol=st.just({"class_name": "conformance.Echo", "items": ["a", "b"]}),
            pod_identifiers=st.just(("pod",)),
            batched_execution=st.booleans(),
            test_run=st.booleans(),
        )
    if kind is MessageType.JOB_ACCEPT:
        return st.just({"ACCEPT": "pod"})
    if kind is MessageType.JOB_REJECT:
        return st.builds(JobRejectBody, st.sampled_from(RejectReason), st.just(("no",)))
    if kind is MessageType.NUMBER_OF_BATCHES:
        return st.sampled_from([-1, 1, 2, 3])
    if kind is MessageType.CURRENT_BATCH_ID:
        return st.integers(min_value=0, max_value=3)
    if kind is MessageType.BATCHES_COMPLETE:
        return st.sampled_from(["BATCHES_ONLY", "TASK_COMPLETE"])
    if kind is MessageType.EVALUATION_RESULTS:
        return st.fixed_dictionaries({"items": st.lists(tokens, max_size=2)})
    if kind is MessageType.TASK_ABORT:
        return st.builds(TaskAbortBody, st.just("stop"), st.sampled_from(AbortReason))
    if kind in (MessageType.ONLINE_CHECK, MessageType.ONLINE_RESPONSE):
        return tokens
    if kind is MessageType.LOG_MESSAGE:
        return st.builds(LogMessageBody, st.sampled_from(["INFO", "ERROR"]), st.just("hi"))
    if kind is MessageType.ALGORITHM_EXCHANGE:
        return st.just({})
    return st.none()


def default_message_data(
    event: str, *, role: Role | None = None
) -> st.SearchStrategy[Message] | None:
    """Valid messages for a ``recv:TYPE``/``send:TYPE`` event; None for other events.

    Bodies are small and of the right shape for the type, so that guards
    which inspect them (a batch id, a count) sometimes hold and sometimes not.
    ``meta.batch_number`` is null or 0 to 3.
    """
    parsed = parse_message_event(event)
    if parsed is None:
        return None
    direction, kind = parsed
    me, peer = ("modeller", "pod") if role is Role.MODELLER else ("pod", "modeller")
    sender, recipient = (me, peer) if direction == "send" else (peer, me)
    return st.builds(
        Message.make,
        st.just(kind),
        task_id=st.just("t-1"),
        sender=st.just(sender),
        recipient=st.just(recipient),
        seq=st.integers(min_value=0, max_value=1000),
        body=_bodies(kind),
        meta=st.builds(
            Meta,
            batch_number=st.none() | st.integers(min_value=0, max_value=3),
            algorithm_index=st.integers(min_value=0, max_value=1),
        ),
    )


# ------------------------------------------------------------ the machine


def _identifier(text: str) -> str:
    return re.sub(r"\W", "_", text)


def _is_run_of(inner: Sequence[str], outer: Sequence[str]) -> bool:
    """Whether ``inner`` appears in ``outer`` as consecutive items."""
    n = len(inner)
    return n == 0 or any(tuple(outer[i : i + n]) == tuple(inner) for i in range(len(outer) - n + 1))


class _ChartMachine(RuleBasedStateMachine):
    """The rules every generated machine shares; the subclass adds one rule per transition."""

    _chart: Chart
    _make_bindings: Callable[[st.DataObject], object] | None  # None: stand-ins
    _stand_in: tuple[Machine, _StandIn] | None  # the machine all stand-in examples share
    _invariants: tuple[Invariant, ...]
    _data_for: DataFor | None
    _events: tuple[str, ...]
    _starts: tuple[str, ...]  # leaf states an example may start in; empty: the initial state
    _strategies: dict[str, st.SearchStrategy[Any] | None]  # data strategies, built once per event

    def __init__(self) -> None:
        super().__init__()
        self._run: ChartRun | None = None

    # ------------------------------------------------------------ helpers

    @property
    def run(self) -> ChartRun:
        assert self._run is not None, "the machine is built by the initialize rule"
        return self._run

    def _data(self, event: str, data: st.DataObject) -> Any:
        cache = type(self)._strategies
        if event not in cache:
            strategy = self._data_for(event) if self._data_for is not None else None
            if strategy is None:
                strategy = default_message_data(event, role=self._chart.role)
            cache[event] = strategy
        strategy = cache[event]
        return None if strategy is None else data.draw(strategy, label=f"data for {event}")

    def _guard_holds(self, guard: str, event: str, payload: Any) -> bool:
        name, want = parse_guard(guard)
        method = getattr(self.run.bindings, GUARD_PREFIX + name)
        return bool(method(Event(event, payload))) is want

    def _winner(self, event: str, payload: Any) -> Transition | None:
        """The transition the chart says this event takes now, guards checked."""
        for transition in self._chart.transitions_from(self.run.machine.state):
            if transition.event == event and all(
                self._guard_holds(g, event, payload) for g in transition.guards
            ):
                return transition
        return None

    def _build(self, data: st.DataObject) -> None:
        chart = self._chart
        start = chart.settle(chart.initial)
        if self._starts:
            start = data.draw(st.sampled_from(self._starts), label="start in")
        if self._make_bindings is None:
            # Stand-ins hold nothing between examples, so one machine serves them all:
            # building one (the FSM library's model) costs more than a whole example.
            cls = type(self)
            if cls._stand_in is None:
                fresh = _stand_in_class(chart)()
                cls._stand_in = (Machine.from_chart(chart, fresh), fresh)
            machine, stand_in = cls._stand_in
            machine._jump(start)
            stand_in.choices, stand_in.calls = {}, []
            self._run = ChartRun(machine, stand_in)
            return
        bindings = self._make_bindings(data)
        if start == chart.settle(chart.initial):
            machine = Machine.from_chart(chart, bindings)
        else:
            snapshot = Snapshot(chart=chart.name, state=start, version=chart.version)
            machine = Machine.restore(chart, bindings, snapshot)
        self._run = ChartRun(machine, bindings)

    def _expect_refusal(self, event: str, payload: Any) -> None:
        machine = self.run.machine
        before = (machine.state, len(getattr(self.run.bindings, "calls", ())))
        try:
            machine.fire(event, payload)
        except ProtocolViolation:
            pass
        else:
            raise AssertionError(
                f"{self._chart.name}: {event!r} was taken in state {before[0]!r}, "
                "but the chart has no transition for it whose guards hold"
            )
        after = (machine.state, len(getattr(self.run.bindings, "calls", ())))
        assert after == before, f"a refused {event!r} changed the machine: {before} -> {after}"

    def _fire(self, transition: Transition, data: st.DataObject) -> None:
        run, chart = self.run, self._chart
        event = transition.event
        payload = self._data(event, data)
        if isinstance(run.bindings, _StandIn):
            # Draw every guard this event consults here, then make this rule's guards hold.
            names = sorted(
                {
                    parse_guard(g)[0]
                    for t in chart.transitions_from(run.machine.state)
                    if t.event == event
                    for g in t.guards
                }
            )
            run.bindings.choices = {n: data.draw(st.booleans(), label=n) for n in names}
            run.bindings.choices.update(parse_guard(g) for g in transition.guards)
        winner = self._winner(event, payload)
        if winner is None:
            self._expect_refusal(event, payload)
            return
        source = run.machine.state
        step = run.machine.fire(event, payload)
        expected = source if winner.target is None else chart.settle(winner.target)
        assert step.target == expected == run.machine.state, (
            f"{chart.name}: {event!r} from {source!r} took {winner.source} -> "
            f"{winner.target or '(internal)'}, so the machine should be in {expected!r}, "
            f"but it is in {run.machine.state!r} (step says {step.target!r})"
        )
        assert _is_run_of(winner.actions, step.actions), (
            f"{chart.name}: {event!r} from {source!r} ran {step.actions}, "
            f"which lacks the transition's actions {winner.actions} in order"
        )
        if winner.target is None:
            assert step.internal, f"the internal transition {winner} exited or entered states"
        run.steps.append(step)
        run.fired[chart.transitions.index(winner)] += 1

    # -------------------------------------------------------------- rules

    @initialize(data=st.data())
    def start(self, data: st.DataObject) -> None:
        self._build(data)

    @precondition(
        lambda self: (
            self._run is not None
            and not self.run.machine.is_final
            and bool(set(self._events) - set(self.run.machine.expected()))
        )
    )
    @rule(data=st.data())
    def unexpected_event_is_refused(self, data: st.DataObject) -> None:
        expected = set(self.run.machine.expected())
        event = data.draw(st.sampled_from([e for e in self._events if e not in expected]))
        self._expect_refusal(event, self._data(event, data))

    @precondition(lambda self: self._run is not None and self.run.machine.is_final)
    @rule(data=st.data())
    def nothing_follows_the_end(self, data: st.DataObject) -> None:
        event = data.draw(st.sampled_from(self._events))
        self._expect_refusal(event, self._data(event, data))

    @precondition(lambda self: self._run is not None and self.run.machine.is_final)
    @rule(data=st.data())
    def start_again(self, data: st.DataObject) -> None:
        self._build(data)

    @invariant()
    def invariants_hold(self) -> None:
        if self._run is None:
            return
        run, chart = self.run, self._chart
        state = chart.state(run.machine.state)
        assert not state.children, f"the active state {state.name!r} is not a leaf"
        assert run.machine.active == tuple(chart.ancestors(state.name))
        for check in self._invariants:
            if check(run) is False:
                name = getattr(check, "__name__", repr(check))
                raise AssertionError(
                    f"invariant {name} does not hold in state {run.machine.state!r} "
                    f"after {[s.event for s in run.steps[-5:]]}"
                )


def _leaves_under(chart: Chart, names: Iterable[str] | None) -> tuple[str, ...]:
    if names is None:
        return ()
    wanted = list(names)
    unknown = [n for n in wanted if not chart.has_state(n)]
    if unknown:
        raise ConfigError(
            f"start_in names states that chart {chart.name!r} lacks: {', '.join(unknown)}"
        )
    return tuple(
        s.name
        for s in chart.states
        if not s.children and not s.final and set(chart.ancestors(s.name)) & set(wanted)
    )


def _transition_rule(rank: int, transition: Transition) -> Callable[..., None]:
    def fire(self: _ChartMachine, data: st.DataObject) -> None:
        self._fire(transition, data)

    fire.__name__ = fire.__qualname__ = (
        f"t{rank:02d}_{_identifier(transition.source)}__{_identifier(transition.event)}"
    )
    fire.__doc__ = (
        f"{transition.source} --{transition.event}"
        f"{'[' + ', '.join(transition.guards) + ']' if transition.guards else ''}--> "
        f"{transition.target or '(internal)'}"
    )

    def enabled(self: _ChartMachine) -> bool:
        run = self._run
        return (
            run is not None and not run.machine.is_final and transition.source in run.machine.active
        )

    decorated: Callable[..., None] = precondition(enabled)(rule(data=st.data())(fire))
    return decorated


def machine_from_chart(
    chart: Chart,
    *,
    bindings: Callable[[], object] | st.SearchStrategy[object] | None = None,
    invariants: Iterable[Invariant] = (),
    data_for: DataFor | None = None,
    start_in: Iterable[str] | None = None,
    name: str | None = None,
) -> type[RuleBasedStateMachine]:
    """Build a Hypothesis state machine that explores ``chart``.

    The class has one rule per transition of the chart, named
    ``tNN_<source>__<event>``. A rule may run only while its source state is
    active. It draws data for the event, works out from the chart which
    transition the event takes (checking guards against the bindings), fires
    the event, and asserts that the machine went where the chart says and
    ran the transition's actions; if no guard holds, it asserts that the
    machine refused the event and did not move. After every step the
    ``invariants`` run. At a final state, any event must be refused, and the
    machine may start again from the beginning.

    Args:
        chart: Any loaded chart (:func:`~fsm_protocol.load_chart`).
        bindings: Where the guards and actions come from. A zero-argument
            factory, called for each new machine; a Hypothesis strategy that
            draws a fresh bindings object; or None for stand-ins, whose
            guards take whatever values make this rule's transition eligible
            (the other guards are drawn) and whose actions only record their
            names in ``bindings.calls``.
        invariants: Callables given a :class:`ChartRun` after every step;
            each raises ``AssertionError`` or returns False when it fails.
        data_for: Maps an event name to a strategy for its data, or to None
            for the default: :func:`default_message_data` for message events,
            None for the chart's own events. Supply it when guards inspect the
            data (for example a batch id that must be the next one).
        start_in: Start each machine in a state drawn from these (a
            compound state stands for its non-final leaves) instead of the
            chart's initial state. With stand-ins this reaches arcs that a
            walk from the start rarely gets to; bindings with state of their
            own may not expect to start anywhere but the start.
        name: The class name; by default derived from the chart's name.

    Returns:
        A ``RuleBasedStateMachine`` subclass. Run it with its ``TestCase``
        attribute (``TestMyChart = machine_from_chart(chart).TestCase``) or
        with ``hypothesis.stateful.run_state_machine_as_test``.

    Raises:
        ConfigError: ``start_in`` names a state the chart lacks, or (when a
            machine is built) the bindings lack a guard or an action the
            chart names.

    Example:
        ``TestWorker = machine_from_chart(shipped_chart("worker")).TestCase``
    """
    make: Callable[[st.DataObject], object] | None = None
    if isinstance(bindings, st.SearchStrategy):
        strategy: st.SearchStrategy[object] = bindings

        def make(data: st.DataObject) -> object:
            return data.draw(strategy, label="bindings")

    elif bindings is not None:
        factory = bindings

        def make(data: st.DataObject) -> object:
            return factory()

    events = {t.event for t in chart.transitions} | set(chart.events)
    namespace: dict[str, Any] = {
        "_chart": chart,
        "_make_bindings": None if make is None else staticmethod(make),
        "_stand_in": None,
        "_invariants": tuple(invariants),
        "_data_for": staticmethod(data_for) if data_for is not None else None,
        "_events": tuple(sorted(events)),
        "_strategies": {},
        "_starts": _leaves_under(chart, start_in),
        "__doc__": f"Hypothesis rules for every transition of chart {chart.name!r}.",
    }
    # Hypothesis leans towards the rules that sort first. Number them innermost
    # source first, the engine's own priority, so that walks favour the arcs that
    # make progress over the outer ones (typically aborts) and get deeper.
    depth = {s.name: len(list(chart.ancestors(s.name))) for s in chart.states}
    order = sorted(range(len(chart.transitions)), key=lambda i: -depth[chart.transitions[i].source])
    for rank, index in enumerate(order):
        fire = _transition_rule(rank, chart.transitions[index])
        namespace[fire.__name__] = fire
    class_name = name or f"{_identifier(chart.name).title().replace('_', '')}Chart"
    machine_class = type(class_name, (_ChartMachine,), namespace)
    return machine_class
