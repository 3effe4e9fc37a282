"""The safety gate process takes its joint limits from a robot_description URDF; it refuses a file without joints."""

from __future__ import annotations

import re

import pytest
import yaml
from builtin_interfaces.msg import Duration
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from rla_wm_ros.launch_xml import NodeSpec

from conftest import Inbox, config_file, publish_until, so101_urdf, wait_for

pytestmark = pytest.mark.timeout(120)


def movable_joints(text: str) -> dict[str, dict[str, str]]:
    """{name: <limit> attributes} of the revolute/prismatic joints in file order, read with a regex."""
    joints = {}
    for match in re.finditer(r'<joint\s+name="([^"]+)"\s+type="(revolute|prismatic)"\s*>(.*?)</joint>', text, re.S):
        name, _, body = match.groups()
        joints[name] = dict(re.findall(r'(\w+)="([^"]*)"', re.search(r"<limit\b([^>]*?)/?>", body).group(1)))
    return joints


def gate_values(diagnostics: Inbox) -> dict[str, str]:
    for array in reversed(diagnostics.snapshot()):
        for status in array.status:
            values = {kv.key: kv.value for kv in status.values}
            if "last_rejection" in values:
                return values
    return {}


def test_gate_governs_the_joints_of_its_robot_description(ros_node, start_nodes, tmp_path):
    urdf = so101_urdf().read_text(encoding="utf-8")
    joints = movable_joints(urdf)
    names = list(joints)
    assert {"shoulder_pan", "gripper"} <= set(names)
    limits_file = tmp_path / "limits.yaml"
    limits_file.write_text("max_step: 10.0\n")  # no joints: they all come from the URDF
    # robot_description goes in a params file, as a launch file's xacro/robot_state_publisher set-up passes it.
    description = tmp_path / "description.yaml"
    description.write_text(yaml.safe_dump({"/**": {"ros__parameters": {"robot_description": urdf}}}))
    graph = start_nodes(
        NodeSpec(
            "rla_wm_ros",
            "safety_gate",
            name="safety_gate",
            param_files=[config_file("safety_gate.yaml"), str(description)],
            params={"limits_file": str(limits_file)},
        )
    )
    wait_for(lambda: f"joints {names}, max_step 10.0" in graph.tail_logs(40), 60, "the gate to log its joints", graph)

    # It enforces the URDF's limits: a chunk just past shoulder_pan's URDF upper bound is held.
    diagnostics = Inbox()
    ros_node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics, 10)
    camera = ros_node.create_publisher(Image, "camera/image_raw", qos_profile_sensor_data)
    state = ros_node.create_publisher(JointState, "joint_states", 10)
    model = ros_node.create_publisher(JointTrajectory, "policy/joint_trajectory", 10)

    def feed() -> None:  # a live robot at 20 Hz
        camera.publish(Image(height=2, width=2, encoding="rgb8", step=6, data=bytes(12)))
        state.publish(JointState(name=names, position=[0.0] * len(names)))

    feeder = ros_node.create_timer(0.05, feed)
    try:
        wait_for(
            lambda: (
                gate_values(diagnostics).get("age_state_s", "never") != "never"
                and gate_values(diagnostics).get("age_camera_s", "never") != "never"
            ),
            30,
            "the gate to see the camera and the SO-101 joint states",
            graph,
        )
        beyond = float(joints["shoulder_pan"]["upper"]) + 0.01
        chunk = JointTrajectory(
            joint_names=names,
            points=[
                JointTrajectoryPoint(
                    positions=[beyond if name == "shoulder_pan" else 0.0 for name in names],
                    time_from_start=Duration(sec=2),
                ),
            ],
        )
        publish_until(
            lambda: model.publish(chunk),
            lambda: "joint shoulder_pan" in gate_values(diagnostics).get("last_rejection", ""),
            20,
            lambda: f"the gate to refuse shoulder_pan past its URDF limit: {gate_values(diagnostics)}",
            graph,
        )
        assert "outside" in gate_values(diagnostics)["last_rejection"]
        # The same chunk just inside the limit is forwarded: the bound is the URDF's, not a stricter one.
        inside = JointTrajectory(
            joint_names=names,
            points=[
                JointTrajectoryPoint(
                    positions=[beyond - 0.02 if name == "shoulder_pan" else 0.0 for name in names],
                    time_from_start=Duration(sec=2),
                )
            ],
        )
        forwarded = int(gate_values(diagnostics)["forwarded"])
        publish_until(
            lambda: model.publish(inside),
            lambda: int(gate_values(diagnostics)["forwarded"]) > forwarded,
            20,
            "the gate to forward shoulder_pan just inside its URDF limit",
            graph,
            every=1.0,
        )
    finally:
        feeder.cancel()
    assert graph.alive() == {"safety_gate": True}


def test_gate_refuses_a_limits_file_with_no_joints(start_nodes, tmp_path):
    limits_file = tmp_path / "limits.yaml"
    limits_file.write_text("joints: {}\nmax_step: 1.0\n")
    graph = start_nodes(
        NodeSpec(
            "rla_wm_ros",
            "safety_gate",
            name="safety_gate",
            param_files=[config_file("safety_gate.yaml")],
            params={"limits_file": str(limits_file)},
        )
    )
    wait_for(lambda: not graph.alive()["safety_gate"], 30, "the gate to exit")
    assert graph.returncodes()["safety_gate"] != 0
    assert f"{limits_file}: `joints` is empty" in graph.tail_logs(40)
