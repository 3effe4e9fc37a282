"""Tests for rla_wm_ros.launch_xml: the strict ROS 2 XML launch interpreter and runner.

Launch files, YAML param files and "installed" packages are all written into tmp_path;
a fake package finder maps package names to tmp install prefixes, so nothing here
needs a built workspace.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from rla_wm_ros.launch_xml import (
    LaunchDescription,
    LaunchedGraph,
    LaunchFileError,
    NodeSpec,
    ament_prefix_finder,
    parse_launch_file,
)

# ----------------------------------------------------------------------------- helpers


class FakeFinder:
    """Package name -> install prefix; unknown packages raise KeyError like ament's."""

    def __init__(self, prefixes: dict[str, Path]) -> None:
        self.prefixes = prefixes
        self.calls: list[str] = []

    def __call__(self, package: str) -> str:
        self.calls.append(package)
        return str(self.prefixes[package])


@pytest.fixture
def prefix(tmp_path: Path) -> Path:
    """An install prefix holding package 'demo_pkg' (share dir with a config file)."""
    root = tmp_path / "install"
    config = root / "share" / "demo_pkg" / "config"
    config.mkdir(parents=True)
    (config / "base.yaml").write_text("/**:\n  ros__parameters:\n    rate: 10.0\n")
    (config / "extra.yaml").write_text("/**:\n  ros__parameters:\n    depth: 3\n")
    (root / "lib" / "demo_pkg").mkdir(parents=True)
    return root


@pytest.fixture
def finder(prefix: Path, tmp_path: Path) -> FakeFinder:
    other = tmp_path / "other_install"
    (other / "share" / "other_pkg").mkdir(parents=True)
    return FakeFinder({"demo_pkg": prefix, "other_pkg": other})


@pytest.fixture
def write(tmp_path: Path) -> Callable[..., Path]:
    """write(body, name=...) -> path of a launch file whose <launch> holds `body`."""

    def _write(body: str, name: str = "test.launch.xml") -> Path:
        path = tmp_path / name
        path.write_text(f'<?xml version="1.0"?>\n<launch>\n{body}\n</launch>\n')
        return path

    return _write


def expect_error(path: Path, *fragments: str, **kwargs) -> LaunchFileError:
    """Parse `path`, require a LaunchFileError whose message names the file and `fragments`."""
    with pytest.raises(LaunchFileError) as info:
        parse_launch_file(path, **kwargs)
    message = str(info.value)
    assert path.name in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return info.value


# ------------------------------------------------------------------------- arguments


def test_arg_defaults_and_overrides(write, finder):
    path = write(
        """
        <arg name="robot" default="r1" description="robot name"/>
        <arg name="rate" default="10"/>
        <arg name="topic" default="/$(var robot)/scan"/>
        <node pkg="demo_pkg" exec="talker" name="$(var robot)_talker">
          <param name="rate" value="$(var rate)"/>
          <remap from="scan" to="$(var topic)"/>
        </node>
        """
    )
    default = parse_launch_file(path, package_finder=finder)
    assert default.args == {"robot": "r1", "rate": "10", "topic": "/r1/scan"}
    assert default.nodes[0].name == "r1_talker"
    assert default.nodes[0].params == {"rate": "10"}
    assert default.nodes[0].remaps == [("scan", "/r1/scan")]

    # An override feeds later defaults too; override values are taken literally.
    over = parse_launch_file(path, overrides={"robot": "r2", "rate": "2.5"}, package_finder=finder)
    assert over.args == {"robot": "r2", "rate": "2.5", "topic": "/r2/scan"}
    assert over.nodes[0].name == "r2_talker"
    assert over.nodes[0].params == {"rate": "2.5"}
    assert over.nodes[0].remaps == [("scan", "/r2/scan")]
    assert isinstance(over, LaunchDescription) and over.source == str(path)


def test_required_arg_missing_is_an_error(write, finder):
    path = write(
        '<arg name="robot" description="no default: required"/>\n'
        '<node pkg="demo_pkg" exec="talker" name="$(var robot)"/>'
    )
    err = expect_error(path, "required launch argument 'robot'", '<arg name="robot"', package_finder=finder)
    assert err.line == 3  # line 1 is the XML declaration, line 2 <launch>
    desc = parse_launch_file(path, overrides={"robot": "r7"}, package_finder=finder)
    assert desc.args == {"robot": "r7"}
    assert desc.nodes[0].name == "r7"


def test_override_of_undeclared_arg_is_an_error(write, finder):
    path = write('<arg name="robot" default="r1"/>')
    expect_error(path, "robt", overrides={"robt": "x"}, package_finder=finder)


def test_let_sets_and_group_scopes_variables(write, finder):
    path = write(
        """
        <let name="who" value="outer"/>
        <group>
          <let name="who" value="inner"/>
          <node pkg="demo_pkg" exec="a" name="$(var who)"/>
        </group>
        <node pkg="demo_pkg" exec="b" name="$(var who)"/>
        <group scoped="false">
          <let name="who" value="leaked"/>
        </group>
        <node pkg="demo_pkg" exec="c" name="$(var who)"/>
        <let name="given" value="from_let"/>
        <arg name="given" default="from_default"/>
        """
    )
    desc = parse_launch_file(path, package_finder=finder)
    assert [n.name for n in desc.nodes] == ["inner", "outer", "leaked"]
    # As DeclareLaunchArgument: a value that already exists wins over the default.
    assert desc.args["given"] == "from_let"


def test_undefined_var_is_an_error(write, finder):
    path = write('<node pkg="demo_pkg" exec="talker" name="$(var nope)"/>')
    expect_error(path, "nope", '<node pkg="demo_pkg"', package_finder=finder)


# --------------------------------------------------------------------- substitutions


def test_find_pkg_share_and_prefix(write, finder, prefix):
    path = write(
        """
        <node pkg="demo_pkg" exec="talker">
          <param from="$(find-pkg-share demo_pkg)/config/base.yaml"/>
          <param name="prefix" value="$(find-pkg-prefix demo_pkg)"/>
          <param name="other_share" value="$(find-pkg-share other_pkg)"/>
        </node>
        """
    )
    node = parse_launch_file(path, package_finder=finder).nodes[0]
    assert node.param_files == [str(prefix / "share" / "demo_pkg" / "config" / "base.yaml")]
    assert node.params["prefix"] == str(prefix)
    assert node.params["other_share"] == str(finder.prefixes["other_pkg"] / "share" / "other_pkg")


def test_unknown_package_is_an_error(write, finder):
    path = write('<node pkg="demo_pkg" exec="t"><param name="x" value="$(find-pkg-share ghost_pkg)"/></node>')
    expect_error(path, "ghost_pkg", "<param", package_finder=finder)


def test_env_substitution(write, finder, monkeypatch):
    monkeypatch.setenv("LAUNCH_XML_TEST_SET", "from_env")
    monkeypatch.delenv("LAUNCH_XML_TEST_UNSET", raising=False)
    path = write(
        """
        <let name="from_env" value="nested ok"/>
        <node pkg="demo_pkg" exec="t">
          <param name="a" value="$(env LAUNCH_XML_TEST_SET)"/>
          <param name="b" value="$(env LAUNCH_XML_TEST_UNSET fallback)"/>
          <param name="c" value="[$(env LAUNCH_XML_TEST_UNSET '')]"/>
          <param name="d" value="$(var $(env LAUNCH_XML_TEST_SET))"/>
        </node>
        """
    )
    node = parse_launch_file(path, package_finder=finder).nodes[0]
    assert node.params == {"a": "from_env", "b": "fallback", "c": "[]", "d": "nested ok"}

    missing = write('<node pkg="demo_pkg" exec="t" name="$(env LAUNCH_XML_TEST_UNSET)"/>', name="missing.launch.xml")
    expect_error(missing, "LAUNCH_XML_TEST_UNSET", package_finder=finder)


def test_dirname_substitution(write, finder, tmp_path):
    (tmp_path / "local.yaml").write_text("{}\n")
    path = write('<node pkg="demo_pkg" exec="t"><param from="$(dirname)/local.yaml"/></node>')
    assert parse_launch_file(path, package_finder=finder).nodes[0].param_files == [str(tmp_path / "local.yaml")]


# ------------------------------------------------------------------ node contents


def test_params_remaps_and_param_files_collected_in_order(write, finder, prefix, tmp_path):
    local = tmp_path / "local.yaml"
    local.write_text("/**:\n  ros__parameters:\n    z: 1\n")
    path = write(
        f"""
        <node pkg="demo_pkg" exec="talker" name="talker">
          <param name="zeta" value="1"/>
          <remap from="out" to="/chatter"/>
          <param from="$(find-pkg-share demo_pkg)/config/extra.yaml"/>
          <param name="alpha" value="two words"/>
          <param from="{local}"/>
          <remap from="in" to="/feedback"/>
          <param from="$(find-pkg-share demo_pkg)/config/base.yaml"/>
          <param name="mid" value="[1, 2]"/>
          <param name="zeta" value="9"/>
        </node>
        """
    )
    node = parse_launch_file(path, package_finder=finder).nodes[0]
    share = prefix / "share" / "demo_pkg" / "config"
    assert node.param_files == [str(share / "extra.yaml"), str(local), str(share / "base.yaml")]
    # A repeated name keeps the later value (launch_ros: later params override earlier ones).
    assert list(node.params.items()) == [("zeta", "9"), ("alpha", "two words"), ("mid", "[1, 2]")]
    assert node.remaps == [("out", "/chatter"), ("in", "/feedback")]


def test_node_attributes(write, finder):
    path = write(
        """
        <arg name="mode" default="fast"/>
        <node pkg="demo_pkg" exec="talker" output="screen" respawn="True"
              args="--mode $(var mode) 'quoted arg' x$(var mode)y"/>
        <node pkg="demo_pkg" exec="plain"/>
        """
    )
    first, second = parse_launch_file(path, package_finder=finder).nodes
    assert first.args == ["--mode", "fast", "quoted arg", "xfasty"]
    assert (first.output, first.respawn, first.name, first.namespace) == ("screen", True, None, None)
    assert second == NodeSpec(package="demo_pkg", executable="plain")
    assert (second.output, second.respawn, second.args) == ("log", False, [])


def test_missing_param_file_is_an_error(write, finder, tmp_path):
    path = write('<node pkg="demo_pkg" exec="t"><param from="$(find-pkg-share demo_pkg)/config/nope.yaml"/></node>')
    expect_error(path, "nope.yaml", "does not exist", "<param from=", package_finder=finder)


# ------------------------------------------------------------------- namespaces


def test_group_namespace_push(write, finder):
    path = write(
        """
        <node pkg="demo_pkg" exec="t" name="top"/>
        <node pkg="demo_pkg" exec="t" name="top_ns" namespace="solo"/>
        <group>
          <push_ros_namespace namespace="robot"/>
          <node pkg="demo_pkg" exec="t" name="a"/>
          <node pkg="demo_pkg" exec="t" name="b" namespace="sensors"/>
          <node pkg="demo_pkg" exec="t" name="c" namespace="/absolute"/>
          <group>
            <push-ros-namespace namespace="arm"/>
            <node pkg="demo_pkg" exec="t" name="d"/>
          </group>
          <node pkg="demo_pkg" exec="t" name="e"/>
        </group>
        <node pkg="demo_pkg" exec="t" name="after"/>
        <group scoped="false">
          <push_ros_namespace namespace="/leaky"/>
        </group>
        <node pkg="demo_pkg" exec="t" name="last"/>
        """
    )
    namespaces = {n.name: n.namespace for n in parse_launch_file(path, package_finder=finder).nodes}
    assert namespaces == {
        "top": None,
        "top_ns": "/solo",
        "a": "/robot",
        "b": "/robot/sensors",
        "c": "/absolute",
        "d": "/robot/arm",
        "e": "/robot",
        "after": None,
        "last": "/leaky",
    }


def test_invalid_namespace_and_node_name(write, finder):
    expect_error(
        write('<node pkg="demo_pkg" exec="t" namespace="bad ns"/>'), "invalid ROS namespace", package_finder=finder
    )
    expect_error(
        write('<node pkg="demo_pkg" exec="t" name="9lives"/>', name="n.launch.xml"),
        "invalid node name",
        package_finder=finder,
    )


# ------------------------------------------------------------------ conditions


@pytest.mark.parametrize(
    "value, expected",
    [("true", True), ("True", True), ("TRUE", True), ("1", True), ("false", False), ("False", False), ("0", False)],
)
def test_if_unless_truthiness(write, finder, value, expected):
    path = write(
        f"""
        <arg name="flag" default="{value}"/>
        <node pkg="demo_pkg" exec="t" name="when_if" if="$(var flag)"/>
        <node pkg="demo_pkg" exec="t" name="when_unless" unless="$(var flag)"/>
        <group if="$(var flag)">
          <node pkg="demo_pkg" exec="t" name="in_if_group"/>
        </group>
        <group unless="$(var flag)">
          <node pkg="demo_pkg" exec="t" name="in_unless_group"/>
        </group>
        <let name="picked" value="yes" if="$(var flag)"/>
        <let name="picked" value="no" unless="$(var flag)"/>
        <node pkg="demo_pkg" exec="t" name="picked_$(var picked)"/>
        """
    )
    names = [n.name for n in parse_launch_file(path, package_finder=finder).nodes]
    if expected:
        assert names == ["when_if", "in_if_group", "picked_yes"]
    else:
        assert names == ["when_unless", "in_unless_group", "picked_no"]


def test_skipped_branches_are_not_evaluated(write, finder):
    # Like launch: a skipped action's values are never resolved, so an undefined
    # variable, a missing required arg or a missing file there is fine...
    path = write(
        """
        <group if="false">
          <arg name="only_when_enabled"/>
          <node pkg="demo_pkg" exec="t" name="$(var undefined)">
            <param from="/does/not/exist.yaml"/>
          </node>
        </group>
        <node pkg="demo_pkg" exec="t" name="kept"/>
        """
    )
    desc = parse_launch_file(path, package_finder=finder)
    assert [n.name for n in desc.nodes] == ["kept"]
    assert desc.args == {}


@pytest.mark.parametrize("value", ["yes", "", "2", "on"])
def test_invalid_condition_value_is_an_error(write, finder, value):
    path = write(f'<node pkg="demo_pkg" exec="t" if="{value}"/>')
    expect_error(path, "invalid boolean", "<node", package_finder=finder)


def test_if_and_unless_together_is_an_error(write, finder):
    expect_error(
        write('<node pkg="demo_pkg" exec="t" if="true" unless="false"/>'), "'if' and 'unless'", package_finder=finder
    )


# -------------------------------------------------------------- strictness errors


@pytest.mark.parametrize(
    "body, fragments",
    [
        # unknown elements, also inside a node and inside a skipped group
        ('<set_env name="A" value="1"/>', ["<set_env", "unknown or misplaced element"]),
        ('<node pkg="demo_pkg" exec="t"><env name="A" value="1"/></node>', ["<env", "unknown or misplaced"]),
        ('<group if="false"><executable cmd="ls"/></group>', ["<executable", "unknown or misplaced"]),
        ('<param name="a" value="1"/>', ["<param", "unknown or misplaced"]),  # param outside a node
        # unknown attributes
        ('<node pkg="demo_pkg" exec="t" launch-prefix="gdb"/>', ["launch-prefix", "unknown attribute"]),
        ('<arg name="a" default="1" typo="x"/>', ["typo", "<arg"]),
        ('<group if="false"><node pkg="demo_pkg" exec="t" nmae="x"/></group>', ["nmae", "unknown attribute"]),
        ('<node pkg="demo_pkg" exec="t"><remap from="a" to="b" if="true"/></node>', ["<remap", "unknown attribute"]),
        # unknown substitutions (even where the value would never be evaluated)
        ('<node pkg="demo_pkg" exec="t" name="$(anon t)"/>', ["unknown substitution", "anon"]),
        ('<group if="false"><node pkg="demo_pkg" exec="$(eval 1+1)"/></group>', ["unknown substitution", "eval"]),
        ('<node pkg="demo_pkg" exec="t" name="$(var a"/>', ["unterminated"]),
        ('<node pkg="demo_pkg" exec="t" name="$(var a b)"/>', ["takes 1 argument"]),
        # structurally incomplete
        ('<node exec="t"/>', ["missing required attribute", "pkg"]),
        ('<node pkg="demo_pkg" exec="t"><param name="a"/></node>', ["<param"]),
        ('<node pkg="demo_pkg" exec="t"><param name="a" value="1" from="f.yaml"/></node>', ["<param"]),
        ('<node pkg="demo_pkg" exec="t" output="terminal"/>', ["output"]),
        ('<node pkg="demo_pkg" exec="t"/>stray text', ["unexpected text"]),
    ],
)
def test_strictness_errors(write, finder, body, fragments):
    expect_error(write(body), *fragments, package_finder=finder)


def test_malformed_xml_and_wrong_root(tmp_path, finder):
    broken = tmp_path / "broken.launch.xml"
    broken.write_text("<launch>\n  <node pkg='a' exec='b'>\n</launch>\n")
    err = expect_error(broken, "malformed XML", package_finder=finder)
    assert err.line == 3
    wrong = tmp_path / "wrong.launch.xml"
    wrong.write_text("<launchfile/>")
    expect_error(wrong, "<launch>", package_finder=finder)


def test_default_finder_uses_the_ament_index(write, tmp_path, monkeypatch):
    # A minimal ament index: <prefix>/share/ament_index/resource_index/packages/<pkg>.
    index_prefix = tmp_path / "ament_prefix"
    marker_dir = index_prefix / "share" / "ament_index" / "resource_index" / "packages"
    marker_dir.mkdir(parents=True)
    (marker_dir / "indexed_pkg").write_text("")
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(index_prefix))
    assert ament_prefix_finder("indexed_pkg") == str(index_prefix)
    path = write(
        '<node pkg="indexed_pkg" exec="t" name="n"><param name="s" value="$(find-pkg-share indexed_pkg)"/></node>'
    )
    desc = parse_launch_file(path)
    assert desc.nodes[0].params["s"] == str(index_prefix / "share" / "indexed_pkg")
    assert desc.nodes[0].command()[0] == str(index_prefix / "lib" / "indexed_pkg" / "t")
    expect_error(
        write('<let name="x" value="$(find-pkg-prefix not_indexed_pkg)"/>', name="u.launch.xml"), "not_indexed_pkg"
    )


# ----------------------------------------------------------------------- command()


def test_command_exact_output(write, finder, prefix):
    path = write(
        """
        <group>
          <push_ros_namespace namespace="robot"/>
          <node pkg="demo_pkg" exec="talker" name="talker" args="--verbose 3">
            <param name="rate" value="5.0"/>
            <param from="$(find-pkg-share demo_pkg)/config/base.yaml"/>
            <remap from="out" to="/chatter"/>
            <param name="frame" value="base_link"/>
            <param from="$(find-pkg-share demo_pkg)/config/extra.yaml"/>
            <remap from="in" to="fb"/>
          </node>
        </group>
        <node pkg="demo_pkg" exec="bare"/>
        <node pkg="demo_pkg" exec="logger" name="lg" ros_args="--log-level debug"/>
        """
    )
    talker, bare, logger = parse_launch_file(path, package_finder=finder).nodes
    share = prefix / "share" / "demo_pkg" / "config"
    assert talker.command(finder) == [
        str(prefix / "lib" / "demo_pkg" / "talker"),
        "--verbose",
        "3",
        "--ros-args",
        "-r",
        "__node:=talker",
        "-r",
        "__ns:=/robot",
        "--params-file",
        str(share / "base.yaml"),
        "--params-file",
        str(share / "extra.yaml"),
        "-p",
        "rate:=5.0",
        "-p",
        "frame:=base_link",
        "-r",
        "out:=/chatter",
        "-r",
        "in:=fb",
    ]
    assert bare.command(finder) == [str(prefix / "lib" / "demo_pkg" / "bare"), "--ros-args"]
    assert logger.command(finder) == [
        str(prefix / "lib" / "demo_pkg" / "logger"),
        "--ros-args",
        "--log-level",
        "debug",
        "--ros-args",
        "-r",
        "__node:=lg",
    ]
    with pytest.raises(LookupError, match="ghost"):
        NodeSpec(package="ghost", executable="x").command(finder)


def test_empty_param_value_is_an_empty_string_for_rcl(write, finder, prefix, ros_domain):
    """value="" (e.g. an arg defaulting to '') becomes -p name:='' as ros2 launch writes it;
    rcl rejects -p name:= and the node would not start."""
    import rclpy
    from rclpy.context import Context

    path = write(
        """
        <arg name="robot_type" default=""/>
        <node pkg="demo_pkg" exec="rec" name="rec">
          <param name="robot_type" value="$(var robot_type)"/>
          <param name="quoted" value="''"/>
        </node>
        """
    )
    (node,) = parse_launch_file(path, package_finder=finder).nodes
    assert node.params == {"robot_type": "", "quoted": "''"}
    command = node.command(finder)
    assert command[-4:] == ["-p", "robot_type:=''", "-p", "quoted:=''"]

    def parameter(ros_args: list[str]):
        context = Context()
        rclpy.init(args=["rec", "--ros-args", *ros_args], context=context, domain_id=ros_domain)
        try:
            probe = rclpy.create_node("rec", context=context, automatically_declare_parameters_from_overrides=True)
            value = probe.get_parameter("robot_type").value
            probe.destroy_node()
            return value
        finally:
            context.try_shutdown()

    assert parameter(command[command.index("--ros-args") + 1 :]) == ""
    with pytest.raises(Exception):  # noqa: B017  what the runner used to pass: rclpy raises its own error type
        parameter(["-p", "robot_type:="])


# -------------------------------------------------------------------- LaunchedGraph

NODE_SCRIPT = '''#!{python}
"""Test node: record argv/env, then wait for SIGINT and exit with a fixed code."""
import json, os, signal, sys, time

OUT = {out!r}
EXIT_CODE = {code}
IGNORE = {ignore!r}
CRASH = {crash!r}

stopping = False


def on_sigint(signum, frame):
    global stopping
    stopping = True


for name in IGNORE:
    signal.signal(getattr(signal, name), signal.SIG_IGN)
if "SIGINT" not in IGNORE:
    signal.signal(signal.SIGINT, on_sigint)

record = {{"argv": sys.argv, "env": os.environ.get("LAUNCH_XML_TEST_VALUE"),
          "pid": os.getpid(), "pgid": os.getpgid(0)}}
with open(OUT + ".tmp", "w") as f:
    json.dump(record, f)
os.replace(OUT + ".tmp", OUT)  # atomic: the test never reads half a file
print("node started", os.path.basename(sys.argv[0]))
if CRASH:
    print("fatal: simulated crash", file=sys.stderr)
    sys.exit(3)
while not stopping:
    time.sleep(0.02)
print("caught SIGINT, shutting down")
sys.exit(EXIT_CODE)
'''


def install_node(
    prefix: Path,
    package: str,
    executable: str,
    out: Path,
    code: int = 0,
    ignore: tuple[str, ...] = (),
    crash: bool = False,
) -> Path:
    """Write an executable Python script to <prefix>/lib/<package>/<executable>."""
    path = prefix / "lib" / package / executable
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        NODE_SCRIPT.format(python=sys.executable, out=str(out), code=code, ignore=list(ignore), crash=crash)
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def wait_for(predicate: Callable[[], bool], graph: LaunchedGraph, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}\n{graph.tail_logs(20)}")


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_launched_graph_starts_and_stops_two_nodes(write, finder, prefix, tmp_path):
    out_a, out_b = tmp_path / "talker.json", tmp_path / "listener.json"
    install_node(prefix, "demo_pkg", "talker", out_a, code=0)
    install_node(prefix, "demo_pkg", "listener", out_b, code=7)
    path = write(
        """
        <arg name="rate" default="5"/>
        <node pkg="demo_pkg" exec="talker" name="talker" args="--count 2">
          <param name="rate" value="$(var rate)"/>
          <param from="$(find-pkg-share demo_pkg)/config/base.yaml"/>
        </node>
        <group>
          <push_ros_namespace namespace="robot"/>
          <node pkg="demo_pkg" exec="listener" name="listener">
            <remap from="chatter" to="/talker/chatter"/>
          </node>
        </group>
        """
    )
    desc = parse_launch_file(path, overrides={"rate": "20"}, package_finder=finder)
    log_dir = tmp_path / "logs"
    with LaunchedGraph() as graph:
        graph.start(desc, env={"LAUNCH_XML_TEST_VALUE": "hello"}, log_dir=log_dir)
        wait_for(lambda: out_a.exists() and out_b.exists(), graph, "both nodes to record their argv")
        assert graph.alive() == {"talker": True, "listener": True}

        a, b = json.loads(out_a.read_text()), json.loads(out_b.read_text())
        base = str(prefix / "share" / "demo_pkg" / "config" / "base.yaml")
        assert a["argv"] == [
            str(prefix / "lib" / "demo_pkg" / "talker"),
            "--count",
            "2",
            "--ros-args",
            "-r",
            "__node:=talker",
            "--params-file",
            base,
            "-p",
            "rate:=20",
        ]
        assert b["argv"] == [
            str(prefix / "lib" / "demo_pkg" / "listener"),
            "--ros-args",
            "-r",
            "__node:=listener",
            "-r",
            "__ns:=/robot",
            "-r",
            "chatter:=/talker/chatter",
        ]
        assert a["argv"] == desc.nodes[0].command(finder) and b["argv"] == desc.nodes[1].command(finder)
        assert a["env"] == b["env"] == "hello"
        # Each node leads its own process group, separate from ours.
        assert a["pgid"] == a["pid"] and b["pgid"] == b["pid"]
        assert a["pgid"] != os.getpgid(0)
        assert graph.pids == {"talker": a["pid"], "listener": b["pid"]}

        wait_for(lambda: "node started" in graph.tail_logs(5), graph, "log output")
        codes = graph.stop(timeout=10.0)
        assert codes == {"talker": 0, "listener": 7}
        assert graph.alive() == {"talker": False, "listener": False}
        assert not pid_exists(a["pid"]) and not pid_exists(b["pid"])
        assert graph.stop() == codes  # idempotent

    logs = graph.tail_logs(10)
    assert "==> talker" in logs and "==> listener" in logs
    assert logs.count("caught SIGINT, shutting down") == 2
    assert (log_dir / "talker.log").read_text().splitlines() == ["node started talker", "caught SIGINT, shutting down"]
    assert "node started listener" in (log_dir / "listener.log").read_text()


def test_stop_escalates_to_sigterm_and_sigkill(write, finder, prefix, tmp_path):
    out_t, out_k = tmp_path / "stubborn.json", tmp_path / "immortal.json"
    install_node(prefix, "demo_pkg", "stubborn", out_t, ignore=("SIGINT",))
    install_node(prefix, "demo_pkg", "immortal", out_k, ignore=("SIGINT", "SIGTERM"))
    path = write(
        '<node pkg="demo_pkg" exec="stubborn" name="stubborn"/>\n<node pkg="demo_pkg" exec="immortal" name="immortal"/>'
    )
    with LaunchedGraph() as graph:
        graph.start(parse_launch_file(path, package_finder=finder), log_dir=tmp_path / "logs")
        wait_for(lambda: out_t.exists() and out_k.exists(), graph, "nodes to start")
        started = time.monotonic()
        codes = graph.stop(timeout=0.5)
        elapsed = time.monotonic() - started
    assert codes == {"stubborn": -signal.SIGTERM, "immortal": -signal.SIGKILL}
    assert 0.9 <= elapsed < 5.0, elapsed  # two 0.5 s grace periods, then SIGKILL is immediate


def test_crashed_node_is_reported(write, finder, prefix, tmp_path):
    out_ok, out_bad = tmp_path / "ok.json", tmp_path / "bad.json"
    install_node(prefix, "demo_pkg", "ok", out_ok)
    install_node(prefix, "demo_pkg", "bad", out_bad, crash=True)
    path = write(
        '<node pkg="demo_pkg" exec="ok" name="same" namespace="a"/>\n'
        '<node pkg="demo_pkg" exec="bad" name="same" namespace="b"/>'
    )
    with LaunchedGraph() as graph:
        graph.start(parse_launch_file(path, package_finder=finder), log_dir=tmp_path / "logs")
        # Same node name in two namespaces: keys fall back to fully qualified names.
        wait_for(lambda: graph.alive() == {"/a/same": True, "/b/same": False}, graph, "the crash")
        tail = graph.tail_logs(5)
        assert "fatal: simulated crash" in tail and "exited with 3" in tail
        assert graph.stop(timeout=10.0) == {"/a/same": 0, "/b/same": 3}


def test_missing_executable_starts_nothing(write, finder, prefix, tmp_path):
    out = tmp_path / "first.json"
    install_node(prefix, "demo_pkg", "first", out)
    path = write('<node pkg="demo_pkg" exec="first"/>\n<node pkg="demo_pkg" exec="not_built"/>')
    graph = LaunchedGraph()
    with pytest.raises(FileNotFoundError, match="not_built"):
        graph.start(parse_launch_file(path, package_finder=finder), log_dir=tmp_path / "logs")
    assert graph.alive() == {}
    time.sleep(0.3)
    assert not out.exists()  # the valid node was not started either


def test_context_manager_stops_nodes_on_error(write, finder, prefix, tmp_path):
    out = tmp_path / "n.json"
    install_node(prefix, "demo_pkg", "n", out)
    path = write('<node pkg="demo_pkg" exec="n"/>')
    with pytest.raises(RuntimeError, match="boom"):
        with LaunchedGraph() as graph:
            graph.start(parse_launch_file(path, package_finder=finder), log_dir=tmp_path / "logs")
            wait_for(out.exists, graph, "node to start")
            pid = json.loads(out.read_text())["pid"]
            raise RuntimeError("boom")
    assert graph.alive() == {"n": False}
    assert graph.returncodes() == {"n": 0}
    assert not pid_exists(pid)


def test_nodes_die_with_a_killed_launcher(write, finder, prefix, tmp_path):
    """A launcher killed by SIGKILL must not leave its nodes publishing on the domain."""
    out = tmp_path / "orphan.json"
    install_node(prefix, "demo_pkg", "orphan", out)
    path = write('<node pkg="demo_pkg" exec="orphan"/>')
    launcher_code = (
        "import sys, time\n"
        "from rla_wm_ros.launch_xml import LaunchedGraph, parse_launch_file\n"
        f"finder = lambda package: {str(prefix)!r}\n"
        f"description = parse_launch_file({str(path)!r}, package_finder=finder)\n"
        f"LaunchedGraph().start(description, log_dir={str(tmp_path / 'logs')!r})\n"
        "time.sleep(600)\n"
    )
    launcher = subprocess.Popen([sys.executable, "-c", launcher_code])
    try:
        deadline = time.monotonic() + 20
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert out.exists(), "the node never started"
        pid = json.loads(out.read_text())["pid"]
        assert pid_exists(pid)
        launcher.kill()
        launcher.wait(timeout=10)
        deadline = time.monotonic() + 10
        while pid_exists(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_exists(pid), "the node outlived its killed launcher"
    finally:
        launcher.kill()
        if out.exists() and pid_exists(json.loads(out.read_text())["pid"]):
            os.kill(json.loads(out.read_text())["pid"], signal.SIGKILL)  # do not leave it behind on failure


# ------------------------------------------------------------------------- include


def test_include_passes_args_pushes_namespace_and_does_not_leak(write, finder):
    write(
        """
        <arg name="rate" default="1"/>
        <arg name="topic"/>
        <let name="inner_only" value="x"/>
        <node pkg="demo_pkg" exec="inner" name="inner">
          <param name="rate" value="$(var rate)"/>
          <param name="level" value="$(var level)"/>
          <remap from="in" to="$(var topic)"/>
        </node>
        """,
        name="inner.launch.xml",
    )
    path = write(
        """
        <arg name="level" default="3"/>
        <group>
          <push_ros_namespace namespace="arm"/>
          <include file="$(dirname)/inner.launch.xml">
            <arg name="topic" value="/camera/$(var level)"/>
          </include>
        </group>
        <node pkg="demo_pkg" exec="outer" name="outer">
          <param name="seen" value="$(var level)"/>
        </node>
        """
    )
    description = parse_launch_file(path, package_finder=finder)
    inner, outer = description.nodes
    assert inner.name == "inner" and inner.namespace == "/arm"
    assert inner.params == {"rate": "1", "level": "3"}  # its own default + the includer's configuration
    assert inner.remaps == [("in", "/camera/3")]
    assert outer.namespace is None
    assert set(description.args) == {"level"}  # the top file's arguments only


def test_include_errors(write, finder):
    write('<arg name="a"/>\n<node pkg="demo_pkg" exec="n"/>', name="needs_a.launch.xml")
    expect_error(
        write('<include file="$(dirname)/needs_a.launch.xml"/>'), "required launch argument 'a'", package_finder=finder
    )
    expect_error(
        write('<include file="$(dirname)/needs_a.launch.xml"><arg name="b" value="1"/></include>'),
        "not declared by 'needs_a.launch.xml'",
        package_finder=finder,
    )
    expect_error(write('<include file="$(dirname)/absent.launch.xml"/>'), "does not exist", package_finder=finder)
    expect_error(write('<include file="$(dirname)/test.launch.xml"/>'), "includes itself", package_finder=finder)
    expect_error(
        write('<include file="x"><arg name="a"/></include>'),
        "missing required attribute(s) value",
        package_finder=finder,
    )
