"""rla_wm_ros.launch_xml, the strict ROS 2 XML launch interpreter: arguments, <let> and group scopes,
substitutions, and <include>."""

from __future__ import annotations

from rla_wm_ros.launch_xml import LaunchDescription, parse_launch_file

from launch_xml_helpers import *  # noqa: F403  (the fixtures: finder, prefix, write)
from launch_xml_helpers import expect_error

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
