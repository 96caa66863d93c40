"""``fsm-protocol demo``: a whole task in one process, shown as it runs."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

import trio

from .._algo._protocols import EchoProtocol, UsageLimit
from .._runtime._modeller import Progress as BatchProgress
from .._runtime._modeller import TaskTimeouts
from .._runtime._task import Hooks, TaskOutcome, run_task
from .._runtime._worker import Pod

if TYPE_CHECKING:
    from rich.console import Console

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def add_demo(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run a demo task: one modeller and several in-process workers",
        description=(
            "Run the conformance Echo algorithm as a real task between one modeller and "
            "several in-process workers, show the slowest worker's batch as it goes, and "
            "print each worker's outcome and every result. Exit 0 when the task completes."
        ),
    )
    parser.add_argument("--workers", type=int, default=3, help="number of workers (default 3)")
    parser.add_argument("--items", type=int, default=40, help="items per worker (default 40)")
    parser.add_argument("--batch-size", type=int, default=4, help="items per batch (default 4)")
    parser.add_argument(
        "--fail",
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
    parser.add_argument("--trace", action="store_true", help="print every message exchanged")
    parser.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    # rich is imported here so that other subcommands start without it.
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    if args.workers < 1 or args.items < 0 or args.batch_size < 1:
        print(
            "fsm-protocol demo: --workers and --batch-size must be at least 1, --items at least 0",
            file=sys.stderr,
        )
        return 2
    console = Console()
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

        def on_message(who: str, message: object) -> None:
            if args.trace:
                progress.console.print(f"[dim]{message}[/dim]")

        outcome = trio.run(
            lambda: run_task(
                protocol,
                pods,
                batched_execution=not args.non_batched,
                timeouts=TaskTimeouts(),
                hooks=Hooks(on_progress=on_progress, on_message=on_message if args.trace else None),
            )
        )
        progress.update(bar, completed=max(batches, 1))
    _print_outcome(console, outcome)
    return 0 if outcome.status.value == "complete" else 1


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
