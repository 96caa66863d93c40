"""Loading the charts ``explore`` steps, validated against the explorer's own bindings.

The runtime's bindings live on top of trio; validating against these instead
keeps the explorer free of it, and a user's chart that names a guard, action
or activity the explorer does not know is refused with its location.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from .._base._errors import ChartError, Problem
from .._base._files import read_text
from .._base._resources import shipped_chart_path
from .._core._bindings import BindingNames
from .._core._chart import Chart, Role
from .._core._loader import load_chart_text
from ._model import LinkBindings, WorkerBindings

_NAMES = {
    Role.WORKER: BindingNames.from_class(WorkerBindings),
    Role.MODELLER: BindingNames.from_class(LinkBindings),
}


def load_for_explore(role: Role, path: str | Path | None = None) -> Chart:
    """Load ``role``'s chart from ``path`` (the shipped one by default) for exploring.

    Raises:
        ChartError: The file is not a valid chart of that role.
        Unusable: The file cannot be read.
    """
    name = str(path) if path is not None else str(shipped_chart_path(role.value))
    text = read_text(name, "chart")
    try:
        declared = yaml.safe_load(text)
    except yaml.YAMLError:
        declared = None  # the loader reports where
    found = declared.get("role") if isinstance(declared, dict) else None
    if found is not None and found != role.value:
        raise ChartError(
            [
                Problem(
                    name,
                    1,
                    1,
                    f"expected a {role.value} chart, found role {found!r}",
                    f"pass the {role.value} chart here",
                )
            ]
        )
    return load_chart_text(text, file=name, bindings=_NAMES[role])
