"""fsm-protocol: the modeller/worker task protocol as explicit state machines.

The public API is exactly what this module re-exports; everything else lives
in private modules and may change without notice.
"""

from __future__ import annotations

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
