"""The message catalogue: who may send each message type, and the guards on a message's body.

These are the protocol's facts that are about messages rather than states, so
they live in one declared table that the chart loader, the runtime's
bindings and the trace checker all read, instead of each keeping a copy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from ._messages import MessageType

WORKER: Final = "worker"
MODELLER: Final = "modeller"

_BOTH: Final = frozenset({WORKER, MODELLER})

# Which side sends each message type (spec section 3). CONFORMANCE_SCENARIO is
# the kit's control line, not part of a task's conversation: nobody sends it in one.
SENDERS: Final[Mapping[MessageType, frozenset[str]]] = {
    MessageType.JOB_REQUEST: frozenset({MODELLER}),
    MessageType.JOB_ACCEPT: frozenset({WORKER}),
    MessageType.JOB_REJECT: frozenset({WORKER}),
    MessageType.ALGORITHM_EXCHANGE: frozenset({MODELLER}),
    MessageType.PREPARING_DATA: frozenset({WORKER}),
    MessageType.CONFIGURING_TASK: frozenset({WORKER}),
    MessageType.PREPARING_DATA_BATCHES: frozenset({WORKER}),
    MessageType.NUMBER_OF_BATCHES: frozenset({WORKER}),
    MessageType.CURRENT_BATCH_ID: frozenset({WORKER}),
    MessageType.TASK_START: _BOTH,
    MessageType.EVALUATION_RESULTS: frozenset({WORKER}),
    MessageType.BATCHES_COMPLETE: frozenset({WORKER}),
    MessageType.TASK_COMPLETE: frozenset({MODELLER}),
    MessageType.TASK_CANCEL: frozenset({MODELLER}),
    MessageType.TASK_ABORT: frozenset({WORKER}),
    MessageType.ONLINE_CHECK: frozenset({WORKER}),
    MessageType.ONLINE_RESPONSE: frozenset({MODELLER}),
    MessageType.LOG_MESSAGE: _BOTH,
    MessageType.CONFORMANCE_SCENARIO: frozenset(),
}


def sent_by(side: str) -> frozenset[MessageType]:
    """The message types ``side`` ("worker" or "modeller") may send."""
    return frozenset(t for t, senders in SENDERS.items() if side in senders)


def only_sent_by(side: str) -> frozenset[str]:
    """Type names that ``side`` sends and the other side never does."""
    return frozenset(t.value for t, senders in SENDERS.items() if senders == {side})


# Guards that look only at a message's body. The runtime passes the decoded
# body, the checker the raw JSON value; both are plain ints and strings here,
# since decode() has checked the body's type before any guard runs.
BODY_GUARDS: Final[Mapping[str, Callable[[Any], bool]]] = {
    # NUMBER_OF_BATCHES: 1 announces a single non-batched run, -1 a streamed
    # count not known yet, and a positive count in the batches phase an estimate.
    "count_is_one": lambda body: body == 1,
    "count_is_unknown": lambda body: body == -1,
    "is_estimate": lambda body: body > 0,
    # BATCHES_COMPLETE
    "is_batches_only": lambda body: body == "BATCHES_ONLY",
    "is_task_complete": lambda body: body == "TASK_COMPLETE",
}


def result_slot(batch_number: int | None, algorithm_index: int) -> tuple[int | None, int]:
    """Where an EVALUATION_RESULTS belongs: one result per (batch, algorithm) slot.

    Non-batched results and resilience retries have batch None. A second result
    for a slot is a duplicate, which the modeller chart refuses.
    """
    return (batch_number, algorithm_index)


RESUME_OPTION: Final = "resume_from_batch"
"""``job.options`` key of a resumed task (``modeller serve --resume``): its first batch id.

Not part of wire v1: our extension, carried in the job's free ``options``. A
worker refuses a job whose value is not an int >= 0 (a config error).
"""


def first_batch_id(options: Any) -> int:
    """The first batch id of a job with these ``options``: 0 unless it is a resumed task."""
    first = options.get(RESUME_OPTION, 0) if isinstance(options, Mapping) else 0
    return first if type(first) is int and first >= 0 else 0
