"""The trace checker: ``fsm-protocol check`` and ``conformance.check_trace``.

Fixtures (tests/traces/) are runtime traces, and the same traces with one
deliberate mistake each; tests/traces/make_traces.py regenerates them.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fsm_protocol import (
    DecodeError,
    EchoProtocol,
    Pod,
    TaskTimeouts,
    UsageLimit,
    decode,
    run_task,
    shipped_chart,
)
from fsm_protocol._check._checker import TraceChecker, read_lines
from fsm_protocol._cli._main import main
from fsm_protocol._core._compiled import compile_chart
from fsm_protocol.conformance import assert_conforms, check_trace

TRACES = Path(__file__).parent / "traces"
EXPECTED: dict[str, dict[str, Any]] = json.loads((TRACES / "expected.json").read_text())


# ------------------------------------------------------------------------- fixtures


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_verdicts(name: str) -> None:
    result = check_trace(TRACES / name)
    expected = EXPECTED[name]
    if expected.get("ok"):
        assert result.ok, result.finding and result.finding.render(name)
    else:
        assert result.finding is not None, f"{name} passed"
        assert result.finding.line == expected["line"], result.finding.render(name)
        assert expected["contains"] in result.finding.message, result.finding.render(name)


def test_a_finding_names_line_message_state_and_expected() -> None:
    finding = check_trace(TRACES / "bad-batch-id-jump.jsonl").finding
    assert finding is not None
    assert finding.pod == "a/p" and finding.task_id == "t-fixture"
    assert finding.state == "running_batch (engaged.batches.running_batch)"
    assert finding.text is not None and '"type":"CURRENT_BATCH_ID"' in finding.text
    assert "W: CURRENT_BATCH_ID with body 1 (the next batch id)" in finding.expected
    rendered = finding.render("x.jsonl")
    assert rendered.startswith(f"x.jsonl:{finding.line}: pod a/p sent CURRENT_BATCH_ID 2")


def test_an_unfinished_trace_says_what_each_side_still_owes() -> None:
    finding = check_trace(TRACES / "bad-no-cancel-after-abort.jsonl").finding
    assert finding is not None and finding.text is None
    assert "M: TASK_CANCEL (owed since line" in finding.expected[-1]


def test_the_echo_account_counts_every_item() -> None:
    result = check_trace(TRACES / "good-abort-cancels-other.jsonl")
    assert result.ok
    by_pod = {account.pod: account for account in result.accounts}
    # b/p hit its limit (as predicted); a/p was cancelled, so what it did not send is "not run".
    assert (by_pod["b/p"].delivered, by_pod["b/p"].cut) == (3, 1)
    assert by_pod["a/p"].delivered + by_pod["a/p"].not_run == 8


def test_assert_conforms_raises_with_the_rendered_finding() -> None:
    with pytest.raises(AssertionError, match="no duplicate results"):
        assert_conforms(TRACES / "bad-duplicate-results.jsonl")
    assert assert_conforms(TRACES / "good-resilience.jsonl").ok


def test_traces_can_be_given_as_messages_lines_or_text() -> None:
    lines = (TRACES / "good-single-run.jsonl").read_bytes().splitlines(keepends=True)
    assert check_trace(lines).ok
    assert check_trace([line.decode() for line in lines]).ok
    assert check_trace([decode(line) for line in lines]).ok
    assert check_trace(str(TRACES / "good-single-run.jsonl")).ok


# ------------------------------------------------------------ the runtime's own traces


async def test_runtime_traces_conform_across_outcomes() -> None:
    items = tuple(f"i{n}" for n in range(9))
    cases: list[tuple[EchoProtocol, dict[str, Any]]] = [
        (
            EchoProtocol(items=items, batch_size=2, fail_in_batch=("i2",)),
            {"batched_execution": True},
        ),
        (EchoProtocol(items=items), {}),
        (
            EchoProtocol(items=items, batch_size=4, inference_limit=UsageLimit(5)),
            {"batched_execution": True},
        ),
        (EchoProtocol(items=items, batch_size=3, initial_setup=True), {"batched_execution": True}),
        (EchoProtocol(items=()), {"batched_execution": True}),
        (
            EchoProtocol(items=items, batch_size=1, fail_in_batch=items[1:7]),
            {"batched_execution": True},
        ),
        (EchoProtocol(items=items, fail_alone=("i0",)), {"test_run": True}),
    ]
    for protocol, flags in cases:
        outcome = await run_task(
            protocol,
            [Pod("a/p"), Pod("b/p"), Pod("c/p")],
            overrides={"c/p": {"items": ["x", "y"]}},
            **flags,
        )
        result = check_trace(outcome.trace)
        assert result.ok, result.finding and result.finding.render()


@st.composite
def _jobs(draw: st.DrawFn) -> tuple[EchoProtocol, bool, bool, dict[str, dict[str, Any]]]:
    names = [f"i{n}" for n in range(draw(st.integers(0, 10)))]
    some = st.lists(st.sampled_from(names), unique=True).map(tuple) if names else st.just(())
    limit = draw(st.none() | st.builds(UsageLimit, st.integers(0, 12), st.integers(0, 12)))
    protocol = EchoProtocol(
        items=tuple(names),
        batch_size=draw(st.integers(1, 4)),
        fail_in_batch=draw(some),
        fail_alone=draw(some),
        inference_limit=limit,
        initial_setup=draw(st.booleans()),
    )
    overrides = {}
    if draw(st.booleans()):
        overrides["b/p"] = {"items": draw(st.lists(st.sampled_from(["x", "y", "z"]), unique=True))}
    return protocol, draw(st.booleans()), draw(st.booleans()), overrides


@settings(max_examples=25)
@given(_jobs())
async def test_property_every_runtime_trace_conforms(
    job: tuple[EchoProtocol, bool, bool, dict[str, dict[str, Any]]],
) -> None:
    """The runtime, the Echo model and the checker agree on every job."""
    protocol, batched, test_run, overrides = job
    outcome = await run_task(
        protocol,
        [Pod("a/p"), Pod("b/p")],
        batched_execution=batched,
        test_run=test_run,
        overrides=overrides,
        timeouts=TaskTimeouts(response_timeout_s=60),
    )
    result = check_trace(outcome.trace)
    assert result.ok, result.finding and result.finding.render()


# ----------------------------------------------- the fast path agrees with decode()


def _valid_lines() -> list[bytes]:
    return (TRACES / "good-resilience.jsonl").read_bytes().splitlines(keepends=True)


_MUTATIONS = st.sampled_from(
    [
        ("v", 2),
        ("v", 1.0),
        ("v", True),
        ("seq", -1),
        ("seq", 1.5),
        ("seq", "3"),
        ("task_id", 7),
        ("sender", None),
        ("type", "NOT_A_TYPE"),
        ("body", "oops"),
        ("body", -2),
        ("body", None),
        ("meta", []),
        ("meta", None),
        ("meta", {"batch_number": -1}),
        ("meta", {"batch_number": True}),
        ("meta", {"algorithm_index": None}),
        ("meta", {"resources_consumed": [{"resource_type": "x"}]}),
        ("meta", {"reason": 5}),
        ("meta", {"unknown": "ignored"}),
        ("extra", 1),
        ("body", float("nan")),
    ]
)


@settings(max_examples=60)
@given(line_index=st.integers(0, 41), mutation=_MUTATIONS, drop=st.booleans())
def test_property_a_line_is_invalid_exactly_when_decode_rejects_it(
    line_index: int, mutation: tuple[str, Any], drop: bool
) -> None:
    lines = _valid_lines()
    obj = json.loads(lines[line_index])
    key, value = mutation
    if drop and key in obj:
        del obj[key]
    else:
        obj[key] = value
    text = json.dumps(obj)  # NaN becomes the non-JSON token NaN, which must be refused
    bad = text.encode() + b"\n"
    try:
        decode(bad)
    except DecodeError as exc:
        rejected: str | None = str(exc)
    else:
        rejected = None
    checker = TraceChecker()
    for before in lines[:line_index]:
        assert checker.feed(before) is None
    finding = checker.feed(bad)
    invalid = finding is not None and finding.message.startswith("invalid message")
    assert invalid == (rejected is not None), (text, rejected, finding)
    if rejected is not None:
        assert finding is not None and rejected in finding.message


def test_lines_that_are_not_one_json_object_are_invalid() -> None:
    for raw in [b"", b"\n", b"[1, 2]\n", b'{"v": 1}\n{"v": 1}\n', b"\xff\xfe\n", b'{"a": NaN}\n']:
        checker = TraceChecker()
        finding = checker.feed(raw)
        assert finding is not None and finding.message.startswith("invalid message"), raw


def test_a_huge_line_is_refused_without_reading_it_whole() -> None:
    limit = 1024
    huge = b'{"v": 1, "type": "' + b"x" * (50 * limit) + b'"}\n'
    lines = list(read_lines(io.BytesIO(huge + b"{}\n"), limit))
    assert len(lines) == 1 and len(lines[0]) == limit + 1  # cut, and the rest never read
    checker = TraceChecker(max_line_bytes=limit)
    finding = checker.feed(lines[0])
    assert finding is not None and f"at most {limit} bytes" in finding.message


# ------------------------------------------------------------------- crossing rules


def _message(
    type_: str, sender: str, recipient: str, seq: int, body: Any = None, **meta: Any
) -> bytes:
    line = {
        "v": 1,
        "type": type_,
        "task_id": "t",
        "sender": sender,
        "recipient": recipient,
        "seq": seq,
        "body": body,
        "meta": meta,
    }
    return json.dumps(line).encode() + b"\n"


class _Trace:
    """Builds a trace line by line with the right seqs."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.seq: dict[str, int] = {}

    def m(self, type_: str, pod: str, body: Any = None) -> _Trace:
        return self._add(type_, "modeller", pod, body)

    def w(self, type_: str, pod: str, body: Any = None, **meta: Any) -> _Trace:
        return self._add(type_, pod, "modeller", body, **meta)

    def _add(self, type_: str, sender: str, recipient: str, body: Any, **meta: Any) -> _Trace:
        seq = self.seq.get(sender, 0)
        self.seq[sender] = seq + 1
        self.lines.append(_message(type_, sender, recipient, seq, body, **meta))
        return self

    def opening(self, *pods: str, items: tuple[str, ...] = ("i0",)) -> _Trace:
        job = {
            "protocol": {"class_name": "conformance.Echo", "items": list(items), "batch_size": 1},
            "pod_identifiers": list(pods),
            "batched_execution": False,
            "run_on_new_data_only": False,
            "force_rerun_failed_files": False,
            "test_run": False,
            "project_id": None,
            "options": {},
        }
        for pod in pods:
            self.m("JOB_REQUEST", pod, job)
        for pod in pods:
            self.w("JOB_ACCEPT", pod, {"ACCEPT": pod}).w("NUMBER_OF_BATCHES", pod, 1)
            self.w("TASK_START", pod)
        return self


def _abort(reason: str) -> dict[str, Any]:
    return {"message": "m", "reason": reason, "exception_type": None, "traceback_summary": None}


def test_an_online_check_crossing_task_complete_is_not_a_violation() -> None:
    trace = _Trace().opening("a").m("TASK_START", "a")
    trace.w("EVALUATION_RESULTS", "a", {"items": ["i0"]}, batch_number=None)
    trace.w("BATCHES_COMPLETE", "a", "TASK_COMPLETE").m("TASK_COMPLETE", "a")
    trace.w("ONLINE_CHECK", "a", "tok")  # sent before it read TASK_COMPLETE
    assert check_trace(trace.lines).ok


def test_results_after_task_complete_are_a_violation() -> None:
    trace = _Trace().opening("a").m("TASK_START", "a")
    trace.w("EVALUATION_RESULTS", "a", {"items": ["i0"]}, batch_number=None)
    trace.w("BATCHES_COMPLETE", "a", "TASK_COMPLETE").m("TASK_COMPLETE", "a")
    trace.w("EVALUATION_RESULTS", "a", {"items": []}, batch_number=None)
    finding = check_trace(trace.lines).finding
    assert finding is not None and "after that worker's end" in finding.message


def test_cancelled_by_modeller_without_a_cancel_is_a_violation() -> None:
    trace = _Trace().opening("a").w("TASK_ABORT", "a", _abort("CANCELLED_BY_MODELLER"))
    finding = check_trace(trace.lines).finding
    assert finding is not None and "sent it no TASK_CANCEL" in finding.message


def test_a_second_cancel_is_a_violation() -> None:
    trace = _Trace().opening("a").m("TASK_CANCEL", "a").m("TASK_CANCEL", "a")
    finding = check_trace(trace.lines).finding
    assert finding is not None and "only at most once" in finding.message


def test_the_modellers_seq_rises_by_one_in_write_order_whatever_the_recipient() -> None:
    """E-2.6, strict: two links, but one counter, checked in the order written."""
    trace = _Trace().opening("a", "b")
    trace.m("TASK_START", "a").m("TASK_START", "b")
    a_start, b_start = trace.lines[-2], trace.lines[-1]
    trace.lines[-2:] = [b_start, a_start]  # seq 3 before seq 2
    finding = check_trace(trace.lines).finding
    assert finding is not None and finding.rule == "E-2.6"
    assert finding.line == len(trace.lines) - 1
    assert finding.message.startswith("seq 3 from the modeller in task 't'; expected 2")


def _interleaved(lines: list[str]) -> Any:
    checker = TraceChecker(interleaved=True)
    checker.feed_lines(lines)
    return checker.finish().finding


def test_an_observer_of_several_streams_accepts_the_modellers_seq_read_out_of_order() -> None:
    """The kit over TCP reads each pod's connection on its own: write order across them is lost."""
    trace = _Trace().opening("a", "b")
    trace.m("TASK_START", "a").m("TASK_START", "b")
    trace.lines[-2:] = [trace.lines[-1], trace.lines[-2]]  # seq 3 read before seq 2
    assert TraceChecker().feed_lines(trace.lines) is not None  # one stream: the exact order
    assert TraceChecker(interleaved=True).feed_lines(trace.lines) is None


def test_an_observer_of_several_streams_still_catches_a_repeated_modeller_seq() -> None:
    trace = _Trace().opening("a", "b")
    trace.seq["modeller"] -= 1
    trace.m("TASK_START", "a")
    finding = _interleaved(trace.lines)
    assert finding is not None and finding.rule == "E-2.6"
    assert "was used before; expected 2" in finding.message


def test_an_observer_of_several_streams_catches_a_number_never_written() -> None:
    trace = _Trace().opening("a", "b")
    trace.seq["modeller"] += 1  # seq 2 is skipped
    trace.m("TASK_START", "a").m("TASK_START", "b")
    finding = _interleaved(trace.lines)
    assert finding is not None and finding.rule == "E-2.6"
    assert "seq 2 in task 't' never arrived on any stream, though seq 4 did" in finding.message


def test_an_observer_of_several_streams_catches_a_seq_falling_on_one_stream() -> None:
    trace = _Trace().opening("a", "b")
    trace.m("TASK_START", "a").m("TASK_START", "b")
    lines = [json.loads(line) for line in trace.lines]
    # Stream a gets seq 2 and then seq 0; every number is used once.
    (request_a,) = [m for m in lines if m["type"] == "JOB_REQUEST" and m["recipient"] == "a"]
    (start_a,) = [m for m in lines if m["type"] == "TASK_START" and m["recipient"] == "a"]
    request_a["seq"], start_a["seq"] = start_a["seq"], request_a["seq"]
    finding = _interleaved([json.dumps(m) for m in lines])
    assert finding is not None and finding.rule == "E-2.6"
    assert "seq 0 from the modeller to a in task 't' after seq 2 on the same stream" in (
        finding.message
    )


def test_a_modeller_seq_gap_is_reported_where_it_happens() -> None:
    trace = _Trace().opening("a")
    trace.seq["modeller"] += 1  # skips one number
    trace.m("TASK_START", "a")
    finding = check_trace(trace.lines).finding
    assert finding is not None and finding.rule == "E-2.6"
    assert finding.line == len(trace.lines) and "expected 1" in finding.message


def test_a_repeated_modeller_seq_is_a_violation() -> None:
    trace = _Trace().opening("a", "b")
    trace.seq["modeller"] -= 1
    trace.m("TASK_START", "a")
    finding = check_trace(trace.lines).finding
    assert finding is not None and "was used before; expected 2" in finding.message


def test_a_message_for_an_unknown_task_or_pod_is_a_violation() -> None:
    finding = check_trace([_message("TASK_START", "a", "modeller", 0)]).finding
    assert finding is not None and "has no JOB_REQUEST before it" in finding.message
    trace = _Trace().opening("a")
    trace.w("TASK_ABORT", "z", _abort("WORKER_ERROR"))
    finding = check_trace(trace.lines).finding
    assert finding is not None and "sent it no JOB_REQUEST" in finding.message


def test_the_kits_silent_pods_may_stay_unanswered() -> None:
    trace = _Trace()
    job = json.loads(_Trace().opening("a").lines[0])["body"]
    trace.m("JOB_REQUEST", "a", job).m("JOB_REQUEST", "b", job)
    trace.w("JOB_ACCEPT", "a", {"ACCEPT": "a"}).w("NUMBER_OF_BATCHES", "a", 1).w("TASK_START", "a")
    trace.m("TASK_START", "a")
    trace.w("EVALUATION_RESULTS", "a", {"items": ["i0"]}, batch_number=None)
    trace.w("BATCHES_COMPLETE", "a", "TASK_COMPLETE").m("TASK_COMPLETE", "a")
    assert check_trace(trace.lines, silent_pods=["b"]).ok
    finding = check_trace(trace.lines).finding  # b left out, and the task is over: fine too
    assert finding is None


# ------------------------------------------------ the compiled table is the chart


def test_the_checker_steps_the_engines_compiled_table() -> None:
    """One reading of the chart: the checker's rows are the engine's compiled arcs."""
    chart = shipped_chart("modeller")
    checker = TraceChecker(chart=chart)
    compiled = compile_chart(chart)
    assert set(checker.table) == set(compiled.table)
    for leaf, row in checker.table.items():
        assert {event: [a.arc for a in arcs] for event, arcs in row.items()} == {
            event: list(arcs) for event, arcs in compiled.table[leaf].items()
        }


# ------------------------------------------------------------------------------ CLI


def test_cli_exit_codes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["check", str(TRACES / "good-resilience.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "conforms: 42 lines, 1 task, 2 pods; Echo items: 14 delivered, 2 failed" in out
    assert main(["check", str(TRACES / "bad-lost-item.jsonl")]) == 1
    out = capsys.readouterr().out
    assert "bad-lost-item.jsonl:22: pod a/p: item(s) 'i1' lost" in out
    assert "  state:    running_batch" in out
    assert main(["check", str(tmp_path / "missing.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
    both = [str(TRACES / "good-single-run.jsonl"), str(TRACES / "bad-empty.jsonl")]
    assert main(["check", "-q", *both]) == 1
    assert main(["check", str(tmp_path), *both]) == 2


def test_cli_reads_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = (TRACES / "good-single-run.jsonl").read_bytes()
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert main(["check", "-"]) == 0
    assert "-: conforms" in capsys.readouterr().out


def test_benchmark_generator_makes_a_conforming_trace() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_check", Path(__file__).parent.parent / "benchmarks" / "check.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    lines = list(module.generate(3, 7))
    assert len(lines) == 3 * (2 * 7 + 12)
    result = check_trace(lines)
    assert result.ok and sum(a.delivered for a in result.accounts) == 21


# ------------------------------------------------- verdicts the rule book changed


def test_a_pod_may_reject_a_valid_job() -> None:
    """W-5.1: the spec never requires accepting; only the kit expects a valid Echo job run."""
    trace = _Trace()
    job = json.loads(_Trace().opening("a").lines[0])["body"]
    trace.m("JOB_REQUEST", "a", job).w("JOB_REJECT", "a", {"NO_ACCESS": ["not allowed"]})
    assert check_trace(trace.lines).ok
    kit = TraceChecker(require_echo_accept=True)
    kit.feed_lines(trace.lines)
    finding = kit.finish().finding
    assert finding is not None and finding.rule == "W-5.1"


def test_skipped_results_then_an_abort_at_end_of_input_are_a_violation() -> None:
    lines = (TRACES / "rules" / "W-5.10.jsonl").read_text().splitlines()
    # The same skip, ended by the input's end instead of a cancel.
    abort = json.loads(lines[-1])
    abort["body"]["reason"] = "MODELLER_TIMEOUT"
    trace = [*lines[:-2], json.dumps({**abort, "seq": abort["seq"]})]
    finding = check_trace(trace).finding
    assert finding is not None and finding.rule == "W-5.10" and finding.line == 7


def test_the_batch_a_stopped_worker_was_running_may_stay_undelivered() -> None:
    trace = _Trace()
    job = json.loads(_Trace().opening("a", items=("i0", "i1")).lines[0])["body"]
    job["batched_execution"] = True
    trace.m("JOB_REQUEST", "a", job).w("JOB_ACCEPT", "a", {"ACCEPT": "a"})
    trace.w("NUMBER_OF_BATCHES", "a", -1).w("CURRENT_BATCH_ID", "a", 0).w("TASK_START", "a")
    trace.m("TASK_START", "a").m("TASK_CANCEL", "a")
    trace.w("TASK_ABORT", "a", _abort("CANCELLED_BY_MODELLER"))
    assert check_trace(trace.lines).ok


def test_online_responses_answer_checks_token_for_token() -> None:
    trace = _Trace().opening("a").m("TASK_START", "a")
    trace.w("ONLINE_CHECK", "a", "x").w("ONLINE_CHECK", "a", "x")
    trace.m("ONLINE_RESPONSE", "a", "x").m("ONLINE_RESPONSE", "a", "x")
    good, seqs = list(trace.lines), dict(trace.seq)
    trace.m("ONLINE_RESPONSE", "a", "x")  # a third answer to two checks
    finding = check_trace(trace.lines).finding
    assert finding is not None and finding.rule == "M-3.13"
    assert finding.line == len(trace.lines)
    trace.lines, trace.seq = good, seqs
    trace.w("EVALUATION_RESULTS", "a", {"items": ["i0"]}, batch_number=None)
    trace.w("BATCHES_COMPLETE", "a", "TASK_COMPLETE").m("TASK_COMPLETE", "a")
    assert check_trace(trace.lines).ok


def test_a_late_accept_is_owed_its_cancel_even_when_the_pod_aborts() -> None:
    lines = (TRACES / "rules" / "M-4.19.jsonl").read_text().splitlines()
    finding = check_trace(lines).finding
    assert finding is not None and finding.rule == "M-4.19"
    assert finding.line == len(lines) + 1 and finding.pod == "b"
    # The cancel may cross the pod's abort: written after it, it discharges what is owed.
    cancel = json.loads(lines[-2])
    late = {**cancel, "recipient": "b", "seq": cancel["seq"] + 1}
    assert check_trace([*lines, json.dumps(late)]).ok


def test_accepts_that_come_after_every_other_worker_ended_are_owed_nothing() -> None:
    # a aborts before b and c have answered: they are left out of a task that has ended,
    # so their accepts, late, are owed no TASK_CANCEL (M-4.19), however many there are.
    trace = _Trace()
    job_lines = _Trace().opening("a", "b", "c", items=()).lines[:3]
    trace.lines, trace.seq = list(job_lines), {"modeller": 3}
    trace.w("JOB_ACCEPT", "a", {"ACCEPT": "a"}).w("TASK_ABORT", "a", _abort("NO_DATA"))
    trace.w("JOB_ACCEPT", "c", {"ACCEPT": "c"}).w("JOB_ACCEPT", "b", {"ACCEPT": "b"})
    assert check_trace(trace.lines).ok


def test_nothing_from_a_pod_after_its_own_end_even_after_a_crossing() -> None:
    lines = (TRACES / "rules" / "E-4.24.jsonl").read_text().splitlines()
    assert check_trace(lines[:-1]).ok  # the abort crossing TASK_COMPLETE is valid
    finding = check_trace(lines).finding
    assert finding is not None and finding.rule == "E-4.24"


def test_every_finding_names_a_rule_of_the_book() -> None:
    for path in sorted(TRACES.glob("bad-*.jsonl")):
        finding = check_trace(path).finding
        assert finding is not None and finding.rule is not None, path
        assert finding.message.endswith(f"[{finding.rule}]")


# ------------------------------------------------------------------------- memory


def _short_tasks(tasks: int) -> Iterator[bytes]:
    """``tasks`` one-item Echo tasks, one after the other, 8 lines each, in blocks."""
    template = _Trace().opening("p")
    template.m("TASK_START", "p")
    template.w("EVALUATION_RESULTS", "p", {"items": ["i0"]}, batch_number=None)
    template.w("BATCHES_COMPLETE", "p", "TASK_COMPLETE").m("TASK_COMPLETE", "p")
    parts = b"".join(template.lines).split(b'"task_id": "t"')
    for start in range(0, tasks, 1000):
        yield b"".join(
            (b'"task_id": "t%d"' % n).join(parts) for n in range(start, min(start + 1000, tasks))
        )


# The child reports its own peak (VmHWM of its own address space): a wait4()
# ru_maxrss would also count the pytest process it was forked from.
_CHECK_AND_REPORT_PEAK = """
import sys
from fsm_protocol._cli._main import main
status = main(["check", "-"])
peak = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
sys.stderr.write(peak.split()[1] + "\\n")
sys.exit(status)
"""


def _check_in_a_process(tasks: int) -> tuple[int, float, str]:
    """Run ``fsm-protocol check -`` on the tasks; its exit status, peak RSS (MiB) and output."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHECK_AND_REPORT_PEAK],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    for block in _short_tasks(tasks):
        proc.stdin.write(block)
    proc.stdin.close()
    with proc.stdout:
        out = proc.stdout.read().decode()
    with proc.stderr:
        peak_kib = int(proc.stderr.read().decode().split()[-1])
    return proc.wait(), peak_kib / 1024, out


@pytest.mark.slow
def test_memory_is_bounded_by_the_open_tasks() -> None:
    """A trace of 1,000,000 short tasks checks in the memory of a few thousand."""
    # 20,000 tasks is past every cap (1,000 ended tasks kept, 10,000 item accounts).
    status, small, out = _check_in_a_process(20_000)
    assert status == 0 and "20000 tasks" in out, out
    status, large, out = _check_in_a_process(1_000_000)
    assert status == 0 and "conforms: 8000000 lines, 1000000 tasks" in out, out
    assert "1000000 delivered" in out
    assert large < 100 and large < small * 1.25, (small, large)


_DROP_KEY = object()


@pytest.mark.parametrize(
    ("key", "value", "rule"),
    [
        ("v", 1.0, "E-2.2"),
        ("type", "NOPE", "E-2.3"),
        ("sender", 7, "E-2.4"),
        ("seq", -1, "E-2.5"),
        ("body", _DROP_KEY, "E-2.7"),
        ("meta", None, "E-2.8"),
        ("meta", {"reason": 5}, "E-2.9"),
        ("extra", 1, "E-2.1"),
        ("task_id", _DROP_KEY, "E-2.1"),
    ],
)
def test_an_invalid_line_cites_the_envelope_rule_of_its_field(
    key: str, value: Any, rule: str
) -> None:
    lines = _valid_lines()
    obj = json.loads(lines[3])
    if value is _DROP_KEY:
        del obj[key]
    else:
        obj[key] = value
    checker = TraceChecker()
    checker.feed_lines(lines[:3])
    finding = checker.feed(json.dumps(obj))
    assert finding is not None and finding.rule == rule, finding


def _resumed(first: int, resume_option: object) -> list[str]:
    """The rule book's two-batch streaming trace, its batches numbered from ``first``."""
    lines = [
        json.loads(line)
        for line in (TRACES / "rules" / "W-4.5.jsonl").read_text().split("\n")
        if line
    ]
    batch = first - 1
    for message in lines:
        if message["type"] == "JOB_REQUEST" and resume_option is not None:
            message["body"]["options"]["resume_from_batch"] = resume_option
        if message["type"] == "CURRENT_BATCH_ID":
            batch += 1
            message["body"] = batch
        if message["type"] == "EVALUATION_RESULTS":
            message["meta"]["batch_number"] = batch
    return [json.dumps(message) for message in lines]


def test_a_resumed_task_starts_at_the_batch_its_job_names() -> None:
    """``modeller serve --resume`` asks its pods to start at a later batch (docs/network.md)."""
    assert check_trace(_resumed(0, None)).ok
    assert check_trace(_resumed(3, 3)).ok
    finding = check_trace(_resumed(0, 3)).finding
    assert finding is not None and finding.rule == "W-4.5"
    assert "with body 3 (the next batch id)" in " ".join(finding.expected)
    # Not a resumed task: a value that is not a batch id is no resume.
    assert check_trace(_resumed(0, "3")).ok
    assert check_trace(_resumed(0, -1)).ok
