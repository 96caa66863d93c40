"""The kit against the examples: correct ones pass, broken ones fail for the right reason.

``examples/plain_worker.py`` and ``examples/plain_modeller.py`` are written from
the wire spec without this library, as another team would. Each ``--bug`` makes
one deviation; for each, the test names a scenario that exposes it, the words
the verdict must contain and the rule of the rule book (``fsm_protocol/_check/_rules.py``)
the kit must cite. Every rule a peer can break has at least one such variant. All runs
share one trio loop, so their waits overlap.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from fsm_protocol import Role
from fsm_protocol._check._rules import RULE_BY_ID, RULES
from fsm_protocol.conformance import Report, Verdict, catalogue, conform

PY = sys.executable
EXAMPLES = Path(__file__).parent.parent / "examples"
PLAIN_WORKER = [PY, str(EXAMPLES / "plain_worker.py")]
PLAIN_MODELLER = [PY, str(EXAMPLES / "plain_modeller.py")]
SEED = 20240601

# bug -> (scenario, verdict, words the reason must contain, the rule the kit cites)
# The rule is None only for behaviour that spec section 1 requires of a receiver and the
# rule book (sections 1 to 6's sender rules) does not number.
Broken = tuple[str, Verdict, tuple[str, ...], str | None]
WORKER_BUGS: dict[str, Broken] = {
    "one-based-batches": (
        "batches",
        Verdict.FAIL,
        ("sent CURRENT_BATCH_ID 1 in state counting", "with body 0 (the next batch id)"),
        "W-4.5",
    ),
    "skip-batches-only": (
        "batches",
        Verdict.FAIL,
        ('BATCHES_COMPLETE "TASK_COMPLETE" in state running_batch', 'body "BATCHES_ONLY"'),
        "W-4.12",
    ),
    "duplicate-results": ("batches", Verdict.FAIL, ("no duplicate results",), "W-4.11"),
    "lose-item": ("batches", Verdict.FAIL, ("item(s) 'i2' lost",), "W-5.10"),
    "ignore-cancel": (
        "cancel-during-batches",
        Verdict.FAIL,
        (
            "ignored TASK_CANCEL: expected TASK_ABORT from it within 1 s after the modeller's"
            " TASK_CANCEL (line ",
            "got nothing",
        ),
        "W-4.15",
    ),
    "silent": (
        "batches",
        Verdict.TIMEOUT,
        (
            "went silent in state running_batch: expected EVALUATION_RESULTS, CURRENT_BATCH_ID"
            " or BATCHES_COMPLETE from it within 2 s after the modeller's TASK_START (line ",
            "got nothing",
        ),
        "W-4.25",
    ),
    "limit-off-by-one": (
        "limit-exact",
        Verdict.FAIL,
        ("reached the inference limit", "Echo expects TASK_ABORT(LIMITS_EXCEEDED) next"),
        "W-5.8",
    ),
    "no-online-check": (
        "online-check-before-complete",
        Verdict.FAIL,
        ("never sent ONLINE_CHECK",),
        "W-4.29",
    ),
    "wrong-seq": ("batches", Verdict.FAIL, ("seq 10 from kit/pod-a", "expected 9"), "E-2.6"),
    "no-batch-number": (
        "batches",
        Verdict.FAIL,
        ("invalid message: field $.meta.batch_number", "required on EVALUATION_RESULTS"),
        "W-2.10",
    ),
    "accept-bad-batch-size": (
        "reject-batch-size",
        Verdict.FAIL,
        ("accepted a conformance.Echo job whose configuration is invalid", "batch_size"),
        "W-5.3",
    ),
    "send-after-end": ("batches", Verdict.FAIL, ("after that worker's end",), "E-4.24"),
    "crash-on-retry": ("resilience", Verdict.FAIL, ("the process exited with status 1",), "W-4.25"),
    "retry-with-batch-number": (
        "resilience",
        Verdict.FAIL,
        ("in state resilience", "meta.batch_number null (a retried item)"),
        "W-2.11",
    ),
    "no-abort-on-eof": (
        "link-drops",
        Verdict.FAIL,
        ("input ended mid-task", "sends TASK_ABORT(MODELLER_TIMEOUT) when its input ends"),
        None,
    ),
    "linger": ("single-run", Verdict.TIMEOUT, ("did not exit", "after its input ended"), None),
    "always-streams": (
        "single-run",
        Verdict.FAIL,
        ("PREPARING_DATA_BATCHES", "in a batched job (batched_execution true)"),
        "W-4.4",
    ),
    "not-json": ("batches", Verdict.FAIL, ("field $: expected JSON, found invalid JSON",), "F-1.1"),
    "huge-line": ("batches", Verdict.FAIL, ("expected a line of at most 16777216 bytes",), "F-1.2"),
    "extra-field": ("batches", Verdict.FAIL, ("field $.pod: unexpected field",), "E-2.1"),
    "float-v": (
        "batches",
        Verdict.FAIL,
        ("field $.v: expected the protocol version 1, found 1.0",),
        "E-2.2",
    ),
    "unknown-type": ("batches", Verdict.FAIL, ("unknown message type 'CONFIGURING'",), "E-2.3"),
    "other-task": (
        "batches",
        Verdict.FAIL,
        ("CONFIGURING_TASK for task 'another-task', which has no JOB_REQUEST before it",),
        "E-4.1",
    ),
    "int-task-id": (
        "batches",
        Verdict.FAIL,
        ("field $.task_id: expected a string, found 7",),
        "E-2.4",
    ),
    "string-seq": (
        "batches",
        Verdict.FAIL,
        ('field $.seq: expected an int >= 0, found "3"',),
        "E-2.5",
    ),
    "no-body": ("batches", Verdict.FAIL, ("field $.body", "the field is missing"), "E-2.7"),
    "null-meta": (
        "batches",
        Verdict.FAIL,
        ("field $.meta: expected an object", "found null"),
        "E-2.8",
    ),
    "negative-algorithm-index": (
        "batches",
        Verdict.FAIL,
        ("field $.meta.algorithm_index: expected an int >= 0, found -1",),
        "E-2.9",
    ),
    "wrong-recipient": (
        "batches",
        Verdict.FAIL,
        ("sent CONFIGURING_TASK to 'somebody-else'", "workers write to the modeller"),
        "W-3.2",
    ),
    "accept-names-other": (
        "batches",
        Verdict.FAIL,
        ('accepted with {"ACCEPT": "another/pod"}',),
        "W-3.4",
    ),
    "unknown-reject-reason": (
        "reject-batch-size",
        Verdict.FAIL,
        ("unknown reject reason 'BAD_JOB'",),
        "W-3.5",
    ),
    "body-on-marker": (
        "batches",
        Verdict.FAIL,
        ("field $.body: expected null, found {}",),
        "E-3.6",
    ),
    "zero-batches": (
        "batches",
        Verdict.FAIL,
        ("expected -1 (streaming) or an int >= 1, found 0",),
        "W-3.8",
    ),
    "negative-batch-id": (
        "batches",
        Verdict.FAIL,
        ("field $.body: expected an int >= 0, found -1",),
        "W-3.9",
    ),
    "unknown-batches-complete": (
        "batches",
        Verdict.FAIL,
        ('expected "BATCHES_ONLY" or "TASK_COMPLETE", found "DONE"',),
        "W-3.10",
    ),
    "unknown-abort-reason": (
        "no-data",
        Verdict.FAIL,
        ("unknown abort reason 'NO_ITEMS'",),
        "W-3.11",
    ),
    "int-online-check": (
        "online-check-before-complete",
        Verdict.FAIL,
        ("field $.body: expected a string, found 7",),
        "W-3.12",
    ),
    "bad-log-message": (
        "batches",
        Verdict.FAIL,
        ("field $.body.level: expected a string, found 20",),
        "E-3.14",
    ),
    "double-accept": ("batches", Verdict.FAIL, ("sent JOB_ACCEPT in state accepted",), "W-4.2"),
    "configure-first": (
        "batches",
        Verdict.FAIL,
        ("sent PREPARING_DATA in state configuring",),
        "W-4.3",
    ),
    "no-setup-wait": (
        "online-check-in-setup",
        Verdict.FAIL,
        ("before the modeller's ALGORITHM_EXCHANGE reached it",),
        "W-4.6",
    ),
    "no-start-wait": (
        "three-pods",
        Verdict.FAIL,
        ("sent EVALUATION_RESULTS", "in state batch_ready"),
        "W-4.8",
    ),
    "estimate-twice": (
        "batches",
        Verdict.FAIL,
        ("sent NUMBER_OF_BATCHES 3 in state batch_announced", "at most once"),
        "W-4.10",
    ),
    "abort-instead-of-reject": (
        "reject-batch-size",
        Verdict.FAIL,
        ("sent TASK_ABORT(WORKER_ERROR) in state requested",),
        "W-4.13",
    ),
    "abort-as-cancelled": (
        "no-data",
        Verdict.FAIL,
        ("aborted with CANCELLED_BY_MODELLER, but the modeller sent it no TASK_CANCEL",),
        "W-4.16",
    ),
    "log-before-answer": (
        "batches",
        Verdict.FAIL,
        ("sent LOG_MESSAGE in state requested",),
        "E-4.17",
    ),
    "ignore-start-timeout": (
        "start-timeout",
        Verdict.FAIL,
        ("ended complete; expected aborted:MODELLER_TIMEOUT", "task_start_timeout_s was 0.3 s"),
        "W-4.28",
    ),
    "soft-start-wait": (
        "slow-start",
        Verdict.FAIL,
        ("ended aborted:MODELLER_TIMEOUT; expected complete", "task_start_timeout_s was 4 s"),
        "W-4.28",
    ),
    "reject-valid": (
        "single-run",
        Verdict.FAIL,
        ("rejected a valid conformance.Echo job",),
        "W-5.1",
    ),
    "run-without-items": (
        "no-data",
        Verdict.FAIL,
        ("the Echo job has no items to run: expected TASK_ABORT(NO_DATA)",),
        "W-5.2",
    ),
    "reverse-items": (
        "batches",
        Verdict.FAIL,
        ("results of batch 0 hold ['i2', 'i1', 'i0'], but Echo predicts ['i0', 'i1', 'i2']",),
        "W-5.4",
    ),
    "retry-fail-alone": (
        "resilience-fail-alone",
        Verdict.FAIL,
        ("item 'i3' was delivered", "it is in fail_alone"),
        "W-5.5",
    ),
    "retry-single-run": (
        "single-run-failure",
        Verdict.FAIL,
        ("a non-batched run has no retry",),
        "W-5.6",
    ),
    "no-failure-limit": (
        "five-failed-batches",
        Verdict.FAIL,
        ("CURRENT_BATCH_ID 6, but Echo predicts TASK_ABORT(WORKER_ERROR)",),
        "W-5.7",
    ),
    "ignore-test-run": (
        "single-run-test-run",
        Verdict.FAIL,
        ("a test_run processes only the first item",),
        "W-5.9",
    ),
    "abort-at-end": (
        "single-run",
        Verdict.FAIL,
        ("TASK_ABORT(WORKER_ERROR), but Echo predicts that this task completes",),
        "W-5.11",
    ),
}

MODELLER_BUGS: dict[str, Broken] = {
    "no-barrier": (
        "slow-pod-barrier",
        Verdict.FAIL,
        ("sent TASK_START to pod kit/pod-a", "still waiting for TASK_START from kit/pod-b"),
        "M-4.20",
    ),
    "early-complete": (
        "slow-pod-completion",
        Verdict.FAIL,
        ("sent TASK_COMPLETE to pod kit/pod-a", "still waiting for BATCHES_COMPLETE"),
        "M-4.21",
    ),
    "no-cancel-on-abort": (
        "pod-aborts",
        Verdict.TIMEOUT,
        (
            "expected TASK_CANCEL to kit/pod-a within 2 s after pod kit/pod-b aborted with"
            " LIMITS_EXCEEDED (line ",
            "got nothing",
        ),
        "M-4.22",
    ),
    "ignore-late-accept": (
        "late-accept",
        Verdict.FAIL,
        ("whose JOB_ACCEPT came late", "a late accept is answered with TASK_CANCEL"),
        "M-4.19",
    ),
    "lose-quick-start": (
        "two-pods",
        Verdict.TIMEOUT,
        (
            "expected TASK_START to kit/pod-",
            "within 2 s after every accepted pod had sent TASK_START (line ",
            "got nothing",
        ),
        "M-4.26",
    ),
    "no-online-response": (
        "slow-pod-completion",
        Verdict.TIMEOUT,
        (
            "gave up waiting for the modeller",
            "expected ONLINE_RESPONSE to kit/pod-a after its ONLINE_CHECK (line ",
            "got nothing",
        ),
        "M-4.30",
    ),
    "wrong-seq": ("two-pods", Verdict.FAIL, ("from the modeller", "was used before"), "E-2.6"),
    "no-setup": (
        "initial-setup",
        Verdict.TIMEOUT,
        (
            "expected ALGORITHM_EXCHANGE to kit/pod-",
            "within 2 s after its JOB_ACCEPT of a job with an initial setup (line ",
            "got nothing",
        ),
        "M-4.7",
    ),
    "hang-at-end": ("single-run", Verdict.TIMEOUT, ("the modeller did not exit",), "M-6.3"),
    "send-worker-type": (
        "single-run",
        Verdict.FAIL,
        ("sent NUMBER_OF_BATCHES, which only workers send",),
        "M-3.1",
    ),
    "bad-job-request": (
        "single-run",
        Verdict.FAIL,
        ('field $.body.batched_execution: expected a bool, found "yes"',),
        "M-3.3",
    ),
    "string-setup": (
        "initial-setup",
        Verdict.FAIL,
        ('field $.body: expected an object, found "echo"',),
        "M-3.7",
    ),
    "wrong-token": (
        "online-check-in-setup",
        Verdict.FAIL,
        ("which has no unanswered ONLINE_CHECK with that token",),
        "M-3.13",
    ),
    "bad-log-message": (
        "single-run",
        Verdict.FAIL,
        ("field $.body.level: expected a string, found 20",),
        "E-3.14",
    ),
    "request-twice": (
        "two-pods",
        Verdict.FAIL,
        ("sent JOB_REQUEST to pod kit/pod-a in state requested",),
        "E-4.1",
    ),
    "start-twice": (
        "single-run",
        Verdict.FAIL,
        ("sent TASK_START to pod kit/pod-a in state running",),
        "M-4.9",
    ),
    "cancel-twice": (
        "pod-aborts",
        Verdict.FAIL,
        ("sent TASK_CANCEL to pod kit/pod-a", "at most once"),
        "M-4.14",
    ),
    "no-response-timeout": (
        "silent-pod",
        Verdict.TIMEOUT,
        ("never stopped waiting for kit/pod-c",),
        "M-4.18",
    ),
    "short-response-wait": (
        "slow-answer",
        Verdict.TIMEOUT,
        ("pod kit/pod-b gave up waiting", "within the response timeout, 4 s"),
        "M-4.18",
    ),
    "ignore-require-all": (
        "require-all-pods",
        Verdict.FAIL,
        ("pod kit/pod-a ended complete; expected aborted:CANCELLED_BY_MODELLER",),
        "M-4.23",
    ),
    "say-nothing": (
        "single-run",
        Verdict.FAIL,
        ("got no JOB_REQUEST before the modeller closed its output",),
        "E-4.27",
    ),
    "ignore-overrides": (
        "three-pods-overrides",
        Verdict.FAIL,
        ("does not carry the scenario's job: protocol is",),
        "M-6.1",
    ),
    "require-overrides": (
        "no-job-overrides",
        Verdict.FAIL,
        ("sent no JOB_REQUEST after a control line without job_overrides",),
        "M-6.2",
    ),
    "not-json": (
        "single-run",
        Verdict.FAIL,
        ("field $: expected JSON, found invalid JSON", "the line: TASK_START"),
        "F-1.1",
    ),
    "huge-line": (
        "single-run",
        Verdict.FAIL,
        ("expected a line of at most 16777216 bytes",),
        "F-1.2",
    ),
    "extra-field": ("single-run", Verdict.FAIL, ("field $.pod: unexpected field",), "E-2.1"),
    "float-v": (
        "single-run",
        Verdict.FAIL,
        ("field $.v: expected the protocol version 1, found 1.0",),
        "E-2.2",
    ),
    "unknown-type": ("single-run", Verdict.FAIL, ("unknown message type 'START'",), "E-2.3"),
    "int-task-id": (
        "single-run",
        Verdict.FAIL,
        ("field $.task_id: expected a string, found 7",),
        "E-2.4",
    ),
    "string-seq": (
        "single-run",
        Verdict.FAIL,
        ('field $.seq: expected an int >= 0, found "2"',),
        "E-2.5",
    ),
    "no-body": (
        "single-run",
        Verdict.FAIL,
        ("field $.body: expected any JSON value, found nothing",),
        "E-2.7",
    ),
    "null-meta": (
        "single-run",
        Verdict.FAIL,
        ("field $.meta: expected an object", "found null"),
        "E-2.8",
    ),
    "negative-algorithm-index": (
        "single-run",
        Verdict.FAIL,
        ("field $.meta.algorithm_index: expected an int >= 0, found -1",),
        "E-2.9",
    ),
    "body-on-marker": (
        "single-run",
        Verdict.FAIL,
        ("field $.body: expected null, found {}",),
        "E-3.6",
    ),
    "log-before-answer": (
        # pod-b answers late, so the LOG_MESSAGE surely comes before its answer.
        "slow-answer",
        Verdict.FAIL,
        ("sent LOG_MESSAGE to pod kit/pod-", "in state requested"),
        "E-4.17",
    ),
    "log-after-end": (
        "single-run",
        Verdict.FAIL,
        ("sent LOG_MESSAGE to pod kit/pod-a after that worker's end",),
        "E-4.24",
    ),
}


@pytest.fixture(scope="module")
def reports() -> dict[str, Report]:
    """Every run of this module, all at once."""
    results: dict[str, Report] = {}
    # The two whole-catalogue runs set the pace; the short variant runs share a few slots
    # beside them, so that a loaded machine is not flooded with processes.
    limiter = trio.CapacityLimiter(6)

    async def run(key: str, **kwargs: object) -> None:
        async with limiter:
            results[key] = await conform(seed=SEED, **kwargs)  # type: ignore[arg-type]

    async def run_all(key: str, **kwargs: object) -> None:
        results[key] = await conform(seed=SEED, **kwargs)  # type: ignore[arg-type]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: run_all("worker", role="worker", command=PLAIN_WORKER, generated=10)
            )
            nursery.start_soon(
                lambda: run_all("modeller", role="modeller", command=PLAIN_MODELLER, generated=10)
            )
            for role, base, bugs in (
                ("worker", PLAIN_WORKER, WORKER_BUGS),
                ("modeller", PLAIN_MODELLER, MODELLER_BUGS),
            ):
                for bug, (name, *_) in bugs.items():
                    nursery.start_soon(
                        functools.partial(
                            run,
                            f"{role}:{bug}",
                            role=role,
                            command=[*base, "--bug", bug],
                            scenarios=[name],
                        )
                    )

    trio.run(main)
    return results


@pytest.mark.parametrize("role", ["worker", "modeller"])
def test_the_plain_example_passes_the_whole_catalogue(
    reports: dict[str, Report], role: str
) -> None:
    report = reports[role]
    report.assert_passed()
    assert len(report.cases) == len(catalogue(Role(role))) + 10
    # Cases run two at a time where timing allows, and are reported in the catalogue's order.
    names = [scenario.name for scenario in catalogue(Role(role))]
    assert [case.name for case in report.cases] == names + [f"generated-{n}" for n in range(1, 11)]


def test_the_worker_catalogue_reaches_every_transition(reports: dict[str, Report]) -> None:
    coverage = reports["worker"].coverage
    assert coverage.chart.name == "modeller"
    assert coverage.state_percent() == 100
    assert coverage.missing_transitions() == []
    assert coverage.transition_percent() == 100
    assert "transitions 47/47 (100%)" in reports["worker"].summary()


def test_the_modeller_catalogue_reaches_every_transition(reports: dict[str, Report]) -> None:
    coverage = reports["modeller"].coverage
    assert coverage.chart.name == "worker"
    assert coverage.state_percent() == 100
    # Including those only a misbehaving peer provokes: bad input, the input ending,
    # a failing setup, skipped markers, and messages the modeller never sent.
    assert coverage.missing_transitions() == []
    assert "transitions 68/68 (100%)" in reports["modeller"].summary()


@pytest.mark.parametrize("bug", sorted(WORKER_BUGS))
def test_each_broken_worker_fails_for_the_right_reason(
    reports: dict[str, Report], bug: str
) -> None:
    _check_broken(reports[f"worker:{bug}"], *WORKER_BUGS[bug])


@pytest.mark.parametrize("bug", sorted(MODELLER_BUGS))
def test_each_broken_modeller_fails_for_the_right_reason(
    reports: dict[str, Report], bug: str
) -> None:
    _check_broken(reports[f"modeller:{bug}"], *MODELLER_BUGS[bug])


def _check_broken(
    report: Report, name: str, verdict: Verdict, words: tuple[str, ...], rule: str | None
) -> None:
    (case,) = report.cases
    assert case.name == name
    assert case.verdict is verdict, case.reason
    for word in words:
        assert word in case.reason, f"{word!r} not in {case.reason!r}"
    assert case.rule == rule, case.reason
    if rule is not None:
        assert case.reason.endswith(f"[{rule}]"), case.reason
        assert report.to_json()["cases"][0]["rule"] == rule
    assert not report.passed
    # A failing case keeps its trace; it is empty only when the peer wrote nothing.
    assert case.trace or rule in ("E-4.27", "M-6.2"), "a failing case keeps its trace"
    assert case.mermaid().startswith("sequenceDiagram\n")


VARIANTS_BEGIN = "<!-- broken variants: generated from tests/test_examples.py, do not edit -->"
VARIANTS_END = "<!-- end of the broken variants -->"
DOCS = Path(__file__).parent.parent / "docs" / "conformance.md"


def _bug_descriptions(script: str) -> dict[str, str]:
    spec = importlib.util.spec_from_file_location(script.removesuffix(".py"), EXAMPLES / script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.BUGS)


def variants_table() -> str:
    """The docs' table of broken variants: what each does wrong and the rule the kit cites."""
    rows = [
        "| example | `--bug` | what it does wrong | scenario | rule |",
        "|---|---|---|---|---|",
    ]
    for script, bugs in (("plain_worker.py", WORKER_BUGS), ("plain_modeller.py", MODELLER_BUGS)):
        said = _bug_descriptions(script)
        for bug, (name, _, _, rule) in sorted(
            bugs.items(), key=lambda kv: (_order(kv[1][3]), kv[0])
        ):
            cited = f"**{rule}**" if rule else "none (spec section 1, a receiver's duty)"
            what = said[bug].replace("|", "\\|")
            rows.append(f"| {script} | `{bug}` | {what} | `{name}` | {cited} |")
    return f"{VARIANTS_BEGIN}\n\n" + "\n".join(rows) + f"\n\n{VARIANTS_END}"


def _order(rule: str | None) -> int:
    ids = [r.id for r in RULES]
    return ids.index(rule) if rule in ids else len(ids)


def test_the_docs_list_every_variant_with_its_rule() -> None:
    text = DOCS.read_text()
    start, end = text.index(VARIANTS_BEGIN), text.index(VARIANTS_END) + len(VARIANTS_END)
    assert text[start:end] == variants_table(), (
        "docs/conformance.md is out of date: run python tests/test_examples.py --docs"
    )


def test_there_are_enough_broken_variants() -> None:
    assert len(WORKER_BUGS) >= 12 and len(MODELLER_BUGS) >= 5


# Roles that cannot break a rule that binds them too.
CANNOT_BREAK: dict[str, set[str]] = {
    # With a worker under test the trace starts with the kit's own JOB_REQUEST.
    "E-4.27": {"worker"},
}


def test_every_rule_a_peer_can_break_has_a_variant_the_kit_fails_with_it() -> None:
    """Walks the rule book, so that the tables above cannot fall behind it.

    Every rule binds a peer the kit tests: a worker (W), a modeller (M), or both
    (E, and F for the framing). A variant must break it in each role it binds, except
    where that role cannot (the reason is in the rule's reading, and below).
    """
    cited = {
        (role, rule)
        for role, bugs in (("worker", WORKER_BUGS), ("modeller", MODELLER_BUGS))
        for *_, rule in bugs.values()
        if rule is not None
    }
    missing = []
    for rule in RULES:
        roles = {"W": {"worker"}, "M": {"modeller"}}.get(rule.id[0], {"worker", "modeller"})
        roles -= CANNOT_BREAK.get(rule.id, set())
        missing += [f"{role}:{rule.id}" for role in sorted(roles) if (role, rule.id) not in cited]
    assert missing == [], f"rules without a broken variant: {missing}"
    assert {rule for _, rule in cited} <= set(RULE_BY_ID)
    # The scripts offer exactly the variants the tables test.
    for script, bugs in (("plain_worker.py", WORKER_BUGS), ("plain_modeller.py", MODELLER_BUGS)):
        out = subprocess.run(
            [PY, str(EXAMPLES / script), "--help"], capture_output=True, text=True, check=True
        ).stdout
        offered = set(re.search(r"--bug \{([^}]*)\}", out.replace("\n", "")).group(1).split(","))
        assert offered == set(bugs), offered ^ set(bugs)


@pytest.mark.slow
@pytest.mark.parametrize("role", ["worker", "modeller"])
def test_the_engine_itself_passes_its_kit(role: str) -> None:
    """The library's own worker and modeller, over stdio (slow: each start imports it)."""
    from fsm_protocol.conformance import run_conformance

    script = EXAMPLES / ("engine_worker.py" if role == "worker" else "engine_modeller.py")
    report = run_conformance(role=role, command=[PY, str(script)], seed=SEED, generated=10)
    report.assert_passed()


# The bounds for a whole default run (the catalogue and 10 generated cases): under
# 60 s against a correct implementation, under 120 s against a broken one.
@pytest.mark.slow
@pytest.mark.parametrize(
    ("role", "bug", "bound"),
    [
        ("worker", None, 60.0),
        ("modeller", None, 60.0),
        ("worker", "silent", 120.0),
        ("worker", "ignore-cancel", 120.0),
        ("modeller", "no-cancel-on-abort", 120.0),
        ("modeller", "lose-quick-start", 120.0),
        ("modeller", "no-online-response", 120.0),
        ("modeller", "ignore-late-accept", 120.0),
    ],
)
def test_a_whole_run_stays_within_its_bound(role: str, bug: str | None, bound: float) -> None:
    from fsm_protocol.conformance import run_conformance

    command = [*(PLAIN_WORKER if role == "worker" else PLAIN_MODELLER)]
    if bug is not None:
        command += ["--bug", bug]
    started = time.monotonic()
    report = run_conformance(role=role, command=command, seed=SEED, generated=10)
    elapsed = time.monotonic() - started
    assert report.passed is (bug is None), report.summary()
    assert elapsed < bound, f"{elapsed:.1f} s"
    assert all(case.duration_s < 15 for case in report.cases)


if __name__ == "__main__" and sys.argv[1:] == ["--docs"]:
    text = DOCS.read_text()
    start, end = text.index(VARIANTS_BEGIN), text.index(VARIANTS_END) + len(VARIANTS_END)
    DOCS.write_text(text[:start] + variants_table() + text[end:])
