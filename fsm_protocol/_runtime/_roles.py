"""Which bindings class plays each role.

This is the runtime's knowledge: the loader below it checks a chart's guard,
action and activity names only against the names it is given, and the callers
that should check a role's names (``fsm-protocol validate``, the runtime's own
chart loading) give it these.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from .._core._bindings import BindingNames
from .._core._chart import Role
from ._modeller import LinkBindings
from ._worker import WorkerBindings

ROLE_BINDINGS: Final[Mapping[Role, type]] = MappingProxyType(
    {Role.WORKER: WorkerBindings, Role.MODELLER: LinkBindings}
)


def binding_names(role: Role) -> BindingNames:
    """The names that ``role``'s Python bindings provide."""
    return BindingNames.from_class(ROLE_BINDINGS[role])


def role_binding_names() -> dict[Role, BindingNames]:
    """Every role's binding names, for the loader's ``role_bindings=``."""
    return {role: binding_names(role) for role in ROLE_BINDINGS}
