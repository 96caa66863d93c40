"""The shipped charts, loaded and validated once per process."""

from __future__ import annotations

import functools

from .._base._resources import shipped_chart_path
from ._chart import Chart
from ._loader import load_chart


@functools.cache
def shipped_chart(name: str) -> Chart:
    """The validated shipped chart ``name`` (``"worker"`` or ``"modeller"``)."""
    return load_chart(shipped_chart_path(name))
