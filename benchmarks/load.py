"""Load test: many worker processes against one modeller, on 127.0.0.1 only.

Not a test: run it by hand and read the report. From the repository root::

    python benchmarks/load.py                   # 200 workers x 20 batches, then 10% killed
    python benchmarks/load.py --workers 20      # a quick look

Phase 1 ("complete"): every worker runs the conformance Echo algorithm for
``--batches`` batches over TLS, with signed job requests. All must complete
and every result must be in the outcome and in the results folder.

Phase 2 ("kill"): the same with a slow Echo (a pause per batch, so that the
workers are mid-task and mostly idle). Once a quarter of the results are in,
``--kill-fraction`` of the workers, chosen among those at most half done, are
frozen (SIGSTOP) and then killed (SIGKILL). The outcome must name exactly those
workers as lost, and every result received from them must be kept, in the
outcome and in the results folder.

Everything is bounded: each phase is killed after ``--timeout`` seconds. The
report goes to stdout and to ``<out>/report.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from fsm_protocol import BatchInfo, Item, ListDatasource, ProtocolFactory, WorkerContext, WorkerPlan

HERE = Path(__file__).resolve().parent
LOCAL = "127.0.0.1"


# --------------------------------------------- the slow algorithm (phase 2)


@attrs.frozen
class SlowEcho:
    """Echo with a pause in every batch, so workers are mid-task when killed."""

    items: tuple[str, ...] = ()
    batch_size: int = 1
    delay_s: float = 0.1


@attrs.frozen
class _SlowEchoWorker:
    config: SlowEcho

    async def run_batch(self, items: Sequence[Item], info: BatchInfo) -> list[str]:
        await trio.sleep(self.config.delay_s)
        return [item.name for item in items]

    def results_body(self, items: Sequence[Item], results: Sequence[Any]) -> Any:
        return {"items": [item.name for item in items]}


def _plan(config: SlowEcho, context: WorkerContext) -> WorkerPlan:
    return WorkerPlan(
        _SlowEchoWorker(config), ListDatasource.from_names(config.items).items(), config.batch_size
    )


SLOW_ECHO = ProtocolFactory("benchmarks.SlowEcho", SlowEcho, _plan)
"""Loaded by the workers with ``--algorithm load:SLOW_ECHO`` (this folder on PYTHONPATH)."""


# ----------------------------------------------------------------- running


def fsm(*args: str) -> list[str]:
    return [sys.executable, "-m", "fsm_protocol", *args]


def setup(folder: Path) -> None:
    """Certificates for 127.0.0.1 (trustme) and a signing key."""
    import trustme

    folder.mkdir(parents=True, exist_ok=True)
    authority = trustme.CA()
    server = authority.issue_cert(LOCAL)
    server.cert_chain_pems[0].write_to_path(str(folder / "server.pem"))
    server.private_key_pem.write_to_path(str(folder / "server.key"))
    authority.cert_pem.write_to_path(str(folder / "ca.pem"))
    subprocess.run(
        fsm("keys", "generate", "-o", str(folder), "--force"), check=True, capture_output=True
    )


@attrs.define
class Phase:
    name: str
    folder: Path
    pods: list[str]
    job: dict[str, Any]
    algorithm: list[str]
    timeout_s: float
    modeller: subprocess.Popen[bytes] | None = None
    workers: dict[str, subprocess.Popen[bytes]] = attrs.field(factory=dict)
    started: float = 0.0

    @property
    def task_id(self) -> str:
        return f"load-{self.name}"

    @property
    def results_path(self) -> Path:
        return self.folder / "results" / self.task_id

    def start(self, keys: Path) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        task = {"task_id": self.task_id, "pods": self.pods, "job": self.job}
        (self.folder / "task.json").write_text(json.dumps(task))
        port_file = self.folder / "port"
        port_file.unlink(missing_ok=True)
        env = {**os.environ, "PYTHONPATH": str(HERE)}
        self.started = time.monotonic()
        with (
            (self.folder / "modeller.out").open("wb") as out,
            (self.folder / "modeller.err").open("wb") as err,
        ):
            self.modeller = subprocess.Popen(
                fsm(
                    "modeller", "serve", "--listen", f"{LOCAL}:0", "--port-file", str(port_file),
                    "--task", str(self.folder / "task.json"),
                    "--tls-cert", str(keys / "server.pem"), "--tls-key", str(keys / "server.key"),
                    "--signing-key", str(keys / "modeller.key"),
                    "--results-dir", str(self.folder / "results"),
                    "--connect-timeout", str(self.timeout_s), "--json", "-q", *self.algorithm,
                ),
                stdout=out, stderr=err, env=env,
            )  # fmt: skip
        while not port_file.exists():
            if self.modeller.poll() is not None or time.monotonic() - self.started > 30:
                raise SystemExit(f"the modeller did not start: see {self.folder}/modeller.err")
            time.sleep(0.01)
        port = int(port_file.read_text())
        log = os.open(self.folder / "workers.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            for pod in self.pods:
                self.workers[pod] = subprocess.Popen(
                    fsm(
                        "worker", "--connect", f"{LOCAL}:{port}", "--pod-id", pod,
                        "--ca", str(keys / "ca.pem"), "--trust-key", str(keys / "modeller.pub"),
                        "--job-timeout", str(self.timeout_s), "-q", *self.algorithm,
                    ),
                    stdout=log, stderr=log, env=env,
                )  # fmt: skip
        finally:
            os.close(log)

    def wait(self) -> tuple[float, int, dict[str, int]]:
        """Wait for every process (bounded); returns wall time and exit codes."""
        assert self.modeller is not None
        deadline = self.started + self.timeout_s
        try:
            code = self.modeller.wait(timeout=max(0.0, deadline - time.monotonic()))
            codes = {
                pod: w.wait(timeout=max(1.0, deadline - time.monotonic()))
                for pod, w in self.workers.items()
            }
        except subprocess.TimeoutExpired:
            self.kill_all()
            raise SystemExit(f"phase {self.name}: timed out after {self.timeout_s} s") from None
        return time.monotonic() - self.started, code, codes

    def kill_all(self) -> None:
        for process in [self.modeller, *self.workers.values()]:
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()

    def results_lines(self) -> list[dict[str, Any]]:
        path = self.results_path / "results.ndjson"
        if not path.exists():
            return []
        lines = path.read_text().splitlines()
        # A line being written may be cut; only whole lines count.
        return [json.loads(line) for line in lines if line.endswith("}")]

    def outcome(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.results_path / "outcome.json").read_text())
        return data

    def trace_results(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        with (self.results_path / "trace.ndjson").open() as trace:
            for line in trace:
                message = json.loads(line)
                if message["type"] == "EVALUATION_RESULTS":
                    counts[message["sender"]] += 1
        return counts


def common_report(phase: Phase, wall_s: float, outcome: dict[str, Any]) -> dict[str, Any]:
    stats = outcome["stats"]
    return {
        "workers": len(phase.pods),
        "wall_s": round(wall_s, 2),
        "connect_s": stats["connect_s"],
        "task_s": stats["task_s"],
        "messages": stats["messages"],
        "messages_per_s": stats["messages_per_s"],
        "modeller_peak_rss_mib": round(stats["peak_rss_kib"] / 1024, 1),
        "modeller_cpu_s": stats["cpu_s"],
        "status": outcome["status"],
        "states": dict(Counter(w["state"] for w in outcome["workers"].values())),
        "results_in_outcome": len(outcome["results"]),
        "results_in_folder": len(phase.results_lines()),
    }


def run_complete(args: argparse.Namespace, keys: Path) -> dict[str, Any]:
    pods = [f"load/pod-{n:03d}" for n in range(args.workers)]
    items = [f"item-{n}" for n in range(args.batches * 2)]
    job = {
        "protocol": {"class_name": "conformance.Echo", "items": items, "batch_size": 2},
        "batched_execution": True,
    }
    phase = Phase("complete", args.out / "complete", pods, job, [], args.timeout)
    phase.start(keys)
    wall, code, codes = phase.wait()
    outcome = phase.outcome()
    report = common_report(phase, wall, outcome)
    expected = args.workers * args.batches
    per_worker = Counter(r["worker"] for r in outcome["results"])
    problems = []
    if code != 0 or outcome["status"] != "complete":
        problems.append(f"modeller exit {code}, status {outcome['status']}")
    if any(c != 0 for c in codes.values()):
        problems.append(f"worker exit codes {dict(Counter(codes.values()))}")
    if report["results_in_outcome"] != expected or report["results_in_folder"] != expected:
        problems.append(f"expected {expected} results")
    if any(per_worker[pod] != args.batches for pod in pods):
        problems.append("some worker has not exactly one result per batch")
    report["expected_results"] = expected
    report["ok"] = not problems
    report["problems"] = problems
    return report


def run_kill(args: argparse.Namespace, keys: Path) -> dict[str, Any]:
    pods = [f"load/pod-{n:03d}" for n in range(args.workers)]
    items = [f"item-{n}" for n in range(args.batches)]
    job = {
        "protocol": {"class_name": "benchmarks.SlowEcho", "items": items, "batch_size": 1,
                     "delay_s": args.delay},
        "batched_execution": True,
    }  # fmt: skip
    phase = Phase(
        "kill", args.out / "kill", pods, job, ["--algorithm", "load:SLOW_ECHO"], args.timeout
    )
    phase.start(keys)
    expected = args.workers * args.batches
    trigger = expected // 4
    while True:
        lines = phase.results_lines()
        if len(lines) >= trigger:
            break
        if phase.modeller is not None and phase.modeller.poll() is not None:
            raise SystemExit("the modeller ended before the kill; see the kill folder")
        if time.monotonic() - phase.started > args.timeout:
            phase.kill_all()
            raise SystemExit("timed out waiting for results before the kill")
        time.sleep(0.02)
    delivered = Counter(line["worker"] for line in lines)
    # Far from done: the modeller may lag behind what workers already sent.
    running = [pod for pod in pods if 0 < delivered[pod] <= args.batches // 2]
    count = max(1, round(args.workers * args.kill_fraction))
    victims = sorted(random.Random(args.seed).sample(running, min(count, len(running))))
    for pod in victims:  # freeze first, so none of them can answer a cancel meanwhile
        phase.workers[pod].send_signal(signal.SIGSTOP)
    for pod in victims:
        phase.workers[pod].send_signal(signal.SIGKILL)
    killed_at = time.monotonic() - phase.started
    wall, code, codes = phase.wait()
    outcome = phase.outcome()
    report = common_report(phase, wall, outcome)
    workers = outcome["workers"]
    lost = sorted(pod for pod, w in workers.items() if w["state"] == "lost")
    in_outcome = Counter(r["worker"] for r in outcome["results"])
    in_folder = Counter(r["worker"] for r in phase.results_lines())
    in_trace = phase.trace_results()
    problems = []
    if lost != victims:
        problems.append(f"lost workers {lost} are not the killed ones {victims}")
    for pod in pods:
        if not in_outcome[pod] == in_folder[pod] == in_trace[pod]:
            problems.append(
                f"{pod}: {in_trace[pod]} results received, {in_outcome[pod]} in the outcome, "
                f"{in_folder[pod]} in the folder"
            )
    for pod in victims:
        batches = sorted(r["batch"] for r in outcome["results"] if r["worker"] == pod)
        if batches != list(range(len(batches))):
            problems.append(f"{pod}: results are not batches 0..n-1: {batches}")
    others = Counter(
        w["abort_reason"] or w["state"] for pod, w in workers.items() if pod not in victims
    )
    report.update(
        killed=victims,
        killed_at_s=round(killed_at, 2),
        results_before_kill=len(lines),
        lost=lost,
        results_kept_from_killed={pod: in_outcome[pod] for pod in victims},
        results_kept_from_killed_total=sum(in_outcome[pod] for pod in victims),
        others_ended=dict(others),
        modeller_exit=code,
        worker_exits=dict(Counter(c for pod, c in codes.items() if pod not in victims)),
        ok=not problems,
        problems=problems,
    )
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=200)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--kill-fraction", type=float, default=0.1)
    parser.add_argument("--delay", type=float, default=1.0, help="seconds per batch in phase 2")
    parser.add_argument("--timeout", type=float, default=600.0, help="bound on each phase (s)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--phase", choices=["complete", "kill", "both"], default="both")
    parser.add_argument("--out", type=Path, default=Path("load-results"))
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    keys = args.out / "keys"
    setup(keys)
    report: dict[str, Any] = {"command": " ".join(sys.argv), "cpus": os.cpu_count()}
    if args.phase in ("complete", "both"):
        report["complete"] = run_complete(args, keys)
        print(json.dumps({"complete": report["complete"]}, indent=2), flush=True)
    if args.phase in ("kill", "both"):
        report["kill"] = run_kill(args, keys)
        print(json.dumps({"kill": report["kill"]}, indent=2), flush=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    ok = all(report[p]["ok"] for p in ("complete", "kill") if p in report)
    print(f"report written to {args.out / 'report.json'}; {'OK' if ok else 'PROBLEMS'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
