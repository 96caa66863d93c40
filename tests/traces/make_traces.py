"""Regenerate the trace fixtures of this folder: ``python tests/traces/make_traces.py``.

The good traces are recorded from the runtime (``run_task``). Each bad trace is
a good one with one deliberate mistake; seqs are renumbered afterwards, so
that the mistake is the only violation. ``expected.json`` says what the
checker must report for each file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio

from fsm_protocol import EchoProtocol, Pod, encode, run_task

HERE = Path(__file__).parent
Line = dict[str, Any]


async def record(protocol: EchoProtocol, pods: list[str], **kwargs: Any) -> list[Line]:
    outcome = await run_task(protocol, [Pod(p) for p in pods], task_id="t-fixture", **kwargs)
    return [json.loads(encode(m)) for m in outcome.trace]


def copy(lines: list[Line]) -> list[Line]:
    return [json.loads(json.dumps(line)) for line in lines]


def renumber(lines: list[Line]) -> list[Line]:
    counters: dict[tuple[str, str], int] = {}
    for line in lines:
        key = (line["task_id"], line["sender"])
        line["seq"] = counters.get(key, 0)
        counters[key] = line["seq"] + 1
    return lines


def write(name: str, lines: list[Line] | list[str]) -> None:
    with (HERE / name).open("w") as f:
        for line in lines:
            f.write(line if isinstance(line, str) else json.dumps(line, separators=(",", ":")))
            f.write("\n")


def find(lines: list[Line], **match: Any) -> int:
    for i, line in enumerate(lines):
        if all(line.get(k) == v for k, v in match.items()):
            return i
    raise LookupError(match)


async def main() -> None:
    expected: dict[str, dict[str, Any]] = {}
    items = tuple(f"i{n}" for n in range(8))

    single = await record(EchoProtocol(items=items[:3]), ["a/p"])
    write("good-single-run.jsonl", single)
    expected["good-single-run.jsonl"] = {"ok": True}

    resilience = await record(
        EchoProtocol(items=items, batch_size=2, fail_in_batch=("i2",), fail_alone=("i5",)),
        ["a/p", "b/p"],
        batched_execution=True,
    )
    write("good-resilience.jsonl", resilience)
    expected["good-resilience.jsonl"] = {"ok": True}

    setup = await record(
        EchoProtocol(items=items[:4], batch_size=2, initial_setup=True),
        ["a/p", "b/p"],
        batched_execution=True,
    )
    write("good-initial-setup.jsonl", setup)
    expected["good-initial-setup.jsonl"] = {"ok": True}

    abort = await record(
        EchoProtocol(items=items, batch_size=2),
        ["a/p", "b/p"],
        batched_execution=True,
        overrides={"b/p": {"inference_limit": {"limit": 3, "total_usage": 0}}},
    )
    write("good-abort-cancels-other.jsonl", abort)
    expected["good-abort-cancels-other.jsonl"] = {"ok": True}

    # A cancel that crosses the worker's own abort (it timed out just then): the abort
    # comes first in the trace, and the cancel is still valid.
    crossing = copy(abort)
    cancel = crossing.pop(find(crossing, type="TASK_CANCEL", recipient="a/p"))
    a_abort = find(crossing, type="TASK_ABORT", sender="a/p")
    crossing[a_abort]["body"]["reason"] = "MODELLER_TIMEOUT"
    crossing[a_abort]["meta"]["reason"] = "MODELLER_TIMEOUT"
    crossing.insert(a_abort + 1, cancel)
    write("good-cancel-crosses-abort.jsonl", renumber(crossing))

    write("bad-empty.jsonl", [])
    expected["bad-empty.jsonl"] = {"line": 1, "contains": "the trace is empty"}

    truncated = resilience[:-3]
    write("bad-truncated.jsonl", truncated)
    expected["bad-truncated.jsonl"] = {
        "line": len(truncated) + 1,
        "contains": "trace ends while pod",
    }

    # The modeller answers the first ready worker before the other is ready.
    no_barrier = copy(resilience)
    ready = sorted((find(no_barrier, type="TASK_START", sender=pod), pod) for pod in ("a/p", "b/p"))
    (first_ready, first_pod), (second_ready, _) = ready
    go = no_barrier.pop(find(no_barrier, type="TASK_START", recipient=first_pod))
    no_barrier.insert(first_ready + 1, go)
    assert first_ready + 1 < second_ready + 1
    write("bad-no-barrier.jsonl", renumber(no_barrier))
    expected["bad-no-barrier.jsonl"] = {
        "line": first_ready + 2,
        "contains": "only once every accepted worker has sent TASK_START",
    }

    lost = copy(resilience)
    first_results = find(lost, type="EVALUATION_RESULTS", sender="a/p")
    lost[first_results]["body"]["items"] = lost[first_results]["body"]["items"][:1]
    write("bad-lost-item.jsonl", lost)
    expected["bad-lost-item.jsonl"] = {"line": first_results + 1, "contains": "'i1' lost"}

    duplicate = copy(resilience)
    duplicate.insert(first_results + 1, dict(duplicate[first_results]))
    write("bad-duplicate-results.jsonl", renumber(duplicate))
    expected["bad-duplicate-results.jsonl"] = {
        "line": first_results + 2,
        "contains": "no duplicate results",
    }

    gap = copy(single)
    for line in gap[find(gap, type="TASK_START", sender="a/p") :]:
        if line["sender"] == "a/p":
            line["seq"] += 1
    write("bad-seq-gap.jsonl", gap)
    expected["bad-seq-gap.jsonl"] = {
        "line": find(gap, type="TASK_START", sender="a/p") + 1,
        "contains": "expected 4",
    }

    invalid = [json.dumps(line, separators=(",", ":")) for line in single]
    results = find(single, type="EVALUATION_RESULTS")
    broken = copy(single)[results]
    del broken["meta"]
    invalid[results] = json.dumps(broken, separators=(",", ":"))
    write("bad-no-batch-number.jsonl", invalid)
    expected["bad-no-batch-number.jsonl"] = {
        "line": results + 1,
        "contains": "field $.meta.batch_number",
    }

    after_end = copy(abort)
    after_end.append(
        {
            "v": 1,
            "type": "LOG_MESSAGE",
            "task_id": "t-fixture",
            "sender": "b/p",
            "recipient": "modeller",
            "seq": 0,
            "body": {"level": "INFO", "message": "still here"},
            "meta": {},
        }
    )
    write("bad-after-end.jsonl", renumber(after_end))
    expected["bad-after-end.jsonl"] = {
        "line": len(after_end),
        "contains": "after that worker's end",
    }

    no_cancel = [
        line
        for line in abort
        if line["type"] != "TASK_CANCEL"
        and not (line["sender"] == "a/p" and line["type"] == "TASK_ABORT")
    ]
    write("bad-no-cancel-after-abort.jsonl", renumber(copy(no_cancel)))
    expected["bad-no-cancel-after-abort.jsonl"] = {
        "line": len(no_cancel) + 1,
        "contains": "the modeller owes it TASK_CANCEL",
    }

    fails = copy(resilience)
    retry = next(
        i
        for i, x in enumerate(fails)
        if x["type"] == "EVALUATION_RESULTS"
        and x["sender"] == "a/p"
        and x["meta"]["batch_number"] is None
    )
    fails[retry]["body"]["items"] = ["i5"]
    write("bad-delivers-failing-item.jsonl", fails)
    expected["bad-delivers-failing-item.jsonl"] = {
        "line": retry + 1,
        "contains": "Echo predicts that it fails",
    }

    jump = copy(resilience)
    second_id = [
        i for i, x in enumerate(jump) if x["type"] == "CURRENT_BATCH_ID" and x["sender"] == "a/p"
    ][1]
    jump[second_id]["body"] = 2
    write("bad-batch-id-jump.jsonl", jump)
    expected["bad-batch-id-jump.jsonl"] = {
        "line": second_id + 1,
        "contains": "with body 1 (the next batch id)",
    }

    expected["good-cancel-crosses-abort.jsonl"] = {"ok": True}
    (HERE / "expected.json").write_text(json.dumps(expected, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    trio.run(main)
    print(f"wrote the fixtures in {HERE}")
