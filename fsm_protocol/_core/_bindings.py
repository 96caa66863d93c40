"""Names a chart may use for guards, actions and activities.

A role's Python side is one class whose methods are named ``guard_<name>``,
``action_<name>`` and ``do_<name>``. The validator reads the names off that
class, so a chart can never refer to code that does not exist, and nobody
keeps a second list in sync by hand. Which class plays which role is the
runtime's knowledge (``fsm_protocol._runtime._roles``): the loader checks names
only against the ones it is given.
"""

from __future__ import annotations

import attrs

GUARD_PREFIX = "guard_"
ACTION_PREFIX = "action_"
ACTIVITY_PREFIX = "do_"


@attrs.frozen
class BindingNames:
    """The guard, action and activity names one side provides."""

    guards: frozenset[str] = frozenset()
    actions: frozenset[str] = frozenset()
    activities: frozenset[str] = frozenset()

    @classmethod
    def from_class(cls, owner: type) -> BindingNames:
        """Read the names off a class's ``guard_``, ``action_`` and ``do_`` methods."""

        def names(prefix: str) -> frozenset[str]:
            return frozenset(n[len(prefix) :] for n in dir(owner) if n.startswith(prefix))

        return cls(names(GUARD_PREFIX), names(ACTION_PREFIX), names(ACTIVITY_PREFIX))
