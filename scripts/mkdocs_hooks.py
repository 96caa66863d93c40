"""mkdocs hooks: draw the chart SVGs inline, so that they can be read.

A page asks for a picture with ``<div class="fsm-chart" data-svg="diagrams/worker.svg"></div>``
(a path relative to docs/). The hook puts the SVG itself there, at its full size, in a
scrollable frame that docs/js/chart-zoom.js gives zoom buttons, wheel zoom and drag to
pan. Inline (not in an ``<img>``) the browser shows each state's description, which
Graphviz writes as the node's tooltip, on hover.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

_PLACEHOLDER = re.compile(r'<div class="fsm-chart" data-svg="([^"]+)"></div>')
_PROLOGUE = re.compile(r"\A.*?(?=<svg\b)", re.S)
# Graphviz writes a node's tooltip as <a xlink:title="...">; a <title> child is what every
# browser shows on hover.
_TOOLTIP = re.compile(r'(<a\b[^>]*\bxlink:title="([^"]*)"[^>]*>)')


def _inline(docs: Path, name: str) -> str:
    path = (docs / name).resolve()
    if docs.resolve() not in path.parents or path.suffix != ".svg":
        raise ValueError(f"fsm-chart: {name!r} is not an SVG file under docs/")
    svg = _PROLOGUE.sub("", path.read_text(encoding="utf-8"), count=1)
    svg = _TOOLTIP.sub(lambda m: f"{m.group(1)}<title>{m.group(2)}</title>", svg)
    link = html.escape(name)
    return (
        f'<div class="fsm-chart" data-svg="{link}">'
        '<div class="fsm-chart-tools">'
        '<button type="button" data-zoom="in" title="zoom in">+</button>'
        '<button type="button" data-zoom="out" title="zoom out">&minus;</button>'
        '<button type="button" data-zoom="fit" title="fit the frame">fit</button>'
        '<button type="button" data-zoom="full" title="full size">1:1</button>'
        f'<a href="{link}">open the SVG</a>'
        "</div>"
        f'<div class="fsm-chart-frame">{svg}</div>'
        "</div>"
    )


def on_page_content(html_text: str, page: Any, config: Any, files: Any) -> str:
    docs = Path(config["docs_dir"])
    return _PLACEHOLDER.sub(lambda m: _inline(docs, m.group(1)), html_text)
