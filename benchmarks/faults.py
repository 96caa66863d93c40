"""Fault benchmark: the wire fuzzer and the fault set of issue 14, for a fixed budget.

Run it from the repository root::

    python benchmarks/faults.py                  # >= 10,000 fuzz inputs, then the fault set
    python benchmarks/faults.py --inputs 500     # a quick look

1. **Wire fuzzer.** Hypothesis draws sessions (see ``tests/faults.py``): a real
   modeller with a results folder, an honest worker and a hostile one whose lines
   (or, mirrored, the modeller's lines to it) are replaced by raw bytes or by valid
   messages with hostile values. Most sessions run over in-process transports
   (the same codec), every tenth against ``serve_task`` listening on 127.0.0.1.
   An *input* is one hostile line sent to a running peer.
2. **Fault set.** Real processes (``fsm-protocol modeller serve`` and ``worker``):
   kill -9 of a worker and of the modeller at random moments, a paused modeller,
   SIGTERM; in-process: a flood of idle connections, a restarted worker, a full disk.

A *crash* is an exception out of a modeller or worker, a traceback, or an exit
status other than the documented one; a *hang* is a session or process past its
deadline; a result is *lost* when the modeller accepted it and ``results.ndjson``
does not hold it, or a file of the results folder does not parse. ``max_rss_mib``
is the largest resident set of this process and of any child process.

The last line is: ``faults: inputs=<int> crashes=<int> hangs=<int> results_lost=<int>
max_rss_mib=<int>``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import random
import resource
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fsm_protocol._net._tcp import Limits, PodListener, connect
from fsm_protocol._runtime import _results
from fsm_protocol._runtime._results import read_results
from tests.faults import (
    LOCAL,
    Mutation,
    SessionResult,
    memory_session,
    mutations,
    summary_line,
    tcp_session,
)
from tests.test_net_cli import SLOW_ECHO, Processes, slow_job, task_file


class Tally:
    def __init__(self) -> None:
        self.inputs = 0
        self.sessions = 0
        self.crashes = 0
        self.hangs = 0
        self.lost = 0
        self.notes: list[str] = []

    def add(self, result: SessionResult, what: str) -> None:
        self.sessions += 1
        self.inputs += result.inputs
        if result.crashed:
            self.crashes += 1
            self.notes.append(f"crash in {what}: {result.crashed}")
        if result.hung:
            self.hangs += 1
            self.notes.append(f"hang in {what}")
        if result.lost:
            self.lost += result.lost
            self.notes.append(f"{result.lost} results lost in {what}")

    def fault(
        self, name: str, *, crashed: str | None = None, hung: bool = False, lost: int = 0
    ) -> None:
        self.add(SessionResult(0, crashed, hung, lost, None), name)
        print(f"  fault {name}: {'crash ' + crashed if crashed else 'hang' if hung else 'ok'}"
              + (f", {lost} lost" if lost else ""), flush=True)  # fmt: skip


def max_rss_mib() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


# ------------------------------------------------------------------- fuzzer


def fuzz(tally: Tally, folder: Path, target_inputs: int, budget_s: float) -> None:
    started = time.monotonic()
    counter = {"n": 0}

    @given(
        changes=st.lists(mutations(max_index=10), min_size=1, max_size=4),
        mirrored=st.booleans(),
    )
    @settings(
        max_examples=10**6,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def one(changes: list[Mutation], mirrored: bool) -> None:
        if tally.inputs >= target_inputs or time.monotonic() - started > budget_s:
            raise _Done  # a BaseException: Hypothesis passes it on without reporting
        counter["n"] += 1
        n = counter["n"]
        by_index = {c.index: c for c in changes}
        here = folder / f"s{n}"
        here.mkdir()
        tcp = n % 10 == 0 and not mirrored
        what = f"{'tcp ' if tcp else ''}session {n} mirrored={mirrored} {changes}"
        try:
            if tcp:
                result = trio.run(lambda: tcp_session(here, by_index, task_id=f"f{n}"))
            else:
                result = trio.run(
                    lambda: memory_session(
                        here, by_index, mangle_modeller=mirrored, task_id=f"f{n}"
                    )
                )
        except Exception as exc:  # the harness's own checks (a file that does not parse)
            result = SessionResult(0, f"{type(exc).__name__}: {exc}", False, 0, None)
        tally.add(result, what)
        if n % 500 == 0:
            print(f"  {n} sessions, {tally.inputs} inputs, {time.monotonic() - started:.0f} s, "
                  f"max rss {max_rss_mib():.0f} MiB", flush=True)  # fmt: skip

    with contextlib.suppress(_Done):
        one()


class _Done(BaseException):
    """The fuzzer's budget is spent."""


# ---------------------------------------------------------------- fault set


def _folder_lost(path: Path, accepted: set[tuple[str, int | None]] | None = None) -> int:
    """Results the outcome lists but the file lacks, or 10**3 for a file that does not parse."""
    try:
        if (path / "task.json").exists():
            json.loads((path / "task.json").read_bytes())
        kept = {(r.worker, r.batch_number) for r in read_results(path / "results.ndjson")}
        lines = (path / "results.ndjson").read_bytes().split(b"\n")
        whole = [line for line in lines[:-1]]
        for line in whole:
            json.loads(line)
        if (path / "outcome.json").exists():
            outcome = json.loads((path / "outcome.json").read_bytes())
            accepted = {(r["worker"], r["batch"]) for r in outcome["results"]}
    except (OSError, ValueError) as exc:
        print(f"  bad results folder {path}: {exc}")
        return 1000
    return len((accepted or set()) - kept)


def _crash_text(procs: Processes, *names: str) -> str | None:
    for name in names:
        text = procs.output(name)
        if "Traceback" in text:
            return f"{name}: {text[text.index('Traceback') :][:300]}"
    return None


def _wait(process: Any, timeout: float) -> int | None:
    try:
        code: int = process.wait(timeout=timeout)
        return code
    except Exception:
        process.kill()
        process.wait()
        return None


def _run_procs(
    tally: Tally, root: Path, name: str, act: Callable[[Processes, Any, dict[str, Any]], None],
    *, batches: int = 30, delay: float = 0.02, timeouts: dict[str, Any] | None = None,
    expect_modeller: frozenset[int] = frozenset({0, 1}),
) -> None:  # fmt: skip
    folder = root / name
    folder.mkdir()
    procs = Processes(folder)
    pods = ["a/p", "b/p", "c/p"]
    try:
        extra = {"timeouts": timeouts} if timeouts else {}
        task = task_file(folder, pods, slow_job(batches, delay), **extra)
        modeller, port = procs.modeller(
            "--task", task, "--results-dir", "results", "--algorithm", SLOW_ECHO, "-q"
        )
        workers = {
            pod: procs.worker(port, pod, "--algorithm", SLOW_ECHO, "--retry-for", "2", "-q")
            for pod in pods
        }
        act(procs, modeller, workers)
        code = _wait(modeller, 60)
        worker_codes = [_wait(w, 60) for w in workers.values()]
        hung = code is None or None in worker_codes
        crash = _crash_text(procs, "modeller", "a-p", "b-p", "c-p")
        if crash is None and code not in expect_modeller and code != -signal.SIGKILL:
            crash = f"modeller exit status {code}"
        lost = _folder_lost(folder / "results" / "t-cli")
        tally.fault(name, crashed=crash, hung=hung, lost=lost)
    finally:
        procs.stop_all()


def _wait_results(procs: Processes, count: int, timeout: float = 20) -> None:
    path = procs.folder / "results" / "t-cli" / "results.ndjson"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= count:
            return
        time.sleep(0.01)


def fault_set(tally: Tally, root: Path, rng: random.Random, rounds: int) -> None:
    for round_ in range(rounds):

        def kill_worker(procs: Processes, modeller: Any, workers: dict[str, Any]) -> None:
            _wait_results(procs, rng.randint(1, 20))
            workers[rng.choice(sorted(workers))].send_signal(signal.SIGKILL)

        _run_procs(tally, root, f"kill-9-worker-{round_}", kill_worker)

        def kill_modeller(procs: Processes, modeller: Any, workers: dict[str, Any]) -> None:
            _wait_results(procs, rng.randint(0, 40))
            time.sleep(rng.random() * 0.05)
            modeller.send_signal(signal.SIGKILL)

        _run_procs(tally, root, f"kill-9-modeller-{round_}", kill_modeller)

        def pause(procs: Processes, modeller: Any, workers: dict[str, Any]) -> None:
            _wait_results(procs, 3)
            modeller.send_signal(signal.SIGSTOP)
            time.sleep(2.0)
            modeller.send_signal(signal.SIGCONT)

        _run_procs(tally, root, f"pause-{round_}", pause, timeouts={"worker_idle_timeout_s": 1})

        def terminate(procs: Processes, modeller: Any, workers: dict[str, Any]) -> None:
            _wait_results(procs, rng.randint(1, 30))
            modeller.send_signal(rng.choice([signal.SIGTERM, signal.SIGINT]))

        _run_procs(tally, root, f"sigterm-{round_}", terminate, batches=200,
                   expect_modeller=frozenset({130}))  # fmt: skip

    tally.fault("flood", **_in_process(flood))
    tally.fault("restart-before-start", **_in_process(restart))
    here = root / "disk-full"
    here.mkdir()
    tally.fault("disk-full", **_in_process(lambda: disk_full(here)))


def _in_process(job: Callable[[], Any]) -> dict[str, Any]:
    try:
        result = trio.run(job)
    except trio.TooSlowError:
        return {"hung": True}
    except Exception as exc:
        leaf: BaseException = exc
        while getattr(leaf, "exceptions", None):
            leaf = leaf.exceptions[0]  # type: ignore[attr-defined]
        return {"crashed": f"{type(leaf).__name__}: {leaf}"}
    if isinstance(result, SessionResult):
        return {"crashed": result.crashed, "hung": result.hung, "lost": result.lost}
    return {}


async def flood() -> None:
    limits = Limits(handshake_timeout_s=0.5, max_pending_handshakes=4)
    with trio.fail_after(60):
        listener = await PodListener.open(LOCAL, 0, pods=["a/p"], limits=limits)
        idle = [await trio.open_tcp_stream(LOCAL, listener.port) for _ in range(40)]
        admitted: dict[str, Any] = {}
        async with trio.open_nursery() as nursery:

            async def serve() -> None:
                admitted.update(await listener.wait_for_pods(50))

            nursery.start_soon(serve)
            transport = await connect(
                LOCAL, listener.port, pod_id="a/p", limits=Limits(handshake_timeout_s=3.0),
                retry_for_s=40,
            )  # fmt: skip
        for stream in idle:
            await stream.aclose()
        await transport.aclose()
        for other in admitted.values():
            await other.aclose()
        if list(admitted) != ["a/p"]:
            raise AssertionError(f"the honest pod was not admitted: {list(admitted)}")


async def restart() -> None:
    with trio.fail_after(30):
        listener = await PodListener.open(LOCAL, 0, pods=["a/p", "b/p"])
        admitted: dict[str, Any] = {}
        async with trio.open_nursery() as nursery:

            async def serve() -> None:
                admitted.update(await listener.wait_for_pods(20))

            nursery.start_soon(serve)
            first = await connect(LOCAL, listener.port, pod_id="a/p")
            await first.aclose()
            await trio.sleep(0.05)
            second = await connect(LOCAL, listener.port, pod_id="a/p", retry_for_s=5)
            other = await connect(LOCAL, listener.port, pod_id="b/p")
        for transport in (second, other, *admitted.values()):
            await transport.aclose()
        if sorted(admitted) != ["a/p", "b/p"]:
            raise AssertionError(f"the restarted pod did not rejoin: {sorted(admitted)}")


async def disk_full(folder: Path) -> SessionResult:
    real = _results._write_all
    count = {"n": 0}

    def full(descriptor: int, data: bytes) -> None:
        if data.startswith(b'{"worker"'):
            count["n"] += 1
            if count["n"] > 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        real(descriptor, data)

    _results._write_all = full  # type: ignore[assignment]
    try:
        result = await tcp_session(folder, {}, batches=30, task_id="disk")
    finally:
        _results._write_all = real  # type: ignore[assignment]
    if result.status != "cancelled":
        return SessionResult(
            0, f"a full disk did not stop the task ({result.status})", False, 0, None
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=10_000, help="fuzz inputs (10000)")
    parser.add_argument("--budget", type=float, default=1200.0, help="fuzzer seconds at most")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the process faults")
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args()
    tally = Tally()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
        root = Path(tmp)
        (root / "fuzz").mkdir()
        started = time.monotonic()
        print(f"wire fuzzer: until {args.inputs} inputs or {args.budget:g} s", flush=True)
        fuzz(tally, root / "fuzz", args.inputs, args.budget)
        print(f"  {tally.sessions} sessions, {tally.inputs} inputs in "
              f"{time.monotonic() - started:.0f} s", flush=True)  # fmt: skip
        print("fault set:", flush=True)
        fault_set(tally, root, rng, args.rounds)
    for note in tally.notes[:20]:
        print(f"  {note}")
    print(summary_line(tally.inputs, tally.crashes, tally.hangs, tally.lost, max_rss_mib()))


if __name__ == "__main__":
    main()
