"""``modeller serve``, ``worker`` and ``keys``: real processes on 127.0.0.1.

Each process test starts the modeller with ``--listen 127.0.0.1:0 --port-file``
and its workers with the commands a person would type, then checks exit
codes, printed outcomes and the results folder.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trustme

from fsm_protocol._cli._main import main
from fsm_protocol._cli._net_cli import load_task, parse_address

REPO = Path(__file__).resolve().parent.parent
SLOW_ECHO = "tests.net_algorithms:SLOW_ECHO"


# ------------------------------------------------------------- in-process


def test_keys_generate_writes_a_private_key_only_its_owner_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "generate", "-o", str(tmp_path / "keys")]) == 0
    private, public = tmp_path / "keys" / "modeller.key", tmp_path / "keys" / "modeller.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert public.read_text().startswith("ed25519:")
    assert "fingerprint sha256:" in capsys.readouterr().out
    assert main(["keys", "generate", "-o", str(tmp_path / "keys")]) == 2
    assert "exists; use --force" in capsys.readouterr().err
    old = public.read_text()
    assert main(["keys", "generate", "-o", str(tmp_path / "keys"), "--force"]) == 0
    assert public.read_text() != old


def write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


ECHO_JOB = {"protocol": {"class_name": "conformance.Echo", "items": ["a", "b", "c"]}}


def test_a_task_file_gets_the_wire_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path / "task.json",
        {"pods": ["a/p", "b/p"], "job": ECHO_JOB, "job_overrides": {"b/p": {"items": ["z"]}}},
    )
    task = load_task(path)
    assert task.pods == ("a/p", "b/p")
    assert task.jobs["a/p"].pod_identifiers == ("a/p", "b/p")
    assert task.jobs["a/p"].batched_execution is False
    assert task.jobs["b/p"].protocol["items"] == ["z"]
    assert task.timeouts.response_timeout_s == 300
    plain = write(tmp_path / "plain.json", {"pods": ["a/p"], "job": ECHO_JOB})
    assert load_task(plain, pods=["c/p"]).pods == ("c/p",)  # --pods replaces the list


@pytest.mark.parametrize(
    ("data", "text"),
    [
        ({"pods": ["a/p"], "job": {**ECHO_JOB, "batched_execution": 1}},
         "field $.job.batched_execution: expected a bool, found 1"),
        ({"job": ECHO_JOB}, "no pods"),
        ({"pods": ["a/p"], "job": ECHO_JOB, "job_overrides": {"x/p": {}}},
         "$.job_overrides names x/p, not among the pods"),
        ({"pods": ["a/p"], "job": ECHO_JOB, "timeouts": {"soft_timeout_s": 1}},
         "worker timeouts go in $.job.options"),
        ({"pods": ["a/p", "a/p"], "job": ECHO_JOB}, "pod ids must be unique"),
        ([1, 2], "expected a JSON object"),
    ],
)  # fmt: skip
def test_a_bad_task_file_is_reported_with_its_json_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data: Any, text: str
) -> None:
    path = write(tmp_path / "task.json", data)
    assert main(["modeller", "serve", "--listen", "127.0.0.1:0", "--task", str(path)]) == 2
    assert text in capsys.readouterr().err


def test_addresses_are_host_and_port() -> None:
    assert parse_address("127.0.0.1:8765") == ("127.0.0.1", 8765)
    assert parse_address("[::1]:80") == ("::1", 80)
    for bad in ("8765", "host:", "host:99999", ":80"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_address(bad)


# ---------------------------------------------------------------- processes


class Processes:
    """Starts ``fsm-protocol`` processes and never leaves one behind."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: list[subprocess.Popen[str]] = []

    def start(self, *args: str, name: str) -> subprocess.Popen[str]:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        out_path, err_path = self.folder / f"{name}.out", self.folder / f"{name}.err"
        with out_path.open("w") as out, err_path.open("w") as err:
            process = subprocess.Popen(
                [sys.executable, "-m", "fsm_protocol", *args],
                cwd=self.folder,
                env=env,
                stdout=out,
                stderr=err,
                text=True,
            )
        self.started.append(process)
        return process

    def output(self, name: str) -> str:
        return (self.folder / f"{name}.out").read_text() + (self.folder / f"{name}.err").read_text()

    def modeller(self, *args: str) -> tuple[subprocess.Popen[str], int]:
        port_file = self.folder / "port"
        port_file.unlink(missing_ok=True)
        process = self.start(
            "modeller", "serve", "--listen", "127.0.0.1:0", "--port-file", str(port_file),
            *args, name="modeller",
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while not port_file.exists():
            assert process.poll() is None, self.output("modeller")
            assert time.monotonic() < deadline, "the modeller did not start listening"
            time.sleep(0.02)
        return process, int(port_file.read_text())

    def worker(self, port: int, pod: str, *args: str) -> subprocess.Popen[str]:
        name = pod.replace("/", "-")
        return self.start(
            "worker", "--connect", f"127.0.0.1:{port}", "--pod-id", pod, *args, name=name
        )

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
            process.wait()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    processes = Processes(tmp_path)
    try:
        yield processes
    finally:
        processes.stop_all()


def wait(process: subprocess.Popen[str], timeout: float = 30) -> int:
    return process.wait(timeout=timeout)


def dev_certs(folder: Path) -> None:
    """What ``python -m trustme -i 127.0.0.1`` writes: server.pem/.key, client.pem (the CA)."""
    authority = trustme.CA()
    server = authority.issue_cert("127.0.0.1")
    server.private_key_and_cert_chain_pem.write_to_path(str(folder / "server.pem"))
    server.private_key_pem.write_to_path(str(folder / "server.key"))
    authority.cert_pem.write_to_path(str(folder / "client.pem"))


def task_file(folder: Path, pods: Sequence[str], job: Any, **extra: Any) -> str:
    write(folder / "task.json", {"task_id": "t-cli", "pods": list(pods), "job": job, **extra})
    return "task.json"


def results(folder: Path) -> list[dict[str, Any]]:
    lines = (folder / "results" / "t-cli" / "results.ndjson").read_text().splitlines()
    return [json.loads(line) for line in lines]


def outcome(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / "results" / "t-cli" / "outcome.json").read_text())
    return data


def test_a_modeller_and_two_workers_finish_a_task_over_tls(procs: Processes) -> None:
    folder = procs.folder
    dev_certs(folder)
    assert main(["keys", "generate", "-o", str(folder / "keys")]) == 0
    job = {
        "protocol": {"class_name": "conformance.Echo", "items": [f"i{n}" for n in range(8)],
                     "batch_size": 3},
        "batched_execution": True,
    }  # fmt: skip
    task = task_file(folder, ["alice/pod-a", "bob/pod-b"], job)
    modeller, port = procs.modeller(
        "--task", task, "--tls-cert", "server.pem", "--tls-key", "server.key",
        "--signing-key", "keys/modeller.key", "--results-dir", "results",
    )  # fmt: skip
    trust = ["--ca", "client.pem", "--trust-key", "keys/modeller.pub"]
    workers = [procs.worker(port, pod, *trust) for pod in ("alice/pod-a", "bob/pod-b")]
    assert [wait(w) for w in workers] == [0, 0]
    assert wait(modeller) == 0, procs.output("modeller")
    printed = procs.output("modeller")
    assert "task t-cli: complete (2 workers, 6 results" in printed
    assert "(TLS)" in printed and "signing job requests with key sha256:" in printed
    assert "pod alice/pod-a: complete (8 delivered, 0 failed" in procs.output("alice-pod-a")
    assert len(results(folder)) == 6
    assert outcome(folder)["status"] == "complete"
    assert (folder / "results" / "t-cli" / "trace.ndjson").exists()


def test_a_worker_refuses_a_modeller_key_it_does_not_trust(procs: Processes) -> None:
    folder = procs.folder
    main(["keys", "generate", "-o", str(folder / "keys")])
    main(["keys", "generate", "-o", str(folder / "keys"), "--name", "other"])
    task = task_file(folder, ["a/p"], ECHO_JOB)
    modeller, port = procs.modeller("--task", task, "--signing-key", "keys/other.key")
    worker = procs.worker(port, "a/p", "--trust-key", "keys/modeller.pub")
    assert wait(worker) == 1
    assert wait(modeller) == 1
    assert "pod a/p: rejected (UNAUTHORISED: the job is signed by modeller key" in procs.output(
        "a-p"
    )
    assert "a/p  rejected" in procs.output("modeller")


def slow_job(batches: int, delay_s: float, **options: float) -> dict[str, Any]:
    return {
        "protocol": {"class_name": "test.SlowEcho", "items": [f"i{n}" for n in range(batches)],
                     "batch_size": 1, "delay_s": delay_s},
        "batched_execution": True,
        "options": options,
    }  # fmt: skip


def wait_for_results(folder: Path, pod: str, count: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    path = folder / "results" / "t-cli" / "results.ndjson"
    while time.monotonic() < deadline:
        if path.exists() and sum(r["worker"] == pod for r in results(folder)) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"{pod} did not deliver {count} results within {timeout} s")


def test_a_killed_worker_is_named_and_every_result_it_sent_is_kept(procs: Processes) -> None:
    folder = procs.folder
    pods = ["a/p", "b/p", "c/p"]
    task = task_file(folder, pods, slow_job(40, 0.1))
    modeller, port = procs.modeller(
        "--task", task, "--results-dir", "results", "--algorithm", SLOW_ECHO
    )
    workers = {pod: procs.worker(port, pod, "--algorithm", SLOW_ECHO) for pod in pods}
    wait_for_results(folder, "b/p", 2)
    workers["b/p"].send_signal(signal.SIGKILL)
    assert wait(modeller) == 1
    assert [wait(workers[p]) for p in ("a/p", "c/p")] == [1, 1]
    end = outcome(folder)
    assert end["status"] == "aborted"
    assert [p for p, w in end["workers"].items() if w["state"] == "lost"] == ["b/p"]
    assert "connection" in end["workers"]["b/p"]["problem"]
    for pod in ("a/p", "c/p"):
        assert end["workers"][pod]["abort_reason"] == "CANCELLED_BY_MODELLER"
    # Every result received is in the outcome and in the results folder, the killed one's too.
    kept = sorted((r["worker"], r["batch"]) for r in end["results"])
    written = sorted((r["worker"], r["batch_number"]) for r in results(folder))
    assert kept == written
    from_b = [batch for worker, batch in kept if worker == "b/p"]
    assert len(from_b) >= 2 and from_b == list(range(len(from_b)))
    assert "b/p" in procs.output("modeller") and "lost" in procs.output("modeller")


def test_workers_of_a_vanished_modeller_end_through_the_liveness_timeouts(
    procs: Processes,
) -> None:
    folder = procs.folder
    pods = ["a/p", "b/p"]
    job = slow_job(6, 0.1, soft_timeout_s=0.5, hard_timeout_s=0.5)
    task = task_file(folder, pods, job)
    modeller, port = procs.modeller(
        "--task", task, "--results-dir", "results", "--algorithm", SLOW_ECHO
    )
    workers = {pod: procs.worker(port, pod, "--algorithm", SLOW_ECHO) for pod in pods}
    wait_for_results(folder, "a/p", 1)
    modeller.send_signal(signal.SIGSTOP)  # alive to TCP, silent to the workers
    started = time.monotonic()
    try:
        assert [wait(workers[p], timeout=15) for p in pods] == [1, 1]
    finally:
        modeller.send_signal(signal.SIGKILL)
    assert time.monotonic() - started < 10
    for pod in pods:
        assert (
            "aborted (MODELLER_TIMEOUT: timed out waiting for an answer to ONLINE_CHECK"
            in procs.output(pod.replace("/", "-"))
        )
