"""What a correct worker does with ``conformance.Echo``: a pure prediction.

The conformance kit and the property tests both compare what happened with
this model. It is written from the wire spec (section 5) alone, not from the
charts or the runtime, so that it can disagree with them.
"""

from __future__ import annotations

import enum

import attrs

from .._wire._messages import AbortReason
from ._protocols import EchoProtocol

CONSECUTIVE_FAILURE_LIMIT = 5


class Fate(str, enum.Enum):
    """What happens to one item (spec section 5)."""

    DELIVERED = "delivered"
    FAILED = "failed"
    CUT = "cut"
    NOT_RUN = "not run"


@attrs.frozen
class Delivery:
    """One ``EVALUATION_RESULTS`` a correct worker sends."""

    batch: int | None
    items: tuple[str, ...]


@attrs.frozen
class EchoPrediction:
    """The end a correct worker reaches, its results in order, and each item's fate."""

    complete: bool
    abort_reason: AbortReason | None
    deliveries: tuple[Delivery, ...]
    fates: dict[str, Fate]
    batches: int

    def items_with(self, fate: Fate) -> tuple[str, ...]:
        return tuple(name for name, f in self.fates.items() if f is fate)


@attrs.define
class _Usage:
    limit: int | None
    total: int

    def charge(self, n: int) -> tuple[int, bool]:
        """Charge ``n`` inferences: how many results may be sent, and whether to stop."""
        self.total += n
        if self.limit is None or self.total < self.limit:
            return n, False
        overrun = self.total - self.limit
        return max(0, n - overrun), True


def predict_echo(
    protocol: EchoProtocol, *, batched: bool, test_run: bool = False
) -> EchoPrediction:
    """Predict what a conforming worker does with this Echo configuration.

    Args:
        protocol: The Echo configuration (it must be valid: see ``problems()``).
        batched: The job's ``batched_execution``.
        test_run: The job's ``test_run``: only the first item is processed.
    """
    items = list(protocol.items[:1] if test_run else protocol.items)
    fates = {name: Fate.NOT_RUN for name in items}
    limit = protocol.inference_limit
    usage = _Usage(limit.limit if limit else None, limit.total_usage if limit else 0)
    deliveries: list[Delivery] = []

    def end(complete: bool, reason: AbortReason | None, batches: int) -> EchoPrediction:
        return EchoPrediction(complete, reason, tuple(deliveries), fates, batches)

    def deliver(run: list[str], batch: int | None) -> bool:
        allowed, stop = usage.charge(len(run))
        deliveries.append(Delivery(batch, tuple(run[:allowed])))
        for name in run[:allowed]:
            fates[name] = Fate.DELIVERED
        for name in run[allowed:]:
            fates[name] = Fate.CUT
        return stop

    if not items:
        return end(False, AbortReason.NO_DATA, 0)
    if not batched:
        if any(protocol.fails(name, alone=False) for name in items):
            for name in items:
                fates[name] = Fate.FAILED
            return end(False, AbortReason.WORKER_ERROR, 1)
        if deliver(items, None):
            return end(False, AbortReason.LIMITS_EXCEEDED, 1)
        return end(True, None, 1)

    size = protocol.batch_size
    batches = [items[i : i + size] for i in range(0, len(items), size)]
    retry: list[str] = []
    consecutive = 0
    succeeded = False
    for batch_id, batch in enumerate(batches):
        if any(protocol.fails(name, alone=False) for name in batch):
            consecutive += 1
            retry.extend(batch)
            if consecutive >= CONSECUTIVE_FAILURE_LIMIT:
                return end(False, AbortReason.WORKER_ERROR, len(batches))
            continue
        consecutive = 0
        succeeded = True
        if deliver(batch, batch_id):
            return end(False, AbortReason.LIMITS_EXCEEDED, len(batches))
    for name in retry:
        if protocol.fails(name, alone=True):
            fates[name] = Fate.FAILED
            continue
        succeeded = True
        if deliver([name], None):
            return end(False, AbortReason.LIMITS_EXCEEDED, len(batches))
    if not succeeded:
        return end(False, AbortReason.WORKER_ERROR, len(batches))
    return end(True, None, len(batches))
