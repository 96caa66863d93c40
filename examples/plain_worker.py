#!/usr/bin/env python3
"""A conformance.Echo worker written from the wire spec alone, without fsm_protocol.

This is how another team might write a worker: one script, the standard
library, NDJSON on stdin and stdout, logs on stderr. It serves one task and
exits. Test it with the conformance kit:

    fsm-protocol conform --role worker -- python examples/plain_worker.py

``--bug NAME`` makes it deviate from the spec in one way, to show that the kit
notices (see BUGS below, and tests/test_examples.py).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import sys
import time
from collections.abc import Callable
from typing import Any

Message = dict[str, Any]  # one decoded JSON line

# bug -> (the type of the one message it spoils, what it does, the spoiled message or line)
SPOILED: dict[str, tuple[str, str, Callable[[Message], Message | str]]] = {
    "not-json": ("CONFIGURING_TASK", "writes CONFIGURING_TASK as a bare word", lambda m: m["type"]),
    "huge-line": (
        "LOG_MESSAGE",
        "writes a LOG_MESSAGE longer than 16 MiB",
        lambda m: {**m, "body": {"level": "INFO", "message": "x" * (16 * 1024 * 1024)}},
    ),
    "extra-field": ("JOB_ACCEPT", "adds a field to the envelope", lambda m: {**m, "pod": "me"}),
    "float-v": ("JOB_ACCEPT", 'writes "v": 1.0', lambda m: {**m, "v": 1.0}),
    "unknown-type": (
        "CONFIGURING_TASK",
        "writes CONFIGURING_TASK as CONFIGURING",
        lambda m: {**m, "type": "CONFIGURING"},
    ),
    "other-task": (
        "CONFIGURING_TASK",
        "writes CONFIGURING_TASK for another task",
        lambda m: {**m, "task_id": "another-task"},
    ),
    "int-task-id": (
        "CONFIGURING_TASK",
        "writes the task id as a number",
        lambda m: {**m, "task_id": 7},
    ),
    "string-seq": (
        "CONFIGURING_TASK",
        "writes seq as a string",
        lambda m: {**m, "seq": str(m["seq"])},
    ),
    "no-body": (
        "CONFIGURING_TASK",
        "leaves the body out of a message without one",
        lambda m: {k: v for k, v in m.items() if k != "body"},
    ),
    "null-meta": ("CONFIGURING_TASK", 'writes "meta": null', lambda m: {**m, "meta": None}),
    "negative-algorithm-index": (
        "EVALUATION_RESULTS",
        "writes meta.algorithm_index -1",
        lambda m: {**m, "meta": {**m["meta"], "algorithm_index": -1}},
    ),
    "wrong-recipient": (
        "CONFIGURING_TASK",
        "sends CONFIGURING_TASK to someone other than the modeller",
        lambda m: {**m, "recipient": "somebody-else"},
    ),
    "accept-names-other": (
        "JOB_ACCEPT",
        "names another pod in its JOB_ACCEPT",
        lambda m: {**m, "body": {"ACCEPT": "another/pod"}},
    ),
    "unknown-reject-reason": (
        "JOB_REJECT",
        "rejects with a reason the spec does not know",
        lambda m: {**m, "body": {"BAD_JOB": next(iter(m["body"].values()))}},
    ),
    "body-on-marker": (
        "CONFIGURING_TASK",
        "gives CONFIGURING_TASK a body",
        lambda m: {**m, "body": {}},
    ),
    "zero-batches": ("NUMBER_OF_BATCHES", "sends NUMBER_OF_BATCHES 0", lambda m: {**m, "body": 0}),
    "negative-batch-id": (
        "CURRENT_BATCH_ID",
        "sends CURRENT_BATCH_ID -1",
        lambda m: {**m, "body": -1},
    ),
    "unknown-batches-complete": (
        "BATCHES_COMPLETE",
        'sends BATCHES_COMPLETE "DONE"',
        lambda m: {**m, "body": "DONE"},
    ),
    "unknown-abort-reason": (
        "TASK_ABORT",
        "aborts with a reason the spec does not know",
        lambda m: {**m, "body": {**m["body"], "reason": "NO_ITEMS"}},
    ),
    "int-online-check": (
        "ONLINE_CHECK",
        "sends a number as ONLINE_CHECK's token",
        lambda m: {**m, "body": 7},
    ),
    "bad-log-message": (
        "LOG_MESSAGE",
        "sends a LOG_MESSAGE with a numeric level",
        lambda m: {**m, "body": {"level": 20, "message": "hello"}},
    ),
}

BUGS = {
    "one-based-batches": "numbers batches from 1, like the docs page does",
    "skip-batches-only": "never sends BATCHES_COMPLETE BATCHES_ONLY",
    "duplicate-results": "sends the results of every batch twice",
    "lose-item": "drops the last item from the results of a batch of several",
    "ignore-cancel": "carries on after TASK_CANCEL",
    "silent": "says nothing more once the modeller's TASK_START arrives",
    "limit-off-by-one": "stops at total_usage > limit instead of >=",
    "no-online-check": "never sends ONLINE_CHECK while it waits",
    "wrong-seq": "skips a seq number after its TASK_START",
    "no-batch-number": "leaves meta.batch_number out of EVALUATION_RESULTS",
    "accept-bad-batch-size": "accepts a batch_size below 1 (and uses 1)",
    "send-after-end": "sends its last results again after TASK_COMPLETE",
    "crash-on-retry": "raises an exception when it retries an item",
    "retry-with-batch-number": "puts the last batch id on retried results",
    "no-abort-on-eof": "exits quietly when its input ends mid-task",
    "linger": "does not exit when its input ends",
    "always-streams": "streams batches even when batched_execution is false",
    # One bug for each rule of the rule book (docs/conformance.md) a worker can break;
    # tests/test_examples.py names the rule the kit must cite for each.
    "double-accept": "answers the JOB_REQUEST twice",
    "configure-first": "sends CONFIGURING_TASK before PREPARING_DATA",
    "no-setup-wait": "does not wait for ALGORITHM_EXCHANGE before its batches",
    "no-start-wait": "does not wait for the modeller's TASK_START",
    "estimate-twice": "sends its estimate NUMBER_OF_BATCHES twice",
    "abort-instead-of-reject": "answers an invalid job with TASK_ABORT instead of JOB_REJECT",
    "abort-as-cancelled": "aborts with CANCELLED_BY_MODELLER though nobody cancelled",
    "log-before-answer": "sends a LOG_MESSAGE before its JOB_ACCEPT",
    "ignore-start-timeout": "waits for the modeller's TASK_START forever",
    "soft-start-wait": "waits for TASK_START with its soft and hard timeouts",
    "reject-valid": "rejects every job",
    "run-without-items": "runs a job without items instead of aborting with NO_DATA",
    "reverse-items": "sends a batch's results in reverse order",
    "retry-fail-alone": "lets items of fail_alone succeed on their retry",
    "retry-single-run": "drops failing items of a non-batched run instead of aborting",
    "no-failure-limit": "never gives up after consecutive failed batches",
    "ignore-test-run": "runs every item of a test run",
    "abort-at-end": "ends a job that completes with TASK_ABORT(WORKER_ERROR)",
    **{bug: what for bug, (_, what, _) in SPOILED.items()},
}

ECHO = "conformance.Echo"
FAILURE_LIMIT = 5


class EndOfInput(Exception):
    """The modeller closed our stdin."""


class Abort(Exception):
    """End the task with TASK_ABORT."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def log(text: str) -> None:
    print(f"plain_worker: {text}", file=sys.stderr, flush=True)


class Worker:
    def __init__(self, bug: str | None) -> None:
        self.bug = bug
        self.pending = b""
        self.eof = False
        self.seq = 0
        self.me = ""
        self.modeller = ""
        self.task_id = ""
        self.soft = 180.0
        self.hard = 180.0
        self.start_wait = 1170.0
        self.checks = 0
        self.spoiled = False

    # ------------------------------------------------------------ input

    def read(self, timeout: float | None) -> Message | None:
        """The next message, or None after ``timeout`` seconds of nothing."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.pending:
            if self.eof:
                raise EndOfInput
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([sys.stdin.fileno()], [], [], left)
            if not ready:
                return None
            chunk = os.read(sys.stdin.fileno(), 65536)
            if not chunk:
                self.eof = True
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        try:
            message = json.loads(line)
        except ValueError:
            raise Abort("PROTOCOL_ERROR", "unreadable line from the modeller") from None
        if not isinstance(message, dict):
            raise Abort("PROTOCOL_ERROR", "a line that is not a JSON object")
        if self.task_id and message.get("task_id") != self.task_id:
            raise Abort("PROTOCOL_ERROR", "a message that is not for this task")
        return message

    def wait_for(self, wanted: str, *, start: bool = False) -> Message:
        """Wait for one message type, answering the modeller's silence with ONLINE_CHECK."""
        if self.bug == "soft-start-wait":
            start = False
        quiet = self.start_wait if start else self.soft
        checking = False
        while True:
            message = self.read(quiet)
            if message is None:
                if start or checking:
                    raise Abort("MODELLER_TIMEOUT", f"no {wanted} from the modeller")
                if self.bug == "no-online-check":
                    continue
                self.checks += 1
                self.send("ONLINE_CHECK", f"{self.me}-{self.checks}")
                checking, quiet = True, self.hard
                continue
            kind = message.get("type")
            if kind == wanted:
                return message
            if kind == "TASK_CANCEL" and self.bug != "ignore-cancel":
                raise Abort("CANCELLED_BY_MODELLER", "the modeller cancelled the task")
            if kind in ("ONLINE_RESPONSE", "LOG_MESSAGE", "TASK_CANCEL"):
                if not start:
                    checking, quiet = False, self.soft
                continue
            raise Abort("PROTOCOL_ERROR", f"unexpected {kind} while waiting for {wanted}")

    def poll(self) -> None:
        """Between batches: act on a cancel, ignore anything harmless."""
        while True:
            message = self.read(0)
            if message is None:
                return
            kind = message.get("type")
            if kind == "TASK_CANCEL" and self.bug != "ignore-cancel":
                raise Abort("CANCELLED_BY_MODELLER", "the modeller cancelled the task")
            if kind not in ("ONLINE_RESPONSE", "LOG_MESSAGE", "TASK_CANCEL"):
                raise Abort("PROTOCOL_ERROR", f"unexpected {kind} during the batches")

    # ----------------------------------------------------------- output

    def send(self, kind: str, body: object = None, meta: Message | None = None) -> None:
        message = {
            "v": 1,
            "type": kind,
            "task_id": self.task_id,
            "sender": self.me,
            "recipient": self.modeller,
            "seq": self.seq,
            "body": body,
            "meta": meta or {},
        }
        line: Message | str = message
        if self.bug in SPOILED and SPOILED[self.bug][0] == kind and not self.spoiled:
            self.spoiled = True
            line = SPOILED[self.bug][2](message)
        sys.stdout.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
        sys.stdout.flush()
        self.seq += 1

    def results(self, items: list[str], batch: int | None) -> None:
        meta: Message = {"batch_number": batch}
        if self.bug == "no-batch-number":
            meta = {}
        self.send("EVALUATION_RESULTS", {"items": items}, meta)
        if self.bug == "duplicate-results" and batch is not None:
            self.send("EVALUATION_RESULTS", {"items": items}, meta)

    # -------------------------------------------------------------- job

    def serve(self) -> int:
        try:
            first = self.read(None)
        except (EndOfInput, Abort):
            return 2
        if not valid_job_request(first):
            log("the first line is not a JOB_REQUEST; nothing to answer")
            return 2
        assert first is not None
        self.me, self.modeller = first["recipient"], first["sender"]
        self.task_id = first["task_id"]
        job = first["body"]
        problems = self.configure(job)
        if self.bug == "log-before-answer":
            self.send("LOG_MESSAGE", {"level": "INFO", "message": "plain_worker is thinking"})
        if self.bug == "reject-valid" and not problems:
            problems = ["this worker runs no jobs"]
        if problems and self.bug == "abort-instead-of-reject":
            self.send(
                "TASK_ABORT",
                {
                    "message": "; ".join(problems),
                    "reason": "WORKER_ERROR",
                    "exception_type": None,
                    "traceback_summary": None,
                },
                {"reason": "WORKER_ERROR"},
            )
            return 0
        if problems:
            self.send("JOB_REJECT", {"TASK_SETUP_ERROR": problems})
            return 0
        self.send("JOB_ACCEPT", {"ACCEPT": self.me})
        if self.bug == "double-accept":
            self.send("JOB_ACCEPT", {"ACCEPT": self.me})
        self.send("LOG_MESSAGE", {"level": "INFO", "message": "plain_worker accepted the job"})
        try:
            self.run(job)
        except Abort as abort:
            if abort.reason == "MODELLER_TIMEOUT" and self.bug == "no-abort-on-eof":
                return 0
            self.send(
                "TASK_ABORT",
                {
                    "message": str(abort),
                    "reason": abort.reason,
                    "exception_type": None,
                    "traceback_summary": None,
                },
                {"reason": abort.reason},
            )
        except EndOfInput:
            if self.bug != "no-abort-on-eof":
                self.send(
                    "TASK_ABORT",
                    {
                        "message": "the modeller's stream ended",
                        "reason": "MODELLER_TIMEOUT",
                        "exception_type": None,
                        "traceback_summary": None,
                    },
                    {"reason": "MODELLER_TIMEOUT"},
                )
        return 0

    def configure(self, job: Message) -> list[str]:
        options = job.get("options") or {}
        self.start_wait = float(options.get("task_start_timeout_s", 1170))
        if self.bug == "ignore-start-timeout":
            self.start_wait = 1e6  # about 11 days
        self.soft = float(options.get("soft_timeout_s", 180))
        self.hard = float(options.get("hard_timeout_s", 180))
        protocol = job.get("protocol") or {}
        if protocol.get("class_name") != ECHO:
            return [f"unknown protocol {protocol.get('class_name')!r}"]
        allowed = {
            "class_name",
            "items",
            "batch_size",
            "fail_in_batch",
            "fail_alone",
            "inference_limit",
            "initial_setup",
        }
        extra = sorted(set(protocol) - allowed)
        if extra:
            return [f"unknown fields {extra}"]
        items = protocol.get("items", [])
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            return ["items must be a list of strings"]
        if len(set(items)) != len(items):
            return ["duplicate item names"]
        size = protocol.get("batch_size", 1)
        if not isinstance(size, int) or isinstance(size, bool):
            return ["batch_size must be an int"]
        if size < 1 and self.bug != "accept-bad-batch-size":
            return [f"batch_size must be at least 1, found {size}"]
        return []

    def run(self, job: Message) -> None:
        protocol = job["protocol"]
        items = list(protocol.get("items", []))
        if job.get("test_run") and self.bug != "ignore-test-run":
            items = items[:1]
        size = max(1, protocol.get("batch_size", 1))
        fail_in_batch = set(protocol.get("fail_in_batch", []))
        fail_alone = set(protocol.get("fail_alone", []))
        limit = protocol.get("inference_limit")
        usage = limit["total_usage"] if limit else 0

        if self.bug == "configure-first":
            self.send("CONFIGURING_TASK")
        if items:  # nothing to load otherwise; the marker is optional
            self.send("PREPARING_DATA")
        if self.bug != "configure-first":
            self.send("CONFIGURING_TASK")
        if not items:
            if self.bug == "abort-as-cancelled":
                raise Abort("CANCELLED_BY_MODELLER", "there are no items to run")
            if self.bug != "run-without-items":
                raise Abort("NO_DATA", "there are no items to run")
        if protocol.get("initial_setup") and self.bug != "no-setup-wait":
            self.wait_for("ALGORITHM_EXCHANGE")

        def charge(run: list[str]) -> tuple[list[str], bool]:
            nonlocal usage
            usage += len(run)
            if limit is None:
                return run, False
            over = (
                usage > limit["limit"]
                if self.bug == "limit-off-by-one"
                else (usage >= limit["limit"])
            )
            if not over:
                return run, False
            allowed = max(0, len(run) - (usage - limit["limit"]))
            return run[:allowed], True

        streaming = job.get("batched_execution") or self.bug == "always-streams"
        if not streaming:
            self.send("NUMBER_OF_BATCHES", 1)
            self.send("TASK_START")
            self.wait_for("TASK_START", start=True)
            if self.bug == "retry-single-run":
                items = [i for i in items if i not in fail_in_batch and i not in fail_alone]
            if any(item in fail_in_batch or item in fail_alone for item in items):
                raise Abort("WORKER_ERROR", "an item failed")
            kept, over = charge(items)
            self.results(kept, None)
            if over:
                raise Abort("LIMITS_EXCEEDED", "the inference limit was reached")
            self.finish()
            return

        batches = [items[i : i + size] for i in range(0, len(items), size)]
        first_id = 1 if self.bug == "one-based-batches" else 0
        if len(batches) > 1:  # one batch needs no preparing; the marker is optional
            self.send("PREPARING_DATA_BATCHES")
        self.send("NUMBER_OF_BATCHES", -1)
        self.send("CURRENT_BATCH_ID", first_id)
        self.send("NUMBER_OF_BATCHES", len(batches))
        if self.bug == "estimate-twice":
            self.send("NUMBER_OF_BATCHES", len(batches))
        self.send("TASK_START")
        if self.bug == "wrong-seq":
            self.seq += 1
        if self.bug != "no-start-wait":
            self.wait_for("TASK_START", start=True)
        if self.bug == "silent":
            while True:  # never speaks again, but leaves when its input ends
                self.read(None)

        retry: list[str] = []
        failures = succeeded = 0
        for number, batch in enumerate(batches):
            batch_id = number + first_id
            if number:
                self.poll()
                self.send("CURRENT_BATCH_ID", batch_id)
            if any(item in fail_in_batch or item in fail_alone for item in batch):
                failures += 1
                retry += batch
                if failures >= FAILURE_LIMIT and self.bug != "no-failure-limit":
                    raise Abort("WORKER_ERROR", f"{FAILURE_LIMIT} consecutive batches failed")
                continue
            failures = 0
            succeeded += 1
            kept, over = charge(batch)
            if self.bug == "lose-item" and len(kept) > 1:
                kept = kept[:-1]
            if self.bug == "reverse-items":
                kept = kept[::-1]
            self.results(kept, batch_id)
            if over:
                raise Abort("LIMITS_EXCEEDED", "the inference limit was reached")
        self.poll()
        if self.bug != "skip-batches-only":
            self.send("BATCHES_COMPLETE", "BATCHES_ONLY")
        for item in retry:
            if self.bug == "crash-on-retry":
                raise RuntimeError(f"cannot retry {item}")
            if item in fail_alone and self.bug != "retry-fail-alone":
                continue
            succeeded += 1
            kept, over = charge([item])
            last = len(batches) - 1 + first_id
            self.results(kept, last if self.bug == "retry-with-batch-number" else None)
            if over:
                raise Abort("LIMITS_EXCEEDED", "the inference limit was reached")
        if not succeeded:
            raise Abort("WORKER_ERROR", "no batch and no retry succeeded")
        self.finish()

    def finish(self) -> None:
        if self.bug == "abort-at-end":
            raise Abort("WORKER_ERROR", "plain_worker gives up at the end")
        self.send("BATCHES_COMPLETE", "TASK_COMPLETE")
        self.wait_for("TASK_COMPLETE")
        if self.bug == "send-after-end":
            self.send("EVALUATION_RESULTS", {"items": []}, {"batch_number": None})


def valid_job_request(message: object) -> bool:
    if not isinstance(message, dict) or message.get("type") != "JOB_REQUEST":
        return False
    fields = ("task_id", "sender", "recipient")
    if not all(isinstance(message.get(f), str) for f in fields):
        return False
    body = message.get("body")
    return isinstance(body, dict) and isinstance(body.get("protocol"), dict)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bug", choices=sorted(BUGS), help="deviate from the spec on purpose")
    args = parser.parse_args()
    status = Worker(args.bug).serve()
    if args.bug == "linger":
        while True:
            time.sleep(1)
    return status


if __name__ == "__main__":
    sys.exit(main())
