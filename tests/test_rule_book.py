"""The rule book: each rule's breaking trace is rejected by ``fsm-protocol check`` citing it.

The rules are one declared table, ``fsm_protocol/_check/_rules.py``; the traces
are ``tests/traces/rules/<id>.jsonl`` (``tests/traces/make_rule_traces.py``
writes them), and ``docs/conformance.md`` prints the table generated from it.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

from fsm_protocol import Role
from fsm_protocol._check._rules import KIT, RULE_BY_ID, RULES, TRACE, rule_book_markdown
from fsm_protocol._cli._main import main
from fsm_protocol.conformance import catalogue

HERE = Path(__file__).parent
RULE_TRACES = HERE / "traces" / "rules"
DOCS = HERE.parent / "docs" / "conformance.md"


def _maker() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "make_rule_traces", HERE / "traces" / "make_rule_traces.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_rule_traces", module)
    spec.loader.exec_module(module)
    return module


def _check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    status = main(["check", str(path)])
    out = capsys.readouterr()
    return status, out.out + out.err


TRACED = [rule for rule in RULES if rule.by == TRACE and rule.id != "F-1.2"]


@pytest.mark.parametrize("rule_id", [rule.id for rule in TRACED])
def test_each_rules_trace_is_rejected_citing_that_rule(
    rule_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rule = RULE_BY_ID[rule_id]
    assert rule.trace is not None
    status, out = _check(RULE_TRACES / rule.trace, capsys)
    assert status == 1, out
    cited = re.findall(r"\[([A-Z]-\d\.\d+)\]", out)
    assert cited == [rule_id], out  # that rule, and no other first
    assert f"  rule:     {rule_id}: {rule.text}" in out


def test_the_oversized_line_is_rejected_citing_f_1_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _maker().oversized_trace(tmp_path / "F-1.2.jsonl")
    assert path.stat().st_size > 16 * 1024 * 1024
    status, out = _check(path, capsys)
    assert status == 1 and re.findall(r"\[([A-Z]-\d\.\d+)\]", out) == ["F-1.2"], out[:500]


@pytest.mark.parametrize("name", sorted(p.name for p in RULE_TRACES.glob("_good-*.jsonl")))
def test_the_bases_of_the_breaking_traces_conform(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out = _check(RULE_TRACES / name, capsys)
    assert status == 0, out


def test_no_rule_lacks_a_trace_and_no_trace_lacks_a_rule() -> None:
    files = {p.name for p in RULE_TRACES.glob("*.jsonl") if not p.name.startswith("_")}
    wanted = {rule.trace for rule in TRACED}
    assert files == wanted
    for rule in RULES:
        assert rule.by in (TRACE, KIT), rule
        if rule.by == KIT:
            # Not a trace rule: the table says what only a live run can see.
            assert rule.check.startswith("kit:"), rule


def test_the_stored_traces_are_what_the_script_writes() -> None:
    maker = _maker()
    made = {**{n: f() for n, f in maker.GOOD.items()}, **maker.rule_traces()}
    for name, trace in made.items():
        assert (RULE_TRACES / name).read_text() == trace.text(), f"rerun {maker.__file__}"


def test_ids_are_unique_and_name_their_section() -> None:
    assert len(RULE_BY_ID) == len(RULES)
    numbers = [rule.id.split("-")[1] for rule in RULES]
    assert len(set(numbers)) == len(numbers)  # "4.9" names one rule, whatever the letter
    for rule in RULES:
        letter, number = rule.id.split("-")
        assert int(number.split(".")[0]) == rule.section
        assert {"W": "worker", "M": "modeller", "E": "any sender", "F": "any sender"}[
            letter
        ] == rule.role
        assert 1 <= rule.section <= 6


def test_every_kit_case_named_exists() -> None:
    names = {(role.value, s.name) for role in Role for s in catalogue(role)}
    assert [rule.id for rule in RULES if not rule.kit] == [], "rules that need a kit case"
    for rule in RULES:
        for case in rule.kit:
            role, _, name = case.partition(":")
            assert (role, name) in names, f"{rule.id}: no kit case {case}"


def test_the_docs_print_the_rule_book() -> None:
    maker = _maker()
    text = DOCS.read_text()
    assert maker.BEGIN in text and maker.END in text
    start, end = text.index(maker.BEGIN), text.index(maker.END) + len(maker.END)
    assert text[start:end] == maker.docs_table(), (
        "docs/conformance.md is out of date: run python tests/traces/make_rule_traces.py --docs"
    )
    assert rule_book_markdown().count("\n| **") == len(RULES)
