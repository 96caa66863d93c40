"""fsm-protocol: the modeller/worker task protocol as explicit state machines.

The public API is exactly what this module re-exports; everything else lives
in private modules and may change without notice.

Importing the package loads only the pure layers: the chart model, loader,
engine, algorithms, exporters and checker. The runtime, network and kit names
(``run_worker``, ``connect``, ``JobSigner``...) are imported on first use, so
loading, validating, stepping, drawing and checking a chart never import trio
or cryptography (``tests/test_purity.py`` holds this).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._algo._algorithms import (
    BatchFailed,
    BatchInfo,
    Datasource,
    Item,
    ListDatasource,
    ModellerAlgorithm,
    WorkerAlgorithm,
)
from ._algo._protocols import (
    EchoProtocol,
    ProtocolFactory,
    ProtocolRegistry,
    UsageLimit,
    WorkerContext,
    WorkerPlan,
    registry,
)
from ._base._errors import (
    BrokenTransportError,
    ChartError,
    ClosedTransportError,
    ConfigError,
    DecodeError,
    FsmProtocolError,
    InternalError,
    PodResponseError,
    Problem,
    ProtocolViolation,
    TransportError,
)
from ._base._reports import ErrorReport
from ._core._bindings import BindingNames
from ._core._chart import Chart, Location, Role, State, Timer, Transition
from ._core._engine import Event, Machine, Snapshot, Step, snapshot_from_dict, snapshot_to_dict
from ._core._loader import check_chart_text, load_chart, load_chart_text
from ._core._shipped import shipped_chart
from ._export._diagram import render_graphviz, to_dot, to_mermaid, to_plantuml
from ._export._scxml import from_scxml, to_scxml
from ._export._sequence import read_trace, to_mermaid_sequence, to_sequence_svg
from ._wire._messages import (
    MODELLER,
    AbortReason,
    JobRejectBody,
    JobRequestBody,
    Message,
    MessageType,
    Meta,
    RejectReason,
    ResourceConsumed,
    TaskAbortBody,
    body_of,
    decode,
    encode,
)

if TYPE_CHECKING:
    from ._net._auth import (
        JobSigner,
        generate_key,
        load_private_key,
        load_public_key,
        require_signed_jobs,
    )
    from ._net._tcp import HandshakeError, Limits, PodListener, TcpTransport, connect
    from ._runtime._executor import Violation
    from ._runtime._modeller import (
        Progress,
        ResultKey,
        TaskStatus,
        TaskTimeouts,
        WorkerOutcome,
        run_modeller,
    )
    from ._runtime._task import Hooks, TaskOutcome, run_task
    from ._runtime._transport import MemoryTransport, Transport, memory_transport_pair
    from ._runtime._worker import FAILURE_LIMIT, Pod, WorkerReport, run_worker

__version__ = "0.1.0"

__all__ = [
    "FAILURE_LIMIT",
    "MODELLER",
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

# Public names from the runtime, network and kit layers, and the module each
# lives in. ``__getattr__`` imports that module the first time the name is used.
_LAZY: dict[str, str] = {
    "JobSigner": "._net._auth",
    "generate_key": "._net._auth",
    "load_private_key": "._net._auth",
    "load_public_key": "._net._auth",
    "require_signed_jobs": "._net._auth",
    "HandshakeError": "._net._tcp",
    "Limits": "._net._tcp",
    "PodListener": "._net._tcp",
    "TcpTransport": "._net._tcp",
    "connect": "._net._tcp",
    "Violation": "._runtime._executor",
    "Progress": "._runtime._modeller",
    "ResultKey": "._runtime._modeller",
    "TaskStatus": "._runtime._modeller",
    "TaskTimeouts": "._runtime._modeller",
    "WorkerOutcome": "._runtime._modeller",
    "run_modeller": "._runtime._modeller",
    "Hooks": "._runtime._task",
    "TaskOutcome": "._runtime._task",
    "run_task": "._runtime._task",
    "MemoryTransport": "._runtime._transport",
    "Transport": "._runtime._transport",
    "memory_transport_pair": "._runtime._transport",
    "FAILURE_LIMIT": "._runtime._worker",
    "Pod": "._runtime._worker",
    "WorkerReport": "._runtime._worker",
    "run_worker": "._runtime._worker",
}


# Hidden from type checkers, so that a misspelt name is still an error there:
# they see the real types through the TYPE_CHECKING imports above.
if not TYPE_CHECKING:

    def __getattr__(name: str) -> Any:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, __name__), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
