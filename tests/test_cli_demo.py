"""``fsm-protocol demo`` as a tool: a trace the other commands read, JSON, a truthful bar."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fsm_protocol import read_trace
from fsm_protocol._cli._main import main


def strict_json(text: str) -> Any:
    """Parse JSON refusing what Python's parser lets through: NaN, Infinity, duplicate keys."""

    def no_constants(name: str) -> Any:
        raise ValueError(f"not JSON: {name}")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            raise ValueError(f"duplicate keys in {keys}")
        return dict(pairs)

    return json.loads(text, parse_constant=no_constants, object_pairs_hook=no_duplicates)


def test_demo_trace_is_read_by_check_and_diagram(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "demo.ndjson"
    assert main(["demo", "--fail-in-batch", "item-7", "--trace", str(trace), "--json"]) == 0
    outcome = strict_json(capsys.readouterr().out)
    lines = trace.read_text(encoding="utf-8").splitlines()
    assert len(lines) == outcome["messages"] > 0
    assert len(read_trace(trace.read_text(encoding="utf-8"))) == len(lines)
    assert main(["check", str(trace)]) == 0
    assert "conforms: " in capsys.readouterr().out
    assert main(["check", "--format", "json", str(trace)]) == 0
    report = strict_json(capsys.readouterr().out)
    assert report["ok"] is True and report["traces"][0]["lines"] == len(lines)
    assert main(["diagram", "--trace", str(trace)]) == 0
    assert capsys.readouterr().out.startswith("sequenceDiagram\n")
    assert main(["diagram", "--trace", str(trace), "--format", "svg"]) == 0
    assert "<svg" in capsys.readouterr().out


def test_demo_json_is_the_outcome(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--workers", "2", "--items", "6", "--fail", "item-2", "--json"]) == 0
    out = strict_json(capsys.readouterr().out)
    assert out["status"] == "complete"
    assert sorted(out["workers"]) == ["demo/pod-a", "demo/pod-b"]
    assert out["workers"]["demo/pod-a"]["state"] == "complete"
    # item-2's batch (items 1-4) failed, and its items were retried alone: keys sort,
    # retries first, then the batches.
    keys = [(r["worker"], r["batch"], r["retry"]) for r in out["results"]][:5]
    assert keys == [("demo/pod-a", None, n) for n in range(4)] + [("demo/pod-a", 1, None)]
    assert [(e["pod_id"], e["where"]) for e in out["errors"]] == [
        ("demo/pod-a", "run_batch"),
        ("demo/pod-b", "run_batch"),
    ]
    assert out["errors"][0]["type"] == "fsm_protocol.BatchFailed"
    assert out["errors"][0]["traceback"].startswith("Traceback (most recent call last):")


def test_the_progress_bar_ends_in_the_task_state(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--limit", "30"]) == 1
    out = capsys.readouterr().out
    (bar,) = [line for line in out.splitlines() if line.startswith("slowest worker")]
    assert "aborted" in bar
    done, total = bar.split()[-1].split("/")
    assert int(done) < int(total), bar
    assert main(["demo", "--items", "8"]) == 0
    (bar,) = [
        line for line in capsys.readouterr().out.splitlines() if line.startswith("slowest worker")
    ]
    assert "complete" in bar and bar.endswith("2/2")


def test_no_progress_prints_no_bar(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--items", "8", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "slowest worker" not in out and "task t-" in out


def test_a_failing_item_is_logged_and_verbose_adds_the_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["demo", "--workers", "1", "--items", "4", "--fail-alone", "item-3", "--no-progress"]
    assert main(args) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (
        "fsm-protocol: warning: demo/pod-a: run_batch raised fsm_protocol.BatchFailed: "
        "items item-3 failed (items item-1, item-2, item-3, item-4)"
    )
    assert not any(line.startswith("Traceback") for line in err)
    assert main([*args, "-v"]) == 0
    assert "Traceback (most recent call last):" in capsys.readouterr().err
    assert main([*args, "-q"]) == 0  # errors only: the retry that failed too
    assert capsys.readouterr().err.splitlines() == [
        "fsm-protocol: error: demo/pod-a: run_batch raised fsm_protocol.BatchFailed: "
        "items item-3 failed (items item-3)"
    ]
    assert main([*args, "--log-format", "json"]) == 0
    records = [strict_json(line) for line in capsys.readouterr().err.splitlines()]
    assert [r["level"] for r in records] == ["warning", "error"]
    assert {r["logger"] for r in records} == {"fsm_protocol.runtime"}
    assert records[1]["exception_type"] == "BatchFailed"


def test_ctrl_c_exits_130_with_one_line_and_keeps_the_trace(tmp_path: Path) -> None:
    trace = tmp_path / "partial.ndjson"
    process = subprocess.Popen(
        [sys.executable, "-m", "fsm_protocol", "demo", "--items", "5000", "--batch-size", "1"]
        + ["--no-progress", "--trace", str(trace)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60

    def lines() -> int:
        return trace.read_bytes().count(b"\n") if trace.exists() else 0

    while lines() < 50 and time.monotonic() < deadline:
        time.sleep(0.05)  # waiting on another process's progress, not on timing
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err.decode()
    assert err.decode().splitlines() == ["fsm-protocol demo: interrupted"]
    # What was written is whole lines of messages.
    text = trace.read_text(encoding="utf-8")
    assert text.endswith("\n") and len(read_trace(text)) >= 50


def test_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first write: `... | head` at its end
    done = subprocess.run(
        [sys.executable, "-m", "fsm_protocol", "validate", "--format", "json"],
        stdout=write,
        stderr=subprocess.PIPE,
        timeout=60,
        check=False,
    )
    os.close(write)
    assert done.returncode == 141
    assert done.stderr == b""
