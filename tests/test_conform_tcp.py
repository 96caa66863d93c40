"""The conformance kit over TCP (``--transport tcp``), on loopback, against the CLI's engine.

For ``--role worker`` the kit listens and starts the command once per pod with
``{host}``, ``{port}`` and ``{pod}`` filled in; for ``--role modeller`` it writes
the scenario as TASK.json (``{task}``), starts the command on ``{port}`` (or
reads ``{port_file}``), and connects every pod.
"""

from __future__ import annotations

import sys

import pytest

from fsm_protocol import ConfigError
from fsm_protocol._cli._main import main
from fsm_protocol.conformance import Verdict, conform

PY = sys.executable
CLI = [PY, "-m", "fsm_protocol"]
WORKER = [*CLI, "worker", "--connect", "{host}:{port}", "--pod-id", "{pod}", "-q"]
MODELLER = [*CLI, "modeller", "serve", "--listen", "{host}:{port}", "--task", "{task}", "-q"]

# Named cases that between them take in several pods, cancellation, a dropped
# link, a garbled line, an invalid first line, aborts, rejections and silence.
WORKER_CASES = [
    "batches",
    "three-pods",
    "cancel-during-batches",
    "link-drops",
    "garbled-line",
    "invalid-first-line",
]
MODELLER_CASES = ["batches", "two-pods", "pod-aborts", "pod-rejects", "silent-pod"]

GARBAGE_WORKER = """
import sys, trio
from fsm_protocol._net._tcp import connect

async def main():
    conn = await connect(sys.argv[1], int(sys.argv[2]), pod_id=sys.argv[3])
    await conn.receive()  # the JOB_REQUEST
    await conn.send_line(b"hello world\\n")
    await trio.sleep(5)

trio.run(main)
"""


async def test_the_engine_worker_passes_over_tcp() -> None:
    report = await conform(
        role="worker", command=WORKER, scenarios=WORKER_CASES, transport="tcp", seed=1
    )
    report.assert_passed()
    assert report.transport == "tcp"
    assert [case.name for case in report.cases] == WORKER_CASES


async def test_the_engine_modeller_passes_over_tcp() -> None:
    report = await conform(
        role="modeller", command=MODELLER, scenarios=MODELLER_CASES, transport="tcp", seed=1
    )
    report.assert_passed()
    assert [case.name for case in report.cases] == MODELLER_CASES


async def test_a_modeller_may_report_its_port_in_a_file() -> None:
    command = [*CLI, "modeller", "serve", "--listen", "{host}:0", "--port-file", "{port_file}"]
    command += ["--task", "{task}", "-q"]
    report = await conform(
        role="modeller", command=command, scenarios=["single-run"], transport="tcp", seed=1
    )
    report.assert_passed()


async def test_a_worker_that_sends_garbage_over_tcp_fails_quoting_the_line() -> None:
    command = [PY, "-c", GARBAGE_WORKER, "{host}", "{port}", "{pod}"]
    report = await conform(
        role="worker", command=command, scenarios=["single-run"], transport="tcp", seed=1
    )
    (case,) = report.cases
    assert case.verdict is Verdict.FAIL, case.reason
    assert case.reason.startswith("invalid message: field $: expected JSON"), case.reason
    assert case.finding is not None and case.finding.text == "hello world"


async def test_a_worker_that_never_connects_fails_at_once() -> None:
    command = [PY, "-c", "import sys; sys.stderr.write('no route\\n'); sys.exit(2)", "{port}"]
    report = await conform(
        role="worker", command=command, scenarios=["single-run"], transport="tcp", seed=1
    )
    (case,) = report.cases
    assert case.verdict is Verdict.FAIL
    assert "did not connect" in case.reason and "exited with status 2" in case.reason
    assert "no route" in case.reason
    assert case.duration_s < 4


async def test_a_modeller_that_never_listens_fails() -> None:
    command = [PY, "-c", "import sys; sys.exit(0)", "{port}", "{task}"]
    report = await conform(
        role="modeller", command=command, scenarios=["single-run"], transport="tcp", seed=1
    )
    (case,) = report.cases
    assert case.verdict is Verdict.FAIL
    assert "exited with status 0 before pod" in case.reason


@pytest.mark.parametrize(
    ("role", "command", "needs"),
    [
        ("worker", ["w", "--pod-id", "{pod}"], "{port}"),
        ("modeller", ["m", "--task", "{task}"], "{port}"),
        ("modeller", ["m", "--listen", "{host}:{port}"], "{task}"),
    ],
)
async def test_a_command_without_the_placeholders_is_a_config_error(
    role: str, command: list[str], needs: str
) -> None:
    with pytest.raises(ConfigError, match=needs.replace("{", r"\{").replace("}", r"\}")):
        await conform(role=role, command=command, transport="tcp", scenarios=["single-run"])


def test_cli_offers_the_tcp_transport(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["conform", "--role", "worker", "--transport", "tcp", "--scenario", "single-run"]
    assert main([*args, "--", *WORKER]) == 0
    assert "1 cases: 1 passed" in capsys.readouterr().out.replace("\n", " ")
