"""Embedding fsm-protocol in an application: no traps on the way in."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

import fsm_protocol as fp


@attrs.frozen
class Upper:
    batch_size: int = 2


class UpperWorker:
    def run_batch(self, items: list[fp.Item], info: fp.BatchInfo) -> list[str]:
        return [item.name.upper() for item in items]


def _plan(config: Upper, context: fp.WorkerContext) -> fp.WorkerPlan:
    return fp.WorkerPlan(UpperWorker(), context.datasource.items(), config.batch_size)


PROTOCOLS = fp.registry.with_protocol(fp.ProtocolFactory("test.Upper", Upper, worker=_plan))


def _pods(*names: str) -> list[fp.Pod]:
    return [fp.Pod(n, datasource=fp.ListDatasource.from_names(["a", "b", "c"])) for n in names]


# An asyncio application is its own process: run each in a fresh interpreter, so that
# nothing another test loaded (trio-asyncio, which the broker tests use, installs its own
# event loop policy) changes what asyncio.run does.
ASYNCIO_APP = """
import asyncio, functools, sys
import attrs, trio
import fsm_protocol as fp

@attrs.frozen
class Upper:
    batch_size: int = 2

class UpperWorker:
    def run_batch(self, items, info):
        return [item.name.upper() for item in items]

def plan(config, context):
    return fp.WorkerPlan(UpperWorker(), context.datasource.items(), config.batch_size)

protocols = fp.registry.with_protocol(fp.ProtocolFactory("test.Upper", Upper, worker=plan))
pods = [fp.Pod("org/p1", datasource=fp.ListDatasource.from_names(["a", "b", "c"]))]
task = functools.partial(fp.run_task, Upper(), pods, protocols=protocols)
"""


def _asyncio_app(body: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", ASYNCIO_APP + body],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_awaiting_from_asyncio_says_how_to_run_it() -> None:
    message = _asyncio_app(
        """
try:
    asyncio.run(task())
except fp.ConfigError as exc:
    print(exc)
"""
    )
    assert "run_task runs on trio" in message
    assert "trio.run" in message and "asyncio.to_thread" in message and "trio-asyncio" in message


def test_the_way_the_error_suggests_works_from_asyncio() -> None:
    out = _asyncio_app(
        """
async def application():
    return await asyncio.to_thread(trio.run, task)

print(asyncio.run(application()).status.value)
"""
    )
    assert out.strip() == "complete"


async def test_pods_run_the_tasks_protocols_unless_given_their_own() -> None:
    outcome = await fp.run_task(Upper(), _pods("org/p1", "org/p2"), protocols=PROTOCOLS)
    assert outcome.status is fp.TaskStatus.COMPLETE
    assert {w.state for w in outcome.workers.values()} == {"complete"}
    # A pod with a registry of its own uses it: this one does not know test.Upper.
    own = fp.Pod("org/p3", registry=fp.registry)
    outcome = await fp.run_task(Upper(), [*_pods("org/p1"), own], protocols=PROTOCOLS)
    assert outcome.workers["org/p3"].reject is not None
    assert outcome.workers["org/p1"].state == "complete"


async def test_result_keys_sort_after_retries() -> None:
    protocol = fp.EchoProtocol(
        items=tuple(f"item-{i}" for i in range(1, 9)), batch_size=2, fail_in_batch=("item-3",)
    )
    outcome = await fp.run_task(protocol, [fp.Pod("org/p1")], batched_execution=True)
    keys = sorted(outcome.results)  # a retry has no batch: this raised TypeError
    assert [(k.batch, k.retry) for k in keys] == [
        (None, 0),
        (None, 1),
        (0, None),
        (2, None),
        (3, None),
    ]


def test_charts_display_as_diagrams_in_jupyter() -> None:
    bundle = fp.shipped_chart("worker")._repr_mimebundle_()
    assert bundle["text/plain"] == "<Chart worker: 31 states>"
    assert bundle["text/markdown"].startswith("```mermaid\nstateDiagram-v2\n")
    if shutil.which("dot") is not None:
        from lxml import etree

        svg = etree.fromstring(bundle["image/svg+xml"].encode("utf-8"))
        assert svg.tag == "{http://www.w3.org/2000/svg}svg"


USER_CODE = """
from collections.abc import Sequence

import attrs
import trio

import fsm_protocol as fp


@attrs.frozen
class Shout:
    batch_size: int = 2


class ShoutWorker:
    def run_batch(self, items: Sequence[fp.Item], info: fp.BatchInfo) -> list[str]:
        return [item.name.upper() for item in items]


def plan(config: Shout, context: fp.WorkerContext) -> fp.WorkerPlan:
    return fp.WorkerPlan(ShoutWorker(), context.datasource.items(), config.batch_size)


factory: fp.ProtocolFactory[Shout] = fp.ProtocolFactory("example.Shout", Shout, worker=plan)
protocols = fp.registry.with_protocol(factory)
outcome = trio.run(lambda: fp.run_task(Shout(), [fp.Pod("org/p")], protocols=protocols))
first: fp.ResultKey = sorted(outcome.results)[0]
errors: tuple[fp.ErrorReport, ...] = outcome.errors
"""

WRONG_CONFIG = """
import fsm_protocol as fp


def plan(config: int, context: fp.WorkerContext) -> fp.WorkerPlan:
    raise NotImplementedError


factory = fp.ProtocolFactory("example.Bad", str, worker=plan)
"""


def _mypy(tmp_path: Path, code: str) -> subprocess.CompletedProcess[str]:
    mypy = Path(sys.executable).with_name("mypy")
    if not mypy.exists():
        pytest.skip("mypy is not installed (it comes with the test extra)")
    (tmp_path / "app.py").write_text(code, encoding="utf-8")
    # Outside the checkout: mypy must find fsm_protocol where pip installed it.
    return subprocess.run(
        [str(mypy), "--strict", "--no-incremental", "app.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_an_application_type_checks_against_the_installed_package(tmp_path: Path) -> None:
    done = _mypy(tmp_path, USER_CODE)
    assert done.returncode == 0, done.stdout
    wrong = _mypy(tmp_path, WRONG_CONFIG)
    assert wrong.returncode == 1, wrong.stdout
    assert 'Argument "worker" to "ProtocolFactory" has incompatible type' in wrong.stdout
