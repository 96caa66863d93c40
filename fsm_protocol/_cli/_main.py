"""The ``fsm-protocol`` command line.

Each subcommand is one ``_add_<name>(subparsers)`` function that declares its
arguments and sets ``run`` to a handler taking the parsed namespace and
returning the exit code. To add a subcommand, write such a function and list
it in ``_SUBCOMMANDS``.

Exit codes, for every subcommand:

* 0: success;
* 1: the input was read and is wrong (for ``validate``: a chart has problems);
* 2: the input could not be used at all (a missing file, bad arguments).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import TYPE_CHECKING

from .._base._errors import Problem
from .._base._files import Unusable, read_text
from .._base._resources import shipped_chart_paths
from .._core._loader import check_chart_text
from ._conform_cli import add_check, add_conform
from ._demo import add_demo
from ._diagram_cli import add_diagram
from ._explore_cli import add_explore
from ._net_cli import add_keys, add_modeller, add_worker

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_UNUSABLE = 2

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

Handler = Callable[[argparse.Namespace], int]


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _version() -> str:
    try:
        return metadata.version("fsm-protocol")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


# ---------------------------------------------------------------- validate


def _run_validate(args: argparse.Namespace) -> int:
    names: list[str] = list(args.files)
    if not names:
        shipped = shipped_chart_paths()
        if not shipped:
            print(
                "fsm-protocol: no shipped charts found; the installation is broken "
                "(reinstall fsm-protocol, or name chart files to check)",
                file=sys.stderr,
            )
            return EXIT_UNUSABLE
        names = [str(path) for path in shipped.values()]

    problems: list[Problem] = []
    bad_files: set[str] = set()
    checked = 0
    unusable = 0
    for name in names:
        try:
            text = read_text(name)
        except Unusable as exc:
            print(f"fsm-protocol validate: {exc}", file=sys.stderr)
            unusable += 1
            continue
        checked += 1
        _, found = check_chart_text(text, file=name)
        for problem in found:
            print(problem)
        if found:
            bad_files.add(name)
            problems.extend(found)

    if not args.quiet:
        if problems:
            print(f"{_plural(len(problems), 'problem')} in {_plural(len(bad_files), 'file')}")
        else:
            print(f"{_plural(checked, 'chart')} checked, 0 problems")
    if unusable:
        return EXIT_UNUSABLE
    return EXIT_PROBLEMS if problems else EXIT_OK


def _add_validate(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="check chart files and report every problem",
        description=(
            "Check chart files and print every problem as file:line:column: message (hint). "
            "With no FILE, check the charts that ship with fsm-protocol. "
            "Exit status: 0 clean, 1 problems found, 2 a file could not be read."
        ),
    )
    parser.add_argument("files", nargs="*", metavar="FILE", help="chart files (YAML)")
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="print only the problems, no summary line"
    )
    parser.set_defaults(run=_run_validate)


# -------------------------------------------------------------------- main

_SUBCOMMANDS: tuple[Callable[[Subparsers], None], ...] = (
    _add_validate,
    add_demo,
    add_modeller,
    add_worker,
    add_keys,
    add_diagram,
    add_check,
    add_conform,
    add_explore,
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="fsm-protocol",
        description="Statecharts for the modeller/worker protocol: validate, run and test them.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: The arguments after the program name; ``sys.argv[1:]`` by default.

    Returns:
        The exit code (argparse itself exits with 2 on bad arguments).
    """
    args = build_parser().parse_args(argv)
    run: Handler = args.run
    return run(args)
