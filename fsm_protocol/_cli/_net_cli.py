"""``fsm-protocol modeller serve``, ``fsm-protocol worker`` and ``fsm-protocol keys``.

A task across machines: the modeller listens, each worker dials out to it,
and the task runs over TCP, optionally inside TLS (see ``docs/network.md``).

TASK.json, the task a modeller serves, is the body of the conformance kit's
``CONFORMANCE_SCENARIO`` line (wire spec section 6) with a few conveniences::

    {
      "task_id": "t-42",                   (optional; a fresh random id by default)
      "pods": ["alice/pod-a", "bob/pod-b"], (or --pods on the command line)
      "job": {                             (a JOB_REQUEST body; every key but
        "protocol": {"class_name": "conformance.Echo", "items": ["a", "b"], "batch_size": 1},
        "batched_execution": true          protocol has the wire default)
      },
      "job_overrides": {"bob/pod-b": {"items": ["c"]}},   (optional, per pod)
      "response_timeout_s": 300,           (optional, default 300)
      "require_all_pods": false,           (optional, default false)
      "timeouts": {"cancel_timeout_s": 30, "worker_idle_timeout_s": 3600}   (optional)
    }

Exit codes: 0 the task completed; 1 it ended otherwise (rejected, aborted,
cancelled, or, for a worker, closed); 2 it could not start (bad arguments or
files, no connection, a refused hello).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import os
import re
import resource
import sys
import types
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, final

import attrs
import trio

from .._algo._algorithms import ListDatasource
from .._algo._protocols import ProtocolFactory, ProtocolRegistry, registry
from .._base._errors import ConfigError, DecodeError, TransportError
from .._net._auth import (
    FileSeenJobs,
    JobSigner,
    SeenJobs,
    fingerprint,
    generate_key,
    load_private_key,
    load_public_key,
    private_key_pem,
    public_key_text,
    require_signed_jobs,
)
from .._net._tcp import (
    AbsentTransport,
    Limits,
    PodListener,
    client_ssl_context,
    connect,
    server_ssl_context,
)
from .._runtime._modeller import ModellerRun, TaskStatus, TaskTimeouts, run_modeller
from .._runtime._transport import Transport
from .._runtime._worker import Pod, WorkerReport, run_worker
from .._wire._messages import (
    MODELLER,
    JobRejectBody,
    JobRequestBody,
    Message,
    MessageType,
    ScenarioBody,
    body_of,
)

if TYPE_CHECKING:
    import ssl

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

EXIT_OK: Final = 0
EXIT_NOT_COMPLETE: Final = 1
EXIT_UNUSABLE: Final = 2
EXIT_INTERRUPTED: Final = 130

_JOB_DEFAULTS: Final[dict[str, Any]] = {
    "batched_execution": False,
    "run_on_new_data_only": False,
    "force_rerun_failed_files": False,
    "test_run": False,
    "project_id": None,
    "options": {},
}


class _Unusable(Exception):
    """The command cannot start; the message says what to fix."""


def _say(prefix: str) -> Callable[[str], None]:
    def log(text: str) -> None:
        print(f"{prefix}: {text}", file=sys.stderr, flush=True)

    return log


# ----------------------------------------------------------------- shared


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` to a pair.

    Raises:
        ValueError: Not of that form, or the port is not 0-65535.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT (for example 127.0.0.1:8765), found {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _address(text: str) -> tuple[str, int]:
    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, found {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, found {text}")
    return value


def _add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Limits()
    group = parser.add_argument_group("limits on each connection")
    group.add_argument(
        "--max-line-bytes",
        type=int,
        default=defaults.max_line_bytes,
        metavar="N",
        help=f"refuse longer lines and close (default {defaults.max_line_bytes})",
    )
    group.add_argument(
        "--max-messages-per-second",
        type=_positive,
        default=defaults.max_messages_per_second,
        metavar="N",
        help=f"read at most N lines per second, with a burst of as many "
        f"(default {defaults.max_messages_per_second:g}); faster peers are slowed down",
    )
    group.add_argument(
        "--handshake-timeout",
        type=_positive,
        default=defaults.handshake_timeout_s,
        metavar="S",
        help=f"for TLS and the hello (default {defaults.handshake_timeout_s:g})",
    )
    group.add_argument(
        "--send-timeout",
        type=_positive,
        default=defaults.send_timeout_s,
        metavar="S",
        help="a peer that reads nothing for S seconds is treated as gone "
        f"(default {defaults.send_timeout_s:g})",
    )


def _limits(args: argparse.Namespace) -> Limits:
    if args.max_line_bytes < 1024:
        raise _Unusable(f"--max-line-bytes must be at least 1024, found {args.max_line_bytes}")
    return Limits(
        max_line_bytes=args.max_line_bytes,
        max_messages_per_second=args.max_messages_per_second,
        burst=max(1, int(args.max_messages_per_second)),
        handshake_timeout_s=args.handshake_timeout,
        send_timeout_s=args.send_timeout,
    )


def load_protocol_factory(spec: str) -> ProtocolFactory:
    """Resolve ``module:attribute`` to a :class:`ProtocolFactory`.

    The attribute is a factory, or a callable that takes no arguments and
    returns one. The module must be importable (on ``sys.path`` or ``PYTHONPATH``).

    Raises:
        ConfigError: The spec is malformed, the import fails, or the object is
            not a factory.
    """
    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        raise ConfigError(
            f"--algorithm: expected module:attribute (for example mypkg.algos:FACTORY), "
            f"found {spec!r}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"--algorithm: cannot import {module_name!r} ({exc}); is it on PYTHONPATH?"
        ) from None
    if not hasattr(module, name):
        close = difflib.get_close_matches(name, [n for n in dir(module) if not n.startswith("_")])
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"--algorithm: module {module_name!r} has no {name!r}{hint}")
    found = getattr(module, name)
    if not isinstance(found, ProtocolFactory) and callable(found):
        found = found()
    if not isinstance(found, ProtocolFactory):
        raise ConfigError(
            f"--algorithm: {spec} is a {type(found).__name__}; expected a ProtocolFactory "
            "or a function returning one"
        )
    return found


def _registry(specs: Sequence[str]) -> ProtocolRegistry:
    protocols = registry
    for spec in specs:
        protocols = protocols.with_protocol(load_protocol_factory(spec))
    return protocols


# ------------------------------------------------------------- TASK.json


@attrs.frozen
class TaskFile:
    """A task to serve, read from TASK.json (see the module docstring)."""

    pods: tuple[str, ...]
    jobs: dict[str, JobRequestBody]
    require_all_pods: bool
    timeouts: TaskTimeouts
    task_id: str | None = None


def load_task(path: str | Path, *, pods: Sequence[str] = ()) -> TaskFile:
    """Read and check TASK.json; ``pods`` replaces its pod list when given.

    Raises:
        ConfigError: Every problem found, each with its JSON path.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such task file (check the path)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, found {type(data).__name__}")
    task_id = data.pop("task_id", None)
    if task_id is not None and (type(task_id) is not str or not task_id):
        raise ConfigError(
            f"{path}: field $.task_id: expected a non-empty string, found {task_id!r}"
        )
    timeouts = _timeouts(path, data.pop("timeouts", {}), data.get("response_timeout_s", 300.0))
    if pods:
        data["pods"] = list(pods)
    if not data.get("pods"):
        raise ConfigError(f"{path}: no pods: list them in $.pods or with --pods")
    data.setdefault("response_timeout_s", 300.0)
    data.setdefault("require_all_pods", False)
    job = data.get("job")
    if isinstance(job, dict):
        data["job"] = {**_JOB_DEFAULTS, "pod_identifiers": data.get("pods", []), **job}
    try:
        scenario: ScenarioBody = body_of(
            Message.make(
                MessageType.CONFORMANCE_SCENARIO,
                task_id="-",
                sender="-",
                recipient="-",
                seq=0,
                body=data,
            )
        )
    except DecodeError as exc:
        raise ConfigError(f"{path}: {str(exc).replace('$.body', '$')}") from None
    if len(set(scenario.pods)) != len(scenario.pods):
        raise ConfigError(f"{path}: pod ids must be unique, found {list(scenario.pods)}")
    strangers = sorted(set(scenario.job_overrides) - set(scenario.pods))
    if strangers:
        raise ConfigError(
            f"{path}: field $.job_overrides names {', '.join(strangers)}, not among the pods"
        )
    jobs = {
        pod: attrs.evolve(
            scenario.job,
            protocol={**scenario.job.protocol, **scenario.job_overrides.get(pod, {})},
        )
        for pod in scenario.pods
    }
    return TaskFile(
        pods=scenario.pods,
        jobs=jobs,
        require_all_pods=scenario.require_all_pods,
        timeouts=attrs.evolve(timeouts, response_timeout_s=scenario.response_timeout_s),
        task_id=task_id,
    )


def _timeouts(path: str | Path, data: Any, response_timeout_s: Any) -> TaskTimeouts:
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: field $.timeouts: expected an object, found {data!r}")
    allowed = {"cancel_timeout_s", "worker_idle_timeout_s"}
    extra = sorted(set(data) - allowed)
    if extra:
        raise ConfigError(
            f"{path}: field $.timeouts.{extra[0]}: unexpected (expected only "
            f"{', '.join(sorted(allowed))}; worker timeouts go in $.job.options)"
        )
    values: dict[str, float | None] = {}
    for key, value in data.items():
        if value is None and key == "worker_idle_timeout_s":
            values[key] = None
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(
                f"{path}: field $.timeouts.{key}: expected a number > 0, found {value!r}"
            )
        else:
            values[key] = float(value)
    return TaskTimeouts(**values)  # type: ignore[arg-type]


# ------------------------------------------------------- results folder


@final
class ResultsFolder:
    """Writes a task's results as they arrive, and its outcome at the end.

    ``<dir>/<task id>/results.ndjson`` gets one line per accepted
    ``EVALUATION_RESULTS``, flushed at once, so results outlive a crash;
    ``outcome.json`` and ``trace.ndjson`` are written when the task ends.
    """

    def __init__(self, root: Path, task_id: str) -> None:
        # A task id is any string; its folder name must stay inside root.
        name = re.sub(r"[^A-Za-z0-9._-]", "_", task_id).lstrip(".") or "task"
        self.path = root / name
        self.path.mkdir(parents=True, exist_ok=True)
        self._results: IO[str] = (self.path / "results.ndjson").open("w", encoding="utf-8")

    def on_message(self, pod_id: str, message: Message) -> None:
        if message.type is MessageType.EVALUATION_RESULTS and message.sender == pod_id:
            line = {
                "worker": pod_id,
                "seq": message.seq,
                "batch_number": message.meta.batch_number,
                "algorithm_index": message.meta.algorithm_index,
                "body": message.body,
            }
            self._results.write(json.dumps(line, ensure_ascii=False) + "\n")
            self._results.flush()

    def finish(self, outcome: dict[str, Any], trace: Sequence[Message]) -> None:
        self._results.close()
        from .._wire._messages import encode

        with (self.path / "trace.ndjson").open("wb") as out:
            for message in trace:
                out.write(encode(message))
        text = json.dumps(outcome, indent=2, ensure_ascii=False, default=repr)
        (self.path / "outcome.json").write_text(text + "\n", encoding="utf-8")


def outcome_json(
    run: ModellerRun, stats: dict[str, Any], never_connected: Sequence[str]
) -> dict[str, Any]:
    """The outcome as JSON, for ``outcome.json`` and ``--json``."""
    workers: dict[str, Any] = {}
    for pod, worker in run.workers.items():
        reject = worker.reject
        rejected = None
        if reject is not None:
            rejected = {"reason": reject.reason.value, "details": list(reject.details)}
        workers[pod] = {
            "state": worker.state,
            "accepted": worker.accepted,
            "late": worker.late,
            "reject": rejected,
            "abort_reason": None if worker.abort_reason is None else worker.abort_reason.value,
            "abort_message": worker.abort_message,
            "problem": worker.problem,
            "cancel_sent": worker.cancel_sent,
            "cancel_confirmed": worker.cancel_confirmed,
            "last_batch": worker.last_batch,
            "results": sum(1 for key in run.results if key.worker == pod),
            "connected": pod not in never_connected,
        }
    return {
        "task_id": run.task_id,
        "status": run.status.value,
        "workers": workers,
        "never_connected": list(never_connected),
        "pods_missing": list(run.pods_missing),
        "results": [
            {"worker": key.worker, "batch": key.batch, "retry": key.retry, "body": body}
            for key, body in run.results.items()
        ],
        "violations": [attrs.asdict(v) for v in run.violations],
        "final_result": run.final_result,
        "stats": stats,
    }


# ------------------------------------------------------ modeller serve


@attrs.frozen(kw_only=True)
class ServeOptions:
    """How ``modeller serve`` listens and runs; the command line fills it."""

    host: str
    port: int
    ssl_context: ssl.SSLContext | None = None
    signer: JobSigner | None = None
    results_dir: Path | None = None
    port_file: Path | None = None
    connect_timeout_s: float = 300.0
    limits: Limits = attrs.field(factory=Limits)
    protocols: ProtocolRegistry = registry
    log: Callable[[str], None] = lambda text: None


async def serve_task(task: TaskFile, options: ServeOptions) -> tuple[ModellerRun, dict[str, Any]]:
    """Listen, wait for the task's pods, run the task, and write the results folder.

    Returns:
        The modeller's run and its outcome as JSON (also in ``outcome.json``).
    """
    log = options.log
    try:
        listener = await PodListener.open(
            options.host,
            options.port,
            pods=task.pods,
            ssl_context=options.ssl_context,
            limits=options.limits,
            log=log,
        )
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {options.host}:{options.port}: {exc.strerror or exc}"
        ) from None
    scheme = "TLS" if options.ssl_context is not None else "plain TCP"
    log(
        f"listening on {options.host}:{listener.port} ({scheme}) for "
        f"{len(task.pods)} pod{'s' if len(task.pods) != 1 else ''}"
    )
    if options.port_file is not None:
        partial = options.port_file.with_name(options.port_file.name + ".partial")
        partial.write_text(f"{listener.port}\n")
        partial.replace(options.port_file)
    started = trio.current_time()
    try:
        admitted = await listener.wait_for_pods(options.connect_timeout_s)
    except BaseException:
        await listener.aclose()
        raise
    connected = trio.current_time()
    never = [pod for pod in task.pods if pod not in admitted]
    if never:
        log(f"{', '.join(never)} did not connect within {options.connect_timeout_s:g} s")
    links: dict[str, Transport] = {
        pod: admitted.get(pod) or AbsentTransport(pod, options.connect_timeout_s)
        for pod in task.pods
    }

    task_id = task.task_id or f"t-{uuid.uuid4().hex[:12]}"
    jobs = dict(task.jobs)
    if options.signer is not None:
        jobs = {
            pod: options.signer.sign(job, task_id=task_id, sender=MODELLER, recipient=pod)
            for pod, job in jobs.items()
        }
    configs = {pod: _config(options.protocols, job) for pod, job in task.jobs.items()}
    first = task.pods[0]
    algorithm = _modeller_algorithm(options.protocols, task.jobs[first], configs[first])
    folder = ResultsFolder(options.results_dir, task_id) if options.results_dir else None
    log(
        f"task {task_id}: {len(admitted)} of {len(task.pods)} pods connected after "
        f"{connected - started:.2f} s; sending the job requests"
    )
    run = await run_modeller(
        task_id=task_id,
        jobs=jobs,
        configs=configs,
        links=links,
        algorithm=algorithm,
        timeouts=task.timeouts,
        require_all_pods=task.require_all_pods,
        on_message=folder.on_message if folder is not None else None,
    )
    ended = trio.current_time()
    task_s = ended - connected
    usage = resource.getrusage(resource.RUSAGE_SELF)
    stats = {
        "messages": len(run.trace),
        "connect_s": round(connected - started, 3),
        "task_s": round(task_s, 3),
        "messages_per_s": round(len(run.trace) / task_s, 1) if task_s > 0 else None,
        "peak_rss_kib": usage.ru_maxrss,
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
    }
    outcome = outcome_json(run, stats, never)
    if folder is not None:
        folder.finish(outcome, run.trace)
        log(f"results written to {folder.path}")
    return run, outcome


def _config(protocols: ProtocolRegistry, job: JobRequestBody) -> object:
    try:
        return protocols.load(job.protocol)
    except ConfigError:
        # Unknown here, or deliberately bad: the pod judges it (JOB_REJECT); the modeller
        # only needs to know whether to send ALGORITHM_EXCHANGE.
        return types.SimpleNamespace(initial_setup=bool(job.protocol.get("initial_setup")))


def _modeller_algorithm(protocols: ProtocolRegistry, job: JobRequestBody, config: object) -> Any:
    factory = protocols.get(str(job.protocol.get("class_name")))
    if factory is None or factory.modeller is None or isinstance(config, types.SimpleNamespace):
        return None
    return factory.modeller(config)


def _print_outcome(outcome: dict[str, Any]) -> None:
    workers = outcome["workers"]
    stats = outcome["stats"]
    print(
        f"task {outcome['task_id']}: {outcome['status']} ({len(workers)} workers, "
        f"{len(outcome['results'])} results, {stats['messages']} messages, "
        f"{stats['task_s']:.2f} s)"
    )
    width = max((len(pod) for pod in workers), default=0)
    for pod, worker in workers.items():
        detail = ""
        if worker["reject"]:
            reason = worker["reject"]
            detail = f"  {reason['reason']}: {'; '.join(reason['details'])}"
        elif worker["abort_reason"]:
            detail = f"  {worker['abort_reason']}: {worker['abort_message']}"
        elif worker["problem"]:
            detail = f"  {worker['problem']}"
        print(f"  {pod:<{width}}  {worker['state']:<11} {worker['results']:>4} results{detail}")


def add_modeller(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "modeller",
        help="the modeller side of a task across machines",
        description="The modeller side of a task across machines. See docs/network.md.",
    )
    commands = parser.add_subparsers(dest="modeller_command", metavar="COMMAND", required=True)
    serve = commands.add_parser(
        "serve",
        help="listen for workers, run one task, print the outcome",
        description=(
            "Listen on HOST:PORT, wait until every pod of the task has connected and said "
            "hello, send each its (signed) job request, run the task, and print each "
            "worker's outcome. Exit 0 when the task completes, 1 when it ends otherwise, "
            "2 when it cannot start. TASK.json is documented in docs/network.md."
        ),
    )
    serve.add_argument(
        "--listen",
        type=_address,
        required=True,
        metavar="HOST:PORT",
        help="where to listen; port 0 picks a free port (see --port-file)",
    )
    serve.add_argument("--task", required=True, metavar="TASK.json", help="the task to run")
    serve.add_argument(
        "--pods",
        nargs="+",
        default=[],
        metavar="ID",
        help="the pods to wait for (default: the task file's pods)",
    )
    tls = serve.add_argument_group("TLS")
    tls.add_argument("--tls-cert", metavar="PEM", help="this modeller's certificate chain")
    tls.add_argument("--tls-key", metavar="PEM", help="its private key")
    tls.add_argument(
        "--ca",
        metavar="PEM",
        help="require client certificates signed by this CA (mutual TLS); each "
        "must name its pod id as common name",
    )
    serve.add_argument(
        "--signing-key",
        metavar="FILE",
        help="sign every job request with this Ed25519 key (keys generate)",
    )
    serve.add_argument(
        "--results-dir",
        metavar="DIR",
        help="write DIR/<task id>/results.ndjson as results arrive, and "
        "outcome.json and trace.ndjson at the end",
    )
    serve.add_argument(
        "--port-file", metavar="FILE", help="write the port listened on to FILE once listening"
    )
    serve.add_argument(
        "--connect-timeout",
        type=_positive,
        default=300.0,
        metavar="S",
        help="start without the pods that have not connected after S seconds (default 300)",
    )
    serve.add_argument(
        "--algorithm",
        action="append",
        default=[],
        metavar="MODULE:FACTORY",
        help="register a protocol factory (for its modeller half)",
    )
    serve.add_argument("--json", action="store_true", help="print the outcome as JSON")
    serve.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    _add_limit_arguments(serve)
    serve.set_defaults(run=run_modeller_serve)


def run_modeller_serve(args: argparse.Namespace) -> int:
    log = (lambda text: None) if args.quiet else _say("fsm-protocol modeller")
    try:
        host, port = args.listen
        task = load_task(args.task, pods=args.pods)
        if (args.tls_cert is None) != (args.tls_key is None):
            raise _Unusable("--tls-cert and --tls-key go together")
        if args.ca is not None and args.tls_cert is None:
            raise _Unusable("--ca (mutual TLS) needs --tls-cert and --tls-key")
        context = None
        if args.tls_cert is not None:
            context = _load_tls(
                lambda: server_ssl_context(args.tls_cert, args.tls_key, client_ca=args.ca)
            )
        else:
            log(
                "warning: plain TCP; anyone on the network path can read and change the task "
                "(use --tls-cert/--tls-key)"
            )
        signer = JobSigner(load_private_key(args.signing_key)) if args.signing_key else None
        if signer is not None:
            log(f"signing job requests with key {fingerprint(signer.public_key)}")
        if args.results_dir:
            try:
                Path(args.results_dir).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise _Unusable(
                    f"--results-dir {args.results_dir}: cannot create it: {exc.strerror or exc}"
                ) from None
        options = ServeOptions(
            host=host,
            port=port,
            ssl_context=context,
            signer=signer,
            results_dir=Path(args.results_dir) if args.results_dir else None,
            port_file=Path(args.port_file) if args.port_file else None,
            connect_timeout_s=args.connect_timeout,
            limits=_limits(args),
            protocols=_registry(args.algorithm),
            log=log,
        )
    except (ConfigError, _Unusable) as exc:
        print(f"fsm-protocol modeller serve: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    try:
        _, outcome = trio.run(serve_task, task, options)
    except ConfigError as exc:
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


def _load_tls(make: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    import ssl

    try:
        return make()
    except FileNotFoundError as exc:
        raise _Unusable(f"{exc.filename}: no such file (check the TLS paths)") from None
    except ssl.SSLError as exc:
        raise _Unusable(f"cannot load the TLS files: {exc.reason or exc}") from None
    except OSError as exc:
        raise _Unusable(f"cannot load the TLS files: {exc.strerror or exc}") from None


# ----------------------------------------------------------------- worker


def add_worker(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "worker",
        help="dial a modeller and serve one task as a pod",
        description=(
            "Connect to the modeller at HOST:PORT, say hello as pod ID, serve one task with "
            "the built-in conformance.Echo algorithm (or those registered with --algorithm), "
            "and print how it ended. Exit 0 when the task completes, 1 when it ends "
            "otherwise, 2 when this worker cannot take part."
        ),
    )
    parser.add_argument(
        "--connect",
        type=_address,
        required=True,
        metavar="HOST:PORT",
        help="the modeller's address",
    )
    parser.add_argument(
        "--pod-id", required=True, metavar="ID", help="this pod's id, e.g. alice/pod-a"
    )
    parser.add_argument(
        "--items",
        nargs="+",
        default=[],
        metavar="NAME",
        help="this pod's data items, for algorithms that read the pod's "
        "datasource (Echo takes its items from the job)",
    )
    parser.add_argument(
        "--algorithm",
        action="append",
        default=[],
        metavar="MODULE:FACTORY",
        help="also run this protocol: a ProtocolFactory, or a function "
        "returning one, importable from PYTHONPATH (repeatable)",
    )
    auth = parser.add_argument_group("authorisation")
    auth.add_argument(
        "--trust-key",
        action="append",
        default=[],
        metavar="PUB",
        help="accept only jobs signed by this modeller key (repeatable)",
    )
    auth.add_argument(
        "--max-age",
        type=_positive,
        default=300.0,
        metavar="S",
        help="refuse job requests signed more than S seconds ago (default 300)",
    )
    auth.add_argument(
        "--replay-db",
        metavar="FILE",
        help="remember accepted task ids in this SQLite file, so a replay is "
        "refused across restarts (default: this process only)",
    )
    tls = parser.add_argument_group("TLS")
    tls.add_argument("--tls", action="store_true", help="use TLS, trusting the system's CAs")
    tls.add_argument("--ca", metavar="PEM", help="use TLS, trusting only this CA")
    tls.add_argument("--tls-cert", metavar="PEM", help="this pod's certificate, for mutual TLS")
    tls.add_argument("--tls-key", metavar="PEM", help="its private key")
    tls.add_argument(
        "--server-name",
        metavar="NAME",
        help="the name the modeller's certificate must carry (default: HOST)",
    )
    parser.add_argument(
        "--retry-for",
        type=float,
        default=30.0,
        metavar="S",
        help="keep trying to connect for S seconds (default 30)",
    )
    parser.add_argument(
        "--job-timeout",
        type=_positive,
        default=600.0,
        metavar="S",
        help="give up when no job request came S seconds after the welcome (default 600)",
    )
    parser.add_argument(
        "--pods",
        type=_pods_count,
        default=1,
        metavar="N",
        help="run N pods in this process, each with its own connection, as pods "
        "ID-0 .. ID-<N-1> (default 1: one pod, as ID)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    _add_limit_arguments(parser)
    parser.set_defaults(run=run_worker_command)


def _pods_count(text: str) -> int:
    from ._pods import pods_count

    return pods_count(text)


@attrs.define
class _WorkerWatch:
    """What the worker sent that its report does not hold: a JOB_REJECT's reason."""

    reject: JobRejectBody | None = None

    def on_message(self, key: str, message: Message) -> None:
        if message.type is MessageType.JOB_REJECT and message.sender == key:
            self.reject = body_of(message)


def run_worker_command(args: argparse.Namespace) -> int:
    if args.pods != 1:
        from ._pods import run_pods

        return run_pods(args)
    log = (lambda text: None) if args.quiet else _say(f"fsm-protocol worker {args.pod_id}")
    try:
        host, port = args.connect
        protocols = _registry(args.algorithm)
        if (args.tls_cert is None) != (args.tls_key is None):
            raise _Unusable("--tls-cert and --tls-key go together")
        context = None
        if args.tls or args.ca or args.tls_cert:
            context = _load_tls(
                lambda: client_ssl_context(ca=args.ca, cert=args.tls_cert, key=args.tls_key)
            )
        else:
            log(
                "warning: plain TCP; use --ca (or --tls) so that only the real modeller "
                "is talked to, and nobody can read the task"
            )
        vet = None
        if args.trust_key:
            keys = [load_public_key(path) for path in args.trust_key]
            seen: SeenJobs | None = FileSeenJobs(args.replay_db) if args.replay_db else None
            vet = require_signed_jobs(keys, pod_id=args.pod_id, max_age_s=args.max_age, seen=seen)
        else:
            log("warning: no --trust-key; jobs from any modeller this worker reaches are run")
        pod = Pod(
            args.pod_id,
            datasource=ListDatasource.from_names(args.items),
            registry=protocols,
            vet=vet,
        )
        limits = _limits(args)
    except (ConfigError, _Unusable) as exc:
        print(f"fsm-protocol worker: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE

    watch = _WorkerWatch()

    async def main() -> tuple[WorkerReport, str | None]:
        transport = await connect(
            host,
            port,
            pod_id=args.pod_id,
            ssl_context=context,
            server_hostname=args.server_name,
            limits=limits,
            job_timeout_s=args.job_timeout,
            retry_for_s=args.retry_for,
        )
        log(f"connected to {host}:{port}; waiting for a job request")
        try:
            report = await run_worker(pod, transport, on_message=watch.on_message)
        finally:
            await transport.aclose()
        return report, transport.failure

    try:
        report, failure = trio.run(main)
    except TransportError as exc:
        print(f"fsm-protocol worker {args.pod_id}: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    except KeyboardInterrupt:
        print(f"fsm-protocol worker {args.pod_id}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(_describe_report(report, watch.reject, failure))
    return EXIT_OK if report.state == "complete" else EXIT_NOT_COMPLETE


def _describe_report(
    report: WorkerReport, reject: JobRejectBody | None, failure: str | None
) -> str:
    text = f"pod {report.pod_id}: {report.state}"
    if report.state == "rejected" and reject is not None:
        return f"{text} ({reject.reason.value}: {'; '.join(reject.details)})"
    if report.state == "closed":
        return f"{text} ({failure or 'the modeller ended the connection before a job request'})"
    counts = (
        f"{len(report.delivered)} delivered, {len(report.failed)} failed, "
        f"{len(report.cut)} cut, {len(report.not_run)} not run"
    )
    if report.abort_reason is not None:
        return f"{text} ({report.abort_reason.value}: {report.abort_message}; {counts})"
    return f"{text} ({counts})"


# ------------------------------------------------------------------- keys


def add_keys(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "keys",
        help="create modeller signing keys",
        description="Create and inspect the Ed25519 keys that sign job requests.",
    )
    commands = parser.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)
    generate = commands.add_parser(
        "generate",
        help="create a signing key and its public key",
        description=(
            "Write NAME.key (the private key, PEM, readable by its owner only) and NAME.pub "
            "(one line, ed25519:<base64>) into DIR. Give the .key to the modeller "
            "(--signing-key) and the .pub to every pod that trusts it (--trust-key)."
        ),
    )
    generate.add_argument("-o", "--output", default=".", metavar="DIR", help="where (default .)")
    generate.add_argument("--name", default="modeller", help="file name stem (default modeller)")
    generate.add_argument("--force", action="store_true", help="overwrite existing files")
    generate.set_defaults(run=run_keys_generate)


def run_keys_generate(args: argparse.Namespace) -> int:
    folder = Path(args.output)
    private_path = folder / f"{args.name}.key"
    public_path = folder / f"{args.name}.pub"
    if not args.force:
        existing = [str(p) for p in (private_path, public_path) if p.exists()]
        if existing:
            print(
                f"fsm-protocol keys generate: {', '.join(existing)} exists; "
                "use --force to overwrite",
                file=sys.stderr,
            )
            return EXIT_UNUSABLE
    key = generate_key()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if args.force:
            private_path.unlink(missing_ok=True)
        descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as out:
            out.write(private_key_pem(key))
        public_path.write_text(public_key_text(key.public_key()) + "\n", encoding="ascii")
    except OSError as exc:
        print(
            f"fsm-protocol keys generate: cannot write to {folder}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return EXIT_UNUSABLE
    print(f"wrote {private_path} (private: give it to the modeller, --signing-key)")
    print(f"wrote {public_path} (public: give it to the pods, --trust-key)")
    print(f"key fingerprint {fingerprint(key.public_key())}")
    return EXIT_OK
