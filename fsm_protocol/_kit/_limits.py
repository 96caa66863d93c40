"""The conformance kit's own waits and bounds, shared by its endpoints and cases."""

from __future__ import annotations

from typing import Final

KIT_MODELLER: Final = "modeller"
KIT_SENDER: Final = "conformance"

# Kit-side waits, in seconds at time_scale 1.
CANCEL_WAIT: Final = 1.0
IDLE_WAIT: Final = 2.0
DRAIN_WAIT: Final = 1.0
EXIT_WAIT: Final = 2.0
# A modeller under test owes a message (TASK_CANCEL after an abort or a late accept,
# TASK_START once every pod is ready, ONLINE_RESPONSE, ...): the kit waits this long
# for it, from the line that made it owed, before it ends the case naming it.
OWED_WAIT: Final = 2.0
# A modeller under test owes every pod its JOB_REQUEST from the scenario line on;
# its own start-up counts, so this wait is longer.
REQUEST_WAIT: Final = 5.0
# The last resort: no case runs longer than this (seconds at time_scale 1), even
# against a peer that keeps talking without making progress. Every other wait is
# bounded by the step it waits at, so a broken peer meets one of those first.
CASE_CAP: Final = 60.0
STDERR_LINES: Final = 15
# The most lines the kit takes from one implementation in one case; a peer that
# babbles past this has its link cut, so it cannot fill the kit's memory.
MAX_LINES: Final = 20_000
MAX_DRAIN_LINES: Final = 1_000


# A worker's answer to its JOB_REQUEST includes its process start-up. The slowest
# answer seen so far, plus this margin, is added to the waits measured from a start (the
# response timeout, a held-back JOB_REQUEST), so the cases built on short timeouts still
# mean what they say; the waits between messages do not change.
START_MARGIN: Final = 0.25


def start_allowance(latency: float) -> float:
    """What the kit adds to a wait that includes a start, after answers this slow."""
    return latency + START_MARGIN if latency > 0 else 0.0
