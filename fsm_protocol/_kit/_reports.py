"""What a conformance run reports: each case's result, and the report in JSON, JUnit and Mermaid."""

from __future__ import annotations

import collections
import json
from collections.abc import Iterable
from typing import Any, final
from xml.sax.saxutils import escape, quoteattr

import attrs

from .._base._errors import DecodeError
from .._check._checker import Finding, describe_message
from .._core._chart import Role
from .._wire._messages import decode
from ._coverage import Coverage
from ._limits import start_allowance
from ._scenarios import Scenario, Verdict

_SLOW_START = 0.25  # an answer slower than this is worth a word in the summary


@final
@attrs.frozen
class Note:
    """Something the kit did or saw that is not a line: shown in the sequence diagram."""

    after_line: int
    pod: str
    text: str


@final
@attrs.frozen
class CaseResult:
    """The verdict of one case, with the evidence: its trace and what the kit noted.

    ``rule`` is the id of the rule of the rule book the case failed on (its
    reason cites it as ``[ID]``), or None when it passed or no rule says it.
    """

    scenario: Scenario
    verdict: Verdict
    reason: str
    details: tuple[str, ...] = ()
    duration_s: float = 0.0
    trace: tuple[bytes, ...] = ()
    notes: tuple[Note, ...] = ()
    finding: Finding | None = None
    rule: str | None = None

    @property
    def name(self) -> str:
        return self.scenario.name

    @property
    def passed(self) -> bool:
        return self.verdict is Verdict.PASS

    def trace_text(self) -> str:
        """The trace as NDJSON text."""
        return "".join(line.decode(errors="replace") for line in self.trace)

    def mermaid(self) -> str:
        """The trace as a Mermaid sequence diagram, with the violation and the kit's notes."""
        title = f"{self.name}: {self.verdict.value}"
        line = self.finding.line if self.finding else None
        try:
            messages = [decode(raw) for raw in self.trace]
            from .._export._sequence import to_mermaid_sequence
        except (DecodeError, ImportError):
            return sequence_diagram(self.trace, self.notes, title=title, violation_line=line)
        # The shared renderer folds long runs; the notes go after it, with line numbers.
        out = to_mermaid_sequence(messages).rstrip("\n").split("\n")
        out.append(f"    Note over M: {_mermaid_text(title)}")
        for note in self.notes:
            out.append(
                f"    Note over M: kit, after line {note.after_line}:"
                f" {_mermaid_text(note.pod + ': ' + note.text)}"
            )
        if self.finding is not None:
            out.append(
                f"    Note over M: violation at line {self.finding.line}:"
                f" {_mermaid_text(self.finding.message[:160])}"
            )
        return "\n".join(out) + "\n"


@final
@attrs.frozen
class Report:
    """Every case of a run, the coverage reached, and how to replay it."""

    role: Role
    command: tuple[str, ...]
    transport: str
    seed: int
    cases: tuple[CaseResult, ...]
    coverage: Coverage
    answer_latency_s: float = 0.0
    time_scale: float = 1.0

    @property
    def startup_allowance_s(self) -> float:
        """What the kit added to the waits that include a process start (at the end)."""
        return start_allowance(self.answer_latency_s)

    @property
    def passed(self) -> bool:
        """True only if every case passed (and there was at least one)."""
        return bool(self.cases) and all(case.passed for case in self.cases)

    def counts(self) -> dict[Verdict, int]:
        found = collections.Counter(case.verdict for case in self.cases)
        return {verdict: found.get(verdict, 0) for verdict in Verdict}

    def summary(self) -> str:
        c = self.counts()
        text = (
            f"{len(self.cases)} cases: {c[Verdict.PASS]} passed, {c[Verdict.FAIL]} failed,"
            f" {c[Verdict.TIMEOUT]} timed out; {self.coverage.summary()}; seed {self.seed}"
            f" (replay with --seed {self.seed})"
        )
        if self.answer_latency_s > _SLOW_START:
            text += (
                f"; the command took up to {self.answer_latency_s:.2f} s to answer its"
                f" JOB_REQUEST, so the kit allows {self.startup_allowance_s:.2f} s more for an"
                " answer that includes a start"
            )
        return text

    def assert_passed(self) -> None:
        """Raise AssertionError naming every case that did not pass, with its reason."""
        failed = [case for case in self.cases if not case.passed]
        if failed or not self.cases:
            lines = [f"{len(failed)} of {len(self.cases)} conformance cases did not pass:"]
            lines += [f"  {case.name}: {case.verdict.value}: {case.reason}" for case in failed]
            raise AssertionError("\n".join(lines))

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data; failing cases carry their trace and diagram."""
        return {
            "role": self.role.value,
            "command": list(self.command),
            "transport": self.transport,
            "seed": self.seed,
            "time_scale": self.time_scale,
            "answer_latency_s": round(self.answer_latency_s, 3),
            "passed": self.passed,
            "counts": {v.value: n for v, n in self.counts().items()},
            "coverage": {
                "chart": self.coverage.chart.name,
                "states": [len(self.coverage.states), self.coverage.state_count],
                "transitions": [len(self.coverage.transitions), self.coverage.transition_count],
                "state_percent": round(self.coverage.state_percent(), 1),
                "transition_percent": round(self.coverage.transition_percent(), 1),
                "missing_transitions": self.coverage.missing_transitions(),
            },
            "cases": [_case_json(case) for case in self.cases],
        }

    def to_junit(self) -> str:
        """The report as JUnit XML, one ``testcase`` per case."""
        c = self.counts()
        total = sum(case.duration_s for case in self.cases)
        suite = f"fsm-protocol conform --role {self.role.value}"
        out = [
            '<?xml version="1.0" encoding="UTF-8"?>',
            f'<testsuites name={quoteattr(suite)} tests="{len(self.cases)}"'
            f' failures="{c[Verdict.FAIL] + c[Verdict.TIMEOUT]}" time="{total:.3f}">',
            f'  <testsuite name={quoteattr(suite)} tests="{len(self.cases)}"'
            f' failures="{c[Verdict.FAIL] + c[Verdict.TIMEOUT]}" errors="0" skipped="0"'
            f' time="{total:.3f}">',
            "    <properties>",
            f'      <property name="seed" value="{self.seed}"/>',
            f'      <property name="command" value={quoteattr(" ".join(self.command))}/>',
            f'      <property name="coverage" value={quoteattr(self.coverage.summary())}/>',
            "    </properties>",
        ]
        for case in self.cases:
            out.append(
                f'    <testcase classname="conform.{self.role.value}" name={quoteattr(case.name)}'
                f' time="{case.duration_s:.3f}">'
            )
            if not case.passed:
                body = "\n".join([case.reason, *case.details])
                kind = case.verdict.value
                out.append(
                    f'      <failure type="{kind}" message={quoteattr(case.reason)}>'
                    f"{escape(body)}</failure>"
                )
                out.append(
                    "      <system-out>"
                    + escape(f"trace:\n{case.trace_text()}\nmermaid:\n{case.mermaid()}")
                    + "</system-out>"
                )
            out.append("    </testcase>")
        out += ["  </testsuite>", "</testsuites>", ""]
        return "\n".join(out)


def _case_json(case: CaseResult) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": case.name,
        "description": case.scenario.description,
        "verdict": case.verdict.value,
        "reason": case.reason,
        "details": list(case.details),
        "duration_s": round(case.duration_s, 3),
        "rule": case.rule,
    }
    if case.finding is not None:
        data["violation"] = attrs.asdict(case.finding)
    if not case.passed:
        data["trace"] = [line.decode(errors="replace").rstrip("\n") for line in case.trace]
        data["mermaid"] = case.mermaid()
    return data


# --- Sequence diagrams -----------------------------------------------------------------------


def sequence_diagram(
    trace: Iterable[bytes],
    notes: Iterable[Note] = (),
    *,
    title: str = "",
    violation_line: int | None = None,
) -> str:
    """A Mermaid ``sequenceDiagram`` of a trace: one arrow per message, kit notes as notes."""
    lines = list(trace)
    parsed: list[dict[str, Any] | None] = []
    participants: dict[str, str] = {}
    for raw in lines:
        try:
            obj = json.loads(raw)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            obj = None
        parsed.append(obj)
        if obj is not None:
            for who in (obj.get("sender"), obj.get("recipient")):
                if isinstance(who, str) and who not in participants:
                    participants[who] = f"P{len(participants)}"
    by_line = collections.defaultdict(list)
    for note in notes:
        by_line[note.after_line].append(note)
        if note.pod not in participants:
            participants[note.pod] = f"P{len(participants)}"
    out = ["sequenceDiagram"]
    for who, alias in participants.items():
        out.append(f"    participant {alias} as {_mermaid_text(who)}")
    if title and participants:
        out.append(f"    Note over {next(iter(participants.values()))}: {_mermaid_text(title)}")
    for number, (raw, obj) in enumerate(zip(lines, parsed, strict=True), start=1):
        for note in by_line.get(number - 1, ()):
            out.append(f"    Note over {participants[note.pod]}: kit: {_mermaid_text(note.text)}")
        if obj is None:
            text = raw.decode(errors="replace").strip()[:60]
            first = next(iter(participants.values()), "P0")
            out.append(
                f"    Note over {first}: line {number} is not a message: {_mermaid_text(text)}"
            )
            continue
        sender = participants.get(str(obj.get("sender")), "P0")
        recipient = participants.get(str(obj.get("recipient")), "P0")
        arrow = "-x" if number == violation_line else "->>"
        out.append(
            f"    {sender}{arrow}{recipient}: {number}: {_mermaid_text(describe_message(obj))}"
        )
        if number == violation_line:
            out.append(f"    Note over {sender},{recipient}: violation at line {number}")
    for note in by_line.get(len(lines), ()):
        out.append(f"    Note over {participants[note.pod]}: kit: {_mermaid_text(note.text)}")
    if violation_line is not None and violation_line > len(lines) and participants:
        first = next(iter(participants.values()))
        out.append(f"    Note over {first}: the trace ends before the task does")
    return "\n".join(out) + "\n"


def _mermaid_text(text: str) -> str:
    # Mermaid reads ";" and "#" specially, and a message ends at the line's end.
    return text.replace("#", "#35;").replace(";", "#59;").replace("\n", " ").replace("\r", " ")
