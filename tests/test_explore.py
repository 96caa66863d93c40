"""``fsm-protocol explore``: exhaustive exploration of the charts (docs/testing.md, "explore")."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import attrs
import pytest

from fsm_protocol._base._resources import shipped_chart_path
from fsm_protocol._check._checker import TraceChecker
from fsm_protocol._cli._main import main
from fsm_protocol._core._chart import Chart, Role
from fsm_protocol._explore._charts import load_for_explore
from fsm_protocol._explore._explorer import Explorer, ExploreResult, System, explore
from fsm_protocol._explore._model import Bounds
from fsm_protocol._export._sequence import read_trace, to_mermaid_sequence
from fsm_protocol._wire._messages import MessageType, encode

EXPLORE = Path(__file__).parent.parent / "fsm_protocol" / "_explore"

# One planted chart bug per rule, as scripts/mutate.py plants them: (file, line, replacement).
BARRIER_REMOVED = (
    "modeller.yaml",
    "- {event: send:TASK_START, target: running_batch, guards: [all_ready]}",
    "- {event: send:TASK_START, target: running_batch}",
)
NO_CANCEL_OF_OTHERS = (
    "modeller.yaml",
    '- {event: recv:TASK_ABORT, target: aborted, guards: ["!cancel_sent"], '
    "actions: [note_abort, cancel_others, check_progress]}",
    '- {event: recv:TASK_ABORT, target: aborted, guards: ["!cancel_sent"], '
    "actions: [note_abort, check_progress]}",
)
COMPLETION_REMOVED = (
    "modeller.yaml",
    '- {event: send:TASK_COMPLETE, target: complete, guards: [all_done, "!cancel_sent"], '
    "actions: [check_progress]}",
    '- {event: send:TASK_COMPLETE, target: complete, guards: ["!cancel_sent"], '
    "actions: [check_progress]}",
)
LOST_LINK_CANCELS_NOBODY = (
    "modeller.yaml",
    "- {event: link_lost, target: lost, actions: [note_link_lost, cancel_others, check_progress]}",
    "- {event: link_lost, target: lost, actions: [note_link_lost, check_progress]}",
)
DUPLICATE_RESULT_ALLOWED = (
    "modeller.yaml",
    '- {event: recv:EVALUATION_RESULTS, guards: [is_batch_result, "!duplicate_result"], '
    "actions: [store_result]}",
    "- {event: recv:EVALUATION_RESULTS, guards: [is_batch_result], actions: [store_result]}",
)
ESTIMATE_GUARD_REMOVED = (
    "worker.yaml",
    '- {event: send:NUMBER_OF_BATCHES, guards: [is_estimate, "!estimate_sent"], '
    "actions: [note_estimate]}",
    "- {event: send:NUMBER_OF_BATCHES, guards: [is_estimate], actions: [note_estimate]}",
)
CANCEL_REASON_LOST = (
    "worker.yaml",
    "- {event: recv:TASK_CANCEL, target: aborting, actions: [note_cancelled]}",
    "- {event: recv:TASK_CANCEL, target: aborting}",
)


def _mutated(tmp_path: Path, mutant: tuple[str, str, str]) -> Path:
    """A copy of the shipped chart ``mutant[0]`` with one line replaced."""
    name, old, new = mutant
    text = shipped_chart_path(name.removesuffix(".yaml")).read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    hits = [n for n, line in enumerate(lines) if line.strip() == old]
    assert len(hits) == 1, f"the line to mutate moved in {name}"
    indent = lines[hits[0]][: len(lines[hits[0]]) - len(lines[hits[0]].lstrip())]
    lines[hits[0]] = indent + new + "\n"
    path = tmp_path / name
    path.write_text("".join(lines), encoding="utf-8")
    return path


@attrs.frozen
class Charts:
    worker: Chart
    modeller: Chart

    def run(self, bounds: Bounds, *, symmetry: bool = True, por: bool = True) -> ExploreResult:
        return explore(
            bounds,
            worker_chart=self.worker,
            modeller_chart=self.modeller,
            spec_chart=load_for_explore(Role.MODELLER),
            symmetry=symmetry,
            por=por,
        )


def _charts(worker: Path | None = None, modeller: Path | None = None) -> Charts:
    return Charts(load_for_explore(Role.WORKER, worker), load_for_explore(Role.MODELLER, modeller))


def _bounds(workers: int, items: int, batch: int, faults: str = "") -> Bounds:
    return Bounds(
        workers=workers,
        items=items,
        batch_size=batch,
        faults=frozenset(f for f in faults.split(",") if f),
    )


# ------------------------------------------------------------------ shipped charts


@pytest.mark.parametrize(
    ("workers", "items", "batch", "faults"),
    [
        (1, 3, 2, "cancel,reject,late-accept,crash,silence,limit,fail-in-batch,fail-alone"),
        (1, 2, 1, "duplicate,cancel,crash,fail-in-batch"),
        (2, 2, 1, "duplicate,reject"),
        (2, 2, 1, "cancel,crash"),
        (2, 2, 2, "reject,late-accept,limit"),
        (2, 2, 1, "fail-in-batch,fail-alone"),
        (2, 1, 1, "silence"),
        (3, 1, 1, ""),
    ],
)
def test_the_shipped_charts_explore_clean(
    workers: int, items: int, batch: int, faults: str
) -> None:
    result = _charts().run(_bounds(workers, items, batch, faults))
    assert result.verdict == "ok", result.counterexample and result.counterexample.violation
    assert result.ends > 0 and result.traces_checked > 0
    assert result.states >= result.ends


def test_the_cli_reports_states_speed_and_reduction(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["explore", "--workers", "2", "--items", "2", "--faults", "cancel", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == "explore: 2 workers x 2 items, batch size 1, faults cancel"
    assert lines[1].startswith("states: ") and "transitions: " in lines[1]
    assert "states/s: " in lines[2]
    assert lines[3].startswith("reduction: x") and "symmetry x" in lines[3]
    assert lines[-1] == "verdict: ok: every reachable state visited, every check held"


def test_json_output_is_strict_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["explore", "--workers", "2", "--items", "1", "--format", "json", "--quiet"])
    data = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(c))
    assert code == 0
    assert data["verdict"] == "ok" and data["violation"] is None
    assert data["bounds"] == {"workers": 2, "items": 1, "batch_size": 1, "faults": []}
    assert data["states"] > 0 and data["states_per_s"] >= 0
    assert data["reduction"]["factor"] >= 1.0


# ------------------------------------------------------------------ planted bugs


def test_a_planted_barrier_bug_gives_a_counterexample_check_rejects_for_the_same_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chart = _mutated(tmp_path, BARRIER_REMOVED)
    out_file = tmp_path / "cx.jsonl"
    code = main(
        ["explore", "--workers", "2", "--items", "1", "--quiet"]
        + ["--modeller-chart", str(chart), "--counterexample", str(out_file)]
    )
    out = capsys.readouterr().out
    assert code == 1, out
    assert "verdict: VIOLATION of barrier: the modeller sent TASK_START to worker" in out
    assert "shortest path found (" in out
    # The trace is what `fsm-protocol check` reads, and it rejects it for the barrier.
    assert main(["check", str(out_file)]) == 1
    report = capsys.readouterr().out
    assert "TASK_START is allowed there only once every accepted worker has sent TASK_START" in (
        report
    )
    # And `diagram --trace` draws it; the diagram written beside it is the same drawing.
    diagram = out_file.with_suffix(".mmd")
    assert main(["diagram", "--trace", str(out_file), "--no-fold"]) == 0
    assert capsys.readouterr().out.rstrip("\n") == diagram.read_text().rstrip("\n")
    assert diagram.read_text() == to_mermaid_sequence(read_trace(out_file.read_text()), fold=False)


def test_a_missing_cancel_is_a_deadlock_that_check_explains(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chart = _mutated(tmp_path, NO_CANCEL_OF_OTHERS)
    result = _charts(modeller=chart).run(_bounds(2, 1, 1, "limit"))
    assert result.verdict == "violation" and result.counterexample is not None
    assert result.counterexample.violation.check == "deadlock"
    checker = TraceChecker()
    checker.feed_lines(encode(m) for m in result.counterexample.trace)
    finding = checker.finish().finding
    assert finding is not None and "the modeller owes it TASK_CANCEL" in finding.message


def test_a_planted_completion_bug_is_found(tmp_path: Path) -> None:
    chart = _mutated(tmp_path, COMPLETION_REMOVED)
    result = _charts(modeller=chart).run(_bounds(2, 1, 1))
    assert result.counterexample is not None
    assert result.counterexample.violation.check == "completion"
    checker = TraceChecker()
    checker.feed_lines(encode(m) for m in result.counterexample.trace)
    finding = checker.finish().finding
    assert finding is not None and "TASK_COMPLETE is allowed there only once" in finding.message


def test_a_worker_that_forgets_why_it_aborts_is_found(tmp_path: Path) -> None:
    chart = _mutated(tmp_path, CANCEL_REASON_LOST)
    result = _charts(worker=chart).run(_bounds(1, 1, 1, "cancel"))
    assert result.counterexample is not None
    violation = result.counterexample.violation
    assert violation.check == "abort-reason"
    assert "recv:TASK_CANCEL" in violation.message and "CANCELLED_BY_MODELLER" in violation.message


def test_a_run_that_can_never_end_is_a_no_progress_violation(tmp_path: Path) -> None:
    # Without cancel_others on a lost link, a worker that finished waits for TASK_COMPLETE
    # for ever once another goes silent, answering ONLINE_CHECKs: a cycle with no way out.
    chart = _mutated(tmp_path, LOST_LINK_CANCELS_NOBODY)
    result = _charts(modeller=chart).run(_bounds(2, 1, 1, "silence"))
    assert result.counterexample is not None
    assert result.counterexample.violation.check == "no-progress"
    assert _charts().run(_bounds(2, 1, 1, "silence")).verdict == "ok"


def _check_finding(result: ExploreResult) -> tuple[int, str | None, str]:
    """What ``fsm-protocol check`` says of the counterexample: (line, rule, message)."""
    assert result.counterexample is not None
    checker = TraceChecker()
    checker.feed_lines(encode(m) for m in result.counterexample.trace)
    finding = checker.finish().finding
    assert finding is not None, "check accepts the counterexample"
    return finding.line, finding.rule, finding.message


def test_a_modeller_that_takes_a_duplicate_result_is_found(tmp_path: Path) -> None:
    # Fault `duplicate`: one worker sends a batch result twice. The shipped modeller refuses
    # the second (bad_input: the link is lost); the mutant takes it.
    bounds = _bounds(1, 1, 1, "duplicate")
    shipped = _charts().run(bounds)
    # Both ends (with and without the duplicate) are trace-checked: check must report the
    # duplicate at its line, and nothing before it.
    assert shipped.verdict == "ok" and shipped.ends == 2 and shipped.traces_checked == 2
    result = _charts(modeller=_mutated(tmp_path, DUPLICATE_RESULT_ALLOWED)).run(bounds)
    assert result.counterexample is not None
    violation = result.counterexample.violation
    assert violation.check == "duplicate-result" and "W-4.11" in violation.message
    steps = result.counterexample.steps
    assert steps[-3].endswith("(fault duplicate: its batch result goes out twice)")
    assert steps[-2] == "the modeller reads EVALUATION_RESULTS(batch 0: i0) from explore/w0"
    assert steps[-1] == (
        "the modeller reads EVALUATION_RESULTS(batch 0: i0) from explore/w0 again (fault duplicate)"
    )
    # check rejects the trace at the duplicate, for the same rule.
    line, rule, message = _check_finding(result)
    trace = result.counterexample.trace
    assert line == len(trace) and trace[-1].type == MessageType.EVALUATION_RESULTS
    assert rule == "W-4.11" and "no duplicate results" in message


def test_a_worker_chart_that_lets_a_second_estimate_out_is_found(tmp_path: Path) -> None:
    # The worker offers its batch-count estimate at every batch; the chart's
    # "!estimate_sent" guard lets only the first out. Without it a second goes out, and
    # the modeller refuses it.
    bounds = _bounds(1, 1, 1)
    assert _charts().run(bounds).verdict == "ok"
    result = _charts(worker=_mutated(tmp_path, ESTIMATE_GUARD_REMOVED)).run(bounds)
    assert result.counterexample is not None
    violation = result.counterexample.violation
    assert violation.check == "refused" and "recv:NUMBER_OF_BATCHES" in violation.message
    line, rule, message = _check_finding(result)
    trace = result.counterexample.trace
    assert line == len(trace) and trace[-1].type == MessageType.NUMBER_OF_BATCHES
    estimates = [m for m in trace if m.type == MessageType.NUMBER_OF_BATCHES and m.body == 1]
    assert len(estimates) == 2
    assert rule == "W-4.10" and "NUMBER_OF_BATCHES is allowed there only at most once" in message


@pytest.mark.parametrize(
    ("mutant", "bounds"),
    [
        (None, _bounds(2, 1, 1, "silence")),
        (None, _bounds(1, 2, 1, "crash,cancel")),
        (LOST_LINK_CANCELS_NOBODY, _bounds(2, 1, 1, "silence")),
    ],
)
def test_the_progress_check_settles_every_state_as_a_reverse_search_does(
    tmp_path: Path, mutant: tuple[str, str, str] | None, bounds: Bounds
) -> None:
    # The no-progress check marks, backwards in a few passes, the states from which an
    # end is reachable; on graphs with cycles that must be exactly what a search over
    # the reversed edges finds (passes=0), however few passes it is allowed.
    modeller = _mutated(tmp_path, mutant) if mutant is not None else None
    system = System(
        bounds, load_for_explore(Role.WORKER), load_for_explore(Role.MODELLER, modeller)
    )
    explorer = Explorer(system, symmetry=False, por=False, check_traces=False)
    result = explorer.run()  # the check runs once the graph is complete
    if mutant is None:
        assert result.verdict == "ok"
    else:
        assert result.counterexample is not None
        assert result.counterexample.violation.check == "no-progress"
    assert len(explorer.edge_start) == len(explorer.states) + 1
    reverse = explorer.reaching_ends(passes=0)
    assert 0 < reverse.count(1) <= len(explorer.states)
    assert (reverse.find(0) >= 0) is (mutant is not None)
    for passes in (1, 2, 4, 100):
        assert explorer.reaching_ends(passes=passes) == reverse


# ------------------------------------------------------------------ reductions


@pytest.mark.parametrize(
    ("mutant", "bounds"),
    [
        (None, _bounds(2, 2, 1, "crash")),
        (None, _bounds(2, 2, 1, "reject,fail-in-batch")),
        (None, _bounds(2, 1, 1, "limit,fail-alone")),
        (None, _bounds(2, 1, 1, "silence")),
        (None, _bounds(2, 1, 1, "late-accept")),
        (BARRIER_REMOVED, _bounds(2, 1, 1)),
        (NO_CANCEL_OF_OTHERS, _bounds(2, 1, 1, "limit")),
        (COMPLETION_REMOVED, _bounds(2, 1, 1)),
        (CANCEL_REASON_LOST, _bounds(1, 1, 1, "cancel")),
        (None, _bounds(2, 2, 1, "duplicate,crash")),
        (DUPLICATE_RESULT_ALLOWED, _bounds(2, 1, 1, "duplicate")),
        (ESTIMATE_GUARD_REMOVED, _bounds(2, 1, 1)),
    ],
)
def test_reductions_change_no_verdict(
    tmp_path: Path, mutant: tuple[str, str, str] | None, bounds: Bounds
) -> None:
    charts = _charts()
    if mutant is not None:
        path = _mutated(tmp_path, mutant)
        worker = mutant[0] == "worker.yaml"
        charts = _charts(worker=path) if worker else _charts(modeller=path)
    full = charts.run(bounds, symmetry=False, por=False)

    def verdict(result: ExploreResult) -> tuple[str, str | None]:
        example = result.counterexample
        return result.verdict, example.violation.check if example else None

    for symmetry, por in ((True, False), (False, True), (True, True)):
        reduced = charts.run(bounds, symmetry=symmetry, por=por)
        assert verdict(reduced) == verdict(full), (symmetry, por)
        assert reduced.states <= full.states
        if mutant is None and not symmetry:
            # The partial-order reduction keeps every end state (symmetry merges them).
            assert reduced.ends == full.ends


# ------------------------------------------------------------------ limits and input


def test_max_states_stops_with_exit_status_3(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["explore", "--workers", "2", "--items", "2", "--max-states", "50", "--quiet"])
    assert code == 3
    assert "stopped at --max-states" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--faults", "cancel,meteor"], "unknown fault(s) meteor"),
        (["--workers", "0"], "--workers must be at least 1"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--max-states", "0"], "--max-states must be at least 1"),
        (["--worker-chart", "/nonexistent/worker.yaml"], "no such chart file"),
    ],
)
def test_unusable_input_exits_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["explore", "--quiet", *args]) == 2
    assert message in capsys.readouterr().err


def test_a_broken_or_wrong_chart_exits_2_with_its_location(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "worker.yaml"
    broken.write_text("chart: worker\nrole: worker\nstates: [\n", encoding="utf-8")
    assert main(["explore", "--quiet", "--worker-chart", str(broken)]) == 2
    assert f"{broken}:" in capsys.readouterr().err
    # The modeller chart where the worker chart belongs.
    modeller = shipped_chart_path("modeller")
    assert main(["explore", "--quiet", "--worker-chart", str(modeller)]) == 2
    assert "expected a worker chart" in capsys.readouterr().err


def test_the_explorer_imports_nothing_above_its_layer() -> None:
    # _explore sits between _check and _runtime: it must not reach trio or the runtime.
    banned = ("trio", "fsm_protocol._runtime", "fsm_protocol._net", "fsm_protocol._kit")
    for path in EXPLORE.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                absolute = (
                    "fsm_protocol." + module.lstrip(".").replace("..", "")
                    if node.level >= 2
                    else module
                )
                assert not absolute.startswith(banned), f"{path.name} imports {module}"
                assert not module.startswith(("_runtime", "_net", "_kit", "_cli"))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith(banned), f"{path.name} imports {alias.name}"


# ------------------------------------------------------------------ the target bounds


@pytest.mark.slow
def test_the_target_bounds_explore_clean() -> None:
    result = _charts().run(_bounds(3, 4, 2, "cancel,reject,crash,fail-in-batch"))
    assert result.verdict == "ok", result.counterexample and result.counterexample.violation
