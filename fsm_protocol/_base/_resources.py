"""Where the shipped chart files are, installed or not.

An installed wheel carries the charts as the package data of
``fsm_protocol.statecharts``. A source checkout run without installing has no
such package, so the charts are read from the repository's ``statecharts/``
folder instead. Both give the same names.
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path

from ._errors import ConfigError

_PACKAGE = "fsm_protocol.statecharts"
_SUFFIX = ".yaml"
# Source checkout: <repo>/fsm_protocol/_base/_resources.py -> <repo>/statecharts
_CHECKOUT_DIR = Path(__file__).resolve().parents[2] / "statecharts"


def _from_package() -> dict[str, Path]:
    try:
        root = resources.files(_PACKAGE)
    except ModuleNotFoundError:
        return {}
    # Invariant: the wheel is installed unzipped (zip_safe = False), so every
    # entry of the package is a real file; anything else is ignored.
    return {
        entry.name[: -len(_SUFFIX)]: entry
        for entry in root.iterdir()
        if isinstance(entry, Path) and entry.name.endswith(_SUFFIX) and entry.is_file()
    }


def _from_checkout() -> dict[str, Path]:
    if not _CHECKOUT_DIR.is_dir():
        return {}
    return {path.stem: path for path in _CHECKOUT_DIR.glob("*" + _SUFFIX) if path.is_file()}


def shipped_chart_paths() -> dict[str, Path]:
    """The charts that ship with fsm-protocol, by name.

    Returns:
        A mapping such as ``{"modeller": Path(...), "worker": Path(...)}``,
        sorted by name; empty only if the installation is broken.
    """
    found = _from_package() or _from_checkout()
    return dict(sorted(found.items()))


def shipped_chart_path(name: str) -> Path:
    """The file of the shipped chart called ``name`` (``"worker"``, ``"modeller"``).

    Raises:
        ConfigError: If no shipped chart has that name.
    """
    paths = shipped_chart_paths()
    try:
        return paths[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(paths), n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(paths) or 'none'}"
        raise ConfigError(f"no shipped chart named {name!r} ({hint})") from None
