"""Shared test settings: Hypothesis profiles.

``ci`` (the default) keeps the whole suite fast on 2 cores; ``thorough`` runs
thousands of examples: ``pytest --hypothesis-profile=thorough -m slow`` for the
slow-marked tests, and for the property tests (see docs/testing.md)
``pytest --hypothesis-profile=thorough tests/test_properties.py
tests/test_oracle.py tests/test_machine_from_chart.py``. ``mutation`` is
``ci`` without shrinking, for ``scripts/mutate.py``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

settings.register_profile(
    "ci",
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile(
    "thorough",
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
# scripts/mutate.py: the ci profile without shrinking. A planted bug only has to be
# found; shrinking the failing example would only cost time.
settings.register_profile(
    "mutation",
    parent=settings.get_profile("ci"),
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
