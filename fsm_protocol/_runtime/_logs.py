"""LOG_MESSAGE lines a caller asks a running side to send (the conformance kit does)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import final

from .._wire._messages import LogMessageBody, Message, MessageType
from ._executor import Executor

_SEND = "send:" + MessageType.LOG_MESSAGE.value


@final
class LogHandle:
    """Lets a caller send LOG_MESSAGE on the links of a running worker or modeller.

    Give one to :func:`~fsm_protocol.run_worker` or
    :func:`~fsm_protocol.run_modeller` as ``logs``. While the run lasts,
    :meth:`log` queues a LOG_MESSAGE on the link ``key`` (the pod's id), taken
    between steps like any other event; a link whose state allows no
    LOG_MESSAGE at that moment (not engaged yet, or ended) sends nothing.
    """

    def __init__(self) -> None:
        self._executor: Executor | None = None
        self._make: Callable[[str, LogMessageBody], Message] | None = None
        self.sent = 0

    def bind(self, executor: Executor, make: Callable[[str, LogMessageBody], Message]) -> None:
        """Attach to a run: ``make(key, body)`` builds the message for link ``key``."""
        self._executor = executor
        self._make = make

    def log(self, key: str, text: str, *, level: str = "INFO") -> None:
        """Send ``text`` as a LOG_MESSAGE on link ``key`` at its next step, if its state allows."""
        executor = self._executor
        if executor is not None and key in executor.slots:
            executor.call_soon(functools.partial(self._send, key, LogMessageBody(level, text)))

    def _send(self, key: str, body: LogMessageBody) -> None:
        executor, make = self._executor, self._make
        assert executor is not None and make is not None
        message = make(key, body)
        if executor.slot(key).machine.accepts(_SEND, message):
            executor.raise_event(key, _SEND, message)
            self.sent += 1
