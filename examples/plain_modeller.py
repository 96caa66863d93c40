#!/usr/bin/env python3
"""A modeller written from the wire spec alone, without fsm_protocol.

It runs the one task a CONFORMANCE_SCENARIO line describes (spec section 6):
every pod's messages come in on stdin and go out on stdout, one JSON object
per line. Test it with the conformance kit:

    fsm-protocol conform --role modeller -- python examples/plain_modeller.py

``--bug NAME`` makes it deviate from the spec in one way (see BUGS).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

Message = dict[str, Any]  # one decoded JSON line
Lines = queue.Queue[bytes | None]  # stdin's lines, None at its end

# bug -> (the type of the one message it spoils, what it does, the spoiled message or line)
SPOILED: dict[str, tuple[str, str, Callable[[Message], Message | str]]] = {
    "not-json": ("TASK_START", "writes TASK_START as a bare word", lambda m: m["type"]),
    "huge-line": (
        "LOG_MESSAGE",
        "writes a LOG_MESSAGE longer than 16 MiB",
        lambda m: {**m, "body": {"level": "INFO", "message": "x" * (16 * 1024 * 1024)}},
    ),
    "extra-field": ("TASK_START", "adds a field to the envelope", lambda m: {**m, "pod": "you"}),
    "float-v": ("TASK_START", 'writes "v": 1.0', lambda m: {**m, "v": 1.0}),
    "unknown-type": ("TASK_START", "writes TASK_START as START", lambda m: {**m, "type": "START"}),
    "int-task-id": ("TASK_START", "writes the task id as a number", lambda m: {**m, "task_id": 7}),
    "string-seq": ("TASK_START", "writes seq as a string", lambda m: {**m, "seq": str(m["seq"])}),
    "no-body": (
        "TASK_START",
        "leaves the body out of a message without one",
        lambda m: {k: v for k, v in m.items() if k != "body"},
    ),
    "null-meta": ("TASK_START", 'writes "meta": null', lambda m: {**m, "meta": None}),
    "negative-algorithm-index": (
        "TASK_START",
        "writes meta.algorithm_index -1",
        lambda m: {**m, "meta": {"algorithm_index": -1}},
    ),
    "body-on-marker": ("TASK_START", "gives TASK_START a body", lambda m: {**m, "body": {}}),
}

BUGS = {
    "no-barrier": "sends TASK_START to each pod as soon as that pod is ready",
    "early-complete": "sends TASK_COMPLETE to each pod as soon as that pod is done",
    "no-cancel-on-abort": "lets the other pods run on after one aborts",
    "ignore-late-accept": "takes a JOB_ACCEPT after the response timeout like any other",
    "lose-quick-start": "records accepts lazily and drops a TASK_START that comes too soon",
    "no-online-response": "never answers ONLINE_CHECK",
    "wrong-seq": "counts seq per pod instead of per task",
    "no-setup": "never sends ALGORITHM_EXCHANGE",
    "hang-at-end": "does not exit when the task is over",
    # One bug for each rule of the rule book (docs/conformance.md) a modeller can break;
    # tests/test_examples.py names the rule the kit must cite for each.
    "send-worker-type": "sends a pod NUMBER_OF_BATCHES, a worker's message",
    "bad-job-request": 'writes "batched_execution": "yes" in its JOB_REQUEST',
    "string-setup": "sends a string as ALGORITHM_EXCHANGE's body",
    "wrong-token": "answers ONLINE_CHECK with another token",
    "bad-log-message": "sends a LOG_MESSAGE with a numeric level",
    "request-twice": "sends each pod its JOB_REQUEST twice",
    "start-twice": "sends each pod TASK_START twice",
    "cancel-twice": "sends each cancelled pod TASK_CANCEL twice",
    "no-response-timeout": "waits for every pod's answer forever",
    "short-response-wait": "waits a tenth of a second for the pods' answers",
    "ignore-require-all": "runs the task though require_all_pods and a pod rejected",
    "say-nothing": "reads the scenario and exits without a word",
    "ignore-overrides": "sends every pod the same job, without its job_overrides",
    "require-overrides": "fails on a scenario line without job_overrides",
    "log-before-answer": "sends a LOG_MESSAGE to a pod that has not answered yet",
    "log-after-end": "sends a LOG_MESSAGE after TASK_COMPLETE",
    **{bug: what for bug, (_, what, _) in SPOILED.items()},
}

CANCEL_WAIT = 5.0  # how long a cancelled pod has to confirm with TASK_ABORT
RECORD_EVERY = 0.5  # lose-quick-start: how long an accept waits to be recorded


class Pod:
    def __init__(self, name: str, protocol: Message) -> None:
        self.name = name
        self.protocol = protocol
        self.state = "requested"  # requested, left_out, accepted, ended
        self.accepted = False
        self.late = False
        self.cancelled_at: float | None = None
        self.ready = False
        self.started = False
        self.done = False
        self.results: list[object] = []

    @property
    def running(self) -> bool:
        return self.state == "accepted"

    @property
    def counted(self) -> bool:
        return self.accepted and not self.late and self.cancelled_at is None


class Modeller:
    def __init__(self, bug: str | None) -> None:
        self.bug = bug
        self.task_id = ""
        self.me = "modeller"
        self.seq = 0
        self.pod_seq: dict[str, int] = {}
        self.pods: dict[str, Pod] = {}
        self.own_abort = False
        self.require_all = False
        self.pending_accepts: dict[str, float] = {}
        self.spoiled = False

    def send(self, pod: str, kind: str, body: object = None) -> None:
        if self.bug == "wrong-seq":
            seq = self.pod_seq.get(pod, 0)
            self.pod_seq[pod] = seq + 1
        else:
            seq, self.seq = self.seq, self.seq + 1
        message = {
            "v": 1,
            "type": kind,
            "task_id": self.task_id,
            "sender": self.me,
            "recipient": pod,
            "seq": seq,
            "body": body,
            "meta": {},
        }
        line: Message | str = message
        if self.bug in SPOILED and SPOILED[self.bug][0] == kind and not self.spoiled:
            self.spoiled = True
            line = SPOILED[self.bug][2](message)
        sys.stdout.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
        sys.stdout.flush()

    def cancel(self, pod: Pod) -> None:
        if pod.running and pod.cancelled_at is None:
            pod.cancelled_at = time.monotonic()
            self.send(pod.name, "TASK_CANCEL")
            if self.bug == "cancel-twice":
                self.send(pod.name, "TASK_CANCEL")

    def cancel_others(self, but: Pod | None = None) -> None:
        for pod in self.pods.values():
            if pod is not but:
                if pod.state == "requested":
                    pod.state = "left_out"
                self.cancel(pod)

    # --------------------------------------------------------------- rules

    def answers_in(self) -> bool:
        return all(pod.state != "requested" for pod in self.pods.values())

    def check_progress(self) -> None:
        counted = [pod for pod in self.pods.values() if pod.counted]
        if self.bug == "no-barrier":
            ready = [pod for pod in counted if pod.ready and not pod.started]
        elif self.answers_in() and counted and all(pod.ready for pod in counted):
            ready = [pod for pod in counted if not pod.started]
        else:
            ready = []
        for pod in ready:
            if pod.running:
                pod.started = True
                self.send(pod.name, "TASK_START")
                if self.bug == "start-twice":
                    self.send(pod.name, "TASK_START")
        if self.own_abort:
            return
        if self.bug == "early-complete":
            finished = [pod for pod in counted if pod.done and pod.running]
        elif self.answers_in() and counted and all(pod.done for pod in counted):
            finished = [pod for pod in counted if pod.running]
        else:
            finished = []
        for pod in finished:
            self.send(pod.name, "TASK_COMPLETE")
            pod.state = "ended"
            if self.bug == "log-after-end":
                self.send(pod.name, "LOG_MESSAGE", {"level": "INFO", "message": "goodbye"})

    def over(self) -> bool:
        return all(pod.state in ("ended", "left_out") for pod in self.pods.values())

    # ------------------------------------------------------------- messages

    def on_message(self, message: Message) -> None:
        pod = self.pods.get(message.get("sender", ""))
        if pod is None or pod.state == "ended":
            return  # nothing is owed to a pod that has ended
        kind = message.get("type")
        if kind == "JOB_ACCEPT":
            if pod.state == "left_out" and self.bug != "ignore-late-accept":
                pod.state, pod.accepted, pod.late = "accepted", True, True
                if any(other.running for other in self.pods.values() if other is not pod):
                    self.cancel(pod)
                else:
                    pod.state = "ended"
                return
            pod.state, pod.accepted = "accepted", True
            if self.bug == "lose-quick-start":
                self.pending_accepts[pod.name] = time.monotonic()
            if pod.protocol.get("initial_setup") and self.bug != "no-setup":
                setup = "echo" if self.bug == "string-setup" else {"echo": True}
                self.send(pod.name, "ALGORITHM_EXCHANGE", setup)
            level = 20 if self.bug == "bad-log-message" else "INFO"
            self.send(pod.name, "LOG_MESSAGE", {"level": level, "message": "welcome"})
            if self.bug == "send-worker-type":
                self.send(pod.name, "NUMBER_OF_BATCHES", 1)
        elif kind == "JOB_REJECT":
            pod.state = "ended"
            if self.require_all and self.bug != "ignore-require-all":
                self.cancel_others(but=pod)
        elif kind == "TASK_START":
            if pod.name in self.pending_accepts:
                return  # the accept is not recorded yet: this TASK_START is lost
            pod.ready = True
        elif kind == "EVALUATION_RESULTS":
            pod.results.append(message.get("body"))
        elif kind == "BATCHES_COMPLETE" and message.get("body") == "TASK_COMPLETE":
            pod.done = True
        elif kind == "ONLINE_CHECK":
            if self.bug != "no-online-response":
                token = message.get("body")
                if self.bug == "wrong-token":
                    token = f"{token}-not"
                self.send(pod.name, "ONLINE_RESPONSE", token)
        elif kind == "TASK_ABORT":
            was_cancelled = pod.cancelled_at is not None
            pod.state = "ended"
            if not was_cancelled:
                self.own_abort = True
                if self.bug != "no-cancel-on-abort":
                    self.cancel_others(but=pod)
        self.check_progress()

    # ------------------------------------------------------------------ run

    def run(self, lines: Lines) -> None:
        first = lines.get()
        if first is None:
            raise SystemExit("plain_modeller: no CONFORMANCE_SCENARIO line")
        scenario = json.loads(first)
        self.task_id = scenario["task_id"]
        body = scenario["body"]
        job = body["job"]
        if self.bug == "require-overrides":
            overrides = dict(body["job_overrides"])  # KeyError: the field is optional
        else:
            overrides = body.get("job_overrides") or {}
        if self.bug == "ignore-overrides":
            overrides = {}
        if self.bug == "say-nothing":
            return
        self.require_all = bool(body.get("require_all_pods"))
        answer_by = time.monotonic() + float(body["response_timeout_s"])
        if self.bug == "no-response-timeout":
            answer_by = float("inf")
        if self.bug == "short-response-wait":
            answer_by = time.monotonic() + 0.1
        for name in body["pods"]:
            protocol = {**job["protocol"], **overrides.get(name, {})}
            self.pods[name] = Pod(name, protocol)
            request = {**job, "protocol": protocol}
            if self.bug == "bad-job-request":
                request["batched_execution"] = "yes"
            self.send(name, "JOB_REQUEST", request)
            if self.bug == "request-twice":
                self.send(name, "JOB_REQUEST", request)
            if self.bug == "log-before-answer":
                self.send(name, "LOG_MESSAGE", {"level": "INFO", "message": "hello"})
        while not self.over():
            now = time.monotonic()
            if now >= answer_by and not self.answers_in():
                for pod in self.pods.values():
                    if pod.state == "requested":
                        pod.state = "left_out"
                if self.require_all:
                    self.cancel_others()
                self.check_progress()
            for pod in self.pods.values():
                if pod.cancelled_at is not None and now - pod.cancelled_at > CANCEL_WAIT:
                    pod.state = "ended"  # it never confirmed; stop waiting for it
            for name, since in list(self.pending_accepts.items()):
                if now - since >= RECORD_EVERY:  # each accept is recorded this long after it
                    del self.pending_accepts[name]
            wait = 0.05 if self.answers_in() else max(0.0, min(0.05, answer_by - now))
            try:
                line = lines.get(timeout=wait)
            except queue.Empty:
                continue
            if line is None:
                break  # our input ended: the pods are gone
            try:
                message = json.loads(line)
            except ValueError:
                # A line that belongs to nobody: cancel everyone, the task has failed.
                self.cancel_others()
                continue
            if isinstance(message, dict) and message.get("task_id") == self.task_id:
                self.on_message(message)
        outcome = {name: pod.state for name, pod in self.pods.items()}
        print(f"plain_modeller: task over: {outcome}", file=sys.stderr)


def read_lines(lines: Lines) -> None:
    # os.read, not sys.stdin: a daemon thread blocked in a buffered reader can abort
    # the interpreter at exit.
    pending = b""
    while chunk := os.read(sys.stdin.fileno(), 65536):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            lines.put(line)
    if pending:
        lines.put(pending)
    lines.put(None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bug", choices=sorted(BUGS), help="deviate from the spec on purpose")
    args = parser.parse_args()
    lines: Lines = queue.Queue()
    threading.Thread(target=read_lines, args=(lines,), daemon=True).start()
    Modeller(args.bug).run(lines)
    if args.bug == "hang-at-end":
        while True:
            time.sleep(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
