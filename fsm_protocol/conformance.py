"""The conformance kit: check traces, and test other implementations of either role.

Two entry points, usable from pytest or any script, with or without trio:

* :func:`check_trace` judges a recorded trace (wire messages, in the order one
  party observed them): the per-worker order of the modeller chart, the
  modeller-wide rules, every sender's seq and, for ``conformance.Echo`` jobs,
  every item's account. :func:`assert_conforms` raises :class:`AssertionError`
  with the first violation instead, like ``trio.testing.check_two_way_stream``.
* :func:`run_conformance` starts another implementation as a command, plays
  the other role with this library's engine, and runs the scenario catalogue
  (:func:`catalogue`) plus Hypothesis-generated scenarios against it. Its
  :class:`Report` has a verdict per case, the coverage reached, and JSON and
  JUnit forms. :func:`conform` is the same, for code already inside trio.

Example::

    from fsm_protocol.conformance import run_conformance

    def test_my_worker_conforms():
        report = run_conformance(role="worker", command=["python", "my_worker.py"], seed=1)
        report.assert_passed()
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ._algo._echo_model import Delivery, EchoPrediction, Fate
from ._check._checker import CheckResult, Finding, ItemAccount, TraceChecker, check_stream
from ._core._chart import Role
from ._wire._messages import Message, encode

if TYPE_CHECKING:
    from ._kit._coverage import Coverage
    from ._kit._reports import CaseResult, Note, Report, sequence_diagram
    from ._kit._run import CaseHook, conform
    from ._kit._scenarios import (
        Echo,
        Fault,
        FaultKind,
        Scenario,
        Verdict,
        catalogue,
        generated_scenarios,
    )

__all__ = [
    "CaseResult",
    "CheckResult",
    "Coverage",
    "Delivery",
    "Echo",
    "EchoPrediction",
    "Fate",
    "Fault",
    "FaultKind",
    "Finding",
    "ItemAccount",
    "Note",
    "Report",
    "Scenario",
    "Verdict",
    "assert_conforms",
    "catalogue",
    "check_trace",
    "conform",
    "generated_scenarios",
    "run_conformance",
    "sequence_diagram",
]

TraceSource = str | os.PathLike[str] | Iterable[bytes | str | Message]


def check_trace(
    trace: TraceSource, *, echo: bool = True, silent_pods: Iterable[str] = ()
) -> CheckResult:
    """Check a trace; stops at the first violation.

    Args:
        trace: A path to an NDJSON file, or the lines themselves (``bytes`` or
            ``str``, with or without their newline), or :class:`Message` values.
        echo: Also check the item account of ``conformance.Echo`` jobs.
        silent_pods: Pods known never to answer; the trace may end with them
            unanswered.

    Returns:
        The verdict: ``ok``, the first violation (``finding``) if any, and the
        Echo item accounts.

    Raises:
        OSError: The file cannot be read.
    """
    checker = TraceChecker(echo=echo, unanswered_ok=silent_pods)
    if isinstance(trace, (str, os.PathLike)):
        with open(trace, "rb") as stream:
            return check_stream(stream, checker)
    checker.feed_lines(encode(line) if isinstance(line, Message) else line for line in trace)
    return checker.finish()


def assert_conforms(
    trace: TraceSource, *, echo: bool = True, silent_pods: Iterable[str] = ()
) -> CheckResult:
    """Like :func:`check_trace`, but raise :class:`AssertionError` on a violation.

    Raises:
        AssertionError: With the violation's line, reason, state and expected messages.
    """
    result = check_trace(trace, echo=echo, silent_pods=silent_pods)
    if result.finding is not None:
        raise AssertionError(result.finding.render())
    return result


def run_conformance(
    *,
    role: Role | str,
    command: Sequence[str],
    scenarios: Sequence[str | Scenario] | None = None,
    seed: int | None = None,
    generated: int | None = None,
    timeout: float | None = None,
    time_scale: float = 1.0,
    transport: str = "stdio",
    on_case: CaseHook | None = None,
    jobs: int | None = None,
) -> Report:
    """Test an implementation of ``role`` started as ``command``.

    Args:
        role: The role the command plays, ``"worker"`` or ``"modeller"``.
        command: The command line that starts it.
        scenarios: Names from :func:`catalogue` (and ``generated-N``), or
            :class:`Scenario` values; by default the whole catalogue.
        seed: The Hypothesis seed for the generated scenarios; random if None,
            and always in the report, so a failure can be replayed.
        generated: How many generated scenarios; by default 10 with the whole
            catalogue and 0 with named scenarios.
        timeout: The last-resort cap on one case, in seconds (by default 60
            times ``time_scale``); the kit kills the processes of a case that
            overruns it (verdict TIMEOUT). Every step of a case has its own,
            shorter wait, so a broken implementation meets one of those first.
        time_scale: Multiplies every timing of the kit, for slow implementations.
        transport: How the kit reaches the command: ``"stdio"``, or ``"tcp"`` on
            loopback, with ``{host}``, ``{port}``, ``{pod}`` (worker) or ``{port}`` /
            ``{port_file}`` and ``{task}`` (modeller) filled in the command; see
            docs/conformance.md, "Over TCP".
        on_case: Called with each case's result as soon as it is known.
        jobs: How many cases may run at once (the report keeps the catalogue's
            order): by default 2 over stdio and 1 over TCP. Cases whose meaning
            depends on timing (a fault, short timeouts) always run alone.

    Returns:
        The report: a verdict per case, the coverage, the seed.

    Raises:
        ConfigError: An unknown role, scenario or transport, or no command.
    """
    kwargs: dict[str, Any] = {
        "role": role,
        "command": command,
        "scenarios": scenarios,
        "seed": seed,
        "generated": generated,
        "timeout": timeout,
        "time_scale": time_scale,
        "transport": transport,
        "on_case": on_case,
        "jobs": jobs,
    }

    import trio

    from ._kit._run import conform

    async def run() -> Report:
        return await conform(**kwargs)

    return trio.run(run)


# The kit's names, and the module each lives in: imported on first use, so that
# checking a trace (check_trace, assert_conforms) never imports trio or the runtime.
_LAZY: dict[str, str] = {
    "Coverage": "._kit._coverage",
    "CaseResult": "._kit._reports",
    "Note": "._kit._reports",
    "Report": "._kit._reports",
    "sequence_diagram": "._kit._reports",
    "CaseHook": "._kit._run",
    "conform": "._kit._run",
    "Echo": "._kit._scenarios",
    "Fault": "._kit._scenarios",
    "FaultKind": "._kit._scenarios",
    "Scenario": "._kit._scenarios",
    "Verdict": "._kit._scenarios",
    "catalogue": "._kit._scenarios",
    "generated_scenarios": "._kit._scenarios",
}


# Hidden from type checkers, so that a misspelt name is still an error there:
# they see the real types through the TYPE_CHECKING imports above.
if not TYPE_CHECKING:

    def __getattr__(name: str) -> Any:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, __package__), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
