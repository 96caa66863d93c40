"""Our SCXML, run by another implementation: python-statemachine's SCXML interpreter.

The exported document is loaded into python-statemachine (its own reader and its own
W3C-style interpreter, not ours) and driven with the same generated event sequences as
our engine, guards bound to the same answers: after every step both must be in the
same states and have run the same actions in the same order. Time is simulated: a
"time passes" step moves python-statemachine's clock to the next pending timer, so its
``<send delay>`` fires, and fires that timer's event in our engine.

Bindings on the python-statemachine side: each guard is a model attribute holding the
step's answer (``cond="g1 && !g2"`` reads them), each action a model attribute that logs
its name (``<script>name(_event)</script>`` calls it). Its ``<script>`` sees only the
model's attributes, so the model carries an ``_event`` too.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import event as note
from hypothesis import strategies as st

from fsm_protocol import Chart, ProtocolViolation, shipped_chart
from fsm_protocol._core._engine import Event, Machine
from fsm_protocol._export._scxml import to_scxml

from .scxml_reference import load, simulated_time
from .test_scxml import small_charts


def _names(chart: Chart) -> tuple[set[str], set[str]]:
    guards = {g.lstrip("!") for t in chart.transitions for g in t.guards}
    actions = {a for t in chart.transitions for a in t.actions}
    actions |= {a for s in chart.states for a in (*s.on_entry, *s.on_exit)}
    return guards, actions


def _init_bindings(self: Any, answers: dict[str, bool], log: list[str]) -> None:
    self.answers = answers
    self.log = log


def _bindings_class(guards: set[str], actions: set[str]) -> type:
    """Bindings for our engine: the same answers, the same action log.

    Machine reads the binding names off the class, so they are real methods.
    """
    namespace: dict[str, Any] = {"__init__": _init_bindings}
    for g in guards:
        namespace[f"guard_{g}"] = lambda self, event, g=g: self.answers[g]
    for a in actions:
        namespace[f"action_{a}"] = lambda self, event, a=a: self.log.append(a)
    return type("Bindings", (), namespace)


class _Theirs:
    """python-statemachine's model: guard answers and logging actions as attributes."""

    def __init__(self, guards: set[str], actions: set[str], log: list[str]) -> None:
        self._event = None
        for g in guards:
            setattr(self, g, False)
        for a in actions:
            setattr(self, a, lambda _event, a=a: log.append(a))


def _seconds(chart: Chart, value: float | str) -> float:
    return float(chart.options[value]) if isinstance(value, str) else float(value)


def _configuration(machine: Any) -> set[str]:
    return {state.id for state in machine.configuration}


def run_both(chart: Chart, data: st.DataObject, steps: int) -> int:
    """Drive both implementations through one generated run; returns the steps taken."""
    guards, actions = _names(chart)
    ours_log: list[str] = []
    theirs_log: list[str] = []
    answers = dict.fromkeys(guards, False)
    machine = Machine.from_chart(chart, _bindings_class(guards, actions)(answers, ours_log))
    model = _Theirs(guards, actions, theirs_log)
    events = sorted({t.event for t in chart.transitions} | {e for e in chart.events})
    with simulated_time() as clock:
        processor = load(to_scxml(chart))
        theirs = processor.start(model=model)
        # Our side of the timers: (state, index) -> when it fires.
        pending: dict[tuple[str, int], float] = {}

        def entered(states: Any) -> None:
            for name in states:
                for index, timer in enumerate(chart.state(name).after):
                    pending[(name, index)] = clock.now + _seconds(chart, timer.seconds)

        def exited(states: Any) -> None:
            for key in [k for k in pending if k[0] in set(states)]:
                del pending[key]

        entered(reversed(tuple(machine.active)))
        assert _configuration(theirs) == set(machine.active)
        assert theirs_log == ours_log
        taken = 0
        for _ in range(steps):
            if machine.is_final:
                break
            answers.update({g: data.draw(st.booleans(), label=f"guard {g}") for g in guards})
            for g, value in answers.items():
                setattr(model, g, value)
            due = sorted(pending.items(), key=lambda kv: kv[1])
            timer_step = bool(due) and data.draw(st.booleans(), label="time passes")
            if timer_step:
                note("a timer fired")
                (state, index), when = due[0]
                # Two timers due at once fire in an order neither chart fixes: skip.
                assume(len(due) == 1 or due[1][1] > when)
                event = chart.state(state).after[index].event
                del pending[(state, index)]
                clock.now = when
            else:
                # Mostly an event the state handles, and one that goes on rather than to
                # the end, so that runs go deep; sometimes any event at all.
                going_on = [
                    t.event
                    for t in chart.transitions_from(machine.state)
                    if t.target is None or not chart.state(t.target).final
                ]
                likely = going_on or list(machine.expected()) or events
                anything = data.draw(st.integers(0, 9), label="any event") == 0
                event = data.draw(st.sampled_from(events if anything else likely), label="event")
            ours_log.clear()
            theirs_log.clear()
            before = set(machine.active)
            try:
                step = machine.fire(event, Event(event))
            except ProtocolViolation:
                step = None
            if timer_step:
                theirs.send("fsm.tick")  # wakes the loop; the due timer goes first
            else:
                theirs.send(event)
            where = f"after {event!r} from {sorted(before)} in\n{to_scxml(chart)}"
            if step is None:
                assert _configuration(theirs) == before, where
                assert theirs_log == [], where
                continue
            taken += 1
            if machine.chart.state(machine.state).final:
                note("reached a final state")
            exited(step.exited)
            entered(step.entered)
            if machine.is_final:
                # SCXML: reaching a top-level <final> ends the machine.
                assert theirs.is_terminated or _configuration(theirs) == {machine.state}, where
                assert theirs_log == ours_log, where
                break
            assert _configuration(theirs) == set(machine.active), where
            assert theirs_log == ours_log, where
    return taken


@pytest.mark.parametrize("name", ["worker", "modeller"])
@settings(suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_shipped_charts_run_the_same_in_python_statemachine(
    name: str, data: st.DataObject
) -> None:
    taken = run_both(shipped_chart(name), data, steps=40)
    note(f"steps taken: {min(taken // 10 * 10, 30)}+")


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(chart=small_charts(), data=st.data())
def test_generated_charts_run_the_same_in_python_statemachine(
    chart: Chart, data: st.DataObject
) -> None:
    # Where SCXML means something else (docs/diagrams.md, "What we export and import"):
    # it ends the machine only at a top-level <final>; it runs the entry actions of the
    # initial states at start; a 0 s timer is due at once, not when time passes.
    assume(all(s.parent is None for s in chart.states if s.final))
    start = chart.initial
    while True:
        assume(not chart.state(start).on_entry)
        if chart.state(start).initial is None:
            break
        start = chart.state(start).initial
    assume(all(_seconds(chart, t.seconds) > 0 for s in chart.states for t in s.after))
    run_both(chart, data, steps=20)


def test_the_comparison_notices_a_difference() -> None:
    """A wrongly exported target is caught: the check is not vacuous."""
    chart = shipped_chart("worker")
    text = to_scxml(chart).replace(
        '<transition event="send:JOB_ACCEPT" target="engaged"/>',
        '<transition event="send:JOB_ACCEPT" target="rejected"/>',
    )
    assert text != to_scxml(chart)
    with simulated_time():
        processor = load(text)
        model = _Theirs(*_names(chart), [])
        theirs = processor.start(model=model)
        for event in ("recv:JOB_REQUEST", "send:JOB_ACCEPT"):
            theirs.send(event)
    guards, actions = _names(chart)
    machine = Machine.from_chart(chart, _bindings_class(guards, actions)({}, []))
    machine.fire("recv:JOB_REQUEST")
    machine.fire("send:JOB_ACCEPT")
    assert _configuration(theirs) != set(machine.active)
