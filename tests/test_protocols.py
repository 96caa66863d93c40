"""The protocol registry: configurations to JOB_REQUEST JSON and back."""

from __future__ import annotations

import json
from collections.abc import Mapping

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fsm_protocol import (
    ConfigError,
    EchoProtocol,
    ProtocolFactory,
    UsageLimit,
    WorkerPlan,
    registry,
)

names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=8)


@given(
    items=st.lists(names, unique=True, max_size=5).map(tuple),
    batch_size=st.integers(1, 10),
    limit=st.none() | st.builds(UsageLimit, st.integers(0, 100), st.integers(0, 100)),
    initial_setup=st.booleans(),
)
def test_dump_then_load_gives_the_same_configuration(
    items: tuple[str, ...], batch_size: int, limit: UsageLimit | None, initial_setup: bool
) -> None:
    config = EchoProtocol(
        items=items, batch_size=batch_size, inference_limit=limit, initial_setup=initial_setup
    )
    wire = json.loads(json.dumps(registry.dump(config)))
    assert wire["class_name"] == "conformance.Echo"
    assert registry.load(wire) == config


def test_dump_is_the_spec_json() -> None:
    assert registry.dump(EchoProtocol(items=("a",), fail_alone=("a",))) == {
        "class_name": "conformance.Echo",
        "items": ["a"],
        "batch_size": 1,
        "fail_in_batch": [],
        "fail_alone": ["a"],
        "inference_limit": None,
        "initial_setup": False,
    }


def test_load_reports_every_bad_field_with_its_path() -> None:
    with pytest.raises(ConfigError) as caught:
        registry.load(
            {"class_name": "conformance.Echo", "items": "ab", "batch_size": 1.5, "extra": 1}
        )
    text = str(caught.value)
    assert "$.protocol.items" in text and "$.protocol.batch_size" in text and "extra" in text


def test_load_checks_the_echo_rules() -> None:
    with pytest.raises(ConfigError, match="duplicate item names: a"):
        registry.load({"class_name": "conformance.Echo", "items": ["a", "a"]})
    with pytest.raises(ConfigError, match="batch_size must be at least 1, found 0"):
        registry.load({"class_name": "conformance.Echo", "batch_size": 0})


def test_unknown_class_name_lists_what_is_known() -> None:
    with pytest.raises(ConfigError, match=r"unknown protocol class_name 'x\.Y'.*conformance\.Echo"):
        registry.load({"class_name": "x.Y"})


def test_registry_is_read_only_and_extended_by_composition() -> None:
    @attrs.frozen
    class Mine:
        n: int = 1

    factory = ProtocolFactory("my.Mine", Mine, lambda c, ctx: WorkerPlan(object(), [], 1))  # type: ignore[arg-type]
    extended = registry.with_protocol(factory)
    assert "my.Mine" in extended and "my.Mine" not in registry
    assert isinstance(registry, Mapping)
    with pytest.raises(TypeError):
        registry["my.Mine"] = factory  # type: ignore[index]
    assert extended.load(extended.dump(Mine(3))) == Mine(3)


def test_dumping_an_unregistered_configuration_is_a_config_error() -> None:
    @attrs.frozen
    class Stray:
        pass

    with pytest.raises(ConfigError, match="not a registered protocol"):
        registry.dump(Stray())
