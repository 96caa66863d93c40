#!/usr/bin/env python3
"""Plant deliberate one-line bugs and check that the property tests catch each one.

Each mutant replaces exactly one line of a chart or of the runtime. It is
applied to a fresh copy of the repository in a temporary folder (the working
tree is never edited), and the property tests run there with a fixed
Hypothesis seed, under the ``mutation`` profile (``ci`` without shrinking).
The copy runs as a source checkout: the editable install of the working tree
is hidden from it, so the copy's charts and code are the ones under test. The
script prints a table: each mutant, caught or missed, by which test, and how
long it took.

Usage:
    python scripts/mutate.py                 # every mutant, two at a time
    python scripts/mutate.py --list          # name and description of each mutant
    python scripts/mutate.py NAME [NAME...]  # only these
    python scripts/mutate.py --jobs 1 --seed 3

Exit status: 0 when every mutant was caught (and the unmutated copy passed).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ["tests/test_properties.py", "tests/test_oracle.py", "tests/test_machine_from_chart.py"]
TIMEOUT_S = 900


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    old: str  # must occur exactly once in the file, as one whole line (stripped)
    new: str
    about: str


MUTANTS = [
    Mutant(
        "barrier-guard-removed",
        "statecharts/modeller.yaml",
        "- {event: send:TASK_START, target: running_batch, guards: [all_ready]}",
        "- {event: send:TASK_START, target: running_batch}",
        "the modeller chart no longer guards the batched TASK_START with the barrier",
    ),
    Mutant(
        "barrier-opens-for-one",
        "fsm_protocol/_runtime/_modeller.py",
        "every_one_ready = self.counts[READY] == counted",
        "every_one_ready = self.counts[READY] > 0",
        "the runtime opens the TASK_START barrier when any one worker is ready",
    ),
    Mutant(
        "off-by-one-batch-id",
        "fsm_protocol/_runtime/_modeller.py",
        "self.next_batch_id = event.data.body + 1",
        "self.next_batch_id = event.data.body + 2",
        "the modeller expects batch k+2 after batch k",
    ),
    Mutant(
        "last-batch-skipped",
        "fsm_protocol/_runtime/_worker.py",
        "if batch_id + 1 < len(self.batches):",
        "if batch_id + 2 < len(self.batches):",
        "the worker announces BATCHES_ONLY one batch early",
    ),
    Mutant(
        "batches-only-skipped",
        "fsm_protocol/_runtime/_worker.py",
        'ctx.send(self.message(MessageType.BATCHES_COMPLETE, "BATCHES_ONLY"))',
        'ctx.send(self.message(MessageType.BATCHES_COMPLETE, "TASK_COMPLETE"))',
        'the worker ends its batches with "TASK_COMPLETE" instead of "BATCHES_ONLY"',
    ),
    Mutant(
        "abort-swallowed",
        "fsm_protocol/_runtime/_worker.py",
        "ctx.send(self.message(MessageType.TASK_ABORT, body, Meta(reason=abort.reason.value)))",
        "pass",
        "the worker decides to abort but never sends TASK_ABORT",
    ),
    Mutant(
        "dropped-result",
        "fsm_protocol/_runtime/_modeller.py",
        "self.results[key] = message.body if self.keep_bodies else None",
        "pass",
        "store_result does not store",
    ),
    Mutant(
        "no-cancel-of-others",
        "statecharts/modeller.yaml",
        '- {event: recv:TASK_ABORT, target: aborted, guards: ["!cancel_sent"], '
        "actions: [note_abort, cancel_others, check_progress]}",
        '- {event: recv:TASK_ABORT, target: aborted, guards: ["!cancel_sent"], '
        "actions: [note_abort, check_progress]}",
        "a worker's own abort no longer cancels the others",
    ),
    Mutant(
        "limit-arithmetic",
        "fsm_protocol/_runtime/_worker.py",
        "if total >= self.usage.limit:",
        "if total > self.usage.limit:",
        "reaching the usage limit exactly does not stop the worker",
    ),
    Mutant(
        "duplicate-task-start",
        "fsm_protocol/_runtime/_modeller.py",
        "link.send(MessageType.TASK_START)",
        "link.send(MessageType.TASK_START); link.send(MessageType.TASK_START)",
        "the modeller sends TASK_START twice when the barrier opens",
    ),
    Mutant(
        "estimate-twice",
        "fsm_protocol/_runtime/_worker.py",
        "ctx.send(self.message(MessageType.NUMBER_OF_BATCHES, len(self.batches)))",
        "ctx.send(self.message(MessageType.NUMBER_OF_BATCHES, len(self.batches))); "
        "ctx.send(self.message(MessageType.NUMBER_OF_BATCHES, len(self.batches)))",
        "the worker sends its batch-count estimate twice",
    ),
    Mutant(
        "failure-limit-4",
        "fsm_protocol/_runtime/_worker.py",
        "FAILURE_LIMIT = 5",
        "FAILURE_LIMIT = 4",
        "the worker gives up after 4 consecutive failed batches instead of 5",
    ),
    Mutant(
        "retry-results-not-sent",
        "fsm_protocol/_runtime/_worker.py",
        "if not self._deliver(ctx, [item], results, None):",
        "if False:",
        "a retried item that succeeds sends no EVALUATION_RESULTS",
    ),
    Mutant(
        "complete-before-all-done",
        "fsm_protocol/_runtime/_modeller.py",
        "every_one_done = self.counts[DONE] == counted",
        "every_one_done = self.counts[DONE] > 0",
        "the runtime sends TASK_COMPLETE once any one worker is done",
    ),
    Mutant(
        "completion-guard-removed",
        "statecharts/modeller.yaml",
        '- {event: send:TASK_COMPLETE, target: complete, guards: [all_done, "!cancel_sent"], '
        "actions: [check_progress]}",
        '- {event: send:TASK_COMPLETE, target: complete, guards: ["!cancel_sent"], '
        "actions: [check_progress]}",
        "the modeller chart no longer guards TASK_COMPLETE with completion",
    ),
    Mutant(
        "duplicate-result-allowed",
        "statecharts/modeller.yaml",
        '- {event: recv:EVALUATION_RESULTS, guards: [is_batch_result, "!duplicate_result"], '
        "actions: [store_result]}",
        "- {event: recv:EVALUATION_RESULTS, guards: [is_batch_result], actions: [store_result]}",
        "the modeller chart takes a second result for the same batch and algorithm",
    ),
    Mutant(
        "cancel-reason-lost",
        "statecharts/worker.yaml",
        "- {event: recv:TASK_CANCEL, target: aborting, actions: [note_cancelled]}",
        "- {event: recv:TASK_CANCEL, target: aborting}",
        "a cancelled worker aborts without noting why",
    ),
    Mutant(
        "retries-out-of-order",
        "fsm_protocol/_runtime/_worker.py",
        "item = self.retry_queue.pop(0)",
        "item = self.retry_queue.pop()",
        "the resilience phase retries the failed items last first",
    ),
    Mutant(
        "estimate-guard-removed",
        "statecharts/worker.yaml",
        '- {event: send:NUMBER_OF_BATCHES, guards: [is_estimate, "!estimate_sent"], '
        "actions: [note_estimate]}",
        "- {event: send:NUMBER_OF_BATCHES, guards: [is_estimate], actions: [note_estimate]}",
        "the worker chart lets a second estimate out (the runtime sends one anyway)",
    ),
    Mutant(
        "abort-reason-not-noted",
        "statecharts/worker.yaml",
        "- {event: batch_failed, target: aborting, guards: [at_failure_limit], "
        "actions: [note_failure, note_worker_error]}",
        "- {event: batch_failed, target: aborting, guards: [at_failure_limit], "
        "actions: [note_failure]}",
        "the worker aborts at the failure limit without noting why",
    ),
    Mutant(
        "late-accept-not-cancelled",
        "statecharts/modeller.yaml",
        "- {event: recv:JOB_ACCEPT, target: engaged, "
        "actions: [note_accept, note_late, send_cancel]}",
        "- {event: recv:JOB_ACCEPT, target: engaged, actions: [note_accept, note_late]}",
        "a JOB_ACCEPT after the response timeout is not answered with TASK_CANCEL",
    ),
]


def apply(mutant: Mutant, root: Path) -> None:
    path = root / mutant.file
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if line.strip() == mutant.old]
    if len(hits) != 1:
        raise SystemExit(
            f"mutant {mutant.name}: expected exactly one line {mutant.old!r} in {mutant.file}, "
            f"found {len(hits)}; update scripts/mutate.py"
        )
    line = lines[hits[0]]
    indent = line[: len(line) - len(line.lstrip())]
    lines[hits[0]] = indent + mutant.new + "\n"
    path.write_text("".join(lines), encoding="utf-8")


def copy_repo(into: Path) -> Path:
    root = into / "repo"
    ignore = shutil.ignore_patterns(
        ".git", "__pycache__", ".hypothesis", "*.egg-info", "build", "site", ".mypy_cache",
        ".ruff_cache", ".pytest_cache",
    )  # fmt: skip
    # symlinks=True: fsm_protocol/statecharts is a link to statecharts/, and a mutant of a
    # chart must reach the package the copy imports, not a second copy of the charts.
    shutil.copytree(ROOT, root, ignore=ignore, symlinks=True)
    return root


# Run pytest in the copy as a source checkout: without the editable install's
# import hook, which would map fsm_protocol.statecharts back to the working tree.
RUNNER = """
import pathlib
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
import fsm_protocol, pytest
from fsm_protocol._base._resources import shipped_chart_path
root = sys.argv[1]
assert fsm_protocol.__file__.startswith(root), f"not the copy under test: {fsm_protocol.__file__}"
# The chart the package loads must be the file a chart mutant edits, not another copy of it.
chart = shipped_chart_path("worker").resolve()
edited = (pathlib.Path(root) / "statecharts" / "worker.yaml").resolve()
assert chart == edited, f"the package loads {chart}, mutants edit {edited}"
sys.exit(pytest.main(sys.argv[2:]))
"""


@dataclass(frozen=True)
class Result:
    name: str
    caught: bool
    by: str
    seconds: float


def run_suite(root: Path, seed: int) -> tuple[int, str]:
    args = [
        sys.executable, "-c", RUNNER, str(root),
        "-x", "-q", "-rf", "--no-header", "-p", "no:cacheprovider",
        f"--hypothesis-seed={seed}", "--hypothesis-profile=mutation", *TESTS,
    ]  # fmt: skip
    try:
        done = subprocess.run(
            args, cwd=root, capture_output=True, text=True, timeout=TIMEOUT_S,
            env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "HOME": str(root)},
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {TIMEOUT_S} s"
    return done.returncode, done.stdout + done.stderr


def first_failure(output: str) -> str:
    match = re.search(r"^FAILED (\S+)", output, re.M)
    if match:
        return match.group(1).split("::", 1)[-1]
    match = re.search(r"^E\s+(\S*(?:Error|Exception)\b.*)$", output, re.M)
    if match:
        return f"collection: {match.group(1)[:70]}"
    return "(see output)"


def try_mutant(mutant: Mutant | None, seed: int, keep: bool) -> tuple[Result, str]:
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mutant-") as tmp:
        root = copy_repo(Path(tmp))
        if mutant is not None:
            apply(mutant, root)
        status, output = run_suite(root, seed)
        if keep:
            kept = Path(tempfile.mkdtemp(prefix="mutant-kept-"))
            shutil.copytree(root, kept / "repo")
    name = mutant.name if mutant else "(none: the unmutated copy)"
    caught = status != 0
    by = ("timed out" if status == -1 else first_failure(output)) if caught else "-"
    return Result(name, caught, by, time.monotonic() - start), output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--jobs", type=int, default=2, help="mutants run at once (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="Hypothesis seed (default 0)")
    parser.add_argument("--keep", action="store_true", help="keep each mutated copy")
    parser.add_argument("--verbose", action="store_true", help="print each run's output")
    args = parser.parse_args(argv)

    if args.list:
        for m in MUTANTS:
            print(f"{m.name:28} {m.file:28} {m.about}")
        return 0
    chosen = [m for m in MUTANTS if not args.names or m.name in args.names]
    unknown = sorted(set(args.names) - {m.name for m in MUTANTS})
    if unknown:
        parser.error(f"unknown mutants: {', '.join(unknown)}; see --list")
    # Fail fast on a mutant whose line has moved, before any test runs.
    with tempfile.TemporaryDirectory() as tmp:
        root = copy_repo(Path(tmp))
        for m in chosen:
            apply(m, root)

    baseline, output = try_mutant(None, args.seed, keep=False)
    if baseline.caught:
        print(output)
        print(f"the unmutated copy fails ({baseline.by}); fix that first", file=sys.stderr)
        return 2
    print(f"baseline: the unmutated copy passes ({baseline.seconds:.0f} s)\n", flush=True)

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        runs = list(pool.map(lambda m: try_mutant(m, args.seed, args.keep), chosen))
    width = max(len(m.name) for m in chosen)
    print(f"{'mutant':{width}}  {'result':6}  {'time':>5}  caught by")
    print(f"{'-' * width}  ------  -----  ---------")
    for (result, output), mutant in zip(runs, chosen, strict=True):
        verdict = "caught" if result.caught else "MISSED"
        print(f"{result.name:{width}}  {verdict:6}  {result.seconds:4.0f}s  {result.by}")
        if args.verbose or not result.caught:
            print(f"    {mutant.about} ({mutant.file})")
        if args.verbose:
            print(output)
    missed = [r.name for r, _ in runs if not r.caught]
    print(f"\n{len(runs) - len(missed)} of {len(runs)} mutants caught")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
