"""python-statemachine's SCXML interpreter, set up to run the SCXML we export.

Used by tests/test_scxml.py (every exported document loads) and
tests/test_scxml_interop.py (it runs the same as our engine).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import pytest

interpreter_module = pytest.importorskip(
    "statemachine.io.interpreter",
    reason="python-statemachine is not installed (it comes with the test extra)",
)
evaluators = pytest.importorskip("statemachine.io.evaluators")
scxml_reader = pytest.importorskip("statemachine.io.scxml.reader")
spec_parser = pytest.importorskip("statemachine.spec_parser")
sync_engine = pytest.importorskip("statemachine.engines.sync")
event_data = pytest.importorskip("statemachine.event_data")


class Idle(Exception):
    """python-statemachine would now sleep until its next delayed event is due."""


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, _seconds: float) -> None:
        raise Idle


@contextlib.contextmanager
def simulated_time() -> Iterator[_Clock]:
    clock = _Clock()
    take = sync_engine.SyncEngine._take_due_external_event

    def take_or_stop(engine: Any, first_result: Any) -> Any:
        # Where python-statemachine would sleep until its next delayed event, stop:
        # the test moves the clock and wakes it.
        try:
            return take(engine, first_result)
        except Idle:
            return False, first_result

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sync_engine, "monotonic", clock.monotonic)
        patch.setattr(event_data, "monotonic", clock.monotonic)
        patch.setattr(sync_engine, "sleep", clock.sleep)
        patch.setattr(sync_engine.SyncEngine, "_take_due_external_event", take_or_stop)
        yield clock


_SECONDS_TEXT = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*\+\s*(['\"])s\2\s*")


class _Evaluator:
    """python-statemachine's two evaluators, each where ours needs it.

    Conditions go to its restricted (default) evaluator. Its datamodel is Python: it maps
    ECMAScript's ``&&``, ``||`` and ``===`` but not the unary ``!``, so a condition first
    goes through its own ``replace_operators`` (``!`` to ``not``, as in its guard
    language). A timer's ``delayexpr="option + 's'"`` means, in ECMAScript, the option's
    value as text with ``s`` after it, where Python's ``+`` raises TypeError: that one
    form is given its ECMAScript meaning. Scripts go to its Python evaluator (the
    restricted one refuses every ``<script>``), which calls the model's logging actions.
    """

    def __init__(self) -> None:
        self._conditions = evaluators.RestrictedEvaluator()
        self._scripts = evaluators.PythonEvaluator()

    def compile_value(self, expr: str) -> Any:
        seconds = _SECONDS_TEXT.fullmatch(expr)
        if seconds is None:
            return self._conditions.compile_value(expr)
        value = self._conditions.compile_value(seconds.group(1))
        return lambda *args, **kwargs: f"{value(*args, **kwargs)}s"

    def compile_bool(self, expr: str) -> Any:
        return self._conditions.compile_bool(spec_parser.replace_operators(expr))

    def compile_script(self, content: str) -> Any:
        return self._scripts.compile_script(content)

    def eval_literal(self, content: str) -> Any:
        return self._conditions.eval_literal(content)

    def ensure_external_src_allowed(self, descriptor: str) -> None:
        self._conditions.ensure_external_src_allowed(descriptor)


def load(text: str) -> Any:
    """The document loaded once; each ``start`` makes a fresh machine of it."""
    processor = interpreter_module.Interpreter(
        reader=scxml_reader.SCXMLReader(), evaluator=_Evaluator()
    )
    definition = scxml_reader.parse_scxml(text)
    processor.process_definition(definition, location="chart")
    return processor
