"""Chart diagrams: what each notation must show, and the ``diagram`` command."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from fsm_protocol import ConfigError, load_chart_text, shipped_chart
from fsm_protocol._cli._main import main
from fsm_protocol._export._diagram import (
    render_graphviz,
    state_body,
    to_dot,
    to_mermaid,
    to_plantuml,
    transition_label,
)

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz dot not installed")

# A small chart with one of everything a diagram must draw.
SMALL = """
chart: small
description: 'A "quoted" chart; with # and ; in it'
initial: idle
options: {wait_s: 5}
events: {tick: the timer, done: finished, poke: a nudge}
states:
  idle:
    transitions:
      - {event: poke, target: busy, guards: [ready, "!tired"], actions: [start]}
  busy:
    initial: working
    do: supervise
    on_entry: [enter_busy]
    on_exit: [leave_busy]
    transitions:
      - {event: poke, actions: [count]}
      - {event: done, target: finished}
    states:
      working:
        after: [{seconds: wait_s, event: tick}, {seconds: 2.5, event: done}]
        transitions:
          - {event: tick, target: working}
  finished:
    final: true
"""


@pytest.fixture
def small() -> object:
    return load_chart_text(SMALL)


def test_labels_show_timers_guards_and_actions(small: object) -> None:
    chart = load_chart_text(SMALL)
    poke = next(t for t in chart.transitions if t.source == "idle")
    tick = next(t for t in chart.transitions if t.event == "tick")
    assert transition_label(chart, poke) == "poke [ready and !tired] / start"
    assert transition_label(chart, tick) == "after(wait_s)"
    assert state_body(chart, chart.state("busy")) == [
        "do / supervise",
        "entry / enter_busy",
        "exit / leave_busy",
        "poke / count",
    ]
    # A timer whose event this state does not handle says which event it raises.
    assert "after(2.5 s) raises done" in state_body(chart, chart.state("working"))


@pytest.mark.parametrize("name", ["worker", "modeller"])
def test_every_notation_shows_every_state_and_external_transition(name: str) -> None:
    chart = shipped_chart(name)
    for text in (to_mermaid(chart), to_dot(chart), to_plantuml(chart)):
        for state in chart.states:
            assert state.name in text
        for t in chart.transitions:
            label = transition_label(chart, t)
            if t.target is not None:
                assert label in text, label


def test_worker_diagrams_draw_the_hard_parts() -> None:
    chart = shipped_chart("worker")
    mermaid, dot, puml = to_mermaid(chart), to_dot(chart), to_plantuml(chart)
    # Compound states nest.
    assert "state engaged {" in mermaid and "state batches {" in mermaid
    assert 'subgraph "cluster_engaged"' in dot and 'subgraph "cluster_batches"' in dot
    assert "state engaged {" in puml
    # Guards, negated guards, timers.
    for text in (mermaid, dot, puml):
        assert "[count_is_one and !batched_job]" in text
        assert "after(soft_timeout_s)" in text
        assert "after(task_start_timeout_s) / note_modeller_timeout" in text
    # Initial states, the chart's and each compound state's.
    assert "[*] --> idle" in mermaid and "[*] --> batch_ready" in mermaid
    assert '"__initial__" -> "idle"' in dot
    assert '"__initial__batches" -> "batch_ready"' in dot
    # Final states are marked and lead to the end.
    for final in ("rejected", "complete", "aborted", "closed"):
        assert f"{final} --> [*]" in mermaid
        assert f"{final} --> [*]" in puml
        assert f'"{final}" [label=' in dot
    assert dot.count("peripheries=2") == 4
    assert "class rejected, complete, aborted, closed final" in mermaid


def test_internal_transitions_are_listed_inside_their_state_not_drawn() -> None:
    chart = shipped_chart("worker")
    mermaid, dot = to_mermaid(chart), to_dot(chart)
    # aborting's internal recv:TASK_CANCEL is a line of the state, not an arrow.
    assert "aborting : recv:TASK_CANCEL" in mermaid
    assert "aborting --> aborting" not in mermaid
    assert '"aborting" -> "aborting"' not in dot
    assert "send:EVALUATION_RESULTS [is_batch_result] / note_result" in dot
    # A compound state's internal transitions go into a note beside it.
    assert "note right of engaged" in mermaid
    # External self-transitions (they restart timers) stay arrows.
    assert "setup_listening --> setup_listening : recv:LOG_MESSAGE" in mermaid


def test_dot_clips_arrows_at_compound_borders() -> None:
    dot = to_dot(shipped_chart("worker"))
    # Into a compound state: to its initial dot, clipped at the cluster.
    assert (
        '"vetting" -> "__initial__engaged" [label="send:JOB_ACCEPT", lhead="cluster_engaged"]'
        in dot
    )
    # Out of a compound state: from below its children, clipped at the cluster.
    assert '"__exit__engaged" -> "aborting" [' in dot
    assert 'ltail="cluster_engaged"' in dot
    # Parallel arrows between one pair of states become one arrow with every label.
    assert "recv:TASK_CANCEL / note_cancelled\\ninput_closed / note_modeller_lost" in dot


def test_special_characters_are_escaped(small: object) -> None:
    chart = load_chart_text(SMALL)
    assert '\\"quoted\\"' in to_dot(chart)
    mermaid = to_mermaid(chart)
    assert 'A "quoted" chart#59; with #35; and #59; in it' in mermaid


@needs_dot
@pytest.mark.parametrize("name", ["worker", "modeller"])
def test_graphviz_renders_both_charts_without_warnings(name: str) -> None:
    done = subprocess.run(
        ["dot", "-Tsvg"],
        input=to_dot(shipped_chart(name)).encode(),
        capture_output=True,
        check=True,
    )
    assert done.stderr == b""
    assert b"<svg" in done.stdout


@needs_dot
def test_render_graphviz_svg_and_png(small: object) -> None:
    dot = to_dot(load_chart_text(SMALL))
    svg = render_graphviz(dot, "svg")
    assert svg.lstrip().startswith(b"<?xml") and b"<svg" in svg
    # Descriptions become tooltips.
    assert b"A &quot;quoted&quot; chart" in svg or b"quoted" in svg
    assert render_graphviz(dot, "png").startswith(b"\x89PNG\r\n\x1a\n")


def test_render_graphviz_names_the_package_when_dot_is_missing() -> None:
    with pytest.raises(ConfigError, match=r"apt-get install graphviz") as info:
        render_graphviz("digraph {}", "svg", dot="no-such-dot-program")
    assert "--format dot, mermaid or plantuml" in str(info.value)


def test_render_graphviz_refuses_unknown_formats() -> None:
    with pytest.raises(ConfigError, match="use one of svg, png"):
        render_graphviz("digraph {}", "gif")


@needs_dot
def test_render_graphviz_reports_dot_failures() -> None:
    with pytest.raises(ConfigError, match="failed"):
        render_graphviz("digraph { this is not dot", "svg")


# ----------------------------------------------------------------- the CLI


@pytest.mark.parametrize(
    ("fmt", "start"),
    [
        ("mermaid", "stateDiagram-v2"),
        ("dot", 'digraph "worker"'),
        ("plantuml", "@startuml worker"),
        ("scxml", '<?xml version="1.0" encoding="UTF-8"?>'),
    ],
)
def test_cli_text_formats_to_stdout(
    fmt: str, start: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["diagram", "worker", "--format", fmt]) == 0
    assert capsys.readouterr().out.startswith(start)


@needs_dot
@pytest.mark.parametrize(("fmt", "magic"), [("svg", b"<?xml"), ("png", b"\x89PNG")])
def test_cli_graphviz_formats_to_a_file(fmt: str, magic: bytes, tmp_path: Path) -> None:
    out = tmp_path / f"modeller.{fmt}"
    assert main(["diagram", "modeller", "--format", fmt, "-o", str(out)]) == 0
    assert out.read_bytes().startswith(magic)


def test_cli_reads_chart_files_yaml_and_scxml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    yaml_file = tmp_path / "small.yaml"
    yaml_file.write_text(SMALL)
    scxml_file = tmp_path / "small.scxml"
    assert main(["diagram", str(yaml_file), "-f", "scxml", "-o", str(scxml_file)]) == 0
    assert main(["diagram", str(scxml_file), "-f", "mermaid"]) == 0
    assert "state busy {" in capsys.readouterr().out


def test_cli_unusable_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagram", "wrker"]) == 2
    assert "no shipped chart of that name (the shipped charts are modeller, worker)" in (
        capsys.readouterr().err
    )
    assert main(["diagram"]) == 2
    assert "name exactly one thing to draw" in capsys.readouterr().err
    broken = tmp_path / "broken.yaml"
    broken.write_text("chart: x\ninitial: a\nstates: {a: {transitions: [{event: e}]}}\n")
    assert main(["diagram", str(broken)]) == 2
    err = capsys.readouterr().err
    assert f"{broken}:" in err and "cannot draw a chart with" in err
    assert main(["diagram", "worker", "-o", str(tmp_path / "no" / "such" / "dir.mmd")]) == 2
    assert "cannot be written" in capsys.readouterr().err


def test_cli_names_graphviz_when_it_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert main(["diagram", "worker", "--format", "svg"]) == 2
    assert "apt-get install graphviz" in capsys.readouterr().err
