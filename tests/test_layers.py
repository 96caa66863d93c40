"""Layering: every import in the package points down the layer order.

The order is the one docs/design.md draws ("Layers"): a module may import
from its own subpackage and from the layers below it, never from above, and
an import under ``if TYPE_CHECKING:`` or inside a function counts as much as
one at the top. Third-party libraries are held to their layers the same way.
The test reads the source (``ast``), so it sees the imports a run might skip.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from importlib.util import resolve_name
from pathlib import Path

import attrs
import pytest

import fsm_protocol

PACKAGE = Path(fsm_protocol.__file__).resolve().parent
DESIGN = PACKAGE.parent / "docs" / "design.md"

# Bottom to top. "public" is fsm_protocol/__init__.py, conformance.py,
# testing.py and __main__.py: the user's entry points, over everything.
LAYERS = (
    "_base",
    "_wire",
    "_core",
    "_algo",
    "_export",
    "_check",
    "_explore",
    "_runtime",
    "_net",
    "_kit",
    "_cli",
    "public",
)

# The third-party libraries each layer adds; a layer may use its own and those
# of the layers below it. transitions is further held to one module: it is the
# reference backend behind one adapter, and nothing else may see it.
THIRD_PARTY = {
    "_base": {"attrs"},
    "_wire": {"cattrs", "orjson"},
    "_core": {"yaml", "transitions"},
    "_runtime": {"trio", "exceptiongroup"},  # exceptiongroup: trio's backport before 3.11
    "_net": {"cryptography", "nats", "trio_asyncio"},  # nats-py and trio-asyncio: the broker
    "_kit": {"hypothesis"},
    "_cli": {"rich", "shtab"},
    "public": {"hypothesis"},
}
ONLY_IN = {"transitions": {"fsm_protocol._core._transitions_adapter"}}


@attrs.frozen
class Import:
    source: str  # the importing module, e.g. fsm_protocol._core._loader
    target: str  # the imported module, absolute
    where: str  # file:line


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "public"


def imports(path: Path, root: Path = PACKAGE) -> Iterator[Import]:
    """Every import in ``path``, wherever it sits, with relative ones resolved."""
    source = module_name(path, root)
    package = source if path.name == "__init__.py" else source.rpartition(".")[0]
    where = path.relative_to(root.parent)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(source, alias.name, f"{where}:{node.lineno}")
        elif isinstance(node, ast.ImportFrom):
            target = resolve_name("." * node.level + (node.module or ""), package)
            if node.module is None:
                # from . import x: x may be a module of the package.
                for alias in node.names:
                    yield Import(source, f"{target}.{alias.name}", f"{where}:{node.lineno}")
            else:
                yield Import(source, target, f"{where}:{node.lineno}")
        elif isinstance(node, ast.Call) and _is_import_module(node):
            yield from _dynamic(node, source, package, f"{where}:{node.lineno}")


def _is_import_module(node: ast.Call) -> bool:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return name in ("import_module", "__import__")


def _dynamic(node: ast.Call, source: str, package: str, where: str) -> Iterator[Import]:
    """``importlib.import_module("...")``: an edge like any other, or a hidden one."""
    arg = node.args[0] if node.args else None
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        yield Import(source, resolve_name(arg.value, package), where)
    else:
        yield Import(source, "<dynamic>", where)


def all_imports() -> list[Import]:
    return [imp for path in modules() for imp in imports(path)]


def upward(imp: Import) -> str | None:
    """Why ``imp`` breaks the layer order, or None if it does not."""
    if imp.target == "<dynamic>":
        # Loading the user's own module by name (--algorithm pkg.mod:Class) is
        # the CLI's job; below it, a computed import would hide an edge.
        return None if layer(imp.source) in ("_cli", "public") else "a computed import"
    if imp.target != "fsm_protocol" and not imp.target.startswith("fsm_protocol."):
        return None
    own, other = layer(imp.source), layer(imp.target)
    if own == other:
        return None
    if LAYERS.index(other) > LAYERS.index(own):
        return f"{other} is above {own}"
    return None


def test_every_subpackage_has_a_place_in_the_order() -> None:
    subpackages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert subpackages == set(LAYERS) - {"public"}


def test_imports_point_down() -> None:
    found = all_imports()
    assert len({imp.source for imp in found}) >= 40  # the walk saw the package
    wrong = [
        f"{imp.where}: {imp.source} imports {imp.target} ({why})"
        for imp in found
        if (why := upward(imp)) is not None
    ]
    assert wrong == [], "imports that point up the layers:\n" + "\n".join(wrong)


def test_type_checking_and_function_imports_are_seen() -> None:
    # The walk must see the edges that a plain run of the module never takes.
    init = {imp.target for imp in imports(PACKAGE / "__init__.py")}
    assert "fsm_protocol._runtime._worker" in init  # under TYPE_CHECKING
    modeller = {imp.target for imp in imports(PACKAGE / "_runtime" / "_modeller.py")}
    assert "trio" in modeller  # inside run_modeller


def _third_party(imp: Import) -> str | None:
    top = imp.target.split(".")[0]
    if not top or top == "fsm_protocol" or top == "<dynamic>" or top in sys.stdlib_module_names:
        return None
    return top


def test_third_party_libraries_stay_in_their_layers() -> None:
    wrong = []
    for imp in all_imports():
        library = _third_party(imp)
        if library is None:
            continue
        own = LAYERS.index(layer(imp.source))
        allowed = set().union(*(THIRD_PARTY.get(name, set()) for name in LAYERS[: own + 1]))
        if library not in allowed:
            wrong.append(f"{imp.where}: {library} is not for {layer(imp.source)}")
        elif library in ONLY_IN and imp.source not in ONLY_IN[library]:
            wrong.append(f"{imp.where}: {library} only in {', '.join(sorted(ONLY_IN[library]))}")
    assert wrong == [], "\n".join(wrong)


def test_core_needs_only_attrs_cattrs_and_yaml() -> None:
    # The chart model, loader and engine: what a tool that reads charts pays for.
    used = {
        (imp.source, library)
        for imp in all_imports()
        if layer(imp.source) == "_core" and (library := _third_party(imp)) is not None
    }
    assert {library for _, library in used} <= {"attrs", "cattrs", "yaml", "transitions"}
    assert {source for source, library in used if library == "transitions"} <= {
        "fsm_protocol._core._transitions_adapter"
    }


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from .._runtime._worker import Pod", "_runtime is above _core"),
        ("from ..conformance import check_trace", "public is above _core"),
        ("import fsm_protocol", "public is above _core"),
        ("from ._chart import Chart", None),
        ("from .._wire._messages import Message", None),
        ("if TYPE_CHECKING:\n    from .._kit._run import conform", "_kit is above _core"),
        ("def f():\n    import fsm_protocol._cli._main", "_cli is above _core"),
        ("importlib.import_module('fsm_protocol._runtime._worker')", "_runtime is above _core"),
        ("importlib.import_module(name)", "a computed import"),
    ],
)
def test_the_rule_catches_each_form(tmp_path: Path, source: str, expected: str | None) -> None:
    # A module in a scratch fsm_protocol/_core folder, walked as the package is.
    path = tmp_path / "fsm_protocol" / "_core" / "_scratch.py"
    path.parent.mkdir(parents=True)
    path.write_text(source + "\n", encoding="utf-8")
    found = list(imports(path, root=tmp_path / "fsm_protocol"))
    reasons = {upward(imp) for imp in found}
    assert reasons == {expected}


def test_design_doc_draws_the_same_order() -> None:
    text = DESIGN.read_text(encoding="utf-8")
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| `?([\w.]+)`?", section, re.M)
    documented = [name for _, name in sorted(rows, key=lambda row: int(row[0]))]
    assert documented == [*LAYERS[:-1], "public"], documented
    assert "tests/test_layers.py" in section


def test_every_subpackage_ships_in_the_wheel() -> None:
    """setup.cfg lists its packages by hand: a new layer left off it is missing once installed."""
    import configparser

    config = configparser.ConfigParser()
    config.read(PACKAGE.parent / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    on_disk = {f"fsm_protocol.{d.name}" for d in PACKAGE.iterdir() if (d / "__init__.py").exists()}
    assert on_disk <= listed, sorted(on_disk - listed)
