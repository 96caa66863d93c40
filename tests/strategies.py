"""Hypothesis strategies for the library's values. Grows with every feature.

Each strategy generates only *valid* values, so a test that needs a bad one
builds it from a good one and breaks exactly one thing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from hypothesis import strategies as st

from fsm_protocol import EchoProtocol, UsageLimit
from fsm_protocol._wire._messages import (
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

_LIMIT = 2**53


def wire_text(*, min_size: int = 0, max_size: int | None = None) -> st.SearchStrategy[str]:
    """Text the wire can carry: anything but lone UTF-16 surrogates (no UTF-8 form)."""
    return st.text(st.characters(exclude_categories=["Cs"]), min_size=min_size, max_size=max_size)


def wire_integers(min_value: int = -_LIMIT, max_value: int = _LIMIT) -> st.SearchStrategy[int]:
    """Integers the wire can carry: within ±2^53, which a double holds exactly."""
    return st.integers(min_value=max(min_value, -_LIMIT), max_value=min(max_value, _LIMIT))


def json_values(*, max_leaves: int = 12) -> st.SearchStrategy[JSON]:
    """Any JSON value (no NaN or infinity, which JSON cannot carry)."""
    scalars = (
        st.none()
        | st.booleans()
        | wire_integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | wire_text()
    )
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=_SMALL)
            | st.dictionaries(wire_text(), children, max_size=_SMALL)
        ),
        max_leaves=max_leaves,
    )


def json_objects() -> st.SearchStrategy[dict[str, JSON]]:
    """A JSON object with arbitrary values."""
    return st.dictionaries(wire_text(), json_values(max_leaves=6), max_size=_SMALL)


def names() -> st.SearchStrategy[str]:
    """Task ids, pod ids and other names: any non-empty text."""
    return wire_text(min_size=1, max_size=20)


def resources_consumed() -> st.SearchStrategy[ResourceConsumed]:
    return st.builds(
        ResourceConsumed,
        resource_type=wire_text(max_size=10),
        resource_identifier=wire_text(max_size=10),
        amount=wire_integers(),
    )


def metas() -> st.SearchStrategy[Meta]:
    """Any valid ``meta``, from empty to every key set."""
    return st.builds(
        Meta,
        batch_number=st.none() | wire_integers(min_value=0),
        total_batches=st.none() | wire_integers(),
        algorithm_index=wire_integers(min_value=0, max_value=100),
        resources_consumed=st.lists(resources_consumed(), max_size=2).map(tuple),
        reason=st.none() | wire_text(max_size=20),
    )


def job_request_bodies() -> st.SearchStrategy[JobRequestBody]:
    protocols = st.builds(
        lambda extra, class_name: {**extra, "class_name": class_name}, json_objects(), wire_text()
    )
    return st.builds(
        JobRequestBody,
        protocol=protocols,
        pod_identifiers=st.lists(names(), max_size=_SMALL).map(tuple),
        batched_execution=st.booleans(),
        run_on_new_data_only=st.booleans(),
        force_rerun_failed_files=st.booleans(),
        test_run=st.booleans(),
        project_id=st.none() | wire_text(),
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
        details=st.lists(wire_text(), max_size=_SMALL).map(tuple),
    ),
    MessageType.PREPARING_DATA: lambda: _NO_BODY,
    MessageType.CONFIGURING_TASK: lambda: _NO_BODY,
    MessageType.PREPARING_DATA_BATCHES: lambda: _NO_BODY,
    MessageType.ALGORITHM_EXCHANGE: json_objects,
    MessageType.NUMBER_OF_BATCHES: lambda: st.just(-1) | wire_integers(min_value=1),
    MessageType.CURRENT_BATCH_ID: lambda: wire_integers(min_value=0),
    MessageType.TASK_START: lambda: _NO_BODY,
    MessageType.EVALUATION_RESULTS: json_values,
    MessageType.BATCHES_COMPLETE: lambda: st.sampled_from(["BATCHES_ONLY", "TASK_COMPLETE"]),
    MessageType.TASK_COMPLETE: lambda: _NO_BODY,
    MessageType.TASK_ABORT: lambda: st.builds(
        TaskAbortBody,
        message=wire_text(),
        reason=st.sampled_from(AbortReason),
        exception_type=st.none() | wire_text(max_size=20),
        traceback_summary=st.none() | wire_text(),
    ),
    MessageType.TASK_CANCEL: lambda: _NO_BODY,
    MessageType.ONLINE_CHECK: wire_text,
    MessageType.ONLINE_RESPONSE: wire_text,
    MessageType.LOG_MESSAGE: lambda: st.builds(
        LogMessageBody,
        level=st.sampled_from(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]),
        message=wire_text(),
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
            seq=wire_integers(min_value=0),
            body=bodies(t),
            meta=metas(),
        )
    )


# ------------------------------------------------------------ scenarios
#
# A scenario is one task for the property tests (tests/test_properties.py):
# the pods with their Echo configurations, the job's flags, and the faults and
# timings to inject. Everything that decides the schedule is drawn here, so a
# failing example replays exactly and shrinks.

MAX_PODS = 8
MAX_ITEMS = 50
MAX_BATCH_DELAY = 20
MAX_SETUP_DELAY = 50
FAULT_WINDOW = 600  # seconds of mock time in which a fault or a cancel can strike


@attrs.frozen
class Crash:
    """The worker's task is killed at ``at`` and its connection closed."""

    at: int


@attrs.frozen
class Silent:
    """From ``at`` on the worker neither reads nor writes, and never closes."""

    at: int


@attrs.frozen
class LateAnswer:
    """The worker's answer to the job request is held back ``delay`` seconds."""

    delay: int


Fault = Crash | Silent | LateAnswer


@attrs.frozen
class PodScenario:
    """One pod: its Echo configuration, its speed and its fault.

    ``invalid`` makes the configuration one a worker must refuse
    (``"batch_size"``: a batch size of 0; ``"duplicate"``: a repeated item).
    """

    pod_id: str
    items: tuple[str, ...]
    batch_size: int = 1
    fail_in_batch: tuple[str, ...] = ()
    fail_alone: tuple[str, ...] = ()
    limit: UsageLimit | None = None
    initial_setup: bool = False
    invalid: str | None = None
    setup_delay: int = 0
    batch_delays: tuple[int, ...] = (0,)
    fault: Fault | None = None

    def echo(self) -> EchoProtocol:
        """The configuration as the job request carries it (maybe invalid)."""
        items, size = self.items, self.batch_size
        if self.invalid == "batch_size":
            size = 0
        elif self.invalid == "duplicate":
            items = (*items, items[0]) if items else ("dup", "dup")
        return EchoProtocol(
            items=items,
            batch_size=size,
            fail_in_batch=self.fail_in_batch,
            fail_alone=self.fail_alone,
            inference_limit=self.limit,
            initial_setup=self.initial_setup,
        )


@attrs.frozen
class Scenario:
    """One task: its pods, the job's flags, a user cancel, and the schedule seed."""

    pods: tuple[PodScenario, ...]
    batched: bool = False
    test_run: bool = False
    require_all_pods: bool = False
    cancel_at: int | None = None
    schedule_seed: int = 0

    @property
    def faulty(self) -> frozenset[str]:
        """Pods that crash or go silent: their part of the run cannot be predicted."""
        return frozenset(p.pod_id for p in self.pods if isinstance(p.fault, (Crash, Silent)))

    @property
    def late(self) -> frozenset[str]:
        return frozenset(p.pod_id for p in self.pods if isinstance(p.fault, LateAnswer))


def faults(*, response_timeout: int) -> st.SearchStrategy[Fault | None]:
    """No fault (half the time), a crash, silence, or an answer after the response timeout."""
    at = wire_integers(min_value=0, max_value=FAULT_WINDOW)
    late = wire_integers(response_timeout + 1, response_timeout + 200)
    kinds: dict[str, st.SearchStrategy[Fault | None]] = {
        "none": st.none(),
        "crash": st.builds(Crash, at),
        "silent": st.builds(Silent, at),
        "late": st.builds(LateAnswer, late),
    }
    return st.sampled_from(["none", "none", "none", "crash", "silent", "late"]).flatmap(kinds.get)


@st.composite
def pod_scenarios(
    draw: st.DrawFn,
    pod_id: str,
    *,
    max_items: int = MAX_ITEMS,
    with_faults: bool = True,
    response_timeout: int = 100,
) -> PodScenario:
    count = draw(wire_integers(min_value=0, max_value=max_items))
    items = tuple(f"i{n}" for n in range(count))
    some = st.lists(st.sampled_from(items), unique=True).map(tuple) if items else st.just(())
    # Limits near what the items use, so that usage often lands exactly on the limit.
    used = wire_integers(min_value=0, max_value=20)
    headroom = wire_integers(min_value=-3, max_value=count + 3)
    limit = draw(
        st.none()
        | st.builds(lambda u, h: UsageLimit(limit=max(0, u + h), total_usage=u), used, headroom)
    )
    return PodScenario(
        pod_id=pod_id,
        items=items,
        batch_size=draw(wire_integers(min_value=1, max_value=12)),
        fail_in_batch=draw(some),
        fail_alone=draw(some),
        limit=limit,
        initial_setup=draw(st.booleans()),
        invalid=draw(st.sampled_from([None, None, None, None, None, "batch_size", "duplicate"])),
        setup_delay=draw(wire_integers(min_value=0, max_value=MAX_SETUP_DELAY)),
        batch_delays=draw(
            st.lists(wire_integers(0, MAX_BATCH_DELAY), min_size=1, max_size=5).map(tuple)
        ),
        fault=draw(faults(response_timeout=response_timeout)) if with_faults else None,
    )


@st.composite
def scenarios(
    draw: st.DrawFn,
    *,
    max_pods: int = MAX_PODS,
    max_items: int = MAX_ITEMS,
    with_faults: bool = True,
    with_cancel: bool = True,
    response_timeout: int = 100,
) -> Scenario:
    """Tasks of 1 to ``max_pods`` Echo workers, with faults and a cancel when asked."""
    count = draw(wire_integers(min_value=1, max_value=max_pods))
    pods = tuple(
        draw(
            pod_scenarios(
                f"pod{n}/p",
                max_items=max_items,
                with_faults=with_faults,
                response_timeout=response_timeout,
            )
        )
        for n in range(count)
    )
    cancel = st.none() | wire_integers(min_value=0, max_value=FAULT_WINDOW)
    return Scenario(
        pods=pods,
        batched=draw(st.booleans()),
        test_run=draw(st.booleans()),
        require_all_pods=draw(st.booleans()),
        cancel_at=draw(cancel) if with_cancel else None,
        schedule_seed=draw(wire_integers(min_value=0, max_value=2**32 - 1)),
    )
