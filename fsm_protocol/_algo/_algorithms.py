"""What users plug in: data, and the two halves of an algorithm.

These are structural interfaces (``typing.Protocol``): any object with the
right methods works, no base class needed. Optional methods are looked up by
name, the way trio looks up an Instrument's hooks.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

import attrs

T = TypeVar("T")


@attrs.frozen
class Item:
    """One named unit of data a worker holds (a file, a record, an image).

    ``modified`` is any value that changes when the item changes (a file's
    mtime, a hash); with ``run_on_new_data_only`` an item is run again only
    when it differs from what was processed before.
    """

    name: str
    data: Any = attrs.field(default=None, eq=False)
    modified: str | None = None


@runtime_checkable
class Datasource(Protocol):
    """A worker's data: named items in a stable order."""

    def items(self) -> Sequence[Item]: ...


@attrs.frozen
class ListDatasource:
    """The simplest datasource: items held in memory.

    Build one with :meth:`from_names` for tests and demos.
    """

    entries: tuple[Item, ...] = ()

    @classmethod
    def from_names(cls, names: Sequence[str]) -> ListDatasource:
        return cls(tuple(Item(name) for name in names))

    def items(self) -> Sequence[Item]:
        return self.entries


@attrs.frozen
class BatchInfo:
    """Which run this is: a batch (``batch_id``), or a single-item retry."""

    batch_id: int | None
    retry: bool = False


class BatchFailed(Exception):
    """Raise from ``run_batch`` to fail a batch without it being an error.

    Its items are retried one by one in the resilience phase. Any other
    exception fails the batch the same way, and is reported in the abort if
    the task ends because of it.
    """


@runtime_checkable
class WorkerAlgorithm(Protocol):
    """The worker half of an algorithm.

    Required: ``run_batch(items, info) -> results``, one result per item, in
    order; raise to fail the batch. Optional methods, used when present (each
    may be a plain or an ``async`` function):

    - ``setup() -> None`` before any batch;
    - ``initial_setup(values: Mapping) -> None`` with the modeller's
      ``ALGORITHM_EXCHANGE`` values;
    - ``final_step() -> None`` after every batch and retry (the reduce step);
    - ``results_body(items, results) -> JSON``, the body of
      ``EVALUATION_RESULTS``; by default ``{"items": [...], "results": [...]}``.
    """

    def run_batch(self, items: Sequence[Item], info: BatchInfo) -> Any: ...


@runtime_checkable
class ModellerAlgorithm(Protocol):
    """The modeller half of an algorithm. Every method is optional.

    - ``setup_values() -> Mapping``: the ``ALGORITHM_EXCHANGE`` values sent to
      each worker when the protocol has an initial setup;
    - ``on_results(worker, batch_id, body) -> None`` as results arrive;
    - ``final_step(results) -> Any`` once every worker completed; its return
      value is the outcome's ``final_result``.
    """


def default_results_body(items: Sequence[Item], results: Sequence[Any]) -> Any:
    return {"items": [item.name for item in items], "results": list(results)}


async def call_maybe_async(func: Any, *args: Any) -> Any:
    """Call a user hook that may be a plain or an ``async`` function."""
    result = func(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


def optional_hook(obj: object, name: str) -> Any:
    """The user's optional method ``name``, or None when it is absent."""
    hook = getattr(obj, name, None)
    return hook if callable(hook) else None


def as_mapping(values: Any) -> Mapping[str, Any]:
    return values if isinstance(values, Mapping) else {}
