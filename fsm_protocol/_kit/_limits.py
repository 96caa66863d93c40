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
STDERR_LINES: Final = 15
# The most lines the kit takes from one implementation in one case; a peer that
# babbles past this has its link cut, so it cannot fill the kit's memory.
MAX_LINES: Final = 20_000
MAX_DRAIN_LINES: Final = 1_000


# A worker that takes longer than this to answer its JOB_REQUEST (start-up included)
# gets every later case slowed down in proportion, so that the cases built on short
# timeouts still mean what they say.
FAST_ANSWER: Final = 0.15
