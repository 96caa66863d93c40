"""Faults a hostile pod or an unlucky operator cause: nothing lost, nothing crashes.

One test (or more) per row of issue 14's table, named after it, plus the wire
fuzzer: Hypothesis over raw bytes and over valid messages with hostile values,
against a modeller (in-process, and listening on 127.0.0.1) and a worker. The
harness is in ``tests/faults.py``; ``benchmarks/faults.py`` runs it for longer.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import signal
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fsm_protocol import (
    AbortReason,
    BatchInfo,
    Item,
    Pod,
    ProtocolFactory,
    TaskStatus,
    WorkerContext,
    WorkerPlan,
    registry,
)
from fsm_protocol._cli._main import main
from fsm_protocol._net._auth import generate_key, require_signed_jobs
from fsm_protocol._net._tcp import HandshakeError, Limits, PodListener, connect, parse_hello
from fsm_protocol._runtime import _results
from fsm_protocol._runtime._modeller import run_modeller
from fsm_protocol._runtime._results import (
    ResultsFolder,
    ResultsFolderExists,
    folder_name,
    read_results,
    write_atomic,
)
from fsm_protocol._runtime._task import run_task
from fsm_protocol._runtime._transport import memory_transport_pair
from fsm_protocol._runtime._worker import run_worker
from fsm_protocol._wire._messages import JobRequestBody, Message, MessageType, encode

from .faults import (
    HONEST,
    HOSTILE,
    LOCAL,
    TIMEOUTS,
    Mutation,
    memory_session,
    mutations,
    tcp_session,
)
from .test_net_cli import SLOW_ECHO, Processes, slow_job, task_file, wait


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    processes = Processes(tmp_path)
    try:
        yield processes
    finally:
        processes.stop_all()


_STRICT = json.JSONDecoder(parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))


def strict_json(data: bytes) -> Any:
    """json.loads that refuses NaN and Infinity, as other languages' parsers do."""
    return _STRICT.decode(data.decode("utf-8"))


def results_lines(folder: Path) -> list[dict[str, Any]]:
    return [strict_json(line) for line in (folder / "results.ndjson").read_bytes().splitlines()]


# ------------------------------------------------------------------ the fuzzer


@given(changes=st.lists(mutations(), min_size=1, max_size=3), mirrored=st.booleans())
@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_wire_fuzzer_in_process(
    tmp_path_factory: Any, changes: list[Mutation], mirrored: bool
) -> None:
    folder = tmp_path_factory.mktemp("fuzz")
    by_index = {c.index: c for c in changes}
    result = trio.run(lambda: memory_session(folder, by_index, mangle_modeller=mirrored))
    assert result.crashed is None
    assert not result.hung
    assert result.lost == 0


@given(changes=st.lists(mutations(), min_size=1, max_size=2))
@settings(max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_wire_fuzzer_against_a_listening_modeller(
    tmp_path_factory: Any, changes: list[Mutation]
) -> None:
    folder = tmp_path_factory.mktemp("fuzz-tcp")
    result = trio.run(lambda: tcp_session(folder, {c.index: c for c in changes}))
    assert result.crashed is None
    assert not result.hung
    assert result.lost == 0


# ------------------------------------------------------------------ row 1 and 2


@pytest.mark.parametrize(
    ("index", "kind", "payload"),
    [
        (3, "body", b'{"file":"caf\\udce9.csv"}'),  # row 1: a results body
        (0, "body", b'{"NO_ACCESS":["caf\\udce9"]}'),  # row 1: a rejection
        (3, "body", b"[1e999]"),  # row 2
        (3, "meta", b"1e999"),
    ],
)
def test_rows_1_2_hostile_values_from_a_pod_cost_only_that_pod(
    tmp_path: Path, index: int, kind: str, payload: bytes
) -> None:
    result = trio.run(lambda: tcp_session(tmp_path, {index: Mutation(index, kind, payload)}))
    assert result.crashed is None and not result.hung and result.lost == 0
    folder = tmp_path / "fuzz"
    outcome = strict_json((folder / "outcome.json").read_bytes())
    assert outcome["workers"][HOSTILE]["problem"].startswith("protocol error: field $.")
    for line in (folder / "trace.ndjson").read_bytes().splitlines():
        strict_json(line)
    assert all(r["worker"] == HONEST for r in results_lines(folder))


class Latin1:
    """An algorithm whose results hold what it was given: NaN, an object, a file name."""

    def __init__(self, value: Any) -> None:
        self.value = value

    async def run_batch(self, items: Sequence[Item], info: BatchInfo) -> list[Any]:
        return [self.value for _ in items]


@attrs.frozen
class Odd:
    items: tuple[str, ...] = ("a", "b")
    value: str = "nan"


_VALUES = {"nan": float("nan"), "object": object(), "latin1": "caf\udce9.csv"}


def _odd_plan(config: Odd, context: WorkerContext) -> WorkerPlan:
    from fsm_protocol import ListDatasource

    return WorkerPlan(
        Latin1(_VALUES[config.value]), ListDatasource.from_names(config.items).items(), 1
    )


ODD = ProtocolFactory("test.Odd", Odd, _odd_plan)


@pytest.mark.parametrize("value", ["nan", "object", "latin1"])
def test_row_8_unsendable_results_become_task_abort_worker_error(value: str) -> None:
    protocols = registry.with_protocol(ODD)

    async def go() -> Any:
        return await run_task(
            Odd(value=value), [Pod("a/p", registry=protocols)], protocols=protocols
        )

    outcome = trio.run(go)
    assert outcome.status is TaskStatus.ABORTED
    worker = outcome.worker_reports["a/p"]
    assert worker.abort_reason is AbortReason.WORKER_ERROR
    assert "the results cannot be sent: field results" in worker.abort_message
    assert outcome.abort_reasons["a/p"] is AbortReason.WORKER_ERROR


# ------------------------------------------------------------------------ row 3


class BigResults:
    async def run_batch(self, items: Sequence[Item], info: BatchInfo) -> list[str]:
        return ["x" * 1_000_000 for _ in items]


def test_row_3_modeller_memory_does_not_grow_with_the_task(tmp_path: Path) -> None:
    """20 results of 1 MB each: with a results folder, the modeller keeps none of them."""
    job = JobRequestBody(
        protocol={"class_name": "conformance.Echo", "items": [f"i{n}" for n in range(20)],
                  "batch_size": 1},
        batched_execution=True,
    )  # fmt: skip

    async def go() -> int:
        modeller_end, worker_end = memory_transport_pair()
        folder = ResultsFolder(tmp_path, "big")
        config = registry.load(job.protocol)
        plan_pod = Pod("a/p", registry=registry.with_protocol(_big_echo()))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_worker, plan_pod, worker_end)
            run = await run_modeller(
                task_id="big",
                jobs={
                    "a/p": attrs.evolve(job, protocol={**job.protocol, "class_name": "test.Big"})
                },
                configs={"a/p": config},
                links={"a/p": modeller_end},
                on_message=folder.on_message,
                keep=False,
            )
        # What the modeller still holds once the task is over, with its run in hand
        # (the in-process worker's cycles collected first).
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
        folder.finish({"status": run.status.value})
        assert run.status is TaskStatus.COMPLETE
        assert len(run.results) == 20 and set(run.results.values()) == {None}
        assert run.trace == ()
        return held

    tracemalloc.start()
    try:
        held = trio.run(go)
    finally:
        tracemalloc.stop()
    assert len(list(read_results(tmp_path / "big" / "results.ndjson"))) == 20
    assert held < 5_000_000, held  # the 20 MB of results are on disk, not in memory


def _big_echo() -> ProtocolFactory:
    @attrs.frozen
    class Big:
        items: tuple[str, ...] = ()
        batch_size: int = 1

    def plan(config: Big, context: WorkerContext) -> WorkerPlan:
        from fsm_protocol import ListDatasource

        return WorkerPlan(BigResults(), ListDatasource.from_names(config.items).items(), 1)

    return ProtocolFactory("test.Big", Big, plan)


def test_row_3_algorithm_index_beyond_the_limit_is_refused(tmp_path: Path) -> None:
    result = trio.run(
        lambda: tcp_session(
            tmp_path, {3: Mutation(3, "meta", b"300")}, limits=Limits(max_algorithm_index=255)
        )
    )
    assert result.crashed is None and not result.hung and result.lost == 0
    outcome = json.loads((tmp_path / "fuzz" / "outcome.json").read_bytes())
    assert "$.meta." in outcome["workers"][HOSTILE]["problem"]


# ------------------------------------------------------------------------ row 4


def test_row_4_a_second_run_refuses_and_never_truncates(tmp_path: Path) -> None:
    first = ResultsFolder(tmp_path, "t-42")
    first.on_message("a/p", _result("a/p", 0))
    first.close()
    before = (first.path / "results.ndjson").read_bytes()
    with pytest.raises(ResultsFolderExists, match="--resume"):
        ResultsFolder(tmp_path, "t-42")
    assert (first.path / "results.ndjson").read_bytes() == before
    again = ResultsFolder(tmp_path, "t-42", resume=True)
    assert [(k.worker, k.batch_number) for k in again.kept] == [("a/p", 0)]
    again.on_message("a/p", _result("a/p", 0))  # asked again: kept once
    again.on_message("a/p", _result("a/p", 1))
    again.close()
    assert [r.batch_number for r in read_results(first.path / "results.ndjson")] == [0, 1]


def test_row_4_the_cli_refuses_a_second_run_before_listening(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    task = tmp_path / "task.json"
    task.write_text(json.dumps({"task_id": "t/1", "pods": ["a/p"], "job": {
        "protocol": {"class_name": "conformance.Echo", "items": ["a"]}}}))  # fmt: skip
    (tmp_path / "results" / folder_name("t/1")).mkdir(parents=True)
    (tmp_path / "results" / folder_name("t/1") / "results.ndjson").write_text("{}\n")
    code = main(["modeller", "serve", "--listen", "127.0.0.1:0", "--task", str(task),
                 "--results-dir", str(tmp_path / "results"), "-q"])  # fmt: skip
    assert code == 2
    assert "already holds task 't/1'" in capsys.readouterr().err
    assert (tmp_path / "results" / folder_name("t/1") / "results.ndjson").read_text() == "{}\n"


def test_row_4_task_ids_get_folders_of_their_own() -> None:
    ids = ["t/1", "t:1", "t_1", "t%2F1", ".", "..", "", "T/1", "a" * 300, "a" * 301, "é"]
    names = [folder_name(i) for i in ids]
    assert len(set(names)) == len(ids)
    assert all("/" not in n and n not in (".", "..", "") and len(n) <= 120 for n in names)


def _result(pod: str, batch: int) -> Message:
    return Message.make(
        MessageType.EVALUATION_RESULTS,
        task_id="t",
        sender=pod,
        recipient="modeller",
        seq=batch,
        body={"batch": batch},
        meta=__import__("fsm_protocol").Meta(batch_number=batch),
    )


def watched_folder(
    tmp_path: Path, task_id: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[ResultsFolder, list[object]]:
    """A results folder whose fsyncs and acknowledgements are listed, in order, in events."""
    events: list[object] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        events.append("fsync")
        real_fsync(fd)

    monkeypatch.setattr(_results.os, "fsync", fsync)
    folder = ResultsFolder(tmp_path, task_id)
    events.clear()  # making the folder synced its marker file
    folder.on_durable = lambda pod, message: events.append((pod, message.type.value, message.seq))
    return folder, events


def test_row_4_a_message_is_durable_only_once_the_results_before_it_are_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a broker may acknowledge (ack_when="durable"): nothing a crash could still lose."""
    folder, events = watched_folder(tmp_path, "t-durable", monkeypatch)

    def batch_id(pod: str, seq: int, batch: int) -> Message:
        return Message.make(
            MessageType.CURRENT_BATCH_ID,
            task_id="t",
            sender=pod,
            recipient="modeller",
            seq=seq,
            body=batch,
        )

    log = Message.make(
        MessageType.LOG_MESSAGE,
        task_id="t",
        sender="a/p",
        recipient="modeller",
        seq=2,
        body={"level": "INFO", "message": "hi"},
    )
    folder.on_message("a/p", batch_id("a/p", 0, 0))  # nothing to write: durable at once
    folder.on_message("a/p", _result("a/p", 1))
    folder.on_message("a/p", log)  # behind a result not synced yet: it waits too
    folder.on_message("b/p", _result("b/p", 0))
    assert events == [("a/p", "CURRENT_BATCH_ID", 0)]
    folder.on_message("a/p", batch_id("a/p", 3, 1))  # a batch boundary: sync, then settle
    assert events[1:] == [
        "fsync",
        ("a/p", "LOG_MESSAGE", 2),
        ("b/p", "EVALUATION_RESULTS", 0),
        ("a/p", "CURRENT_BATCH_ID", 3),
    ]
    folder.close()


# ------------------------------------------------------------------- row 5, 11


def test_row_5_a_paused_modeller_reads_what_arrived_before_declaring_a_worker_lost(
    procs: Processes,
) -> None:
    folder = procs.folder
    pods = ["a/p", "b/p"]
    task = task_file(folder, pods, slow_job(12, 0.05), timeouts={"worker_idle_timeout_s": 1})
    modeller, port = procs.modeller("--task", task, "--results-dir", "results",
                                    "--algorithm", SLOW_ECHO)  # fmt: skip
    workers = [procs.worker(port, pod, "--algorithm", SLOW_ECHO) for pod in pods]
    time.sleep(0.3)
    modeller.send_signal(signal.SIGSTOP)
    time.sleep(2.5)  # longer than worker_idle_timeout_s: the workers' lines wait in the socket
    modeller.send_signal(signal.SIGCONT)
    assert wait(modeller) == 0, procs.output("modeller")
    assert [wait(w) for w in workers] == [0, 0]
    kept = results_lines(folder / "results" / "t-cli")
    assert len(kept) == 24


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_row_11_a_signal_cancels_the_task_and_writes_everything(
    procs: Processes, signum: int
) -> None:
    folder = procs.folder
    pods = ["a/p", "b/p"]
    task = task_file(folder, pods, slow_job(200, 0.05))
    modeller, port = procs.modeller("--task", task, "--results-dir", "results",
                                    "--algorithm", SLOW_ECHO)  # fmt: skip
    workers = [procs.worker(port, pod, "--algorithm", SLOW_ECHO) for pod in pods]
    results_path = folder / "results" / "t-cli" / "results.ndjson"
    deadline = time.monotonic() + 20
    while not (results_path.exists() and results_path.stat().st_size > 0):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    modeller.send_signal(signum)
    assert wait(modeller) == 130, procs.output("modeller")
    assert [wait(w) for w in workers] == [1, 1]
    outcome = strict_json((folder / "results" / "t-cli" / "outcome.json").read_bytes())
    assert outcome["status"] == "cancelled"
    assert outcome["stopped_by"] == signal.Signals(signum).name
    for pod in pods:
        assert outcome["workers"][pod]["abort_reason"] == "CANCELLED_BY_MODELLER"
    kept = {(r["worker"], r["batch_number"]) for r in results_lines(folder / "results" / "t-cli")}
    assert kept == {(r["worker"], r["batch"]) for r in outcome["results"]}
    assert "Traceback" not in procs.output("modeller")
    assert (folder / "results" / "t-cli" / "trace.ndjson").exists()


def test_row_11_a_kill_9_at_any_moment_leaves_files_that_parse(procs: Processes) -> None:
    folder = procs.folder
    pods = ["a/p", "b/p"]
    for attempt, delay in enumerate((0.2, 0.6, 1.0)):
        task = task_file(folder, pods, slow_job(100, 0.01))
        data = json.loads((folder / task).read_text())
        data["task_id"] = f"k-{attempt}"
        (folder / task).write_text(json.dumps(data))
        modeller, port = procs.modeller("--task", task, "--results-dir", "results",
                                        "--algorithm", SLOW_ECHO)  # fmt: skip
        workers = [
            procs.worker(port, pod, "--algorithm", SLOW_ECHO, "--retry-for", "1") for pod in pods
        ]
        time.sleep(delay)
        modeller.send_signal(signal.SIGKILL)
        modeller.wait()
        for worker in workers:
            wait(worker)
        path = folder / "results" / f"k-{attempt}"
        strict_json((path / "task.json").read_bytes())
        kept = list(read_results(path / "results.ndjson"))
        assert len(kept) == len((path / "results.ndjson").read_bytes().splitlines())
        assert not (path / "outcome.json").exists() or strict_json(
            (path / "outcome.json").read_bytes()
        )


def test_row_11_a_failed_write_leaves_the_old_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "outcome.json"
    write_atomic(target, b'{"old": true}\n')

    def broken(descriptor: int, data: bytes) -> None:
        os.write(descriptor, bytes(data[:3]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_results, "_write_all", broken)
    with pytest.raises(OSError):
        write_atomic(target, b'{"new": true}\n')
    assert json.loads(target.read_bytes()) == {"old": True}


# ------------------------------------------------------------------------ row 6


# Scheduler seed 10 reached a race (before it was fixed): the honest pod's retry took over the
# slot of its timed-out first connection while wait_for_pods saw "all in", so it returned
# without the pod and the retry was cut off.
@pytest.mark.parametrize("schedule", [None, 10])
def test_row_6_a_flood_of_idle_connections_only_delays_an_honest_worker(
    tmp_path: Path, schedule: int | None
) -> None:
    scheduler = getattr(trio._core._run, "_r", None)  # what trio's Hypothesis plugin seeds
    if schedule is not None and scheduler is not None:
        scheduler.seed(schedule)
    limits = Limits(handshake_timeout_s=0.5, max_pending_handshakes=4)
    # The worker waits longer for its welcome than the modeller gives an idle connection.
    patient = Limits(handshake_timeout_s=3.0)

    async def go() -> Any:
        listener = await PodListener.open(LOCAL, 0, pods=["a/p"], limits=limits)
        idle = [await trio.open_tcp_stream(LOCAL, listener.port) for _ in range(40)]
        async with trio.open_nursery() as nursery:
            admitted: dict[str, Any] = {}

            async def serve() -> None:
                admitted.update(await listener.wait_for_pods(30))

            nursery.start_soon(serve)
            transport = await connect(
                LOCAL, listener.port, pod_id="a/p", limits=patient, retry_for_s=20
            )
        for stream in idle:
            await stream.aclose()
        await transport.aclose()
        for other in admitted.values():
            await other.aclose()
        return admitted

    assert list(trio.run(go)) == ["a/p"]


# ------------------------------------------------------------------------ row 7


def test_row_7_a_restarted_worker_rejoins_its_slot_before_the_task_starts() -> None:
    async def go() -> list[str]:
        listener = await PodListener.open(LOCAL, 0, pods=["a/p", "b/p"])
        async with trio.open_nursery() as nursery:
            admitted: dict[str, Any] = {}

            async def serve() -> None:
                admitted.update(await listener.wait_for_pods(20))

            nursery.start_soon(serve)
            first = await connect(LOCAL, listener.port, pod_id="a/p")
            await first.aclose()  # the worker dies after its welcome
            await trio.sleep(0.05)
            second = await connect(LOCAL, listener.port, pod_id="a/p")  # and is restarted
            other = await connect(LOCAL, listener.port, pod_id="b/p")
        for transport in (second, other, *admitted.values()):
            await transport.aclose()
        return sorted(admitted)

    assert trio.run(go) == ["a/p", "b/p"]


def test_row_7_a_live_duplicate_is_still_refused() -> None:
    async def go() -> str:
        listener = await PodListener.open(LOCAL, 0, pods=["a/p", "b/p"])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(listener.wait_for_pods, 5)
            first = await connect(LOCAL, listener.port, pod_id="a/p")
            with pytest.raises(HandshakeError) as refused:
                await connect(LOCAL, listener.port, pod_id="a/p")
            await first.aclose()
            nursery.cancel_scope.cancel()
        await listener.aclose()
        return str(refused.value)

    assert "already connected" in trio.run(go)


# ------------------------------------------------------------------------ row 9


def test_row_9_a_job_request_with_1e999_is_refused_without_a_crash() -> None:
    key = generate_key()
    vet = require_signed_jobs([key.public_key()], pod_id="a/p")
    line = (
        b'{"v":1,"type":"JOB_REQUEST","task_id":"t","sender":"modeller","recipient":"a/p",'
        b'"seq":0,"meta":{},"body":{"protocol":{"class_name":"conformance.Echo","x":1e999},'
        b'"pod_identifiers":["a/p"],"batched_execution":false,"run_on_new_data_only":false,'
        b'"force_rerun_failed_files":false,"test_run":false,"project_id":null,'
        b'"options":{"signature":{"alg":"Ed25519","signed_at":1,"key":"x","value":"y"}}}}\n'
    )

    async def go() -> Any:
        modeller_end, worker_end = memory_transport_pair()
        await modeller_end.send_raw(line)
        await modeller_end.aclose()
        return await run_worker(Pod("a/p", vet=vet), worker_end)

    assert trio.run(go).state == "closed"


# ----------------------------------------------------------------------- row 10


def test_row_10_a_yaml_alias_bomb_is_refused_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{','.join([f'*{prev}'] * 9)}]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    started = time.monotonic()
    assert main(["validate", str(bomb)]) == 1
    assert time.monotonic() - started < 5
    assert "YAML aliases repeat more than 1000 nodes" in capsys.readouterr().out


@pytest.mark.parametrize("flow", [True, False])
def test_row_10_deep_yaml_nesting_is_a_located_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flow: bool
) -> None:
    deep = tmp_path / "deep.yaml"
    if flow:
        deep.write_text("chart: x\ninitial: a\nstates: " + "[" * 3000 + "]" * 3000 + "\n")
    else:
        body = "".join("  " * i + f"k{i}:\n" for i in range(1, 100)) + "  " * 100 + "v\n"
        deep.write_text("chart: x\ninitial: a\nstates:\n" + body)
    assert main(["validate", str(deep)]) == 1
    out = capsys.readouterr().out
    assert f"{deep}:" in out and "nesting" in out


# ----------------------------------------------------------------------- row 12


@pytest.mark.parametrize(
    "args",
    [
        ["worker", "--connect", "127.0.0.1:1", "--pod-id", "a/p", "--retry-for", "nan"],
        ["worker", "--connect", "127.0.0.1:1", "--pod-id", "a/p", "--job-timeout", "1e999"],
        ["worker", "--connect", "127.0.0.1:1", "--pod-id", "a/p", "--retry-for", "-1"],
        ["worker", "--connect", "127.0.0.1:1", "--pod-id", "a/p", "--send-timeout", "inf"],
    ],
)
def test_row_12_timeouts_refuse_nan_infinity_and_negatives(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    assert "at most 604800" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('{"pods":["a/p"],"job":{"protocol":{"class_name":"conformance.Echo"}},'
         '"response_timeout_s":NaN}', "NaN is not JSON"),
        ('{"pods":["a/p"],"job":{"protocol":{"class_name":"conformance.Echo"}},'
         '"response_timeout_s":1e999}', "finite number"),
        ('{"pods":["a/p"],"job":{"protocol":{"class_name":"conformance.Echo"}},'
         '"timeouts":{"cancel_timeout_s":1e300}}', "at most 604800"),
    ],
)  # fmt: skip
def test_row_12_a_task_file_with_nan_or_infinity_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, words: str
) -> None:
    task = tmp_path / "task.json"
    task.write_text(text)
    assert main(["modeller", "serve", "--listen", "127.0.0.1:0", "--task", str(task)]) == 2
    assert words in capsys.readouterr().err


# ------------------------------------------------------------------- smaller ones


def test_a_hello_reply_over_4096_bytes_is_a_handshake_error() -> None:
    async def go() -> str:
        async def modeller(stream: trio.SocketStream) -> None:
            await stream.receive_some(1000)
            await stream.send_all(b"x" * 10_000)

        listeners = await trio.open_tcp_listeners(0, host=LOCAL)
        port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, modeller, listeners)
            with pytest.raises(HandshakeError) as failed:
                await connect(LOCAL, port, pod_id="a/p")
            nursery.cancel_scope.cancel()
        return str(failed.value)

    assert "more than 4096 bytes" in trio.run(go)


def test_hello_v_true_is_refused() -> None:
    with pytest.raises(HandshakeError, match="version True"):
        parse_hello(b'{"hello":"fsm-protocol","v":true,"pod_id":"a/p"}\n')


def test_disk_full_stops_the_task_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = _results._write_all
    calls = {"results": 0}

    def full_after_two(descriptor: int, data: bytes) -> None:
        if data.startswith(b'{"worker"'):
            calls["results"] += 1
            if calls["results"] > 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        real(descriptor, data)

    monkeypatch.setattr(_results, "_write_all", full_after_two)
    result = trio.run(lambda: tcp_session(tmp_path, {}, batches=30))
    assert result.crashed is None and not result.hung
    assert result.status == "cancelled"
    outcome = strict_json((tmp_path / "fuzz" / "outcome.json").read_bytes())
    assert "No space left on device" in outcome["results_problem"]
    assert len(results_lines(tmp_path / "fuzz")) == 2
    claimed = {(r["worker"], r["batch"]) for r in outcome["results"]}
    written = {(r["worker"], r["batch_number"]) for r in results_lines(tmp_path / "fuzz")}
    assert claimed == written  # results that could not be kept are listed as such
    assert outcome["results_not_kept"]


@pytest.mark.parametrize("pod", [HONEST, HOSTILE])
def test_a_session_without_faults_completes_and_keeps_everything(tmp_path: Path, pod: str) -> None:
    result = trio.run(lambda: tcp_session(tmp_path, {}))
    assert result.status == "complete" and result.lost == 0 and result.crashed is None
    assert len(results_lines(tmp_path / "fuzz")) == 6
    assert pod in {r["worker"] for r in results_lines(tmp_path / "fuzz")}
    assert TIMEOUTS.cancel_timeout_s == 2.0


def test_replay_db_does_not_spend_a_task_id_on_a_job_it_rejects(tmp_path: Path) -> None:
    from fsm_protocol._net._auth import FileSeenJobs, JobSigner

    key = generate_key()
    seen = FileSeenJobs(tmp_path / "seen.sqlite")
    vet = require_signed_jobs([key.public_key()], pod_id="a/p", seen=seen)
    job = JobRequestBody(protocol={"class_name": "nobody.Knows"}, pod_identifiers=("a/p",))
    body = JobSigner(key).sign(job, task_id="t-1", sender="modeller", recipient="a/p")
    request = Message.make(
        MessageType.JOB_REQUEST,
        task_id="t-1",
        sender="modeller",
        recipient="a/p",
        seq=0,
        body=body,
    )

    async def go() -> Any:
        modeller_end, worker_end = memory_transport_pair()
        await modeller_end.send_raw(encode(request))
        report = await run_worker(Pod("a/p", vet=vet), worker_end)
        answer = await modeller_end.receive()
        return report, answer

    report, answer = trio.run(go)
    assert report.state == "rejected"
    assert answer.type is MessageType.JOB_REJECT and "TASK_SETUP_ERROR" in answer.body
    assert seen.remember("t-1", signed_at=time.time(), now=time.time())  # not used up


def test_kill_9_then_resume_ends_with_the_results_of_an_uninterrupted_run(
    procs: Processes,
) -> None:
    folder = procs.folder
    pods = ["a/p", "b/p"]
    task = task_file(folder, pods, slow_job(20, 0.05))
    args = ("--task", task, "--results-dir", "results", "--algorithm", SLOW_ECHO)
    modeller, port = procs.modeller(*args)
    workers = [procs.worker(port, p, "--algorithm", SLOW_ECHO, "--retry-for", "1") for p in pods]
    path = folder / "results" / "t-cli" / "results.ndjson"
    deadline = time.monotonic() + 20
    while not (path.exists() and path.read_bytes().count(b"\n") >= 8):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    modeller.send_signal(signal.SIGKILL)
    modeller.wait()
    for worker in workers:
        wait(worker)
    before = len(list(read_results(path)))
    assert 8 <= before < 40
    modeller, port = procs.modeller(*args, "--resume")
    workers = [procs.worker(port, p, "--algorithm", SLOW_ECHO) for p in pods]
    assert wait(modeller) == 0, procs.output("modeller")
    assert [wait(w) for w in workers] == [0, 0]
    kept = [(r.worker, r.batch_number) for r in read_results(path)]
    assert sorted(kept) == sorted((pod, batch) for pod in pods for batch in range(20))
    assert len(kept) == len(set(kept))  # each result once
    outcome = strict_json((folder / "results" / "t-cli" / "outcome.json").read_bytes())
    assert outcome["status"] == "complete"
    # Only the last kept batch of each pod was asked for again.
    assert len(outcome["results"]) <= 40 - before + len(pods)
    # The killed run left its trace as .partial; the resumed run's trace, whose pods start
    # at later batches, passes check.
    task_folder = folder / "results" / "t-cli"
    assert (task_folder / "trace.ndjson.partial").exists()
    assert main(["check", str(task_folder / "trace-2.ndjson")]) == 0


def test_row_4_boundaries_of_one_scheduler_round_share_one_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thousand pods reach their batch boundaries in bursts: one fsync covers a burst,
    and nothing is acknowledged as durable before that fsync."""
    folder, events = watched_folder(tmp_path, "t-burst", monkeypatch)
    pods = [f"org/pod-{n}" for n in range(50)]

    def boundary(pod: str) -> Message:
        return Message.make(
            MessageType.BATCHES_COMPLETE,
            task_id="t",
            sender=pod,
            recipient="modeller",
            seq=5,
            body="BATCHES_ONLY",
        )

    async def main() -> None:
        for pod in pods:  # one round: every pod's result, then its boundary
            folder.on_message(pod, _result(pod, 1))
            folder.on_message(pod, boundary(pod))
        assert events == []  # nothing is durable yet, so nothing may be acknowledged
        await trio.testing.wait_all_tasks_blocked()
        assert events[0] == "fsync"
        assert events[1:] == [(pod, "BATCHES_COMPLETE", 5) for pod in pods]
        folder.on_message(pods[0], _result(pods[0], 2))  # the next round syncs again
        folder.on_message(pods[0], boundary(pods[0]))
        await trio.testing.wait_all_tasks_blocked()
        assert events[-2:] == ["fsync", (pods[0], "BATCHES_COMPLETE", 5)]

    trio.run(main)
    assert events.count("fsync") == 2
    assert len(list(read_results(folder.path / "results.ndjson"))) == 51
    folder.close()
