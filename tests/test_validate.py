"""The chart validator: one small broken chart per kind of problem.

Every test asserts where the problem is reported (line, and column where it is
meaningful) and a key phrase of its message. Expected positions are computed
from the fixture text with :func:`at`, so editing a fixture cannot leave a
stale magic number behind.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml

from fsm_protocol._base._errors import ChartError, Problem
from fsm_protocol._core._bindings import BindingNames
from fsm_protocol._core._chart import Role, State, Timer, Transition
from fsm_protocol._core._loader import (
    RawChart,
    RawState,
    RawTimer,
    RawTransition,
    check_chart_text,
    load_chart,
    load_chart_text,
)
from fsm_protocol._wire._messages import MessageType

HERE = Path(__file__).resolve().parent
CHARTS = HERE / "charts"
REPO = HERE.parent
SHIPPED = {name: REPO / "statecharts" / f"{name}.yaml" for name in ("worker", "modeller")}
SCHEMA_PATH = REPO / "fsm_protocol" / "chart.schema.json"
FILE = "chart.yaml"

BINDINGS = BindingNames(
    guards=frozenset({"ready", "done"}),
    actions=frozenset({"note", "log"}),
    activities=frozenset({"work"}),
)

# A clean chart that uses every feature once; broken charts below are small
# edits of it or written from scratch.
MINIMAL = """\
chart: mini
role: worker
version: 1
description: The smallest chart with a bit of everything.
initial: idle
options:
  wait_s: 5
events:
  tick: the wait is over
  failed: the work raised
states:
  idle:
    transitions:
      - {event: recv:JOB_REQUEST, target: busy, actions: [note]}
  busy:
    initial: working
    on_exit: [log]
    transitions:
      - {event: failed, target: done}
      - {event: send:LOG_MESSAGE}
    states:
      working:
        do: work
        after: [{seconds: wait_s, event: tick}]
        transitions:
          - {event: send:JOB_ACCEPT, target: done, guards: [ready]}
          - {event: tick, target: working, guards: ["!ready"]}
  done:
    final: true
"""


# ------------------------------------------------------------------ helpers


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def at(text: str, needle: str, nth: int = 0) -> tuple[int, int]:
    """1-based (line, column) of the ``nth`` occurrence of ``needle`` in ``text``."""
    index = -1
    for _ in range(nth + 1):
        index = text.index(needle, index + 1)
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    return line, column


def line_of(text: str, needle: str, nth: int = 0) -> int:
    return at(text, needle, nth)[0]


def check(text: str, bindings: BindingNames = BINDINGS) -> list[Problem]:
    chart, problems = check_chart_text(text, file=FILE, bindings=bindings)
    assert (chart is None) == bool(problems)
    return problems


def only(text: str, bindings: BindingNames = BINDINGS) -> Problem:
    """The single problem that ``text`` has."""
    problems = check(text, bindings)
    assert len(problems) == 1, "\n".join(map(str, problems))
    assert problems[0].file == FILE
    return problems[0]


def where(problem: Problem) -> tuple[int, int]:
    return problem.line, problem.column


def chart_with(states: str) -> str:
    """A small worker chart (events go and tick, option wait_s) with this ``states:`` body."""
    header = dedent(
        """
        chart: t
        role: worker
        initial: idle
        options: {wait_s: 5}
        events: {go: start, tick: the wait is over}
        """
    )
    return header + "states:\n" + textwrap.indent(dedent(states), "  ")


# ------------------------------------------------------------ clean charts


def test_minimal_chart_loads_into_the_expected_model() -> None:
    chart = load_chart_text(MINIMAL, file=FILE, bindings=BINDINGS)

    assert chart.name == "mini"
    assert chart.role is Role.WORKER
    assert chart.initial == "idle"
    assert chart.options == {"wait_s": 5.0}
    assert set(chart.events) == {"tick", "failed"}
    assert chart.source == FILE
    assert [s.name for s in chart.states] == ["idle", "busy", "working", "done"]
    assert chart.state("working") == State(
        name="working",
        parent="busy",
        do="work",
        after=(Timer("wait_s", "tick"),),
    )
    assert chart.state("busy").children == ("working",)
    assert chart.state("busy").on_exit == ("log",)
    assert chart.state("done").final
    assert chart.transitions == (
        Transition("idle", "recv:JOB_REQUEST", "busy", actions=("note",)),
        Transition("busy", "failed", "done"),
        Transition("busy", "send:LOG_MESSAGE"),
        Transition("working", "send:JOB_ACCEPT", "done", guards=("ready",)),
        Transition("working", "tick", "working", guards=("!ready",)),
    )
    # Inherited transitions come after the leaf's own: the innermost match wins.
    assert [t.event for t in chart.transitions_from("working")] == [
        "send:JOB_ACCEPT",
        "tick",
        "failed",
        "send:LOG_MESSAGE",
    ]
    assert chart.settle("busy") == "working"
    assert chart.path("working") == "busy.working"


def test_model_locations_point_at_the_source() -> None:
    chart = load_chart_text(MINIMAL, file=FILE, bindings=BINDINGS)

    assert chart.state("working").loc.line == line_of(MINIMAL, "working:")
    assert (chart.state("busy").loc.line, chart.state("busy").loc.column) == at(MINIMAL, "busy:")
    accept = chart.transitions[3]
    assert accept.loc.file == FILE
    assert accept.loc.line == line_of(MINIMAL, "send:JOB_ACCEPT")
    assert chart.state("working").after[0].loc.line == line_of(MINIMAL, "after:")


def test_lone_names_are_one_item_lists() -> None:
    text = chart_with(
        """
        idle:
          on_entry: note
          transitions:
            - {event: go, target: done, guards: "!ready", actions: log}
        done: {final: true}
        """
    )
    chart = load_chart_text(text, bindings=BINDINGS)
    assert chart.state("idle").on_entry == ("note",)
    assert chart.transitions[0].guards == ("!ready",)
    assert chart.transitions[0].actions == ("log",)


def test_fixture_file_loads_with_its_path_in_problems() -> None:
    path = CHARTS / "minimal.yaml"
    chart = load_chart(path, bindings=BINDINGS)
    assert chart.name == "fixture"
    assert chart.source == str(path)

    with pytest.raises(ChartError) as info:
        load_chart(CHARTS / "many_errors.yaml", bindings=BINDINGS)
    assert all(p.file == str(CHARTS / "many_errors.yaml") for p in info.value.problems)


# --------------------------------------------------------- problem format


def test_problem_renders_as_file_line_column_message_hint() -> None:
    assert str(Problem("a.yaml", 3, 7, "bad thing", "do this")) == "a.yaml:3:7: bad thing (do this)"
    assert str(Problem("a.yaml", 3, 7, "bad thing")) == "a.yaml:3:7: bad thing"


def test_chart_error_lists_every_problem() -> None:
    text = chart_with(
        """
        idle:
          transitions:
            - {event: bogus, target: nowhere, actions: [nope]}
        done: {final: true}
        """
    )
    problems = check(text)
    assert len(problems) == 3

    with pytest.raises(ChartError) as info:
        load_chart_text(text, file=FILE, bindings=BINDINGS)
    error = info.value
    assert isinstance(error, ValueError)
    assert error.problems == tuple(problems)
    lines = str(error).splitlines()
    assert lines[0] == "3 problems in chart:"
    assert lines[1:] == [str(p) for p in problems]


# ------------------------------------------------------------- YAML level


def test_yaml_syntax_error() -> None:
    text = "chart: t\nstates:\n  idle: {transitions: [}\n"
    problem = only(text)
    assert where(problem) == at(text, "}")
    assert problem.message.startswith("YAML syntax error:")
    assert "found '}'" in problem.message


def test_empty_file() -> None:
    problem = only("")
    assert where(problem) == (1, 1)
    assert "the file is empty" in problem.message


def test_comment_only_file_is_empty() -> None:
    assert "the file is empty" in only("# nothing here\n\n").message


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("- chart: t\n- initial: idle\n", "a list"),
        ("just a string\n", "the string 'just a string'"),
        ("~\n", "null"),
    ],
)
def test_top_level_must_be_a_mapping(text: str, found: str) -> None:
    problem = only(text)
    assert where(problem) == (1, 1)
    assert problem.message == f"a chart must be a mapping, found {found}"


def test_duplicate_yaml_key() -> None:
    text = chart_with(
        """
        idle:
          transitions: [{event: go, target: done}]
        idle:
          final: true
        done: {final: true}
        """
    )
    problem = only(text)
    assert where(problem) == at(text, "idle:", nth=1)
    assert problem.message == "duplicate key 'idle'"
    assert f"first defined at line {line_of(text, 'idle:')}" in problem.hint


def test_duplicate_key_does_not_hide_later_problems() -> None:
    text = chart_with(
        """
        idle:
          transitions: [{event: go, target: done}]
          transitions: [{event: go, target: idle}]
        done: {final: true, finl: true}
        """
    )
    problems = check(text)
    assert [where(p) for p in problems] == [at(text, "transitions:", nth=1), at(text, "finl")]
    assert "duplicate key 'transitions'" in problems[0].message
    assert "unknown key 'finl'" in problems[1].message


def test_yaml_merge_keys_are_refused_not_crashed_on() -> None:
    text = chart_with(
        """
        idle: &base
          transitions: [{event: go, target: done}]
        other:
          <<: *base
        done: {final: true}
        """
    )
    problem = only(text)
    assert where(problem) == at(text, "<<")
    assert "merge keys" in problem.message


def test_recursive_yaml_alias_is_refused_not_crashed_on() -> None:
    text = chart_with(
        """
        idle: &loop
          states: {inner: *loop}
        """
    )
    problem = only(text)
    assert problem.line == line_of(text, "&loop")
    assert "recursive YAML alias" in problem.message


def test_custom_yaml_tag_is_refused_not_crashed_on() -> None:
    text = chart_with(
        """
        idle:
          transitions: [{event: !python go, target: done}]
        done: {final: true}
        """
    )
    problem = only(text)
    assert where(problem) == at(text, "!python")
    assert "could not determine a constructor" in problem.message


def test_yaml_non_string_keys_are_reported_with_a_quoting_hint() -> None:
    text = chart_with(
        """
        idle:
          transitions: [{event: go, target: "off"}]
        off: {final: true}
        """
    )
    problem = only(text)
    assert where(problem) == at(text, "off:")
    assert problem.message == "key 'off' is read as a boolean, not as a name"
    assert problem.hint == "quote it: 'off'"


# ------------------------------------------------------- structure (keys)


def test_unknown_key_with_did_you_mean() -> None:
    text = chart_with(
        """
        idle:
          transitons:
            - {event: go, target: done}
        done: {final: true}
        """
    )
    problem = only(text)
    assert where(problem) == at(text, "transitons")
    assert problem.message == "unknown key 'transitons'"
    assert problem.hint == "did you mean 'transitions'?"


@pytest.mark.parametrize(
    ("typo", "meant"),
    [("chrat", "chart"), ("optoins", "options"), ("evnets", "events")],
)
def test_unknown_top_level_key(typo: str, meant: str) -> None:
    text = MINIMAL.replace("description:", f"{typo}: 1\ndescription:")
    problem = only(text)
    assert where(problem) == at(text, typo)
    assert problem.hint == f"did you mean {meant!r}?"


def test_unknown_key_deep_inside_nested_states() -> None:
    text = MINIMAL.replace("{seconds: wait_s, event: tick}", "{secs: wait_s, event: tick}")
    problems = check(text)
    # The timer also misses its required seconds: both are reported.
    assert [p.message for p in problems] == [
        "missing required key 'seconds'",
        "unknown key 'secs'",
    ]
    assert where(problems[1]) == at(text, "secs")
    assert problems[1].hint == "did you mean 'seconds'?"


def test_unknown_key_without_a_close_match_lists_the_known_keys() -> None:
    text = chart_with(
        """
        idle:
          zzz: 1
          transitions: [{event: go, target: done}]
        done: {final: true}
        """
    )
    problem = only(text)
    assert problem.hint.startswith("known keys: description, initial, final, do,")


@pytest.mark.parametrize(
    ("fragment", "expected"),
    [
        ("final: 'yes'", "expected true or false, found the string 'yes'"),
        ("final: 1", "expected true or false, found the number 1"),
        ("description: 3", "expected a string, found the number 3"),
        ("do: [work]", "expected a string or null, found a list"),
        ("on_entry: 5", "expected a list of names, found the number 5"),
        ("transitions: go", "expected a list, found the string 'go'"),
        ("after: 5", "expected a list, found the number 5"),
        ("states: [a, b]", "expected a mapping, found a list"),
    ],
)
def test_wrong_type(fragment: str, expected: str) -> None:
    key = fragment.split(":")[0]
    text = chart_with(
        f"""
        idle:
          {fragment}
        done: {{final: true}}
        """
    )
    problem = only(text)
    line, column = at(text, fragment)
    assert where(problem) == (line, column + len(key) + 2)
    assert problem.message == f"$.states.idle.{key}: {expected}"


def test_wrong_type_of_a_state_and_of_a_transition() -> None:
    text = chart_with(
        """
        idle:
          transitions:
            - go
            - {event: go, target: done, guards: 7}
        done:
        """
    )
    problems = check(text)
    assert [(p.line, p.message) for p in problems] == [
        (
            line_of(text, "- go"),
            "$.states.idle.transitions[0]: expected a mapping, found the string 'go'",
        ),
        (
            line_of(text, "guards: 7"),
            "$.states.idle.transitions[1].guards: expected a list of names, found the number 7",
        ),
        (line_of(text, "done:"), "$.states.done: expected a mapping, found null"),
    ]


def test_wrong_type_at_the_top() -> None:
    text = MINIMAL.replace("version: 1", "version: '1'").replace("wait_s: 5", "wait_s: soon")
    problems = check(text)
    assert [(p.line, p.message) for p in problems] == [
        (line_of(text, "version:"), "$.version: expected an integer, found the string '1'"),
        (
            line_of(text, "wait_s: soon"),
            "$.options.wait_s: expected a number, found the string 'soon'",
        ),
    ]


@pytest.mark.parametrize("key", ["chart", "initial", "states"])
def test_missing_required_top_level_key(key: str) -> None:
    text = "\n".join(line for line in MINIMAL.splitlines() if not line.startswith(f"{key}:"))
    if key == "states":  # drop the whole states block
        text = text.split("\n  idle:")[0] + "\n"
    problem = only(text)
    assert where(problem) == (1, 1)
    assert problem.message == f"missing required key {key!r}"
    assert problem.hint == f"add {key}: ..."


def test_missing_required_transition_key() -> None:
    text = chart_with(
        """
        idle:
          transitions:
            - {target: done}
        done: {final: true}
        """
    )
    problem = only(text)
    assert where(problem) == at(text, "{target")
    assert problem.message == "missing required key 'event'"


# --------------------------------------------------------------- states


def test_unknown_target_state_with_did_you_mean() -> None:
    text = chart_with(
        """
        idle:
          transitions: [{event: go, target: dnoe}]
        done: {final: true}
        """
    )
    problem = only(text)
    assert where(problem) == at(text, "dnoe")
    assert problem.message == "unknown target state 'dnoe'"
    assert problem.hint == "did you mean 'done'?"


def test_top_initial_names_no_state() -> None:
    text = MINIMAL.replace("initial: idle", "initial: iddle")
    problem = only(text)
    assert where(problem) == at(text, "iddle")
    assert problem.message == "initial state 'iddle' is not defined"
    assert problem.hint == "did you mean 'idle'?"


def test_top_initial_names_a_nested_state() -> None:
    text = MINIMAL.replace("initial: idle", "initial: working")
    problem = only(text)
    assert where(problem) == at(text, "working")
    assert "is nested inside 'busy'" in problem.message


def test_compound_initial_names_a_state_that_is_not_its_child() -> None:
    text = MINIMAL.replace("initial: working", "initial: done")
    problem = only(text)
    assert where(problem) == at(text, "done", nth=0)
    assert problem.message == "initial state 'done' of 'busy' is not one of its children"


def test_compound_initial_with_a_typo_suggests_the_child() -> None:
    text = MINIMAL.replace("initial: working", "initial: workin")
    problem = only(text)
    assert problem.hint == "did you mean 'working'?"


def test_compound_state_without_initial() -> None:
    text = MINIMAL.replace("    initial: working\n", "")
    problem = only(text)
    assert where(problem) == at(text, "busy:")
    assert problem.message == "compound state 'busy' has no initial state"
    assert problem.hint == "add initial: one of working"


def test_initial_on_a_state_without_children() -> None:
    text = chart_with(
        """
        idle:
          initial: done
          transitions: [{event: go, target: done}]
        done: {final: true}
        """
    )
    problem = only(text)
    assert where(problem) == at(text, "done", nth=0)
    assert problem.message == "state 'idle' has initial: but no child states"


def test_duplicate_state_in_two_subtrees() -> None:
    text = chart_with(
        """
        idle:
          initial: waiting
          transitions: [{event: go, target: done}]
          states:
            waiting: {}
        done:
          final: true
        waiting: {}
        """
    )
    problems = check(text)
    duplicate = [p for p in problems if "duplicate" in p.message]
    assert len(duplicate) == 1
    assert where(duplicate[0]) == at(text, "waiting:", nth=1)
    assert duplicate[0].message == "duplicate state 'waiting'"
    assert f"first defined at line {line_of(text, 'waiting:')}" in duplicate[0].hint


def test_invalid_state_name() -> None:
    text = chart_with(
        """
        idle:
          transitions: [{event: go, target: 2nd}]
        2nd: {final: true}
        """
    )
    problem = only(text)
    assert where(problem) == at(text, "2nd:")
    assert problem.message == "invalid state name '2nd'"


def test_unreachable_state() -> None:
    text = chart_with(
        """
        idle:
          transitions: [{event: go, target: done}]
        island:
          transitions: [{event: go, target: done}]
        done: {final: true}
        """
    )
    problem = only(text)
    assert where(problem) == at(text, "island:")
    assert problem.message == "state 'island' is unreachable from the initial state"


def test_unreachable_child_of_a_reachable_compound() -> None:
    text = MINIMAL.replace(
        "    states:\n      working:", "    states:\n      spare: {}\n      working:"
    )
    problem = only(text)
    assert where(problem) == at(text, "spare:")
    assert "'spare' is unreachable" in problem.message


def test_state_with_no_path_to_a_final_state() -> None:
    text = chart_with(
        """
        idle:
          transitions:
            - {event: go, target: done}
            - {event: tick, target: trap}
        trap:
          transitions: [{event: go, target: trap}]
        done: {final: true}
        """
    )
    problem = only(text)
    assert where(problem) == at(text, "trap:")
    assert problem.message == "state 'trap' has no path to a final state"


def test_chart_without_a_final_state() -> None:
    text = chart_with(
        """
        idle:
          transitions: [{event: go, target: idle}]
        """
    )
    problem = only(text)
    assert where(problem) == at(text, "states:")
    assert problem.message == "the chart has no final state"


def test_final_state_with_transitions() -> None:
    text = chart_with(
        """
        idle:
          transitions: [{event: go, target: done}]
        done:
          final: true
          transitions: [{event: go, target: idle}]
        """
    )
    problem = only(text)
    assert where(problem) == at(text, "done:")
    assert problem.message == "final state 'done' has transitions"


def test_final_state_with_activity_and_timer() -> None:
    text = chart_with(
        """
        idle:
          transitions: [{event: go, target: done}]
        done:
          final: true
          do: work
          after: [{seconds: 1, event: tick}]
        """
    )
    assert only(text).message == "final state 'done' has do, after"


# --------------------------------------------------------------- events


def test_event_neither_message_nor_declared() -> None:
    text = chart_with(
        """
        idle:
          transitions: [{event: tik, target: done}]
        done: {final: true}
        """
    )
    problem = only(text)
    assert where(problem) == at(text, "tik")
    assert "'tik' is neither a message event (send:TYPE, recv:TYPE) nor declared" in problem.message
    assert problem.hint == "did you mean 'tick'?"


def test_unknown_message_type() -> None:
    text = chart_with(
        """
        idle:
          transitions:
            - {event: send:FOO, target: done}
            - {event: recv:TASK_STRAT, target: done, guards: [ready]}
        done: {final: true}
        """
    )
    foo, strat = check(text)
    assert where(foo) == at(text, "send:FOO")
    assert foo.message == "event 'send:FOO' names an unknown message type 'FOO'"
    assert where(strat) == at(text, "recv:TASK_STRAT")
    assert strat.hint == "did you mean 'TASK_START'?"


def test_wrong_direction_for_a_worker() -> None:
    text = chart_with(
        """
        idle:
          transitions: [{event: recv:JOB_ACCEPT, target: done}]
        done: {final: true}
        """
    )
    problem = only(text)
    assert where(problem) == at(text, "recv:JOB_ACCEPT")
    assert problem.message == "event 'recv:JOB_ACCEPT': a modeller never sends JOB_ACCEPT"
    assert "the chart's role is worker" in problem.hint


def test_wrong_direction_for_a_modeller() -> None:
    text = chart_with(
        """
        idle:
          transitions: [{event: send:TASK_ABORT, target: done}]
        done: {final: true}
        """
    ).replace("role: worker", "role: modeller")
    problem = only(text)
    assert problem.message == "event 'send:TASK_ABORT': a modeller never sends TASK_ABORT"


def test_log_message_goes_both_ways() -> None:
    text = chart_with(
        """
        idle:
          transitions:
            - {event: send:LOG_MESSAGE}
            - {event: recv:LOG_MESSAGE}
            - {event: go, target: done}
        done: {final: true}
        """
    )
    assert check(text) == []


def test_conformance_control_line_is_not_an_event() -> None:
    text = chart_with(
        """
        idle:
          transitions: [{event: recv:CONFORMANCE_SCENARIO, target: done}]
        done: {final: true}
        """
    )
    assert "conformance control line" in only(text).message


def test_declared_event_must_not_look_like_a_message() -> None:
    text = chart_with(
        """
        idle:
          transitions: [{event: go, target: done}]
        done: {final: true}
        """,
    ).replace("events: {go: start,", "events: {'send:GO': start, go: start,")
    problem = only(text)
    assert where(problem) == at(text, "'send:GO'")
    assert "must not look like a message event" in problem.message


def test_two_transitions_without_a_guard_to_separate_them() -> None:
    text = chart_with(
        """
        idle:
          transitions:
            - {event: go, target: done}
            - {event: go, target: idle, guards: [ready]}
            - {event: tick, target: done, guards: [ready, "!done"]}
            - {event: tick, target: idle, guards: ["!done", ready]}
        done: {final: true}
        """
    )
    first, second = check(text)
    assert where(first) == at(text, "{event: go, target: idle")
    assert first.message == "two transitions from 'idle' on 'go' with no guard to separate them"
    other = line_of(text, "{event: go, target: done")
    assert first.hint.startswith(f"the other is at line {other}")
    assert where(second) == at(text, "{event: tick, target: idle")


def test_distinct_guards_separate_transitions() -> None:
    text = chart_with(
        """
        idle:
          transitions:
            - {event: go, target: done, guards: [ready]}
            - {event: go, target: idle, guards: ["!ready"]}
        done: {final: true}
        """
    )
    assert check(text) == []


def test_role_and_version() -> None:
    text = MINIMAL.replace("role: worker", "role: wroker").replace("version: 1", "version: 2")
    role, version = check(text)
    assert where(role) == at(text, "wroker")
    assert role.message == "unknown role 'wroker'"
    assert where(version) == at(text, "2")
    assert version.message == "unsupported chart version 2"


def test_without_a_role_directions_are_not_checked() -> None:
    text = chart_with(
        """
        idle:
          transitions: [{event: recv:JOB_ACCEPT, target: done}]
        done: {final: true}
        """
    ).replace("role: worker\n", "")
    chart = load_chart_text(text, bindings=BINDINGS)
    assert chart.role is None


# ------------------------------------------------------------- bindings


def test_guard_not_provided_even_when_negated() -> None:
    text = chart_with(
        """
        idle:
          transitions:
            - {event: go, target: done, guards: [ready, "!redy"]}
        done: {final: true}
        """
    )
    problem = only(text)
    assert where(problem) == at(text, '"!redy"')
    assert problem.message == "guard 'redy' is not provided by the worker bindings"
    assert problem.hint == "did you mean 'ready'?"


def test_action_not_provided() -> None:
    text = chart_with(
        """
        idle:
          on_entry: [note, nope]
          on_exit: [lgo]
          transitions:
            - {event: go, target: done, actions: [log, xyz]}
        done: {final: true}
        """
    )
    problems = check(text)
    assert [(where(p), p.message) for p in problems] == [
        (at(text, "nope"), "action 'nope' is not provided by the worker bindings"),
        (at(text, "lgo"), "action 'lgo' is not provided by the worker bindings"),
        (at(text, "xyz"), "action 'xyz' is not provided by the worker bindings"),
    ]
    assert problems[1].hint == "did you mean 'log'?"
    assert problems[2].hint == "known: log, note"


def test_activity_not_provided() -> None:
    text = chart_with(
        """
        idle:
          do: wrok
          transitions: [{event: go, target: done}]
        done: {final: true}
        """
    )
    problem = only(text)
    assert where(problem) == at(text, "wrok")
    assert problem.message == "activity 'wrok' is not provided by the worker bindings"
    assert problem.hint == "did you mean 'work'?"


def test_empty_bindings_report_every_name() -> None:
    problems = check(MINIMAL, BindingNames())
    assert sorted(p.message.split("'")[1] for p in problems) == sorted(
        ["note", "log", "work", "ready", "ready"]
    )


def test_names_are_checked_only_against_names_given() -> None:
    # The loader knows no role's bindings: which class plays a role is the
    # runtime's business, and the runtime and `fsm-protocol validate` pass them.
    text = chart_with(
        """
        idle:
          transitions:
            - {event: go, target: done, guards: [redy]}
        done: {final: true}
        """
    )
    assert check_chart_text(text, file=FILE) == (load_chart_text(text), [])
    by_role = {Role.WORKER: BINDINGS, Role.MODELLER: BindingNames()}
    chart, problems = check_chart_text(text, file=FILE, role_bindings=by_role)
    assert chart is None
    assert [(where(p), p.message) for p in problems] == [
        (at(text, "redy"), "guard 'redy' is not provided by the worker bindings")
    ]
    # Names given outright win over the role's.
    both = BindingNames(guards=frozenset({"redy"}))
    assert check_chart_text(text, file=FILE, bindings=both, role_bindings=by_role)[1] == []
    # A chart without a role is checked against no role's names.
    no_role = text.replace("role: worker\n", "")
    assert check_chart_text(no_role, file=FILE, role_bindings=by_role)[1] == []


# --------------------------------------------------------------- timers


def test_timer_event_undeclared() -> None:
    text = chart_with(
        """
        idle:
          after: [{seconds: 1, event: tock}]
          transitions: [{event: go, target: done}]
        done: {final: true}
        """
    )
    problem = only(text)
    assert where(problem) == at(text, "tock")
    assert problem.message == "timer event 'tock' is not declared"


def test_timer_seconds_names_an_undeclared_option() -> None:
    text = chart_with(
        """
        idle:
          after: [{seconds: wait, event: tick}]
          transitions: [{event: go, target: done}, {event: tick, target: done, guards: [ready]}]
        done: {final: true}
        """
    )
    problem = only(text)
    assert where(problem) == at(text, "wait,")
    assert problem.message == "timer seconds 'wait' is not a declared option"
    assert problem.hint == "did you mean 'wait_s'?"


@pytest.mark.parametrize("seconds", ["0", "-1", ".inf"])
def test_timer_seconds_must_be_positive(seconds: str) -> None:
    text = chart_with(
        f"""
        idle:
          after: [{{seconds: {seconds}, event: tick}}]
          transitions: [{{event: tick, target: done}}]
        done: {{final: true}}
        """
    )
    problem = only(text)
    assert where(problem) == at(text, seconds + ",")
    assert problem.message.startswith("timer seconds must be > 0")


def test_option_must_not_be_negative() -> None:
    text = MINIMAL.replace("wait_s: 5", "wait_s: -5")
    problem = only(text)
    assert where(problem) == at(text, "-5")
    assert problem.message == "option 'wait_s' must be >= 0, found -5.0"


# ------------------------------------------------------ many at once


def test_many_semantic_problems_in_one_run_in_line_order() -> None:
    text = dedent(
        """
        chart: many
        role: worker
        initial: idle
        events: {go: start}
        states:
          idle:
            do: nap
            after: [{seconds: later, event: go}]
            transitions:
              - {event: go, target: dnoe, actions: [shout]}
              - {event: recv:JOB_ACCEPT, target: done}
              - {event: send:NOPE, target: done}
          done: {final: true}
          idle2:
            final: true
            transitions: [{event: go, target: idle}]
        """
    )
    problems = check(text)
    assert [(p.line, p.column) for p in problems] == sorted((p.line, p.column) for p in problems)
    assert [(where(p), p.message.split(" ")[0]) for p in problems] == [
        (at(text, "nap"), "activity"),
        (at(text, "later"), "timer"),
        (at(text, "dnoe"), "unknown"),
        (at(text, "shout"), "action"),
        (at(text, "recv:JOB_ACCEPT"), "event"),
        (at(text, "send:NOPE"), "event"),
        (at(text, "idle2:"), "final"),
    ]


def test_many_structural_problems_in_one_run_in_line_order() -> None:
    text = dedent(
        """
        chart: many
        initial: idle
        descripton: typo
        states:
          idle:
            final: "yes"
            transitions:
              - {target: done}
              - {event: go, taget: done}
          done:
            states: {inner: {after: [{seconds: 1}]}}
          done: {final: true}
        """
    )
    problems = check(text)
    assert [(where(p), p.message) for p in problems] == [
        (at(text, "descripton"), "unknown key 'descripton'"),
        (at(text, '"yes"'), "$.states.idle.final: expected true or false, found the string 'yes'"),
        (at(text, "{target"), "missing required key 'event'"),
        (at(text, "taget"), "unknown key 'taget'"),
        (at(text, "{seconds: 1}"), "missing required key 'event'"),
        (at(text, "done:", nth=1), "duplicate key 'done'"),
    ]


def test_many_errors_fixture_file() -> None:
    path = CHARTS / "many_errors.yaml"
    text = path.read_text(encoding="utf-8")
    _, problems = check_chart_text(text, file=str(path), bindings=BINDINGS)
    assert len(problems) >= 3
    assert [(p.line, p.column) for p in problems] == sorted((p.line, p.column) for p in problems)
    # Each problem is marked in the fixture by a comment naming its kind.
    for problem in problems:
        marker = text.splitlines()[problem.line - 1]
        assert "# expect:" in marker, str(problem)
        assert marker.split("# expect:")[1].strip() in problem.message, str(problem)
    expected = [i + 1 for i, line in enumerate(text.splitlines()) if "# expect:" in line]
    assert [p.line for p in problems] == expected


# ------------------------------------------------------- shipped charts


def _collect_names(raw: dict[str, Any]) -> BindingNames:
    """Every guard, action and activity name a chart uses, read off its YAML."""
    guards: set[str] = set()
    actions: set[str] = set()
    activities: set[str] = set()

    def listed(value: Any) -> list[str]:
        return [value] if isinstance(value, str) else list(value or [])

    def walk(states: dict[str, Any]) -> Iterator[dict[str, Any]]:
        for state in states.values():
            yield state
            yield from walk(state.get("states") or {})

    for state in walk(raw["states"]):
        actions.update(listed(state.get("on_entry")) + listed(state.get("on_exit")))
        if state.get("do"):
            activities.add(state["do"])
        for t in state.get("transitions") or []:
            guards.update(g.lstrip("!") for g in listed(t.get("guards")))
            actions.update(listed(t.get("actions")))
    return BindingNames(frozenset(guards), frozenset(actions), frozenset(activities))


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_chart_passes_every_check_but_bindings(name: str) -> None:
    text = SHIPPED[name].read_text(encoding="utf-8")
    bindings = _collect_names(yaml.safe_load(text))
    chart, problems = check_chart_text(text, file=str(SHIPPED[name]), bindings=bindings)
    assert problems == []
    assert chart is not None
    assert chart.role is Role(name)


# ------------------------------------------------------------ JSON schema


def _schema() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return result


def _objects(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _objects(value)
    elif isinstance(node, list):
        for value in node:
            yield from _objects(value)


def test_schema_keys_match_the_loader() -> None:
    schema = _schema()
    defs = schema["$defs"]
    for cls, props in [
        (RawChart, schema["properties"]),
        (RawState, defs["state"]["properties"]),
        (RawTransition, defs["transition"]["properties"]),
        (RawTimer, defs["timer"]["properties"]),
    ]:
        assert sorted(props) == sorted(a.name for a in attrs.fields(cls)), cls.__name__
    required = [a.name for a in attrs.fields(RawChart) if a.default is attrs.NOTHING]
    assert sorted(schema["required"]) == sorted(required)


def test_schema_forbids_extra_keys_everywhere() -> None:
    for node in _objects(_schema()):
        if "properties" in node and isinstance(node["properties"], dict):
            assert node.get("additionalProperties") is False, sorted(node["properties"])


def test_schema_message_types_match_the_wire() -> None:
    defs = _schema()["$defs"]
    wire = [t.value for t in MessageType if t is not MessageType.CONFORMANCE_SCENARIO]
    assert defs["messageType"]["enum"] == wire
    assert "|".join(wire) in defs["event"]["pattern"]


def _validator() -> Any:
    # jsonschema is in the test extra; a missing package is a failure, not a skip.
    import jsonschema  # type: ignore[import-untyped]

    schema = _schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("path", [*sorted(SHIPPED.values()), CHARTS / "minimal.yaml"], ids=str)
def test_charts_validate_against_the_schema(path: Path) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    errors = [e.message for e in _validator().iter_errors(data)]
    assert errors == []


def test_minimal_chart_validates_against_the_schema() -> None:
    assert list(_validator().iter_errors(yaml.safe_load(MINIMAL))) == []


WORKING = ["states", "busy", "states", "working"]


@pytest.mark.parametrize(
    ("old", "new", "path"),
    [
        ("description:", "descripton:", []),
        ("    on_exit:", "    on_exitt:", ["states", "busy"]),
        ("guards: [ready]", "guards: [ready], guard: [done]", [*WORKING, "transitions", 0]),
        ("event: tick}", "event: tick, every: 1}", [*WORKING, "after", 0]),
    ],
)
def test_schema_rejects_an_unknown_key(old: str, new: str, path: list[str | int]) -> None:
    assert old in MINIMAL
    data = yaml.safe_load(MINIMAL.replace(old, new))
    errors = list(_validator().iter_errors(data))
    assert len(errors) == 1
    assert "Additional properties are not allowed" in errors[0].message
    assert list(errors[0].absolute_path) == path


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("    final: true", "    final: 'yes'"),
        ("send:JOB_ACCEPT", "send:FOO"),
        ("recv:JOB_REQUEST", "recv job request"),
        ('"!ready"', '"!!ready"'),
        ("seconds: wait_s", "seconds: 0"),
        ("wait_s: 5", "wait_s: -5"),
        ("version: 1", "version: 2"),
        ("role: worker", "role: pod"),
        ("chart: mini\n", ""),
        ("  done:\n", "  2done:\n"),
    ],
)
def test_schema_rejects_a_malformed_chart(old: str, new: str) -> None:
    assert old in MINIMAL
    data = yaml.safe_load(MINIMAL.replace(old, new))
    assert list(_validator().iter_errors(data)) != []


# ------------------------------------------------------------------ docs


def test_docs_mention_every_key() -> None:
    docs = (REPO / "docs" / "charts.md").read_text(encoding="utf-8")
    for cls in (RawChart, RawState, RawTransition, RawTimer):
        for field in attrs.fields(cls):
            assert f"`{field.name}`" in docs, f"docs/charts.md does not describe {field.name!r}"


# Every example line in docs/charts.md comes from one of these charts: the
# header below plus a states: body, or a whole file where the header is None.
DOC_HEAD = dedent(
    """
    chart: worker
    role: worker
    initial: idle
    options: {soft_timeout_s: 180}
    events: {soft_timeout: x, run_done: y}
    """
)
DOC_BINDINGS = BindingNames(
    guards=frozenset({"is_batch_result", "ready"}),
    actions=frozenset({"note_result", "store_job"}),
    activities=frozenset({"run_batch"}),
)
T = "  transitions: [{event: run_done, target: done}]\n"
DONE = "done: {final: true}\n"
DOC_EXAMPLES: list[tuple[str | None, str]] = [
    (None, "chart: worker\nstates:\n  idle: {transitions: [}\n"),
    (None, ""),
    (None, "- idle\n"),
    (None, "chart: worker\ninitial: idle\n"),
    (None, "chart: worker\ninitial: idle\nstates: {}\n"),
    (DOC_HEAD, "idle: &a {final: true}\nx: {<<: *a}\n"),
    (DOC_HEAD, "idle: &a\n  states: {x: *a}\n"),
    (DOC_HEAD, "idle: {do: !py x}\n"),
    (DOC_HEAD, "idle: {final: true}\noff: {final: true}\n"),
    (DOC_HEAD, "idle:\n  transitions: []\n  transitions: []\n  final: true\n"),
    (DOC_HEAD, "idle:\n  transitons: []\n"),
    (DOC_HEAD, "idle:\n  colour: red\n"),
    (DOC_HEAD, "idle:\n  final: 'yes'\n"),
    (DOC_HEAD, "idle:\n  transitions:\n    - {target: done}\n"),
    (DOC_HEAD.replace("role: worker", "role: pod"), "idle: {final: true}\n"),
    (DOC_HEAD.replace("initial: idle", "version: 2\ninitial: idle"), "idle: {final: true}\n"),
    (DOC_HEAD.replace("events: {", "events: {'recv:PING': x, "), "idle: {final: true}\n"),
    (DOC_HEAD, "idle:\n  initial: waiting\n  states: {waiting: {}}\nwaiting: {final: true}\n"),
    (DOC_HEAD, "idle: {final: true}\n2nd: {final: true}\n"),
    (DOC_HEAD, "idel: {final: true}\n"),
    (
        DOC_HEAD.replace("initial: idle", "initial: listening"),
        "idle: {final: true}\nengaged:\n  initial: listening\n  states: {listening: {}}\n",
    ),
    (DOC_HEAD, "idle:\n  states: {a: {}}\n"),
    (DOC_HEAD, "idle:\n  initial: done\n  states: {a: {}}\n" + DONE),
    (DOC_HEAD, "idle:\n  initial: done\n" + DONE),
    (DOC_HEAD, "idle:\n  final: true\n  transitions: [{event: run_done, target: idle}]\n"),
    (DOC_HEAD, "idle:\n  transitions: [{event: run_dnoe, target: done}]\n" + DONE),
    (DOC_HEAD, "idle:\n  transitions: [{event: send:TASK_STRAT, target: done}]\n" + DONE),
    (DOC_HEAD, "idle:\n  transitions: [{event: recv:JOB_ACCEPT, target: done}]\n" + DONE),
    (DOC_HEAD, "idle:\n  transitions: [{event: recv:CONFORMANCE_SCENARIO, target: done}]\n" + DONE),
    (
        DOC_HEAD,
        "idle:\n  transitions: [{event: run_done, target: compelte}]\ncomplete: {final: true}\n",
    ),
    (
        DOC_HEAD,
        "idle:\n  transitions: [{event: run_done, target: done, guards: ['!is_batch_reslt']}]\n"
        + DONE,
    ),
    (
        DOC_HEAD,
        "idle:\n  transitions: [{event: run_done, target: done, actions: [note_reslt]}]\n" + DONE,
    ),
    (DOC_HEAD, "idle:\n  do: run_btch\n" + T + DONE),
    (
        DOC_HEAD,
        "idle:\n  transitions:\n    - {event: run_done, target: done}\n"
        "    - {event: run_done, target: idle, guards: [ready]}\n" + DONE,
    ),
    (DOC_HEAD, "idle:\n  after: [{seconds: 5, event: soft_timout}]\n" + T + DONE),
    (
        DOC_HEAD,
        "idle:\n  after: [{seconds: soft_timeout, event: soft_timeout}]\n"
        "  transitions: [{event: soft_timeout, target: done}]\n" + DONE,
    ),
    (
        DOC_HEAD,
        "idle:\n  after: [{seconds: 0, event: soft_timeout}]\n"
        "  transitions: [{event: soft_timeout, target: done}]\n" + DONE,
    ),
    (DOC_HEAD.replace("180", "-1"), "idle: {final: true}\n"),
    (DOC_HEAD, "idle:\n" + T + "spare:\n" + T + DONE),
    (
        DOC_HEAD,
        "idle:\n  transitions: [{event: run_done, target: done}, "
        "{event: soft_timeout, target: stuck}]\nstuck: {}\n" + DONE,
    ),
    (DOC_HEAD, "idle:\n  transitions: [{event: run_done, target: idle}]\n"),
]


def _doc_example_lines() -> Iterator[str]:
    for head, body in DOC_EXAMPLES:
        text = body if head is None else head + "states:\n" + textwrap.indent(body, "  ")
        _, problems = check_chart_text(text, file="my_chart.yaml", bindings=DOC_BINDINGS)
        assert problems, text
        yield from (str(p) for p in problems)


def test_docs_error_examples_are_real_output() -> None:
    docs = (REPO / "docs" / "charts.md").read_text(encoding="utf-8")
    documented = re.findall(r"`(my_chart\.yaml:[^`]*)`", docs)
    produced = set(_doc_example_lines())
    assert [line for line in documented if line not in produced] == []
    assert len(documented) >= 40


def test_docs_yaml_snippets_are_quoted_from_the_shipped_charts() -> None:
    docs = (REPO / "docs" / "charts.md").read_text(encoding="utf-8")
    shipped = {line for path in SHIPPED.values() for line in path.read_text().splitlines()}
    for block in re.findall(r"```yaml\n(.*?)```", docs, re.S):
        for line in block.splitlines():
            if line.strip() and not line.strip().startswith("#"):
                assert line in shipped, line
