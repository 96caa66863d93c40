"""``fsm-protocol check`` and ``fsm-protocol conform``: the conformance kit's command line.

Exit codes follow the rest of the CLI: 0 conforming (every case passed), 1 a
violation (a case failed or timed out), 2 unusable input (a missing file, an
unknown scenario, a command that cannot be started).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import cattrs
import trio
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .._base._errors import ConfigError
from .._check._checker import TraceChecker, check_stream
from .._core._chart import Role
from .._kit._endpoints import MODELLER_TRANSPORTS, WORKER_TRANSPORTS
from .._kit._reports import CaseResult, Report
from .._kit._run import conform
from .._kit._scenarios import Verdict, catalogue

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

EXIT_OK = 0
EXIT_VIOLATION = 1
EXIT_UNUSABLE = 2

# Results as JSON: attrs classes to dicts, enums to their values.
_JSON = cattrs.Converter()

_STYLES = {Verdict.PASS: "green", Verdict.FAIL: "bold red", Verdict.TIMEOUT: "bold yellow"}


# ------------------------------------------------------------------------------------ check


def add_check(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "check",
        help="check traces (NDJSON wire messages) against the protocol",
        description=(
            "Check trace files in the wire format: every message of a task, both directions, "
            "one JSON object per line, in the order observed. Runs one monitor per (task, "
            "worker) from the modeller chart, the modeller-wide rules, the exact seq of each "
            "sender and, for conformance.Echo jobs, every item's account. Prints the first "
            "violation with its line number, the monitor's state and the expected messages. "
            "Streams: constant memory. Exit status: 0 conforming, 1 a violation (an empty or "
            "unfinished trace is one), 2 a file could not be read."
        ),
    )
    parser.add_argument("traces", nargs="+", metavar="TRACE", help="trace files; - for stdin")
    parser.add_argument(
        "--no-echo", action="store_true", help="skip the conformance.Echo item account"
    )
    parser.add_argument(
        "--silent-pod",
        action="append",
        default=[],
        metavar="POD",
        help="a pod known never to answer; the trace may end with it unanswered (repeatable)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print only violations")
    parser.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="text (default), or one JSON document: ok, and each trace's verdict and finding",
    )
    parser.set_defaults(run=_run_check)


def _run_check(args: argparse.Namespace) -> int:
    violations = unusable = 0
    as_json = args.format == "json"
    report: list[dict[str, object]] = []
    failed: list[dict[str, str]] = []

    def cannot(name: str, text: str) -> None:
        print(f"fsm-protocol check: {name}: {text}", file=sys.stderr)
        failed.append({"file": name, "error": text})

    for name in args.traces:
        checker = TraceChecker(echo=not args.no_echo, unanswered_ok=args.silent_pod)
        try:
            if name == "-":
                result = check_stream(sys.stdin.buffer, checker)
            else:
                with open(name, "rb") as stream:
                    result = check_stream(stream, checker)
        except FileNotFoundError:
            cannot(name, "no such file (check the path)")
            unusable += 1
            continue
        except IsADirectoryError:
            cannot(name, "is a directory")
            unusable += 1
            continue
        except OSError as exc:
            cannot(name, f"cannot be read: {exc}")
            unusable += 1
            continue
        if result.finding is not None:
            violations += 1
        if as_json:
            entry = _JSON.unstructure(result)
            entry["file"] = name
            entry["summary"] = result.summary()
            report.append(entry)
        elif result.finding is not None:
            print(result.finding.render(name))
        elif not args.quiet:
            print(f"{name}: {result.summary()}")
    if as_json:
        document = {"ok": not violations and not unusable, "traces": report, "unusable": failed}
        print(json.dumps(document, indent=2, ensure_ascii=False))
    if unusable:
        return EXIT_UNUSABLE
    return EXIT_VIOLATION if violations else EXIT_OK


# ---------------------------------------------------------------------------------- conform


def add_conform(subparsers: Subparsers) -> None:
    transports = sorted(set(WORKER_TRANSPORTS) | set(MODELLER_TRANSPORTS))
    parser = subparsers.add_parser(
        "conform",
        help="test another implementation of the worker or the modeller",
        description=(
            "Run the conformance catalogue against COMMAND. With --role worker the kit is the "
            "modeller and starts COMMAND once per simulated pod; with --role modeller it starts "
            "COMMAND once, writes the CONFORMANCE_SCENARIO line, and plays every pod. The "
            "named scenarios are followed by Hypothesis-generated ones (replay them with "
            "--seed). Exit status: 0 every case passed, 1 a case failed or timed out, 2 "
            "unusable arguments or a command that cannot be started."
        ),
        epilog="example: fsm-protocol conform --role worker -- python my_worker.py --stdio",
    )
    parser.add_argument(
        "--role", required=True, choices=[r.value for r in Role], help="the role COMMAND plays"
    )
    parser.add_argument(
        "--transport",
        default="stdio",
        choices=transports,
        help="how the kit reaches COMMAND (default stdio); tcp fills {host}, {port}, {pod}"
        " (worker) or {port}/{port_file} and {task} (modeller) in COMMAND's arguments",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        metavar="NAME",
        help="run only this scenario (repeatable; generated-N names a generated one)",
    )
    parser.add_argument("--list", action="store_true", help="list the role's scenarios and exit")
    parser.add_argument("--seed", type=int, help="the Hypothesis seed; printed on every run")
    parser.add_argument(
        "--generated",
        type=int,
        metavar="N",
        help="how many generated scenarios to add (default 10, or 0 with --scenario)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="S",
        help="last-resort cap on one case (default 60 x the time scale); every step of a case"
        " has its own, shorter wait",
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        metavar="X",
        help="multiply the kit's timings (timeouts, delays) by X, for slow implementations",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="run up to N cases at once (default 2 over stdio, 1 over TCP); cases that depend"
        " on timing always run alone",
    )
    parser.add_argument("--report", metavar="FILE.json", help="write the JSON report here")
    parser.add_argument("--junit", metavar="FILE.xml", help="write a JUnit XML report here")
    parser.add_argument(
        "--artifacts",
        metavar="DIR",
        help="write each failing case's trace (.jsonl) and sequence diagram (.mmd) here",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no line per case as it runs")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARG ...]")
    parser.set_defaults(run=_run_conform)


def _run_conform(args: argparse.Namespace) -> int:
    role = Role(args.role)
    console = Console(highlight=False, soft_wrap=False)
    if args.list:
        table = Table("scenario", "what it exercises", title=f"{role.value} scenarios")
        for scenario in catalogue(role):
            table.add_row(scenario.name, scenario.description)
        console.print(table)
        console.print("plus generated-1, generated-2, ...: Hypothesis-generated Echo jobs")
        return EXIT_OK
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print(
            "fsm-protocol conform: no command to test; put it after --, e.g."
            " fsm-protocol conform --role worker -- python my_worker.py",
            file=sys.stderr,
        )
        return EXIT_UNUSABLE
    if shutil.which(command[0]) is None:
        print(
            f"fsm-protocol conform: cannot start {command[0]!r}: not found or not executable",
            file=sys.stderr,
        )
        return EXIT_UNUSABLE

    def on_case(result: CaseResult) -> None:
        if not args.quiet:
            line = Text(f"{result.verdict.value:7} ", style=_STYLES[result.verdict])
            line.append(f"{result.name} ({result.duration_s:.2f} s)")
            if not result.passed:
                line.append(f": {result.reason}")
            console.print(line)

    try:
        report = trio.run(
            lambda: conform(
                role=role,
                command=command,
                scenarios=args.scenario,
                seed=args.seed,
                generated=args.generated,
                timeout=args.timeout,
                time_scale=args.time_scale,
                transport=args.transport,
                on_case=on_case,
                jobs=args.jobs,
            )
        )
    except ConfigError as exc:
        print(f"fsm-protocol conform: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    written = _write_reports(report, args)  # first: printing may stop at a closed pipe
    _print_report(console, report, artifacts=args.artifacts, gaps=args.scenario is None)
    for path in written:
        console.print(f"wrote {path}")
    return EXIT_OK if report.passed else EXIT_VIOLATION


def _print_report(
    console: Console, report: Report, *, artifacts: str | None, gaps: bool = True
) -> None:
    table = Table(
        "#",
        "case",
        "verdict",
        "time",
        "reason",
        title="conformance: " + " ".join(["--role", report.role.value, "--", *report.command]),
    )
    for number, case in enumerate(report.cases, start=1):
        table.add_row(
            str(number),
            case.name,
            Text(case.verdict.value, style=_STYLES[case.verdict]),
            f"{case.duration_s:.2f}s",
            "" if case.passed else case.reason,
        )
    console.print(table)
    failed = [case for case in report.cases if not case.passed]
    for case in failed:
        console.print(Text(f"\n{case.name}: {case.verdict.value}", style=_STYLES[case.verdict]))
        console.print(Text(case.reason))
        for line in case.details:
            console.print(Text("  " + line))
        if artifacts:
            trace, diagram = _artifact_paths(artifacts, report, case)
            console.print(f"  trace: {trace}\n  sequence diagram: {diagram}")
    coverage = report.coverage
    console.print(f"\n{report.summary()}")
    missing = coverage.missing_transitions()
    if missing and gaps:
        console.print(f"transitions not exercised ({len(missing)}):")
        for text in missing:
            console.print(Text(f"  {text}"))
    if failed and not artifacts:
        console.print("(add --artifacts DIR to get each failing case's trace and diagram as files)")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "case"


def _artifact_paths(directory: str, report: Report, case: CaseResult) -> tuple[Path, Path]:
    base = Path(directory) / f"{report.role.value}-{_slug(case.name)}"
    return base.with_suffix(".jsonl"), base.with_suffix(".mmd")


def _write_reports(report: Report, args: argparse.Namespace) -> list[Path]:
    written: list[Path] = []
    if args.report:
        path = Path(args.report)
        path.write_text(json.dumps(report.to_json(), indent=2) + "\n")
        written.append(path)
    if args.junit:
        path = Path(args.junit)
        path.write_text(report.to_junit())
        written.append(path)
    if args.artifacts:
        os.makedirs(args.artifacts, exist_ok=True)
        for case in report.cases:
            if case.passed:
                continue
            trace, diagram = _artifact_paths(args.artifacts, report, case)
            trace.write_text(case.trace_text())
            diagram.write_text(case.mermaid())
            written += [trace, diagram]
    return written
