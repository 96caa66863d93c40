"""Benchmark ``fsm-protocol check`` on a trace of 1,000,000 lines.

The trace is one streaming ``conformance.Echo`` task: 100 workers with 4,994
batches of one item each, the workers' batches interleaved round-robin as a
modeller would see them. A worker's part is 2 × batches + 12 lines, so this is
exactly 1,000,000 lines. The benchmark times ``fsm-protocol check`` on it (a separate
process, start-up included) and a bare ``json.loads`` loop over the same file
(also a separate process), and reports the checker's peak memory.

Usage::

    python benchmarks/check.py [--workers 100] [--batches 4994] [--keep FILE]

The last line is always::

    check: lines_per_s=<int> vs_json=<ratio> peak_rss_mib=<int>

Targets (issue 6): at least 200,000 lines/s, at least 0.3 of the bare JSON loop,
under 100 MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

TASK = "t-bench"
MODELLER = "modeller"

_JSON_LOOP = """
import json, sys
loads = json.loads
with open(sys.argv[1], "rb") as f:
    for line in f:
        loads(line)
"""


def _line(
    type_: str, sender: str, recipient: str, seq: int, body: object, meta: object = None
) -> str:
    message = {
        "v": 1,
        "type": type_,
        "task_id": TASK,
        "sender": sender,
        "recipient": recipient,
        "seq": seq,
        "body": body,
        "meta": meta if meta is not None else {},
    }
    return json.dumps(message, separators=(",", ":")) + "\n"


def generate(workers: int, batches: int) -> Iterator[str]:
    """The lines of one conforming task: ``workers * (2 * batches + 12)`` of them."""
    pods = [f"bench/pod-{n:03d}" for n in range(workers)]
    items = [f"i{n:05d}" for n in range(batches)]
    seq = {pod: 0 for pod in [*pods, MODELLER]}

    def send(type_: str, sender: str, recipient: str, body: object, meta: object = None) -> str:
        line = _line(type_, sender, recipient, seq[sender], body, meta)
        seq[sender] += 1
        return line

    protocol = {
        "class_name": "conformance.Echo",
        "items": items,
        "batch_size": 1,
        "fail_in_batch": [],
        "fail_alone": [],
        "inference_limit": None,
        "initial_setup": False,
    }
    job = {
        "protocol": protocol,
        "pod_identifiers": pods,
        "batched_execution": True,
        "run_on_new_data_only": False,
        "force_rerun_failed_files": False,
        "test_run": False,
        "project_id": None,
        "options": {},
    }
    for pod in pods:
        yield send("JOB_REQUEST", MODELLER, pod, job)
    for pod in pods:
        yield send("JOB_ACCEPT", pod, MODELLER, {"ACCEPT": pod})
        yield send("PREPARING_DATA", pod, MODELLER, None)
        yield send("CONFIGURING_TASK", pod, MODELLER, None)
        yield send("PREPARING_DATA_BATCHES", pod, MODELLER, None)
        yield send("NUMBER_OF_BATCHES", pod, MODELLER, -1)
        yield send("CURRENT_BATCH_ID", pod, MODELLER, 0)
        yield send("NUMBER_OF_BATCHES", pod, MODELLER, batches)
        yield send("TASK_START", pod, MODELLER, None)
    for pod in pods:
        yield send("TASK_START", MODELLER, pod, None)
    for batch in range(batches):
        for pod in pods:
            if batch:
                yield send("CURRENT_BATCH_ID", pod, MODELLER, batch)
            results = {"items": [items[batch]]}
            yield send("EVALUATION_RESULTS", pod, MODELLER, results, {"batch_number": batch})
    for pod in pods:
        yield send("BATCHES_COMPLETE", pod, MODELLER, "BATCHES_ONLY")
        yield send("BATCHES_COMPLETE", pod, MODELLER, "TASK_COMPLETE")
    for pod in pods:
        yield send("TASK_COMPLETE", MODELLER, pod, None)


def _timed(command: list[str]) -> tuple[float, int, int, bytes]:
    """Run a command; its wall time, exit status, peak RSS in KiB and stdout."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE)
    out = process.stdout.read() if process.stdout else b""
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    return elapsed, process.returncode, usage.ru_maxrss, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--batches", type=int, default=4994)
    parser.add_argument("--keep", metavar="FILE", help="write the trace here and keep it")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.keep) if args.keep else Path(tmp) / "trace.jsonl"
        start = time.perf_counter()
        with path.open("w") as f:
            lines = 0
            for line in generate(args.workers, args.batches):
                f.write(line)
                lines += 1
        size = path.stat().st_size / 2**20
        print(f"generated {lines} lines ({size:.0f} MiB) in {time.perf_counter() - start:.1f} s")

        check_s, status, rss_kib, out = _timed(
            [sys.executable, "-m", "fsm_protocol", "check", str(path)]
        )
        sys.stdout.write(out.decode())
        if status != 0:
            print(f"fsm-protocol check exited with status {status}", file=sys.stderr)
            return 1
        json_s, _, _, _ = _timed([sys.executable, "-c", _JSON_LOOP, str(path)])
        print(f"fsm-protocol check: {check_s:.2f} s; bare json.loads loop: {json_s:.2f} s")
        rate = lines / check_s
        print(
            f"check: lines_per_s={int(rate)} vs_json={json_s / check_s:.2f} "
            f"peak_rss_mib={rss_kib // 1024}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
