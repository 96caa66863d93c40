"""The command line's logging: ``-v/--verbose``, ``-q/--quiet`` and ``--log-format``.

The library only logs (``fsm_protocol.runtime``, ``fsm_protocol.net``...); the command
line decides where records go: standard error, as text or one JSON object per line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import TextIO

LOG_FORMATS = ("text", "json")

_ROOT = logging.getLogger("fsm_protocol")


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is when a record comes (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr  # not setStream: that flushes the old one, maybe closed
        super().emit(record)


class _TextFormatter(logging.Formatter):
    """``fsm-protocol: warning: message``; the traceback too when ``traceback`` is set."""

    def __init__(self, *, traceback: bool) -> None:
        super().__init__()
        self.traceback = traceback

    def format(self, record: logging.LogRecord) -> str:
        text = f"fsm-protocol: {record.levelname.lower()}: {record.getMessage()}"
        if self.traceback and record.exc_info:
            text += "\n" + self.formatException(record.exc_info).rstrip()
        return text


class _JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and the error if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and record.exc_info[0] is not None:
            entry["exception_type"] = record.exc_info[0].__name__
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


@contextlib.contextmanager
def logging_to_stderr(*, verbose: int, quiet: bool, log_format: str) -> Iterator[None]:
    """Send the library's records to standard error while the command runs.

    Levels: ``-q`` errors only, default warnings, ``-v`` info with tracebacks, ``-vv`` debug.
    The logger is left as it was found afterwards (``main`` may run many times in a process).
    """
    if quiet:
        level = logging.ERROR
    else:
        level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    handler = _StderrHandler()
    handler.setFormatter(
        _JsonFormatter() if log_format == "json" else _TextFormatter(traceback=verbose > 0)
    )
    saved = (_ROOT.level, _ROOT.propagate)
    _ROOT.addHandler(handler)
    _ROOT.setLevel(level)
    _ROOT.propagate = False
    try:
        yield
    finally:
        _ROOT.removeHandler(handler)
        _ROOT.setLevel(saved[0])
        _ROOT.propagate = saved[1]
