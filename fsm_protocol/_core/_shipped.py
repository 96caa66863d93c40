"""The shipped charts, loaded and validated once per process."""

from __future__ import annotations

import functools

from .._base._resources import shipped_chart_path
from ._bindings import BindingNames
from ._chart import Chart
from ._loader import load_chart


@functools.cache
def shipped_chart(name: str) -> Chart:
    """The validated shipped chart ``name`` (``"worker"`` or ``"modeller"``).

    Its guard, action and activity names are not checked against any bindings
    here; the runtime loads it with :func:`shipped_chart_for` and its own.
    """
    return load_chart(shipped_chart_path(name))


@functools.cache
def shipped_chart_for(name: str, bindings: BindingNames) -> Chart:
    """The shipped chart ``name``, also checked against ``bindings``' names."""
    return load_chart(shipped_chart_path(name), bindings=bindings)
