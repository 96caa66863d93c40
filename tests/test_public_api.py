"""The public API is exactly what ``fsm_protocol`` re-exports, and it type-checks.

Adding or removing a public name must be a deliberate edit of ``PUBLIC``.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import mypy.api
import pytest

import fsm_protocol

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PACKAGE = Path(fsm_protocol.__file__).resolve().parent
TYPE_TESTS = HERE / "type_tests"

PUBLIC = [
    "AbortReason",
    "BatchFailed",
    "BatchInfo",
    "BindingNames",
    "BrokenTransportError",
    "Chart",
    "ChartError",
    "ClosedTransportError",
    "ConfigError",
    "Datasource",
    "DecodeError",
    "EchoProtocol",
    "ErrorReport",
    "Event",
    "FAILURE_LIMIT",
    "FsmProtocolError",
    "HandshakeError",
    "Hooks",
    "InternalError",
    "Item",
    "JobRejectBody",
    "JobRequestBody",
    "JobSigner",
    "Limits",
    "ListDatasource",
    "Location",
    "MODELLER",
    "Machine",
    "MemoryTransport",
    "Message",
    "MessageType",
    "Meta",
    "ModellerAlgorithm",
    "Pod",
    "PodListener",
    "PodResponseError",
    "Problem",
    "Progress",
    "ProtocolFactory",
    "ProtocolRegistry",
    "ProtocolViolation",
    "RejectReason",
    "ResourceConsumed",
    "ResultKey",
    "Role",
    "Snapshot",
    "State",
    "Step",
    "TaskAbortBody",
    "TaskOutcome",
    "TaskStatus",
    "TaskTimeouts",
    "TcpTransport",
    "Timer",
    "Transition",
    "Transport",
    "TransportError",
    "UsageLimit",
    "Violation",
    "WorkerAlgorithm",
    "WorkerContext",
    "WorkerOutcome",
    "WorkerPlan",
    "WorkerReport",
    "body_of",
    "check_chart_text",
    "connect",
    "decode",
    "encode",
    "from_scxml",
    "generate_key",
    "load_chart",
    "load_chart_text",
    "load_private_key",
    "load_public_key",
    "memory_transport_pair",
    "read_trace",
    "registry",
    "render_graphviz",
    "require_signed_jobs",
    "run_modeller",
    "run_task",
    "run_worker",
    "shipped_chart",
    "snapshot_from_dict",
    "snapshot_to_dict",
    "to_dot",
    "to_mermaid",
    "to_mermaid_sequence",
    "to_plantuml",
    "to_scxml",
    "to_sequence_svg",
]

# Engine and runtime classes: users compose them, they do not subclass them.
FINAL = ["Machine", "MemoryTransport", "ProtocolRegistry"]

# The only modules a user may import; every other module is private.
PUBLIC_MODULES = {"__init__", "__main__", "conformance", "testing"}


def test_public_names_are_pinned() -> None:
    assert sorted(fsm_protocol.__all__) == PUBLIC
    assert len(set(fsm_protocol.__all__)) == len(fsm_protocol.__all__)


@pytest.mark.parametrize("name", PUBLIC)
def test_public_name_exists_and_is_reexported(name: str) -> None:
    obj = getattr(fsm_protocol, name)
    namespace: dict[str, object] = {}
    exec(f"from fsm_protocol import {name} as obj", namespace)
    assert namespace["obj"] is obj
    module = getattr(obj, "__module__", None)
    if isinstance(module, str):  # classes, functions, and instances of our classes
        assert module == "fsm_protocol" or module.startswith("fsm_protocol."), (name, module)
        parts = module.split(".")[1:]
        # Defined in the package itself, or in a private module re-exported here.
        assert not parts or any(p.startswith("_") for p in parts), (name, module)


def test_star_import_gives_exactly_the_public_names() -> None:
    namespace: dict[str, object] = {}
    exec("from fsm_protocol import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == PUBLIC


def test_every_other_module_is_private() -> None:
    modules = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert "__init__" in modules
    public = [m for m in modules if not m.startswith("_") and m not in PUBLIC_MODULES]
    assert public == [], f"make these private (prefix _): {public}"


def test_conformance_module_when_present() -> None:
    conformance = importlib.import_module("fsm_protocol.conformance")
    for name in getattr(conformance, "__all__", ()):
        assert hasattr(conformance, name), name


@pytest.mark.parametrize("name", FINAL)
def test_engine_and_runtime_classes_are_final(name: str) -> None:
    cls = getattr(fsm_protocol, name)
    assert isinstance(cls, type)
    assert getattr(cls, "__final__", False) is True, f"decorate {name} with @typing.final"


def test_type_tests_pass_mypy_strict() -> None:
    # --follow-imports=silent: the package's own errors are the package's mypy
    # run's business; this checks only how a user's code type-checks against it.
    stdout, stderr, status = mypy.api.run(
        [
            "--config-file",
            str(REPO / "setup.cfg"),
            "--strict",
            "--follow-imports=silent",
            "--no-error-summary",
            "--show-error-codes",
            str(TYPE_TESTS),
        ]
    )
    assert status == 0 and not stdout, stdout + stderr
