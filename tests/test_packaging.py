"""Packaging: a LICENSE, a changelog, and an engine that installs without the extras."""

from __future__ import annotations

import configparser
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Run the CLI in a fresh interpreter where the extras' packages cannot be imported,
# as after `pip install .` without [net] or [kit].
WITHOUT_EXTRAS = textwrap.dedent(
    """
    import importlib.abc, sys

    class Absent(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in ("cryptography", "hypothesis"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Absent())
    from fsm_protocol._cli._main import main
    code = main(sys.argv[1:])
    loaded = sorted({m.partition(".")[0] for m in sys.modules} & {"cryptography", "hypothesis"})
    print("extras loaded:", loaded, file=sys.stderr)
    sys.exit(code)
    """
)


def run_without_extras(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTRAS, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )


def test_setup_cfg_keeps_network_and_kit_dependencies_in_extras() -> None:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    required = config["options"]["install_requires"]
    assert "cryptography" not in required and "hypothesis" not in required
    extras = config["options.extras_require"]
    assert "cryptography" in extras["net"] and "hypothesis" in extras["kit"]
    for name in ("cryptography", "hypothesis"):
        assert name in extras["test"]
    assert config["metadata"]["license"] == "MIT"


@pytest.mark.parametrize(
    "args",
    [
        ["demo", "--items", "8", "--no-progress"],
        ["validate"],
        ["diagram", "worker", "--format", "scxml"],
        ["check", str(ROOT / "tests" / "traces" / "good-single-run.jsonl")],
    ],
    ids=["demo", "validate", "diagram", "check"],
)
def test_the_engine_commands_run_without_the_extras(tmp_path: Path, args: list[str]) -> None:
    done = run_without_extras(tmp_path, *args)
    assert done.returncode == 0, done.stderr
    assert "extras loaded: []" in done.stderr


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (["keys", "generate", "--name", "k"], "net"),
        (["conform", "--role", "worker", "--", "true"], "kit"),
    ],
)
def test_a_command_that_needs_an_extra_says_which(
    tmp_path: Path, args: list[str], extra: str
) -> None:
    done = run_without_extras(tmp_path, *args)
    assert done.returncode == 2, done.stderr
    assert f"pip install 'fsm-protocol[{extra}]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_license_is_mit() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License\n")
    assert "Permission is hereby granted, free of charge" in text


def test_changelog_is_built_from_the_fragments(tmp_path: Path) -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "<!-- towncrier release notes start -->" in changelog
    assert "## fsm-protocol 0.1.0" in changelog
    # Every fragment is well formed: towncrier renders them all.
    towncrier = Path(sys.executable).with_name("towncrier")
    if not towncrier.exists():
        pytest.skip("towncrier is not installed (it comes with the test extra)")
    done = subprocess.run(
        [str(towncrier), "build", "--draft", "--version", "0.1.0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for fragment in sorted((ROOT / "newsfragments").glob("*.md")):
        issue = fragment.name.split(".")[0]
        assert f"(#{issue})" in done.stdout, fragment.name
