"""A small, strict interpreter for the subset of the ROS 2 XML launch format we use.

Why this exists: the ROS 2 ``launch`` / ``launch_ros`` packages and the ``ros2`` CLI
cannot be installed on our development machines (ROS 2 comes from PyPI wheels there),
yet our launch files are real ROS 2 XML launch files that ``ros2 launch`` reads on the
robots.  Tests and the demo must start *exactly* the graph such a file describes, so
this module reads the file into plain dataclasses and can start the nodes as
subprocesses with the same command line ``ros2 launch`` would use.

Supported (everything else is an error, on purpose, so that a file which would fail on
real ROS 2 fails here too, and typos never pass silently):

* ``<launch>`` (root; optional ``version`` attribute)
* ``<arg name= default= description=>`` -- an arg without ``default`` is required
* ``<let name= value=>``
* ``<node pkg= exec= name= namespace= output= respawn= args= ros_args=>`` with children
  ``<param name= value=>``, ``<param from="file.yaml"/>`` and ``<remap from= to=>``
* ``<group scoped=>`` containing any of the actions, and
  ``<push_ros_namespace namespace=>`` / ``<push-ros-namespace namespace=>``
* ``if=`` / ``unless=`` on every action (arg, let, node, group, push_ros_namespace)
* substitutions ``$(var NAME)``, ``$(env NAME)``, ``$(env NAME DEFAULT)``,
  ``$(find-pkg-share PKG)``, ``$(find-pkg-prefix PKG)`` and ``$(dirname)``; arguments may
  be quoted (``$(env X '')``) and nested (``$(var $(env WHICH))``).

Semantics follow ``launch`` / ``launch_ros``: the structure of the whole file (elements,
attributes, substitution names) is checked before anything runs, like the ROS frontend
parser does, while values (``$(var)``, ``$(env)``, package look-ups, param files) are
only resolved for actions whose ``if``/``unless`` let them run.  Groups are scoped by
default, so ``let``/``arg``/``push_ros_namespace`` inside them do not leak out.

This module deliberately does not import rclpy: reading a launch file must not need
a ROS context.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO
from xml.parsers import expat

__all__ = [
    "LaunchFileError",
    "NodeSpec",
    "LaunchDescription",
    "PackageFinder",
    "ament_prefix_finder",
    "parse_launch_file",
    "LaunchedGraph",
]

#: Maps a package name to its install prefix (``<prefix>/lib/<pkg>/<exec>`` holds its
#: executables and ``<prefix>/share/<pkg>`` its share files, which is the colcon layout
#: with and without ``--merge-install``).  Raise ``LookupError`` for unknown packages.
PackageFinder = Callable[[str], str]


class LaunchFileError(Exception):
    """A launch file that is malformed, uses unsupported features, or cannot be resolved.

    The message always names the file, the line and the offending element, e.g.
    ``demo.launch.xml:12: <node pkg="x" exec="y">: undefined launch argument 'rate'``.
    """

    def __init__(self, message: str, file: str = "", line: int = 0, element: str = "") -> None:
        super().__init__(message)
        self.file = file
        self.line = line
        self.element = element


# --------------------------------------------------------------------------------------
# Result dataclasses
# --------------------------------------------------------------------------------------


@dataclass
class NodeSpec:
    """One ``<node>`` of a launch file, with every substitution already resolved.

    ``namespace`` is absolute (``/robot``) or None when neither the node nor an enclosing
    ``push_ros_namespace`` set one.  ``params`` holds inline ``<param name value>`` values
    as the strings written in the file; the node parses them as YAML, exactly as with
    ``-p name:=value``.  ``respawn`` is recorded only: :class:`LaunchedGraph` does not
    respawn (a test wants to see a crash, not hide it).
    """

    package: str
    executable: str
    name: str | None = None
    namespace: str | None = None
    param_files: list[str] = field(default_factory=list)
    params: dict[str, str] = field(default_factory=dict)
    remaps: list[tuple[str, str]] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    ros_args: list[str] = field(default_factory=list)
    output: str = "log"
    respawn: bool = False

    @property
    def label(self) -> str:
        """Human-readable identity: the node name, or the executable if unnamed."""
        return self.name or self.executable

    @property
    def fully_qualified_name(self) -> str:
        """``/namespace/name`` (namespace ``/`` when none); uses the executable if unnamed."""
        ns = self.namespace or "/"
        return ns.rstrip("/") + "/" + self.label

    def executable_path(self, prefix_finder: PackageFinder | None = None) -> str:
        """Path of the executable: ``<prefix>/lib/<package>/<executable>``."""
        prefix = _find_prefix(prefix_finder or ament_prefix_finder, self.package)
        return os.path.join(prefix, "lib", self.package, self.executable)

    def command(self, prefix_finder: PackageFinder | None = None) -> list[str]:
        """The command line ``ros2 launch`` runs for this node.

        ``[exe, *args, ("--ros-args", *ros_args,)? "--ros-args", "-r", "__node:=NAME",
        "-r", "__ns:=NS", "--params-file", F..., "-p", "K:=V"..., "-r", "FROM:=TO"...]``;
        the name/namespace remaps appear only when set.  ``ros_args`` gets its own
        ``--ros-args`` block before ours, as launch_ros does.

        One deliberate difference: launch_ros writes inline params into a temporary
        YAML file; we pass them as ``-p``, which rcl applies after all params files
        (so inline values win), the same precedence the usual file-then-inline order
        gives.  An empty value is passed as ``''`` (YAML for the empty string), as the
        real launch writes it: rcl rejects ``-p name:=`` and the node would not start.
        Raises ``LookupError`` if the package cannot be found.
        """
        cmd = [self.executable_path(prefix_finder), *self.args]
        if self.ros_args:
            cmd += ["--ros-args", *self.ros_args]
        cmd.append("--ros-args")
        if self.name:
            cmd += ["-r", f"__node:={self.name}"]
        if self.namespace:
            cmd += ["-r", f"__ns:={self.namespace}"]
        for path in self.param_files:
            cmd += ["--params-file", path]
        for key, value in self.params.items():
            cmd += ["-p", f"{key}:={value}" if value != "" else f"{key}:=''"]
        for src, dst in self.remaps:
            cmd += ["-r", f"{src}:={dst}"]
        return cmd


@dataclass
class LaunchDescription:
    """What a launch file starts: resolved argument values and nodes, in file order.

    ``args`` maps each ``<arg>`` that ran (its ``if``/``unless`` allowed it) to its value.
    ``package_finder`` is the finder used while parsing; :class:`LaunchedGraph` reuses
    it to locate executables.
    """

    args: dict[str, str]
    nodes: list[NodeSpec]
    source: str = ""
    package_finder: PackageFinder | None = field(default=None, repr=False, compare=False)


def ament_prefix_finder(package: str) -> str:
    """Default finder: ``ament_index_python.packages.get_package_prefix``.

    Imported lazily so that parsing a file without package look-ups never needs the
    ament index (nor a sourced workspace).
    """
    from ament_index_python.packages import get_package_prefix

    try:
        return get_package_prefix(package)
    except ValueError as exc:  # invalid package name -> treat like "not found"
        raise LookupError(str(exc)) from exc


def _find_prefix(finder: PackageFinder, package: str) -> str:
    """Call ``finder`` and normalise every failure into a helpful ``LookupError``."""
    try:
        prefix = finder(package)
    except (LookupError, ValueError, OSError) as exc:
        raise LookupError(f"package '{package}' not found ({exc}); is ros2_ws/install/setup.bash sourced?") from exc
    return str(prefix)


# --------------------------------------------------------------------------------------
# XML reading (expat, because ElementTree does not keep line numbers)
# --------------------------------------------------------------------------------------


@dataclass
class _Element:
    tag: str
    attrib: dict[str, str]
    line: int
    children: list[_Element] = field(default_factory=list)

    def describe(self) -> str:
        """``<tag a="b" ...>`` -- the offending element as it appears in the file."""
        attrs = "".join(f' {k}="{v}"' for k, v in self.attrib.items())
        return f"<{self.tag}{attrs}>"


def _read_xml(path: Path) -> _Element:
    parser = expat.ParserCreate()
    stack: list[_Element] = []
    roots: list[_Element] = []

    def start(tag: str, attrs: dict[str, str]) -> None:
        element = _Element(tag, dict(attrs), parser.CurrentLineNumber)
        (stack[-1].children if stack else roots).append(element)
        stack.append(element)

    def end(_tag: str) -> None:
        stack.pop()

    def text(data: str) -> None:
        # No element of the format carries text; stray text is a mistake (often a
        # half-deleted element), so say so instead of ignoring it.
        if data.strip() and stack:
            raise LaunchFileError(
                f"{path}:{parser.CurrentLineNumber}: {stack[-1].describe()}: unexpected text {data.strip()!r}",
                str(path),
                parser.CurrentLineNumber,
                stack[-1].describe(),
            )

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LaunchFileError(f"{path}: cannot read launch file: {exc}", str(path)) from exc
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise LaunchFileError(
            f"{path}:{exc.lineno}: malformed XML: {expat.ErrorString(exc.code)}", str(path), exc.lineno
        ) from exc
    return roots[0]


# --------------------------------------------------------------------------------------
# Substitutions: "$(name arg ...)" templates
# --------------------------------------------------------------------------------------


@dataclass
class _Sub:
    """One ``$(name args...)``; each argument is itself a template (may nest)."""

    name: str
    args: list[_Template]


_Template = list[str | _Sub]

# name -> (min args, max args)
_SUBSTITUTIONS: dict[str, tuple[int, int]] = {
    "var": (1, 1),
    "env": (1, 2),
    "find-pkg-share": (1, 1),
    "find-pkg-prefix": (1, 1),
    "dirname": (0, 0),
}


class _SubstitutionSyntaxError(Exception):
    pass


def _parse_template(text: str) -> _Template:
    """Split attribute text into literal strings and parsed substitutions.

    Only ``$(`` starts a substitution; a lone ``$`` or ``)`` outside one is literal,
    as in the ROS grammar.
    """
    parts: _Template = []
    buf: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$(", i):
            if buf:
                parts.append("".join(buf))
                buf = []
            sub, i = _parse_sub(text, i + 2)
            parts.append(sub)
        else:
            buf.append(text[i])
            i += 1
    if buf:
        parts.append("".join(buf))
    return parts


def _parse_sub(text: str, i: int) -> tuple[_Sub, int]:
    """Parse after ``$(`` up to and including the matching ``)``; return (sub, next index)."""
    match = re.compile(r"[A-Za-z0-9_-]+").match(text, i)
    if not match:
        raise _SubstitutionSyntaxError(f"expected a substitution name after '$(' in {text!r}")
    name = match.group(0)
    i = match.end()
    if name not in _SUBSTITUTIONS:
        raise _SubstitutionSyntaxError(
            f"unknown substitution '$({name} ...)' (supported: {', '.join(sorted(_SUBSTITUTIONS))})"
        )
    args: list[_Template] = []
    while True:
        had_space = i < len(text) and text[i].isspace()
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            raise _SubstitutionSyntaxError(f"unterminated '$({name}' in {text!r}")
        if text[i] == ")":
            i += 1
            break
        if not had_space:
            raise _SubstitutionSyntaxError(f"expected a space before the arguments of '$({name}' in {text!r}")
        arg, i = _parse_sub_arg(text, i)
        args.append(arg)
    low, high = _SUBSTITUTIONS[name]
    if not low <= len(args) <= high:
        expected = str(low) if low == high else f"{low} to {high}"
        raise _SubstitutionSyntaxError(f"'$({name} ...)' takes {expected} argument(s), got {len(args)} in {text!r}")
    return _Sub(name, args), i


def _parse_sub_arg(text: str, i: int) -> tuple[_Template, int]:
    """One argument: unquoted up to whitespace or ')', or '...' / "..." quoted; may nest."""
    parts: _Template = []
    buf: list[str] = []

    def flush() -> None:
        if buf:
            parts.append("".join(buf))
            buf.clear()

    quote: str | None = None
    while i < len(text):
        ch = text[i]
        if text.startswith("$(", i):
            flush()
            sub, i = _parse_sub(text, i + 2)
            parts.append(sub)
            continue
        if quote:
            if ch == quote:
                quote = None
            else:
                buf.append(ch)
            i += 1
            continue
        if ch in "'\"":
            quote = ch
            i += 1
            continue
        if ch.isspace() or ch == ")":
            break
        buf.append(ch)
        i += 1
    if quote:
        raise _SubstitutionSyntaxError(f"unterminated quote {quote} in {text!r}")
    flush()
    if not parts:  # '' or "" -> an explicit empty argument
        parts.append("")
    return parts, i


def _truthy(value: str) -> bool:
    """Condition values as launch evaluates them; anything else is an error."""
    lowered = value.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise ValueError(f"invalid boolean {value!r} (expected true/false/1/0)")


_NS_TOKEN = r"[A-Za-z_][A-Za-z0-9_]*"
_NAMESPACE_RE = re.compile(rf"/|(/{_NS_TOKEN})+")
_NODE_NAME_RE = re.compile(_NS_TOKEN)


def _join_namespace(base: str | None, ns: str | None) -> str | None:
    """launch_ros' prefix_namespace + make_namespace_absolute: absolute ``ns`` wins."""
    if ns is None or ns == "":
        joined = base
    elif ns.startswith("/") or not base:
        joined = ns
    else:
        joined = base.rstrip("/") + "/" + ns
    if joined is None:
        return None
    return joined if joined.startswith("/") else "/" + joined


# --------------------------------------------------------------------------------------
# Schema: which elements / attributes exist, and which attributes are substituted
# --------------------------------------------------------------------------------------

_CONDITIONS = {"if", "unless"}
_ACTIONS = {"arg", "let", "node", "group", "include", "push_ros_namespace", "push-ros-namespace"}


@dataclass(frozen=True)
class _Rule:
    attributes: frozenset[str]
    required: frozenset[str] = frozenset()
    literal: frozenset[str] = frozenset()  # taken as written: no $(...) processing
    children: frozenset[str] = frozenset()


def _rule(
    attrs: Iterable[str], required: Iterable[str] = (), literal: Iterable[str] = (), children: Iterable[str] = ()
) -> _Rule:
    return _Rule(frozenset(attrs), frozenset(required), frozenset(literal), frozenset(children))


# <arg> inside <include> passes a value to the included file rather than declaring one.
_INCLUDE_ARG_RULE = _rule({"name", "value"}, required={"name", "value"}, literal={"name"})
_MAX_INCLUDE_DEPTH = 8

_RULES: dict[str, _Rule] = {
    "launch": _rule({"version"}, literal={"version"}, children=_ACTIONS),
    # launch takes <arg name> and description verbatim (no substitutions), the default is substituted.
    "arg": _rule({"name", "default", "description"} | _CONDITIONS, required={"name"}, literal={"name", "description"}),
    "let": _rule({"name", "value"} | _CONDITIONS, required={"name", "value"}),
    "node": _rule(
        {"pkg", "exec", "name", "namespace", "output", "respawn", "args", "ros_args", "ros-args"} | _CONDITIONS,
        required={"pkg", "exec"},
        children={"param", "remap"},
    ),
    # <param> and <remap> are not actions in launch_ros: no if/unless.
    "param": _rule({"name", "value", "from"}),
    "remap": _rule({"from", "to"}, required={"from", "to"}),
    "group": _rule({"scoped"} | _CONDITIONS, literal={"scoped"}, children=_ACTIONS),
    "push_ros_namespace": _rule({"namespace"} | _CONDITIONS, required={"namespace"}),
    "include": _rule({"file"} | _CONDITIONS, required={"file"}, children={"arg"}),
    "push-ros-namespace": _rule({"namespace"} | _CONDITIONS, required={"namespace"}),
}


# --------------------------------------------------------------------------------------
# The interpreter
# --------------------------------------------------------------------------------------


@dataclass
class _Scope:
    """Launch configurations (``$(var)`` values) plus the pushed ROS namespace."""

    variables: dict[str, str]
    namespace: str | None = None

    def copy(self) -> _Scope:
        return _Scope(dict(self.variables), self.namespace)


class _Interpreter:
    def __init__(self, path: Path, finder: PackageFinder, include_stack: tuple[Path, ...] = ()) -> None:
        self.path = path
        self.finder = finder
        self.include_stack = include_stack + (path.resolve(),)
        self.templates: dict[tuple[int, str], _Template] = {}  # (id(element), attr) -> parsed
        self.declared_args: set[str] = set()
        self.args: dict[str, str] = {}
        self.nodes: list[NodeSpec] = []

    # -- errors ---------------------------------------------------------------------

    def error(self, element: _Element, message: str) -> LaunchFileError:
        where = element.describe()
        return LaunchFileError(f"{self.path}:{element.line}: {where}: {message}", str(self.path), element.line, where)

    # -- pass 1: structure ----------------------------------------------------------

    def validate(self, element: _Element, allowed: frozenset[str], parent: str = "") -> None:
        """Check elements, attributes and substitution syntax of the whole tree.

        Runs before anything is evaluated so that errors in branches an ``if`` skips
        are still reported, as the ROS frontend parser does.
        """
        rule = _INCLUDE_ARG_RULE if (parent, element.tag) == ("include", "arg") else _RULES.get(element.tag)
        if rule is None or element.tag not in allowed:
            raise self.error(
                element,
                f"unknown or misplaced element <{element.tag}> (allowed here: {', '.join(sorted(allowed)) or 'none'})",
            )
        unknown = sorted(set(element.attrib) - rule.attributes)
        if unknown:
            raise self.error(
                element, f"unknown attribute(s) {', '.join(unknown)} (allowed: {', '.join(sorted(rule.attributes))})"
            )
        missing = sorted(rule.required - set(element.attrib))
        if missing:
            raise self.error(element, f"missing required attribute(s) {', '.join(missing)}")
        if "if" in element.attrib and "unless" in element.attrib:
            raise self.error(element, "'if' and 'unless' cannot be used together")
        if "ros_args" in element.attrib and "ros-args" in element.attrib:
            raise self.error(element, "give 'ros_args' or 'ros-args', not both")
        if element.tag == "param":
            has_from = "from" in element.attrib
            has_name_value = {"name", "value"} <= set(element.attrib)
            if has_from == has_name_value or (has_from and len(element.attrib) > 1):
                raise self.error(element, "<param> takes either name= and value=, or from= alone")
        if element.tag == "arg" and parent != "include":
            self.declared_args.add(element.attrib["name"])
        for attr, value in element.attrib.items():
            if attr in rule.literal:
                continue
            try:
                self.templates[(id(element), attr)] = _parse_template(value)
            except _SubstitutionSyntaxError as exc:
                raise self.error(element, f"attribute {attr}: {exc}") from None
        for child in element.children:
            self.validate(child, rule.children, element.tag)

    # -- pass 2: evaluation ---------------------------------------------------------

    def subst(self, element: _Element, attr: str, scope: _Scope) -> str:
        """Resolve the substitutions of one attribute in ``scope``."""
        try:
            return self._evaluate(self.templates[(id(element), attr)], scope)
        except LookupError as exc:
            raise self.error(element, f"attribute {attr}: {exc.args[0] if exc.args else exc}") from None

    def opt(self, element: _Element, attr: str, scope: _Scope) -> str | None:
        return self.subst(element, attr, scope) if attr in element.attrib else None

    def _evaluate(self, template: _Template, scope: _Scope) -> str:
        return "".join(p if isinstance(p, str) else self._evaluate_sub(p, scope) for p in template)

    def _evaluate_sub(self, sub: _Sub, scope: _Scope) -> str:
        args = [self._evaluate(a, scope) for a in sub.args]
        if sub.name == "var":
            if args[0] not in scope.variables:
                raise LookupError(f"undefined launch argument/variable '$(var {args[0]})'")
            return scope.variables[args[0]]
        if sub.name == "env":
            value = os.environ.get(args[0])
            if value is None:
                if len(args) < 2:
                    raise LookupError(f"environment variable '{args[0]}' is not set (and no default given)")
                value = args[1]
            return value
        if sub.name == "find-pkg-prefix":
            return _find_prefix(self.finder, args[0])
        if sub.name == "find-pkg-share":
            return os.path.join(_find_prefix(self.finder, args[0]), "share", args[0])
        if sub.name == "dirname":
            return str(self.path.parent)
        raise AssertionError(sub.name)  # validate() admits only known names

    def cmdline(self, element: _Element, attr: str, scope: _Scope) -> list[str]:
        """Split ``args=`` like launch's ExecuteProcess._parse_cmdline.

        Literal text is shlex-split; a substitution's value is never split and sticks
        to adjacent literal text unless whitespace separates them.
        """
        result: list[str] = []
        current: list[str] = []

        def push() -> None:
            # launch would also emit an empty argument for a lone leading space; we
            # only end an argument that has pieces (a substitution that evaluates to
            # "" still yields an empty argument, as in launch).
            if current:
                result.append("".join(current))
                current.clear()

        try:
            for part in self.templates[(id(element), attr)]:
                if not isinstance(part, str):
                    current.append(self._evaluate_sub(part, scope))
                    continue
                tokens = shlex.split(part)
                if not tokens:  # only whitespace: separates two substitutions
                    push()
                    continue
                if part[0].isspace() and current:
                    push()
                current.append(tokens[0])
                if len(tokens) > 1:
                    push()
                    for token in tokens[1:-1]:
                        current.append(token)
                        push()
                    current.append(tokens[-1])
                if part[-1].isspace():
                    push()
        except LookupError as exc:
            raise self.error(element, f"attribute {attr}: {exc.args[0] if exc.args else exc}") from None
        except ValueError as exc:  # shlex: unbalanced quotes
            raise self.error(element, f"attribute {attr}: {exc}") from None
        push()
        return result

    def condition(self, element: _Element, scope: _Scope) -> bool:
        for attr, wanted in (("if", True), ("unless", False)):
            if attr in element.attrib:
                value = self.subst(element, attr, scope)
                try:
                    return _truthy(value) == wanted
                except ValueError as exc:
                    raise self.error(element, f"attribute {attr}: {exc}") from None
        return True

    def run(self, elements: list[_Element], scope: _Scope) -> None:
        for element in elements:
            if not self.condition(element, scope):
                continue
            tag = element.tag.replace("-", "_")
            getattr(self, f"_do_{tag}")(element, scope)

    def _do_arg(self, element: _Element, scope: _Scope) -> None:
        # Like DeclareLaunchArgument: a value already present (command-line override or
        # an earlier <let>) wins over the default; no value at all is an error.
        name = element.attrib["name"]
        if name not in scope.variables:
            default = self.opt(element, "default", scope)
            if default is None:
                raise self.error(element, f"required launch argument '{name}' was not provided")
            scope.variables[name] = default
        self.args[name] = scope.variables[name]

    def _do_let(self, element: _Element, scope: _Scope) -> None:
        scope.variables[self.subst(element, "name", scope)] = self.subst(element, "value", scope)

    def _do_group(self, element: _Element, scope: _Scope) -> None:
        scoped = True
        if "scoped" in element.attrib:
            try:
                scoped = _truthy(element.attrib["scoped"])
            except ValueError as exc:
                raise self.error(element, f"attribute scoped: {exc}") from None
        self.run(element.children, scope.copy() if scoped else scope)

    def _do_push_ros_namespace(self, element: _Element, scope: _Scope) -> None:
        namespace = _join_namespace(scope.namespace, self.subst(element, "namespace", scope))
        if namespace is not None and not _NAMESPACE_RE.fullmatch(namespace):
            raise self.error(element, f"invalid ROS namespace '{namespace}'")
        scope.namespace = namespace

    def _do_node(self, element: _Element, scope: _Scope) -> None:
        name = self.opt(element, "name", scope)
        if name is not None and not _NODE_NAME_RE.fullmatch(name):
            raise self.error(element, f"invalid node name '{name}' (letters, digits, '_'; not starting with a digit)")
        namespace = _join_namespace(scope.namespace, self.opt(element, "namespace", scope))
        if namespace is not None and not _NAMESPACE_RE.fullmatch(namespace):
            raise self.error(element, f"invalid ROS namespace '{namespace}'")
        output = self.opt(element, "output", scope) or "log"
        if output not in ("log", "screen", "both", "own_log"):
            raise self.error(element, f"attribute output: '{output}' is not one of log, screen, both, own_log")
        respawn = False
        if "respawn" in element.attrib:
            try:
                respawn = _truthy(self.subst(element, "respawn", scope))
            except ValueError as exc:
                raise self.error(element, f"attribute respawn: {exc}") from None
        ros_args_attr = "ros_args" if "ros_args" in element.attrib else "ros-args"
        spec = NodeSpec(
            package=self.subst(element, "pkg", scope),
            executable=self.subst(element, "exec", scope),
            name=name,
            namespace=namespace,
            args=self.cmdline(element, "args", scope) if "args" in element.attrib else [],
            ros_args=self.cmdline(element, ros_args_attr, scope) if ros_args_attr in element.attrib else [],
            output=output,
            respawn=respawn,
        )
        for child in element.children:
            if child.tag == "remap":
                spec.remaps.append((self.subst(child, "from", scope), self.subst(child, "to", scope)))
            elif "from" in child.attrib:
                spec.param_files.append(self._param_file(child, scope))
            else:
                # A repeated name: the later value wins, as it does in launch_ros.
                spec.params[self.subst(child, "name", scope)] = self.subst(child, "value", scope)
        self.nodes.append(spec)

    def _do_include(self, element: _Element, scope: _Scope) -> None:
        # The included file sees the current launch configurations plus the passed args,
        # in a copy: nothing it sets leaks back (wrap in <group> with ros2 launch for the same).
        # Relative paths resolve against the current directory, as for parameter files.
        path = Path(self.subst(element, "file", scope))
        path = path if path.is_absolute() else Path.cwd() / path
        if not path.is_file():
            raise self.error(element, f"included launch file '{path}' does not exist")
        if path.resolve() in self.include_stack:
            raise self.error(element, f"'{path}' includes itself (directly or through other files)")
        if len(self.include_stack) >= _MAX_INCLUDE_DEPTH:
            raise self.error(element, f"includes nested deeper than {_MAX_INCLUDE_DEPTH} files")
        passed = {child.attrib["name"]: self.subst(child, "value", scope) for child in element.children}
        included = _Interpreter(path, self.finder, self.include_stack)
        try:
            root = _read_xml(path)
            if root.tag != "launch":
                raise included.error(root, "the root element must be <launch>")
            included.validate(root, frozenset({"launch"}))
            unknown = sorted(set(passed) - included.declared_args)
            if unknown:
                raise self.error(
                    element,
                    f"argument(s) {', '.join(unknown)} are not declared by '{path.name}' "
                    f"(declared: {', '.join(sorted(included.declared_args)) or 'none'})",
                )
            inner = scope.copy()
            inner.variables.update(passed)
            included.run(root.children, inner)
        except LaunchFileError as exc:
            if exc.file == str(self.path):
                raise
            raise self.error(element, f"in the included file: {exc}") from None
        self.nodes.extend(included.nodes)

    def _param_file(self, element: _Element, scope: _Scope) -> str:
        # Relative paths resolve against the current directory, as in ros2 launch; use
        # $(find-pkg-share ...) or $(dirname) for paths that work from anywhere.
        path = Path(self.subst(element, "from", scope))
        path = path if path.is_absolute() else Path.cwd() / path
        if not path.is_file():
            raise self.error(element, f"parameter file '{path}' does not exist")
        return str(path)


def parse_launch_file(
    path: str | os.PathLike,
    overrides: Mapping[str, str] | None = None,
    package_finder: PackageFinder | None = None,
) -> LaunchDescription:
    """Read a ROS 2 XML launch file into a :class:`LaunchDescription`.

    ``overrides`` are ``name:=value`` launch arguments as given to ``ros2 launch``
    (strings, taken literally).  Unlike ros2 launch, an override for an argument the
    file never declares is an error: it is almost always a typo in the caller.
    ``package_finder`` maps a package to its install prefix (default: the ament
    index, i.e. a sourced ``ros2_ws/install/setup.bash``).

    Raises :class:`LaunchFileError` naming the file, line and element for anything
    that is malformed, unsupported or unresolvable.
    """
    source = Path(path)
    finder = package_finder or ament_prefix_finder
    overrides = dict(overrides or {})
    for key, value in overrides.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"launch argument overrides must be str -> str, got {key!r}: {value!r}")

    root = _read_xml(source)
    interpreter = _Interpreter(source, finder)
    if root.tag != "launch":
        raise interpreter.error(root, "the root element must be <launch>")
    interpreter.validate(root, frozenset({"launch"}))
    unknown = sorted(set(overrides) - interpreter.declared_args)
    if unknown:
        raise LaunchFileError(
            f"{source}: override(s) for undeclared launch argument(s): {', '.join(unknown)} "
            f"(declared: {', '.join(sorted(interpreter.declared_args)) or 'none'})",
            str(source),
        )
    # Overrides are launch configurations from the start, as with ros2 launch, so an
    # <arg> sees them and a later <let> may still replace them.
    interpreter.run(root.children, _Scope(dict(overrides)))
    return LaunchDescription(interpreter.args, interpreter.nodes, str(source), finder)


# --------------------------------------------------------------------------------------
# Running the graph
# --------------------------------------------------------------------------------------


@dataclass
class _Running:
    spec: NodeSpec
    command: list[str]
    process: subprocess.Popen
    log_path: Path
    log_file: IO[bytes]


def _die_with_parent_prefix() -> list[str]:
    """The command prefix that gives a node SIGTERM when the launcher dies, even by SIGKILL.

    Nodes run in their own session (so Ctrl-C reaches the launcher first); without this a
    killed launcher would leave them running and publishing on its domain. util-linux's setpriv
    sets PR_SET_PDEATHSIG and execs the node (same pid). Not a pre-exec hook: Python code run
    between fork and exec in a threaded process (DDS, torch, spin threads) can deadlock there, and
    without one CPython starts the child with vfork. The kernel ties the signal to the thread that
    started the node: start graphs from a thread that lives as long as they should.
    Empty where setpriv is missing: nodes then only stop through stop().
    """
    return ["setpriv", "--pdeathsig", "TERM", "--"] if shutil.which("setpriv") else []


class LaunchedGraph:
    """Start every node of a :class:`LaunchDescription` as a subprocess; always stop them.

    Each node runs in its own process group (so a signal reaches a wrapper script's
    children too, and a Ctrl-C in the terminal is not delivered to it twice) with
    stdout and stderr in ``<log_dir>/<node>.log``.  Nodes are keyed by name (the
    executable if unnamed); when two share a name, their fully qualified names are
    used instead.  Use as a context manager::

        with LaunchedGraph() as graph:
            graph.start(parse_launch_file("demo.launch.xml"))
            ...
    """

    def __init__(self) -> None:
        self._running: dict[str, _Running] = {}
        self._exit_codes: dict[str, int | None] | None = None
        self.log_dir: Path | None = None

    def __enter__(self) -> LaunchedGraph:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @staticmethod
    def _keys(nodes: list[NodeSpec]) -> list[str]:
        labels = [n.label for n in nodes]
        keys = [n.label if labels.count(n.label) == 1 else n.fully_qualified_name for n in nodes]
        # Same name in the same namespace (ROS only warns about it): number them.
        return [k if keys.count(k) == 1 else f"{k}#{keys[:i].count(k) + 1}" for i, k in enumerate(keys)]

    def start(
        self,
        description: LaunchDescription,
        env: Mapping[str, str] | None = None,
        log_dir: str | os.PathLike | None = None,
        prefix_finder: PackageFinder | None = None,
    ) -> LaunchedGraph:
        """Start all nodes; return self.

        ``env`` entries are added to (or replace) this process's environment for the
        children.  ``log_dir`` defaults to a new temporary directory (see ``log_dir``).
        Executables are found with ``prefix_finder``, else the description's finder.
        If any node cannot be started, the ones already started are stopped and the
        error is raised (``LookupError`` / ``FileNotFoundError`` / ``OSError``).
        """
        if self._running or self._exit_codes is not None:
            raise RuntimeError("this LaunchedGraph was already started; use a new one")
        finder = prefix_finder or description.package_finder or ament_prefix_finder
        self.log_dir = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="launch_logs_"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        child_env = dict(os.environ)
        # Python nodes block-buffer stdout when it is a file: a node that dies would
        # take its last (most useful) lines with it.
        child_env.setdefault("PYTHONUNBUFFERED", "1")
        child_env.update(env or {})

        commands = [spec.command(finder) for spec in description.nodes]  # look-ups fail before anything starts
        die_with_parent = _die_with_parent_prefix()
        for spec, command in zip(description.nodes, commands):
            if not os.access(command[0], os.X_OK) or not os.path.isfile(command[0]):
                raise FileNotFoundError(
                    f"node {spec.label}: executable '{spec.executable}' of package '{spec.package}' "
                    f"not found or not executable at {command[0]} (is the workspace built?)"
                )
        try:
            for key, spec, command in zip(self._keys(description.nodes), description.nodes, commands):
                log_path = self.log_dir / (key.strip("/").replace("/", "_").replace("#", "_") + ".log")
                log_file = open(log_path, "wb")
                try:
                    process = subprocess.Popen(
                        die_with_parent + command,
                        stdin=subprocess.DEVNULL,
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                        env=child_env,
                        start_new_session=True,
                    )
                except BaseException:
                    log_file.close()
                    raise
                self._running[key] = _Running(spec, command, process, log_path, log_file)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def commands(self) -> dict[str, list[str]]:
        """The command line each node was started with."""
        return {key: r.command for key, r in self._running.items()}

    @property
    def pids(self) -> dict[str, int]:
        return {key: r.process.pid for key, r in self._running.items()}

    @property
    def log_paths(self) -> dict[str, Path]:
        return {key: r.log_path for key, r in self._running.items()}

    def alive(self) -> dict[str, bool]:
        """Whether each node's process is still running."""
        return {key: r.process.poll() is None for key, r in self._running.items()}

    def returncodes(self) -> dict[str, int | None]:
        """Exit code per node (None while running; negative = killed by that signal)."""
        return {key: r.process.poll() for key, r in self._running.items()}

    def _signal_alive(self, sig: int) -> None:
        for r in self._running.values():
            # Only while the leader is unreaped: its pid (= the group id) cannot have
            # been reused, so we never signal an unrelated process group.
            if r.process.poll() is None:
                try:
                    os.killpg(r.process.pid, sig)
                except ProcessLookupError:
                    pass

    def _wait_all(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for r in self._running.values():
            try:
                r.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                return False
        return True

    def stop(self, timeout: float = 5.0) -> dict[str, int | None]:
        """Stop every node; return their exit codes (negative: killed by that signal).

        Like ros2 launch: SIGINT (a clean rclpy/rclcpp shutdown), then SIGTERM for those
        still running after ``timeout`` seconds, then SIGKILL after another ``timeout``.
        Safe to call repeatedly; later calls return the same codes.  A code is None
        only for a process that even SIGKILL did not end within ``timeout``.
        """
        if self._exit_codes is not None:
            return dict(self._exit_codes)
        try:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
                self._signal_alive(sig)
                if self._wait_all(timeout):
                    break
        finally:
            for r in self._running.values():
                r.log_file.close()
        self._exit_codes = {key: r.process.returncode for key, r in self._running.items()}
        return dict(self._exit_codes)

    def tail_logs(self, n_lines: int = 20) -> str:
        """The last ``n_lines`` of every node's log, with its state, for error messages."""
        chunks = []
        for key, r in self._running.items():
            code = r.process.poll()
            state = "running" if code is None else f"exited with {code}"
            try:
                lines = r.log_path.read_text(errors="replace").splitlines()[-n_lines:] if n_lines > 0 else []
            except OSError as exc:
                lines = [f"<cannot read {r.log_path}: {exc}>"]
            chunks.append(f"==> {key} (pid {r.process.pid}, {state}) {r.log_path} <==\n" + "\n".join(lines))
        return "\n".join(chunks)
