"""``fsm-protocol explore``: visit every reachable state of a modeller and N workers."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._base._errors import ChartError
from .._base._files import Unusable
from .._core._chart import Role
from .._explore._charts import load_for_explore
from .._explore._explorer import ExploreResult, explore
from .._explore._model import FAULTS, Bounds
from .._export._sequence import to_mermaid_sequence

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

EXIT_OK = 0
EXIT_VIOLATION = 1
EXIT_UNUSABLE = 2
EXIT_LIMIT = 3


def add_explore(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "explore",
        help="check the charts exhaustively: every interleaving of N workers, with faults",
        description=(
            "Build one modeller chart and N worker charts, joined by FIFO channels, with the "
            "conformance Echo algorithm as the data, and visit every reachable state: every "
            "order of message deliveries, activity runs and timer expiries, with the faults "
            "asked for. Checks: no deadlock, an end always reachable, each item delivered "
            "exactly once or failed, the TASK_START barrier and the completion rule, nothing "
            "after a worker's end, abort reasons, and fsm-protocol check on one run per "
            "distinct outcome. Exit status: 0 every reachable state visited and every check "
            "held, 1 a violation (its shortest path is printed), 2 unusable input, "
            "3 --max-states stopped it first."
        ),
    )
    parser.add_argument("--workers", type=int, default=2, metavar="N", help="workers (default 2)")
    parser.add_argument(
        "--items", type=int, default=2, metavar="K", help="items per worker (default 2)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=1, metavar="B", help="items per batch (default 1)"
    )
    parser.add_argument(
        "--faults",
        default="",
        metavar="LIST",
        help=f"comma-separated, any of: {','.join(FAULTS)} (default: none)",
    )
    parser.add_argument(
        "--modeller-chart", metavar="FILE", help="modeller chart (default: shipped)"
    )
    parser.add_argument("--worker-chart", metavar="FILE", help="worker chart (default: shipped)")
    parser.add_argument(
        "--max-states", type=int, metavar="S", help="stop after S states (exit status 3)"
    )
    parser.add_argument(
        "--counterexample",
        metavar="FILE",
        help="on a violation, write its trace here as NDJSON, and a Mermaid sequence diagram "
        "beside it (FILE with the suffix .mmd)",
    )
    parser.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    parser.add_argument(
        "--no-symmetry",
        action="store_true",
        help="do not merge states that differ only by which worker is which",
    )
    parser.add_argument(
        "--no-partial-order",
        action="store_true",
        help="expand every interleaving, even of independent steps",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines on standard error")
    parser.set_defaults(run=run_explore)


def _fail(message: str) -> int:
    print(f"fsm-protocol explore: {message}", file=sys.stderr)
    return EXIT_UNUSABLE


def _bounds(args: argparse.Namespace) -> Bounds | str:
    if args.workers < 1:
        return f"--workers must be at least 1, found {args.workers}"
    if args.items < 0:
        return f"--items must be 0 or more, found {args.items}"
    if args.batch_size < 1:
        return f"--batch-size must be at least 1, found {args.batch_size}"
    if args.max_states is not None and args.max_states < 1:
        return f"--max-states must be at least 1, found {args.max_states}"
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        return f"unknown fault(s) {', '.join(unknown)}; choose from {','.join(FAULTS)}"
    return Bounds(
        workers=args.workers,
        items=args.items,
        batch_size=args.batch_size,
        faults=frozenset(faults),
    )


def run_explore(args: argparse.Namespace) -> int:
    bounds = _bounds(args)
    if isinstance(bounds, str):
        return _fail(bounds)
    try:
        worker = load_for_explore(Role.WORKER, args.worker_chart)
        modeller = load_for_explore(Role.MODELLER, args.modeller_chart)
        spec = load_for_explore(Role.MODELLER)
    except Unusable as exc:
        return _fail(str(exc))
    except ChartError as exc:
        print("\n".join(str(p) for p in exc.problems), file=sys.stderr)
        return _fail("the chart cannot be explored; fix the problems above")

    def progress(states: int, seconds: float) -> None:
        if not args.quiet:
            print(
                f"explore: {states:,} states, {states / seconds:,.0f} states/s",
                file=sys.stderr,
                flush=True,
            )

    result = explore(
        bounds,
        worker_chart=worker,
        modeller_chart=modeller,
        spec_chart=spec,
        symmetry=not args.no_symmetry,
        por=not args.no_partial_order,
        max_states=args.max_states,
        progress=progress,
    )
    written: list[str] = []
    example = result.counterexample
    if example is not None and args.counterexample:
        path = Path(args.counterexample)
        diagram = path.with_suffix(".mmd") if path.suffix != ".mmd" else Path(f"{path}.mmd")
        try:
            path.write_text(example.ndjson(), encoding="utf-8")
            diagram.write_text(
                to_mermaid_sequence(list(example.trace), fold=False), encoding="utf-8"
            )
        except OSError as exc:
            return _fail(f"cannot write the counterexample: {exc}")
        written = [str(path), str(diagram)]
    if args.format == "json":
        print(json.dumps(_as_json(result, written), indent=2))
    else:
        print(_as_text(result, written))
    return {"ok": EXIT_OK, "violation": EXIT_VIOLATION, "limit": EXIT_LIMIT}[result.verdict]


def _describe_bounds(bounds: Bounds) -> str:
    faults = ",".join(f for f in FAULTS if f in bounds.faults) or "none"
    return (
        f"{bounds.workers} worker{'s' if bounds.workers != 1 else ''} x {bounds.items} "
        f"item{'s' if bounds.items != 1 else ''}, batch size {bounds.batch_size}, faults {faults}"
    )


def _as_text(result: ExploreResult, written: list[str]) -> str:
    lines = [
        f"explore: {_describe_bounds(result.bounds)}",
        f"states: {result.states:,}  transitions: {result.transitions:,}  ends: {result.ends:,}"
        f"  traces checked: {result.traces_checked:,}",
        f"time: {result.seconds:.2f} s  states/s: {result.states_per_s:,.0f}",
        f"reduction: x{result.reduction_factor:.1f} (symmetry x{result.symmetry_factor:.1f}, "
        f"partial order x{result.por_factor:.1f})",
    ]
    if result.verdict == "ok":
        lines.append("verdict: ok: every reachable state visited, every check held")
    elif result.verdict == "limit":
        lines.append(
            f"verdict: stopped at --max-states after {result.states:,} states; "
            "no violation so far, but not every state was visited"
        )
    else:
        example = result.counterexample
        assert example is not None
        lines.append(
            f"verdict: VIOLATION of {example.violation.check}: {example.violation.message}"
        )
        lines.append(f"shortest path found ({len(example.steps)} steps):")
        lines.extend(f"  {n:3}. {step}" for n, step in enumerate(example.steps, 1))
        if written:
            lines.append(f"counterexample trace: {written[0]} (sequence diagram: {written[1]})")
    return "\n".join(lines)


def _as_json(result: ExploreResult, written: list[str]) -> dict[str, Any]:
    bounds = result.bounds
    data: dict[str, Any] = {
        "verdict": result.verdict,
        "bounds": {
            "workers": bounds.workers,
            "items": bounds.items,
            "batch_size": bounds.batch_size,
            "faults": [f for f in FAULTS if f in bounds.faults],
        },
        "states": result.states,
        "transitions": result.transitions,
        "ends": result.ends,
        "traces_checked": result.traces_checked,
        "seconds": round(result.seconds, 3),
        "states_per_s": round(result.states_per_s),
        "reduction": {
            "symmetry": result.symmetry,
            "partial_order": result.por,
            "symmetry_factor": round(result.symmetry_factor, 3),
            "partial_order_factor": round(result.por_factor, 3),
            "factor": round(result.reduction_factor, 3),
        },
        "violation": None,
    }
    example = result.counterexample
    if example is not None:
        data["violation"] = {
            "check": example.violation.check,
            "message": example.violation.message,
            "steps": list(example.steps),
            "length": len(example.steps),
            "trace_lines": len(example.trace),
            "counterexample": written[0] if written else None,
            "diagram": written[1] if written else None,
        }
    return data
