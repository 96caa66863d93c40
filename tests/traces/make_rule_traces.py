"""Regenerate the rule book's traces: ``python tests/traces/make_rule_traces.py``.

Each file ``rules/<id>.jsonl`` breaks one rule of the rule book
(``fsm_protocol/_check/_rules.py``) and no other: it is one of the conforming
``rules/_good-*.jsonl`` traces below with one deliberate edit, so the first
violation ``fsm-protocol check`` finds is that rule's. Seqs are counted as the
lines are added, so no edit breaks them by accident. ``--docs`` also rewrites
the rule book table in ``docs/conformance.md``.

F-1.2 (a line over 16 MiB) is not stored: ``oversized_trace()`` builds it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
RULES = HERE / "rules"
DOCS = HERE.parent.parent / "docs" / "conformance.md"
BEGIN = "<!-- rule book: generated from fsm_protocol/_check/_rules.py, do not edit -->"
END = "<!-- end of the rule book -->"

TASK = "t-rule"
MODELLER = "modeller"
ECHO = "conformance.Echo"
PLAIN = "example.Plain"  # a protocol without the Echo account: only the order is at stake


def abort(reason: str) -> dict[str, Any]:
    return {"message": "m", "reason": reason, "exception_type": None, "traceback_summary": None}


class Trace:
    """Lines of one task, each sender's seq counted as they are added."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.seq: dict[str, int] = {}

    def m(self, type_: str, pod: str, body: Any = None, **fields: Any) -> Trace:
        return self.add(type_, MODELLER, pod, body, **fields)

    def w(self, type_: str, pod: str, body: Any = None, **fields: Any) -> Trace:
        return self.add(type_, pod, MODELLER, body, **fields)

    def add(self, type_: str, sender: str, recipient: str, body: Any, **fields: Any) -> Trace:
        seq = self.seq.get(sender, 0)
        self.seq[sender] = seq + 1
        line: dict[str, Any] = {
            "v": 1,
            "type": type_,
            "task_id": TASK,
            "sender": sender,
            "recipient": recipient,
            "seq": seq,
            "body": body,
            "meta": {},
        }
        for key, value in fields.items():
            if value is _DROP:
                del line[key]
            else:
                line[key] = value
        self.lines.append(json.dumps(line, separators=(",", ":")))
        return self

    def raw(self, text: str) -> Trace:
        self.lines.append(text)
        return self

    def text(self) -> str:
        return "".join(line + "\n" for line in self.lines)


_DROP = object()


def job(
    pods: tuple[str, ...] = ("a",),
    *,
    items: tuple[str, ...] = ("i0",),
    batched: bool = False,
    batch_size: int = 1,
    cls: str = ECHO,
    test_run: bool = False,
    **protocol: Any,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"class_name": cls}
    if cls == ECHO:
        spec.update(items=list(items), batch_size=batch_size, **protocol)
    else:
        spec.update(protocol)
    return {
        "protocol": spec,
        "pod_identifiers": list(pods),
        "batched_execution": batched,
        "run_on_new_data_only": False,
        "force_rerun_failed_files": False,
        "test_run": test_run,
        "project_id": None,
        "options": {},
    }


def results(items: list[str], batch: int | None) -> dict[str, Any]:
    return {"meta": {"batch_number": batch}, "body": {"items": items}}


# --- The conforming bases -----------------------------------------------------------------


def single(edit: Callable[[Trace, int], None] | None = None, **job_args: Any) -> Trace:
    """One pod, non-batched, one item; ``edit(trace, step)`` may act before each step."""
    t = Trace()
    steps: list[Callable[[], Any]] = [
        lambda: t.m("JOB_REQUEST", "a", job(**job_args)),
        lambda: t.w("JOB_ACCEPT", "a", {"ACCEPT": "a"}),
        lambda: t.w("NUMBER_OF_BATCHES", "a", 1),
        lambda: t.w("TASK_START", "a"),
        lambda: t.m("TASK_START", "a"),
        lambda: t.w("EVALUATION_RESULTS", "a", **results(["i0"], None)),
        lambda: t.w("BATCHES_COMPLETE", "a", "TASK_COMPLETE"),
        lambda: t.m("TASK_COMPLETE", "a"),
    ]
    for step, run in enumerate(steps):
        if edit is not None:
            edit(t, step)
        run()
    return t


def batches() -> Trace:
    """One pod, streaming, two batches of one item."""
    t = Trace().m("JOB_REQUEST", "a", job(items=("i0", "i1"), batched=True))
    t.w("JOB_ACCEPT", "a", {"ACCEPT": "a"}).w("NUMBER_OF_BATCHES", "a", -1)
    t.w("CURRENT_BATCH_ID", "a", 0).w("TASK_START", "a").m("TASK_START", "a")
    t.w("EVALUATION_RESULTS", "a", **results(["i0"], 0))
    t.w("CURRENT_BATCH_ID", "a", 1).w("EVALUATION_RESULTS", "a", **results(["i1"], 1))
    t.w("BATCHES_COMPLETE", "a", "BATCHES_ONLY").w("BATCHES_COMPLETE", "a", "TASK_COMPLETE")
    return t.m("TASK_COMPLETE", "a")


def two_pods_opening(cls: str = PLAIN) -> Trace:
    """Two pods, non-batched, both accepted and ready: the modeller's TASK_START is next."""
    t = Trace()
    body = job(("a", "b"), cls=cls)
    t.m("JOB_REQUEST", "a", body).m("JOB_REQUEST", "b", body)
    for pod in ("a", "b"):
        t.w("JOB_ACCEPT", pod, {"ACCEPT": pod}).w("NUMBER_OF_BATCHES", pod, 1)
        t.w("TASK_START", pod)
    return t


def two_pods() -> Trace:
    t = two_pods_opening().m("TASK_START", "a").m("TASK_START", "b")
    for pod in ("a", "b"):
        t.w("EVALUATION_RESULTS", pod, **results(["x"], None))
        t.w("BATCHES_COMPLETE", pod, "TASK_COMPLETE")
    return t.m("TASK_COMPLETE", "a").m("TASK_COMPLETE", "b")


def setup_opening(**job_args: Any) -> Trace:
    t = Trace().m("JOB_REQUEST", "a", job(initial_setup=True, **job_args))
    return t.w("JOB_ACCEPT", "a", {"ACCEPT": "a"})


GOOD: dict[str, Callable[[], Trace]] = {
    "_good-single.jsonl": single,
    "_good-batches.jsonl": batches,
    "_good-two-pods.jsonl": two_pods,
}


# --- One trace per rule ---------------------------------------------------------------------


def at(step: int, act: Callable[[Trace], Any]) -> Callable[[Trace, int], None]:
    """An edit of single(): ``act`` runs just before step ``step``."""

    def edit(t: Trace, now: int) -> None:
        if now == step:
            act(t)

    return edit


def replace_line(t: Trace, index: int, **fields: Any) -> Trace:
    line = json.loads(t.lines[index])
    for key, value in fields.items():
        if value is _DROP:
            del line[key]
        else:
            line[key] = value
    t.lines[index] = json.dumps(line, separators=(",", ":"))
    return t


def rule_traces() -> dict[str, Trace]:
    traces: dict[str, Trace] = {}

    def add(rule: str, trace: Trace) -> None:
        traces[f"{rule}.jsonl"] = trace

    s = single
    # 1. Framing
    add("F-1.1", _framing())
    # 2. Envelope (each an edit of the JOB_ACCEPT, line 2, or of a later line)
    add("E-2.1", replace_line(s(), 1, extra=1))
    add("E-2.2", replace_line(s(), 1, v=2))
    add("E-2.3", replace_line(s(), 1, type="JOB_ACCEPTED"))
    add("E-2.4", replace_line(s(), 1, recipient=None))
    add("E-2.5", replace_line(s(), 1, seq="0"))
    add("E-2.6", replace_line(s(), 3, seq=3))  # the worker's TASK_START skips seq 2
    add("E-2.7", replace_line(s(), 3, body=_DROP))
    add("E-2.8", replace_line(s(), 2, meta=None))
    add("E-2.9", replace_line(s(), 2, meta={"total_batches": "1"}))
    add("W-2.10", replace_line(s(), 5, meta={}))
    t = batches()
    add("W-2.11", replace_line(t, 6, meta={"batch_number": 1}))
    # 3. Message types
    add("M-3.1", s(at(2, lambda t: t.m("NUMBER_OF_BATCHES", "a", 1))))
    add("W-3.2", s(at(6, lambda t: t.w("TASK_COMPLETE", "a"))))
    add("M-3.3", replace_line(s(), 0, body={**job(), "batched_execution": "no"}))
    add("W-3.4", replace_line(s(), 1, body={"ACCEPT": "b"}))
    reject = Trace().m("JOB_REQUEST", "a", job()).w("JOB_REJECT", "a", {"NO_SUCH_REASON": ["x"]})
    add("W-3.5", reject)
    add("E-3.6", s(at(2, lambda t: t.w("PREPARING_DATA", "a", "busy"))))
    add("M-3.7", setup_opening().m("ALGORITHM_EXCHANGE", "a", [1]))
    add("W-3.8", replace_line(s(), 2, body=0))
    add("W-3.9", replace_line(batches(), 3, body=-1))
    add("W-3.10", replace_line(s(), 6, body="DONE"))
    add("W-3.11", s(at(2, lambda t: t.w("TASK_ABORT", "a", abort("GAVE_UP")))))
    add("W-3.12", s(at(2, lambda t: t.w("ONLINE_CHECK", "a", 5))))

    def wrong_token(t: Trace) -> None:
        t.w("ONLINE_CHECK", "a", "tok-1").m("ONLINE_RESPONSE", "a", "tok-2")

    add("M-3.13", s(at(4, wrong_token)))
    add("E-3.14", s(at(2, lambda t: t.w("LOG_MESSAGE", "a", {"level": "INFO"}))))
    # 4. Order
    add("E-4.1", s(at(1, lambda t: t.w("JOB_ACCEPT", "b", {"ACCEPT": "b"}))))
    add("W-4.2", s(at(1, lambda t: t.w("PREPARING_DATA", "a"))))
    add(
        "W-4.3",
        s(at(2, lambda t: t.w("CONFIGURING_TASK", "a").w("PREPARING_DATA", "a"))),
    )
    add("W-4.4", replace_line(s(), 0, body=job(batched=True)))
    add("W-4.5", replace_line(batches(), 3, body=1))
    t = setup_opening().w("NUMBER_OF_BATCHES", "a", 1).m("ALGORITHM_EXCHANGE", "a", {})
    add("W-4.6", t)
    add("M-4.7", s(at(2, lambda t: t.m("ALGORITHM_EXCHANGE", "a", {}))))
    add("W-4.8", s(at(4, lambda t: t.w("EVALUATION_RESULTS", "a", **results(["i0"], None)))))
    add("M-4.9", s(at(3, lambda t: t.m("TASK_START", "a"))))
    add("W-4.10", _twice_estimate())
    add("W-4.11", _duplicate_results())
    add("W-4.12", _skip_batches_only())
    add("W-4.13", s(at(1, lambda t: t.w("TASK_ABORT", "a", abort("WORKER_ERROR")))))
    add("M-4.14", _cancel_twice())
    add("W-4.15", _cancelled_never_aborts())
    add("W-4.16", s(at(4, lambda t: t.w("TASK_ABORT", "a", abort("CANCELLED_BY_MODELLER")))))
    add("E-4.17", s(at(1, lambda t: t.w("LOG_MESSAGE", "a", {"level": "INFO", "message": "hi"}))))
    add("M-4.19", _late_accept_never_cancelled())
    add("M-4.20", _barrier_broken())
    t = two_pods_opening().m("TASK_START", "a").m("TASK_START", "b")
    t.w("EVALUATION_RESULTS", "a", **results(["x"], None)).w(
        "BATCHES_COMPLETE", "a", "TASK_COMPLETE"
    )
    add("M-4.21", t.m("TASK_COMPLETE", "a"))
    t = two_pods_opening().m("TASK_START", "a").m("TASK_START", "b")
    t.w("TASK_ABORT", "a", abort("WORKER_ERROR"))
    t.w("EVALUATION_RESULTS", "b", **results(["x"], None)).w(
        "BATCHES_COMPLETE", "b", "TASK_COMPLETE"
    )
    add("M-4.22", t)
    t = single()
    t.w("TASK_ABORT", "a", abort("MODELLER_TIMEOUT"))  # crosses TASK_COMPLETE: valid
    add("E-4.24", t.w("LOG_MESSAGE", "a", {"level": "INFO", "message": "still here"}))
    t = single()
    t.lines = t.lines[:5]
    add("W-4.25", t)
    t = single()
    t.lines = t.lines[:4]
    add("M-4.26", t)
    add("E-4.27", Trace())
    # 5. conformance.Echo
    add("W-5.2", replace_line(s(), 0, body=job(items=())))
    bad_size = Trace().m("JOB_REQUEST", "a", job(batch_size=0))
    add("W-5.3", bad_size.w("JOB_ACCEPT", "a", {"ACCEPT": "a"}))
    t = s(items=("i0", "i1"))
    add("W-5.4", replace_line(t, 5, body={"items": ["i1", "i0"]}))
    add("W-5.5", _failed_batch_delivers())
    t = s(fail_in_batch=["i0"])
    add("W-5.6", t)
    add("W-5.7", _five_failed_batches())
    t = s(items=("i0", "i1"), inference_limit={"limit": 1, "total_usage": 0})
    add("W-5.8", replace_line(t, 5, body={"items": ["i0", "i1"]}))
    t = s(items=("i0", "i1"), test_run=True)
    add("W-5.9", replace_line(t, 5, body={"items": ["i0", "i1"]}))
    add("W-5.10", _skipped_batch_then_cancel())
    add("W-5.11", s(at(5, lambda t: t.w("TASK_ABORT", "a", abort("WORKER_ERROR")))))
    return traces


def _framing() -> Trace:
    t = single()
    t.lines[1] = '{"v":1,"type":"JOB_ACCEPT","task_id":'  # cut short: not JSON
    return t


def _batches_opening(**job_args: Any) -> Trace:
    t = Trace().m("JOB_REQUEST", "a", job(batched=True, **job_args))
    t.w("JOB_ACCEPT", "a", {"ACCEPT": "a"}).w("NUMBER_OF_BATCHES", "a", -1)
    return t.w("CURRENT_BATCH_ID", "a", 0).w("TASK_START", "a").m("TASK_START", "a")


def _twice_estimate() -> Trace:
    t = _batches_opening(items=("i0", "i1"))
    return t.w("NUMBER_OF_BATCHES", "a", 2).w("NUMBER_OF_BATCHES", "a", 2)


def _duplicate_results() -> Trace:
    t = _batches_opening(items=("i0", "i1"))
    return t.w("EVALUATION_RESULTS", "a", **results(["i0"], 0)).w(
        "EVALUATION_RESULTS", "a", **results(["i0"], 0)
    )


def _skip_batches_only() -> Trace:
    t = _batches_opening(items=("i0", "i1"))
    t.w("EVALUATION_RESULTS", "a", **results(["i0"], 0))
    t.w("CURRENT_BATCH_ID", "a", 1).w("EVALUATION_RESULTS", "a", **results(["i1"], 1))
    return t.w("BATCHES_COMPLETE", "a", "TASK_COMPLETE").m("TASK_COMPLETE", "a")


def _ready() -> Trace:
    t = single()
    t.lines = t.lines[:4]  # the worker's TASK_START is the last line
    t.seq = {MODELLER: 1, "a": 3}
    return t


def _cancel_twice() -> Trace:
    t = _ready().m("TASK_CANCEL", "a").m("TASK_CANCEL", "a")
    return t.w("TASK_ABORT", "a", abort("CANCELLED_BY_MODELLER"))


def _cancelled_never_aborts() -> Trace:
    return _ready().m("TASK_CANCEL", "a")


def _late_accept_never_cancelled() -> Trace:
    t = Trace()
    body = job(("a", "b"), cls=PLAIN)
    t.m("JOB_REQUEST", "a", body).m("JOB_REQUEST", "b", body)
    t.w("JOB_ACCEPT", "a", {"ACCEPT": "a"}).w("NUMBER_OF_BATCHES", "a", 1).w("TASK_START", "a")
    t.m("TASK_START", "a")  # the response wait is over: b is left out
    t.w("JOB_ACCEPT", "b", {"ACCEPT": "b"})  # late, while a runs: TASK_CANCEL is owed
    t.w("TASK_ABORT", "b", abort("MODELLER_TIMEOUT"))  # its own abort does not excuse it
    t.m("TASK_CANCEL", "a")  # b's abort cancels a, as it should
    return t.w("TASK_ABORT", "a", abort("CANCELLED_BY_MODELLER"))


def _barrier_broken() -> Trace:
    t = Trace()
    body = job(("a", "b"), cls=PLAIN)
    t.m("JOB_REQUEST", "a", body).m("JOB_REQUEST", "b", body)
    t.w("JOB_ACCEPT", "a", {"ACCEPT": "a"}).w("NUMBER_OF_BATCHES", "a", 1).w("TASK_START", "a")
    t.w("JOB_ACCEPT", "b", {"ACCEPT": "b"}).w("NUMBER_OF_BATCHES", "b", 1)
    return t.m("TASK_START", "a")  # b has not sent TASK_START yet


def _failed_batch_delivers() -> Trace:
    t = _batches_opening(items=("i0", "i1"), batch_size=2, fail_in_batch=["i1"])
    return t.w("EVALUATION_RESULTS", "a", **results(["i0", "i1"], 0))


def _five_failed_batches() -> Trace:
    items = tuple(f"i{n}" for n in range(6))
    t = _batches_opening(items=items, fail_in_batch=list(items[:5]))
    for batch in range(1, 6):
        t.w("CURRENT_BATCH_ID", "a", batch)
    return t


def _skipped_batch_then_cancel() -> Trace:
    t = _batches_opening(items=("i0", "i1"))
    t.w("CURRENT_BATCH_ID", "a", 1)  # batch 0's results never came
    return t.m("TASK_CANCEL", "a").w("TASK_ABORT", "a", abort("CANCELLED_BY_MODELLER"))


def oversized_trace(path: Path, limit: int = 16 * 1024 * 1024) -> Path:
    """F-1.2: a JOB_REQUEST, then a line of ``limit`` + 1 bytes."""
    lines = single().lines
    with path.open("w") as f:
        f.write(lines[0] + "\n")
        pad = limit + 1 - len(lines[1]) - len(',"pad":""') - 1
        f.write(lines[1][:-1] + ',"pad":"' + "x" * pad + '"}\n')
    return path


def docs_table() -> str:
    sys.path.insert(0, str(HERE.parent.parent))
    from fsm_protocol._check._rules import rule_book_markdown

    return f"{BEGIN}\n\n{rule_book_markdown()}\n{END}"


def main(argv: list[str]) -> None:
    RULES.mkdir(exist_ok=True)
    for old in RULES.glob("*.jsonl"):
        old.unlink()
    for name, make in GOOD.items():
        (RULES / name).write_text(make().text())
    for name, trace in rule_traces().items():
        (RULES / name).write_text(trace.text())
    if "--docs" in argv:
        text = DOCS.read_text()
        start, end = text.index(BEGIN), text.index(END) + len(END)
        DOCS.write_text(text[:start] + docs_table() + text[end:])
    print(f"wrote the rule traces in {RULES}")


if __name__ == "__main__":
    main(sys.argv[1:])
