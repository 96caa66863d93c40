"""The engine: what a user of :class:`Machine` relies on, one behaviour per test.

Charts are written inline and validated against :data:`NAMES`, the names of
:class:`Recorder`, which logs every guard and action call with its event.
"""

from __future__ import annotations

import json
import textwrap
from typing import Any, cast

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fsm_protocol import (
    BindingNames,
    Chart,
    ConfigError,
    Event,
    Machine,
    ProtocolViolation,
    Snapshot,
    Step,
    load_chart_text,
    shipped_chart,
    snapshot_from_dict,
    snapshot_to_dict,
)
from fsm_protocol._runtime._modeller import LinkBindings, TaskTimeouts, _Task
from fsm_protocol._runtime._worker import WorkerBindings


class Recorder:
    """Bindings that log every call as ``(kind:name, event)``."""

    def __init__(self, *, flag: bool = True) -> None:
        self.flag = flag
        self.calls: list[tuple[str, Event]] = []

    @property
    def actions(self) -> list[str]:
        return [name for name, _ in self.calls if not name.startswith("guard:")]

    def _act(self, name: str, event: Event) -> None:
        self.calls.append((name, event))

    def guard_flag(self, event: Event) -> bool:
        self.calls.append(("guard:flag", event))
        return self.flag

    def guard_armed(self, event: Event) -> bool:
        self.calls.append(("guard:armed", event))
        return False

    def action_toggle(self, event: Event) -> None:
        self.flag = not self.flag
        self._act("toggle", event)

    def action_enter_outer(self, event: Event) -> None:
        self._act("enter_outer", event)

    def action_exit_outer(self, event: Event) -> None:
        self._act("exit_outer", event)

    def action_enter_inner(self, event: Event) -> None:
        self._act("enter_inner", event)

    def action_exit_inner(self, event: Event) -> None:
        self._act("exit_inner", event)

    def action_enter_other(self, event: Event) -> None:
        self._act("enter_other", event)

    def action_exit_other(self, event: Event) -> None:
        self._act("exit_other", event)

    def action_go(self, event: Event) -> None:
        self._act("go", event)

    def action_back(self, event: Event) -> None:
        self._act("back", event)

    def action_loop(self, event: Event) -> None:
        self._act("loop", event)

    def action_parent_poke(self, event: Event) -> None:
        self._act("parent_poke", event)

    def action_child_poke(self, event: Event) -> None:
        self._act("child_poke", event)

    def action_parent_nudge(self, event: Event) -> None:
        self._act("parent_nudge", event)

    def action_child_nudge(self, event: Event) -> None:
        self._act("child_nudge", event)


NAMES = BindingNames.from_class(Recorder)


def chart_of(text: str) -> Chart:
    return load_chart_text(textwrap.dedent(text), bindings=NAMES)


# outer (compound, initial inner) -> other -> back into outer; finish ends.
NESTED = chart_of(
    """
    chart: nested
    initial: outer
    events: {go: g, back: b, open: o, poke: p, nudge: n, loop: l, reset: r, finish: f}
    states:
      outer:
        initial: inner
        on_entry: [enter_outer]
        on_exit: [exit_outer]
        transitions:
          - {event: go, target: other, actions: [go]}
          - {event: poke, guards: [flag], actions: [parent_poke]}
          - {event: nudge, actions: [parent_nudge]}
          - {event: reset, target: outer}
          - {event: finish, target: done}
        states:
          inner:
            on_entry: [enter_inner]
            on_exit: [exit_inner]
            transitions:
              - {event: loop, target: inner, actions: [loop]}
              - {event: poke, guards: ["!flag"], actions: [child_poke]}
              - {event: nudge, actions: [child_nudge]}
      other:
        on_entry: [enter_other]
        on_exit: [exit_other]
        transitions:
          - {event: back, target: outer, actions: [back]}
          - {event: open, target: done, guards: [flag, armed]}
          - {event: open, target: outer, guards: ["!flag"]}
      done:
        final: true
    """
)


def nested(*, flag: bool = True) -> tuple[Machine, Recorder]:
    bindings = Recorder(flag=flag)
    return Machine.from_chart(NESTED, bindings), bindings


# ------------------------------------------------------------------ inspection


def test_starts_in_the_settled_initial_leaf() -> None:
    machine, bindings = nested()
    assert machine.state == "inner"
    assert machine.active == ("inner", "outer")
    assert not machine.is_final
    assert machine.chart is NESTED
    assert bindings.calls == []


def test_expected_lists_events_innermost_first_without_duplicates() -> None:
    machine, _ = nested()
    assert machine.expected() == ("loop", "poke", "nudge", "go", "reset", "finish")
    machine.fire("go")
    assert machine.expected() == ("back", "open")


def test_is_final_after_reaching_a_final_state() -> None:
    machine, _ = nested()
    machine.fire("finish")
    assert machine.state == "done"
    assert machine.active == ("done",)
    assert machine.is_final
    assert machine.expected() == ()


def test_repr_names_chart_and_state() -> None:
    machine, _ = nested()
    assert repr(machine) == "<Machine nested in 'inner'>"


# -------------------------------------------------------------------- stepping


def test_fire_returns_a_frozen_step_record() -> None:
    machine, _ = nested()
    step = machine.fire("go", {"n": 1})
    assert isinstance(step, Step)
    assert step == Step(
        source="inner",
        event="go",
        target="other",
        actions=("exit_inner", "exit_outer", "go", "enter_other"),
        exited=("inner", "outer"),
        entered=("other",),
    )
    assert not step.internal
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        step.target = "inner"  # type: ignore[misc]


def test_actions_run_exit_then_transition_then_entry() -> None:
    machine, bindings = nested()
    machine.fire("go")
    bindings.calls.clear()
    step = machine.fire("back", "payload")
    # Entering a compound state enters it, then its initial child.
    assert step.actions == ("exit_other", "back", "enter_outer", "enter_inner")
    assert step.exited == ("other",)
    assert step.entered == ("outer", "inner")
    assert step.target == machine.state == "inner"
    assert bindings.actions == list(step.actions)
    assert all(event == Event("back", "payload") for _, event in bindings.calls)


def test_targetless_transition_is_internal() -> None:
    machine, bindings = nested()
    step = machine.fire("nudge")
    assert step.internal
    assert (step.source, step.target) == ("inner", "inner")
    assert (step.exited, step.entered) == ((), ())
    assert step.actions == ("child_nudge",)
    assert bindings.actions == ["child_nudge"]


def test_external_self_transition_exits_and_reenters() -> None:
    machine, _ = nested()
    step = machine.fire("loop")
    assert step.exited == step.entered == ("inner",)
    assert step.actions == ("exit_inner", "loop", "enter_inner")
    assert not step.internal
    assert machine.state == "inner"


def test_self_transition_on_a_compound_state_reenters_its_initial_leaf() -> None:
    machine, _ = nested()
    step = machine.fire("reset")
    assert step.exited == ("inner", "outer")
    assert step.entered == ("outer", "inner")
    assert step.actions == ("exit_inner", "exit_outer", "enter_outer", "enter_inner")


# The rows of the exit/entry table in docs/charts.md, "Internal and external transitions".
REGIONS = chart_of(
    """
    chart: regions
    initial: outer
    events: {up: u, down: d, finish: f}
    states:
      outer:
        initial: inner
        on_entry: [enter_outer]
        on_exit: [exit_outer]
        transitions:
          - {event: down, target: other}
          - {event: finish, target: done}
        states:
          inner:
            on_entry: [enter_inner]
            on_exit: [exit_inner]
            transitions:
              - {event: up, target: outer}
          other:
            on_entry: [enter_other]
            on_exit: [exit_other]
      done:
        final: true
    """
)


def test_target_enclosing_the_source_is_exited_and_reentered() -> None:
    machine = Machine.from_chart(REGIONS, Recorder())
    step = machine.fire("up")
    assert step.exited == ("inner", "outer")
    assert step.entered == ("outer", "inner")
    assert step.actions == ("exit_inner", "exit_outer", "enter_outer", "enter_inner")


def test_target_inside_a_compound_source_keeps_the_source_active() -> None:
    machine = Machine.from_chart(REGIONS, Recorder())
    step = machine.fire("down")
    assert (step.exited, step.entered) == (("inner",), ("other",))
    assert step.actions == ("exit_inner", "enter_other")
    step = machine.fire("down")  # from the target itself: it is exited and entered again
    assert (step.exited, step.entered) == (("other",), ("other",))
    assert machine.active == ("other", "outer")


# ------------------------------------------------------------------- hierarchy


def test_parent_transition_applies_in_child() -> None:
    machine, _ = nested()
    step = machine.fire("finish")
    assert (step.source, step.target) == ("inner", "done")
    assert step.exited == ("inner", "outer")


def test_childs_own_transition_wins_over_parents() -> None:
    machine, bindings = nested()
    step = machine.fire("nudge")
    assert step.actions == ("child_nudge",)
    assert "parent_nudge" not in bindings.actions


def test_parent_transition_taken_when_childs_guard_fails() -> None:
    # flag holds: the child's "!flag" fails, so the parent's "flag" applies.
    machine, bindings = nested(flag=True)
    assert machine.fire("poke").actions == ("parent_poke",)
    bindings.flag = False
    assert machine.fire("poke").actions == ("child_poke",)


# ---------------------------------------------------------------------- guards


def test_negated_guard() -> None:
    machine, _ = nested(flag=False)
    machine.fire("go")
    step = machine.fire("open")
    assert step.target == "inner"  # "!flag" held; "outer" settles in "inner"


def test_guards_receive_the_event_with_its_data() -> None:
    machine, bindings = nested()
    data = {"answer": 42}
    machine.fire("poke", data)
    assert bindings.calls[0] == ("guard:flag", Event("poke", data))
    assert bindings.calls[0][1].data is data


def test_all_guards_failing_is_a_violation_naming_state_event_and_guards() -> None:
    machine, bindings = nested(flag=True)
    machine.fire("go")
    bindings.calls.clear()
    with pytest.raises(ProtocolViolation) as info:
        machine.fire("open")  # "flag and armed" fails on armed, "!flag" fails
    message = str(info.value)
    assert "'other'" in message
    assert "'open'" in message
    assert "flag and armed" in message
    assert "!flag" in message
    assert info.value.state == "other"
    assert info.value.event == "open"
    assert machine.state == "other"
    assert bindings.actions == []


def test_event_without_transition_is_a_violation_listing_the_expected() -> None:
    machine, _ = nested()
    machine.fire("go")
    with pytest.raises(ProtocolViolation) as info:
        machine.fire("poke")
    violation = info.value
    assert violation.state == "other"
    assert violation.event == "poke"
    assert violation.expected == ("back", "open")
    assert "expected one of: back, open" in str(violation)
    assert machine.state == "other"


def test_unknown_event_is_a_violation() -> None:
    machine, _ = nested()
    with pytest.raises(ProtocolViolation, match="expected one of"):
        machine.fire("no_such_event")
    assert machine.state == "inner"


def test_nothing_may_follow_the_end() -> None:
    machine, _ = nested()
    machine.fire("finish")
    with pytest.raises(ProtocolViolation, match="nothing may follow the end") as info:
        machine.fire("go")
    assert info.value.state == "done"
    assert info.value.event == "go"
    assert machine.state == "done"


def test_accepts_runs_guards_but_changes_nothing() -> None:
    machine, bindings = nested(flag=True)
    machine.fire("go")
    bindings.calls.clear()
    assert machine.accepts("back")
    assert not machine.accepts("open", 7)
    assert not machine.accepts("poke")
    assert ("guard:flag", Event("open", 7)) in bindings.calls
    assert bindings.actions == []
    assert machine.state == "other"
    bindings.flag = False
    assert machine.accepts("open")
    assert machine.state == "other"


def test_accepts_is_false_in_a_final_state() -> None:
    machine, _ = nested()
    machine.fire("finish")
    assert not machine.accepts("go")


# -------------------------------------------------------------------- bindings


def test_missing_bindings_are_all_named() -> None:
    class Partial:
        def action_go(self, event: Event) -> None:
            pass

    with pytest.raises(ConfigError) as info:
        Machine.from_chart(NESTED, Partial())
    missing = ["guard_armed", "guard_flag"]
    missing += [f"action_{a}" for a in NAMES.actions - {"go", "toggle"}]  # toggle is unused
    assert str(info.value) == (
        f"Partial cannot run chart 'nested': it lacks {', '.join(sorted(missing))}"
    )


def test_the_library_sets_no_attributes_on_the_bindings() -> None:
    bindings = Recorder()
    before_vars, before_dir, class_dir = dict(vars(bindings)), dir(bindings), dir(Recorder)
    machine = Machine.from_chart(NESTED, bindings)
    machine.fire("go")
    machine.fire("back")
    machine.accepts("poke")
    machine.fire("finish")
    after = dict(vars(bindings))
    # The actions mutate ``calls`` in place; nothing else may appear or change.
    assert after.keys() == before_vars.keys()
    assert after["flag"] is before_vars["flag"]
    assert dir(bindings) == before_dir
    assert dir(Recorder) == class_dir
    assert not any(n.startswith(("is_", "to_", "may_", "trigger")) for n in dir(bindings))


def test_events_named_like_transitions_model_attributes() -> None:
    """transitions decorates its model with these names; a chart may still use them."""
    events = ["state", "trigger", "may_trigger", "to", "is_idle", "to_idle", "may_state"]
    lines = "\n".join(f"      - {{event: {e}}}" for e in events)
    chart = load_chart_text(
        "chart: clash\ninitial: idle\n"
        f"events: {{{', '.join(f'{e}: x' for e in events)}, end: x}}\n"
        "states:\n  idle:\n    transitions:\n"
        f"{lines}\n      - {{event: end, target: done}}\n"
        "  done:\n    final: true\n",
        bindings=NAMES,
    )
    machine = Machine.from_chart(chart, Recorder())
    for event in events:
        assert machine.fire(event).internal
        assert machine.state == "idle"
    assert machine.fire("end").target == "done"


# -------------------------------------------------------------------- backends

BACKENDS = ["compiled", "transitions"]


class Watcher(Recorder):
    """Records where the machine says it is while the ``go`` action runs."""

    machine: Machine | None = None
    seen: str | None = None

    def action_go(self, event: Event) -> None:
        assert self.machine is not None
        self.seen = self.machine.state
        super().action_go(event)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_action_sees_the_state_the_step_leads_to(backend: Any) -> None:
    bindings = Watcher()
    machine = Machine.from_chart(NESTED, bindings, backend=backend)
    bindings.machine = machine
    machine.fire("go")
    assert bindings.seen == "other"


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_event_without_data_reaches_guards_and_actions_as_an_event(backend: Any) -> None:
    bindings = Recorder()
    machine = Machine.from_chart(NESTED, bindings, backend=backend)
    machine.fire("poke")
    machine.fire("poke")
    # The child's "!flag" is asked, then the parent's "flag", then its action runs.
    assert [call for call, _ in bindings.calls] == ["guard:flag", "guard:flag", "parent_poke"] * 2
    assert all(event == Event("poke") and event.data is None for _, event in bindings.calls)


@pytest.mark.parametrize("backend", BACKENDS)
def test_both_backends_report_which_they_are_and_take_the_same_steps(backend: Any) -> None:
    compiled, _ = nested()
    machine = Machine.from_chart(NESTED, Recorder(), backend=backend)
    assert machine.backend == backend
    for event in ["loop", "go", "back", "reset", "finish"]:
        assert machine.fire(event) == compiled.fire(event)
    assert machine.is_final


def test_unknown_backend_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown backend 'sismic'"):
        Machine.from_chart(NESTED, Recorder(), backend=cast(Any, "sismic"))


def test_machines_of_one_chart_and_bindings_class_share_one_compiled_table() -> None:
    first, second = nested()[0], nested()[0]
    assert first.compiled is second.compiled
    assert first.compiled.chart is NESTED


# ---------------------------------------------------------------- persistence


def test_snapshot_round_trips_through_json_and_resumes() -> None:
    machine, _ = nested()
    machine.fire("go")
    machine.fire("back")
    snapshot = machine.snapshot()
    assert snapshot == Snapshot(chart="nested", state="inner", version=1)
    stored = json.dumps(snapshot_to_dict(snapshot))
    assert json.loads(stored) == {"chart": "nested", "state": "inner", "version": 1}
    restored_snapshot = snapshot_from_dict(json.loads(stored))
    assert restored_snapshot == snapshot

    bindings = Recorder()
    restored = Machine.restore(NESTED, bindings, restored_snapshot)
    assert restored.state == "inner"
    assert restored.active == ("inner", "outer")
    assert bindings.calls == []  # resuming runs no entry actions
    # The parent's transitions apply, and the parent is exited on the way out.
    step = restored.fire("go")
    assert step.actions == ("exit_inner", "exit_outer", "go", "enter_other")
    assert restored.fire("back").target == "inner"


def test_restore_in_a_non_initial_top_level_state() -> None:
    machine, _ = nested()
    machine.fire("go")
    restored = Machine.restore(NESTED, Recorder(), machine.snapshot())
    assert restored.state == "other"
    assert restored.expected() == ("back", "open")
    assert restored.fire("back").entered == ("outer", "inner")


def test_restore_a_final_state() -> None:
    restored = Machine.restore(NESTED, Recorder(), Snapshot(chart="nested", state="done"))
    assert restored.is_final
    with pytest.raises(ProtocolViolation):
        restored.fire("go")


@pytest.mark.parametrize(
    ("snapshot", "phrase"),
    [
        (Snapshot(chart="other_chart", state="inner"), "other_chart"),
        (Snapshot(chart="nested", state="inner", version=2), "v2"),
        (Snapshot(chart="nested", state="nowhere"), "nowhere"),
        (Snapshot(chart="nested", state="outer"), "not a leaf"),
    ],
)
def test_restore_rejects_a_foreign_or_bad_snapshot(snapshot: Snapshot, phrase: str) -> None:
    with pytest.raises(ConfigError, match=phrase):
        Machine.restore(NESTED, Recorder(), snapshot)


@pytest.mark.parametrize(
    ("data", "phrase"),
    [
        ({"chart": "nested"}, r"required field missing @ \$\.state"),
        ({"state": "inner"}, r"@ \$\.chart"),
        ({"chart": "nested", "state": "inner", "extra": 1}, "extra"),
        ({"chart": 1, "state": "inner"}, r"expected str @ \$\.chart"),
        ({"chart": "nested", "state": None}, r"expected str @ \$\.state"),
        ({"chart": "nested", "state": "inner", "version": "1"}, r"expected int @ \$\.version"),
        ({"chart": "nested", "state": "inner", "version": 1.5}, r"@ \$\.version"),
        ({"chart": "nested", "state": "inner", "version": True}, r"@ \$\.version"),
        (None, "expected a mapping"),
        ([], "expected a mapping"),
        ("nested/inner", "expected a mapping"),
    ],
)
def test_malformed_snapshot_dict_is_a_config_error(data: Any, phrase: str) -> None:
    with pytest.raises(ConfigError, match=phrase):
        snapshot_from_dict(data)


# ---------------------------------------------------------------- shipped charts


def _chart_names(chart: Chart) -> BindingNames:
    guards = {g.removeprefix("!") for t in chart.transitions for g in t.guards}
    actions = {a for t in chart.transitions for a in t.actions}
    actions |= {a for s in chart.states for a in (*s.on_entry, *s.on_exit)}
    activities = {s.do for s in chart.states if s.do is not None}
    return BindingNames(frozenset(guards), frozenset(actions), frozenset(activities))


@pytest.mark.parametrize(
    ("name", "owner"), [("worker", WorkerBindings), ("modeller", LinkBindings)]
)
def test_shipped_chart_bindings_cover_every_name(name: str, owner: type) -> None:
    used = _chart_names(shipped_chart(name))
    provided = BindingNames.from_class(owner)
    assert used.guards <= provided.guards
    assert used.actions <= provided.actions
    assert used.activities <= provided.activities


def test_shipped_worker_chart_builds_with_its_bindings() -> None:
    stand_in = cast(Any, None)  # the pod and the executor are only stored
    machine = Machine.from_chart(shipped_chart("worker"), WorkerBindings(stand_in, stand_in))
    assert machine.state == "idle"
    assert "recv:JOB_REQUEST" in machine.expected()


def test_shipped_modeller_chart_builds_with_its_bindings() -> None:
    stand_in = cast(Any, None)  # the executor, job and config are only stored
    task = _Task("t-1", "modeller", stand_in, TaskTimeouts(), None, False)
    link = LinkBindings(task, "pod-1", stand_in, stand_in)
    machine = Machine.from_chart(shipped_chart("modeller"), link)
    assert machine.state == "idle"
    assert machine.expected() == ("send:JOB_REQUEST",)
    assert machine.fire("send:JOB_REQUEST").target == "requested"


# -------------------------------------------------------------------- property

# Guards depend only on ``flag``, which the "toggle" action flips, so every
# branch is reachable and fire/accepts are deterministic.
PROPERTY = chart_of(
    """
    chart: prop
    initial: idle
    events: {start: s, toggle: t, step: p, stop: o, finish: f}
    states:
      idle:
        transitions:
          - {event: start, target: working}
          - {event: toggle, actions: [toggle]}
      working:
        initial: a
        transitions:
          - {event: toggle, actions: [toggle]}
          - {event: stop, target: idle, guards: [flag]}
          - {event: finish, target: done, guards: ["!flag"]}
        states:
          a:
            transitions:
              - {event: step, target: b, guards: [flag]}
          b:
            transitions:
              - {event: step, target: a}
              - {event: stop, target: a, guards: ["!flag"]}
      done:
        final: true
    """
)
PROPERTY_EVENTS = [*sorted(PROPERTY.events), "undeclared"]


@given(
    flag=st.booleans(),
    events=st.lists(st.tuples(st.sampled_from(PROPERTY_EVENTS), st.integers()), max_size=30),
)
def test_fire_steps_or_violates_without_changing_state(
    flag: bool, events: list[tuple[str, int]]
) -> None:
    machine = Machine.from_chart(PROPERTY, Recorder(flag=flag))
    for event, data in events:
        before = machine.state
        accepted = machine.accepts(event, data)
        try:
            step = machine.fire(event, data)
        except ProtocolViolation as violation:
            assert not accepted
            assert machine.state == before
            assert violation.state == before
            assert violation.event == event
        else:
            assert accepted
            assert step.source == before
            assert step.event == event
            assert step.target == machine.state
            assert PROPERTY.state(machine.state).children == ()
