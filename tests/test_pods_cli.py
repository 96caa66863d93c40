"""``fsm-protocol worker --pods N``: N pods in one process against a real ``modeller serve``.

The modeller listens on 127.0.0.1 with TLS and signs its job requests; one
worker process runs every pod, each with its own connection and identity.
"""

from __future__ import annotations

import argparse
from collections import Counter

import pytest

from fsm_protocol._cli._main import main
from fsm_protocol._cli._pods import pod_ids, pods_count
from tests.test_net_cli import ECHO_JOB, Processes, dev_certs, outcome, procs, results, task_file

__all__ = ["procs"]  # the fixture, used below


def test_pod_ids_count_from_zero_under_the_pod_id() -> None:
    assert pod_ids("alice/pod", 3) == ["alice/pod-0", "alice/pod-1", "alice/pod-2"]


@pytest.mark.parametrize("text", ["0", "-1", "two", "1.5", "100001"])
def test_a_pod_count_outside_1_to_the_bound_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="expected"):
        pods_count(text)


def test_the_worker_command_refuses_pods_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["worker", "--connect", "127.0.0.1:1", "--pod-id", "a/p", "--pods", "0"])
    assert exited.value.code == 2
    assert "--pods: expected 1 to 100000, found 0" in capsys.readouterr().err


def test_one_process_serves_a_task_as_many_pods_over_tls(procs: Processes) -> None:
    folder = procs.folder
    dev_certs(folder)
    assert main(["keys", "generate", "-o", str(folder / "keys")]) == 0
    pods = pod_ids("org/pod", 12)
    job = {
        "protocol": {"class_name": "conformance.Echo", "items": ["i0", "i1", "i2"]},
        "batched_execution": True,
    }
    task = task_file(folder, pods, job)
    modeller, port = procs.modeller(
        "--task", task, "--tls-cert", "server.pem", "--tls-key", "server.key",
        "--signing-key", "keys/modeller.key", "--results-dir", "results",
    )  # fmt: skip
    trust = ["--ca", "client.pem", "--trust-key", "keys/modeller.pub"]
    worker = procs.worker(port, "org/pod", "--pods", "12", "-q", *trust)
    assert worker.wait(timeout=60) == 0, procs.output("org-pod")
    assert modeller.wait(timeout=60) == 0, procs.output("modeller")
    printed = procs.output("org-pod").splitlines()
    assert sorted(printed) == sorted(
        f"pod {pod}: complete (3 delivered, 0 failed, 0 cut, 0 not run)" for pod in pods
    )
    ended = outcome(folder)
    assert ended["status"] == "complete"
    assert sorted(ended["workers"]) == sorted(pods)
    # Each pod said hello as itself and sent its own results, one per batch.
    assert Counter(line["worker"] for line in results(folder)) == {pod: 3 for pod in pods}


def test_pods_that_are_not_in_the_task_are_reported_one_by_one(procs: Processes) -> None:
    folder = procs.folder
    task = task_file(folder, ["org/pod-0"], ECHO_JOB)
    modeller, port = procs.modeller("--task", task, "--connect-timeout", "10")
    worker = procs.worker(port, "org/pod", "--pods", "2", "-q", "--retry-for", "2")
    assert worker.wait(timeout=60) == 2, procs.output("org-pod")
    assert modeller.wait(timeout=60) == 0, procs.output("modeller")
    printed = procs.output("org-pod")
    assert "pod org/pod-0: complete (3 delivered" in printed
    # Refused at its hello if it got there while the modeller was still listening, or
    # unable to connect once the task had all its pods: either way, on its own line.
    (line,) = [text for text in printed.splitlines() if text.startswith("pod org/pod-1:")]
    assert (
        "refused this worker: pod 'org/pod-1' is not part of this task" in line
        or "cannot connect to the modeller" in line
    ), printed
