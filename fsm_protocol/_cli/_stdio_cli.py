"""``fsm-protocol worker --stdio`` and ``fsm-protocol modeller --stdio``.

Both roles over this process's stdin and stdout, one NDJSON message a line
(wire spec section 1), so that another team's harness can run our
implementation as a peer. Nothing but wire lines is written to stdout; what
people read goes to stderr.

* ``worker --stdio --pod-id ID`` serves one task as pod ID. A first line that
  is not a valid JOB_REQUEST gets no answer (nobody to answer) and exit 2.
  Otherwise the exit status is 0 however the task ended: the outcome is in the
  messages.
* ``modeller --stdio`` reads the CONFORMANCE_SCENARIO control line (spec
  section 6), sends each pod its JOB_REQUEST, and runs the task; every pod's
  lines share stdin and are routed by ``sender``. The optional fields of the
  control line default as in TASK.json (:data:`TASK_DEFAULTS`). A bad control
  line gets one line on stderr naming the field, and exit 2; after the task
  the exit status is 0 however it ended (spec section 6).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, final

import trio

from .._algo._algorithms import ListDatasource
from .._base._errors import BrokenTransportError, ConfigError, DecodeError
from .._runtime._modeller import ModellerRun, run_modeller
from .._runtime._transport import Transport
from .._runtime._worker import Pod, run_worker
from .._wire._messages import (
    DEFAULT_MAX_LINE_BYTES,
    Message,
    MessageType,
    decode,
    encode,
)
from ._net_cli import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNUSABLE,
    TASK_DEFAULTS,
    TaskFile,
    _auth,
    _config,
    _modeller_algorithm,
    _registry,
    _say,
    task_from_json,
)

if TYPE_CHECKING:
    from .._net._auth import SeenJobs

_CHUNK: Final = 65536
_CONTROL: Final = "control line"
_SCENARIO: Final = MessageType.CONFORMANCE_SCENARIO.value


class ControlLineError(Exception):
    """The control line is not a usable CONFORMANCE_SCENARIO; the message names the field."""


# ------------------------------------------------------------------ streams


@final
class _Lines:
    """A byte stream read as lines, none held longer than ``max_line_bytes``.

    An over-long line is returned cut to ``max_line_bytes + 1`` bytes (the
    rest of it is skipped), so that the decoder rejects it with its own error.
    """

    def __init__(self, stream: trio.abc.ReceiveStream, max_line_bytes: int) -> None:
        self._stream = stream
        self._limit = max_line_bytes
        self._buffer = bytearray()
        self._skipping = False
        self._eof = False

    async def next(self) -> bytes:
        """The next line with its newline; :class:`trio.EndOfChannel` at the end."""
        while True:
            newline = self._buffer.find(b"\n")
            if newline != -1:
                line = bytes(self._buffer[: newline + 1])
                del self._buffer[: newline + 1]
                if self._skipping:
                    self._skipping = False
                    continue
                return line
            if len(self._buffer) > self._limit:
                cut = not self._skipping
                line = bytes(self._buffer[: self._limit + 1])
                self._buffer.clear()
                self._skipping = True
                if cut:
                    return line
            if self._eof:
                if self._buffer and not self._skipping:
                    line = bytes(self._buffer)
                    self._buffer.clear()
                    return line
                raise trio.EndOfChannel
            try:
                chunk = await self._stream.receive_some(_CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                chunk = b""
            if chunk:
                self._buffer += chunk
            else:
                self._eof = True


@final
class _Out:
    """Stdout shared by every conversation: one whole line at a time."""

    def __init__(self, stream: trio.abc.SendStream) -> None:
        self._stream = stream
        self._lock = trio.Lock()

    async def write(self, message: Message) -> None:
        line = encode(message)
        async with self._lock:
            await self._stream.send_all(line)


@final
class _SharedOut:
    """Stdout shared by every pod's conversation, written in the order the modeller sends.

    The runtime stamps ``seq`` when it hands a message to ``send_nowait``; one
    writer takes the lines in that order, so stdout shows the modeller's seq
    rising by exactly 1 (spec section 2) however many pods share it.
    """

    def __init__(self, stream: trio.abc.SendStream) -> None:
        self._stream = stream
        self._lines, self._pending = trio.open_memory_channel[bytes](math.inf)
        self.failure: str | None = None

    def put(self, message: Message) -> None:
        if self.failure is not None:
            raise BrokenTransportError(self.failure)
        self._lines.send_nowait(encode(message))

    async def write_all(self) -> None:
        """Write every line put, in order, until :meth:`close`; then return."""
        async with self._pending:
            async for line in self._pending:
                if self.failure is not None:
                    continue  # stdout is gone: what is left cannot reach anyone
                try:
                    await self._stream.send_all(line)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    self.failure = f"stdout closed: {exc}"

    def close(self) -> None:
        self._lines.close()


@final
class _WorkerStdio:
    """One pod's conversation over stdin and stdout; the first line was read already."""

    def __init__(self, lines: _Lines, out: _Out, first: bytes, max_line_bytes: int) -> None:
        self._lines = lines
        self._out = out
        self._first: bytes | None = first
        self._max = max_line_bytes

    async def send(self, message: Message) -> None:
        await self._out.write(message)

    async def receive(self) -> Message:
        if self._first is not None:
            line, self._first = self._first, None
        else:
            line = await self._lines.next()
        return decode(line, max_line_bytes=self._max)

    async def aclose(self) -> None:
        pass  # stdout stays open until the process ends, for anything still in flight


@final
class _PodLink:
    """One pod's conversation in the modeller: its lines, routed from the shared stdin."""

    def __init__(self, out: _SharedOut) -> None:
        self._out = out
        self.inbox, self._incoming = trio.open_memory_channel[Message](math.inf)

    async def send(self, message: Message) -> None:
        await trio.lowlevel.checkpoint()
        self._out.put(message)

    def send_nowait(self, message: Message) -> None:
        """Queue ``message`` behind every earlier one of the task, whichever pod it is for."""
        self._out.put(message)

    async def receive(self) -> Message:
        return await self._incoming.receive()

    async def aclose(self) -> None:
        self._incoming.close()


def _std_streams() -> tuple[trio.lowlevel.FdStream, trio.lowlevel.FdStream]:
    # Duplicates, so that closing them never closes the process's own descriptors.
    return (
        trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())),
        trio.lowlevel.FdStream(os.dup(sys.stdout.fileno())),
    )


# ----------------------------------------------------------------- worker


def check_worker_stdio(args: argparse.Namespace) -> str | None:
    """What is wrong with the options of ``worker --stdio``, or None."""
    if args.connect is not None:
        return "--stdio and --connect are alternatives: give one"
    if getattr(args, "broker", None):
        return "--stdio and --broker are alternatives: give one"
    if getattr(args, "serve", False):
        return "--serve needs --broker (over stdio a worker serves one task)"
    if args.tls or args.ca or args.tls_cert or args.tls_key:
        return "TLS options do not apply to --stdio"
    if not 1024 <= args.max_line_bytes <= 1 << 30:
        return (
            f"--max-line-bytes must be from 1024 to {1 << 30} (1 GiB), found {args.max_line_bytes}"
        )
    return None


def run_worker_stdio(args: argparse.Namespace) -> int:
    """``fsm-protocol worker --stdio --pod-id ID``."""
    name = f"fsm-protocol worker {args.pod_id}"
    log = (lambda text: None) if args.quiet else _say(name)
    problem = check_worker_stdio(args)
    if problem is not None:
        print(f"fsm-protocol worker: {problem}", file=sys.stderr)
        return EXIT_UNUSABLE
    try:
        vet = None
        if args.trust_key:
            keys = [_auth().load_public_key(path) for path in args.trust_key]
            seen: SeenJobs | None = _auth().FileSeenJobs(args.replay_db) if args.replay_db else None
            vet = _auth().require_signed_jobs(
                keys, pod_id=args.pod_id, max_age_s=args.max_age, seen=seen
            )
        pod = Pod(
            args.pod_id,
            datasource=ListDatasource.from_names(args.items),
            registry=_registry(args.algorithm),
            vet=vet,
        )
    except ConfigError as exc:
        print(f"fsm-protocol worker: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    max_line_bytes: int = args.max_line_bytes

    async def main() -> int:
        stdin, stdout = _std_streams()
        async with stdin, stdout:
            lines = _Lines(stdin, max_line_bytes)
            try:
                first = await lines.next()
                request = decode(first, max_line_bytes=max_line_bytes)
            except trio.EndOfChannel:
                log("the input ended before a job request")
                return EXIT_UNUSABLE
            except DecodeError as exc:
                print(f"{name}: the first line is not a message: {exc}", file=sys.stderr)
                return EXIT_UNUSABLE
            if request.type is not MessageType.JOB_REQUEST:
                print(
                    f"{name}: the first line is {request.type.value}; expected a JOB_REQUEST",
                    file=sys.stderr,
                )
                return EXIT_UNUSABLE
            transport = _WorkerStdio(lines, _Out(stdout), first, max_line_bytes)
            report = await run_worker(pod, transport)
            log(f"ended {report.state}")
            return EXIT_OK

    try:
        return trio.run(main)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


# --------------------------------------------------------------- modeller


def read_control_line(
    line: bytes, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> tuple[str, TaskFile]:
    """The task id and the task of a CONFORMANCE_SCENARIO line (wire spec section 6).

    ``job_overrides``, ``response_timeout_s`` and ``require_all_pods`` are
    optional, with the defaults of TASK.json.

    Raises:
        ControlLineError: The line is not a valid control line; the message
            names the field, on one line.
    """
    data: Any = None
    with contextlib.suppress(ValueError):
        data = json.loads(line)
    if isinstance(data, dict) and data.get("type", _SCENARIO) != _SCENARIO:
        # Checked first: the body of another type would be judged by that type's rules.
        raise ControlLineError(
            _one_line(f"{_CONTROL}: field $.type: expected {_SCENARIO}, found {data['type']!r}")
        )
    body = data.get("body") if isinstance(data, dict) else None
    if isinstance(body, dict) and not set(TASK_DEFAULTS) <= set(body):
        data["body"] = {**TASK_DEFAULTS, **body}
        line = json.dumps(data, ensure_ascii=False).encode("utf-8") + b"\n"
    try:
        message = decode(line, max_line_bytes=max_line_bytes)
    except DecodeError as exc:
        raise ControlLineError(_one_line(f"{_CONTROL}: {exc}")) from None
    assert message.type is MessageType.CONFORMANCE_SCENARIO  # checked above
    assert isinstance(data, dict)  # decode accepted it, so it is a JSON object
    try:
        task = task_from_json(dict(data["body"]), f"{_CONTROL}, body")
    except ConfigError as exc:
        raise ControlLineError(_one_line(str(exc))) from None
    return message.task_id, task


def _one_line(text: str) -> str:
    return " ".join(text.split())


async def run_modeller_stdio_task(
    stdin: trio.abc.ReceiveStream,
    stdout: trio.abc.SendStream,
    *,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    log: Callable[[str], None] | None = None,
) -> ModellerRun:
    """Read the control line from ``stdin``, run its task, and return how it ended.

    Raises:
        ControlLineError: No control line, or a bad one.
    """
    say = log or (lambda text: None)
    lines = _Lines(stdin, max_line_bytes)
    try:
        first = await lines.next()
    except trio.EndOfChannel:
        raise ControlLineError(f"{_CONTROL}: missing (the input ended first)") from None
    task_id, task = read_control_line(first, max_line_bytes=max_line_bytes)
    out = _SharedOut(stdout)
    links = {pod: _PodLink(out) for pod in task.pods}
    protocols = _registry(())
    configs = {pod: _config(protocols, job) for pod, job in task.jobs.items()}
    first_pod = task.pods[0]
    algorithm = _modeller_algorithm(protocols, task.jobs[first_pod], configs[first_pod])
    cancel = trio.Event()

    async def route() -> None:
        while True:
            try:
                line = await lines.next()
            except trio.EndOfChannel:
                break
            try:
                message = decode(line, max_line_bytes=max_line_bytes)
            except DecodeError as exc:
                # It belongs to nobody we can tell: cancel every running worker (spec section 1).
                say(f"unreadable line, cancelling the task: {_one_line(str(exc))}")
                cancel.set()
                continue
            link = links.get(message.sender)
            if link is None:
                say(f"a line from {message.sender!r}, not one of the task's pods: dropped")
                continue
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                link.inbox.send_nowait(message)
        for link in links.values():
            link.inbox.close()

    transports: dict[str, Transport] = dict(links)
    async with trio.open_nursery() as writer:
        writer.start_soon(out.write_all)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(route)
                run = await run_modeller(
                    task_id=task_id,
                    jobs=task.jobs,
                    configs=configs,
                    links=transports,
                    algorithm=algorithm,
                    timeouts=task.timeouts,
                    require_all_pods=task.require_all_pods,
                    cancel=cancel,
                )
                nursery.cancel_scope.cancel()
        finally:
            out.close()  # the writer ends once every line put is written
    return run


def run_modeller_stdio(args: argparse.Namespace) -> int:
    """``fsm-protocol modeller --stdio``."""
    name = "fsm-protocol modeller --stdio"
    log = (lambda text: None) if args.quiet else _say(name)

    async def main() -> ModellerRun:
        stdin, stdout = _std_streams()
        async with stdin, stdout:
            return await run_modeller_stdio_task(stdin, stdout, log=log)

    try:
        run = trio.run(main)
    except ControlLineError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    log(f"task {run.task_id} ended {run.status.value}")
    return EXIT_OK  # however the task ended: the outcome is in the messages (spec section 6)


# ----------------------------------------------------------- registration


def add_stdio_to_worker(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stdio",
        action="store_true",
        help="serve one task on stdin and stdout instead of dialling a modeller "
        "(for a conformance harness: fsm-protocol conform --role worker -- "
        "fsm-protocol worker --stdio --pod-id {pod})",
    )


def add_stdio_to_modeller(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stdio",
        action="store_true",
        help="read a CONFORMANCE_SCENARIO control line (wire spec section 6) on stdin and "
        "run that task, every pod's messages on stdin and stdout; exit 0 once the task "
        "has ended, 2 on a bad control line",
    )
    # The common options live on the subcommands; --stdio runs without one.
    parser.set_defaults(verbose=0, quiet=False, log_format="text", run=_run_modeller_parent)


def _run_modeller_parent(args: argparse.Namespace) -> int:
    if args.stdio:
        return run_modeller_stdio(args)
    print("fsm-protocol modeller: give a COMMAND (serve) or --stdio", file=sys.stderr)
    return EXIT_UNUSABLE
