"""rla_wm_ros.launch_xml.LaunchedGraph, the process runner: it starts each node in its own process group
with the command line the launch file gives, stops them with SIGINT then SIGTERM then SIGKILL, reports
crashes, and leaves no node behind (not even when the launcher itself is killed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from rla_wm_ros.launch_xml import LaunchedGraph, parse_launch_file

from conftest import wait_for
from launch_xml_helpers import *  # noqa: F403  (the fixtures: finder, prefix, write)
from launch_xml_helpers import install_node, pid_exists


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
        wait_for(lambda: out_a.exists() and out_b.exists(), 15, "both nodes to record their argv", graph)
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

        wait_for(lambda: "node started" in graph.tail_logs(5), 15, "log output", graph)
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
        wait_for(lambda: out_t.exists() and out_k.exists(), 15, "nodes to start", graph)
        codes = graph.stop(timeout=0.5)
    assert codes == {"stubborn": -signal.SIGTERM, "immortal": -signal.SIGKILL}
    # Each signal came only after the one before it was ignored: SIGINT, then SIGTERM, then SIGKILL.
    logs = tmp_path / "logs"
    assert (logs / "stubborn.log").read_text().splitlines() == ["node started stubborn", "ignored SIGINT"]
    assert (logs / "immortal.log").read_text().splitlines() == [
        "node started immortal",
        "ignored SIGINT",
        "ignored SIGTERM",
    ]


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
        wait_for(
            lambda: graph.alive() == {"/a/same": True, "/b/same": False},
            15,
            lambda: f"the crash\n{graph.tail_logs(20)}",
        )
        tail = graph.tail_logs(5)
        assert "fatal: simulated crash" in tail and "exited with 3" in tail
        # The healthy node writes its record after installing its SIGINT handler: stopping it before
        # then (a slow start) ends it by KeyboardInterrupt, exit 1 (CI once failed so).
        wait_for(out_ok.exists, 15, "the healthy node to start", graph)
        assert graph.stop(timeout=10.0) == {"/a/same": 0, "/b/same": 3}


def test_missing_executable_starts_nothing(write, finder, prefix, tmp_path):
    out = tmp_path / "first.json"
    install_node(prefix, "demo_pkg", "first", out)
    path = write('<node pkg="demo_pkg" exec="first"/>\n<node pkg="demo_pkg" exec="not_built"/>')
    graph = LaunchedGraph()
    with pytest.raises(FileNotFoundError, match="not_built"):
        graph.start(parse_launch_file(path, package_finder=finder), log_dir=tmp_path / "logs")
    assert graph.alive() == {}
    # The same node started afterwards writes its file: had the refused start launched it, that one
    # (started earlier) would have written out.json by then.
    control_out = tmp_path / "control.json"
    install_node(prefix, "demo_pkg", "control", control_out)
    with LaunchedGraph() as control:
        control.start(
            parse_launch_file(
                write('<node pkg="demo_pkg" exec="control"/>', name="control.launch.xml"), package_finder=finder
            ),
            log_dir=tmp_path / "control_logs",
        )
        wait_for(control_out.exists, 15, "the control node to start", control)
    assert not out.exists()  # the valid node was not started either


def test_context_manager_stops_nodes_on_error(write, finder, prefix, tmp_path):
    out = tmp_path / "n.json"
    install_node(prefix, "demo_pkg", "n", out)
    path = write('<node pkg="demo_pkg" exec="n"/>')
    with pytest.raises(RuntimeError, match="boom"):
        with LaunchedGraph() as graph:
            graph.start(parse_launch_file(path, package_finder=finder), log_dir=tmp_path / "logs")
            wait_for(out.exists, 15, "node to start", graph)
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
        "import signal\n"
        "from rla_wm_ros.launch_xml import LaunchedGraph, parse_launch_file\n"
        f"finder = lambda package: {str(prefix)!r}\n"
        f"description = parse_launch_file({str(path)!r}, package_finder=finder)\n"
        f"LaunchedGraph().start(description, log_dir={str(tmp_path / 'logs')!r})\n"
        "signal.pause()\n"  # until killed
    )
    launcher = subprocess.Popen([sys.executable, "-c", launcher_code])
    try:
        wait_for(lambda: out.exists() or launcher.poll() is not None, 20, "the node to start")
        assert out.exists(), "the node never started"
        pid = json.loads(out.read_text())["pid"]
        assert pid_exists(pid)
        launcher.kill()
        launcher.wait(timeout=10)
        wait_for(lambda: not pid_exists(pid), 10, "the node to die with its killed launcher")
    finally:
        launcher.kill()
        if out.exists() and pid_exists(json.loads(out.read_text())["pid"]):
            os.kill(json.loads(out.read_text())["pid"], signal.SIGKILL)  # do not leave it behind on failure
