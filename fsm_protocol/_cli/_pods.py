"""``fsm-protocol worker --pods N``: many pods in one process, on one trio loop.

Each pod has its own connection, its own identity (``<pod-id>-<n>`` for n
from 0 to N-1) and its own data (its own datasource built from ``--items``,
its own job vetting and replay memory). They share only the interpreter, so
a load test on one machine can put 1,000 pods against a modeller without
1,000 Python processes. ``--pods 1`` (the default) is the single-pod command,
whose pod id is ``--pod-id`` itself.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Callable

import attrs
import trio

from .._algo._algorithms import ListDatasource
from .._base._errors import ConfigError, TransportError
from .._net._auth import FileSeenJobs, SeenJobs, load_public_key, require_signed_jobs
from .._net._tcp import connect
from .._runtime._worker import Pod, WorkerReport, run_worker
from ._net_cli import (
    EXIT_INTERRUPTED,
    EXIT_NOT_COMPLETE,
    EXIT_OK,
    EXIT_UNUSABLE,
    _describe_report,
    _limits,
    _registry,
    _say,
    _Unusable,
    _WorkerWatch,
    worker_tls,
)

MAX_PODS = 100_000
"""A bound on ``--pods``: each pod holds a connection (a file descriptor)."""

GC_THRESHOLD = 50_000
"""Allocations between two collections of the young generation in a ``--pods`` process
(Python's default is 700)."""


def pod_ids(base: str, count: int) -> list[str]:
    """The ids of ``count`` pods run under ``--pod-id base``: ``base-0`` .. ``base-<count-1>``."""
    return [f"{base}-{n}" for n in range(count)]


def pods_count(text: str) -> int:
    """``--pods``: a whole number from 1 to :data:`MAX_PODS`."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, found {text!r}") from None
    if not 1 <= value <= MAX_PODS:
        raise argparse.ArgumentTypeError(f"expected 1 to {MAX_PODS}, found {value}")
    return value


@attrs.frozen
class _PodSeen:
    """One pod's replay memory inside a file shared by the pods of this process."""

    shared: SeenJobs
    pod_id: str

    def remember(self, task_id: str, *, signed_at: float, now: float) -> bool:
        return self.shared.remember(f"{self.pod_id} {task_id}", signed_at=signed_at, now=now)

    def forget(self, task_id: str) -> None:
        self.shared.forget(f"{self.pod_id} {task_id}")


@attrs.define
class _Outcome:
    pod_id: str
    report: WorkerReport | None = None
    failure: str | None = None
    error: str | None = None
    watch: _WorkerWatch = attrs.field(factory=_WorkerWatch)


def run_pods(args: argparse.Namespace) -> int:
    """Serve one task with each of ``args.pods`` pods; the exit status covers them all.

    Exit 0 when every pod's task completed, 2 when some pod could not take
    part (bad options, or it never connected), 1 otherwise.
    """
    ids = pod_ids(args.pod_id, args.pods)
    log: Callable[[str], None] = (
        (lambda text: None) if args.quiet else _say(f"fsm-protocol worker {args.pod_id}-*")
    )
    try:
        host, port = args.connect
        protocols = _registry(args.algorithm)
        context = worker_tls(args, log)
        keys = [load_public_key(path) for path in args.trust_key]
        if not keys:
            log("warning: no --trust-key; jobs from any modeller these pods reach are run")
        shared: SeenJobs | None = FileSeenJobs(args.replay_db) if args.replay_db else None
        pods = []
        for pod_id in ids:
            vet = None
            if keys:
                seen = _PodSeen(shared, pod_id) if shared is not None else None
                vet = require_signed_jobs(keys, pod_id=pod_id, max_age_s=args.max_age, seen=seen)
            datasource = ListDatasource.from_names(args.items)
            pods.append(Pod(pod_id, datasource=datasource, registry=protocols, vet=vet))
        limits = _limits(args)
    except (ConfigError, _Unusable) as exc:
        print(f"fsm-protocol worker: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE

    outcomes = [_Outcome(pod.pod_id) for pod in pods]

    async def serve(pod: Pod, outcome: _Outcome) -> None:
        try:
            transport = await connect(
                host,
                port,
                pod_id=pod.pod_id,
                ssl_context=context,
                server_hostname=args.server_name,
                limits=limits,
                job_timeout_s=args.job_timeout,
                retry_for_s=args.retry_for,
            )
        except TransportError as exc:
            outcome.error = str(exc)
            return
        try:
            outcome.report = await run_worker(pod, transport, on_message=outcome.watch.on_message)
        finally:
            await transport.aclose()
        outcome.failure = transport.failure

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for pod, outcome in zip(pods, outcomes, strict=True):
                nursery.start_soon(serve, pod, outcome)
        log(f"{len(pods)} pods done")

    # Many pods keep many objects alive, and each full collection visits them all; this
    # process is ours, so collect the young generation less often and leave what
    # start-up built out of collections altogether.
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
    gc.freeze()
    try:
        trio.run(main)
    except KeyboardInterrupt:
        print(f"fsm-protocol worker {args.pod_id}-*: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    status = EXIT_OK
    for outcome in outcomes:
        if outcome.report is None:
            print(f"pod {outcome.pod_id}: {outcome.error}")
            status = EXIT_UNUSABLE
            continue
        print(_describe_report(outcome.report, outcome.watch.reject, outcome.failure))
        if outcome.report.state != "complete" and status == EXIT_OK:
            status = EXIT_NOT_COMPLETE
    return status
