"""``fsm-protocol validate``: output format, summary and exit codes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fsm_protocol._base._resources import shipped_chart_path, shipped_chart_paths
from fsm_protocol._cli._main import main

REPO = Path(__file__).resolve().parent.parent
LOCATED = re.compile(r"^(?P<file>.+):(?P<line>\d+):(?P<col>\d+): \S")

# No role: so no bindings are needed; one unknown event, one unknown target.
BROKEN = """\
chart: broken
initial: a
states:
  a:
    transitions:
      - event: nope
        target: b
"""


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def located_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if LOCATED.match(line)]


def test_shipped_charts_are_found() -> None:
    paths = shipped_chart_paths()
    assert {"worker", "modeller"} <= set(paths)
    assert shipped_chart_path("worker").name == "worker.yaml"
    assert all(path.is_file() for path in paths.values())


def test_shipped_charts_are_clean(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate"]) == 0
    out = capsys.readouterr().out
    assert located_lines(out) == []
    assert out.splitlines()[-1] == f"{len(shipped_chart_paths())} charts checked, 0 problems"


def test_broken_chart_is_located(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = write(tmp_path, "broken.yaml", BROKEN)
    assert main(["validate", broken]) == 1
    out = capsys.readouterr().out
    lines = located_lines(out)
    assert len(lines) == 2
    assert lines[0].startswith(f"{broken}:6:16: event 'nope'")
    assert lines[1].startswith(f"{broken}:7:17: unknown target state 'b'")
    assert out.splitlines()[-1] == "2 problems in 1 file"


def test_quiet_prints_only_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = write(tmp_path, "broken.yaml", BROKEN)
    assert main(["validate", "--quiet", broken]) == 1
    out = capsys.readouterr().out
    assert out.splitlines() == located_lines(out)


def test_every_file_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = write(tmp_path, "first.yaml", BROKEN)
    second = write(tmp_path, "second.yaml", "chart: x\ninitial: a\nstates: [\n")
    assert main(["validate", first, second]) == 1
    out = capsys.readouterr().out
    files = {LOCATED.match(line)["file"] for line in located_lines(out)}  # type: ignore[index]
    assert files == {first, second}
    assert out.splitlines()[-1] == "3 problems in 2 files"


def test_names_the_roles_bindings_lack_are_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The loader checks binding names only when given them; validate gives it
    # each shipped role's, so a misspelt guard in a worker chart is still caught.
    text = shipped_chart_path("worker").read_text(encoding="utf-8")
    assert text.count("[count_is_one,") == 1
    chart = write(tmp_path, "worker.yaml", text.replace("[count_is_one,", "[count_is_on,"))
    assert main(["validate", chart]) == 1
    out = capsys.readouterr().out
    line = text[: text.index("[count_is_one,")].count("\n") + 1
    column = len(text[: text.index("count_is_one,")].rsplit("\n", 1)[-1]) + 1
    assert located_lines(out) == [
        f"{chart}:{line}:{column}: guard 'count_is_on' is not provided by the worker bindings"
        " (did you mean 'count_is_one'?)"
    ]


def test_missing_file_is_unusable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "missing.yaml")
    assert main(["validate", missing]) == 2
    err = capsys.readouterr().err
    assert missing in err
    assert "no such file" in err


def test_directory_is_unusable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_non_utf8_file_is_unusable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("chart: café\n".encode("latin-1"))
    assert main(["validate", str(latin)]) == 2
    err = capsys.readouterr().err
    assert str(latin) in err
    assert "not UTF-8" in err


def test_unusable_file_does_not_hide_the_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = write(tmp_path, "broken.yaml", BROKEN)
    assert main(["validate", str(tmp_path / "missing.yaml"), broken]) == 2
    captured = capsys.readouterr()
    assert len(located_lines(captured.out)) == 2
    assert "missing.yaml" in captured.err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("fsm-protocol ")


def test_python_dash_m_entry_point(tmp_path: Path) -> None:
    broken = write(tmp_path, "broken.yaml", BROKEN)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(
        [sys.executable, "-m", "fsm_protocol", "validate", broken],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert f"{broken}:6:16:" in result.stdout
