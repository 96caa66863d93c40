"""Error types, split by who is at fault.

A user reading a traceback should know at once whether to fix their chart
file, their configuration, their peer, their network, or to report a bug.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs


class FsmProtocolError(Exception):
    """Root of every error this library raises on purpose."""


@attrs.frozen
class Problem:
    """One located problem in an input file.

    Rendered as ``file:line:column: message (hint)`` so editors can jump to it.
    """

    file: str
    line: int
    column: int
    message: str
    hint: str = ""

    def __str__(self) -> str:
        text = f"{self.file}:{self.line}:{self.column}: {self.message}"
        return f"{text} ({self.hint})" if self.hint else text


class ChartError(FsmProtocolError, ValueError):
    """A chart file is malformed or inconsistent.

    Carries *every* problem found, not just the first, so one run of the
    validator is enough to fix a file.
    """

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        count = len(self.problems)
        head = f"{count} problem{'s' if count != 1 else ''} in chart"
        super().__init__(head + ":\n" + "\n".join(str(p) for p in self.problems))


class ConfigError(FsmProtocolError, ValueError):
    """The caller passed a bad option or task description."""


class ProtocolViolation(FsmProtocolError):
    """A peer (or a trace) broke the protocol.

    Attributes name what the state machine was doing, so the message can say
    what was expected and what was found.
    """

    def __init__(
        self,
        message: str,
        *,
        state: str | None = None,
        event: str | None = None,
        expected: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.state = state
        self.event = event
        self.expected: tuple[str, ...] = tuple(expected)


class DecodeError(ProtocolViolation):
    """A wire line could not be decoded into a message.

    ``field`` is the JSON path of the offending field (``$`` for the whole
    line), so a peer's author can find the bug without reading our code.
    """

    def __init__(self, message: str, *, field: str = "$", line: bytes | str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.line = line


class TransportError(FsmProtocolError):
    """The connection to a peer failed or misbehaved."""


class BrokenTransportError(TransportError):
    """The peer went away or the stream broke; nothing more can be sent."""


class ClosedTransportError(TransportError):
    """We closed this transport ourselves and then tried to use it."""


class PodResponseError(FsmProtocolError):
    """``require_all_pods`` was set and a pod rejected the job or did not answer."""

    def __init__(self, message: str, *, pods: Sequence[str] = (), outcome: object = None) -> None:
        super().__init__(message)
        self.pods: tuple[str, ...] = tuple(pods)
        #: The :class:`TaskOutcome` of the cancelled task, when there is one.
        self.outcome = outcome


class InternalError(FsmProtocolError):
    """This should never happen: please report it with the traceback."""
