"""``modeller serve --broker`` and ``worker --broker`` as processes, as docs/network.md shows.

Each test starts its own ``nats-server`` (or three) on 127.0.0.1 and runs
``fsm-protocol`` processes against it; every wait is bounded, and every
process is killed at the end. The pod faults live here because killing a pod
means killing its process.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import trustme

from fsm_protocol._cli._main import main
from tests.broker_servers import NatsCluster, NatsServer, nats_cluster, nats_server
from tests.test_net_cli import (
    SLOW_ECHO,
    Processes,
    outcome,
    procs,
    results,
    slow_job,
    task_file,
    wait,
    wait_for_results,
)

__all__ = ["nats_cluster", "nats_server", "procs"]  # the fixtures, imported for pytest


def modeller(procs: Processes, urls: str, *args: str, name: str = "modeller") -> None:
    procs.start(
        "modeller", "serve", "--broker", urls, "--task", "task.json", "--results-dir", "results",
        "--algorithm", SLOW_ECHO, *args, name=name,
    )  # fmt: skip


def worker(procs: Processes, url: str, pod: str, *args: str, name: str | None = None) -> None:
    procs.start(
        "worker", "--broker", url, "--pod-id", pod, "--algorithm", SLOW_ECHO, *args,
        name=name or pod.replace("/", "-"),
    )  # fmt: skip


def assert_every_result_once(
    folder: Path,
    pods: list[str],
    batches: int,
    trace_name: str = "trace.ndjson",
    *,
    resumed_from_batch: bool = False,
) -> None:
    end = outcome(folder)
    assert end["status"] == "complete", end
    written = Counter((r["worker"], r["batch_number"]) for r in results(folder))
    assert written == Counter({(pod, n): 1 for pod in pods for n in range(batches)})
    kept = sorted((r["worker"], r["batch"]) for r in end["results"])
    if not resumed_from_batch:
        assert kept == sorted(written)
    else:  # the outcome describes the last run only (docs/network.md, "Resuming")
        assert set(kept) <= set(written)
    trace = folder / "results" / "t-cli" / trace_name
    applied = Counter(
        (m["sender"], m["recipient"], m["seq"])
        for m in map(json.loads, trace.read_text().splitlines())
    )
    assert [key for key, n in applied.items() if n > 1] == []
    # A resumed run's pods start at a later batch (options.resume_from_batch): check knows.
    assert main(["check", str(trace)]) == 0


def test_a_signed_task_runs_through_a_local_server_from_the_cli(
    procs: Processes, nats_server: NatsServer
) -> None:
    folder = procs.folder
    assert main(["keys", "generate", "-o", str(folder / "keys")]) == 0
    pods = ["alice/pod-a", "bob/pod-b"]
    task_file(folder, pods, slow_job(4, 0.0))
    for pod in pods:
        worker(procs, nats_server.url, pod, "--trust-key", "keys/modeller.pub")
    modeller(procs, nats_server.url, "--signing-key", "keys/modeller.key")
    assert wait(procs.started[-1]) == 0, procs.output("modeller")
    for process in procs.started[:-1]:
        assert wait(process) == 0
    assert_every_result_once(folder, pods, 4)
    for pod in pods:
        assert "complete (4 delivered" in procs.output(pod.replace("/", "-"))


def test_a_worker_refuses_a_job_signed_by_a_key_it_does_not_trust(
    procs: Processes, nats_server: NatsServer
) -> None:
    folder = procs.folder
    for name in ("mine", "other"):
        assert main(["keys", "generate", "-o", str(folder / "keys"), "--name", name]) == 0
    task_file(folder, ["a/p"], slow_job(2, 0.0))
    worker(procs, nats_server.url, "a/p", "--trust-key", "keys/mine.pub")
    modeller(procs, nats_server.url, "--signing-key", "keys/other.key")
    assert wait(procs.started[-1]) == 1
    assert wait(procs.started[0]) == 1
    assert "rejected" in procs.output("a-p")
    assert outcome(folder)["workers"]["a/p"]["state"] == "rejected"


@pytest.mark.slow  # several processes and a real ack wait
def test_a_task_runs_through_a_three_node_cluster_from_the_cli(
    procs: Processes, nats_cluster: NatsCluster
) -> None:
    folder = procs.folder
    pods = ["a/p", "b/p", "c/p"]
    task_file(folder, pods, slow_job(3, 0.0))
    for pod, url in zip(pods, nats_cluster.urls, strict=True):
        worker(procs, url, pod)  # each pod dials a different node
    modeller(procs, ",".join(nats_cluster.urls), "--replicas", "3")
    assert wait(procs.started[-1]) == 0, procs.output("modeller")
    assert_every_result_once(folder, pods, 3)


def test_a_serving_pod_runs_offered_tasks_one_after_another_and_stops_on_sigterm(
    procs: Processes, nats_server: NatsServer
) -> None:
    folder = procs.folder
    procs.start(
        "worker", "--broker", nats_server.url, "--pod-id", "a/p", "--serve",
        "--algorithm", SLOW_ECHO, name="pod",
    )  # fmt: skip
    pod = procs.started[0]
    for task_id in ("t-1", "t-2"):
        (folder / "task.json").write_text(
            json.dumps({"task_id": task_id, "pods": ["a/p"], "job": slow_job(2, 0.0)})
        )
        modeller(procs, nats_server.url)
        assert wait(procs.started[-1]) == 0, procs.output("modeller")
    pod.send_signal(signal.SIGTERM)
    assert wait(pod, timeout=10) == 0
    out = procs.output("pod")
    assert "task t-1: pod a/p: complete" in out
    assert "task t-2: pod a/p: complete" in out


@pytest.mark.slow  # several processes and a real ack wait
def test_a_pod_killed_holding_unacked_messages_and_restarted(
    procs: Processes, nats_server: NatsServer
) -> None:
    folder = procs.folder
    pods = ["a/p", "b/p"]
    task_file(folder, pods, slow_job(12, 0.1))
    modeller(procs, nats_server.url, "--ack-wait", "1")
    worker(procs, nats_server.url, "a/p", "--ack-wait", "1")
    worker(procs, nats_server.url, "b/p", "--ack-wait", "1", name="b-first")
    wait_for_results(folder, "b/p", 3)
    procs.started[-1].send_signal(signal.SIGKILL)
    assert wait(procs.started[-1]) == -signal.SIGKILL
    worker(procs, nats_server.url, "b/p", "--ack-wait", "1", name="b-again")
    assert wait(procs.started[0]) == 0, procs.output("modeller")
    assert wait(procs.started[-1]) == 0, procs.output("b-again")
    assert_every_result_once(folder, pods, 12)


@pytest.mark.slow  # several processes and a real ack wait
def test_a_pod_offline_longer_than_its_ack_wait_then_back(
    procs: Processes, nats_server: NatsServer
) -> None:
    folder = procs.folder
    pods = ["a/p", "b/p"]
    task_file(folder, pods, slow_job(10, 0.1))
    modeller(procs, nats_server.url, "--ack-wait", "1")
    worker(procs, nats_server.url, "a/p", "--ack-wait", "1")
    worker(procs, nats_server.url, "b/p", "--ack-wait", "1")
    wait_for_results(folder, "b/p", 2)
    stopped = procs.started[-1]
    stopped.send_signal(signal.SIGSTOP)  # offline: its deliveries go unacknowledged
    time.sleep(3)  # longer than the ack wait, so the broker delivers them again
    stopped.send_signal(signal.SIGCONT)
    assert wait(procs.started[0]) == 0, procs.output("modeller")
    assert wait(stopped) == 0
    assert_every_result_once(folder, pods, 10)


def test_tls_and_a_password_to_the_broker(
    procs: Processes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = procs.folder
    authority = trustme.CA()
    authority.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(folder / "broker.pem")
    )
    authority.cert_pem.write_to_path(str(folder / "ca.pem"))
    server = NatsServer(
        tmp_path / "tls-nats" / "store",
        extra=(
            "--tls", "--tlscert", str(folder / "broker.pem"),
            "--tlskey", str(folder / "broker.pem"), "--user", "fsmp", "--pass", "s3cret",
        ),
    )  # fmt: skip
    try:
        server.start()
        url = f"tls://127.0.0.1:{server.port}"
        task_file(folder, ["a/p"], slow_job(2, 0.0))
        auth = ("--broker-ca", "ca.pem", "--broker-user", "fsmp")
        monkeypatch.setenv("NATS_PASSWORD", "wrong")
        worker(procs, url, "a/p", *auth, "--retry-for", "2", name="refused")
        assert wait(procs.started[-1]) == 2
        assert "authorization" in procs.output("refused").lower()
        monkeypatch.setenv("NATS_PASSWORD", "s3cret")
        worker(procs, url, "a/p", *auth)
        modeller(procs, url, *auth)
        assert wait(procs.started[-1]) == 0, procs.output("modeller")
        assert_every_result_once(folder, ["a/p"], 2)
    finally:
        server.stop()


def test_the_modeller_killed_and_resumed(procs: Processes, nats_server: NatsServer) -> None:
    folder = procs.folder
    pods = ["a/p", "b/p"]
    task_file(folder, pods, slow_job(20, 0.1))  # 2 s a pod: it goes on past the kill
    modeller(procs, nats_server.url, name="modeller-first")
    for pod in pods:
        worker(procs, nats_server.url, pod)
    first, workers = procs.started[0], procs.started[1:]
    wait_for_results(folder, "a/p", 4)
    wait_for_results(folder, "b/p", 4)
    first.send_signal(signal.SIGKILL)
    assert wait(first) == -signal.SIGKILL
    before = len(results(folder))
    assert 8 <= before < 40
    # The pods stay online: the broker holds what they send while no modeller reads it.
    assert [w.poll() for w in workers] == [None, None]
    modeller(procs, nats_server.url, "--resume", name="modeller-resumed")
    assert wait(procs.started[-1]) == 0, procs.output("modeller-resumed")
    assert [wait(w) for w in workers] == [0, 0]
    assert "replaying the modeller's inbox" in procs.output("modeller-resumed")
    # The resumed run's trace (trace-2.ndjson) holds the whole conversation, replayed.
    assert_every_result_once(folder, pods, 20, trace_name="trace-2.ndjson")
    for pod in pods:
        assert "complete (20 delivered" in procs.output(pod.replace("/", "-"))


def test_resumed_without_the_stream_the_pods_start_again_from_their_last_kept_batch(
    procs: Processes, nats_server: NatsServer
) -> None:
    folder = procs.folder
    pods = ["a/p", "b/p"]
    task_file(folder, pods, slow_job(20, 0.05))
    modeller(procs, nats_server.url, name="modeller-first")
    for pod in pods:
        worker(procs, nats_server.url, pod, "--ack-wait", "1", name=f"{pod[0]}-first")
    wait_for_results(folder, "a/p", 4)
    wait_for_results(folder, "b/p", 4)
    for process in procs.started:
        process.send_signal(signal.SIGKILL)
        assert wait(process) == -signal.SIGKILL
    before = len(results(folder))
    assert 8 <= before < 40

    # In a process of its own: asyncio.run here would run on the event loop policy
    # that trio-asyncio installs in this process, and upset the tests after it.
    remove = (
        "import asyncio, sys, nats\n"
        "async def remove():\n"
        "    client = await nats.connect(sys.argv[1])\n"
        "    try:\n"
        "        await client.jetstream().delete_stream('FSMP_t-cli')\n"
        "    finally:\n"
        "        await client.close()\n"
        "asyncio.run(remove())\n"
    )
    subprocess.run([sys.executable, "-c", remove, nats_server.url], check=True, timeout=30)
    for pod in pods:
        worker(procs, nats_server.url, pod, "--ack-wait", "1")
    modeller(procs, nats_server.url, "--resume", name="modeller-resumed")
    assert wait(procs.started[-1]) == 0, procs.output("modeller-resumed")
    assert [wait(w) for w in procs.started[-3:-1]] == [0, 0]
    # As over direct TCP: only each pod's last kept batch was asked for again.
    assert len(outcome(folder)["results"]) <= 40 - before + len(pods)
    assert_every_result_once(folder, pods, 20, "trace-2.ndjson", resumed_from_batch=True)
