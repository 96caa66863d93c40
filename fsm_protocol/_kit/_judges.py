"""Judging a case: the checker on its trace, and what a trace cannot show.

A process that crashed, went silent, ignored a cancel, did not exit, or (for a
modeller) left a pod waiting is judged from the kit's own outcome.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import attrs

from .._algo._echo_model import predict_echo
from .._algo._protocols import registry
from .._base._errors import ConfigError, DecodeError
from .._check._checker import Finding, TraceChecker, describe_message
from .._check._checker import _decode_rule as decode_rule
from .._core._chart import Role
from .._core._shipped import shipped_chart
from .._runtime._worker import WorkerReport
from .._wire._messages import AbortReason, Message, MessageType, decode, encode
from ._endpoints import stderr_detail
from ._limits import CANCEL_WAIT, EXIT_WAIT, IDLE_WAIT, KIT_MODELLER
from ._modeller_case import ModellerCase
from ._recording import Marker, Recorder
from ._scenarios import FaultKind, Scenario, Verdict
from ._worker_case import WorkerCase


def _check_entries(
    entries: Sequence[bytes | Marker],
    task_id: str,
    *,
    silent: Iterable[str] = (),
    worker_under_test: bool = False,
    interleaved: bool = False,
) -> Finding | None:
    # A worker under test must accept the kit's valid Echo jobs: the spec lets a
    # pod refuse any job, but a worker that refuses everything proves nothing.
    checker = TraceChecker(
        unanswered_ok=silent, require_echo_accept=worker_under_test, interleaved=interleaved
    )
    for entry in entries:
        if isinstance(entry, Marker):
            checker.internal(task_id, entry.pod, entry.event, excuse=entry.excuse)
        else:
            checker.feed(entry)
        if checker.finding is not None:
            break
    return checker.finish().finding


# Messages a worker may send in many states but never owes.
_OPTIONAL = frozenset({"LOG_MESSAGE", "ONLINE_CHECK", "TASK_ABORT"})


def _one_of(names: Sequence[str]) -> str:
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + f" or {names[-1]}"


def _last_line(entries: Sequence[bytes | Marker]) -> str:
    """The last message of a trace prefix, described, with its line number."""
    lines = [e for e in entries if isinstance(e, bytes)]
    if not lines:
        return "the start"
    try:
        obj = json.loads(lines[-1])
    except ValueError:
        return f"line {len(lines)}"
    if not isinstance(obj, dict):
        return f"line {len(lines)}"
    who = "the modeller's" if obj.get("sender") == KIT_MODELLER else "its"
    return f"{who} {describe_message(obj)} (line {len(lines)})"


def _line_of(entries: Sequence[bytes | Marker], type_: str, recipient: str) -> str:
    """`` (line N)`` of the first message of ``type_`` to ``recipient``, or nothing."""
    number = 0
    for entry in entries:
        if isinstance(entry, bytes):
            number += 1
            if f'"{type_}"'.encode() in entry:
                try:
                    obj = json.loads(entry)
                except ValueError:
                    continue
                if obj.get("type") == type_ and obj.get("recipient") == recipient:
                    return f" (line {number})"
    return ""


def _answered_after_an_abort(entries: Sequence[bytes | Marker]) -> frozenset[str]:
    """Pods whose answer to JOB_REQUEST came after another pod's own abort.

    The modeller may have left such a pod out when it cancelled the task, and ended the
    task before it read the answer: the trace cannot tell, since the kit reads the
    modeller's lines and writes its pods' on different streams. Nothing is owed to it then.
    """
    cancelled: set[str] = set()
    aborted = False
    late: set[str] = set()
    for entry in entries:
        if not isinstance(entry, bytes):
            continue
        try:
            obj = json.loads(entry)
        except ValueError:
            continue
        if not isinstance(obj, dict):
            continue
        kind, sender = obj.get("type"), obj.get("sender")
        if kind == "TASK_CANCEL":
            cancelled.add(str(obj.get("recipient")))
        elif kind == "TASK_ABORT" and sender not in cancelled:
            aborted = True
        elif kind in ("JOB_ACCEPT", "JOB_REJECT") and aborted:
            late.add(str(sender))
    return frozenset(late)


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
    # The rule the kit itself saw broken; None defers to the finding's, "" cites none.
    rule: str | None = None


def _pass() -> _Judgement:
    return _Judgement(Verdict.PASS, "conforms")


def judge_worker_case(case: WorkerCase, scale: float) -> _Judgement:
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
                    tuple(stderr_detail(stderr[pod])),
                )
            if code is None:
                return _Judgement(
                    Verdict.TIMEOUT,
                    f"pod {pod} did not exit within {EXIT_WAIT * scale:g} s after its input"
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
    finding = _check_entries(recorder.entries, task_id, worker_under_test=True)
    details = tuple(finding.render("trace").splitlines()) if finding else ()

    if recorder.problems and (finding is None or finding.text is None):
        # The kit's own bound, not a rule: the finding is only context.
        return _Judgement(Verdict.FAIL, recorder.problems[0][0], details, finding, rule="")
    for pod, early in recorder.before_setup.items():
        return _Judgement(
            Verdict.FAIL,
            f"pod {pod} sent {' and '.join(early)} before the modeller's ALGORITHM_EXCHANGE"
            " reached it (the kit held it back); with an initial setup a worker waits for it",
            details,
            finding,
            rule="W-4.6",
        )
    if finding is not None and finding.text is not None:
        extra = []
        for pod, code in crashes.items():
            extra += [f"pod {pod} also exited with status {code}", *stderr_detail(stderr[pod])]
        return _Judgement(Verdict.FAIL, finding.message, details + tuple(extra), finding)
    for pod, code in crashes.items():
        state = recorder.ended_from.get(pod) or recorder.states.get(pod, "idle")
        return _Judgement(
            Verdict.FAIL,
            f"pod {pod}: the process exited with status {code} (the kit's modeller saw it in"
            f" state {state})",
            tuple(stderr_detail(stderr[pod])) + details,
            finding,
        )
    run = case.run
    if run is None:
        return _Judgement(Verdict.TIMEOUT, "the task did not end", details, finding)
    held_back = {
        f.pod for f in scenario.faults if f.kind is FaultKind.DELAY_SEND and "JOB_REQUEST" in f.on
    }
    for pod, outcome in run.workers.items():
        if pod in recorder.faulted:
            continue
        timed_out = any(
            isinstance(e, Marker) and e.pod == pod and e.event == "response_timeout"
            for e in recorder.entries
        )
        if timed_out and pod not in held_back and not recorder.answered[pod].is_set():
            line = _line_of(recorder.entries, "JOB_REQUEST", pod)
            return _Judgement(
                Verdict.TIMEOUT,
                f"pod {pod} never answered: expected JOB_ACCEPT or JOB_REJECT from it within"
                f" {case.response_timeout:.3g} s (the response timeout) after the modeller's"
                f" JOB_REQUEST{line}, got nothing",
                tuple(stderr_detail(stderr[pod])) + details,
                finding,
            )
        if outcome.state == "lost" and "sent nothing for" in outcome.problem:
            # What the trace expected when the silence began.
            silence = _check_entries(
                recorder.entries[: recorder.lost_at.get(pod)], task_id, worker_under_test=True
            )
            where = recorder.ended_from.get(pod, "?")
            owed = ""
            if silence is not None and silence.pod == pod:
                names = [t.split()[1] for t in silence.expected if t.startswith("W:")]
                # What it had to say, not what it merely may (a log line, a check).
                names = [n for n in dict.fromkeys(names) if n not in _OPTIONAL] or names
                if names:
                    owed = f"expected {_one_of(names)} from it"
            before = _last_line(recorder.entries[: recorder.lost_at.get(pod)])
            owed = owed or "expected it to speak"
            return _Judgement(
                Verdict.TIMEOUT,
                f"pod {pod} went silent in state {where}: {owed} within"
                f" {IDLE_WAIT * scale:g} s after {before}, got nothing",
                tuple(silence.render("trace").splitlines()) if silence else details,
                silence,
            )
        if outcome.state == "unconfirmed":
            line = _line_of(recorder.entries, "TASK_CANCEL", pod)
            return _Judgement(
                Verdict.FAIL,
                f"pod {pod} ignored TASK_CANCEL: expected TASK_ABORT from it within"
                f" {CANCEL_WAIT * scale:g} s after the modeller's TASK_CANCEL{line}, got nothing"
                " (a cancelled worker answers with TASK_ABORT(CANCELLED_BY_MODELLER) and ends)",
                details,
                finding,
                rule="W-4.15",
            )
        if outcome.state == "lost" and outcome.problem.startswith("connection"):
            state = recorder.ended_from.get(pod, "?")
            return _Judgement(
                Verdict.FAIL,
                f"pod {pod} closed its output before its end (the kit's modeller was in state"
                f" {state}); exit status {case.exit_codes.get(pod)}",
                tuple(stderr_detail(stderr[pod])) + details,
                finding,
            )
    if finding is not None:
        return _Judgement(Verdict.FAIL, finding.message, details, finding)
    for pod, code in case.exit_codes.items():
        if code is None:
            return _Judgement(
                Verdict.TIMEOUT,
                f"pod {pod} did not exit within {EXIT_WAIT * scale:g} s after its input ended",
                tuple(stderr_detail(stderr[pod])),
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
                rule="W-4.29",
            )
    for pod, text in scenario.expect.items():
        ended = run.workers.get(pod)
        if ended is None:
            continue
        found = (
            f"aborted:{ended.abort_reason.value}" if ended.abort_reason is not None else ended.state
        )
        if found not in _allowed(text):
            held = any(
                f.pod == pod and f.kind is FaultKind.DELAY_SEND and "TASK_START" in f.on
                for f in scenario.faults
            )
            return _Judgement(
                Verdict.FAIL,
                f"pod {pod} ended {found}; expected {' or '.join(sorted(_allowed(text)))}"
                + (
                    f" (the kit held its TASK_START back {_held(scenario, pod, scale):g} s;"
                    f" task_start_timeout_s was {scenario.task_start_timeout_s * scale:g} s)"
                    if held
                    else ""
                ),
                details,
                finding,
                rule="W-4.28" if held else None,
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


def _problem_rule(raw: bytes) -> str | None:
    """The rule a line the kit's pods could not take breaks: its decode rule, or E-4.1."""
    if not raw:
        return None
    try:
        decode(raw)
    except DecodeError as exc:
        return decode_rule(exc, raw)
    return "E-4.1"  # a readable message for no pod of the task


def _held(scenario: Scenario, pod: str, scale: float) -> float:
    """How long the kit held back its TASK_START to ``pod``."""
    return scale * max(
        (
            f.seconds
            for f in scenario.faults
            if f.pod == pod and f.kind is FaultKind.DELAY_SEND and "TASK_START" in f.on
        ),
        default=0.0,
    )


def _delay(scenario: Scenario, pod: str, scale: float) -> float:
    """How long the kit held back ``pod``'s answer to its JOB_REQUEST."""
    return scale * max(
        (
            f.seconds
            for f in scenario.faults
            if f.pod == pod
            and f.kind is FaultKind.DELAY_SEND
            and {"JOB_ACCEPT", "JOB_REJECT"} & set(f.on)
        ),
        default=0.0,
    )


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
    missing = bool(rejected or scenario.unanswering)
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


def judge_modeller_case(case: ModellerCase, scale: float) -> _Judgement:
    scenario = case.scenario
    recorder = case.recorder
    if case.start_error is not None:
        return _Judgement(Verdict.FAIL, case.start_error)
    stderr = tuple(stderr_detail(case.stderr))
    task_id = f"conform-{scenario.name}"
    if scenario.omit_job_overrides and not any(
        b'"JOB_REQUEST"' in entry for entry in recorder.entries if isinstance(entry, bytes)
    ):
        return _Judgement(
            Verdict.FAIL,
            "the modeller sent no JOB_REQUEST after a control line without job_overrides"
            f" (exit status {case.exit_code}); job_overrides is optional",
            stderr,
            rule="M-6.2",
        )
    if recorder.problems:
        text, raw = recorder.problems[0]
        quoted = raw.decode(errors="replace").rstrip("\n")[:200]
        return _Judgement(
            Verdict.FAIL, f"{text}; the line: {quoted}", stderr, rule=_problem_rule(raw)
        )
    # A pod whose answer the modeller, gone already, never got may stay unanswered.
    silent = scenario.unanswering + tuple(sorted(recorder.undelivered))
    finding = _check_entries(
        recorder.entries, task_id, silent=silent, interleaved=recorder.interleaved
    )
    details = tuple(finding.render("trace").splitlines()) if finding else ()
    if finding is not None and finding.text is not None:
        return _Judgement(Verdict.FAIL, finding.message, details, finding)
    watch = case.watch
    if watch is not None and watch.expired is not None:
        overdue = watch.expired
        state = recorder.states.get(overdue.pod, "?")
        return _Judgement(
            Verdict.TIMEOUT,
            f"{overdue.text()} (the kit's pod {overdue.pod} was waiting in state {state})",
            stderr + details,
            finding,
        )
    if case.exited and case.exit_code not in case.clean_exits:
        statuses = " or ".join(str(code) for code in sorted(case.clean_exits))
        return _Judgement(
            Verdict.FAIL,
            f"the modeller exited with status {case.exit_code}; after a task, however it ended,"
            f" a modeller exits with {statuses}",
            stderr + details,
            finding,
            rule="M-6.3",
        )
    if case.job_problems:
        return _Judgement(
            Verdict.FAIL, case.job_problems[0], tuple(case.job_problems[1:]), rule="M-6.1"
        )
    expected = _modeller_expectations(scenario)
    # An answer that reached the modeller after the task had ended is owed nothing: such a
    # pod may end on its own timeout, whatever else the scenario expected of it.
    # So may a pod whose answer the modeller, gone already, never got.
    unowed = (
        (watch.unowed() if watch is not None else frozenset())
        | _answered_after_an_abort(recorder.entries)
        | recorder.undelivered
    )
    for pod, allowed in expected.items():
        if pod in unowed:
            allowed = allowed | {"aborted:MODELLER_TIMEOUT"}
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
        # A pod the kit made answer late, but within the response timeout, is owed the task.
        slow = any(
            f.pod == pod
            and f.kind is FaultKind.DELAY_SEND
            and {"JOB_ACCEPT", "JOB_REJECT"} & set(f.on)
            and f.seconds < scenario.response_timeout_s
            for f in scenario.faults
        )
        in_time = (
            f" (its answer came {_delay(scenario, pod, scale):g} s after the JOB_REQUEST, within"
            f" the response timeout, {scenario.response_timeout_s * scale:g} s)"
            if slow
            else ""
        )
        if found == "aborted:MODELLER_TIMEOUT":
            owed_to = watch.owed_to(pod) if watch is not None else []
            ended = case.ended_at.get(pod)
            if owed_to and ended is not None:
                what = "; ".join(o.gave_up_text(ended - o.since) for o in owed_to)
                hint = f"; {what}"
            elif "aborted:CANCELLED_BY_MODELLER" in allowed and first_abort:
                hint = f"; the modeller should have cancelled it after {first_abort}"
            else:
                hint = ""
            return _Judgement(
                Verdict.TIMEOUT,
                f"pod {pod} gave up waiting for the modeller in state {waiting}:"
                f" {report.abort_message}{hint}{in_time}",
                details,
                finding,
                # In a *_checking state the pod's ONLINE_CHECK went unanswered.
                rule="M-4.18" if slow else "M-4.30" if waiting.endswith("_checking") else None,
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
                f" {' or '.join(sorted(allowed))}{in_time}",
                details,
                finding,
                rule="M-4.18" if slow else None,
            )
        cancelled = allowed == {"aborted:CANCELLED_BY_MODELLER"}
        return _Judgement(
            Verdict.FAIL,
            f"pod {pod} ended {found}; expected {' or '.join(sorted(allowed))}",
            details,
            finding,
            rule=("M-4.23" if scenario.require_all_pods else "M-4.22") if cancelled else None,
        )
    if not case.exited:
        return _Judgement(
            Verdict.TIMEOUT,
            f"the modeller did not exit within {EXIT_WAIT * scale:g} s after every pod had ended"
            " and its input was closed (spec section 6: it must not hang)",
            stderr + details,
            finding,
            rule="M-6.3",
        )
    # A kit pod that stopped mid-task because the modeller had gone is not at fault.
    kit_pod_cut_off = (
        finding is not None
        and finding.text is None
        and finding.pod in recorder.undelivered
        and (finding.rule or "").startswith("W-")
    )
    if finding is not None and not kit_pod_cut_off:
        return _Judgement(Verdict.FAIL, finding.message, details, finding)
    return _pass()


def judge_deadline(scenario: Scenario, recorder: Recorder, timeout: float) -> _Judgement:
    """Why a case ran out of time: the partial trace, and where each side was waiting."""
    finding = _check_entries(
        recorder.entries,
        f"conform-{scenario.name}",
        silent=scenario.unanswering,
        interleaved=recorder.interleaved,
    )
    waiting = ", ".join(
        f"{pod} in {state}"
        for pod, state in recorder.states.items()
        if not shipped_chart("worker" if scenario.role is Role.MODELLER else "modeller")
        .state(state)
        .final
    )
    side = "the kit's pods" if scenario.role is Role.MODELLER else "the kit's modeller"
    reason = f"the case did not finish within {timeout:g} s (the kit killed the processes)"
    if waiting:
        reason += f"; {side} were waiting: {waiting}"
    if not recorder.entries:
        who = "the modeller" if scenario.role is Role.MODELLER else "the kit"
        reason += f"; {who} wrote nothing"
    elif finding is not None:
        reason += f"; {finding.message}"  # last: it ends with the rule's id
    details = tuple(finding.render("trace").splitlines()) if finding else ()
    rule = None
    if scenario.role is Role.MODELLER and scenario.silent and not _modeller_moved_on(recorder):
        # The answering pods were all waiting for the modeller, which still waited for the rest.
        rule = "M-4.18"
        reason += (
            f"; the modeller never stopped waiting for {', '.join(scenario.silent)}, which never"
            " answered, though its response timeout had long passed"
        )
    return _Judgement(Verdict.TIMEOUT, reason, details, finding, rule=rule)


def _modeller_moved_on(recorder: Recorder) -> bool:
    """Whether the modeller under test sent TASK_START or TASK_CANCEL to any pod."""
    for entry in recorder.entries:
        if isinstance(entry, bytes) and (b'"TASK_START"' in entry or b'"TASK_CANCEL"' in entry):
            try:
                message = decode(entry)
            except DecodeError:
                continue
            if message.sender not in recorder.states:
                return True
    return False
