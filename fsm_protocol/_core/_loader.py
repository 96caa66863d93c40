"""Chart files: YAML text -> located data -> raw model -> validated :class:`Chart`.

Each step is separate so every problem can be reported with its file, line
and column, and so that *all* problems come out of one run.
"""

from __future__ import annotations

import difflib
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import cattrs
import yaml
from cattrs.cols import homogenous_tuple_structure_factory
from cattrs.errors import (
    AttributeValidationNote,
    BaseValidationError,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_mapping_structure_fn

from .._base._errors import ChartError, Problem
from .._wire._messages import MessageType
from ._bindings import BindingNames
from ._chart import (
    Chart,
    Location,
    Role,
    State,
    Timer,
    Transition,
    parse_guard,
    parse_message_event,
    sent_by,
)

PathKey = tuple[str | int, ...]


# ---------------------------------------------------------------- raw model
# These mirror the file one to one; cattrs checks keys and types against them.


@attrs.frozen
class RawTimer:
    seconds: float | str
    event: str


@attrs.frozen
class RawTransition:
    event: str
    target: str | None = None
    guards: tuple[str, ...] = ()
    actions: tuple[str, ...] = ()
    description: str = ""


@attrs.frozen
class RawState:
    description: str = ""
    initial: str | None = None
    final: bool = False
    do: str | None = None
    on_entry: tuple[str, ...] = ()
    on_exit: tuple[str, ...] = ()
    after: tuple[RawTimer, ...] = ()
    transitions: tuple[RawTransition, ...] = ()
    states: dict[str, RawState] = attrs.field(factory=dict)


@attrs.frozen
class RawChart:
    chart: str
    initial: str
    states: dict[str, RawState]
    role: str | None = None
    version: int = 1
    description: str = ""
    options: dict[str, float] = attrs.field(factory=dict)
    events: dict[str, str] = attrs.field(factory=dict)


attrs.resolve_types(RawState, globals(), locals())


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        # Never echo a whole file (an XML or JSON file read as YAML is one long string).
        if len(value) > 60:
            return f"a string of {len(value)} characters starting {value[:40]!r}"
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


class _Mismatch(TypeError):
    def __init__(self, expected: str, found: Any) -> None:
        super().__init__(f"expected {expected}, found {_describe(found)}")


def _strict(kind: type, check: Callable[[Any], bool], words: str) -> Callable[[Any, Any], Any]:
    def hook(value: Any, _: Any) -> Any:
        if not check(value):
            raise _Mismatch(words, value)
        return kind(value)

    return hook


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(detailed_validation=True, forbid_extra_keys=True)
    conv.register_structure_hook(str, _strict(str, lambda v: isinstance(v, str), "a string"))
    conv.register_structure_hook(
        bool, _strict(bool, lambda v: isinstance(v, bool), "true or false")
    )
    conv.register_structure_hook(
        int, _strict(int, lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer")
    )
    conv.register_structure_hook(
        float,
        _strict(
            float,
            lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            "a number",
        ),
    )

    def opt_str(value: Any, _: Any) -> str | None:
        if value is not None and not isinstance(value, str):
            raise _Mismatch("a string or null", value)
        result: str | None = value
        return result

    def seconds(value: Any, _: Any) -> float | str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _Mismatch("a number of seconds or an option name", value)

    def str_tuple(value: Any, _: Any) -> tuple[str, ...]:
        if isinstance(value, str):  # a lone name is a one-item list
            return (value,)
        if not isinstance(value, list):
            raise _Mismatch("a list of names", value)
        for item in value:
            if not isinstance(item, str):
                raise _Mismatch("a list of names", item)
        return tuple(value)

    def guarded(
        words: str,
        check: Callable[[Any], bool],
        factory: Callable[[Any], Callable[[Any, Any], Any]],
    ) -> Callable[[Any, Any], Any]:
        # Invariant: cattrs bakes a field's hook into a class's hook when it
        # generates it, so the inner hooks are generated on first use, once every
        # guard below is registered; nested values then get the guards too.
        inner: dict[Any, Callable[[Any, Any], Any]] = {}

        def hook(value: Any, type_: Any) -> Any:
            if not check(value):
                raise _Mismatch(words, value)
            if type_ not in inner:
                inner[type_] = factory(type_)
            return inner[type_](value, type_)

        return hook

    def is_mapping(value: Any) -> bool:
        return isinstance(value, dict)

    def is_list(value: Any) -> bool:
        return isinstance(value, list)

    def exactly(wanted: Any) -> Callable[[Any], bool]:
        return lambda type_: bool(type_ == wanted)

    conv.register_structure_hook_func(exactly(str | None), opt_str)
    conv.register_structure_hook_func(exactly(float | str), seconds)
    conv.register_structure_hook_func(exactly(tuple[str, ...]), str_tuple)
    for cls in (RawTimer, RawTransition, RawState, RawChart):
        conv.register_structure_hook(
            cls, guarded("a mapping", is_mapping, conv.gen_structure_attrs_fromdict)
        )
    for seq in (tuple[RawTimer, ...], tuple[RawTransition, ...]):
        conv.register_structure_hook_func(
            exactly(seq),
            guarded("a list", is_list, lambda t: homogenous_tuple_structure_factory(t, conv)),
        )
    for mapping in (dict[str, RawState], dict[str, float], dict[str, str]):
        conv.register_structure_hook_func(
            exactly(mapping),
            guarded("a mapping", is_mapping, lambda t: make_mapping_structure_fn(t, conv)),
        )
    return conv


_converter = _make_converter()


# ------------------------------------------------------------- located YAML


@attrs.define
class _Located:
    """Plain data plus where each value and key was written."""

    file: str
    values: dict[PathKey, Location] = attrs.field(factory=dict)
    keys: dict[PathKey, Location] = attrs.field(factory=dict)
    problems: list[Problem] = attrs.field(factory=list)
    # Nodes already turned into data, and how many nodes were visited again through
    # aliases: an alias bomb repeats a few nodes exponentially often.
    seen: set[int] = attrs.field(factory=set)
    alias_uses: int = 0

    def at(self, path: PathKey, *, key: bool = False) -> Location:
        """Best location for ``path``: its key or value, else the nearest parent."""
        probe = path
        while True:
            table = self.keys if key else self.values
            if probe in table:
                return table[probe]
            if probe in self.values:
                return self.values[probe]
            if not probe:
                return Location(self.file, 1, 1)
            probe = probe[:-1]

    def problem(self, path: PathKey, message: str, hint: str = "", *, key: bool = False) -> None:
        loc = self.at(path, key=key)
        self.problems.append(Problem(loc.file, loc.line, loc.column, message, hint))


def _mark(file: str, node: yaml.Node) -> Location:
    return Location(file, node.start_mark.line + 1, node.start_mark.column + 1)


_MERGE_TAG = "tag:yaml.org,2002:merge"

MAX_YAML_NESTING = 64
"""The deepest nesting of mappings and lists a chart file may have."""

MAX_YAML_ALIAS_NODES = 1000
"""How many nodes a chart file may repeat through aliases (``*name``) in all."""


class _Unreadable(Exception):
    """A YAML node that cannot become plain data; it ends the YAML step, like a syntax error."""

    def __init__(self, node: yaml.Node, message: str, hint: str) -> None:
        super().__init__(message)
        self.node = node
        self.message = message
        self.hint = hint


# libyaml's parser, when PyYAML was built with it, reads charts several times faster;
# the nodes and their marks are the same. Its error messages are vaguer, so a file
# it refuses is parsed again by the pure-Python parser to report the problem.
_COMPOSER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _construct(node: yaml.Node, ctor: yaml.SafeLoader) -> Any:
    try:
        return ctor.construct_object(node, deep=True)
    except yaml.YAMLError as exc:
        what = getattr(exc, "problem", None) or str(exc)
        raise _Unreadable(node, f"YAML error: {what}", "use plain YAML: no custom tags") from exc


def _to_data(
    node: yaml.Node, path: PathKey, loc: _Located, ctor: yaml.SafeLoader, open_: frozenset[int]
) -> Any:
    if id(node) in open_:
        raise _Unreadable(
            node, "recursive YAML alias", "an alias (*name) must not point into its own anchor"
        )
    loc.values[path] = _mark(loc.file, node)
    if id(node) in loc.seen:
        loc.alias_uses += 1
        if loc.alias_uses > MAX_YAML_ALIAS_NODES:
            raise _Unreadable(
                node,
                f"YAML aliases repeat more than {MAX_YAML_ALIAS_NODES} nodes",
                "write the repeated parts out, or use fewer aliases (*name)",
            )
    else:
        loc.seen.add(id(node))
    if len(path) >= MAX_YAML_NESTING and isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
        raise _Unreadable(
            node,
            f"nesting deeper than {MAX_YAML_NESTING} levels",
            "a chart needs only a few levels: flatten the file",
        )
    if isinstance(node, yaml.MappingNode):
        inner = open_ | {id(node)}
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                raise _Unreadable(
                    key_node,
                    "YAML merge keys (<<) are not supported",
                    "write the keys out, or put the shared transitions on a compound state",
                )
            key = _construct(key_node, ctor)
            if not isinstance(key, str):
                # YAML 1.1 reads on/off/yes/no/null and numbers as non-strings;
                # carry on with the text as written so later checks still make sense.
                text = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key)
                where = _mark(loc.file, key_node)
                loc.problems.append(
                    Problem(
                        loc.file,
                        where.line,
                        where.column,
                        f"key {text!r} is read as {_describe(key)}, not as a name",
                        f"quote it: '{text}'",
                    )
                )
                key = text
            if key in result:
                first = loc.keys[path + (key,)]
                loc.problems.append(
                    Problem(
                        loc.file,
                        key_node.start_mark.line + 1,
                        key_node.start_mark.column + 1,
                        f"duplicate key {key!r}",
                        f"first defined at line {first.line}; rename or merge one of them",
                    )
                )
                continue
            loc.keys[path + (key,)] = _mark(loc.file, key_node)
            result[key] = _to_data(value_node, path + (key,), loc, ctor, inner)
        return result
    if isinstance(node, yaml.SequenceNode):
        inner = open_ | {id(node)}
        return [_to_data(item, path + (i,), loc, ctor, inner) for i, item in enumerate(node.value)]
    return _construct(node, ctor)


def _read_yaml(text: str, file: str) -> tuple[Any, _Located]:
    """Plain data and its locations; data is None when the text is not usable YAML.

    Duplicate keys are recorded as problems but do not stop the later steps:
    the first value is kept so the rest of the file is still checked.
    """
    located = _Located(file)
    try:
        try:
            node = yaml.compose(text, Loader=_COMPOSER)
        except yaml.YAMLError:
            # Parse again in pure Python: its messages name what it found.
            node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = exc.problem or "invalid YAML"
        located.problems.append(
            Problem(file, line, col, f"YAML syntax error: {what}", "fix the YAML syntax")
        )
        return None, located
    except yaml.YAMLError as exc:
        located.problems.append(Problem(file, 1, 1, f"YAML error: {exc}", "fix the YAML syntax"))
        return None, located
    except RecursionError:
        located.problems.append(
            Problem(
                file,
                1,
                1,
                f"nesting far deeper than {MAX_YAML_NESTING} levels",
                "a chart needs only a few levels: flatten the file",
            )
        )
        return None, located
    if node is None:
        located.problems.append(
            Problem(file, 1, 1, "the file is empty", "a chart needs chart:, initial: and states:")
        )
        return None, located
    try:
        return _to_data(node, (), located, yaml.SafeLoader(""), frozenset()), located
    except _Unreadable as exc:
        where = _mark(file, exc.node)
        located.problems.append(Problem(file, where.line, where.column, exc.message, exc.hint))
        return None, located


# ------------------------------------------------------------ cattrs errors


def _walk_errors(exc: BaseException, path: PathKey) -> Iterator[tuple[PathKey, BaseException]]:
    if isinstance(exc, (ClassValidationError, IterableValidationError)):
        with_notes, without = exc.group_exceptions()
        for sub, note in with_notes:
            if isinstance(note, AttributeValidationNote):
                yield from _walk_errors(sub, path + (note.name,))
            elif isinstance(note, IterableValidationNote):
                yield from _walk_errors(sub, path + (note.index,))
            else:  # pragma: no cover - cattrs only adds the two note kinds
                yield from _walk_errors(sub, path)
        for sub in without:
            yield from _walk_errors(sub, path)
    else:
        yield path, exc


def _known_keys(path: PathKey) -> list[str]:
    """Field names valid at ``path``, to suggest a fix for an unknown key."""
    cls: type = RawChart
    i = 0
    while i < len(path):
        part = path[i]
        if part == "states":
            cls, i = RawState, i + 2
        elif part == "transitions":
            cls, i = RawTransition, i + 2
        elif part == "after":
            cls, i = RawTimer, i + 2
        else:
            i += 1
    return [a.name for a in attrs.fields(cls)]


def _structure(data: Any, located: _Located) -> RawChart | None:
    try:
        return _converter.structure(data, RawChart)
    except BaseValidationError as exc:
        for path, err in _walk_errors(exc, ()):
            if isinstance(err, ForbiddenExtraKeysError):
                known = _known_keys(path)
                for extra in sorted(err.extra_fields):
                    close = difflib.get_close_matches(extra, known, n=1)
                    hint = (
                        f"did you mean {close[0]!r}?"
                        if close
                        else "known keys: " + ", ".join(known)
                    )
                    located.problem(path + (extra,), f"unknown key {extra!r}", hint, key=True)
            elif isinstance(err, KeyError):
                missing = str(err.args[0]) if err.args else "?"
                located.problem(path, f"missing required key {missing!r}", f"add {missing}: ...")
            elif isinstance(err, _Mismatch):
                located.problem(path, f"{_key_name(path)}: {err}")
            else:
                located.problem(path, f"{_key_name(path)}: invalid value ({err})")
        return None


def _key_name(path: PathKey) -> str:
    text = "$"
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


# ------------------------------------------------------------- semantics


@attrs.define
class _Builder:
    raw: RawChart
    located: _Located
    bindings: BindingNames | None
    role_bindings: Mapping[Role, BindingNames] | None = None
    role: Role | None = None
    states: dict[str, State] = attrs.field(factory=dict)
    state_paths: dict[str, PathKey] = attrs.field(factory=dict)
    transitions: list[tuple[Transition, PathKey]] = attrs.field(factory=list)

    def problem(self, path: PathKey, message: str, hint: str = "", *, key: bool = False) -> None:
        self.located.problem(path, message, hint, key=key)

    def suggest(self, name: str, names: Iterable[str]) -> str:
        close = difflib.get_close_matches(name, list(names), n=1)
        return f"did you mean {close[0]!r}?" if close else ""

    # -- states ------------------------------------------------------------

    def collect(self, raws: Mapping[str, RawState], parent: str | None, path: PathKey) -> None:
        for name, raw in raws.items():
            spath = path + ("states", name)
            if name in self.states:
                first = self.located.at(self.state_paths[name], key=True)
                self.problem(
                    spath,
                    f"duplicate state {name!r}",
                    f"first defined at line {first.line}; state names are unique across the chart",
                    key=True,
                )
                continue
            if not name or not name.replace("_", "").isalnum() or name[0].isdigit():
                self.problem(
                    spath,
                    f"invalid state name {name!r}",
                    "use letters, digits and underscores, starting with a letter",
                    key=True,
                )
            loc = self.located.at(spath, key=True)
            timers = tuple(
                Timer(t.seconds, t.event, self.located.at(spath + ("after", i)))
                for i, t in enumerate(raw.after)
            )
            self.states[name] = State(
                name=name,
                parent=parent,
                children=tuple(raw.states),
                initial=raw.initial,
                final=raw.final,
                do=raw.do,
                on_entry=raw.on_entry,
                on_exit=raw.on_exit,
                after=timers,
                description=raw.description,
                loc=loc,
            )
            self.state_paths[name] = spath
            for i, rt in enumerate(raw.transitions):
                tpath = spath + ("transitions", i)
                self.transitions.append(
                    (
                        Transition(
                            source=name,
                            event=rt.event,
                            target=rt.target,
                            guards=rt.guards,
                            actions=rt.actions,
                            description=rt.description,
                            loc=self.located.at(tpath),
                        ),
                        tpath,
                    )
                )
            self.collect(raw.states, name, spath)

    def check_states(self) -> None:
        raw = self.raw
        if raw.initial not in self.states:
            self.problem(
                ("initial",),
                f"initial state {raw.initial!r} is not defined",
                self.suggest(raw.initial, self.states) or "name a state under states:",
            )
        elif self.states[raw.initial].parent is not None:
            self.problem(
                ("initial",),
                f"initial state {raw.initial!r} is nested inside "
                f"{self.states[raw.initial].parent!r}",
                "the chart's initial state must be a top-level state",
            )
        for name, state in self.states.items():
            spath = self.state_paths[name]
            if state.children:
                if state.initial is None:
                    self.problem(
                        spath,
                        f"compound state {name!r} has no initial state",
                        f"add initial: one of {', '.join(state.children)}",
                        key=True,
                    )
                elif state.initial not in state.children:
                    self.problem(
                        spath + ("initial",),
                        f"initial state {state.initial!r} of {name!r} is not one of its children",
                        self.suggest(state.initial, state.children)
                        or f"choose one of {', '.join(state.children)}",
                    )
            elif state.initial is not None:
                self.problem(
                    spath + ("initial",),
                    f"state {name!r} has initial: but no child states",
                    "remove initial: or add states:",
                )
            if state.final:
                extra = [k for k in ("children", "do", "after") if getattr(state, k)]
                if any(t.source == name for t, _ in self.transitions):
                    extra.append("transitions")
                if extra:
                    self.problem(
                        spath,
                        f"final state {name!r} has {', '.join(extra)}",
                        "a final state ends the machine: remove them or drop final: true",
                        key=True,
                    )

    # -- events, bindings, timers -------------------------------------------

    def check_event(self, event: str, path: PathKey) -> None:
        parsed = parse_message_event(event)
        if parsed is not None:
            direction, mtype = parsed
            if mtype is MessageType.CONFORMANCE_SCENARIO:
                self.problem(
                    path, f"event {event!r} is the conformance control line, not a message"
                )
            elif self.role is not None:
                peer = Role.MODELLER if self.role is Role.WORKER else Role.WORKER
                sender = self.role if direction == "send" else peer
                if mtype not in sent_by(sender):
                    self.problem(
                        path,
                        f"event {event!r}: a {sender.value} never sends {mtype.value}",
                        f"check the direction (the chart's role is {self.role.value})",
                    )
            return
        if event in self.raw.events:
            return
        direction, sep, name = event.partition(":")
        if sep and direction in ("send", "recv"):
            hint = self.suggest(name, [t.value for t in MessageType])
            self.problem(
                path,
                f"event {event!r} names an unknown message type {name!r}",
                hint or "see the message types in docs/wire.md",
            )
            return
        known = list(self.raw.events) + [f"recv:{t.value}" for t in MessageType]
        self.problem(
            path,
            f"event {event!r} is neither a message event (send:TYPE, recv:TYPE) nor declared",
            self.suggest(event, known) or "declare it under events:",
        )

    def check_names(self, kind: str, names: Iterable[str], path: PathKey) -> None:
        if self.bindings is None:
            return
        provided = getattr(self.bindings, kind)
        for i, name in enumerate(names):
            bare = parse_guard(name)[0] if kind == "guards" else name
            if bare not in provided:
                where = path + (i,) if kind != "activities" else path
                role = self.role.value if self.role else "?"
                self.problem(
                    where,
                    f"{kind[:-1] if kind != 'activities' else 'activity'} {bare!r} "
                    f"is not provided by the {role} bindings",
                    self.suggest(bare, provided)
                    or f"known: {', '.join(sorted(provided)) or 'none'}",
                )

    def check_transitions(self) -> None:
        seen: dict[tuple[str, str], list[tuple[Transition, PathKey]]] = {}
        for t, tpath in self.transitions:
            self.check_event(t.event, tpath + ("event",))
            if t.target is not None and t.target not in self.states:
                self.problem(
                    tpath + ("target",),
                    f"unknown target state {t.target!r}",
                    self.suggest(t.target, self.states) or "name a state defined under states:",
                )
            self.check_names("guards", t.guards, tpath + ("guards",))
            self.check_names("actions", t.actions, tpath + ("actions",))
            for other, opath in seen.get((t.source, t.event), ()):
                if not other.guards or not t.guards or set(other.guards) == set(t.guards):
                    first = self.located.at(opath)
                    self.problem(
                        tpath,
                        f"two transitions from {t.source!r} on {t.event!r} with no guard "
                        "to separate them",
                        f"the other is at line {first.line}; give both distinct guards",
                    )
            seen.setdefault((t.source, t.event), []).append((t, tpath))
        for name, state in self.states.items():
            spath = self.state_paths[name]
            self.check_names("actions", state.on_entry, spath + ("on_entry",))
            self.check_names("actions", state.on_exit, spath + ("on_exit",))
            if state.do is not None:
                self.check_names("activities", [state.do], spath + ("do",))
            for i, timer in enumerate(state.after):
                tpath = spath + ("after", i)
                if timer.event not in self.raw.events:
                    self.problem(
                        tpath + ("event",),
                        f"timer event {timer.event!r} is not declared",
                        "declare it under events: (timers raise internal events)",
                    )
                if isinstance(timer.seconds, str):
                    if timer.seconds not in self.raw.options:
                        self.problem(
                            tpath + ("seconds",),
                            f"timer seconds {timer.seconds!r} is not a declared option",
                            self.suggest(timer.seconds, self.raw.options)
                            or _number_hint(timer.seconds)
                            or "declare it under options: with a default",
                        )
                elif not (timer.seconds > 0 and math.isfinite(timer.seconds)):
                    self.problem(
                        tpath + ("seconds",), f"timer seconds must be > 0, found {timer.seconds}"
                    )
        for name, value in self.raw.options.items():
            if not (value >= 0 and math.isfinite(value)):
                self.problem(("options", name), f"option {name!r} must be >= 0, found {value}")

    # -- graph ----------------------------------------------------------------

    def successors(self, chart: Chart, leaf: str) -> set[str]:
        result = set()
        for t in chart.transitions_from(leaf):
            if t.target is not None and t.target in self.states:
                result.add(chart.settle(t.target))
        return result

    def check_graph(self, chart: Chart) -> None:
        start = chart.settle(chart.initial)
        reached = {start}
        queue = deque([start])
        edges: dict[str, set[str]] = {}
        while queue:
            leaf = queue.popleft()
            edges[leaf] = self.successors(chart, leaf)
            for nxt in edges[leaf]:
                if nxt not in reached:
                    reached.add(nxt)
                    queue.append(nxt)
        active = {a for leaf in reached for a in chart.ancestors(leaf)}
        for name in self.states:
            if name not in active:
                self.problem(
                    self.state_paths[name],
                    f"state {name!r} is unreachable from the initial state",
                    "add a transition into it or remove it",
                    key=True,
                )
        # Backwards search from the final leaves finds who can still end.
        reverse: dict[str, set[str]] = {}
        for src, dsts in edges.items():
            for dst in dsts:
                reverse.setdefault(dst, set()).add(src)
        can_end = {leaf for leaf in reached if self.states[leaf].final}
        queue = deque(can_end)
        while queue:
            leaf = queue.popleft()
            for prev in reverse.get(leaf, ()):
                if prev not in can_end:
                    can_end.add(prev)
                    queue.append(prev)
        if not any(s.final for s in self.states.values()):
            self.problem(
                ("states",), "the chart has no final state", "mark one state final: true", key=True
            )
            return
        for leaf in sorted(reached - can_end):
            self.problem(
                self.state_paths[leaf],
                f"state {leaf!r} has no path to a final state",
                "add a transition out of it (an abort, a timeout) or mark it final: true",
                key=True,
            )

    def build(self) -> Chart | None:
        raw = self.raw
        if raw.role is not None:
            try:
                self.role = Role(raw.role)
            except ValueError:
                self.problem(("role",), f"unknown role {raw.role!r}", "use worker or modeller")
        if self.bindings is None and self.role is not None and self.role_bindings is not None:
            self.bindings = self.role_bindings.get(self.role)
        if raw.version != 1:
            self.problem(("version",), f"unsupported chart version {raw.version}", "use version: 1")
        for name in raw.events:
            if parse_message_event(name) is not None or ":" in name:
                self.problem(
                    ("events", name),
                    f"internal event {name!r} must not look like a message event",
                    "message events need no declaration",
                    key=True,
                )
        if not raw.states:
            self.problem(("states",), "the chart has no states", "add states:")
        self.collect(raw.states, None, ())
        self.check_states()
        self.check_transitions()
        if self.located.problems:
            return None
        chart = Chart(
            name=raw.chart,
            role=self.role,
            initial=raw.initial,
            states=tuple(self.states.values()),
            transitions=tuple(t for t, _ in self.transitions),
            events=dict(raw.events),
            options=dict(raw.options),
            version=raw.version,
            description=raw.description,
            source=self.located.file,
        )
        self.check_graph(chart)
        return None if self.located.problems else chart


def _number_hint(text: str) -> str:
    """YAML 1.1 reads ``1e3`` as text; say so instead of calling it an option."""
    try:
        value = float(text)
    except ValueError:
        return ""
    return f"YAML reads {text!r} as text, not a number: write {value:g} or use a decimal point"


def _sorted(problems: list[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda p: (p.file, p.line, p.column))


def check_chart_text(
    text: str,
    *,
    file: str = "<memory>",
    bindings: BindingNames | None = None,
    role_bindings: Mapping[Role, BindingNames] | None = None,
) -> tuple[Chart | None, list[Problem]]:
    """Load and validate chart text, returning the chart (or None) and every problem.

    Args:
        text: The chart's YAML text.
        file: The file name problems are located in.
        bindings: The guard, action and activity names to check against.
        role_bindings: When ``bindings`` is not given, the names to check
            against for each role; the chart's ``role:`` picks one. With
            neither, the names are not checked (the engine still refuses
            bindings that lack a name the chart uses).
    """
    data, located = _read_yaml(text, file)
    if data is None and located.problems:
        return None, _sorted(located.problems)
    if not isinstance(data, dict):
        located.problem(
            (), f"a chart must be a mapping, found {_describe(data)}", "start with chart: NAME"
        )
        return None, located.problems
    raw = _structure(data, located)
    if raw is None:
        return None, _sorted(located.problems)
    chart = _Builder(raw, located, bindings, role_bindings).build()
    return chart, _sorted(located.problems)


def load_chart_text(
    text: str,
    *,
    file: str = "<memory>",
    bindings: BindingNames | None = None,
    role_bindings: Mapping[Role, BindingNames] | None = None,
) -> Chart:
    """Like :func:`load_chart` for text already in memory."""
    chart, problems = check_chart_text(
        text, file=file, bindings=bindings, role_bindings=role_bindings
    )
    if chart is None:
        raise ChartError(problems)
    return chart


def load_chart(
    path: str | Path,
    *,
    bindings: BindingNames | None = None,
    role_bindings: Mapping[Role, BindingNames] | None = None,
) -> Chart:
    """Load and validate a chart file.

    Args:
        path: The YAML file.
        bindings: The guard, action and activity names to check against.
            By default they are not checked here: the engine refuses bindings
            that lack a guard or action the chart uses when it builds a
            machine, and ``fsm-protocol validate`` checks the shipped roles'.
        role_bindings: When ``bindings`` is not given, the names to check
            against for each role; the chart's ``role:`` picks one.

    Returns:
        The validated chart.

    Raises:
        ChartError: With every problem found, each located as file:line:column.
    """
    path = Path(path)
    return load_chart_text(
        path.read_text(encoding="utf-8"),
        file=str(path),
        bindings=bindings,
        role_bindings=role_bindings,
    )
