"""Chart diagrams: what each notation must show, and the ``diagram`` command."""

from __future__ import annotations

import html
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from fsm_protocol import ConfigError, load_chart_text, shipped_chart
from fsm_protocol._cli._main import main
from fsm_protocol._export._diagram import (
    mermaid_text,
    render_graphviz,
    state_body,
    to_dot,
    to_mermaid,
    to_plantuml,
    transition_label,
)
from fsm_protocol._export._sequence import message_label, read_trace

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz dot not installed")

ROOT = Path(__file__).resolve().parent.parent
JS = Path(__file__).resolve().parent / "js"

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
    for text, escape in (
        (to_mermaid(chart), mermaid_text),
        (to_dot(chart), str),
        (to_plantuml(chart), str),
    ):
        for state in chart.states:
            assert state.name in text
        for t in chart.transitions:
            label = escape(transition_label(chart, t))
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
    assert "aborting : recv#58;TASK_CANCEL" in mermaid
    assert "aborting --> aborting" not in mermaid
    assert '"aborting" -> "aborting"' not in dot
    assert "send:EVALUATION_RESULTS [is_batch_result] / note_result" in dot
    # A compound state's internal transitions go into a note beside it.
    assert "note right of engaged" in mermaid
    # External self-transitions (they restart timers) stay arrows.
    assert "setup_listening --> setup_listening : recv#58;LOG_MESSAGE" in mermaid


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


# ------------------------------------------------- checked by the real renderers


def _mermaid_skip_reason() -> str | None:
    if shutil.which("node") is None:
        return (
            "Node.js is not installed, so Mermaid's own parser cannot run "
            "(.ci/run installs it: apt-get install nodejs npm, then npm ci in tests/js)"
        )
    if not (JS / "node_modules" / "mermaid").is_dir():
        return "the mermaid npm package is not installed: run npm ci in tests/js (.ci/run does)"
    return None


needs_mermaid = pytest.mark.skipif(
    _mermaid_skip_reason() is not None, reason=_mermaid_skip_reason() or ""
)


# The current Mermaid, and the older Mermaid 11 that sites still ship (it rejects a raw ':'
# in a state's description line, where 11.17 accepts it).
MERMAID_PACKAGES = ("mermaid", "mermaid-11.4")


def mermaid_parse(
    tmp_path: Path, package: str = "mermaid", **texts: str
) -> dict[str, dict[str, Any]]:
    """What Mermaid's parser (the npm package, run by Node) understood of each text."""
    files = []
    for name, text in texts.items():
        path = tmp_path / f"{name}.mmd"
        path.write_text(text, encoding="utf-8")
        files.append(str(path))
    done = subprocess.run(
        ["node", str(JS / "check_mermaid.mjs"), "--package", package, *files],
        capture_output=True,
        check=True,
        timeout=120,
    )
    results = json.loads(done.stdout)
    return {Path(r["file"]).stem: r for r in results}


def shown(text: str) -> list[str]:
    """The lines Mermaid shows for a parsed label, its entity codes decoded as it renders them."""
    decoded = (
        text.replace("\ufb02\xb0\xb0", "&#").replace("\ufb02\xb0", "&").replace("\xb6\xdf", ";")
    )
    return [html.unescape(line).strip() for line in decoded.replace("<br>", "\n").split("\n")]


def assert_mermaid_shows_the_chart(parsed: dict[str, Any], chart: Any) -> None:
    """Every state, body line and transition label reaches Mermaid's layout, as written."""
    assert parsed["ok"], parsed.get("error")
    assert parsed["type"] == "stateDiagram"
    nodes = parsed["nodes"]
    edges: dict[tuple[str, str], list[str]] = {}
    for source, target, label in parsed["edges"]:
        edges.setdefault((source, target), []).extend(shown(label))
    for state in chart.states:
        assert state.name in nodes, f"Mermaid lost state {state.name}"
        node = nodes[state.name]
        body = state_body(chart, state)
        if state.compound:
            assert node["shape"] == "roundedWithTitle", state.name
            notes = [n for key, n in nodes.items() if key.startswith(f"{state.name}----note")]
            assert [line for n in notes for line in shown(n["label"])] == body, state.name
        else:
            assert [line for d in node["description"] for line in shown(d)] == body, state.name
        if state.parent is not None:
            assert node["parent"] == state.parent, state.name
        assert ("final" in node["classes"].split()) == state.final, state.name
    for t in chart.transitions:
        if t.target is not None:
            assert transition_label(chart, t) in edges[(t.source, t.target)], t


@needs_mermaid
def test_mermaid_parses_both_charts_and_shows_every_label_as_written(tmp_path: Path) -> None:
    charts = {
        "worker": shipped_chart("worker"),
        "modeller": shipped_chart("modeller"),
        "small": load_chart_text(SMALL),
    }
    texts = {n: to_mermaid(c) for n, c in charts.items()}
    for package in MERMAID_PACKAGES:
        for name, result in mermaid_parse(tmp_path, package, **texts).items():
            assert result["ok"], f"{package}: {name}: {result.get('error')}"
    parsed = mermaid_parse(tmp_path, **texts)
    for name, chart in charts.items():
        assert_mermaid_shows_the_chart(parsed[name], chart)


@needs_mermaid
def test_mermaid_parses_what_the_cli_emits_for_charts_and_traces(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    texts = {}
    charts = ("worker", "modeller")
    for name in charts:
        assert main(["diagram", name]) == 0
        texts[name] = capsys.readouterr().out
    traces = [ROOT / "docs" / "diagrams" / "trace-demo.ndjson"]
    traces += sorted((ROOT / "tests" / "traces").glob("good-*.jsonl"))
    for trace in traces:
        for fold in ([], ["--no-fold"]):
            assert main(["diagram", "--trace", str(trace), *fold]) == 0
            texts[f"{trace.stem}{'-nofold' if fold else ''}"] = capsys.readouterr().out
    for package in MERMAID_PACKAGES:
        parsed = mermaid_parse(tmp_path, package, **texts)
        for name, result in parsed.items():
            assert result["ok"], f"{package}: {name}: {result.get('error')}"
            assert result["type"] == ("stateDiagram" if name in charts else "sequence")
    parsed = mermaid_parse(tmp_path, **texts)
    for name in charts:
        assert_mermaid_shows_the_chart(parsed[name], shipped_chart(name))
    for trace in traces:
        messages = [m for m in read_trace(trace.read_text(), file=str(trace))]
        result = parsed[f"{trace.stem}-nofold"]
        labels = [shown(label)[0] for _, _, label in result["messages"]]
        assert labels == [message_label(m) for m in messages], trace.name


@needs_mermaid
def test_the_mermaid_check_rejects_broken_text(tmp_path: Path) -> None:
    for package in MERMAID_PACKAGES:
        parsed = mermaid_parse(tmp_path, package, broken="stateDiagram-v2\n    a --> : x\n    }\n")
        assert parsed["broken"]["ok"] is False and parsed["broken"]["error"]


_PLANTUML = shutil.which("plantuml")


@pytest.mark.skipif(_PLANTUML is None, reason="PlantUML not installed (apt-get install plantuml)")
@pytest.mark.parametrize("name", ["worker", "modeller"])
def test_plantuml_syntax_check_accepts_both_charts(name: str) -> None:
    assert _PLANTUML is not None
    done = subprocess.run(
        [_PLANTUML, "-syntax"],
        input=to_plantuml(shipped_chart(name)).encode(),
        capture_output=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    assert b"ERROR" not in done.stdout


@needs_dot
def test_graphviz_accepts_the_small_chart_with_every_feature() -> None:
    done = subprocess.run(
        ["dot", "-Tsvg"], input=to_dot(load_chart_text(SMALL)).encode(), capture_output=True
    )
    assert done.returncode == 0 and done.stderr == b"", done.stderr
