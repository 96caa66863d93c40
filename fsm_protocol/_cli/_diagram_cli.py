"""``fsm-protocol diagram``: draw a chart, or a trace as a sequence diagram."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .._base._errors import ConfigError, DecodeError, Problem
from .._base._files import Unusable, read_text
from .._base._resources import shipped_chart_paths
from .._core._chart import Chart
from .._core._loader import check_chart_text
from .._export._diagram import render_graphviz, to_dot, to_mermaid, to_plantuml
from .._export._scxml import check_scxml_text, to_scxml
from .._export._sequence import read_trace, to_mermaid_sequence, to_sequence_svg
from .._runtime._roles import role_binding_names

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

EXIT_OK = 0
EXIT_UNUSABLE = 2

CHART_FORMATS = ("mermaid", "dot", "svg", "png", "plantuml", "scxml")
TRACE_FORMATS = ("mermaid", "svg")
_SCXML_SUFFIXES = (".scxml", ".xml")

_TEXT_WRITERS: dict[str, Callable[[Chart], str]] = {
    "mermaid": to_mermaid,
    "dot": to_dot,
    "plantuml": to_plantuml,
    "scxml": to_scxml,
}


def add_diagram(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "diagram",
        help="draw a chart (Mermaid, DOT, SVG, PNG, PlantUML, SCXML) or a trace",
        description=(
            "Draw a statechart, or a trace as a sequence diagram. CHART is worker or "
            "modeller (the shipped charts), or a chart file (.yaml, or .scxml to read "
            "SCXML). svg and png need the Graphviz 'dot' program. With --trace FILE, draw "
            "the NDJSON trace's messages instead (mermaid or svg); long runs of batches fold "
            "into notes. Exit status: 0 drawn, 2 the input could not be drawn."
        ),
    )
    parser.add_argument(
        "chart", nargs="?", metavar="CHART", help="worker, modeller, or a chart file"
    )
    parser.add_argument(
        "--trace", metavar="FILE", help="draw this NDJSON trace as a sequence diagram"
    )
    parser.add_argument(
        "-f",
        "--format",
        default="mermaid",
        choices=CHART_FORMATS,
        help="output format (default mermaid; a trace takes mermaid or svg)",
    )
    parser.add_argument(
        "-o", "--output", metavar="FILE", help="write here instead of to standard output"
    )
    parser.add_argument(
        "--no-fold",
        action="store_true",
        help="with --trace: draw every message, even in long runs of batches",
    )
    parser.set_defaults(run=run_diagram)


def _fail(message: str) -> int:
    print(f"fsm-protocol diagram: {message}", file=sys.stderr)
    return EXIT_UNUSABLE


def _load_chart(name: str) -> Chart:
    # A shipped chart's bare name wins; write ./worker for a file called worker.
    shipped = shipped_chart_paths()
    path = str(shipped[name]) if name in shipped else name
    if name not in shipped and not Path(name).exists():
        raise Unusable(
            f"{name}: no such chart file, and no shipped chart of that name "
            f"(the shipped charts are {', '.join(shipped) or 'missing: reinstall'})"
        )
    text = read_text(path, "chart")
    problems: list[Problem]
    if Path(path).suffix.lower() in _SCXML_SUFFIXES:
        chart, problems = check_scxml_text(text, file=path, role_bindings=role_binding_names())
    else:
        chart, problems = check_chart_text(text, file=path, role_bindings=role_binding_names())
    if chart is None:
        for problem in problems:
            print(problem, file=sys.stderr)
        count = len(problems)
        raise Unusable(
            f"{path}: cannot draw a chart with {count} problem{'s' if count != 1 else ''} "
            "(fix them; fsm-protocol validate lists them too)"
        )
    return chart


def _chart_output(chart: Chart, fmt: str) -> bytes:
    if fmt in _TEXT_WRITERS:
        return _TEXT_WRITERS[fmt](chart).encode("utf-8")
    return render_graphviz(to_dot(chart), fmt)


def _trace_output(name: str, fmt: str, *, fold: bool) -> bytes:
    if fmt not in TRACE_FORMATS:
        raise Unusable(
            f"a trace is drawn as {' or '.join(TRACE_FORMATS)}, not {fmt} (use --format svg)"
        )
    try:
        messages = read_trace(read_text(name, "trace"), file=name)
    except DecodeError as exc:
        raise Unusable(f"{exc} (a trace has one wire message per line)") from None
    if not messages:
        raise Unusable(f"{name}: the trace has no messages")
    writer = to_sequence_svg if fmt == "svg" else to_mermaid_sequence
    return writer(messages, fold=fold).encode("utf-8")


def run_diagram(args: argparse.Namespace) -> int:
    if (args.chart is None) == (args.trace is None):
        return _fail(
            "name exactly one thing to draw: a CHART (worker, modeller or a file), or --trace FILE"
        )
    try:
        if args.trace is not None:
            output = _trace_output(args.trace, args.format, fold=not args.no_fold)
        else:
            output = _chart_output(_load_chart(args.chart), args.format)
    except (Unusable, ConfigError) as exc:
        return _fail(str(exc))
    binary = args.format == "png"
    if args.output is None:
        if binary and sys.stdout.isatty():
            return _fail("refusing to write PNG to a terminal: add -o FILE")
        sys.stdout.buffer.write(output)
        sys.stdout.flush()
        return EXIT_OK
    try:
        Path(args.output).write_bytes(output)
    except OSError as exc:
        return _fail(f"{args.output}: cannot be written: {exc.strerror or exc}")
    return EXIT_OK
