"""The conformance kit's runner: play the other role with the engine, judge by the trace.

For ``--role worker`` the kit is the modeller (:func:`run_modeller`) and starts
the command once per simulated pod; for ``--role modeller`` the kit plays
every pod (:func:`run_worker`) against one process, after the
``CONFORMANCE_SCENARIO`` line of spec section 6. Either way it records the
conversation as a trace, in the order the kit's side saw it, and the trace
checker (:mod:`fsm_protocol._check._checker`) judges it, Echo item account included.
What a trace cannot show is judged from the kit's own outcome: a process
that crashed, went silent, ignored a cancel, did not exit, or (for a modeller)
left a pod waiting.

Every case runs under a deadline and its processes are killed at its end, so
no implementation can hang the kit.
"""

from __future__ import annotations

import collections
import contextlib
import difflib
import enum
import functools
import json
import math
import random
import shutil
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Protocol, final
from xml.sax.saxutils import escape, quoteattr

import attrs
import trio

from .._algo._echo_model import EchoPrediction, predict_echo
from .._algo._protocols import EchoModeller, EchoProtocol, UsageLimit, registry
from .._base._errors import (
    BrokenTransportError,
    ClosedTransportError,
    ConfigError,
    DecodeError,
    TransportError,
)
from .._check._checker import Finding, TraceChecker, describe_message
from .._core._chart import Chart, Role, Transition
from .._core._compiled import compile_chart
from .._core._engine import Step
from .._core._shipped import shipped_chart
from .._net._stdio import ProcessPeer, SharedStdio, StdioTransport
from .._net._tcp import Limits, PodListener, TcpTransport, connect
from .._runtime._modeller import ModellerRun, TaskTimeouts, run_modeller
from .._runtime._transport import Transport
from .._runtime._worker import Pod, WorkerReport, run_worker
from .._wire._messages import (
    AbortReason,
    JobRequestBody,
    Message,
    MessageType,
    ScenarioBody,
    decode,
    encode,
)

KIT_MODELLER: Final = "modeller"
KIT_SENDER: Final = "conformance"

# Kit-side waits, in seconds at time_scale 1.
_CANCEL_WAIT: Final = 1.0
_IDLE_WAIT: Final = 2.0
_DRAIN_WAIT: Final = 1.0
_EXIT_WAIT: Final = 2.0
_STDERR_LINES: Final = 15
# The most lines the kit takes from one implementation in one case; a peer that
# babbles past this has its link cut, so it cannot fill the kit's memory.
MAX_LINES: Final = 20_000
_MAX_DRAIN_LINES: Final = 1_000


class Verdict(str, enum.Enum):
    """The outcome of one case."""

    PASS = "PASS"
    FAIL = "FAIL"
    TIMEOUT = "TIMEOUT"


class FaultKind(str, enum.Enum):
    """What the kit does to one pod's link on purpose, seen from the kit's side.

    * ``delay_send``: the kit sends the matching message late.
    * ``hold_recv``: the kit gets the matching message late (a slow pod, or a
      slow modeller when the kit plays the pod).
    * ``cancel``: when the matching message arrives, the kit's modeller cancels
      the task.
    * ``drop``: the matching message is lost and the link breaks (the kit
      closes the worker's input).
    * ``garble``: the matching message arrives unreadable.
    * ``swallow``: the matching message, and all after it, are lost in transit.
    """

    DELAY_SEND = "delay_send"
    HOLD_RECV = "hold_recv"
    CANCEL = "cancel"
    DROP = "drop"
    GARBLE = "garble"
    SWALLOW = "swallow"


@final
@attrs.frozen
class Fault:
    """One deliberate fault on one pod's link.

    Args:
        pod: The pod whose link it affects.
        kind: What happens.
        on: The message types it matches.
        nth: It applies to the nth matching message (1 is the first); None
            applies it to every one.
        seconds: How long, for ``delay_send`` and ``hold_recv``.
        until: For ``hold_recv``: release the message as soon as this pod has
            answered the JOB_REQUEST (``seconds`` is then the longest wait).
    """

    pod: str
    kind: FaultKind
    on: tuple[str, ...]
    nth: int | None = 1
    seconds: float = 0.0
    until: str | None = None


@final
@attrs.frozen(kw_only=True)
class Echo:
    """A ``conformance.Echo`` job (spec section 5), and what a correct worker does with it."""

    items: tuple[str, ...] = ()
    batch_size: int = 1
    fail_in_batch: tuple[str, ...] = ()
    fail_alone: tuple[str, ...] = ()
    inference_limit: UsageLimit | None = None
    initial_setup: bool = False

    def protocol(self) -> EchoProtocol:
        """The same job as the runtime's protocol configuration."""
        return EchoProtocol(
            items=self.items,
            batch_size=self.batch_size,
            fail_in_batch=self.fail_in_batch,
            fail_alone=self.fail_alone,
            inference_limit=self.inference_limit,
            initial_setup=self.initial_setup,
        )

    def to_json(self) -> dict[str, Any]:
        """``JOB_REQUEST.body.protocol``."""
        return registry.dump(self.protocol())

    def predict(self, *, batched: bool, test_run: bool = False) -> EchoPrediction:
        """What a conforming worker sends: its results in order, its end, each item's fate."""
        return predict_echo(self.protocol(), batched=batched, test_run=test_run)


def _items(n: int) -> tuple[str, ...]:
    return tuple(f"i{k}" for k in range(n))


@final
@attrs.frozen(kw_only=True)
class Scenario:
    """One named case of the catalogue: a task, the kit's behaviour, and its expectations.

    Timings are in seconds and are multiplied by the run's ``time_scale``.

    Args:
        name: Unique within its role's catalogue.
        role: The role under test.
        description: What the case exercises, for people.
        echo: The job every pod gets, before ``overrides``.
        pods: The simulated pods.
        batched: The job's ``batched_execution``.
        test_run: The job's ``test_run``.
        overrides: Per pod, raw fields that replace those of the protocol JSON.
        require_all_pods: A rejection or a missing answer cancels the task.
        response_timeout_s: The modeller's wait for answers to JOB_REQUEST.
        task_start_timeout_s: The workers' wait for TASK_START (job options).
        soft_timeout_s: The workers' quiet time before ONLINE_CHECK (job options).
        hard_timeout_s: The workers' wait for the answer (job options).
        faults: What the kit does to the links on purpose.
        silent: Pods that never answer (kit pods, for ``role=modeller``).
        expect: For ``role=modeller``: a pod's outcome when the default rule
            (Echo's prediction, and cancellation after an abort) does not say it:
            ``"complete"``, ``"rejected"`` or ``"aborted:<REASON>"``; several
            allowed outcomes are separated by ``|``.
        expect_online_check: Pods that must send ONLINE_CHECK (``role=worker``).
        first_line: For ``role=worker``: instead of a task, write this line
            (empty: nothing) and close the input; the worker must write nothing.
    """

    name: str
    role: Role
    description: str
    echo: Echo = Echo(items=_items(3))
    pods: tuple[str, ...] = ("kit/pod-a",)
    batched: bool = True
    test_run: bool = False
    overrides: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)
    require_all_pods: bool = False
    response_timeout_s: float = 5.0
    task_start_timeout_s: float = 10.0
    soft_timeout_s: float = 2.0
    hard_timeout_s: float = 3.0
    faults: tuple[Fault, ...] = ()
    silent: tuple[str, ...] = ()
    expect: Mapping[str, str] = attrs.field(factory=dict)
    expect_online_check: tuple[str, ...] = ()
    first_line: bytes | None = None

    def protocol_json(self, pod: str) -> dict[str, Any]:
        """The protocol JSON pod ``pod`` gets: the Echo job with its overrides."""
        return {**self.echo.to_json(), **self.overrides.get(pod, {})}

    def job(self, pod: str, *, scale: float = 1.0) -> JobRequestBody:
        """The JOB_REQUEST body for ``pod``."""
        return JobRequestBody(
            protocol=self.protocol_json(pod),
            pod_identifiers=self.pods,
            batched_execution=self.batched,
            test_run=self.test_run,
            # The options a job may set are the ones the worker chart declares.
            options={name: getattr(self, name) * scale for name in shipped_chart("worker").options},
        )


# --- Results ---------------------------------------------------------------------------------


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
    """The verdict of one case, with the evidence: its trace and what the kit noted."""

    scenario: Scenario
    verdict: Verdict
    reason: str
    details: tuple[str, ...] = ()
    duration_s: float = 0.0
    trace: tuple[bytes, ...] = ()
    notes: tuple[Note, ...] = ()
    finding: Finding | None = None

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
class Coverage:
    """Which states and transitions of the kit's chart the cases exercised.

    The kit plays the counterpart of the role under test, so this is the part
    of the protocol the implementation under test was made to go through.
    """

    chart: Chart
    states: frozenset[str]
    transitions: frozenset[int]

    @property
    def state_count(self) -> int:
        return len(self.chart.states)

    @property
    def transition_count(self) -> int:
        return len(self.chart.transitions)

    def state_percent(self) -> float:
        return 100.0 * len(self.states) / max(1, self.state_count)

    def transition_percent(self) -> float:
        return 100.0 * len(self.transitions) / max(1, self.transition_count)

    def missing_states(self) -> list[str]:
        return [s.name for s in self.chart.states if s.name not in self.states]

    def missing_transitions(self) -> list[str]:
        return [
            describe_transition(t)
            for i, t in enumerate(self.chart.transitions)
            if i not in self.transitions
        ]

    def summary(self) -> str:
        return (
            f"{self.chart.name} chart coverage: states {len(self.states)}/{self.state_count}"
            f" ({self.state_percent():.0f}%), transitions {len(self.transitions)}/"
            f"{self.transition_count} ({self.transition_percent():.0f}%)"
        )


def describe_transition(t: Transition) -> str:
    guards = f" [{', '.join(t.guards)}]" if t.guards else ""
    return f"{t.source} --{t.event}{guards}--> {t.target or '(internal)'}"


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
    def slowdown(self) -> float:
        """How much the kit stretched its timings for a slow-answering command."""
        return max(1.0, self.answer_latency_s / _FAST_ANSWER)

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
        if self.slowdown > 1:
            text += (
                f"; the command took {self.answer_latency_s:.2f} s to answer, so later cases ran"
                f" {self.slowdown:.1f}x slower"
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


# --- Coverage --------------------------------------------------------------------------------


class _CoverageRecorder:
    """Maps the kit's Step records back to chart transitions."""

    def __init__(self, chart: Chart) -> None:
        self.chart = chart
        self.states: set[str] = set()
        self.transitions: set[int] = set()
        index = {id(t): i for i, t in enumerate(chart.transitions)}
        # Every step the engine can take is a precomputed record of the compiled
        # table, so a step names its transition (the first one, if two read alike).
        self._by_step: dict[Step, int] = {}
        for row in compile_chart(chart).table.values():
            for arcs in row.values():
                for arc in arcs:
                    self._by_step.setdefault(arc.step, index[id(arc.transition)])
        self.states.update(chart.ancestors(chart.settle(chart.initial)))

    def add(self, step: Step) -> None:
        index = self._by_step.get(step)
        if index is not None:
            self.transitions.add(index)
        self.states.update(self.chart.ancestors(step.target))

    def result(self) -> Coverage:
        return Coverage(self.chart, frozenset(self.states), frozenset(self.transitions))


# --- The catalogue ---------------------------------------------------------------------------

_A, _B, _C = "kit/pod-a", "kit/pod-b", "kit/pod-c"
_W = Role.WORKER
_M = Role.MODELLER


def _worker_catalogue() -> tuple[Scenario, ...]:
    """Cases for a worker under test; the kit is the modeller."""
    return (
        Scenario(
            name="single-run",
            role=_W,
            description="non-batched: NUMBER_OF_BATCHES(1), one run, TASK_COMPLETE",
            echo=Echo(items=_items(3)),
            batched=False,
        ),
        Scenario(
            name="single-run-test-run",
            role=_W,
            description="non-batched test_run: only the first item runs",
            echo=Echo(items=_items(3)),
            batched=False,
            test_run=True,
        ),
        Scenario(
            name="batches",
            role=_W,
            description="streaming batches, the last one short",
            echo=Echo(items=_items(7), batch_size=3),
        ),
        Scenario(
            name="batches-test-run",
            role=_W,
            description="streaming test_run: one batch of one item",
            echo=Echo(items=_items(7), batch_size=3),
            test_run=True,
        ),
        Scenario(
            name="initial-setup-batches",
            role=_W,
            description="ALGORITHM_EXCHANGE before the first NUMBER_OF_BATCHES (streaming)",
            echo=Echo(items=_items(4), batch_size=2, initial_setup=True),
        ),
        Scenario(
            name="initial-setup-single",
            role=_W,
            description="ALGORITHM_EXCHANGE before NUMBER_OF_BATCHES(1) (non-batched)",
            echo=Echo(items=_items(2), initial_setup=True),
            batched=False,
        ),
        Scenario(
            name="resilience",
            role=_W,
            description="a failed batch sends nothing; its items are retried one by one",
            echo=Echo(items=_items(8), batch_size=2, fail_in_batch=("i2", "i5")),
        ),
        Scenario(
            name="resilience-fail-alone",
            role=_W,
            description="an item that fails alone too is reported failed; the task completes",
            echo=Echo(items=_items(6), batch_size=2, fail_in_batch=("i0",), fail_alone=("i3",)),
        ),
        Scenario(
            name="nothing-succeeds",
            role=_W,
            description="every batch and every retry fails: TASK_ABORT(WORKER_ERROR)",
            echo=Echo(items=_items(4), batch_size=2, fail_alone=("i0", "i1", "i2", "i3")),
        ),
        Scenario(
            name="five-failed-batches",
            role=_W,
            description="5 consecutive failed batches: TASK_ABORT(WORKER_ERROR) at once",
            echo=Echo(items=_items(8), batch_size=1, fail_in_batch=_items(6)[1:]),
        ),
        Scenario(
            name="single-run-failure",
            role=_W,
            description="non-batched, an item fails: no resilience, TASK_ABORT(WORKER_ERROR)",
            echo=Echo(items=_items(3), fail_in_batch=("i1",)),
            batched=False,
        ),
        Scenario(
            name="limit-in-batch",
            role=_W,
            description="spec example: total 10, limit 20, a batch of 14 sends 10 then aborts",
            echo=Echo(items=_items(20), batch_size=14, inference_limit=UsageLimit(20, 10)),
        ),
        Scenario(
            name="limit-exact",
            role=_W,
            description="usage reaches the limit exactly: the whole batch, then LIMITS_EXCEEDED",
            echo=Echo(items=_items(6), batch_size=2, inference_limit=UsageLimit(4, 0)),
        ),
        Scenario(
            name="limit-already-over",
            role=_W,
            description="usage is over the limit already: empty results, then LIMITS_EXCEEDED",
            echo=Echo(items=_items(4), batch_size=2, inference_limit=UsageLimit(5, 7)),
        ),
        Scenario(
            name="limit-in-resilience",
            role=_W,
            description="the limit is reached while retrying items",
            echo=Echo(
                items=_items(6),
                batch_size=3,
                fail_in_batch=("i0",),
                inference_limit=UsageLimit(4, 0),
            ),
        ),
        Scenario(
            name="limit-single-run",
            role=_W,
            description="non-batched: the one run is cut at the limit",
            echo=Echo(items=_items(5), inference_limit=UsageLimit(3, 1)),
            batched=False,
        ),
        Scenario(
            name="no-data",
            role=_W,
            description="no items: JOB_ACCEPT, then TASK_ABORT(NO_DATA)",
            echo=Echo(items=()),
        ),
        Scenario(
            name="reject-batch-size",
            role=_W,
            description="batch_size 0: JOB_REJECT(TASK_SETUP_ERROR)",
            echo=Echo(items=_items(3), batch_size=0),
        ),
        Scenario(
            name="reject-duplicate-items",
            role=_W,
            description="duplicate item names: JOB_REJECT(TASK_SETUP_ERROR)",
            echo=Echo(items=("i0", "i1", "i0")),
        ),
        Scenario(
            name="reject-unknown-protocol",
            role=_W,
            description="an unknown protocol class: JOB_REJECT(TASK_SETUP_ERROR)",
            overrides={_A: {"class_name": "conformance.NoSuchProtocol"}},
        ),
        Scenario(
            name="three-pods",
            role=_W,
            description="three workers with different jobs pass the TASK_START barrier together",
            echo=Echo(items=_items(6), batch_size=2),
            pods=(_A, _B, _C),
            overrides={_B: {"items": ["b0", "b1", "b2"]}, _C: {"batch_size": 4}},
        ),
        Scenario(
            name="other-pod-aborts",
            role=_W,
            description="one worker hits its limit; the modeller cancels the other",
            echo=Echo(items=_items(8), batch_size=2),
            pods=(_A, _B),
            overrides={_B: {"inference_limit": {"limit": 1, "total_usage": 0}}},
        ),
        Scenario(
            name="cancel-during-batches",
            role=_W,
            description="the modeller cancels mid-batches: TASK_ABORT(CANCELLED_BY_MODELLER)",
            echo=Echo(items=_items(12), batch_size=1),
            faults=(Fault(_A, FaultKind.CANCEL, ("CURRENT_BATCH_ID",), nth=2),),
        ),
        Scenario(
            name="cancel-before-start",
            role=_W,
            description="the modeller cancels when the worker's TASK_START arrives",
            echo=Echo(items=_items(4), batch_size=2),
            faults=(Fault(_A, FaultKind.CANCEL, ("TASK_START",)),),
        ),
        Scenario(
            name="cancel-after-batches",
            role=_W,
            description='the modeller cancels after BATCHES_COMPLETE "TASK_COMPLETE"',
            echo=Echo(items=_items(4), batch_size=2),
            faults=(Fault(_A, FaultKind.CANCEL, ("BATCHES_COMPLETE",), nth=2),),
        ),
        Scenario(
            name="cancel-twice",
            role=_W,
            description="a second reason to cancel (an abort, then the user) sends one cancel",
            echo=Echo(items=_items(12), batch_size=1),
            pods=(_A, _B),
            overrides={_B: {"inference_limit": {"limit": 1, "total_usage": 0}}},
            faults=(Fault(_B, FaultKind.CANCEL, ("TASK_ABORT",)),),
        ),
        Scenario(
            name="late-accept",
            role=_W,
            description="a JOB_ACCEPT after the response timeout is answered with TASK_CANCEL",
            echo=Echo(items=_items(4), batch_size=2),
            pods=(_A, _B),
            faults=(
                Fault(_B, FaultKind.DELAY_SEND, ("JOB_REQUEST",), seconds=1.0),
                Fault(_A, FaultKind.HOLD_RECV, ("BATCHES_COMPLETE",), nth=2, seconds=3.0, until=_B),
            ),
            response_timeout_s=0.5,
        ),
        Scenario(
            name="late-reject",
            role=_W,
            description="a JOB_REJECT after the response timeout",
            echo=Echo(items=_items(4), batch_size=2),
            pods=(_A, _B),
            overrides={_B: {"batch_size": 0}},
            faults=(
                Fault(_B, FaultKind.DELAY_SEND, ("JOB_REQUEST",), seconds=1.0),
                Fault(_A, FaultKind.HOLD_RECV, ("BATCHES_COMPLETE",), nth=2, seconds=3.0, until=_B),
            ),
            response_timeout_s=0.5,
        ),
        Scenario(
            name="late-after-end",
            role=_W,
            description="the job request arrives after the task ended: nothing is owed",
            echo=Echo(items=_items(2), batch_size=2),
            pods=(_A, _B),
            faults=(Fault(_B, FaultKind.DELAY_SEND, ("JOB_REQUEST",), seconds=1.2),),
            response_timeout_s=0.5,
        ),
        Scenario(
            name="online-check-before-complete",
            role=_W,
            description="a worker waiting for TASK_COMPLETE checks that the modeller is alive",
            echo=Echo(items=_items(2), batch_size=1),
            pods=(_A, _B),
            faults=(Fault(_B, FaultKind.HOLD_RECV, ("BATCHES_COMPLETE",), nth=2, seconds=0.6),),
            expect_online_check=(_A,),
            soft_timeout_s=0.1,
            hard_timeout_s=2.0,
        ),
        Scenario(
            name="online-check-in-setup",
            role=_W,
            description="a worker waiting for ALGORITHM_EXCHANGE checks that the modeller is alive",
            echo=Echo(items=_items(2), batch_size=1, initial_setup=True),
            faults=(Fault(_A, FaultKind.DELAY_SEND, ("ALGORITHM_EXCHANGE",), seconds=0.5),),
            expect_online_check=(_A,),
            soft_timeout_s=0.1,
            hard_timeout_s=2.0,
        ),
        Scenario(
            name="require-all-pods",
            role=_W,
            description="require_all_pods: a rejection cancels the worker that accepted",
            echo=Echo(items=_items(6), batch_size=1),
            pods=(_A, _B),
            overrides={_B: {"items": ["x", "x"]}},
            require_all_pods=True,
            faults=(Fault(_B, FaultKind.DELAY_SEND, ("JOB_REQUEST",), seconds=0.3),),
        ),
        Scenario(
            name="abort-before-other-answers",
            role=_W,
            description="a worker aborts before the other has answered: that one is owed nothing",
            echo=Echo(items=_items(6), batch_size=1),
            pods=(_A, _B),
            overrides={_B: {"items": []}},
            faults=(Fault(_A, FaultKind.DELAY_SEND, ("JOB_REQUEST",), seconds=0.5),),
        ),
        Scenario(
            name="link-drops",
            role=_W,
            description="the link drops mid-task: the worker aborts (MODELLER_TIMEOUT) and exits",
            echo=Echo(items=_items(10), batch_size=1),
            pods=(_A, _B),
            faults=(Fault(_A, FaultKind.DROP, ("CURRENT_BATCH_ID",), nth=2),),
        ),
        Scenario(
            name="garbled-line",
            role=_W,
            description="a line arrives garbled: the modeller drops that worker, cancels the other",
            echo=Echo(items=_items(10), batch_size=1),
            pods=(_A, _B),
            faults=(Fault(_A, FaultKind.GARBLE, ("EVALUATION_RESULTS",), nth=2),),
        ),
        Scenario(
            name="cancel-confirmation-lost",
            role=_W,
            description="the TASK_ABORT answering a cancel is lost; the worker still exits",
            echo=Echo(items=_items(10), batch_size=1),
            faults=(
                Fault(_A, FaultKind.CANCEL, ("CURRENT_BATCH_ID",), nth=2),
                Fault(_A, FaultKind.SWALLOW, ("TASK_ABORT",)),
            ),
        ),
        Scenario(
            name="answer-garbled",
            role=_W,
            description="the JOB_ACCEPT arrives garbled: the modeller gives up on that pod",
            echo=Echo(items=_items(3)),
            pods=(_A, _B),
            faults=(Fault(_B, FaultKind.GARBLE, ("JOB_ACCEPT",)),),
        ),
        Scenario(
            name="answer-lost",
            role=_W,
            description="the link drops with the JOB_ACCEPT: the worker must notice and exit",
            echo=Echo(items=_items(3)),
            pods=(_A, _B),
            faults=(Fault(_B, FaultKind.DROP, ("JOB_ACCEPT",)),),
        ),
        Scenario(
            name="late-answer-garbled",
            role=_W,
            description="a late JOB_ACCEPT arrives garbled",
            echo=Echo(items=_items(4), batch_size=2),
            pods=(_A, _B),
            faults=(
                Fault(_B, FaultKind.DELAY_SEND, ("JOB_REQUEST",), seconds=1.0),
                Fault(_B, FaultKind.GARBLE, ("JOB_ACCEPT",)),
                Fault(_A, FaultKind.HOLD_RECV, ("BATCHES_COMPLETE",), nth=2, seconds=3.0, until=_B),
            ),
            response_timeout_s=0.5,
        ),
        Scenario(
            name="late-answer-lost",
            role=_W,
            description="the link drops with a late JOB_ACCEPT",
            echo=Echo(items=_items(4), batch_size=2),
            pods=(_A, _B),
            faults=(
                Fault(_B, FaultKind.DELAY_SEND, ("JOB_REQUEST",), seconds=1.0),
                Fault(_B, FaultKind.DROP, ("JOB_ACCEPT",)),
                Fault(_A, FaultKind.HOLD_RECV, ("BATCHES_COMPLETE",), nth=2, seconds=3.0, until=_B),
            ),
            response_timeout_s=0.5,
        ),
        Scenario(
            name="invalid-first-line",
            role=_W,
            description="a first line that is not a JOB_REQUEST: write nothing, exit non-zero",
            first_line=b'{"v": 1, "type": "HELLO"}\n',
        ),
        Scenario(
            name="input-ends-before-job",
            role=_W,
            description="the input ends before any JOB_REQUEST: write nothing and exit",
            first_line=b"",
        ),
    )


def _modeller_catalogue() -> tuple[Scenario, ...]:
    """Cases for a modeller under test; the kit plays every pod."""
    return (
        Scenario(
            name="single-run",
            role=_M,
            description="one pod, non-batched",
            echo=Echo(items=_items(3)),
            batched=False,
        ),
        Scenario(
            name="batches",
            role=_M,
            description="one pod, streaming batches",
            echo=Echo(items=_items(7), batch_size=3),
        ),
        Scenario(
            name="two-pods",
            role=_M,
            description="two pods: TASK_START only after both are ready, TASK_COMPLETE after both",
            echo=Echo(items=_items(6), batch_size=2),
            pods=(_A, _B),
        ),
        Scenario(
            name="three-pods-overrides",
            role=_M,
            description="job_overrides give each pod its own items",
            echo=Echo(items=_items(4), batch_size=2),
            pods=(_A, _B, _C),
            overrides={_B: {"items": ["b0", "b1", "b2"]}, _C: {"batch_size": 3}},
        ),
        Scenario(
            name="resilience",
            role=_M,
            description="failed batches and retried items, with results filed by meta",
            echo=Echo(items=_items(8), batch_size=2, fail_in_batch=("i2",), fail_alone=("i5",)),
            pods=(_A, _B),
        ),
        Scenario(
            name="initial-setup",
            role=_M,
            description="ALGORITHM_EXCHANGE to each pod as its JOB_ACCEPT arrives",
            echo=Echo(items=_items(4), batch_size=2, initial_setup=True),
            pods=(_A, _B),
        ),
        Scenario(
            name="test-run",
            role=_M,
            description="test_run: one item per pod",
            echo=Echo(items=_items(4), batch_size=2),
            pods=(_A, _B),
            test_run=True,
        ),
        Scenario(
            name="slow-pod-barrier",
            role=_M,
            description="one pod is slow to send TASK_START; nobody gets TASK_START before it",
            echo=Echo(items=_items(4), batch_size=2),
            pods=(_A, _B),
            faults=(Fault(_B, FaultKind.DELAY_SEND, ("TASK_START",), seconds=0.4),),
        ),
        Scenario(
            name="slow-pod-completion",
            role=_M,
            description="one pod finishes late; the other waits, checks online, then completes",
            echo=Echo(items=_items(4), batch_size=2),
            pods=(_A, _B),
            # b gets its TASK_START late, so a waits for TASK_COMPLETE meanwhile.
            faults=(Fault(_B, FaultKind.HOLD_RECV, ("TASK_START",), seconds=1.0),),
            soft_timeout_s=0.15,
            hard_timeout_s=0.5,
        ),
        Scenario(
            name="pod-aborts",
            role=_M,
            description="one pod hits its limit: the modeller cancels the other",
            echo=Echo(items=_items(10), batch_size=1),
            pods=(_A, _B),
            overrides={_B: {"inference_limit": {"limit": 2, "total_usage": 0}}},
            faults=(Fault(_A, FaultKind.DELAY_SEND, ("BATCHES_COMPLETE",), nth=2, seconds=0.5),),
        ),
        Scenario(
            name="five-failed-batches",
            role=_M,
            description="a pod aborts after 5 consecutive failed batches; the other is cancelled",
            echo=Echo(items=_items(8), batch_size=1),
            pods=(_A, _B),
            overrides={_B: {"fail_in_batch": ["i1", "i2", "i3", "i4", "i5"]}},
        ),
        Scenario(
            name="pod-aborts-before-start",
            role=_M,
            description="one pod has no data: the other is cancelled, nobody gets TASK_START",
            echo=Echo(items=_items(4), batch_size=2),
            pods=(_A, _B),
            overrides={_B: {"items": []}},
        ),
        Scenario(
            name="pod-fails",
            role=_M,
            description="one pod's run fails (WORKER_ERROR): the other is cancelled",
            echo=Echo(items=_items(3)),
            pods=(_A, _B),
            batched=False,
            overrides={_B: {"fail_in_batch": ["i1"]}},
        ),
        Scenario(
            name="pod-rejects",
            role=_M,
            description="one pod rejects the job; the other completes alone",
            echo=Echo(items=_items(4), batch_size=2),
            pods=(_A, _B),
            overrides={_B: {"batch_size": 0}},
        ),
        Scenario(
            name="all-reject",
            role=_M,
            description="every pod rejects: the task ends and the modeller exits",
            echo=Echo(items=_items(4), batch_size=0),
            pods=(_A, _B),
        ),
        Scenario(
            name="require-all-pods",
            role=_M,
            description="require_all_pods and a rejection: the pod that accepted is cancelled",
            echo=Echo(items=_items(6), batch_size=1),
            pods=(_A, _B),
            overrides={_B: {"batch_size": 0}},
            require_all_pods=True,
            # b answers after a, so a is accepted when the rejection comes.
            faults=(
                Fault(_B, FaultKind.DELAY_SEND, ("JOB_REJECT",), seconds=0.3),
                Fault(_A, FaultKind.DELAY_SEND, ("BATCHES_COMPLETE",), nth=2, seconds=0.8),
            ),
        ),
        Scenario(
            name="silent-pod",
            role=_M,
            description="a pod never answers: after the response timeout the others run",
            echo=Echo(items=_items(4), batch_size=2),
            pods=(_A, _B, _C),
            silent=(_C,),
            response_timeout_s=0.5,
        ),
        Scenario(
            name="late-accept",
            role=_M,
            description="a JOB_ACCEPT after the response timeout is answered with TASK_CANCEL",
            echo=Echo(items=_items(4), batch_size=2),
            pods=(_A, _B),
            response_timeout_s=0.5,
            faults=(
                Fault(_B, FaultKind.DELAY_SEND, ("JOB_ACCEPT",), seconds=1.0),
                Fault(_A, FaultKind.DELAY_SEND, ("BATCHES_COMPLETE",), nth=2, seconds=1.6),
            ),
            expect={_B: "aborted:CANCELLED_BY_MODELLER"},
        ),
        Scenario(
            name="late-accept-after-end",
            role=_M,
            description="a JOB_ACCEPT after the task ended is owed nothing; the modeller exits",
            echo=Echo(items=_items(2), batch_size=2),
            pods=(_A, _B),
            response_timeout_s=0.5,
            faults=(Fault(_B, FaultKind.DELAY_SEND, ("JOB_ACCEPT",), seconds=1.8),),
            expect={_B: "aborted:MODELLER_TIMEOUT|aborted:CANCELLED_BY_MODELLER"},
        ),
        Scenario(
            name="online-check-in-setup",
            role=_M,
            description="a pod waiting for ALGORITHM_EXCHANGE checks online; it is answered",
            echo=Echo(items=_items(2), batch_size=1, initial_setup=True),
            faults=(Fault(_A, FaultKind.HOLD_RECV, ("ALGORITHM_EXCHANGE",), seconds=0.5),),
            soft_timeout_s=0.15,
        ),
        Scenario(
            name="setup-timeout",
            role=_M,
            description="a pod gives up waiting for its setup values: the other is cancelled",
            echo=Echo(items=_items(4), batch_size=2, initial_setup=True),
            pods=(_A, _B),
            faults=(
                Fault(
                    _A,
                    FaultKind.HOLD_RECV,
                    ("ALGORITHM_EXCHANGE", "ONLINE_RESPONSE"),
                    nth=None,
                    seconds=2.0,
                ),
            ),
            expect={_A: "aborted:MODELLER_TIMEOUT"},
            soft_timeout_s=0.2,
            hard_timeout_s=0.4,
        ),
        Scenario(
            name="complete-delayed",
            role=_M,
            description="a pod gets TASK_COMPLETE late: it checks online, and ends when the"
            " modeller, done, exits",
            echo=Echo(items=_items(2), batch_size=2),
            faults=(
                Fault(
                    _A,
                    FaultKind.HOLD_RECV,
                    ("TASK_COMPLETE", "ONLINE_RESPONSE"),
                    nth=None,
                    seconds=2.0,
                ),
            ),
            expect={_A: "aborted:MODELLER_TIMEOUT"},
            soft_timeout_s=0.2,
            hard_timeout_s=0.4,
        ),
        Scenario(
            name="start-timeout-single",
            role=_M,
            description="a non-batched pod gives up waiting for TASK_START",
            echo=Echo(items=_items(2)),
            batched=False,
            task_start_timeout_s=0.3,
            faults=(Fault(_A, FaultKind.HOLD_RECV, ("TASK_START",), seconds=2.0),),
            expect={_A: "aborted:MODELLER_TIMEOUT"},
        ),
        Scenario(
            name="start-timeout-batches",
            role=_M,
            description="a streaming pod gives up waiting for TASK_START; the other is cancelled",
            echo=Echo(items=_items(4), batch_size=2),
            pods=(_A, _B),
            task_start_timeout_s=0.3,
            faults=(Fault(_A, FaultKind.HOLD_RECV, ("TASK_START",), seconds=2.0),),
            expect={_A: "aborted:MODELLER_TIMEOUT"},
        ),
    )


@functools.cache
def catalogue(role: Role) -> tuple[Scenario, ...]:
    """The named scenarios for testing an implementation of ``role``."""
    return _worker_catalogue() if role is Role.WORKER else _modeller_catalogue()


# --- Generated scenarios ---------------------------------------------------------------------


def generated_scenarios(role: Role, *, seed: int, count: int) -> tuple[Scenario, ...]:
    """``count`` Hypothesis-generated scenarios, the same ones for the same seed."""
    if count <= 0:
        return ()
    try:
        from hypothesis import HealthCheck, Phase, given, settings
        from hypothesis import seed as with_seed
        from hypothesis import strategies as st
    except ImportError:
        raise ConfigError(
            "generated scenarios need Hypothesis: pip install hypothesis, or run only the"
            " named scenarios (--generated 0)"
        ) from None

    names = st.sampled_from(_items(10))

    @st.composite
    def jobs(draw: st.DrawFn) -> Scenario:
        items = tuple(draw(st.lists(names, max_size=8, unique=True)))
        failing = (
            st.lists(st.sampled_from(items), max_size=3, unique=True) if items else st.just([])
        )
        limit = draw(
            st.none()
            | st.builds(
                UsageLimit,
                limit=st.integers(1, 12),
                total_usage=st.integers(0, 8),
            )
        )
        echo = Echo(
            items=items,
            batch_size=draw(st.integers(1, 4)),
            fail_in_batch=tuple(draw(failing)),
            fail_alone=tuple(draw(failing)),
            inference_limit=limit,
            initial_setup=draw(st.booleans()),
        )
        pods = (_A, _B, _C)[: draw(st.integers(1, 3))]
        overrides = {}
        for pod in pods[1:]:
            if draw(st.booleans()):
                overrides[pod] = {"items": list(draw(st.lists(names, max_size=6, unique=True)))}
        return Scenario(
            name="generated",
            role=role,
            description="",
            echo=echo,
            pods=pods,
            batched=draw(st.booleans()),
            test_run=draw(st.integers(0, 5)) == 0,
            overrides=overrides,
        )

    drawn: list[Scenario] = []

    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @with_seed(seed)
    @given(jobs())
    def collect(scenario: Scenario) -> None:
        drawn.append(scenario)

    collect()
    result = []
    for number, scenario in enumerate(drawn[:count], start=1):
        prediction = scenario.echo.predict(batched=scenario.batched, test_run=scenario.test_run)
        outcome = "completes" if prediction.complete else f"aborts {prediction.abort_reason}"
        described = (
            f"Hypothesis seed {seed} #{number}: {len(scenario.pods)} pod(s),"
            f" {len(scenario.echo.items)} items, batch_size {scenario.echo.batch_size},"
            f" {'batched' if scenario.batched else 'non-batched'}; pod-a {outcome}"
        )
        result.append(attrs.evolve(scenario, name=f"generated-{number}", description=described))
    return tuple(result)


def select_scenarios(
    role: Role, names: Sequence[str | Scenario] | None, *, seed: int, generated: int
) -> tuple[Scenario, ...]:
    """The catalogue (or the named part of it) followed by the generated scenarios.

    Raises:
        ConfigError: A name is neither in the catalogue nor ``generated-<n>``.
    """
    named = {s.name: s for s in catalogue(role)}
    if names is None:
        return catalogue(role) + generated_scenarios(role, seed=seed, count=generated)
    wanted_generated = [n for n in names if isinstance(n, str) and n.startswith("generated-")]
    count = generated
    for name in wanted_generated:
        number = name.removeprefix("generated-")
        if not number.isdigit() or int(number) < 1:
            raise ConfigError(
                f"unknown scenario {name!r}: generated scenarios are generated-1, generated-2, ..."
            )
        count = max(count, int(number))
    made = {s.name: s for s in generated_scenarios(role, seed=seed, count=count)}
    chosen: list[Scenario] = []
    for item in names:
        if isinstance(item, Scenario):
            chosen.append(item)
        elif item in named:
            chosen.append(named[item])
        elif item in made:
            chosen.append(made[item])
        else:
            close = difflib.get_close_matches(item, list(named), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"unknown {role.value} scenario {item!r}{hint} (see `fsm-protocol conform"
                f" --role {role.value} --list`)"
            )
    if not wanted_generated:
        chosen += [s for s in made.values() if s not in chosen][:generated]
    return tuple(chosen)


# --- Transports: how the kit reaches the implementation under test -------------------------------


class WorkerEndpoint(Protocol):
    """One worker under test, as the kit's modeller reaches it.

    ``transport`` carries the conversation. After the task, :meth:`drain`
    returns what the worker still wrote (until it closed its output or
    ``seconds`` passed), and :meth:`finish` its exit status (None if it still
    runs); :meth:`close` kills it.
    """

    transport: Transport

    async def write_raw(self, line: bytes) -> None: ...

    async def cut(self) -> None: ...

    async def drain(self, seconds: float) -> list[bytes]: ...

    async def finish(self, seconds: float) -> int | None: ...

    def stderr_tail(self) -> str: ...

    async def close(self) -> None: ...


class ModellerEndpoint(Protocol):
    """One modeller under test, as the kit's pods reach it.

    :meth:`run` reads the modeller's messages until it stops writing and
    hands each to its pod's ``transport(pod)``.
    """

    def transport(self, pod: str) -> Transport: ...

    async def run(self) -> None: ...

    async def end_input(self) -> None: ...

    async def finish(self, seconds: float) -> int | None: ...

    def stderr_tail(self) -> str: ...

    async def close(self) -> None: ...


WorkerLauncher = Callable[
    [trio.Nursery, Sequence[str], Sequence[str]], Awaitable[dict[str, WorkerEndpoint]]
]
"""Starts the workers of one case: ``(nursery, command, pods) -> {pod: endpoint}``.

It starts the command once per pod (``{pod}`` in an argument is replaced by the
pod's id) and returns one endpoint per pod; on failure it raises ``OSError``
after cleaning up what it started.
"""
ModellerLauncher = Callable[
    [
        trio.Nursery,
        Sequence[str],
        bytes,
        Sequence[str],
        Callable[[bytes, Message | None], None],
        Callable[[str, bytes], None],
    ],
    Awaitable[ModellerEndpoint],
]


@final
class _StdioWorker:
    def __init__(self, peer: ProcessPeer) -> None:
        self.peer = peer
        self.transport: Transport = StdioTransport(peer)

    async def write_raw(self, line: bytes) -> None:
        await self.peer.write(line)

    async def cut(self) -> None:
        await self.peer.close_input()

    async def drain(self, seconds: float) -> list[bytes]:
        lines: list[bytes] = []
        with trio.move_on_after(seconds):
            while len(lines) < _MAX_DRAIN_LINES:
                try:
                    lines.append(await self.peer.read_line())
                except trio.EndOfChannel:
                    break
        return lines

    async def finish(self, seconds: float) -> int | None:
        await self.peer.close_input()
        return await self.peer.wait_exit(seconds)

    def stderr_tail(self) -> str:
        return self.peer.stderr_tail()

    async def close(self) -> None:
        await self.peer.kill()


def pod_command(command: Sequence[str], pod: str) -> list[str]:
    """``command`` with ``{pod}`` in its arguments replaced by the pod's id."""
    return [part.replace("{pod}", pod) for part in command]


async def open_stdio_workers(
    nursery: trio.Nursery, command: Sequence[str], pods: Sequence[str]
) -> dict[str, WorkerEndpoint]:
    """Start ``command`` once per pod; each conversation is that process's stdin and stdout."""
    started: dict[str, WorkerEndpoint] = {}
    try:
        for pod in pods:
            peer = await ProcessPeer.start(nursery, pod_command(command, pod), name=pod)
            started[pod] = _StdioWorker(peer)
    except OSError:
        with trio.CancelScope(shield=True):
            for endpoint in started.values():
                await endpoint.close()
        raise
    return started


@final
class _StdioModeller:
    def __init__(self, peer: ProcessPeer, shared: SharedStdio) -> None:
        self.peer = peer
        self.shared = shared

    def transport(self, pod: str) -> Transport:
        return self.shared.transport(pod)

    async def run(self) -> None:
        await self.shared.run()

    async def end_input(self) -> None:
        await self.peer.close_input()

    async def finish(self, seconds: float) -> int | None:
        return await self.peer.wait_exit(seconds)

    def stderr_tail(self) -> str:
        return self.peer.stderr_tail()

    async def close(self) -> None:
        await self.peer.kill()


async def open_stdio_modeller(
    nursery: trio.Nursery,
    command: Sequence[str],
    scenario_line: bytes,
    pods: Sequence[str],
    on_line: Callable[[bytes, Message | None], None],
    on_problem: Callable[[str, bytes], None],
) -> ModellerEndpoint:
    """Start ``command`` once, write the scenario line, and route its lines by recipient."""
    peer = await ProcessPeer.start(nursery, command, name="modeller")
    await peer.write(scenario_line)
    shared = SharedStdio(peer, pods, on_line=on_line, on_problem=on_problem, max_lines=MAX_LINES)
    return _StdioModeller(peer, shared)


# --- TCP: the same conversations over loopback connections -------------------------------------

TCP_HOST: Final = "127.0.0.1"
"""The kit listens and connects on loopback only."""

# The kit's own limits on a connection: generous, since the kit judges what it reads.
_KIT_LIMITS: Final = Limits(max_messages_per_second=100_000.0, burst=100_000, keepalive=False)
_CONNECT_WAIT: Final = 5.0
_EXIT_GRACE: Final = 0.5
# The exit statuses of a process after a task that did not fail it: the CLI's
# ``worker`` and ``modeller serve`` exit 1 when their task did not complete.
_TCP_CLEAN_EXITS: Final = frozenset({0, 1})


def tcp_command(command: Sequence[str], **values: object) -> list[str]:
    """``command`` with ``{host}``, ``{port}``, ``{pod}``, ``{task}``, ``{port_file}`` filled in.

    Only the placeholders given in ``values`` are replaced; other braces are left alone.
    """
    out = []
    for part in command:
        for name, value in values.items():
            part = part.replace("{" + name + "}", str(value))
        out.append(part)
    return out


def _uses(command: Sequence[str], name: str) -> bool:
    return any("{" + name + "}" in part for part in command)


def check_tcp_command(role: Role, command: Sequence[str]) -> None:
    """Raise ConfigError when ``command`` cannot be told where to connect or listen."""
    if role is Role.WORKER and not _uses(command, "port"):
        raise ConfigError(
            "--transport tcp --role worker: the command must take the kit's port as {port}"
            " (and may take {host} and {pod}), e.g."
            " fsm-protocol worker --connect {host}:{port} --pod-id {pod}"
        )
    if role is Role.MODELLER and not (_uses(command, "port") or _uses(command, "port_file")):
        raise ConfigError(
            "--transport tcp --role modeller: the command must listen on {port} (a free port the"
            " kit picks) or write the port it listens on to {port_file}, and read the task from"
            " {task}, e.g. fsm-protocol modeller serve --listen {host}:{port} --task {task}"
        )
    if role is Role.MODELLER and not _uses(command, "task"):
        raise ConfigError(
            "--transport tcp --role modeller: the command must read the task file {task}"
            " (the CONFORMANCE_SCENARIO body as TASK.json)"
        )


async def _discard_output(peer: ProcessPeer) -> None:
    """Read a TCP implementation's stdout, which the kit does not judge, so it never blocks."""
    with contextlib.suppress(trio.EndOfChannel):
        while True:
            await peer.read_line()


async def _half_close(conn: TcpTransport) -> None:
    """Send EOF on the connection but keep reading it; a full close if it cannot half-close."""
    await conn.send_eof()


def _unbounded_reads(conn: TcpTransport) -> None:
    # receive_line waits at most handshake_timeout_s; after the hello the case deadline rules.
    conn.limits = attrs.evolve(conn.limits, handshake_timeout_s=math.inf)


@final
class _TcpKitSide:
    """The kit modeller's side of one accepted worker connection: closing it half-closes."""

    def __init__(self, conn: TcpTransport) -> None:
        self.conn = conn
        self.eof_sent = False

    async def send(self, message: Message) -> None:
        await self.conn.send(message)

    async def receive(self) -> Message:
        return await self.conn.receive()

    async def aclose(self) -> None:
        # Like closing a worker's stdin: it sees the end, and the kit still reads what follows.
        if not self.eof_sent:
            self.eof_sent = True
            await _half_close(self.conn)


@final
class _TcpWorker:
    clean_exits: frozenset[int] = _TCP_CLEAN_EXITS

    def __init__(self, peer: ProcessPeer, conn: TcpTransport) -> None:
        self.peer = peer
        self.conn = conn
        self.side = _TcpKitSide(conn)
        self.transport: Transport = self.side

    async def write_raw(self, line: bytes) -> None:
        await self.conn.send_line(line)

    async def cut(self) -> None:
        await self.side.aclose()

    async def drain(self, seconds: float) -> list[bytes]:
        lines: list[bytes] = []
        _unbounded_reads(self.conn)
        with trio.move_on_after(seconds):
            while len(lines) < _MAX_DRAIN_LINES:
                try:
                    lines.append(await self.conn.receive_line(self.conn.limits.max_line_bytes))
                except (trio.EndOfChannel, TransportError, DecodeError):
                    break
        return lines

    async def finish(self, seconds: float) -> int | None:
        await self.side.aclose()
        return await self.peer.wait_exit(seconds)

    def stderr_tail(self) -> str:
        return self.peer.stderr_tail()

    async def close(self) -> None:
        await self.conn.aclose()
        await self.peer.kill()


async def _admit_workers(
    listener: PodListener, peers: Mapping[str, ProcessPeer], timeout: float
) -> dict[str, TcpTransport]:
    """Wait for the pods to connect; stop early once every process has exited."""
    admitted: dict[str, TcpTransport] = {}
    async with trio.open_nursery() as nursery:

        async def wait() -> None:
            admitted.update(await listener.wait_for_pods(timeout))
            nursery.cancel_scope.cancel()

        async def all_exited() -> None:
            for peer in peers.values():
                await peer.process.wait()
            await trio.sleep(_EXIT_GRACE)  # a hello already sent is still admitted
            nursery.cancel_scope.cancel()

        nursery.start_soon(wait)
        nursery.start_soon(all_exited)
    return admitted


async def open_tcp_workers(
    nursery: trio.Nursery, command: Sequence[str], pods: Sequence[str]
) -> dict[str, WorkerEndpoint]:
    """Listen on loopback, start ``command`` once per pod, and take each pod's connection.

    ``{host}``, ``{port}`` and ``{pod}`` in the command are filled in; each
    process must dial ``{host}:{port}`` and say hello as ``{pod}``.
    """
    listener = await PodListener.open(TCP_HOST, 0, pods=pods, limits=_KIT_LIMITS)
    peers: dict[str, ProcessPeer] = {}
    admitted: dict[str, TcpTransport] = {}
    try:
        for pod in pods:
            argv = tcp_command(command, host=TCP_HOST, port=listener.port, pod=pod)
            peers[pod] = await ProcessPeer.start(nursery, argv, name=pod)
            nursery.start_soon(_discard_output, peers[pod])
        admitted = await _admit_workers(listener, peers, _CONNECT_WAIT)
        missing = [pod for pod in pods if pod not in admitted]
        if missing:
            problems = []
            for pod in missing:
                code = peers[pod].returncode
                state = "still running" if code is None else f"exited with status {code}"
                tail = " | ".join(_stderr_detail(peers[pod].stderr_tail())[-3:])
                problems.append(
                    f"pod {pod} did not connect to {TCP_HOST}:{listener.port} within"
                    f" {_CONNECT_WAIT:g} s (its process {state})"
                    + (f"; stderr: {tail}" if tail else "")
                )
            raise OSError("; ".join(problems))
    except BaseException:
        with trio.CancelScope(shield=True):
            await listener.aclose()
            for conn in admitted.values():
                await conn.aclose()
            for peer in peers.values():
                await peer.kill()
        raise
    endpoints: dict[str, WorkerEndpoint] = {}
    for pod in pods:
        conn = admitted[pod]
        # The kit judges every line itself, as over stdio: no sender check, no early close.
        conn.expect_sender = None
        conn.close_on_bad_frame = False
        endpoints[pod] = _TcpWorker(peers[pod], conn)
    return endpoints


@final
class _TcpPodEnd:
    """One kit pod's end of its own connection to the modeller under test."""

    def __init__(self, conn: TcpTransport, incoming: trio.MemoryReceiveChannel[Message]) -> None:
        self.conn = conn
        self._incoming = incoming
        self._closed = False

    async def send(self, message: Message) -> None:
        if self._closed:
            raise ClosedTransportError("this pod's conversation was closed")
        await self.conn.send(message)

    async def receive(self) -> Message:
        if self._closed:
            raise ClosedTransportError("this pod's conversation was closed")
        return await self._incoming.receive()

    async def aclose(self) -> None:
        # A pod that has ended says so with EOF; the kit keeps reading for the trace.
        if not self._closed:
            self._closed = True
            await self._incoming.aclose()
            await _half_close(self.conn)


@final
class _TcpModeller:
    clean_exits: frozenset[int] = _TCP_CLEAN_EXITS

    def __init__(
        self,
        peer: ProcessPeer,
        conns: dict[str, TcpTransport],
        folder: str,
        on_line: Callable[[bytes, Message | None], None],
        on_problem: Callable[[str, bytes], None],
    ) -> None:
        self.peer = peer
        self.conns = conns
        self.folder = folder
        self._on_line = on_line
        self._on_problem = on_problem
        self._channels: dict[str, trio.MemorySendChannel[Message]] = {}
        self._ends: dict[str, _TcpPodEnd] = {}
        self._count = 0
        for pod, conn in conns.items():
            send, receive = trio.open_memory_channel[Message](math.inf)
            self._channels[pod] = send
            self._ends[pod] = _TcpPodEnd(conn, receive)

    def transport(self, pod: str) -> Transport:
        return self._ends[pod]

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                for pod, conn in self.conns.items():
                    nursery.start_soon(self._read, pod, conn, nursery.cancel_scope)
        finally:
            for send in self._channels.values():
                send.close()

    async def _read(self, pod: str, conn: TcpTransport, stop: trio.CancelScope) -> None:
        limit = conn.limits.max_line_bytes
        try:
            while True:
                try:
                    line = await conn.receive_line(limit)
                except (trio.EndOfChannel, TransportError):
                    return
                except DecodeError as exc:
                    raw = exc.line if isinstance(exc.line, bytes) else b""
                    self._on_line(raw[:200], None)
                    self._on_problem(f"the modeller wrote an invalid line to pod {pod}: {exc}", raw)
                    stop.cancel()
                    return
                self._count += 1
                if self._count > MAX_LINES:
                    self._on_problem(f"the modeller wrote more than {MAX_LINES} lines", line)
                    stop.cancel()
                    return
                try:
                    message = decode(line, max_line_bytes=limit)
                except DecodeError as exc:
                    self._on_line(line[:200], None)
                    self._on_problem(f"the modeller wrote an invalid line: {exc}", line)
                    stop.cancel()
                    return
                self._on_line(line, message)
                if message.recipient != pod:
                    known = message.recipient in self.conns
                    self._on_problem(
                        f"the modeller wrote {message.type.value} to {message.recipient!r} on pod"
                        f" {pod}'s connection"
                        + ("" if known else ", and it is not one of the scenario's pods"),
                        line,
                    )
                    stop.cancel()
                    return
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    self._channels[pod].send_nowait(message)
        finally:
            self._channels[pod].close()

    async def end_input(self) -> None:
        for conn in self.conns.values():
            await _half_close(conn)
        await self.peer.close_input()

    async def finish(self, seconds: float) -> int | None:
        return await self.peer.wait_exit(seconds)

    def stderr_tail(self) -> str:
        return self.peer.stderr_tail()

    async def close(self) -> None:
        for conn in self.conns.values():
            await conn.aclose()
        await self.peer.kill()
        shutil.rmtree(self.folder, ignore_errors=True)


def _clean_exits(endpoints: Iterable[object]) -> frozenset[int]:
    """The exit statuses that are no crash: 0, and over TCP 1 (a task that did not complete)."""
    found: set[int] = set()
    for endpoint in endpoints:
        found |= getattr(endpoint, "clean_exits", frozenset({0}))
    return frozenset(found or {0})


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


async def _modeller_port(peer: ProcessPeer, port_file: Path, timeout: float) -> int:
    with trio.move_on_after(timeout):
        while True:
            with contextlib.suppress(OSError, ValueError):
                return int(port_file.read_text().strip())
            if peer.returncode is not None:
                break
            await trio.sleep(0.02)
    raise OSError(
        f"the modeller wrote no port to {port_file} within {timeout:g} s"
        + (f" (it exited with status {peer.returncode})" if peer.returncode is not None else "")
    )


async def _dial(peer: ProcessPeer, port: int, pod: str, timeout: float) -> TcpTransport:
    """Connect as ``pod``, retrying while the modeller starts up."""
    deadline = trio.current_time() + timeout
    while True:
        try:
            conn = await connect(TCP_HOST, port, pod_id=pod, limits=_KIT_LIMITS, job_timeout_s=None)
        except BrokenTransportError as exc:
            if peer.returncode is not None:
                raise OSError(
                    f"the modeller exited with status {peer.returncode} before pod {pod} could"
                    " connect"
                ) from exc
            if trio.current_time() > deadline:
                raise OSError(f"pod {pod} could not connect within {timeout:g} s: {exc}") from exc
            await trio.sleep(0.05)
            continue
        except TransportError as exc:  # the hello was refused
            raise OSError(f"pod {pod} could not connect: {exc}") from exc
        _unbounded_reads(conn)
        return conn


async def open_tcp_modeller(
    nursery: trio.Nursery,
    command: Sequence[str],
    scenario_line: bytes,
    pods: Sequence[str],
    on_line: Callable[[bytes, Message | None], None],
    on_problem: Callable[[str, bytes], None],
) -> ModellerEndpoint:
    """Write the scenario as TASK.json, start ``command`` once, and connect every pod.

    ``{task}`` is the task file (the ``CONFORMANCE_SCENARIO`` body, with its
    ``task_id``); the command listens on ``{host}:{port}`` (a free port the
    kit picked) or writes the port it listens on to ``{port_file}``.
    """
    wire = json.loads(scenario_line)
    folder = tempfile.mkdtemp(prefix="fsm-conform-")
    conns: dict[str, TcpTransport] = {}
    peer: ProcessPeer | None = None
    try:
        task = Path(folder, "task.json")
        task.write_text(json.dumps({**wire["body"], "task_id": wire["task_id"]}), "utf-8")
        port_file = Path(folder, "port")
        by_file = _uses(command, "port_file")
        port = 0 if by_file else _free_port(TCP_HOST)
        argv = tcp_command(command, host=TCP_HOST, port=port, task=task, port_file=port_file)
        peer = await ProcessPeer.start(nursery, argv, name="modeller")
        nursery.start_soon(_discard_output, peer)
        if by_file:
            port = await _modeller_port(peer, port_file, _CONNECT_WAIT)
        for pod in pods:
            conns[pod] = await _dial(peer, port, pod, _CONNECT_WAIT)
    except BaseException as exc:
        with trio.CancelScope(shield=True):
            for conn in conns.values():
                await conn.aclose()
            if peer is not None:
                await peer.kill()
            shutil.rmtree(folder, ignore_errors=True)
        if isinstance(exc, OSError) and peer is not None:
            tail = " | ".join(_stderr_detail(peer.stderr_tail())[-3:])
            if tail:
                raise OSError(f"{exc}; stderr: {tail}") from exc
        raise
    return _TcpModeller(peer, conns, folder, on_line, on_problem)


WORKER_TRANSPORTS: Final[dict[str, WorkerLauncher]] = {
    "stdio": open_stdio_workers,
    "tcp": open_tcp_workers,
}
"""How ``--transport NAME`` starts a worker under test."""

MODELLER_TRANSPORTS: Final[dict[str, ModellerLauncher]] = {
    "stdio": open_stdio_modeller,
    "tcp": open_tcp_modeller,
}
"""How ``--transport NAME`` starts a modeller under test."""


# --- Recording ----------------------------------------------------------------------------------


@attrs.frozen
class _Marker:
    """An internal event of the kit's modeller, for the checker: not a line."""

    pod: str
    event: str
    excuse: bool = False


_FAULTED: Final = object()  # in a pod's arrivals: a message the kit faulted on purpose
_MARKED_EVENTS: Final = frozenset({"response_timeout", "task_ended", "cancel_requested"})
_FAULT_EVENTS: Final = frozenset({"bad_input", "link_lost", "cancel_unconfirmed"})


class _Recorder:
    """The trace of one case, in the order the kit's side processed it."""

    def __init__(self, chart: Chart, coverage: _CoverageRecorder) -> None:
        self.entries: list[bytes | _Marker] = []
        self.arrivals: dict[str, collections.deque[object]] = collections.defaultdict(
            collections.deque
        )
        self.coverage = coverage
        self.chart = chart
        self.faulted: set[str] = set()
        self.swallowed: set[str] = set()
        self.cut: set[str] = set()  # pods the kit stopped listening to
        self.online_checks: set[str] = set()
        self.problems: list[tuple[str, bytes]] = []
        self.after_fault: dict[str, list[bytes]] = collections.defaultdict(list)
        self.states: dict[str, str] = {}
        self.notes: list[Note] = []
        self.answered: dict[str, trio.Event] = collections.defaultdict(trio.Event)
        self.ended_from: dict[str, str] = {}
        self.lost_at: dict[str, int] = {}
        self.requested_at: dict[str, float] = {}
        self.latency = 0.0

    @property
    def line_count(self) -> int:
        return sum(1 for e in self.entries if isinstance(e, bytes))

    def note(self, pod: str, text: str) -> None:
        self.notes.append(Note(self.line_count, pod, text))

    def line(self, raw: bytes) -> None:
        self.entries.append(raw if raw.endswith(b"\n") else raw + b"\n")


# --- Running a worker under test -----------------------------------------------------------


class _Matcher:
    """Counts messages per fault and says which fault applies to a message."""

    def __init__(self, faults: Iterable[Fault]) -> None:
        self.faults = list(faults)
        self.seen = [0] * len(self.faults)

    def match(self, type_: str, kinds: frozenset[FaultKind]) -> list[Fault]:
        found = []
        for i, fault in enumerate(self.faults):
            if fault.kind in kinds and type_ in fault.on:
                self.seen[i] += 1
                if fault.nth is None or self.seen[i] == fault.nth:
                    found.append(fault)
        return found


_KIT_SEND: Final = frozenset({FaultKind.DELAY_SEND})
_KIT_RECV: Final = frozenset(
    {
        FaultKind.HOLD_RECV,
        FaultKind.CANCEL,
        FaultKind.DROP,
        FaultKind.GARBLE,
        FaultKind.SWALLOW,
    }
)


@final
class _KitLink:
    """The kit modeller's side of one worker's link: faults, and the record of arrivals."""

    def __init__(
        self,
        pod: str,
        endpoint: WorkerEndpoint,
        faults: Iterable[Fault],
        recorder: _Recorder,
        cancel: trio.Event,
        scale: float,
    ) -> None:
        self.pod = pod
        self.endpoint = endpoint
        self.inner = endpoint.transport
        self.matcher = _Matcher(faults)
        self.recorder = recorder
        self.cancel = cancel
        self.scale = scale
        self.received = 0

    async def send(self, message: Message) -> None:
        delayed = False
        for fault in self.matcher.match(message.type.value, _KIT_SEND):
            self.recorder.note(self.pod, f"{message.type.value} held back {fault.seconds:g} s")
            await trio.sleep(fault.seconds * self.scale)
            delayed = True
        if message.type is MessageType.JOB_REQUEST and not delayed:
            self.recorder.requested_at[self.pod] = trio.current_time()
        await self.inner.send(message)

    def _answered(self, message: Message) -> None:
        if message.type in (MessageType.JOB_ACCEPT, MessageType.JOB_REJECT):
            self.recorder.answered[self.pod].set()
            asked = self.recorder.requested_at.get(self.pod)
            if asked is not None:
                latency = trio.current_time() - asked
                self.recorder.latency = max(self.recorder.latency, latency)

    async def receive(self) -> Message:
        arrivals = self.recorder.arrivals[self.pod]
        while True:
            self.received += 1
            if self.received > MAX_LINES:
                self.recorder.problems.append(
                    (f"pod {self.pod} wrote more than {MAX_LINES} lines in one case", b"")
                )
                self.recorder.cut.add(self.pod)
                await self.endpoint.cut()
                raise BrokenTransportError(f"more than {MAX_LINES} lines")
            try:
                message = await self.inner.receive()
            except DecodeError as exc:
                line = exc.line if isinstance(exc.line, bytes) else (exc.line or "").encode()
                arrivals.append(line)
                raise
            faults = self.matcher.match(message.type.value, _KIT_RECV)
            kinds = {fault.kind for fault in faults}
            for fault in faults:
                if fault.kind is FaultKind.HOLD_RECV:
                    with trio.move_on_after(fault.seconds * self.scale):
                        if fault.until is not None:
                            await self.recorder.answered[fault.until].wait()
                            await trio.sleep(0.05 * self.scale)  # let its answer go first
                        else:
                            await trio.sleep_forever()
            self._answered(message)
            if FaultKind.CANCEL in kinds:
                self.recorder.note(self.pod, f"cancel the task after its {message.type.value}")
                self.cancel.set()
            if FaultKind.SWALLOW in kinds:
                self.recorder.faulted.add(self.pod)
                self.recorder.swallowed.add(self.pod)
                self.recorder.note(self.pod, f"its {message.type.value} and all after are lost")
                await trio.sleep_forever()
            if FaultKind.GARBLE in kinds:
                self.recorder.faulted.add(self.pod)
                self.recorder.note(self.pod, f"its {message.type.value} arrives garbled")
                arrivals.append(_FAULTED)
                raise DecodeError(f"kit fault: {message.type.value} garbled on purpose")
            if FaultKind.DROP in kinds:
                self.recorder.faulted.add(self.pod)
                self.recorder.note(self.pod, f"the link drops with its {message.type.value}")
                arrivals.append(_FAULTED)
                await self.endpoint.cut()
                raise BrokenTransportError(f"kit fault: the link dropped at {message.type.value}")
            arrivals.append(encode(message))
            return message

    async def aclose(self) -> None:
        await self.inner.aclose()


@attrs.define
class _WorkerCase:
    scenario: Scenario
    recorder: _Recorder
    endpoints: dict[str, WorkerEndpoint] = attrs.field(factory=dict)
    run: ModellerRun | None = None
    exit_codes: dict[str, int | None] = attrs.field(factory=dict)
    leftovers: dict[str, list[bytes]] = attrs.field(factory=dict)
    start_error: str | None = None
    timed_out: bool = False
    clean_exits: frozenset[int] = frozenset({0})


def _on_modeller_step(recorder: _Recorder, pod: str, step: Step) -> None:
    recorder.coverage.add(step)
    recorder.states[pod] = step.target
    if recorder.chart.state(step.target).final:
        recorder.ended_from[pod] = step.source
    if step.event == "link_lost":
        recorder.lost_at[pod] = len(recorder.entries)
    if step.event == "recv:ONLINE_CHECK":
        recorder.online_checks.add(pod)
    arrivals = recorder.arrivals[pod]
    if step.event in _MARKED_EVENTS:
        recorder.entries.append(_Marker(pod, step.event))
        if step.event == "response_timeout":
            recorder.note(pod, "no answer within the response timeout")
    elif step.event in _FAULT_EVENTS and pod in recorder.swallowed:
        recorder.entries.append(_Marker(pod, step.event, excuse=True))
    elif step.event in ("bad_input", "link_lost"):
        if arrivals and arrivals[0] is _FAULTED:
            arrivals.popleft()
            recorder.entries.append(_Marker(pod, step.event, excuse=True))
        elif step.event == "bad_input" and arrivals:
            raw = arrivals.popleft()
            assert isinstance(raw, bytes)
            recorder.line(raw)


def _on_modeller_message(recorder: _Recorder, pod: str, message: Message) -> None:
    if message.sender == KIT_MODELLER:
        recorder.line(encode(message))
        return
    arrivals = recorder.arrivals[pod]
    while arrivals and arrivals[0] is _FAULTED:
        arrivals.popleft()
    raw = arrivals.popleft() if arrivals else encode(message)
    assert isinstance(raw, bytes)
    recorder.line(raw)


async def _run_worker_case(
    scenario: Scenario,
    command: Sequence[str],
    launcher: WorkerLauncher,
    *,
    scale: float,
    recorder: _Recorder,
) -> _WorkerCase:
    case = _WorkerCase(scenario, recorder)
    task_id = f"conform-{scenario.name}"
    initial = recorder.chart.settle(recorder.chart.initial)
    recorder.states.update({pod: initial for pod in scenario.pods})
    async with trio.open_nursery() as nursery:
        try:
            try:
                case.endpoints.update(await launcher(nursery, command, scenario.pods))
                case.clean_exits = _clean_exits(case.endpoints.values())
            except OSError as exc:
                case.start_error = f"cannot start {' '.join(command)!r}: {exc}"
                return case
            if scenario.first_line is not None:
                await _raw_first_line(case, scale)
                return case
            cancel = trio.Event()
            links: dict[str, Transport] = {
                pod: _KitLink(
                    pod,
                    endpoint,
                    [f for f in scenario.faults if f.pod == pod],
                    recorder,
                    cancel,
                    scale,
                )
                for pod, endpoint in case.endpoints.items()
            }
            jobs = {pod: scenario.job(pod, scale=scale) for pod in scenario.pods}
            configs: dict[str, object] = {}
            for pod in scenario.pods:
                try:
                    configs[pod] = registry.load(scenario.protocol_json(pod))
                except ConfigError:
                    configs[pod] = scenario.echo.protocol()
            timeouts = TaskTimeouts(
                response_timeout_s=scenario.response_timeout_s * scale,
                cancel_timeout_s=_CANCEL_WAIT * scale,
                worker_idle_timeout_s=_IDLE_WAIT * scale,
                task_start_timeout_s=scenario.task_start_timeout_s * scale,
                soft_timeout_s=scenario.soft_timeout_s * scale,
                hard_timeout_s=scenario.hard_timeout_s * scale,
            )
            case.run = await run_modeller(
                task_id=task_id,
                jobs=jobs,
                configs=configs,
                links=links,
                algorithm=EchoModeller(scenario.echo.protocol()),
                timeouts=timeouts,
                require_all_pods=scenario.require_all_pods,
                cancel=cancel,
                on_step=functools.partial(_on_modeller_step, recorder),
                on_message=functools.partial(_on_modeller_message, recorder),
            )
            # Lines that arrived but were never processed came after that worker's end.
            for pod in scenario.pods:
                for raw in recorder.arrivals[pod]:
                    if isinstance(raw, bytes):
                        recorder.line(raw)
                recorder.arrivals[pod].clear()

            async def drain(pod: str, endpoint: WorkerEndpoint) -> None:
                lines = await endpoint.drain(_DRAIN_WAIT * scale)
                if pod in recorder.cut:
                    pass
                elif pod in recorder.faulted:
                    recorder.after_fault[pod] += lines
                else:
                    for raw in lines:
                        recorder.line(raw)
                case.exit_codes[pod] = await endpoint.finish(_EXIT_WAIT * scale)

            async with trio.open_nursery() as drains:
                for pod, endpoint in case.endpoints.items():
                    drains.start_soon(drain, pod, endpoint)
        finally:
            with trio.CancelScope(shield=True):
                for endpoint in case.endpoints.values():
                    await endpoint.close()
            nursery.cancel_scope.cancel()
    return case


async def _raw_first_line(case: _WorkerCase, scale: float) -> None:
    line = case.scenario.first_line
    assert line is not None
    for pod, endpoint in case.endpoints.items():
        if line:
            with contextlib.suppress(BrokenTransportError):
                await endpoint.write_raw(line)
        await endpoint.cut()
        case.leftovers[pod] = await endpoint.drain(_DRAIN_WAIT * scale)
        case.exit_codes[pod] = await endpoint.finish(_EXIT_WAIT * scale)


# --- Running a modeller under test -----------------------------------------------------------


_POD_SEND: Final = frozenset({FaultKind.DELAY_SEND})
_POD_RECV: Final = frozenset({FaultKind.HOLD_RECV})


@final
class _PodLink:
    """A kit pod's side of its conversation with the modeller under test.

    Its own messages are recorded as they go on the wire (after any delay),
    so the trace shows what the modeller could have known.
    """

    def __init__(
        self,
        pod: str,
        inner: Transport,
        faults: Iterable[Fault],
        recorder: _Recorder,
        scale: float,
    ) -> None:
        self.pod = pod
        self.inner = inner
        self.matcher = _Matcher(faults)
        self.recorder = recorder
        self.scale = scale

    async def send(self, message: Message) -> None:
        for fault in self.matcher.match(message.type.value, _POD_SEND):
            await trio.sleep(fault.seconds * self.scale)
        self.recorder.line(encode(message))
        await self.inner.send(message)

    async def receive(self) -> Message:
        message = await self.inner.receive()
        # A stall, not a reordering: what comes after waits too, as on one stream.
        for fault in self.matcher.match(message.type.value, _POD_RECV):
            await trio.sleep(fault.seconds * self.scale)
        return message

    async def aclose(self) -> None:
        await self.inner.aclose()


@attrs.define
class _ModellerCase:
    scenario: Scenario
    recorder: _Recorder
    reports: dict[str, WorkerReport] = attrs.field(factory=dict)
    violations: list[str] = attrs.field(factory=list)
    job_problems: list[str] = attrs.field(factory=list)
    exit_code: int | None = None
    exited: bool = False
    stderr: str = ""
    start_error: str | None = None
    pod_states: dict[str, str] = attrs.field(factory=dict)
    clean_exits: frozenset[int] = frozenset({0})


def _scenario_line(scenario: Scenario, task_id: str, scale: float) -> bytes:
    body = ScenarioBody(
        pods=scenario.pods,
        job=scenario.job(scenario.pods[0], scale=scale),
        response_timeout_s=scenario.response_timeout_s * scale,
        require_all_pods=scenario.require_all_pods,
        job_overrides={pod: dict(fields) for pod, fields in scenario.overrides.items()},
    )
    message = Message.make(
        MessageType.CONFORMANCE_SCENARIO,
        task_id=task_id,
        sender=KIT_SENDER,
        recipient=KIT_MODELLER,
        seq=0,
        body=body,
    )
    # The job's protocol is the base one; overrides go in job_overrides.
    wire = json.loads(encode(message))
    wire["body"]["job"]["protocol"] = scenario.echo.to_json()
    return (json.dumps(wire, separators=(",", ":")) + "\n").encode()


def _job_problems(scenario: Scenario, message: Message, scale: float) -> list[str]:
    if message.type is not MessageType.JOB_REQUEST:
        return []
    pod = message.recipient
    if pod not in scenario.pods:
        return []
    expected = scenario.job(pod, scale=scale)
    body = message.body if isinstance(message.body, dict) else {}
    problems = []
    wanted: dict[str, Any] = {
        "protocol": expected.protocol,
        "batched_execution": expected.batched_execution,
        "test_run": expected.test_run,
        "options": expected.options,
    }
    for field, value in wanted.items():
        found = body.get(field)
        if field == "options" and isinstance(found, dict):
            found = {k: found.get(k) for k in value}
            same = all(
                isinstance(found[k], (int, float)) and abs(found[k] - value[k]) < 1e-6
                for k in value
            )
        else:
            same = found == value
        if not same:
            problems.append(
                f"the JOB_REQUEST to {pod} does not carry the scenario's job: {field} is"
                f" {json.dumps(found)[:120]}, expected {json.dumps(value)[:120]}"
            )
    return problems


async def _run_modeller_case(
    scenario: Scenario,
    command: Sequence[str],
    launcher: ModellerLauncher,
    *,
    scale: float,
    recorder: _Recorder,
) -> _ModellerCase:
    coverage = recorder.coverage
    case = _ModellerCase(scenario, recorder)
    task_id = f"conform-{scenario.name}"
    initial = recorder.chart.settle(recorder.chart.initial)
    recorder.states.update({pod: initial for pod in scenario.pods if pod not in scenario.silent})

    def on_line(raw: bytes, message: Message | None) -> None:
        if len(recorder.entries) >= MAX_LINES:
            return  # SharedStdio stops reading at its own limit; keep the trace bounded
        recorder.line(raw)
        if message is not None:
            case.job_problems += _job_problems(scenario, message, scale)

    def on_problem(text: str, raw: bytes) -> None:
        recorder.problems.append((text, raw))

    endpoint: ModellerEndpoint | None = None
    async with trio.open_nursery() as nursery:
        try:
            try:
                endpoint = await launcher(
                    nursery,
                    command,
                    _scenario_line(scenario, task_id, scale),
                    scenario.pods,
                    on_line,
                    on_problem,
                )
            except (OSError, BrokenTransportError) as exc:
                case.start_error = f"cannot start {' '.join(command)!r}: {exc}"
                return case
            case.clean_exits = _clean_exits([endpoint])
            reader_done = trio.Event()

            async def read() -> None:
                assert endpoint is not None
                try:
                    await endpoint.run()
                finally:
                    reader_done.set()

            nursery.start_soon(read)

            def on_step(pod: str, step: Step) -> None:
                coverage.add(step)
                case.pod_states[pod] = step.target
                if step.target != "aborting" and step.target != "aborted":
                    recorder.states[pod] = step.target

            async def serve(pod: str) -> None:
                assert endpoint is not None
                link = _PodLink(
                    pod,
                    endpoint.transport(pod),
                    [f for f in scenario.faults if f.pod == pod],
                    recorder,
                    scale,
                )
                report = await run_worker(Pod(pod), link, on_step=on_step)
                case.reports[pod] = report

            async def sink(pod: str) -> None:
                assert endpoint is not None
                transport = endpoint.transport(pod)
                while True:
                    try:
                        await transport.receive()
                    except (trio.EndOfChannel, trio.ClosedResourceError):
                        return

            async with trio.open_nursery() as pods:
                silent_scope = trio.CancelScope()

                async def run_silent(pod: str) -> None:
                    with silent_scope:
                        await sink(pod)

                async with trio.open_nursery() as answering:
                    for pod in scenario.pods:
                        if pod in scenario.silent:
                            pods.start_soon(run_silent, pod)
                        else:
                            answering.start_soon(serve, pod)
                silent_scope.cancel()
            await endpoint.end_input()
            case.exit_code = await endpoint.finish(_EXIT_WAIT * scale)
            case.exited = case.exit_code is not None
            with trio.move_on_after(_DRAIN_WAIT * scale):
                await reader_done.wait()
        finally:
            if endpoint is not None:
                case.stderr = endpoint.stderr_tail()
                with trio.CancelScope(shield=True):
                    await endpoint.close()
            nursery.cancel_scope.cancel()
    return case


# --- Judging -------------------------------------------------------------------------------------


def _check_entries(
    entries: Sequence[bytes | _Marker], task_id: str, *, silent: Iterable[str] = ()
) -> Finding | None:
    checker = TraceChecker(unanswered_ok=silent)
    for entry in entries:
        if isinstance(entry, _Marker):
            checker.internal(task_id, entry.pod, entry.event, excuse=entry.excuse)
        else:
            checker.feed(entry)
        if checker.finding is not None:
            break
    return checker.finish().finding


def _stderr_detail(text: str) -> list[str]:
    tail = [line for line in text.strip().splitlines() if line.strip()][-_STDERR_LINES:]
    return ["stderr (last lines):", *("  " + line for line in tail)] if tail else []


def _decoded(lines: Iterable[bytes]) -> list[Message | None]:
    out: list[Message | None] = []
    for raw in lines:
        try:
            out.append(decode(raw))
        except DecodeError:
            out.append(None)
    return out


@attrs.frozen
class _Judgement:
    verdict: Verdict
    reason: str
    details: tuple[str, ...] = ()
    finding: Finding | None = None


def _pass() -> _Judgement:
    return _Judgement(Verdict.PASS, "conforms")


def _judge_worker_case(case: _WorkerCase, scale: float) -> _Judgement:
    scenario = case.scenario
    recorder = case.recorder
    if case.start_error is not None:
        return _Judgement(Verdict.FAIL, case.start_error)
    stderr = {pod: ep.stderr_tail() for pod, ep in case.endpoints.items()}
    crashes = {
        pod: code
        for pod, code in case.exit_codes.items()
        if code is not None and code not in case.clean_exits and scenario.first_line is None
    }

    if scenario.first_line is not None:
        for pod in scenario.pods:
            written = case.leftovers.get(pod, [])
            code = case.exit_codes.get(pod)
            what = "a line that is not a JOB_REQUEST" if scenario.first_line else "no JOB_REQUEST"
            if written:
                return _Judgement(
                    Verdict.FAIL,
                    f"pod {pod} answered {what}: it wrote"
                    f" {written[0].decode(errors='replace').strip()[:160]!r}; it cannot know whom"
                    " to answer, so it must write nothing",
                    tuple(_stderr_detail(stderr[pod])),
                )
            if code is None:
                return _Judgement(
                    Verdict.TIMEOUT,
                    f"pod {pod} did not exit within {_EXIT_WAIT * scale:g} s after its input"
                    f" ended ({what})",
                )
            if scenario.first_line and code == 0:
                return _Judgement(
                    Verdict.FAIL,
                    f"pod {pod} exited with status 0 after a first line that is not a"
                    " JOB_REQUEST; it must exit with a non-zero status",
                )
        return _pass()

    task_id = f"conform-{scenario.name}"
    finding = _check_entries(recorder.entries, task_id)
    details = tuple(finding.render("trace").splitlines()) if finding else ()

    if recorder.problems and (finding is None or finding.text is None):
        return _Judgement(Verdict.FAIL, recorder.problems[0][0], details, finding)
    if finding is not None and finding.text is not None:
        extra = []
        for pod, code in crashes.items():
            extra += [f"pod {pod} also exited with status {code}", *_stderr_detail(stderr[pod])]
        return _Judgement(Verdict.FAIL, finding.message, details + tuple(extra), finding)
    for pod, code in crashes.items():
        state = recorder.ended_from.get(pod) or recorder.states.get(pod, "idle")
        return _Judgement(
            Verdict.FAIL,
            f"pod {pod}: the process exited with status {code} (the kit's modeller saw it in"
            f" state {state})",
            tuple(_stderr_detail(stderr[pod])) + details,
            finding,
        )
    run = case.run
    if run is None:
        return _Judgement(Verdict.TIMEOUT, "the task did not end", details, finding)
    for pod, outcome in run.workers.items():
        if pod in recorder.faulted:
            continue
        if outcome.state == "lost" and "sent nothing for" in outcome.problem:
            # What the trace expected when the silence began.
            silence = _check_entries(recorder.entries[: recorder.lost_at.get(pod)], task_id)
            where = recorder.ended_from.get(pod, "?")
            expected = ""
            if silence is not None and silence.pod == pod:
                texts = [t for t in silence.expected if t.startswith("W:")]
                expected = f"; it had to send one of: {'; '.join(texts)}" if texts else ""
            return _Judgement(
                Verdict.TIMEOUT,
                f"pod {pod} went silent: it sent nothing for {_IDLE_WAIT * scale:g} s in state"
                f" {where}, where the protocol expects it to speak{expected}",
                tuple(silence.render("trace").splitlines()) if silence else details,
                silence,
            )
        if outcome.state == "unconfirmed":
            return _Judgement(
                Verdict.FAIL,
                f"pod {pod} ignored TASK_CANCEL: no TASK_ABORT within {_CANCEL_WAIT * scale:g} s"
                " of the modeller's TASK_CANCEL (a cancelled worker answers with"
                " TASK_ABORT(CANCELLED_BY_MODELLER) and ends)",
                details,
                finding,
            )
        if outcome.state == "lost" and outcome.problem.startswith("connection"):
            state = recorder.ended_from.get(pod, "?")
            return _Judgement(
                Verdict.FAIL,
                f"pod {pod} closed its output before its end (the kit's modeller was in state"
                f" {state}); exit status {case.exit_codes.get(pod)}",
                tuple(_stderr_detail(stderr[pod])) + details,
                finding,
            )
    if finding is not None:
        return _Judgement(Verdict.FAIL, finding.message, details, finding)
    for pod, code in case.exit_codes.items():
        if code is None:
            return _Judgement(
                Verdict.TIMEOUT,
                f"pod {pod} did not exit within {_EXIT_WAIT * scale:g} s after its input ended",
                tuple(_stderr_detail(stderr[pod])),
            )
    for pod in sorted(recorder.faulted):
        drop = any(f.pod == pod and f.kind is FaultKind.DROP for f in scenario.faults)
        dropped = run.workers.get(pod)
        if not drop or dropped is None or not dropped.accepted:
            continue
        messages = [m for m in _decoded(recorder.after_fault[pod]) if m is not None]
        last = messages[-1] if messages else None
        if (
            last is None
            or last.type is not MessageType.TASK_ABORT
            or not isinstance(last.body, dict)
            or last.body.get("reason") != AbortReason.MODELLER_TIMEOUT.value
        ):
            found = describe_message(json.loads(encode(last))) if last else "nothing"
            return _Judgement(
                Verdict.FAIL,
                f"pod {pod}'s input ended mid-task, and its last message was {found}; a worker"
                " that had accepted sends TASK_ABORT(MODELLER_TIMEOUT) when its input ends",
            )
    for pod in scenario.expect_online_check:
        if pod not in recorder.online_checks:
            return _Judgement(
                Verdict.FAIL,
                f"pod {pod} never sent ONLINE_CHECK while the modeller was silent for longer than"
                f" its soft_timeout_s ({scenario.soft_timeout_s * scale:g} s)",
            )
    unexplained = [
        v
        for v in run.violations
        if v.key not in recorder.faulted and "after the end" not in v.message
    ]
    if unexplained:
        v = unexplained[0]
        return _Judgement(
            Verdict.FAIL,
            f"pod {v.key}: the kit's modeller refused {v.event} in state {v.state}: {v.message}",
        )
    return _pass()


def _allowed(text: str) -> set[str]:
    return {part.strip() for part in text.split("|") if part.strip()}


def _modeller_expectations(scenario: Scenario) -> dict[str, set[str]]:
    """What each kit pod's end must be when the modeller under test is correct."""
    rejected: set[str] = set()
    aborting: dict[str, str] = {}
    answering = [pod for pod in scenario.pods if pod not in scenario.silent]
    for pod in answering:
        try:
            protocol = registry.load(scenario.protocol_json(pod))
        except ConfigError:
            rejected.add(pod)
            continue
        prediction = predict_echo(protocol, batched=scenario.batched, test_run=scenario.test_run)
        if not prediction.complete:
            assert prediction.abort_reason is not None
            aborting[pod] = prediction.abort_reason.value
    explicit = {pod: _allowed(text) for pod, text in scenario.expect.items()}
    late = {
        fault.pod
        for fault in scenario.faults
        if fault.kind is FaultKind.DELAY_SEND
        and {"JOB_ACCEPT", "JOB_REJECT"} & set(fault.on)
        and fault.seconds > scenario.response_timeout_s
    }
    # A late pod's end is not the task's business: nothing is owed to it.
    explicit_own = {pod: allowed for pod, allowed in explicit.items() if pod not in late}
    own_abort = any(
        pod not in explicit or any(o.startswith("aborted") for o in explicit[pod])
        for pod in aborting
    ) or any(
        any(o.startswith("aborted") and "CANCELLED" not in o for o in allowed)
        for allowed in explicit_own.values()
    )
    missing = bool(rejected or scenario.silent)
    cancel_all = own_abort or (scenario.require_all_pods and missing)
    expected: dict[str, set[str]] = {}
    for pod in answering:
        if pod in explicit:
            expected[pod] = explicit[pod]
        elif pod in rejected:
            expected[pod] = {"rejected"}
        elif pod in aborting:
            expected[pod] = {f"aborted:{aborting[pod]}", "aborted:CANCELLED_BY_MODELLER"}
        elif cancel_all:
            expected[pod] = {"aborted:CANCELLED_BY_MODELLER"}
        else:
            expected[pod] = {"complete"}
    return expected


def _outcome(report: WorkerReport) -> str:
    if report.state == "aborted" and report.abort_reason is not None:
        return f"aborted:{report.abort_reason.value}"
    return report.state


def _judge_modeller_case(case: _ModellerCase, scale: float) -> _Judgement:
    scenario = case.scenario
    recorder = case.recorder
    if case.start_error is not None:
        return _Judgement(Verdict.FAIL, case.start_error)
    stderr = tuple(_stderr_detail(case.stderr))
    task_id = f"conform-{scenario.name}"
    if recorder.problems:
        text, raw = recorder.problems[0]
        quoted = raw.decode(errors="replace").rstrip("\n")[:200]
        return _Judgement(Verdict.FAIL, f"{text}; the line: {quoted}", stderr)
    finding = _check_entries(recorder.entries, task_id, silent=scenario.silent)
    details = tuple(finding.render("trace").splitlines()) if finding else ()
    if finding is not None and finding.text is not None:
        return _Judgement(Verdict.FAIL, finding.message, details, finding)
    if case.exited and case.exit_code not in case.clean_exits:
        statuses = " or ".join(str(code) for code in sorted(case.clean_exits))
        return _Judgement(
            Verdict.FAIL,
            f"the modeller exited with status {case.exit_code}; after a task, however it ended,"
            f" a modeller exits with {statuses}",
            stderr + details,
            finding,
        )
    if case.job_problems:
        return _Judgement(Verdict.FAIL, case.job_problems[0], tuple(case.job_problems[1:]))
    expected = _modeller_expectations(scenario)
    for pod, allowed in expected.items():
        first_abort = next(
            (
                f"{other} aborted ({report.abort_reason.value})"
                for other, report in case.reports.items()
                if other != pod
                and report.abort_reason is not None
                and report.abort_reason is not AbortReason.CANCELLED_BY_MODELLER
            ),
            None,
        )
        report = case.reports.get(pod)
        if report is None:
            continue
        found = _outcome(report)
        if found in allowed:
            continue
        waiting = recorder.states.get(pod, "?")
        if found == "aborted:MODELLER_TIMEOUT":
            hint = ""
            if "aborted:CANCELLED_BY_MODELLER" in allowed and first_abort:
                hint = f"; the modeller should have cancelled it after {first_abort}"
            return _Judgement(
                Verdict.TIMEOUT,
                f"pod {pod} gave up waiting for the modeller in state {waiting}:"
                f" {report.abort_message}{hint}",
                details,
                finding,
            )
        if found == "closed":
            return _Judgement(
                Verdict.FAIL,
                f"pod {pod} got no JOB_REQUEST before the modeller closed its output",
                stderr + details,
                finding,
            )
        if found == "aborted:CANCELLED_BY_MODELLER":
            return _Judgement(
                Verdict.FAIL,
                f"the modeller cancelled pod {pod}, which should have ended"
                f" {' or '.join(sorted(allowed))}",
                details,
                finding,
            )
        return _Judgement(
            Verdict.FAIL,
            f"pod {pod} ended {found}; expected {' or '.join(sorted(allowed))}",
            details,
            finding,
        )
    if not case.exited:
        return _Judgement(
            Verdict.TIMEOUT,
            f"the modeller did not exit within {_EXIT_WAIT * scale:g} s after every pod had ended"
            " and its input was closed (spec section 6: it must not hang)",
            stderr + details,
            finding,
        )
    if finding is not None:
        return _Judgement(Verdict.FAIL, finding.message, details, finding)
    return _pass()


def _deadline(scenario: Scenario, recorder: _Recorder, timeout: float) -> _Judgement:
    """Why a case ran out of time: the partial trace, and where each side was waiting."""
    finding = _check_entries(recorder.entries, f"conform-{scenario.name}", silent=scenario.silent)
    waiting = ", ".join(
        f"{pod} in {state}"
        for pod, state in recorder.states.items()
        if not shipped_chart("worker" if scenario.role is Role.MODELLER else "modeller")
        .state(state)
        .final
    )
    side = "the kit's pods" if scenario.role is Role.MODELLER else "the kit's modeller"
    reason = f"the case did not finish within {timeout:g} s (the kit killed the processes)"
    if not recorder.entries:
        who = "the modeller" if scenario.role is Role.MODELLER else "the kit"
        reason += f"; {who} wrote nothing"
    elif finding is not None:
        reason += f"; {finding.message}"
    if waiting:
        reason += f"; {side} were waiting: {waiting}"
    details = tuple(finding.render("trace").splitlines()) if finding else ()
    return _Judgement(Verdict.TIMEOUT, reason, details, finding)


# --- The run -------------------------------------------------------------------------------------


CaseHook = Callable[[CaseResult], None]


# A worker that takes longer than this to answer its JOB_REQUEST (start-up included)
# gets every later case slowed down in proportion, so that the cases built on short
# timeouts still mean what they say.
_FAST_ANSWER: Final = 0.15


async def _run_one(
    scenario: Scenario,
    command: Sequence[str],
    transport: str,
    *,
    timeout: float,
    scale: float,
    coverage: _CoverageRecorder,
) -> tuple[CaseResult, float]:
    """Run one case under its deadline; its result, and the slowest answer seen in it."""
    started = time.monotonic()
    recorder = _Recorder(coverage.chart, coverage)
    with trio.move_on_after(timeout) as deadline:
        if scenario.role is Role.WORKER:
            worker_case = await _run_worker_case(
                scenario, command, WORKER_TRANSPORTS[transport], scale=scale, recorder=recorder
            )
            judgement = _judge_worker_case(worker_case, scale)
        else:
            modeller_case = await _run_modeller_case(
                scenario, command, MODELLER_TRANSPORTS[transport], scale=scale, recorder=recorder
            )
            judgement = _judge_modeller_case(modeller_case, scale)
    if deadline.cancelled_caught:
        judgement = _deadline(scenario, recorder, timeout)
    result = CaseResult(
        scenario=scenario,
        verdict=judgement.verdict,
        reason=judgement.reason,
        details=judgement.details,
        duration_s=time.monotonic() - started,
        trace=tuple(e for e in recorder.entries if isinstance(e, bytes)),
        notes=tuple(recorder.notes),
        finding=judgement.finding,
    )
    return result, recorder.latency


async def conform(
    *,
    role: Role | str,
    command: Sequence[str],
    scenarios: Sequence[str | Scenario] | None = None,
    seed: int | None = None,
    generated: int | None = None,
    timeout: float = 10.0,
    time_scale: float = 1.0,
    transport: str = "stdio",
    on_case: CaseHook | None = None,
) -> Report:
    """Test an implementation of ``role`` started as ``command``: the async form.

    See :func:`~fsm_protocol.conformance.run_conformance` for the arguments.
    """
    role = Role(role)
    if not command:
        raise ConfigError("no command to test: give the implementation's command line")
    launchers: Mapping[str, object] = (
        WORKER_TRANSPORTS if role is Role.WORKER else MODELLER_TRANSPORTS
    )
    if transport not in launchers:
        raise ConfigError(
            f"unknown transport {transport!r}; available: {', '.join(sorted(launchers))}"
        )
    if timeout <= 0 or time_scale <= 0:
        raise ConfigError("timeout and time_scale must be positive")
    if transport == "tcp":
        check_tcp_command(role, command)
    if seed is None:
        seed = random.SystemRandom().randrange(2**32)
    count = generated if generated is not None else (10 if scenarios is None else 0)
    chosen = select_scenarios(role, scenarios, seed=seed, generated=count)
    wrong = [s.name for s in chosen if s.role is not role]
    if wrong:
        raise ConfigError(f"scenarios for the other role: {', '.join(wrong)}")
    chart = shipped_chart("modeller" if role is Role.WORKER else "worker")
    coverage = _CoverageRecorder(chart)
    results = []
    latency = 0.0
    for scenario in chosen:
        scale = time_scale * max(1.0, latency / _FAST_ANSWER)
        result, seen = await _run_one(
            scenario,
            command,
            transport,
            timeout=timeout * scale / time_scale,
            scale=scale,
            coverage=coverage,
        )
        latency = max(latency, seen)
        results.append(result)
        if on_case is not None:
            on_case(result)
    return Report(
        role=role,
        command=tuple(command),
        transport=transport,
        seed=seed,
        cases=tuple(results),
        coverage=coverage.result(),
        answer_latency_s=latency,
        time_scale=time_scale,
    )
