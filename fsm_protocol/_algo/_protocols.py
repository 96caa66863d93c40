"""Protocol configurations, their registry, and the conformance Echo protocol.

A protocol configuration is a frozen attrs class. The registry maps the
``class_name`` on the wire to a factory that knows that class; ``dump`` and
``load`` turn a configuration into ``JOB_REQUEST.body.protocol`` and back
through one cattrs converter, reporting every bad field at once.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Generic, TypeVar, final

import attrs
import cattrs

from .._base._errors import ConfigError
from ._algorithms import (
    BatchFailed,
    BatchInfo,
    Datasource,
    Item,
    ListDatasource,
    ModellerAlgorithm,
    WorkerAlgorithm,
)

C = TypeVar("C")


@attrs.frozen
class UsageLimit:
    """A model-inference allowance: ``total_usage`` already used of ``limit``."""

    limit: int
    total_usage: int = 0


@attrs.frozen
class WorkerPlan:
    """What a worker needs to run a job: its algorithm, its items, how to batch."""

    algorithm: WorkerAlgorithm
    items: Sequence[Item]
    batch_size: int = 1
    usage_limit: UsageLimit | None = None


@attrs.frozen
class WorkerContext:
    """What a protocol factory may use from the worker that runs it."""

    pod_id: str
    datasource: Datasource


@attrs.frozen
class ProtocolFactory(Generic[C]):
    """How one protocol is configured and instantiated on each side.

    Generic in its configuration class ``C``: ``ProtocolFactory("x.Shout", Shout,
    worker=plan)`` type-checks ``plan`` as taking a ``Shout``.

    Args:
        name: The ``class_name`` on the wire.
        config_type: The frozen attrs class of its configuration.
        worker: Builds the worker's plan from a configuration.
        modeller: Builds the modeller-side algorithm (optional).
    """

    name: str
    config_type: type[C]
    worker: Callable[[C, WorkerContext], WorkerPlan]
    modeller: Callable[[C], ModellerAlgorithm] | None = None


def _strict_converter() -> cattrs.Converter:
    conv = cattrs.Converter(detailed_validation=True, forbid_extra_keys=True)

    def strict(kind: type, *, allow_int: bool = False) -> Callable[[Any, Any], Any]:
        def hook(value: Any, _: Any) -> Any:
            ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
            if allow_int and isinstance(value, int) and not isinstance(value, bool):
                ok = True
            if not ok:
                raise TypeError(f"expected {kind.__name__}, found {type(value).__name__} {value!r}")
            return value

        return hook

    conv.register_structure_hook(str, strict(str))
    conv.register_structure_hook(int, strict(int))
    conv.register_structure_hook(bool, strict(bool))
    conv.register_structure_hook(float, strict(float, allow_int=True))

    # JSON has lists only; a string must not pass as a tuple of characters.
    def is_tuple(type_: Any) -> bool:
        return typing.get_origin(type_) is tuple

    def tuple_from_list(value: Any, type_: Any) -> Any:
        if not isinstance(value, list):
            raise TypeError(f"expected a list, found {type(value).__name__} {value!r}")
        (item_type, *_) = typing.get_args(type_)
        return tuple(conv.structure(item, item_type) for item in value)

    conv.register_structure_hook_func(is_tuple, tuple_from_list)
    return conv


_converter = _strict_converter()


@final
class ProtocolRegistry(Mapping[str, ProtocolFactory[Any]]):
    """A read-only mapping from protocol name to factory.

    Extend it by composition: ``registry.with_protocol(factory)`` returns a
    new registry and leaves this one as it was.
    """

    def __init__(self, factories: Iterable[ProtocolFactory[Any]] = ()) -> None:
        self._factories: dict[str, ProtocolFactory[Any]] = {}
        for factory in factories:
            self._factories[factory.name] = factory

    def __getitem__(self, name: str) -> ProtocolFactory[Any]:
        return self._factories[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._factories)

    def __len__(self) -> int:
        return len(self._factories)

    def __repr__(self) -> str:
        return f"ProtocolRegistry({sorted(self._factories)})"

    def with_protocol(self, factory: ProtocolFactory[Any]) -> ProtocolRegistry:
        return ProtocolRegistry([*self._factories.values(), factory])

    def factory_for(self, config: object) -> ProtocolFactory[Any]:
        for factory in self._factories.values():
            if type(config) is factory.config_type:
                return factory
        raise ConfigError(
            f"{type(config).__name__} is not a registered protocol configuration; "
            f"registered: {', '.join(sorted(self._factories)) or 'none'}"
        )

    def dump(self, config: object) -> dict[str, Any]:
        """The ``JOB_REQUEST.body.protocol`` JSON for ``config``."""
        factory = self.factory_for(config)
        data: dict[str, Any] = _converter.unstructure(config, factory.config_type)
        return {"class_name": factory.name, **data}

    def load(self, data: Mapping[str, Any]) -> Any:
        """Build a configuration from ``JOB_REQUEST.body.protocol``.

        Raises:
            ConfigError: Unknown ``class_name``, or fields that do not fit; the
                message lists every problem with its path.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"protocol must be an object, found {type(data).__name__}")
        name = data.get("class_name")
        if name not in self._factories:
            raise ConfigError(
                f"unknown protocol class_name {name!r}; this worker knows: "
                f"{', '.join(sorted(self._factories)) or 'none'}"
            )
        factory = self._factories[name]
        fields = {k: v for k, v in data.items() if k != "class_name"}
        try:
            config: Any = _converter.structure(fields, factory.config_type)
        except Exception as exc:
            problems = cattrs.transform_error(exc, path="$.protocol")
            raise ConfigError(f"invalid {name} configuration: " + "; ".join(problems)) from exc
        check = getattr(config, "problems", None)
        if callable(check):
            found = check()
            if found:
                raise ConfigError(f"invalid {name} configuration: " + "; ".join(found))
        return config


# ------------------------------------------------------------------ Echo


@attrs.frozen
class EchoProtocol:
    """The conformance algorithm of the wire spec (section 5).

    Deterministic: each item's fate follows from the configuration alone,
    which lets the kit predict every message a correct worker sends.
    """

    name: ClassVar[str] = "conformance.Echo"

    items: tuple[str, ...] = ()
    batch_size: int = 1
    fail_in_batch: tuple[str, ...] = ()
    fail_alone: tuple[str, ...] = ()
    inference_limit: UsageLimit | None = None
    initial_setup: bool = False

    def problems(self) -> list[str]:
        found = []
        if self.batch_size < 1:
            found.append(f"batch_size must be at least 1, found {self.batch_size}")
        seen: set[str] = set()
        dupes = sorted({i for i in self.items if i in seen or seen.add(i)})  # type: ignore[func-returns-value]
        if dupes:
            found.append(f"duplicate item names: {', '.join(dupes)}")
        return found

    def fails(self, name: str, *, alone: bool) -> bool:
        """Whether item ``name`` fails in a batch (``alone=False``) or on retry."""
        if name in self.fail_alone:
            return True
        return not alone and name in self.fail_in_batch


@attrs.frozen
class EchoWorker:
    """Echo's worker side: returns each item's name as its result."""

    config: EchoProtocol

    def run_batch(self, items: Sequence[Item], info: BatchInfo) -> list[str]:
        failing = [i.name for i in items if self.config.fails(i.name, alone=info.retry)]
        if failing:
            raise BatchFailed(f"items {', '.join(failing)} failed")
        return [i.name for i in items]

    def results_body(self, items: Sequence[Item], results: Sequence[Any]) -> Any:
        return {"items": [i.name for i in items]}


@attrs.define
class EchoModeller:
    """Echo's modeller side: sends a fixed setup value and keeps nothing else."""

    config: EchoProtocol

    def setup_values(self) -> dict[str, Any]:
        return {"echo": True}


def _echo_worker(config: EchoProtocol, context: WorkerContext) -> WorkerPlan:
    return WorkerPlan(
        algorithm=EchoWorker(config),
        items=ListDatasource.from_names(config.items).items(),
        batch_size=config.batch_size,
        usage_limit=config.inference_limit,
    )


ECHO = ProtocolFactory(
    name=EchoProtocol.name,
    config_type=EchoProtocol,
    worker=_echo_worker,
    modeller=EchoModeller,
)

registry = ProtocolRegistry([ECHO])
"""The protocols this library knows out of the box."""


def has_initial_setup(config: object) -> bool:
    """Whether a protocol configuration asks for the initial setup exchange."""
    return bool(getattr(config, "initial_setup", False))
