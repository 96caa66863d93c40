"""The command line follows the usual conventions: version, usage, formats, completion."""

from __future__ import annotations

import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

from fsm_protocol import shipped_chart, to_scxml
from fsm_protocol._cli._main import main

from .test_cli_demo import strict_json

ROOT = Path(__file__).resolve().parent.parent


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"fsm-protocol {metadata.version('fsm-protocol')}\n"


@pytest.mark.parametrize(
    ("argv", "usage"),
    [
        (["check", "--bogus", "x.ndjson"], "usage: fsm-protocol check "),
        (["validate", "--format", "yaml"], "usage: fsm-protocol validate "),
        (["demo", "--workers", "many"], "usage: fsm-protocol demo "),
        (["diagram", "worker", "--nope"], "usage: fsm-protocol diagram "),
    ],
)
def test_a_subcommand_error_shows_that_subcommands_usage(
    argv: list[str], usage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage), err
    assert f"fsm-protocol {argv[0]}: error: " in err


def test_validate_reads_scxml_and_reports_problems_in_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "worker.scxml"
    good.write_text(to_scxml(shipped_chart("worker")), encoding="utf-8")
    assert main(["validate", str(good)]) == 0
    assert capsys.readouterr().out == "1 chart checked, 0 problems\n"
    bad = tmp_path / "bad.scxml"
    bad.write_text(good.read_text().replace('target="closed"', 'target="clsed"'))
    assert main(["validate", str(bad)]) == 1
    out = capsys.readouterr().out
    assert f"{bad}:" in out and "clsed" in out


def test_validate_never_echoes_a_whole_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An SCXML file under a .yaml name is one long YAML string.
    wrong = tmp_path / "worker.yaml"
    wrong.write_text(to_scxml(shipped_chart("worker")), encoding="utf-8")
    assert len(wrong.read_text()) > 10_000
    assert main(["validate", str(wrong)]) == 1
    out = capsys.readouterr().out
    assert len(out) < 400, out
    assert "a string of" in out and "characters starting '<?xml" in out


def test_validate_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("chart: b\ninitial: a\nstates: {a: {transitions: [{event: e}]}}\n")
    assert main(["validate", "--format", "json", str(broken), str(tmp_path / "missing")]) == 2
    report = strict_json(capsys.readouterr().out)
    assert report["ok"] is False
    (entry,) = report["files"]
    assert entry["file"] == str(broken) and entry["problems"]
    assert set(entry["problems"][0]) == {"file", "line", "column", "message", "hint"}
    assert report["unusable"][0]["file"] == str(tmp_path / "missing")
    assert main(["validate", "--format", "json"]) == 0
    assert strict_json(capsys.readouterr().out)["ok"] is True


def test_check_json(capsys: pytest.CaptureFixture[str]) -> None:
    traces = ROOT / "tests" / "traces"
    good, bad = traces / "good-single-run.jsonl", traces / "bad-seq-gap.jsonl"
    assert main(["check", "--format", "json", str(good), str(bad)]) == 1
    report = strict_json(capsys.readouterr().out)
    assert report["ok"] is False
    first, second = report["traces"]
    assert (first["file"], first["ok"], first["finding"]) == (str(good), True, None)
    assert (second["ok"], second["finding"]["line"]) == (False, 6)
    assert second["summary"].startswith("violation at line 6")


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_parse_in_their_shell(
    shell: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["completion", shell]) == 0
    script = capsys.readouterr().out
    for word in ("validate", "demo", "diagram", "check", "conform", "completion"):
        assert word in script
    program = shutil.which(shell)
    if program is None:
        pytest.skip(f"{shell} is not installed: the script's syntax cannot be checked")
    path = tmp_path / f"completion.{shell}"
    path.write_text(script, encoding="utf-8")
    done = subprocess.run([program, "-n", str(path)], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
