"""Hypothesis strategies for the library's values. Grows with every feature.

Each strategy generates only *valid* values, so a test that needs a bad one
builds it from a good one and breaks exactly one thing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

from fsm_protocol._messages import (
    JSON,
    AbortReason,
    JobAcceptBody,
    JobRejectBody,
    JobRequestBody,
    LogMessageBody,
    Message,
    MessageType,
    Meta,
    RejectReason,
    ResourceConsumed,
    ScenarioBody,
    TaskAbortBody,
)

# Small collections keep examples readable and the suite fast.
_SMALL = 4


def json_values(*, max_leaves: int = 12) -> st.SearchStrategy[JSON]:
    """Any JSON value (no NaN or infinity, which JSON cannot carry)."""
    scalars = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text()
    )
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=_SMALL)
            | st.dictionaries(st.text(), children, max_size=_SMALL)
        ),
        max_leaves=max_leaves,
    )


def json_objects() -> st.SearchStrategy[dict[str, JSON]]:
    """A JSON object with arbitrary values."""
    return st.dictionaries(st.text(), json_values(max_leaves=6), max_size=_SMALL)


def names() -> st.SearchStrategy[str]:
    """Task ids, pod ids and other names: any non-empty text."""
    return st.text(min_size=1, max_size=20)


def resources_consumed() -> st.SearchStrategy[ResourceConsumed]:
    return st.builds(
        ResourceConsumed,
        resource_type=st.text(max_size=10),
        resource_identifier=st.text(max_size=10),
        amount=st.integers(),
    )


def metas() -> st.SearchStrategy[Meta]:
    """Any valid ``meta``, from empty to every key set."""
    return st.builds(
        Meta,
        batch_number=st.none() | st.integers(min_value=0),
        total_batches=st.none() | st.integers(),
        algorithm_index=st.integers(min_value=0, max_value=100),
        resources_consumed=st.lists(resources_consumed(), max_size=2).map(tuple),
        reason=st.none() | st.text(max_size=20),
    )


def job_request_bodies() -> st.SearchStrategy[JobRequestBody]:
    protocols = st.builds(
        lambda extra, class_name: {**extra, "class_name": class_name}, json_objects(), st.text()
    )
    return st.builds(
        JobRequestBody,
        protocol=protocols,
        pod_identifiers=st.lists(names(), max_size=_SMALL).map(tuple),
        batched_execution=st.booleans(),
        run_on_new_data_only=st.booleans(),
        force_rerun_failed_files=st.booleans(),
        test_run=st.booleans(),
        project_id=st.none() | st.text(),
        options=json_objects(),
    )


def scenario_bodies() -> st.SearchStrategy[ScenarioBody]:
    return st.builds(
        ScenarioBody,
        pods=st.lists(names(), max_size=_SMALL).map(tuple),
        job=job_request_bodies(),
        response_timeout_s=st.floats(min_value=0, max_value=1e6),
        require_all_pods=st.booleans(),
        job_overrides=st.dictionaries(names(), json_objects(), max_size=2),
    )


_NO_BODY: st.SearchStrategy[None] = st.none()

# What each type's body may be; typed bodies go through Message.make's conversion.
_BODIES: dict[MessageType, Callable[[], st.SearchStrategy[Any]]] = {
    MessageType.JOB_REQUEST: job_request_bodies,
    MessageType.JOB_ACCEPT: lambda: st.builds(JobAcceptBody, pod_id=names()),
    MessageType.JOB_REJECT: lambda: st.builds(
        JobRejectBody,
        reason=st.sampled_from(RejectReason),
        details=st.lists(st.text(), max_size=_SMALL).map(tuple),
    ),
    MessageType.PREPARING_DATA: lambda: _NO_BODY,
    MessageType.CONFIGURING_TASK: lambda: _NO_BODY,
    MessageType.PREPARING_DATA_BATCHES: lambda: _NO_BODY,
    MessageType.ALGORITHM_EXCHANGE: json_objects,
    MessageType.NUMBER_OF_BATCHES: lambda: st.just(-1) | st.integers(min_value=1),
    MessageType.CURRENT_BATCH_ID: lambda: st.integers(min_value=0),
    MessageType.TASK_START: lambda: _NO_BODY,
    MessageType.EVALUATION_RESULTS: json_values,
    MessageType.BATCHES_COMPLETE: lambda: st.sampled_from(["BATCHES_ONLY", "TASK_COMPLETE"]),
    MessageType.TASK_COMPLETE: lambda: _NO_BODY,
    MessageType.TASK_ABORT: lambda: st.builds(
        TaskAbortBody,
        message=st.text(),
        reason=st.sampled_from(AbortReason),
        exception_type=st.none() | st.text(max_size=20),
        traceback_summary=st.none() | st.text(),
    ),
    MessageType.TASK_CANCEL: lambda: _NO_BODY,
    MessageType.ONLINE_CHECK: st.text,
    MessageType.ONLINE_RESPONSE: st.text,
    MessageType.LOG_MESSAGE: lambda: st.builds(
        LogMessageBody,
        level=st.sampled_from(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]),
        message=st.text(),
    ),
    MessageType.CONFORMANCE_SCENARIO: scenario_bodies,
}


def bodies(type: MessageType) -> st.SearchStrategy[Any]:
    """Valid bodies for ``type``: a typed body class where one exists, else raw JSON.

    Either form can be passed to :meth:`Message.make`.
    """
    return _BODIES[type]()


def messages(type: MessageType | None = None) -> st.SearchStrategy[Message]:
    """Valid messages of every type, or only of ``type``."""
    types = st.sampled_from(MessageType) if type is None else st.just(type)
    return types.flatmap(
        lambda t: st.builds(
            Message.make,
            st.just(t),
            task_id=names(),
            sender=names(),
            recipient=names(),
            seq=st.integers(min_value=0),
            body=bodies(t),
            meta=metas(),
        )
    )
