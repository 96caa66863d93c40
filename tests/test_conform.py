"""The conformance kit's runner: verdicts on misbehaving commands, reports, CLI and API.

The example implementations and their broken variants are in test_examples.py;
here the commands are one-liners that crash, babble, or hang.
"""

from __future__ import annotations

import json
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from fsm_protocol import ConfigError, Role
from fsm_protocol._cli._main import main
from fsm_protocol.conformance import (
    Echo,
    Report,
    Scenario,
    Verdict,
    catalogue,
    conform,
    generated_scenarios,
    run_conformance,
)

PY = sys.executable
EXAMPLES = Path(__file__).parent.parent / "examples"
WORKER = [PY, str(EXAMPLES / "plain_worker.py")]


def _py(code: str) -> list[str]:
    return [PY, "-c", code]


# ------------------------------------------------------------------------ catalogue


@pytest.mark.parametrize("role", list(Role))
def test_catalogue_names_are_unique_and_described(role: Role) -> None:
    scenarios = catalogue(role)
    names = [s.name for s in scenarios]
    assert len(names) == len(set(names))
    assert all(s.role is role and s.description for s in scenarios)
    assert len(scenarios) >= 20


def test_generated_scenarios_replay_from_their_seed() -> None:
    first = generated_scenarios(Role.WORKER, seed=7, count=6)
    again = generated_scenarios(Role.WORKER, seed=7, count=6)
    assert first == again and len(first) == 6
    assert [s.name for s in first] == [f"generated-{n}" for n in range(1, 7)]
    assert generated_scenarios(Role.WORKER, seed=8, count=6) != first
    assert all("seed 7" in s.description for s in first)


async def test_unknown_scenarios_and_arguments_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="did you mean 'batches'"):
        await conform(role="worker", command=WORKER, scenarios=["batchess"])
    with pytest.raises(ConfigError, match="no command"):
        await conform(role="worker", command=[])
    with pytest.raises(ConfigError, match="unknown transport 'pigeon'"):
        await conform(role="worker", command=WORKER, transport="pigeon")
    with pytest.raises(ConfigError, match="jobs must be at least 1, found 0"):
        await conform(role="worker", command=WORKER, jobs=0)
    with pytest.raises(ConfigError, match="other role"):
        await conform(role="modeller", command=WORKER, scenarios=[catalogue(Role.WORKER)[0]])


# ------------------------------------------------------- misbehaving workers under test


async def _one(role: str, command: list[str], name: str, **kwargs: object) -> Report:
    return await conform(role=role, command=command, scenarios=[name], seed=1, **kwargs)  # type: ignore[arg-type]


async def test_a_worker_that_crashes_fails_with_its_stderr() -> None:
    code = "import sys; sys.stdin.readline(); sys.stderr.write('Traceback: boom\\n'); sys.exit(3)"
    report = await _one("worker", _py(code), "single-run")
    (case,) = report.cases
    assert case.verdict is Verdict.FAIL
    assert "exited with status 3" in case.reason
    assert any("Traceback: boom" in line for line in case.details)


async def test_a_worker_that_writes_garbage_fails_quoting_the_line() -> None:
    code = "import sys; sys.stdin.readline(); print('hello world', flush=True); sys.stdin.read()"
    report = await _one("worker", _py(code), "single-run")
    (case,) = report.cases
    assert case.verdict is Verdict.FAIL
    assert case.reason.startswith("invalid message: field $: expected JSON")
    assert case.finding is not None and case.finding.text == "hello world"


async def test_a_silent_worker_times_out_and_never_hangs_the_kit() -> None:
    started = time.monotonic()
    report = await _one("worker", _py("import time; time.sleep(60)"), "single-run", time_scale=0.25)
    (case,) = report.cases
    assert case.verdict is Verdict.TIMEOUT
    assert case.reason.startswith(
        "pod kit/pod-a never answered: expected JOB_ACCEPT or JOB_REJECT from it within 1.25 s"
        " (the response timeout) after the modeller's JOB_REQUEST (line 1), got nothing"
    )
    assert time.monotonic() - started < 10


async def test_a_modeller_that_owes_a_job_request_is_named_at_its_own_wait() -> None:
    """No whole-case deadline: the kit's wait for the owed JOB_REQUEST ends the case."""
    started = time.monotonic()
    sleeper = _py("import time; time.sleep(60)")
    report = await _one("modeller", sleeper, "single-run", time_scale=0.25)
    (case,) = report.cases
    assert case.verdict is Verdict.TIMEOUT
    assert case.reason.startswith(
        "expected JOB_REQUEST to kit/pod-a within 1.25 s after the CONFORMANCE_SCENARIO line,"
        " got nothing"
    )
    assert time.monotonic() - started < 8


async def test_pods_left_out_by_a_cancel_are_not_blamed_for_not_answering() -> None:
    # seed 1's generated-8: three pods and no items; the first one's NO_DATA abort ends the
    # task before the others' answers are read, which is no fault of theirs.
    report = await _one("worker", WORKER, "generated-8", generated=10)
    report.assert_passed()


async def test_the_case_deadline_kills_what_is_left() -> None:
    started = time.monotonic()
    report = await _one("modeller", _py("import time; time.sleep(60)"), "single-run", timeout=1.0)
    (case,) = report.cases
    assert case.verdict is Verdict.TIMEOUT
    assert case.reason.startswith("the case did not finish within 1 s")
    assert "the kit's pods were waiting: kit/pod-a in idle" in case.reason
    assert time.monotonic() - started < 8


# ----------------------------------------------------- misbehaving modellers under test


async def test_a_modeller_that_crashes_fails_with_its_stderr() -> None:
    code = (
        "import sys; sys.stdin.readline(); sys.stderr.write('no scenario for me\\n'); sys.exit(4)"
    )
    report = await _one("modeller", _py(code), "single-run")
    (case,) = report.cases
    assert case.verdict is Verdict.FAIL
    assert "the modeller exited with status 4" in case.reason
    assert any("no scenario for me" in line for line in case.details)


async def test_a_modeller_line_that_is_not_a_message_fails_quoting_it() -> None:
    code = "import sys; sys.stdin.readline(); print('nope', flush=True); sys.stdin.read()"
    report = await _one("modeller", _py(code), "single-run")
    (case,) = report.cases
    assert case.verdict is Verdict.FAIL
    assert "the modeller wrote an invalid line" in case.reason and "the line: nope" in case.reason


async def test_a_modeller_writing_to_an_unknown_pod_fails() -> None:
    line = json.dumps(
        {
            "v": 1,
            "type": "TASK_CANCEL",
            "task_id": "t",
            "sender": "modeller",
            "recipient": "someone/else",
            "seq": 0,
            "body": None,
            "meta": {},
        }
    )
    code = f"import sys; sys.stdin.readline(); print({line!r}, flush=True); sys.stdin.read()"
    report = await _one("modeller", _py(code), "single-run")
    assert "'someone/else', which is not one of the scenario's pods" in report.cases[0].reason


# -------------------------------------------------------------------------- reports


@pytest.fixture(scope="module")
def mixed_report() -> Report:
    scenarios: list[str | Scenario] = [
        "batches",
        Scenario(
            name="custom-lost-item",
            role=Role.WORKER,
            description="a scenario written by a test",
            echo=Echo(items=("a", "b", "c"), batch_size=3),
        ),
    ]
    return run_conformance(
        role="worker", command=[*WORKER, "--bug", "lose-item"], scenarios=scenarios, seed=5
    )


def test_report_counts_and_summary(mixed_report: Report) -> None:
    assert [c.verdict for c in mixed_report.cases] == [Verdict.FAIL, Verdict.FAIL]
    assert not mixed_report.passed
    assert "2 cases: 0 passed, 2 failed, 0 timed out" in mixed_report.summary()
    assert "seed 5 (replay with --seed 5)" in mixed_report.summary()
    with pytest.raises(AssertionError, match="custom-lost-item: FAIL: pod kit/pod-a: item"):
        mixed_report.assert_passed()


def test_json_report_carries_trace_and_diagram_of_failing_cases(mixed_report: Report) -> None:
    data = json.loads(json.dumps(mixed_report.to_json()))
    assert data["role"] == "worker" and data["seed"] == 5 and data["passed"] is False
    assert data["coverage"]["chart"] == "modeller"
    case = data["cases"][1]
    assert case["name"] == "custom-lost-item" and case["verdict"] == "FAIL"
    assert case["violation"]["line"] >= 1 and "lost" in case["violation"]["message"]
    assert json.loads(case["trace"][0])["type"] == "JOB_REQUEST"
    assert case["mermaid"].startswith("sequenceDiagram\n")
    assert "violation at line" in case["mermaid"]


def test_junit_report_is_valid_xml_with_one_testcase_per_case(mixed_report: Report) -> None:
    root = ET.fromstring(mixed_report.to_junit())
    suite = root.find("testsuite")
    assert suite is not None and suite.get("tests") == "2" and suite.get("failures") == "2"
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["batches", "custom-lost-item"]
    failure = cases[1].find("failure")
    assert failure is not None and failure.get("type") == "FAIL"
    assert "lost" in (failure.get("message") or "")
    out = cases[1].find("system-out")
    assert out is not None and "sequenceDiagram" in (out.text or "")


def test_mermaid_falls_back_when_a_line_is_not_a_message() -> None:
    from fsm_protocol.conformance import sequence_diagram

    text = sequence_diagram([b"garbage\n"], title="t")
    assert text.startswith("sequenceDiagram\n") and "line 1 is not a message" in text


# ------------------------------------------------------------------------------ CLI


def test_cli_conform_writes_all_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report, junit, artifacts = tmp_path / "r.json", tmp_path / "r.xml", tmp_path / "art"
    argv = ["conform", "--role", "worker", "--scenario", "batches", "--seed", "3"]
    argv += ["--report", str(report), "--junit", str(junit), "--artifacts", str(artifacts)]
    assert main([*argv, "--", *WORKER]) == 0
    out = capsys.readouterr().out
    assert "PASS    batches" in out and "seed 3" in out
    assert json.loads(report.read_text())["passed"] is True
    assert ET.parse(junit).getroot().tag == "testsuites"
    assert not artifacts.exists() or not list(artifacts.iterdir())

    assert main([*argv, "--", *WORKER, "--bug", "wrong-seq"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "expected 9" in out
    assert (artifacts / "worker-batches.jsonl").read_text().count("\n") > 5
    assert (artifacts / "worker-batches.mmd").read_text().startswith("sequenceDiagram")


def test_cli_conform_unusable_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["conform", "--role", "worker", "--", "no-such-command-anywhere"]) == 2
    assert "cannot start 'no-such-command-anywhere'" in capsys.readouterr().err
    assert main(["conform", "--role", "worker"]) == 2
    assert "no command to test" in capsys.readouterr().err
    assert main(["conform", "--role", "worker", "--scenario", "nope", "--", *WORKER]) == 2
    assert "unknown worker scenario 'nope'" in capsys.readouterr().err


def test_cli_conform_lists_the_catalogue(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["conform", "--role", "modeller", "--list"]) == 0
    out = capsys.readouterr().out
    assert "slow-pod-barrier" in out and "generated-1" in out


def test_the_docs_list_every_scenario_and_every_example_bug() -> None:
    docs = (Path(__file__).parent.parent / "docs" / "conformance.md").read_text()
    for role in Role:
        assert f"#### {role.value}: {len(catalogue(role))} scenarios" in docs
        for scenario in catalogue(role):
            assert f"| `{scenario.name}` | {scenario.description} |" in docs, scenario.name
    for script in ("plain_worker.py", "plain_modeller.py"):
        source = (EXAMPLES / script).read_text()
        bugs = source.split("BUGS = {", 1)[1].split("}", 1)[0]
        names = [line.split('"')[1] for line in bugs.splitlines() if line.strip().startswith('"')]
        assert len(names) >= 9
        for name in names:
            assert f"`{name}`" in docs, name


BABBLE = """
import json, sys
first = json.loads(sys.stdin.readline())
me = first["recipient"]
def send(seq, kind, body):
    line = {"v": 1, "type": kind, "task_id": first["task_id"], "sender": me,
            "recipient": "modeller", "seq": seq, "body": body, "meta": {}}
    sys.stdout.write(json.dumps(line) + "\\n")
send(0, "JOB_ACCEPT", {"ACCEPT": me})
seq = 1
while True:
    send(seq, "LOG_MESSAGE", {"level": "INFO", "message": "more"})
    seq += 1
"""


async def test_a_babbling_worker_is_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    # The kit's modeller counts each pod's lines where it reads them: in its link.
    import fsm_protocol._kit._worker_case as link

    monkeypatch.setattr(link, "MAX_LINES", 300)
    report = await _one("worker", _py(BABBLE), "single-run")
    (case,) = report.cases
    assert case.verdict is Verdict.FAIL
    assert case.reason == "pod kit/pod-a wrote more than 300 lines in one case"
    assert len(case.trace) < 400
