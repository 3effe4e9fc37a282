"""rla_wm_ros.launch_xml, the strict ROS 2 XML launch interpreter: node contents, namespaces, if/unless
conditions, what it refuses, and the exact command line each node gets."""

from __future__ import annotations

import pytest

from rla_wm_ros.launch_xml import NodeSpec, ament_prefix_finder, parse_launch_file

from launch_xml_helpers import *  # noqa: F403  (the fixtures: finder, prefix, write)
from launch_xml_helpers import expect_error

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
