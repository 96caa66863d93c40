"""``fsm-protocol demo``: a whole task in one process, shown as it runs."""

from __future__ import annotations

import argparse
import json
import sys
from typing import IO, TYPE_CHECKING, Any

import cattrs
import trio

from .._algo._protocols import EchoProtocol, UsageLimit
from .._runtime._modeller import Progress as BatchProgress
from .._runtime._modeller import TaskTimeouts
from .._runtime._task import Hooks, TaskOutcome, run_task
from .._runtime._worker import Pod
from .._wire._messages import Message, encode

if TYPE_CHECKING:
    from rich.console import Console

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

# The outcome as JSON: attrs classes to dicts, enums to their values.
_JSON = cattrs.Converter()


def add_demo(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run a demo task: one modeller and several in-process workers",
        description=(
            "Run the conformance Echo algorithm as a real task between one modeller and "
            "several in-process workers, show the slowest worker's batch as it goes, and "
            "print each worker's outcome. Exit status: 0 the task completed, 1 it did not, "
            "2 bad arguments or an unwritable --trace file, 130 interrupted."
        ),
    )
    parser.add_argument("--workers", type=int, default=3, help="number of workers (default 3)")
    parser.add_argument("--items", type=int, default=40, help="items per worker (default 40)")
    parser.add_argument("--batch-size", type=int, default=4, help="items per batch (default 4)")
    parser.add_argument(
        "--fail-in-batch",
        "--fail",
        dest="fail",
        action="append",
        default=[],
        metavar="ITEM",
        help="an item that fails in its batch and succeeds on retry (repeatable), e.g. item-7",
    )
    parser.add_argument(
        "--fail-alone",
        action="append",
        default=[],
        metavar="ITEM",
        help="an item that fails even when retried alone (repeatable)",
    )
    parser.add_argument("--limit", type=int, default=None, help="inference usage limit per worker")
    parser.add_argument(
        "--non-batched", action="store_true", help="run every item in one go, without batches"
    )
    parser.add_argument(
        "--trace",
        metavar="FILE",
        help="write every message of the task to FILE as NDJSON, as it happens (- for "
        "standard output); fsm-protocol check and diagram --trace read it",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the outcome as one JSON document on standard output, instead of the table",
    )
    parser.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    # rich is imported here so that other subcommands start without it.
    from rich.console import Console

    if args.workers < 1 or args.items < 0 or args.batch_size < 1:
        print(
            "fsm-protocol demo: --workers and --batch-size must be at least 1, --items at least 0",
            file=sys.stderr,
        )
        return 2
    if args.json and args.trace == "-":
        print("fsm-protocol demo: --json and --trace - both want standard output", file=sys.stderr)
        return 2
    trace: IO[bytes] | None = None
    if args.trace == "-":
        trace = sys.stdout.buffer
    elif args.trace is not None:
        try:
            trace = open(args.trace, "wb")  # noqa: SIM115  (closed below, after the run)
        except OSError as exc:
            print(
                f"fsm-protocol demo: {args.trace}: cannot be written: {exc.strerror or exc}",
                file=sys.stderr,
            )
            return 2
    # What a person watches goes to stderr when stdout carries data.
    console = Console(stderr=args.json or args.trace == "-")
    try:
        outcome = _run(args, console, trace)
    finally:
        if trace is not None:
            trace.flush()
            if trace is not sys.stdout.buffer:
                trace.close()
    if args.json:
        sys.stdout.write(json.dumps(outcome_json(outcome), indent=2, ensure_ascii=False) + "\n")
        sys.stdout.flush()
    elif args.trace != "-":
        _print_outcome(console, outcome)
    return 0 if outcome.status.value == "complete" else 1


def _run(args: argparse.Namespace, console: Console, trace: IO[bytes] | None) -> TaskOutcome:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    items = tuple(f"item-{i}" for i in range(1, args.items + 1))
    protocol = EchoProtocol(
        items=items,
        batch_size=args.batch_size,
        fail_in_batch=tuple(args.fail),
        fail_alone=tuple(args.fail_alone),
        inference_limit=UsageLimit(args.limit) if args.limit is not None else None,
    )
    pods = [Pod(f"demo/pod-{chr(ord('a') + i)}") for i in range(args.workers)]
    batches = -(-len(items) // args.batch_size) if items else 0

    def on_message(who: str, message: Message) -> None:
        # The modeller sees every message of the task, in order: the trace is its view.
        if trace is not None and who.startswith("modeller"):
            trace.write(encode(message))

    hooks = Hooks(on_message=on_message if trace is not None else None)
    if args.no_progress or (args.json and not console.is_terminal):
        return trio.run(lambda: _task(protocol, pods, args, hooks))

    with Progress(
        TextColumn("[bold]slowest worker[/bold] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        transient=False,
    ) as progress:
        bar = progress.add_task("batch", total=max(batches, 1))

        def on_progress(p: BatchProgress) -> None:
            # Batch ids are 0-based on the wire; people count from 1.
            total = p.total_estimate or batches
            progress.update(
                bar, completed=p.batch, total=total, description=f"{p.worker}: batch {p.batch + 1}"
            )

        hooks = Hooks(on_message=hooks.on_message, on_progress=on_progress)
        try:
            outcome = trio.run(lambda: _task(protocol, pods, args, hooks))
        except BaseException:
            progress.update(bar, description="[bold yellow]interrupted[/bold yellow]")
            raise
        # The bar ends in the task's real state: full only when it completed.
        status = outcome.status.value
        if status == "complete":
            progress.update(bar, completed=progress.tasks[0].total, description="complete")
        else:
            progress.update(bar, description=f"[bold red]{status}[/bold red]")
    return outcome


async def _task(protocol: EchoProtocol, pods: list[Pod], args: Any, hooks: Hooks) -> TaskOutcome:
    return await run_task(
        protocol,
        pods,
        batched_execution=not args.non_batched,
        timeouts=TaskTimeouts(),
        hooks=hooks,
    )


def outcome_json(outcome: TaskOutcome) -> dict[str, Any]:
    """The outcome as plain JSON data; results keyed by worker, batch and retry."""
    return {
        "task_id": outcome.task_id,
        "status": outcome.status.value,
        "workers": {pod: _JSON.unstructure(w) for pod, w in outcome.workers.items()},
        "results": [
            {**_JSON.unstructure(key), "body": body}
            for key, body in sorted(outcome.results.items())
        ],
        "abort_reasons": {pod: reason.value for pod, reason in outcome.abort_reasons.items()},
        "failed_items": {pod: list(items) for pod, items in outcome.failed_items.items()},
        "errors": [_JSON.unstructure(e) for e in outcome.errors],
        "messages": len(outcome.trace),
        "violations": [_JSON.unstructure(v) for v in outcome.violations],
    }


def _print_outcome(console: Console, outcome: TaskOutcome) -> None:
    from rich.table import Table

    table = Table(title=f"task {outcome.task_id}: {outcome.status.value}")
    for column in ("worker", "end state", "results", "failed items", "abort reason"):
        table.add_column(column)
    for pod_id, worker in outcome.workers.items():
        results = outcome.results_for(pod_id)
        delivered = sum(
            len(body.get("items", [])) for body in results.values() if isinstance(body, dict)
        )
        failed = outcome.failed_items.get(pod_id, ())
        table.add_row(
            pod_id,
            worker.state,
            f"{len(results)} messages, {delivered} items",
            ", ".join(failed) or "-",
            worker.abort_reason.value if worker.abort_reason else "-",
        )
    console.print(table)
    console.print(
        f"{len(outcome.trace)} messages exchanged; {len(outcome.violations)} protocol violations"
    )
