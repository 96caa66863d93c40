"""What an exception from user code leaves behind: a record in the outcome, and a log entry.

The library logs through the standard :mod:`logging` module, one logger per area:
``fsm_protocol.runtime`` (tasks, workers, the modeller), ``fsm_protocol.net``,
``fsm_protocol.kit`` and ``fsm_protocol.cli``. It installs no handlers: the application
decides where records go (``logging.basicConfig()`` is enough to see them).
"""

from __future__ import annotations

import logging
import traceback

import attrs

_MAX_TRACEBACK = 20_000
"""Characters of a formatted traceback kept in a report (the end, where the error is)."""


@attrs.frozen
class ErrorReport:
    """An exception raised by user code (an algorithm, a datasource, a hook), kept whole.

    Args:
        where: The call that raised: ``run_batch``, ``datasource``, ``setup``,
            ``initial_setup``, ``final_step``...
        pod_id: The worker it happened on ("" on the modeller's side).
        type: The exception's class, module-qualified unless it is a builtin
            (``ZeroDivisionError``, ``mypkg.errors.DataError``).
        message: ``str()`` of the exception.
        traceback: The formatted traceback, as Python prints it (at most the last
            20,000 characters).
        items: The items the failed call was given, if any.
    """

    where: str
    pod_id: str
    type: str
    message: str
    traceback: str
    items: tuple[str, ...] = ()

    @classmethod
    def from_exception(
        cls, error: BaseException, *, where: str, pod_id: str = "", items: tuple[str, ...] = ()
    ) -> ErrorReport:
        kind = type(error)
        module = kind.__module__
        if module.startswith("fsm_protocol._"):
            module = "fsm_protocol"  # where our public names live
        name = kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"
        text = "".join(traceback.format_exception(kind, error, error.__traceback__))
        return cls(
            where=where,
            pod_id=pod_id,
            type=name,
            message=str(error),
            traceback=text[-_MAX_TRACEBACK:],
            items=items,
        )

    def summary(self) -> str:
        """One line: who, which call, which exception."""
        who = f"{self.pod_id}: " if self.pod_id else ""
        items = f" (items {', '.join(self.items[:5])}{', ...' if len(self.items) > 5 else ''})"
        return f"{who}{self.where} raised {self.type}: {self.message}" + (
            items if self.items else ""
        )


def log_error_report(
    logger: logging.Logger, report: ErrorReport, error: BaseException, *, level: int
) -> None:
    """Log ``report`` with the exception attached, so handlers can print its traceback."""
    logger.log(
        level,
        "%s",
        report.summary(),
        exc_info=(type(error), error, error.__traceback__),
        extra={"fsm_error": report},
    )
