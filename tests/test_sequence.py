"""Sequence diagrams from traces: participants, folding, Mermaid, SVG, the CLI."""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from fsm_protocol import (
    MODELLER,
    DecodeError,
    EchoProtocol,
    Message,
    MessageType,
    Meta,
    Pod,
    encode,
    run_task,
)
from fsm_protocol._cli._main import main
from fsm_protocol._export._sequence import (
    Arrow,
    Note,
    message_label,
    plan_sequence,
    read_trace,
    to_mermaid_sequence,
    to_sequence_svg,
)


def worker_messages(
    pod: str, batches: int, *, failed: frozenset[int] = frozenset(), retries: int = 0
) -> Iterator[Message]:
    """One batched worker's conversation, as the modeller's trace holds it."""
    seq = {pod: itertools.count(), MODELLER: itertools.count()}

    def msg(sender: str, type_: str, body: Any = None, meta: Meta | None = None) -> Message:
        recipient = MODELLER if sender == pod else pod
        return Message.make(
            type_,
            task_id="t",
            sender=sender,
            recipient=recipient,
            seq=next(seq[sender]),
            body=body,
            meta=meta,
        )

    protocol = {"class_name": "conformance.Echo"}
    yield msg(
        MODELLER,
        "JOB_REQUEST",
        {
            "protocol": protocol,
            "pod_identifiers": [pod],
            "batched_execution": True,
            "run_on_new_data_only": False,
            "force_rerun_failed_files": True,
            "test_run": False,
            "project_id": None,
            "options": {},
        },
    )
    yield msg(pod, "JOB_ACCEPT", {"ACCEPT": pod})
    yield msg(pod, "NUMBER_OF_BATCHES", -1)
    for k in range(batches):
        yield msg(pod, "CURRENT_BATCH_ID", k)
        if k == 0:
            yield msg(pod, "TASK_START")
            yield msg(MODELLER, "TASK_START")
        if k not in failed:
            yield msg(pod, "EVALUATION_RESULTS", {"items": [k]}, Meta(batch_number=k))
    yield msg(pod, "BATCHES_COMPLETE", "BATCHES_ONLY")
    for _ in range(retries):
        yield msg(pod, "EVALUATION_RESULTS", {"items": []}, Meta(batch_number=None))
    yield msg(pod, "BATCHES_COMPLETE", "TASK_COMPLETE")
    yield msg(MODELLER, "TASK_COMPLETE")


def interleave(*streams: Iterator[Message]) -> list[Message]:
    out: list[Message] = []
    for group in itertools.zip_longest(*streams):
        out.extend(m for m in group if m is not None)
    return out


def notes(messages: list[Message], **kwargs: Any) -> list[Note]:
    return [r for r in plan_sequence(messages, **kwargs).rows if isinstance(r, Note)]


def test_participants_are_the_modeller_then_workers_in_order_of_appearance() -> None:
    trace = interleave(worker_messages("b/pod", 2), worker_messages("a/pod", 2))
    plan = plan_sequence(trace)
    assert plan.modeller == MODELLER
    assert plan.workers == ("b/pod", "a/pod")


def test_a_long_run_of_batches_folds_into_one_note() -> None:
    trace = list(worker_messages("p", 100))
    plan = plan_sequence(trace)
    # Batch 0 holds the TASK_START handshake, so the run starts at batch 1:
    # batches 1 and 2 are drawn, 3-98 fold, 99 is drawn.
    assert [n.text for n in notes(trace)] == ["batches 3–98: CURRENT_BATCH_ID, EVALUATION_RESULTS"]
    labels = [r.label for r in plan.rows if isinstance(r, Arrow)]
    assert "CURRENT_BATCH_ID 2" in labels and "CURRENT_BATCH_ID 99" in labels
    assert "CURRENT_BATCH_ID 3" not in labels and "EVALUATION_RESULTS batch 98" not in labels
    assert plan.total == len(trace)


def test_a_failed_batch_breaks_the_run_and_stays_visible() -> None:
    trace = list(worker_messages("p", 40, failed=frozenset({20})))
    assert [n.text for n in notes(trace)] == [
        "batches 3–18: CURRENT_BATCH_ID, EVALUATION_RESULTS",
        "batches 23–38: CURRENT_BATCH_ID, EVALUATION_RESULTS",
    ]
    labels = [r.label for r in plan_sequence(trace).rows if isinstance(r, Arrow)]
    assert labels.count("CURRENT_BATCH_ID 20") == 1
    assert "EVALUATION_RESULTS batch 20" not in labels


def test_short_runs_and_no_fold_draw_everything() -> None:
    assert notes(list(worker_messages("p", 5))) == []
    trace = list(worker_messages("p", 100))
    rows = plan_sequence(trace, fold=False).rows
    assert all(isinstance(r, Arrow) for r in rows) and len(rows) == len(trace)
    assert [r.line for r in rows if isinstance(r, Arrow)] == list(range(1, len(trace) + 1))


def test_long_resilience_runs_fold_too() -> None:
    trace = list(worker_messages("p", 2, retries=30))
    assert [n.text for n in notes(trace)] == ["27 more: EVALUATION_RESULTS"]


def test_workers_in_step_share_one_note() -> None:
    trace = interleave(*(worker_messages(f"pod-{c}", 50) for c in "abc"))
    (note,) = notes(trace)
    assert note.workers == ("pod-a", "pod-b", "pod-c")
    mermaid = to_mermaid_sequence(trace)
    # ':' inside a label is written as Mermaid's entity code #58; (shown as ':').
    assert (
        "Note over M,W3: pod-a, pod-b, pod-c#58; batches 3–48#58; CURRENT_BATCH_ID, "
        "EVALUATION_RESULTS" in mermaid
    )


def test_mermaid_sequence_diagram() -> None:
    trace = list(worker_messages("alice/pod-a", 3))
    text = to_mermaid_sequence(trace)
    assert text.startswith("sequenceDiagram\n    participant M as modeller\n")
    assert "    participant W1 as alice/pod-a\n" in text
    assert "    M->>W1: JOB_REQUEST conformance.Echo, batched\n" in text
    assert "    W1->>M: NUMBER_OF_BATCHES -1\n" in text
    assert "    W1->>M: EVALUATION_RESULTS batch 2\n" in text
    assert "    W1->>M: BATCHES_COMPLETE TASK_COMPLETE\n" in text


def test_a_message_to_a_stranger_gets_its_own_lifeline() -> None:
    # A broken worker may write to someone other than the modeller; the diagram of its
    # failing trace must still draw (the kit draws every failing case).
    trace = list(worker_messages("pod-a", 1))
    trace.insert(2, attrs.evolve(trace[2], recipient="somebody-else"))
    plan = plan_sequence(trace)
    assert plan.workers == ("pod-a", "somebody-else")
    text = to_mermaid_sequence(trace)
    assert "    participant W2 as somebody-else\n" in text
    assert f"    W1->>W2: {message_label(trace[2])}\n" in text
    ET.fromstring(to_sequence_svg(trace))


def test_svg_is_well_formed_and_shows_everything_drawn() -> None:
    trace = interleave(worker_messages("pod-a", 60), worker_messages("pod-b", 60))
    svg = to_sequence_svg(trace)
    root = ET.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert texts.count("pod-a") == 2 and texts.count("modeller") == 2  # top and bottom
    assert "batches 3–58: CURRENT_BATCH_ID, EVALUATION_RESULTS" in texts
    assert "pod-a, pod-b:" in texts
    plan = plan_sequence(trace)
    drawn = [r for r in plan.rows if isinstance(r, Arrow)]
    assert [t for t in texts if t and t.isdigit()] == [str(r.line) for r in drawn]
    title = root.find("{http://www.w3.org/2000/svg}title")
    assert title is not None and title.text == f"{len(trace)} messages, {len(drawn)} drawn"


def test_read_trace_names_the_bad_line(tmp_path: Path) -> None:
    good = encode(next(worker_messages("p", 1))).decode().rstrip("\n")
    assert len(read_trace(f"{good}\n\n{good}\n")) == 2
    with pytest.raises(DecodeError, match=r"^trace\.ndjson:3: ") as info:
        read_trace(f'{good}\n\n{{"v": 1}}\n', file="trace.ndjson")
    assert info.value.field != ""


async def test_a_real_task_trace_draws_every_message_or_folds_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    protocol = EchoProtocol(items=tuple(f"i{n}" for n in range(60)), batch_size=2)
    outcome = await run_task(protocol, [Pod("a/p"), Pod("b/p")], batched_execution=True)
    plan = plan_sequence(outcome.trace)
    assert plan.workers == ("a/p", "b/p") or plan.workers == ("b/p", "a/p")
    drawn = sum(isinstance(r, Arrow) for r in plan.rows)
    assert any(isinstance(r, Note) for r in plan.rows)
    assert drawn < len(outcome.trace)
    assert to_mermaid_sequence(outcome.trace).count("->>") == drawn


# ------------------------------------------------------------------ the CLI


def write_trace(path: Path, messages: list[Message]) -> None:
    path.write_bytes(b"".join(encode(m) for m in messages))


def test_cli_draws_a_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "trace.ndjson"
    write_trace(trace, list(worker_messages("p", 30)))
    assert main(["diagram", "--trace", str(trace)]) == 0
    assert "Note over M,W1: batches 3–28" in capsys.readouterr().out
    assert main(["diagram", "--trace", str(trace), "--no-fold"]) == 0
    assert "Note over" not in capsys.readouterr().out
    out = tmp_path / "trace.svg"
    assert main(["diagram", "--trace", str(trace), "--format", "svg", "-o", str(out)]) == 0
    ET.fromstring(out.read_text())


def test_cli_refuses_unusable_traces(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "trace.ndjson"
    write_trace(trace, list(worker_messages("p", 1)))
    assert main(["diagram", "--trace", str(trace), "--format", "png"]) == 2
    assert "a trace is drawn as mermaid or svg, not png" in capsys.readouterr().err
    assert main(["diagram", "worker", "--trace", str(trace)]) == 2
    assert "name exactly one thing" in capsys.readouterr().err
    (tmp_path / "empty.ndjson").write_text("\n")
    assert main(["diagram", "--trace", str(tmp_path / "empty.ndjson")]) == 2
    assert "the trace has no messages" in capsys.readouterr().err
    (tmp_path / "bad.ndjson").write_text('{"v": 1, "type": "NOPE"}\n')
    assert main(["diagram", "--trace", str(tmp_path / "bad.ndjson")]) == 2
    assert "bad.ndjson:1:" in capsys.readouterr().err
    assert main(["diagram", "--trace", str(tmp_path / "missing.ndjson")]) == 2
    assert "no such trace file" in capsys.readouterr().err


def test_message_types_all_have_labels() -> None:
    # Every type renders, with or without a body summary.
    for type_ in MessageType:
        message = Message.make(type_, task_id="t", sender="a", recipient="b", seq=0)
        assert plan_sequence([message]).rows or type_ is MessageType.CONFORMANCE_SCENARIO
