"""Type-checked by tests/test_public_api.py with ``mypy --strict``; never run.

The runtime's names in ``fsm_protocol`` and the kit's in ``fsm_protocol.conformance``
are imported on first use; type checkers must still see their real types, and
a misspelt name must still be an error.
"""

from __future__ import annotations

from typing_extensions import assert_type

import fsm_protocol
import fsm_protocol.conformance
from fsm_protocol import FAILURE_LIMIT, Pod, TaskTimeouts, WorkerReport
from fsm_protocol.conformance import Report, Verdict, catalogue, check_trace

assert_type(FAILURE_LIMIT, int)
assert_type(Pod("pod-1").pod_id, str)
assert_type(TaskTimeouts().response_timeout_s, float)
assert_type(fsm_protocol.Pod, type[Pod])
assert_type(WorkerReport, type[WorkerReport])
assert_type(Verdict("PASS"), Verdict)
assert_type(catalogue(fsm_protocol.Role.WORKER)[0].name, str)
assert_type(check_trace([]).ok, bool)


def passed(report: Report) -> bool:
    return report.passed


misspelt = fsm_protocol.run_wroker  # type: ignore[attr-defined]
misspelt_kit = fsm_protocol.conformance.confrom  # type: ignore[attr-defined]
