"""Names a chart may use for guards, actions and activities.

A role's Python side is one class whose methods are named ``guard_<name>``,
``action_<name>`` and ``do_<name>``. The validator reads the names off that
class, so a chart can never refer to code that does not exist, and nobody
keeps a second list in sync by hand.
"""

from __future__ import annotations

import importlib

import attrs

from ._chart import Role

GUARD_PREFIX = "guard_"
ACTION_PREFIX = "action_"
ACTIVITY_PREFIX = "do_"

# Where each role's bindings live, imported lazily to keep the loader light.
_ROLE_CLASSES = {
    Role.WORKER: ("fsm_protocol._runtime._worker", "WorkerBindings"),
    Role.MODELLER: ("fsm_protocol._runtime._modeller", "LinkBindings"),
}


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


def binding_names(role: Role) -> BindingNames:
    """The names that ``role``'s Python bindings provide."""
    module_name, class_name = _ROLE_CLASSES[role]
    owner = getattr(importlib.import_module(module_name), class_name)
    return BindingNames.from_class(owner)
