"""``modeller serve --broker`` and ``worker --broker``: a task through NATS JetStream.

The options are added to the TCP commands of ``_net_cli`` (which dispatch
here when ``--broker`` is given); see ``docs/network.md``, "Through a broker".
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import signal
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from .._algo._algorithms import ListDatasource
from .._base._errors import ConfigError, TransportError
from .._net._tcp import client_ssl_context
from .._runtime._modeller import TaskStatus
from .._runtime._results import ResultsFolder
from .._runtime._worker import Pod, WorkerReport
from .._wire._messages import MODELLER, Message
from ._net_cli import (
    EXIT_INTERRUPTED,
    EXIT_NOT_COMPLETE,
    EXIT_OK,
    EXIT_UNUSABLE,
    _auth,
    _config,
    _describe_report,
    _load_tls,
    _modeller_algorithm,
    _print_outcome,
    _registry,
    _resumed_jobs,
    _say,
    _seconds,
    _Unusable,
    _WorkerWatch,
    load_task,
    outcome_json,
)

if sys.version_info < (3, 11):  # pragma: no cover - trio brings the backport there
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from .._net._auth import SeenJobs
    from .._net._broker import BrokerOptions
    from .._runtime._modeller import ModellerRun


_T = TypeVar("_T")


def _run(main: Callable[[], Awaitable[_T]]) -> _T:
    """``trio.run``, with an error that crossed nurseries raised as itself."""
    from .._net._broker import single_exception

    # asyncio's own notes (e.g. on closing TLS) are not for the user of this command.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    try:
        return trio.run(main)
    except BaseExceptionGroup as group:
        single = single_exception(group)
        if single is None:
            raise
        raise single from None


# ---------------------------------------------------------------- options


def add_broker_arguments(parser: argparse.ArgumentParser, *, modeller: bool) -> None:
    """The ``--broker`` options, added to ``modeller serve`` and ``worker``."""
    group = parser.add_argument_group(
        "through a broker (NATS JetStream) instead of direct TCP; see docs/network.md"
    )
    group.add_argument(
        "--broker",
        action="append",
        default=[],
        metavar="nats://HOST:PORT",
        help="the broker's URL (tls:// for TLS); repeat, or separate with commas, for the "
        "servers of a cluster. Both sides dial out to it; neither listens",
    )
    group.add_argument(
        "--broker-ca", metavar="PEM", help="TLS to the broker, trusting only this CA"
    )
    group.add_argument(
        "--broker-cert", metavar="PEM", help="a client certificate for the broker (mutual TLS)"
    )
    group.add_argument("--broker-key", metavar="PEM", help="its private key")
    group.add_argument(
        "--broker-creds", metavar="FILE", help="the broker's credentials file (NATS .creds)"
    )
    group.add_argument("--broker-nkey", metavar="FILE", help="an NKey seed file for the broker")
    group.add_argument(
        "--broker-user",
        metavar="USER",
        help="user name for the broker; the password is read from $NATS_PASSWORD",
    )
    group.add_argument(
        "--broker-token-file", metavar="FILE", help="read the broker's auth token from FILE"
    )
    group.add_argument(
        "--ack-wait",
        type=_seconds,
        default=30.0,
        metavar="S",
        help="a delivery not acknowledged after S seconds is delivered again (default 30)",
    )
    if modeller:
        group.add_argument(
            "--replicas",
            type=int,
            default=1,
            choices=(1, 3, 5),
            help="copies of the task's stream (3 on a three-node cluster; default 1)",
        )
        group.add_argument(
            "--linger",
            type=_seconds,
            default=30.0,
            metavar="S",
            help="at the end, wait up to S seconds for the pods to end their side "
            "before removing the task's stream (default 30)",
        )
    else:
        group.add_argument(
            "--serve",
            action="store_true",
            help="stay online and run the tasks offered to this pod one after another, "
            "until SIGTERM (default: run one task)",
        )


def broker_options(args: argparse.Namespace, *, modeller: bool) -> BrokerOptions:
    """The command line's broker options, checked.

    Raises:
        _Unusable: Something to fix in the options.
    """
    from .._net._broker import BrokerOptions

    servers = tuple(url.strip() for text in args.broker for url in text.split(",") if url.strip())
    for url in servers:
        scheme, sep, rest = url.partition("://")
        if not sep or scheme not in {"nats", "tls"} or not rest:
            raise _Unusable(
                f"--broker: expected nats://HOST:PORT or tls://HOST:PORT, found {url!r}"
            )
    if (args.broker_cert is None) != (args.broker_key is None):
        raise _Unusable("--broker-cert and --broker-key go together")
    context = None
    if args.broker_ca or args.broker_cert or any(u.startswith("tls://") for u in servers):
        context = _load_tls(
            lambda: client_ssl_context(
                ca=args.broker_ca, cert=args.broker_cert, key=args.broker_key
            )
        )
    password = os.environ.get("NATS_PASSWORD") if args.broker_user else None
    if args.broker_user and password is None:
        raise _Unusable("--broker-user: set the password in $NATS_PASSWORD")
    token = None
    if args.broker_token_file:
        try:
            token = Path(args.broker_token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise _Unusable(
                f"--broker-token-file {args.broker_token_file}: {exc.strerror or exc}"
            ) from None
    for flag, path in (("--broker-creds", args.broker_creds), ("--broker-nkey", args.broker_nkey)):
        if path is not None and not Path(path).is_file():
            raise _Unusable(f"{flag} {path}: no such file")
    extra: dict[str, Any] = {}
    if modeller:
        extra = {"replicas": args.replicas, "linger_s": args.linger}
    else:
        extra = {"connect_for_s": max(args.retry_for, 0.0)}
    return BrokerOptions(
        servers=servers,
        ssl_context=context,
        user=args.broker_user,
        password=password,
        token=token,
        creds_file=args.broker_creds,
        nkeys_seed_file=args.broker_nkey,
        ack_wait_s=args.ack_wait,
        max_line_bytes=args.max_line_bytes,
        **extra,
    )


# --------------------------------------------------------------- modeller


def run_modeller_serve_broker(args: argparse.Namespace) -> int:
    """``fsm-protocol modeller serve --broker URL --task TASK.json``."""
    log = (lambda text: None) if args.quiet else _say("fsm-protocol modeller")
    try:
        if args.listen is not None:
            raise _Unusable("give --listen (direct TCP) or --broker, not both")
        for flag in ("tls_cert", "tls_key", "ca", "port_file"):
            if getattr(args, flag) is not None:
                name = "--" + flag.replace("_", "-")
                raise _Unusable(f"{name} is for direct TCP; with --broker use --broker-ca etc.")
        task = load_task(args.task, pods=args.pods)
        options = broker_options(args, modeller=True)
        # Signing needs cryptography (the net extra): imported only when asked for.
        signer = (
            _auth().JobSigner(_auth().load_private_key(args.signing_key))
            if args.signing_key
            else None
        )
        if signer is not None:
            log(f"signing job requests with key {_auth().fingerprint(signer.public_key)}")
        results_dir = Path(args.results_dir) if args.results_dir else None
        if results_dir is not None:
            try:
                results_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise _Unusable(
                    f"--results-dir {results_dir}: cannot create it: {exc.strerror or exc}"
                ) from None
        protocols = _registry(args.algorithm)
        task_id = task.task_id or f"t-{uuid.uuid4().hex[:12]}"
        # Made (or, with --resume, opened) before connecting: an existing folder is
        # refused without --resume, as over direct TCP.
        folder = (
            ResultsFolder(results_dir, task_id, resume=args.resume)
            if results_dir is not None
            else None
        )
    except (ConfigError, _Unusable) as exc:
        print(f"fsm-protocol modeller serve: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    if folder is not None and folder.kept:
        log(f"task {task_id}: {len(folder.kept)} results kept by earlier runs in {folder.path}")

    async def main() -> dict[str, Any]:
        from .._net._broker import Broker, run_modeller_via_broker

        configs = {pod: _config(protocols, job) for pod, job in task.jobs.items()}
        first = task.pods[0]
        algorithm = _modeller_algorithm(protocols, task.jobs[first], configs[first])
        try:
            async with Broker.connect(options, log=log) as broker:
                log(f"connected to the broker at {', '.join(options.servers)}")
                jobs = dict(task.jobs)
                if folder is not None and folder.kept and not await broker.task_exists(task_id):
                    # The task's stream is gone: the pods start again, as over direct
                    # TCP, from each one's last kept batch. (With the stream there, the
                    # modeller replays its inbox instead and the pods carry on.)
                    jobs = _resumed_jobs(jobs, folder)
                if signer is not None:
                    jobs = {
                        pod: signer.sign(job, task_id=task_id, sender=MODELLER, recipient=pod)
                        for pod, job in jobs.items()
                    }
                started = trio.current_time()
                run = await run_modeller_via_broker(
                    broker,
                    task_id=task_id,
                    jobs=jobs,
                    configs=configs,
                    algorithm=algorithm,
                    timeouts=task.timeouts,
                    require_all_pods=task.require_all_pods,
                    results=folder,
                    rejoin=args.resume,
                    log=log,
                )
                task_s = trio.current_time() - started
                stats = broker.stats()
            return _finish(run, task_s, stats, folder, log)
        finally:
            if folder is not None:
                folder.close()

    try:
        outcome = _run(main)
    except TransportError as exc:
        print(f"fsm-protocol modeller serve: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    except KeyboardInterrupt:
        print("fsm-protocol modeller serve: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.json:
        print(json.dumps(outcome, indent=2, ensure_ascii=False, default=repr))
    else:
        _print_outcome(outcome)
    return EXIT_OK if outcome["status"] == TaskStatus.COMPLETE.value else EXIT_NOT_COMPLETE


def _finish(
    run: ModellerRun,
    task_s: float,
    broker_stats: Any,
    folder: ResultsFolder | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    stats = {
        "messages": len(run.trace),
        "connect_s": 0.0,
        "task_s": round(task_s, 3),
        "messages_per_s": round(len(run.trace) / task_s, 1) if task_s > 0 else None,
        "peak_rss_kib": usage.ru_maxrss,
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "broker": {
            "published": broker_stats.published,
            "resent": broker_stats.resent,
            "duplicates_dropped_by_broker": broker_stats.duplicates,
            "repeats_dropped_here": broker_stats.dropped_repeats,
        },
    }
    outcome = outcome_json(run, stats, [])
    if folder is not None:
        folder.finish(outcome)
        log(f"results written to {folder.path}")
    return outcome


# ----------------------------------------------------------------- worker


def run_worker_broker(args: argparse.Namespace) -> int:
    """``fsm-protocol worker --broker URL --pod-id ID [--serve]``."""
    log = (lambda text: None) if args.quiet else _say(f"fsm-protocol worker {args.pod_id}")
    try:
        if args.connect is not None:
            raise _Unusable("give --connect (direct TCP) or --broker, not both")
        if args.tls or args.ca or args.tls_cert or args.tls_key or args.server_name:
            raise _Unusable("--tls/--ca/--tls-cert/--tls-key are for direct TCP; use --broker-ca")
        options = broker_options(args, modeller=False)
        vet = None
        if args.trust_key:
            auth = _auth()
            keys = [auth.load_public_key(path) for path in args.trust_key]
            seen: SeenJobs | None = auth.FileSeenJobs(args.replay_db) if args.replay_db else None
            vet = auth.require_signed_jobs(
                keys, pod_id=args.pod_id, max_age_s=args.max_age, seen=seen
            )
        else:
            log("warning: no --trust-key; jobs from any modeller that reaches the broker are run")
        pod = Pod(
            args.pod_id,
            datasource=ListDatasource.from_names(args.items),
            registry=_registry(args.algorithm),
            vet=vet,
        )
    except (ConfigError, _Unusable) as exc:
        print(f"fsm-protocol worker: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE

    watch = _WorkerWatch()
    ended: list[WorkerReport] = []

    def on_report(task_id: str, report: WorkerReport) -> None:
        ended.append(report)
        print(f"task {task_id}: {_describe_report(report, watch.reject, None)}", flush=True)
        watch.reject = None

    def on_message(key: str, message: Message) -> None:
        watch.on_message(key, message)

    async def main() -> None:
        from .._net._broker import Broker, serve_offers

        stop = trio.Event()
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:

                async def on_sigterm() -> None:
                    async for _ in signals:
                        if stop.is_set():
                            log(
                                "SIGTERM again: stopping now (the task is offered again on restart)"
                            )
                            nursery.cancel_scope.cancel()
                            return
                        log("SIGTERM: stopping once the current task, if any, has ended")
                        stop.set()

                nursery.start_soon(on_sigterm)
                async with Broker.connect(options, log=log) as broker:
                    log(f"connected to the broker; waiting for job offers to {pod.pod_id}")
                    await serve_offers(
                        broker,
                        pod,
                        serve=args.serve,
                        stop=stop,
                        on_report=on_report,
                        on_message=on_message,
                        log=log,
                    )
                nursery.cancel_scope.cancel()

    try:
        _run(main)
    except TransportError as exc:
        print(f"fsm-protocol worker {args.pod_id}: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    except KeyboardInterrupt:
        print(f"fsm-protocol worker {args.pod_id}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.serve:
        return EXIT_OK
    if not ended:
        return EXIT_NOT_COMPLETE
    return EXIT_OK if ended[-1].state == "complete" else EXIT_NOT_COMPLETE
