"""The ``fsm-protocol`` command line.

Each subcommand is one ``_add_<name>(subparsers)`` function that declares its
arguments and sets ``run`` to a handler taking the parsed namespace and
returning the exit code. To add a subcommand, write such a function and list
it in ``_SUBCOMMANDS``.

Exit codes, for every subcommand:

* 0: success;
* 1: the input was read and is wrong (for ``validate``: a chart has problems);
* 2: the input could not be used at all (a missing file, bad arguments);
* 130: interrupted (Ctrl-C); 141: the reader of standard output went away.

Every subcommand takes ``-v/--verbose``, ``-q/--quiet`` and ``--log-format text|json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from .._base._errors import ConfigError, Problem
from .._base._files import Unusable, read_text
from .._base._resources import shipped_chart_paths
from .._core._loader import check_chart_text
from .._export._scxml import check_scxml_text
from .._runtime._roles import role_binding_names
from ._conform_cli import add_check, add_conform
from ._demo import add_demo
from ._diagram_cli import add_diagram
from ._explore_cli import add_explore
from ._logging import LOG_FORMATS, logging_to_stderr
from ._net_cli import add_keys, add_modeller, add_worker

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_UNUSABLE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
_SCXML_SUFFIXES = (".scxml", ".xml")
# Optional dependencies, by the extra that installs them (setup.cfg).
_EXTRAS = {"cryptography": "net", "hypothesis": "kit"}

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

    as_json = args.format == "json"
    problems: list[Problem] = []
    bad_files: set[str] = set()
    checked = 0
    unusable: list[dict[str, str]] = []
    report: list[dict[str, object]] = []
    # A chart with a role: names only guards, actions and activities that role's bindings have.
    role_bindings = role_binding_names()
    for name in names:
        try:
            text = read_text(name)
        except Unusable as exc:
            print(f"fsm-protocol validate: {exc}", file=sys.stderr)
            unusable.append({"file": name, "error": str(exc)})
            continue
        checked += 1
        if Path(name).suffix.lower() in _SCXML_SUFFIXES:
            _, found = check_scxml_text(text, file=name, role_bindings=role_bindings)
        else:
            _, found = check_chart_text(text, file=name, role_bindings=role_bindings)
        report.append({"file": name, "problems": [_problem_json(p) for p in found]})
        if not as_json:
            for problem in found:
                print(problem)
        if found:
            bad_files.add(name)
            problems.extend(found)

    if as_json:
        document = {"ok": not problems and not unusable, "files": report, "unusable": unusable}
        print(json.dumps(document, indent=2, ensure_ascii=False))
    elif not args.quiet:
        if problems:
            print(f"{_plural(len(problems), 'problem')} in {_plural(len(bad_files), 'file')}")
        else:
            print(f"{_plural(checked, 'chart')} checked, 0 problems")
    if unusable:
        return EXIT_UNUSABLE
    return EXIT_PROBLEMS if problems else EXIT_OK


def _problem_json(problem: Problem) -> dict[str, object]:
    return {
        "file": problem.file,
        "line": problem.line,
        "column": problem.column,
        "message": problem.message,
        "hint": problem.hint,
    }


def _add_validate(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="check chart files and report every problem",
        description=(
            "Check chart files and print every problem as file:line:column: message (hint). "
            "A .scxml (or .xml) file is read as SCXML, anything else as a YAML chart. "
            "With no FILE, check the charts that ship with fsm-protocol. "
            "Exit status: 0 clean, 1 problems found, 2 a file could not be read."
        ),
    )
    parser.add_argument("files", nargs="*", metavar="FILE", help="chart files (YAML or SCXML)")
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="print only the problems, no summary line"
    )
    parser.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="text (default), or one JSON document: ok, and each file's problems",
    )
    parser.set_defaults(run=_run_validate)


# ---------------------------------------------------------------- completion


def _run_completion(args: argparse.Namespace) -> int:
    import shtab

    print(shtab.complete(build_parser(), shell=args.shell))
    return EXIT_OK


def _add_completion(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "completion",
        help="print a shell completion script (bash, zsh or fish)",
        description=(
            "Print a completion script for SHELL on standard output. Bash: "
            "fsm-protocol completion bash > ~/.local/share/bash-completion/completions/"
            "fsm-protocol. Zsh: fsm-protocol completion zsh > ~/.zfunc/_fsm-protocol (with "
            "~/.zfunc on fpath). Fish: fsm-protocol completion fish > "
            "~/.config/fish/completions/fsm-protocol.fish."
        ),
    )
    parser.add_argument("shell", choices=("bash", "zsh", "fish"), metavar="SHELL")
    parser.set_defaults(run=_run_completion)


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
    _add_completion,
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
    for command in _leaf_parsers(parser):
        _add_common_options(command)
    return parser


def _leaf_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers that run something: each subcommand, and each sub-subcommand."""
    found: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found.extend(_leaf_parsers(child) or [child])
    return found


def _add_common_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output and logging")
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log more: info and tracebacks (-vv: debug)",
    )
    if "--quiet" not in parser._option_string_actions:
        group.add_argument("-q", "--quiet", action="store_true", help="log errors only")
    group.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="log records on standard error as text (default) or one JSON object per line",
    )
    # Errors in this subcommand's arguments show this subcommand's usage.
    parser.set_defaults(_parser=parser)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: The arguments after the program name; ``sys.argv[1:]`` by default.

    Returns:
        The exit code (argparse itself exits with 2 on bad arguments).
    """
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    command: argparse.ArgumentParser = getattr(args, "_parser", parser)
    if extras:
        command.error(f"unrecognized arguments: {' '.join(extras)}")
    run: Handler = args.run
    try:
        with logging_to_stderr(verbose=args.verbose, quiet=args.quiet, log_format=args.log_format):
            return run(args)
    except ConfigError as exc:
        # e.g. a missing optional dependency: the message says what to install.
        print(f"fsm-protocol {args.command}: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    except ModuleNotFoundError as exc:
        extra = _EXTRAS.get((exc.name or "").partition(".")[0])
        if extra is None:
            raise
        print(
            f"fsm-protocol {args.command}: this command needs {exc.name}, which the "
            f"'{extra}' extra installs: pip install 'fsm-protocol[{extra}]'",
            file=sys.stderr,
        )
        return EXIT_UNUSABLE
    except BaseException as exc:
        if _only(exc, KeyboardInterrupt):
            print(f"fsm-protocol {args.command}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        if _only(exc, BrokenPipeError):
            # The reader went away (``... | head``): stop quietly. Point stdout at
            # /dev/null so that the interpreter's final flush does not fail again.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return EXIT_BROKEN_PIPE
        raise


def _only(error: BaseException, kind: type[BaseException]) -> bool:
    """``error`` is a ``kind``, or a group (from trio) of nothing else."""
    if isinstance(error, kind):
        return True
    inner = getattr(error, "exceptions", None)
    return isinstance(inner, tuple) and bool(inner) and all(_only(e, kind) for e in inner)
