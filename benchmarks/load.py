"""Load test: 1,000 pods in a few worker processes against one modeller, on 127.0.0.1.

Run it from the repository root::

    python benchmarks/load.py                       # 1,000 pods × 20 batches, then 10% cut
    python benchmarks/load.py --pods 100 --procs 4  # a quick look

The pods run ``--procs`` at a time in each ``fsm-protocol worker --pods N``
process (one trio loop, one connection per pod); the modeller is one
``fsm-protocol modeller serve`` process. Everything is TLS, and the job
requests are signed.

Phase 1 ("complete"): every pod runs the conformance Echo algorithm for
``--batches`` batches. The task must complete, and every result must be in
the outcome and in the results folder.

Phase 2 ("cut"): the same pods with a slow Echo (a pause per batch, so that
the pods are mid-task). Once a quarter of the results are in, the worker
processes holding ``--cut-fraction`` of the pods (10%: whole processes, so
``--procs`` must divide evenly; those with the fewest results so far) are
killed (SIGKILL), which cuts every one of their connections. The outcome
must name exactly those pods as lost; the others are cancelled. Every result
the modeller received must be kept (in the outcome and the folder), and every
result a surviving pod says it delivered must have been received.

Everything is bounded: each phase is killed after ``--timeout`` seconds (the
modeller waits a third of that for the pods to connect; a TLS handshake may
take up to 120 s, since a thousand of them start at once). The
report goes to ``<out>/report.json``; the last line printed is always (one line)::

    load: pods=<int> msgs_per_s=<int> modeller_rss_mib=<int>
          results_kept=<int>/<int> lost_pods=<int>

``msgs_per_s`` is phase 1's messages over its task phase (from the job
requests to the end, as the modeller measures it, connections excluded);
``modeller_rss_mib`` the modeller's peak RSS over both phases;
``results_kept`` the results kept over those sent, both phases;
``lost_pods`` the pods phase 2 ended as lost (it should equal the number
cut, printed before). Targets (issue 12): at least 10,000 messages/s,
under 300 MiB, every result kept.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
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
# A thousand TLS handshakes at once on a small machine can take longer than the
# default 10 s each; a pod that gives up on its handshake is one the task waits for.
HANDSHAKE_S = 120.0


# --------------------------------------------- the slow algorithm (phase 2)


@attrs.frozen
class SlowEcho:
    """Echo with a pause in every batch, so that pods are mid-task when cut."""

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


# A worker process prints one line per pod: "pod ID: STATE (N delivered, ...".
REPORT = re.compile(r"^pod (\S+): (\w+) .*?(\d+) delivered", re.M)


@attrs.define
class Phase:
    name: str
    folder: Path
    procs: int
    per_proc: int
    job: dict[str, Any]
    algorithm: list[str]
    timeout_s: float
    modeller: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = attrs.field(factory=list)
    started: float = 0.0

    @property
    def task_id(self) -> str:
        return f"load-{self.name}"

    @property
    def results_path(self) -> Path:
        return self.folder / "results" / self.task_id

    def proc_pods(self, index: int) -> list[str]:
        """The pods of worker process ``index``: ``load/p<index>-0`` .. (``--pods`` ids)."""
        return [f"load/p{index}-{n}" for n in range(self.per_proc)]

    @property
    def pods(self) -> list[str]:
        return [pod for index in range(self.procs) for pod in self.proc_pods(index)]

    def start(self, keys: Path) -> None:
        # A run's results from an earlier benchmark run would be refused (no --resume here).
        shutil.rmtree(self.folder / "results", ignore_errors=True)
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
                    "--connect-timeout", str(self.timeout_s / 3), "--json", "-q",
                    "--handshake-timeout", str(HANDSHAKE_S), *self.algorithm,
                ),
                stdout=out, stderr=err, env=env,
            )  # fmt: skip
        while not port_file.exists():
            if self.modeller.poll() is not None or time.monotonic() - self.started > 30:
                raise SystemExit(f"the modeller did not start: see {self.folder}/modeller.err")
            time.sleep(0.01)
        port = int(port_file.read_text())
        for index in range(self.procs):
            command = fsm(
                "worker", "--connect", f"{LOCAL}:{port}", "--pod-id", f"load/p{index}",
                "--pods", str(self.per_proc), "--ca", str(keys / "ca.pem"),
                "--trust-key", str(keys / "modeller.pub"),
                "--job-timeout", str(self.timeout_s), "--handshake-timeout", str(HANDSHAKE_S),
                "-q", *self.algorithm,
            )  # fmt: skip
            with (self.folder / f"workers-{index}.out").open("wb") as out:
                self.workers.append(
                    subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
                )

    def wait(self) -> tuple[float, int, list[int]]:
        """Wait for every process (bounded); returns wall time and exit codes."""
        assert self.modeller is not None
        deadline = self.started + self.timeout_s
        try:
            code = self.modeller.wait(timeout=max(0.0, deadline - time.monotonic()))
            codes = [w.wait(timeout=max(1.0, deadline - time.monotonic())) for w in self.workers]
        except subprocess.TimeoutExpired:
            self.kill_all()
            raise SystemExit(f"phase {self.name}: timed out after {self.timeout_s} s") from None
        return time.monotonic() - self.started, code, codes

    def kill_all(self) -> None:
        for process in [self.modeller, *self.workers]:
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

    def worker_reports(self, index: int) -> dict[str, tuple[str, int]]:
        """What worker process ``index`` printed: each pod's end state and results delivered."""
        text = (self.folder / f"workers-{index}.out").read_text()
        return {pod: (state, int(n)) for pod, state, n in REPORT.findall(text)}


def common_report(phase: Phase, wall_s: float, outcome: dict[str, Any]) -> dict[str, Any]:
    stats = outcome["stats"]
    return {
        "pods": len(phase.pods),
        "worker_processes": phase.procs,
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
    items = [f"item-{n}" for n in range(args.batches)]
    job = {
        "protocol": {"class_name": "conformance.Echo", "items": items, "batch_size": 1},
        "batched_execution": True,
    }
    per_proc = args.pods // args.procs
    phase = Phase("complete", args.out / "complete", args.procs, per_proc, job, [], args.timeout)
    phase.start(keys)
    wall, code, codes = phase.wait()
    outcome = phase.outcome()
    report = common_report(phase, wall, outcome)
    pods = phase.pods
    expected = len(pods) * args.batches
    per_pod = Counter(r["worker"] for r in outcome["results"])
    problems = []
    if code != 0 or outcome["status"] != "complete":
        problems.append(f"modeller exit {code}, status {outcome['status']}")
    if any(c != 0 for c in codes):
        problems.append(f"worker process exit codes {dict(Counter(codes))}")
    if report["results_in_outcome"] != expected or report["results_in_folder"] != expected:
        problems.append(f"expected {expected} results")
    if any(per_pod[pod] != args.batches for pod in pods):
        problems.append("some pod has not exactly one result per batch")
    report.update(results_sent=expected, results_kept=min(
        report["results_in_outcome"], report["results_in_folder"]
    ), ok=not problems, problems=problems)  # fmt: skip
    return report


def run_cut(args: argparse.Namespace, keys: Path) -> dict[str, Any]:
    items = [f"item-{n}" for n in range(args.batches)]
    job = {
        "protocol": {"class_name": "benchmarks.SlowEcho", "items": items, "batch_size": 1,
                     "delay_s": args.delay},
        "batched_execution": True,
    }  # fmt: skip
    per_proc = args.pods // args.procs
    phase = Phase(
        "cut", args.out / "cut", args.procs, per_proc, job, ["--algorithm", "load:SLOW_ECHO"],
        args.timeout,
    )  # fmt: skip
    phase.start(keys)
    pods = phase.pods
    trigger = len(pods) * args.batches // 4
    while True:
        lines = phase.results_lines()
        if len(lines) >= trigger:
            break
        if phase.modeller is not None and phase.modeller.poll() is not None:
            raise SystemExit("the modeller ended before the cut; see the cut folder")
        if time.monotonic() - phase.started > args.timeout:
            phase.kill_all()
            raise SystemExit("timed out waiting for results before the cut")
        time.sleep(0.02)
    count = max(1, round(args.procs * args.cut_fraction))
    # Cut the processes furthest from done (pods do not all go at the same pace), so
    # that their pods are surely mid-task; ties broken by the seed.
    delivered_so_far = Counter(line["worker"] for line in lines)
    shuffle = random.Random(args.seed).sample(range(args.procs), args.procs)
    progress = {
        index: sum(delivered_so_far[pod] for pod in phase.proc_pods(index)) for index in shuffle
    }
    cut = sorted(sorted(shuffle, key=lambda index: progress[index])[:count])
    for index in cut:  # every connection of these processes drops at once
        phase.workers[index].send_signal(signal.SIGKILL)
    cut_at = time.monotonic() - phase.started
    victims = sorted(pod for index in cut for pod in phase.proc_pods(index))
    wall, code, codes = phase.wait()
    outcome = phase.outcome()
    report = common_report(phase, wall, outcome)
    workers = outcome["workers"]
    lost = sorted(pod for pod, w in workers.items() if w["state"] == "lost")
    in_outcome = Counter(r["worker"] for r in outcome["results"])
    in_folder = Counter(r["worker"] for r in phase.results_lines())
    in_trace = phase.trace_results()
    delivered: dict[str, int] = {}
    for index in range(args.procs):
        if index not in cut:
            delivered.update({pod: n for pod, (_, n) in phase.worker_reports(index).items()})
    problems = []
    if lost != victims:
        problems.append(f"{len(lost)} pods lost, {len(victims)} cut; not the same pods")
    for pod in pods:
        if not in_outcome[pod] == in_folder[pod] == in_trace[pod]:
            problems.append(
                f"{pod}: {in_trace[pod]} results received, {in_outcome[pod]} in the outcome, "
                f"{in_folder[pod]} in the folder"
            )
        if pod not in victims and delivered.get(pod) != in_trace[pod]:
            problems.append(f"{pod}: delivered {delivered.get(pod)}, received {in_trace[pod]}")
    for pod in victims:
        batches = sorted(r["batch"] for r in outcome["results"] if r["worker"] == pod)
        if batches != list(range(len(batches))):
            problems.append(f"{pod}: results are not batches 0..n-1: {batches}")
    # Sent: what each surviving pod says it delivered, and what the modeller got from
    # the cut ones (what they wrote into a dying connection cannot be counted).
    sent = sum(delivered.get(pod, 0) for pod in pods if pod not in victims) + sum(
        in_trace[pod] for pod in victims
    )
    kept = sum(min(in_outcome[pod], in_folder[pod]) for pod in pods)
    others = Counter(
        w["abort_reason"] or w["state"] for pod, w in workers.items() if pod not in victims
    )
    report.update(
        cut_processes=cut,
        cut_pods=len(victims),
        cut_at_s=round(cut_at, 2),
        results_before_cut=len(lines),
        lost_pods=len(lost),
        results_kept_from_cut=sum(in_outcome[pod] for pod in victims),
        others_ended=dict(others),
        modeller_exit=code,
        worker_exits=dict(Counter(c for i, c in enumerate(codes) if i not in cut)),
        results_sent=sent,
        results_kept=kept,
        ok=not problems,
        problems=problems[:20],
    )
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--procs", type=int, default=10, help="worker processes (default 10)")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--cut-fraction", type=float, default=0.1)
    parser.add_argument("--delay", type=float, default=0.5, help="seconds per batch in phase 2")
    parser.add_argument("--timeout", type=float, default=600.0, help="bound on each phase (s)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--phase", choices=["complete", "cut", "both"], default="both")
    parser.add_argument("--out", type=Path, default=Path("load-results"))
    args = parser.parse_args(argv)
    if args.pods % args.procs:
        parser.error("--procs must divide --pods (phase 2 cuts whole processes)")
    args.out = args.out.resolve()
    keys = args.out / "keys"
    setup(keys)
    report: dict[str, Any] = {"command": " ".join(sys.argv), "cpus": os.cpu_count()}
    if args.phase in ("complete", "both"):
        report["complete"] = run_complete(args, keys)
        print(json.dumps({"complete": report["complete"]}, indent=2), flush=True)
    if args.phase in ("cut", "both"):
        report["cut"] = run_cut(args, keys)
        print(json.dumps({"cut": report["cut"]}, indent=2), flush=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    phases = [report[p] for p in ("complete", "cut") if p in report]
    ok = all(p["ok"] for p in phases)
    print(f"report written to {args.out / 'report.json'}; {'OK' if ok else 'PROBLEMS'}")
    first = phases[0]
    cut = report.get("cut", {})
    print(f"cut: {cut.get('cut_pods', 0)} pods ({len(cut.get('cut_processes', []))} processes)")
    print(
        f"load: pods={first['pods']} msgs_per_s={int(first['messages_per_s'] or 0)} "
        f"modeller_rss_mib={round(max(p['modeller_peak_rss_mib'] for p in phases))} "
        f"results_kept={sum(p['results_kept'] for p in phases)}/"
        f"{sum(p['results_sent'] for p in phases)} lost_pods={cut.get('lost_pods', 0)}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
