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
import resource
import signal
import sys
import types
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from .._algo._algorithms import ListDatasource, optional_hook
from .._algo._protocols import ProtocolFactory, ProtocolRegistry, registry
from .._base._errors import ConfigError, DecodeError, TransportError
from .._net._tcp import (
    AbsentTransport,
    Limits,
    PodListener,
    client_ssl_context,
    connect,
    server_ssl_context,
)
from .._runtime._modeller import ModellerRun, TaskStatus, TaskTimeouts, run_modeller
from .._runtime._results import ResultsFolder, to_json_bytes
from .._runtime._transport import Transport
from .._runtime._worker import Pod, WorkerReport, run_worker
from .._wire._catalogue import RESUME_OPTION
from .._wire._messages import (
    MAX_WAIT_S,
    MODELLER,
    JobRejectBody,
    JobRequestBody,
    Message,
    MessageType,
    ScenarioBody,
    body_of,
    value_problem,
)

if TYPE_CHECKING:
    import ssl
    from types import ModuleType

    from .._net._auth import JobSigner, SeenJobs

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

EXIT_OK: Final = 0
EXIT_NOT_COMPLETE: Final = 1
EXIT_UNUSABLE: Final = 2
EXIT_INTERRUPTED: Final = 130


def _auth() -> ModuleType:
    """The signing module, imported when a command signs or checks signatures.

    It needs ``cryptography``, which only the ``net`` extra installs.

    Raises:
        ConfigError: ``cryptography`` is not installed.
    """
    try:
        return importlib.import_module("fsm_protocol._net._auth")
    except ImportError as exc:
        raise ConfigError(
            f"signed jobs and keys need the cryptography package ({exc}): "
            "pip install 'fsm-protocol[net]'"
        ) from None


_JOB_DEFAULTS: Final[dict[str, Any]] = {
    "batched_execution": False,
    "run_on_new_data_only": False,
    "force_rerun_failed_files": False,
    "test_run": False,
    "project_id": None,
    "options": {},
}


# The optional fields of TASK.json and of the control line (wire spec section 6), one place.
TASK_DEFAULTS: Final[dict[str, Any]] = {
    "response_timeout_s": TaskTimeouts().response_timeout_s,
    "require_all_pods": False,
    "job_overrides": {},
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


def _number(text: str, *, low: float, high: float, zero_ok: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, found {text!r}") from None
    above = "at least 0" if zero_ok else "above 0"
    if not ((value >= low) if zero_ok else (value > low)) or not value <= high:
        raise argparse.ArgumentTypeError(
            f"expected a number {above} and at most {high:g}, found {text}"
        )
    return value


def _seconds(text: str) -> float:
    """A timeout: above 0, at most a week (NaN and infinity are refused)."""
    return _number(text, low=0.0, high=MAX_WAIT_S)


def _seconds_or_zero(text: str) -> float:
    return _number(text, low=0.0, high=MAX_WAIT_S, zero_ok=True)


def _rate(text: str) -> float:
    return _number(text, low=0.0, high=1e6)


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
        type=_rate,
        default=defaults.max_messages_per_second,
        metavar="N",
        help=f"read at most N lines per second, with a burst of as many "
        f"(default {defaults.max_messages_per_second:g}, at most 1e6); faster peers are "
        "slowed down",
    )
    group.add_argument(
        "--max-algorithm-index",
        type=int,
        default=defaults.max_algorithm_index,
        metavar="N",
        help="refuse results whose meta.algorithm_index is above N "
        f"(default {defaults.max_algorithm_index})",
    )
    group.add_argument(
        "--handshake-timeout",
        type=_seconds,
        default=defaults.handshake_timeout_s,
        metavar="S",
        help=f"for TLS and the hello (default {defaults.handshake_timeout_s:g})",
    )
    group.add_argument(
        "--send-timeout",
        type=_seconds,
        default=defaults.send_timeout_s,
        metavar="S",
        help="a peer that reads nothing for S seconds is treated as gone "
        f"(default {defaults.send_timeout_s:g})",
    )


def _limits(args: argparse.Namespace) -> Limits:
    if not 1024 <= args.max_line_bytes <= 1 << 30:
        raise _Unusable(
            f"--max-line-bytes must be from 1024 to {1 << 30} (1 GiB), found {args.max_line_bytes}"
        )
    if not 0 <= args.max_algorithm_index <= 65535:
        raise _Unusable(
            f"--max-algorithm-index must be from 0 to 65535, found {args.max_algorithm_index}"
        )
    return Limits(
        max_line_bytes=args.max_line_bytes,
        max_messages_per_second=args.max_messages_per_second,
        burst=max(1, int(args.max_messages_per_second)),
        handshake_timeout_s=args.handshake_timeout,
        send_timeout_s=args.send_timeout,
        max_algorithm_index=args.max_algorithm_index,
    )


def load_protocol_factory(spec: str) -> ProtocolFactory[Any]:
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
        data = json.loads(Path(path).read_text(encoding="utf-8"), parse_constant=_no_constant)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such task file (check the path)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return task_from_json(data, str(path), pods=pods)


def task_from_json(data: dict[str, Any], where: str, *, pods: Sequence[str] = ()) -> TaskFile:
    """Check a task given as JSON (TASK.json, or the body of a control line).

    ``where`` starts every error message. Optional fields take :data:`TASK_DEFAULTS`.

    Raises:
        ConfigError: Every problem found, each with its JSON path.
    """
    path = where
    problem = value_problem(data)
    if problem is not None:
        raise ConfigError(f"{path}: {problem}")
    task_id = data.pop("task_id", None)
    if task_id is not None and (type(task_id) is not str or not task_id):
        raise ConfigError(
            f"{path}: field $.task_id: expected a non-empty string, found {task_id!r}"
        )
    timeouts = _timeouts(path, data.pop("timeouts", {}))
    if pods:
        data["pods"] = list(pods)
    if not data.get("pods"):
        raise ConfigError(f"{path}: no pods: list them in $.pods or with --pods")
    for key, value in TASK_DEFAULTS.items():
        data.setdefault(key, value)
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
    if not scenario.response_timeout_s <= MAX_WAIT_S:
        raise ConfigError(
            f"{path}: field $.response_timeout_s: expected at most {MAX_WAIT_S:g}, "
            f"found {scenario.response_timeout_s!r}"
        )
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


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (write a number)")


def _timeouts(path: str | Path, data: Any) -> TaskTimeouts:
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
        elif (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not 0 < value <= MAX_WAIT_S
        ):
            raise ConfigError(
                f"{path}: field $.timeouts.{key}: expected a number > 0 and at most "
                f"{MAX_WAIT_S:g}, found {value!r}"
            )
        else:
            values[key] = float(value)
    return TaskTimeouts(**values)  # type: ignore[arg-type]


# ------------------------------------------------------- results folder


def outcome_json(
    run: ModellerRun,
    stats: dict[str, Any],
    never_connected: Sequence[str],
    *,
    bodies: bool = True,
    stopped_by: str | None = None,
    results_problem: str | None = None,
) -> dict[str, Any]:
    """The outcome as JSON, for ``outcome.json`` and ``--json``.

    With ``bodies`` False the results are listed without their bodies, which
    are in ``results.ndjson`` (the modeller did not keep them in memory).
    """
    workers: dict[str, Any] = {}
    counts: dict[str, int] = {}
    for key in run.results:
        counts[key.worker] = counts.get(key.worker, 0) + 1
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
            "results": counts.get(pod, 0),
            "connected": pod not in never_connected,
        }
    results = []
    for key, body in run.results.items():
        entry = {"worker": key.worker, "batch": key.batch, "retry": key.retry}
        if key.algorithm:
            entry["algorithm"] = key.algorithm
        if bodies:
            entry["body"] = body
        results.append(entry)
    return {
        "task_id": run.task_id,
        "status": run.status.value,
        "stopped_by": stopped_by,
        "results_problem": results_problem,
        "workers": workers,
        "never_connected": list(never_connected),
        "pods_missing": list(run.pods_missing),
        "results": results,
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
    resume: bool = False
    stop_on_signals: bool = False


async def serve_task(task: TaskFile, options: ServeOptions) -> tuple[ModellerRun, dict[str, Any]]:
    """Listen, wait for the task's pods, run the task, and write the results folder.

    With ``options.stop_on_signals``, SIGINT or SIGTERM cancels the task (TASK_CANCEL
    to every live pod, then the outcome and trace are written, ``stopped_by`` names
    the signal); a second one stops at once.

    Returns:
        The modeller's run and its outcome as JSON (also in ``outcome.json``).

    Raises:
        ConfigError: It cannot listen, or the results folder is refused (it exists
            from an earlier run and ``resume`` is not set).
    """
    log = options.log
    task_id = task.task_id or f"t-{uuid.uuid4().hex[:12]}"
    folder = None
    if options.results_dir is not None:
        folder = ResultsFolder(options.results_dir, task_id, resume=options.resume)
        if folder.kept:
            log(f"task {task_id}: {len(folder.kept)} results kept by earlier runs in {folder.path}")
    stop = trio.Event()
    stopped_by: list[str] = []
    try:
        async with trio.open_nursery() as watchers:
            hard_stop = trio.CancelScope()
            if options.stop_on_signals:
                watchers.start_soon(_watch_signals, stop, stopped_by, hard_stop, log)
            with hard_stop:
                run, outcome = await _serve(task, task_id, options, folder, stop, stopped_by)
            watchers.cancel_scope.cancel()
        if hard_stop.cancelled_caught:
            run = _empty_run(task_id)
            outcome = outcome_json(run, {}, [], stopped_by=", ".join(stopped_by))
            outcome["status"] = TaskStatus.CANCELLED.value
            if folder is not None:
                _finish_folder(folder, outcome, log)
        return run, outcome
    finally:
        if folder is not None:
            folder.close()


async def _serve(
    task: TaskFile,
    task_id: str,
    options: ServeOptions,
    folder: ResultsFolder | None,
    stop: trio.Event,
    stopped_by: list[str],
) -> tuple[ModellerRun, dict[str, Any]]:
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
    admitted: dict[str, Any] = {}
    try:
        async with trio.open_nursery() as waiting:

            async def stop_waiting() -> None:
                await stop.wait()
                waiting.cancel_scope.cancel()

            waiting.start_soon(stop_waiting)
            admitted = await listener.wait_for_pods(options.connect_timeout_s)
            waiting.cancel_scope.cancel()
    except BaseException:
        await listener.aclose()
        raise
    if stop.is_set():
        # Stopped before the task began: no pod has a job yet, so nothing to cancel.
        await listener.aclose()
        run = _empty_run(task_id)
        outcome = outcome_json(run, {}, [], stopped_by=", ".join(stopped_by) or None)
        outcome["status"] = TaskStatus.CANCELLED.value
        if folder is not None:
            _finish_folder(folder, outcome, log)
        return run, outcome
    connected = trio.current_time()
    never = [pod for pod in task.pods if pod not in admitted]
    if never:
        log(f"{', '.join(never)} did not connect within {options.connect_timeout_s:g} s")
    links: dict[str, Transport] = {
        pod: admitted.get(pod) or AbsentTransport(pod, options.connect_timeout_s)
        for pod in task.pods
    }

    jobs = dict(task.jobs)
    if folder is not None and folder.kept:
        jobs = _resumed_jobs(jobs, folder)
    if options.signer is not None:
        jobs = {
            pod: options.signer.sign(job, task_id=task_id, sender=MODELLER, recipient=pod)
            for pod, job in jobs.items()
        }
    configs = {pod: _config(options.protocols, job) for pod, job in task.jobs.items()}
    first = task.pods[0]
    algorithm = _modeller_algorithm(options.protocols, task.jobs[first], configs[first])
    # Bodies stay in memory only when nothing else keeps them, or the algorithm's
    # final step needs them all; otherwise memory does not grow with the task.
    keep = folder is None or optional_hook(algorithm, "final_step") is not None
    messages = 0

    def on_message(pod_id: str, message: Message) -> None:
        nonlocal messages
        messages += 1
        if folder is not None:
            folder.on_message(pod_id, message)
            if folder.failure is not None and not stop.is_set():
                log(f"{folder.failure}; cancelling the task, as its results cannot be kept")
                stop.set()

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
        cancel=stop,
        on_message=on_message,
        keep=keep,
    )
    ended = trio.current_time()
    task_s = ended - connected
    usage = resource.getrusage(resource.RUSAGE_SELF)
    stats = {
        "messages": messages,
        "connect_s": round(connected - started, 3),
        "task_s": round(task_s, 3),
        "messages_per_s": round(messages / task_s, 1) if task_s > 0 else None,
        "peak_rss_kib": usage.ru_maxrss,
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
    }
    outcome = outcome_json(
        run,
        stats,
        never,
        bodies=keep,
        stopped_by=", ".join(stopped_by) or None,
        results_problem=None if folder is None else folder.failure,
    )
    if folder is not None and folder.not_kept:
        # Accepted on the wire, but the folder could not hold them: say so, never claim them.
        missing = set(folder.not_kept)
        outcome["results"] = [
            entry
            for entry in outcome["results"]
            if (entry["worker"], entry["batch"], entry.get("algorithm", 0)) not in missing
        ]
        outcome["results_not_kept"] = [
            {"worker": worker, "batch": batch, "algorithm": algorithm}
            for worker, batch, algorithm in folder.not_kept
        ]
    if folder is not None:
        _finish_folder(folder, outcome, log)
    return run, outcome


def _resumed_jobs(
    jobs: dict[str, JobRequestBody], folder: ResultsFolder
) -> dict[str, JobRequestBody]:
    """Each pod's job, told to start at its last kept batch (run again, but not kept twice).

    The last kept batch rather than the next one, since only the pod knows how many
    batches it has: a pod whose every batch was kept then still has one to run.
    """
    resumed = {}
    for pod, job in jobs.items():
        kept = {r.batch_number for r in folder.kept if r.worker == pod}
        first = 0
        while first + 1 in kept:
            first += 1
        if job.batched_execution and 0 in kept:
            job = attrs.evolve(job, options={**job.options, RESUME_OPTION: first})
        resumed[pod] = job
    return resumed


def _finish_folder(
    folder: ResultsFolder, outcome: dict[str, Any], log: Callable[[str], None]
) -> None:
    try:
        folder.finish(outcome)
    except OSError as exc:
        problem = f"cannot write to {folder.path}: {exc.strerror or exc}"
        outcome["results_problem"] = outcome.get("results_problem") or problem
        log(f"{problem}; the outcome is not in the results folder")
    else:
        log(f"results written to {folder.path}")


def _empty_run(task_id: str) -> ModellerRun:
    return ModellerRun(
        task_id=task_id,
        status=TaskStatus.CANCELLED,
        workers={},
        results={},
        trace=(),
        violations=(),
        final_result=None,
        pods_missing=(),
    )


async def _watch_signals(
    stop: trio.Event, stopped_by: list[str], hard_stop: trio.CancelScope, log: Callable[[str], None]
) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for number in signals:
            name = signal.Signals(number).name
            stopped_by.append(name)
            if not stop.is_set():
                log(f"{name}: cancelling the task; {name} again stops at once")
                stop.set()
            else:
                log(f"{name} again: stopping at once")
                hard_stop.cancel()


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
        f"{len(outcome['results'])} results, {stats.get('messages', 0)} messages, "
        f"{stats.get('task_s', 0.0):.2f} s)"
    )
    if outcome.get("stopped_by"):
        print(f"  stopped by {outcome['stopped_by']}")
    if outcome.get("results_problem"):
        print(f"  results folder: {outcome['results_problem']}")
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
    commands = parser.add_subparsers(dest="modeller_command", metavar="COMMAND")
    from ._stdio_cli import add_stdio_to_modeller

    add_stdio_to_modeller(parser)
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
        metavar="HOST:PORT",
        help="where to listen; port 0 picks a free port (see --port-file); or --broker",
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
        "--resume",
        action="store_true",
        help="carry on with the task in its existing results folder: results kept there "
        "are not asked for again (see docs/network.md); without it an existing folder "
        "is refused, never overwritten",
    )
    serve.add_argument(
        "--port-file", metavar="FILE", help="write the port listened on to FILE once listening"
    )
    serve.add_argument(
        "--connect-timeout",
        type=_seconds,
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
    from ._broker_cli import add_broker_arguments

    add_broker_arguments(serve, modeller=True)
    serve.set_defaults(run=run_modeller_serve)


def run_modeller_serve(args: argparse.Namespace) -> int:
    if args.broker:
        from ._broker_cli import run_modeller_serve_broker

        return run_modeller_serve_broker(args)
    log = (lambda text: None) if args.quiet else _say("fsm-protocol modeller")
    try:
        if args.listen is None:
            raise _Unusable("give --listen HOST:PORT (direct TCP) or --broker nats://HOST:PORT")
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
        signer = (
            _auth().JobSigner(_auth().load_private_key(args.signing_key))
            if args.signing_key
            else None
        )
        if signer is not None:
            log(f"signing job requests with key {_auth().fingerprint(signer.public_key)}")
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
            resume=args.resume,
            stop_on_signals=True,
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
        print(to_json_bytes(outcome, indent=2).decode("utf-8"))
    else:
        _print_outcome(outcome)
    if outcome.get("stopped_by"):
        return EXIT_INTERRUPTED
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
        metavar="HOST:PORT",
        help="the modeller's address (direct TCP); or --broker",
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
        type=_seconds,
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
        type=_seconds_or_zero,
        default=30.0,
        metavar="S",
        help="keep trying to connect and finish the hello for S seconds, backing off "
        "from 0.1 s to 2 s (default 30, at most a week)",
    )
    parser.add_argument(
        "--job-timeout",
        type=_seconds,
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
    from ._broker_cli import add_broker_arguments

    add_broker_arguments(parser, modeller=False)
    from ._stdio_cli import add_stdio_to_worker

    add_stdio_to_worker(parser)
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


def worker_tls(args: argparse.Namespace, log: Callable[[str], None]) -> ssl.SSLContext | None:
    """The worker's TLS context from its options, or None (plain TCP, with a warning).

    Raises:
        _Unusable: --tls-cert without --tls-key, or the other way round.
    """
    if (args.tls_cert is None) != (args.tls_key is None):
        raise _Unusable("--tls-cert and --tls-key go together")
    if args.tls or args.ca or args.tls_cert:
        return _load_tls(
            lambda: client_ssl_context(ca=args.ca, cert=args.tls_cert, key=args.tls_key)
        )
    log(
        "warning: plain TCP; use --ca (or --tls) so that only the real modeller "
        "is talked to, and nobody can read the task"
    )
    return None


def run_worker_command(args: argparse.Namespace) -> int:
    if args.stdio:
        from ._stdio_cli import run_worker_stdio

        return run_worker_stdio(args)
    if args.broker:
        from ._broker_cli import run_worker_broker

        return run_worker_broker(args)
    if args.pods != 1:
        from ._pods import run_pods

        return run_pods(args)
    log = (lambda text: None) if args.quiet else _say(f"fsm-protocol worker {args.pod_id}")
    try:
        if args.connect is None:
            raise _Unusable("give --connect HOST:PORT (direct TCP) or --broker nats://HOST:PORT")
        if args.serve:
            raise _Unusable("--serve needs --broker (over direct TCP a worker serves one task)")
        host, port = args.connect
        protocols = _registry(args.algorithm)
        context = worker_tls(args, log)
        vet = None
        if args.trust_key:
            keys = [_auth().load_public_key(path) for path in args.trust_key]
            seen: SeenJobs | None = _auth().FileSeenJobs(args.replay_db) if args.replay_db else None
            vet = _auth().require_signed_jobs(
                keys, pod_id=args.pod_id, max_age_s=args.max_age, seen=seen
            )
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
    key = _auth().generate_key()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if args.force:
            private_path.unlink(missing_ok=True)
        descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as out:
            out.write(_auth().private_key_pem(key))
        public_path.write_text(_auth().public_key_text(key.public_key()) + "\n", encoding="ascii")
    except OSError as exc:
        print(
            f"fsm-protocol keys generate: cannot write to {folder}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return EXIT_UNUSABLE
    print(f"wrote {private_path} (private: give it to the modeller, --signing-key)")
    print(f"wrote {public_path} (public: give it to the pods, --trust-key)")
    print(f"key fingerprint {_auth().fingerprint(key.public_key())}")
    return EXIT_OK
