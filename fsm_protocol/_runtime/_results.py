"""The results folder of ``modeller serve --results-dir``: files a kill cannot corrupt.

``<dir>/<folder name of the task id>/`` holds:

- ``task.json``: the task id (and the folder format), written once when the folder is made;
- ``results.ndjson``: one line per accepted ``EVALUATION_RESULTS``, appended as it
  arrives with a single ``write`` and fsync'd at each batch boundary (the boundaries
  of one scheduler round share one fsync, so a thousand pods do not stall the
  modeller a thousand times). The file is
  only ever appended to: a second run of the same task refuses, or (``resume``)
  appends after what is there;
- ``trace.ndjson`` (``trace-<n>.ndjson`` for the n-th resumed run): every message
  the modeller observed, appended to a ``.partial`` file as the run goes and
  renamed when it ends;
- ``outcome.json``: written at the end to a temporary file, fsync'd and renamed.

A kill at any moment leaves ``task.json`` and ``outcome.json`` whole or absent,
and ``results.ndjson`` made of whole lines, except perhaps a last line cut short
by a kill in the middle of its write, which :func:`read_results` skips.

Every writer here turns a value JSON cannot carry (NaN, a lone surrogate, a
Python object) into a string rather than failing: a results folder is written
even when a peer or an algorithm produced something odd.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final, final

import attrs
import trio

from .._base._errors import ConfigError
from .._wire._messages import Message, MessageType, encode, plain_json_bytes

FORMAT: Final = 1
"""The version of the folder layout, in ``task.json``."""

_SAFE: Final = re.compile(r"[A-Za-z0-9_-]")
_MAX_NAME: Final = 120


def folder_name(task_id: str) -> str:
    """A file name for a task id: readable, and different for different ids.

    Letters, digits, ``_`` and ``-`` stay; every other character becomes ``%XX``
    per UTF-8 byte (so ``t/1`` is ``t%2F1`` and ``t:1`` is ``t%3A1``), and ``.``
    too, so no name is ``.`` or ``..``. A name longer than 120 characters keeps
    its start and ends in a SHA-256 of the id.
    """
    parts = []
    for char in task_id:
        if _SAFE.fullmatch(char):
            parts.append(char)
        else:
            raw = char.encode("utf-8", "surrogatepass")
            parts.append("".join(f"%{byte:02X}" for byte in raw))
    name = "".join(parts) or "%"
    if len(name) > _MAX_NAME:
        digest = hashlib.sha256(task_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        name = f"{name[:80]}~{digest}"
    return name


def to_json_bytes(value: Any, *, indent: int | None = None) -> bytes:
    """``value`` as UTF-8 JSON, whatever it holds.

    Strict JSON when possible; otherwise NaN and infinities become the strings
    ``"NaN"``, ``"Infinity"``, ``"-Infinity"``, lone surrogates are escaped
    (``\\udXXX``), and other objects become their ``repr``.
    """
    if indent is None:
        plain = plain_json_bytes(value)  # orjson, when it writes what json would
        if plain is not None:
            return plain
    separators = (",", ": ") if indent is not None else (",", ":")
    try:
        text = json.dumps(
            value, ensure_ascii=False, allow_nan=False, indent=indent, separators=separators
        )
        return text.encode("utf-8")
    except (ValueError, TypeError, UnicodeEncodeError, RecursionError):
        pass
    text = json.dumps(
        _plain(value, 0), ensure_ascii=True, allow_nan=False, indent=indent, separators=separators
    )
    return text.encode("ascii")


def _plain(value: Any, depth: int) -> Any:
    """A copy of ``value`` that ``json.dumps(allow_nan=False)`` always accepts."""
    if depth > 200:
        return "..."
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, (list, tuple)):
        return [_plain(item, depth + 1) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _plain(item, depth + 1) for key, item in value.items()}
    if attrs.has(type(value)):
        return _plain(attrs.asdict(value), depth + 1)
    return repr(value)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``path`` so that it is either the old file or the whole new one, even after a kill.

    The data goes to ``<name>.partial`` next to it, is fsync'd, and renamed over
    ``path``; the folder is fsync'd so that the rename itself is durable.
    """
    partial = path.with_name(path.name + ".partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(descriptor, data)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(partial, path)
    _sync_folder(path.parent)


def _write_all(descriptor: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(descriptor, view)
        view = view[written:]


def _sync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system can fsync a folder
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


@attrs.frozen
class KeptResult:
    """One line of ``results.ndjson``, as :func:`read_results` returns it."""

    worker: str
    batch_number: int | None
    algorithm_index: int
    body: Any


def read_results(path: Path) -> Iterator[KeptResult]:
    """The whole lines of a ``results.ndjson``, in order; a cut or unreadable line is skipped."""
    with path.open("rb") as lines:
        for raw in lines:
            if not raw.endswith(b"\n"):
                return  # the last write was cut short by a kill: never acknowledged
            try:
                line = json.loads(raw)
                yield KeptResult(
                    str(line["worker"]),
                    line["batch_number"],
                    int(line.get("algorithm_index", 0)),
                    line["body"],
                )
            except (ValueError, KeyError, TypeError):
                continue


class ResultsFolderExists(ConfigError):
    """The task's results folder is there from an earlier run, and resuming was not asked for."""


@final
class ResultsFolder:
    """Writes one task's results as they arrive, and its outcome and trace at the end.

    Args:
        root: The ``--results-dir``.
        task_id: The task; it names the folder (see :func:`folder_name`).
        resume: Carry on in an existing folder instead of refusing it.

    Raises:
        ResultsFolderExists: The folder exists and ``resume`` is False.
        ConfigError: The folder cannot be made, or belongs to another task id
            (possible on a case-insensitive file system).
    """

    def __init__(self, root: Path, task_id: str, *, resume: bool = False) -> None:
        self.task_id = task_id
        self.path = root / folder_name(task_id)
        self.kept: list[KeptResult] = []
        self.failure: str | None = None
        """Why writing failed (disk full...), once it has; nothing more is written then."""
        self.not_kept: list[tuple[str, int | None, int]] = []
        """Results that arrived after writing failed: (worker, batch, algorithm index)."""
        self._dirty = False
        self._sync_scheduled = False
        self.on_durable: Callable[[str, Message], None] | None = None
        """Called with each received message once its effects are on disk, in order per
        pod (a broker acknowledges it then, and everything before it on that link)."""
        # Per pod, the last received message whose effects wait for the next sync.
        self._waiting: dict[str, Message] = {}
        self._earlier: set[tuple[str, int | None, int]] = set()
        self._results_fd: int | None = None
        self._trace_fd: int | None = None
        try:
            existing = self._open_folder(resume)
            results = self.path / "results.ndjson"
            if existing and results.exists():
                self.kept = list(read_results(results))
                _drop_cut_line(results)
            self._earlier = {
                (r.worker, r.batch_number, r.algorithm_index)
                for r in self.kept
                if r.batch_number is not None
            }
            self._results_fd = os.open(results, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            runs = 1 + sum(1 for _ in self.path.glob("trace*.ndjson*"))
            self.trace_path = self.path / ("trace.ndjson" if runs == 1 else f"trace-{runs}.ndjson")
            self._trace_fd = os.open(
                self.trace_path.with_name(self.trace_path.name + ".partial"),
                os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC,
                0o644,
            )
        except OSError as exc:
            self.close()
            raise ConfigError(
                f"results folder {self.path}: cannot write to it: {exc.strerror or exc}"
            ) from None

    def _open_folder(self, resume: bool) -> bool:
        """Make the folder, or check the existing one; True when it existed."""
        marker = self.path / "task.json"
        try:
            self.path.mkdir(parents=True)
        except FileExistsError:
            pass
        else:
            write_atomic(marker, to_json_bytes({"task_id": self.task_id, "format": FORMAT}))
            return False
        found = None
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            found = json.loads(marker.read_bytes())["task_id"]
        if found is not None and found != self.task_id:
            raise ConfigError(
                f"results folder {self.path} belongs to task {found!r}, not {self.task_id!r} "
                "(a case-insensitive file system?); use another --results-dir"
            )
        if not resume:
            count = (
                sum(1 for _ in read_results(self.path / "results.ndjson"))
                if (self.path / "results.ndjson").exists()
                else 0
            )
            raise ResultsFolderExists(
                f"results folder {self.path} already holds task {self.task_id!r} from an "
                f"earlier run ({count} result{'s' if count != 1 else ''} kept); nothing was "
                "changed. Pass --resume to carry on with it, or give the task another task_id "
                "(or another --results-dir)"
            )
        if found is None:
            write_atomic(marker, to_json_bytes({"task_id": self.task_id, "format": FORMAT}))
        return True

    # ------------------------------------------------------------- writing

    def on_message(self, pod_id: str, message: Message) -> None:
        """The executor's message hook: keep results, trace everything, sync per batch."""
        if self.failure is not None:
            if message.type is MessageType.EVALUATION_RESULTS and message.sender == pod_id:
                meta = message.meta
                self.not_kept.append((pod_id, meta.batch_number, meta.algorithm_index))
            return
        try:
            if self._trace_fd is not None:
                _write_all(self._trace_fd, encode_safely(message))
            if message.sender != pod_id:
                return
            if message.type is MessageType.EVALUATION_RESULTS:
                slot = (pod_id, message.meta.batch_number, message.meta.algorithm_index)
                if slot in self._earlier:
                    self._settled(pod_id, message)  # a resumed run: this result is already kept
                    return
                line = {
                    "worker": pod_id,
                    "seq": message.seq,
                    "batch_number": message.meta.batch_number,
                    "algorithm_index": message.meta.algorithm_index,
                    "body": message.body,
                }
                assert self._results_fd is not None
                _write_all(self._results_fd, to_json_bytes(line) + b"\n")
                self._dirty = True
                self._waiting[pod_id] = message
            elif message.type in _BATCH_BOUNDARIES:
                if self._dirty and self._sync_soon():
                    self._waiting[pod_id] = message  # durable with the results before it
                else:
                    self.sync()
                    self._settled(pod_id, message)
            else:
                self._settled(pod_id, message)
        except OSError as exc:
            self.failure = f"cannot write to {self.path}: {exc.strerror or exc}"
            if message.type is MessageType.EVALUATION_RESULTS and message.sender == pod_id:
                meta = message.meta
                self.not_kept.append((pod_id, meta.batch_number, meta.algorithm_index))

    def _sync_soon(self) -> bool:
        """Sync once this scheduler round is over: one fsync for every boundary in it.

        With a thousand pods, boundaries come in bursts; an fsync each would stall
        the event loop a thousand times. False outside a trio run (a test, a
        tool): the caller syncs at once.
        """
        if self._sync_scheduled:
            return True
        try:
            token = trio.lowlevel.current_trio_token()
        except RuntimeError:
            return False
        self._sync_scheduled = True
        token.run_sync_soon(self._scheduled_sync)
        return True

    def _scheduled_sync(self) -> None:
        self._sync_scheduled = False
        if self.failure is not None:
            return
        try:
            self.sync()
        except OSError as exc:
            self.failure = f"cannot write to {self.path}: {exc.strerror or exc}"
        except Exception as exc:  # an on_durable callback's bug must not crash the run loop
            self.failure = f"on_durable failed: {type(exc).__name__}: {exc}"

    def sync(self) -> None:
        """Make the results appended so far durable (a batch boundary)."""
        if self._dirty and self._results_fd is not None:
            os.fsync(self._results_fd)
            self._dirty = False
        if self._waiting:
            waiting, self._waiting = self._waiting, {}
            if self.on_durable is not None:
                for pod_id, message in waiting.items():
                    self.on_durable(pod_id, message)

    def _settled(self, pod_id: str, message: Message) -> None:
        """``message`` has nothing to write: durable once what came before it is."""
        if pod_id in self._waiting:
            self._waiting[pod_id] = message  # after a result not synced yet
        elif self.on_durable is not None:
            self.on_durable(pod_id, message)

    def finish(self, outcome: Mapping[str, Any]) -> None:
        """Sync the results, rename the trace into place and write ``outcome.json``.

        Raises:
            OSError: A write failed (the files already written stay valid).
        """
        try:
            self.sync()
            if self._trace_fd is not None:
                os.fsync(self._trace_fd)
                os.close(self._trace_fd)
                self._trace_fd = None
                partial = self.trace_path.with_name(self.trace_path.name + ".partial")
                os.replace(partial, self.trace_path)
            write_atomic(self.path / "outcome.json", to_json_bytes(outcome, indent=2) + b"\n")
        finally:
            self.close()

    def close(self) -> None:
        for name in ("_results_fd", "_trace_fd"):
            descriptor = getattr(self, name, None)
            if descriptor is not None:
                with contextlib.suppress(OSError):
                    os.close(descriptor)
                setattr(self, name, None)


# After these a worker's batch is over: the results before them are synced.
_BATCH_BOUNDARIES: Final = frozenset(
    {MessageType.CURRENT_BATCH_ID, MessageType.BATCHES_COMPLETE, MessageType.TASK_ABORT}
)


def encode_safely(message: Message) -> bytes:
    """:func:`encode`, or, for a body JSON cannot carry, the same line with it made plain."""
    try:
        return encode(message)
    except (ValueError, TypeError, RecursionError):
        return encode(attrs.evolve(message, body=_plain(message.body, 0)))


def _drop_cut_line(path: Path) -> None:
    """End the file after its last whole line, so appends start on a line of their own.

    Only a line cut short by a kill mid-write is dropped; it was never acknowledged.
    """
    with path.open("rb+") as results:
        size = results.seek(0, os.SEEK_END)
        if size == 0:
            return
        results.seek(size - 1)
        if results.read(1) == b"\n":
            return
        position = size
        while position > 0:
            step = min(65536, position)
            results.seek(position - step)
            chunk = results.read(step)
            newline = chunk.rfind(b"\n")
            if newline != -1:
                results.truncate(position - step + newline + 1)
                return
            position -= step
        results.truncate(0)
