"""A griffe extension for the API reference: Sphinx roles in docstrings become links.

The docstrings say ``:func:`load_chart``` and ``:meth:`fire``` (Sphinx's roles, which
editors and ``help()`` readers know). mkdocstrings renders Markdown, where those would
stay raw text; this turns each into an autorefs cross-reference to the public name,
``[`load_chart`][fsm_protocol.load_chart]``, which ``mkdocs build --strict`` fails on
when it does not resolve. A role naming something that has no page (a private module,
the standard library) becomes inline code.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from griffe import Extension

_ROLE = re.compile(r":(func|class|meth|attr|data|exc|mod|obj):`~?([^`<]+?)(?:\s*<([^>]+)>)?`")
_PUBLIC_MODULES = ("fsm_protocol", "fsm_protocol.conformance", "fsm_protocol.testing")


def _public() -> dict[str, str]:
    """Each public name, and the path the API reference renders it under."""
    names: dict[str, str] = {}
    for module_name in reversed(_PUBLIC_MODULES):
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", ()):
            names[name] = f"{module_name}.{name}"
    return names


class SphinxRoles(Extension):
    def __init__(self) -> None:
        self.public = _public()

    def _target(self, role: str, text: str, explicit: str | None, owner: str | None) -> str | None:
        if explicit:
            return explicit.strip()
        head, _, rest = text.partition(".")
        if head in self.public:
            return self.public[head] + (f".{rest}" if rest else "")
        if text.startswith("fsm_protocol.") and text.split(".")[1] in ("conformance", "testing"):
            return text
        if role in ("meth", "attr") and owner is not None:
            return f"{owner}.{text}"
        return None

    def _rewrite(self, text: str, owner: str | None) -> str:
        def replace(match: re.Match[str]) -> str:
            role, name, explicit = match.group(1), match.group(2).strip(), match.group(3)
            shown = name.rsplit(".", 1)[-1] if match.group(0)[len(role) + 3] == "~" else name
            target = self._target(role, name, explicit, owner)
            return f"[`{shown}`][{target}]" if target else f"`{shown}`"

        return _ROLE.sub(replace, text)

    def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
        if obj.docstring is None:
            return
        owner = None
        cls = obj if obj.is_class else (obj.parent if obj.parent is not None else None)
        if cls is not None and getattr(cls, "is_class", False) and cls.name in self.public:
            owner = self.public[cls.name]
        obj.docstring.value = self._rewrite(obj.docstring.value, owner)
