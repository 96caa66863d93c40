"""The README's code must run as printed: it is the first thing a user copies."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_readme_embedding_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    (block,) = python_blocks()
    exec(compile(block, str(README), "exec"), {"__name__": "readme"})
    assert (
        capsys.readouterr().out.strip()
        == "TaskStatus.COMPLETE {'items': ['a', 'b'], 'results': ['A', 'B']}"
    )


def test_readme_quick_start_has_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert ".venv/bin/fsm-protocol demo" in text
    assert ".venv/bin/pytest" in text
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert 'fsm-protocol" demo' in ci and 'pytest" -m "not slow"' in ci
