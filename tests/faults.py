"""The fault harness: honest and hostile peers, for tests/test_faults.py and benchmarks/faults.py.

A *session* is one task between a real modeller and two workers, one honest and
one whose outgoing lines pass through a :class:`Mangler` that replaces some of
them with hostile bytes (or, mirrored, an honest worker whose modeller's lines
are mangled). A session checks what a person relies on:

- nothing raises out of the modeller or a worker (a *crash*);
- everything ends within a deadline (a *hang*);
- every result the modeller accepted is in ``results.ndjson``, and
  ``outcome.json`` and the trace parse (anything else counts as *lost*).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio
from hypothesis import strategies as st

from fsm_protocol import Pod
from fsm_protocol._algo._protocols import registry
from fsm_protocol._base._errors import TransportError
from fsm_protocol._cli._net_cli import ServeOptions, TaskFile, outcome_json, serve_task
from fsm_protocol._net._tcp import Limits, connect
from fsm_protocol._runtime._modeller import ModellerRun, TaskTimeouts, run_modeller
from fsm_protocol._runtime._results import ResultsFolder, read_results
from fsm_protocol._runtime._transport import memory_transport_pair
from fsm_protocol._runtime._worker import WorkerReport, run_worker
from fsm_protocol._wire._messages import JobRequestBody, Message, encode

LOCAL = "127.0.0.1"
HONEST, HOSTILE = "honest/pod", "hostile/pod"

# Short waits, so that a hostile peer that stalls a chart costs seconds, not minutes.
TIMEOUTS = TaskTimeouts(
    response_timeout_s=2.0,
    cancel_timeout_s=2.0,
    worker_idle_timeout_s=2.0,
    task_start_timeout_s=2.0,
    soft_timeout_s=2.0,
    hard_timeout_s=2.0,
)
SESSION_DEADLINE_S = 30.0
_LIMITS = Limits(handshake_timeout_s=5.0)

# --------------------------------------------------------------- hostile values

_ENVELOPE = (
    b'{"v":1,"type":"EVALUATION_RESULTS","task_id":"%s","sender":"%s","recipient":"modeller",'
    b'"seq":%d,"meta":{"batch_number":0},"body":%s}\n'
)

# JSON texts that break the wire's value rule, or strain a receiver.
HOSTILE_JSON: tuple[bytes, ...] = (
    b'"\\ud800"',
    b'{"file":"caf\\udce9.csv"}',
    b"[1e999]",
    b"-1e400",
    b"9007199254740993",
    b"-99999999999999999999999999999999999999",
    b'{"a":1,"a":2}',
    b"[" * 65 + b"]" * 65,
    b"[" * 5000 + b"]" * 5000,
    b"NaN",
    b"Infinity",
    b'"' + b"x" * 200_000 + b'"',
    b"[" + b"[]," * 600_000 + b"[]]",
    b'{"\\udfff":0}',
    b"1" * 5000,
)


def hostile_json() -> st.SearchStrategy[bytes]:
    """A JSON text (or near-JSON) that a careless receiver would crash or swell on."""
    nested = st.integers(min_value=1, max_value=200).map(lambda n: b"[" * n + b"]" * n)
    numbers = st.sampled_from([b"1e308", b"1e309", b"-0.0", b"1E+999", b"2e-999"])
    big_ints = st.integers(min_value=2**52, max_value=2**80).map(lambda n: str(n).encode())
    escapes = st.integers(min_value=0xD800, max_value=0xDFFF).map(lambda n: b'"\\u%04x"' % n)
    return st.one_of(st.sampled_from(HOSTILE_JSON), nested, numbers, big_ints, escapes)


@attrs.frozen
class Mutation:
    """How a mangler replaces the ``index``-th line its side sends."""

    index: int
    kind: str
    payload: bytes = b""

    def apply(self, line: bytes, message: Message) -> list[bytes]:
        """The bytes sent instead of ``line`` (possibly several lines, or none)."""
        if self.kind == "bytes":
            return [self.payload]
        if self.kind == "body":
            return [_with_body(message, self.payload)]
        if self.kind == "meta":
            return [_with_meta(message, self.payload)]
        if self.kind == "envelope":
            return [
                line.replace(b'"v":1', b'"v":true', 1)
                if not self.payload
                else line.replace(b'"seq":', b'"seq":' + self.payload + b',"x":', 1)
            ]
        if self.kind == "truncate":
            cut = max(1, min(len(line) - 1, int.from_bytes(self.payload or b"\x01", "big")))
            return [line[:cut] + b"\n"]
        if self.kind == "repeat":
            return [line, line]
        if self.kind == "flip":
            position = int.from_bytes(self.payload[:2] or b"\x00", "big") % max(1, len(line) - 1)
            flipped = bytearray(line)
            flipped[position] ^= self.payload[2] if len(self.payload) > 2 else 0x20
            return [bytes(flipped)]
        raise ValueError(self.kind)


def _with_body(message: Message, body: bytes) -> bytes:
    wire = json.loads(encode(message))
    wire["body"] = "__BODY__"
    text = json.dumps(wire, separators=(",", ":")).encode()
    return text.replace(b'"__BODY__"', body, 1) + b"\n"


def _with_meta(message: Message, value: bytes) -> bytes:
    wire = json.loads(encode(message))
    wire["meta"] = {"batch_number": "__A__", "algorithm_index": "__B__"}
    text = json.dumps(wire, separators=(",", ":")).encode()
    return text.replace(b'"__A__"', value, 1).replace(b'"__B__"', value, 1) + b"\n"


def mutations(max_index: int = 12) -> st.SearchStrategy[Mutation]:
    """One hostile replacement of one line: raw bytes, or a valid message with a hostile value."""
    index = st.integers(min_value=0, max_value=max_index)
    raw_bytes = st.binary(max_size=300).map(lambda b: b + b"\n")
    return st.one_of(
        st.builds(Mutation, index, st.just("bytes"), raw_bytes),
        st.builds(Mutation, index, st.just("body"), hostile_json()),
        st.builds(Mutation, index, st.just("meta"), hostile_json()),
        st.builds(Mutation, index, st.just("envelope"), st.sampled_from([b"", b"-1", b"1e999"])),
        st.builds(Mutation, index, st.just("truncate"), st.binary(min_size=1, max_size=2)),
        st.builds(Mutation, index, st.just("repeat")),
        st.builds(Mutation, index, st.just("flip"), st.binary(min_size=3, max_size=3)),
    )


@attrs.define
class Mangler:
    """A transport whose outgoing lines pass through mutations; reading is untouched."""

    inner: Any
    changes: dict[int, Mutation]
    sent: int = 0
    mutated: int = 0

    async def send(self, message: Message) -> None:
        line = encode(message)
        mutation = self.changes.get(self.sent)
        self.sent += 1
        if mutation is None:
            await self._raw(line)
            return
        for out in mutation.apply(line, message):
            self.mutated += 1
            await self._raw(out)

    async def _raw(self, line: bytes) -> None:
        raw = getattr(self.inner, "send_line", None) or self.inner.send_raw
        await raw(line)

    async def receive(self) -> Message:
        message: Message = await self.inner.receive()
        return message

    async def aclose(self) -> None:
        await self.inner.aclose()


# ------------------------------------------------------------------- sessions


@attrs.frozen
class SessionResult:
    """What one session showed."""

    inputs: int
    crashed: str | None
    hung: bool
    lost: int
    status: str | None


def echo_job(batches: int) -> JobRequestBody:
    items = [f"i{n}" for n in range(batches)]
    options = {"task_start_timeout_s": 2.0, "soft_timeout_s": 2.0, "hard_timeout_s": 2.0}
    return JobRequestBody(
        protocol={"class_name": "conformance.Echo", "items": items, "batch_size": 1},
        pod_identifiers=(HONEST, HOSTILE),
        batched_execution=True,
        options=options,
    )


def check_folder(folder: Path, accepted: Sequence[tuple[str, int | None, int]]) -> int:
    """How many accepted results are missing from the folder (or 10**6 if a file is bad)."""
    try:
        json.loads((folder / "outcome.json").read_bytes())
        for line in (folder / "trace.ndjson").read_bytes().splitlines():
            json.loads(line)
        written = {
            (r.worker, r.batch_number, r.algorithm_index)
            for r in read_results(folder / "results.ndjson")
        }
    except (OSError, ValueError) as exc:
        raise AssertionError(f"{folder}: a file does not parse: {exc}") from exc
    return sum(1 for key in accepted if key not in written)


def _accepted(run: ModellerRun) -> list[tuple[str, int | None, int]]:
    return [(k.worker, k.batch, k.algorithm) for k in run.results if k.retry is None]


async def memory_session(
    folder: Path,
    changes: dict[int, Mutation],
    *,
    mangle_modeller: bool = False,
    batches: int = 3,
    task_id: str = "fuzz",
) -> SessionResult:
    """One task over in-process transports (the real codec), with a results folder."""
    job = echo_job(batches)
    links = {}
    workers: list[tuple[str, Any]] = []
    manglers = []
    for pod_id in (HONEST, HOSTILE):
        modeller_end, worker_end = memory_transport_pair()
        if pod_id == HOSTILE:
            if mangle_modeller:
                modeller_end = Mangler(modeller_end, changes)  # type: ignore[assignment]
                manglers.append(modeller_end)
            else:
                worker_end = Mangler(worker_end, changes)  # type: ignore[assignment]
                manglers.append(worker_end)
        links[pod_id] = modeller_end
        workers.append((pod_id, worker_end))
    results_folder = ResultsFolder(folder, task_id)
    crashed: str | None = None
    run: ModellerRun | None = None
    reports: list[WorkerReport] = []

    async def work(pod_id: str, transport: Any) -> None:
        nonlocal crashed
        try:
            reports.append(await run_worker(Pod(pod_id), transport))
        except Exception as exc:  # a crash: recorded, not raised
            crashed = crashed or f"worker {pod_id}: {type(exc).__name__}: {exc}"

    hung = True
    with trio.move_on_after(SESSION_DEADLINE_S):
        async with trio.open_nursery() as nursery:
            for pod_id, transport in workers:
                nursery.start_soon(work, pod_id, transport)
            try:
                run = await run_modeller(
                    task_id=task_id,
                    jobs={HONEST: job, HOSTILE: job},
                    configs={p: registry.load(job.protocol) for p in (HONEST, HOSTILE)},
                    links=links,
                    timeouts=TIMEOUTS,
                    on_message=results_folder.on_message,
                    keep=False,
                )
            except Exception as exc:
                crashed = f"modeller: {type(exc).__name__}: {exc}"
                nursery.cancel_scope.cancel()
        hung = False
    lost = 0
    if run is not None and not hung:
        results_folder.finish(outcome_json(run, {}, [], bodies=False))
        lost = check_folder(results_folder.path, _accepted(run))
    results_folder.close()
    inputs = sum(m.mutated for m in manglers)
    status = None if run is None else run.status.value
    return SessionResult(inputs, crashed, hung, lost, status)


async def wait_for_file(path: Path) -> str:
    while not path.exists():
        await trio.sleep(0.005)
    return path.read_text()


async def tcp_session(
    folder: Path,
    changes: dict[int, Mutation],
    *,
    batches: int = 3,
    task_id: str = "fuzz",
    limits: Limits = _LIMITS,
) -> SessionResult:
    """One task against a listening ``serve_task``, the workers dialling in over TCP."""
    port_file = folder / f"{task_id}.port"
    job = echo_job(batches)
    task = TaskFile(
        pods=(HONEST, HOSTILE),
        jobs={HONEST: job, HOSTILE: job},
        require_all_pods=False,
        timeouts=TIMEOUTS,
        task_id=task_id,
    )
    options = ServeOptions(
        host=LOCAL,
        port=0,
        results_dir=folder,
        port_file=port_file,
        connect_timeout_s=10.0,
        limits=limits,
    )
    crashed: str | None = None
    outcome: dict[str, Any] | None = None
    run: ModellerRun | None = None
    manglers: list[Mangler] = []

    async def serve() -> None:
        nonlocal crashed, outcome, run
        try:
            run, outcome = await serve_task(task, options)
        except Exception as exc:
            crashed = f"modeller: {type(exc).__name__}: {exc}"

    async def work(pod_id: str) -> None:
        nonlocal crashed
        port = int(await wait_for_file(port_file))
        try:
            transport: Any = await connect(LOCAL, port, pod_id=pod_id, limits=limits)
        except TransportError:
            return  # refused: the modeller's business, not a crash
        if pod_id == HOSTILE:
            transport = Mangler(transport, changes)
            manglers.append(transport)
        try:
            await run_worker(Pod(pod_id), transport)
        except Exception as exc:
            crashed = crashed or f"worker {pod_id}: {type(exc).__name__}: {exc}"
        finally:
            await transport.aclose()

    hung = True
    with trio.move_on_after(SESSION_DEADLINE_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            nursery.start_soon(work, HONEST)
            nursery.start_soon(work, HOSTILE)
        hung = False
    lost = 0
    if run is not None and not hung and outcome is not None:
        # Results the modeller said it could not keep (a full disk) are reported, not lost.
        declared = {(r["worker"], r["batch"], r["algorithm"]) for r in
                    outcome.get("results_not_kept", [])}  # fmt: skip
        lost = check_folder(folder / task_id, [k for k in _accepted(run) if k not in declared])
    inputs = sum(m.mutated for m in manglers)
    return SessionResult(
        inputs, crashed, hung, lost, None if outcome is None else outcome["status"]
    )


def summary_line(inputs: int, crashes: int, hangs: int, lost: int, max_rss_mib: float) -> str:
    return (
        f"faults: inputs={inputs} crashes={crashes} hangs={hangs} results_lost={lost} "
        f"max_rss_mib={math.ceil(max_rss_mib)}"
    )


Check = Callable[[SessionResult], None]
