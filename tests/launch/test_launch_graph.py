"""The real-robot launch files, run through the launch runner: which topics do the nodes END UP on?

test_launch_files.py checks the remap text of the files. These tests start the graph (one
process per node, as ros2 launch does) and ask the ROS graph, from a probe node, for the
resolved topic names and types of every node's subscriptions and publishers, so a remap that
misses the name a node really uses (e.g. the encoder's camera/image_raw/compressed) fails here.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from ament_index_python.packages import get_package_share_directory

from rla_wm_ros.launch_xml import LaunchedGraph, parse_launch_file

from conftest import config_file, wait_for

LAUNCH_DIR = Path(get_package_share_directory("rla_wm_ros")) / "launch"
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
CAMERA_TYPES = {IMAGE, COMPRESSED}
# Start-up of the torch nodes (import, model load) on a busy 2-core machine.
STARTUP_TIMEOUT = 120.0


@contextlib.contextmanager
def launched(launch_file: str, overrides: dict[str, str], domain: int, log_dir: Path):
    """Start every node of `launch_file` through the launch runner; stop them afterwards."""
    description = parse_launch_file(LAUNCH_DIR / launch_file, overrides=overrides)
    with LaunchedGraph() as graph:
        graph.start(description, env={"ROS_DOMAIN_ID": str(domain)}, log_dir=log_dir)
        yield graph


def endpoints(probe, node_name: str, namespace: str = "/") -> tuple[set, set]:
    """(subscriptions, publishers) of a node as {(resolved topic, type)}, empty until it is discovered."""
    try:
        subs = probe.get_subscriber_names_and_types_by_node(node_name, namespace)
        pubs = probe.get_publisher_names_and_types_by_node(node_name, namespace)
    except Exception:  # NodeNameNonExistentError until discovery has seen the node
        return set(), set()
    return ({(topic, t) for topic, types in subs for t in types}, {(topic, t) for topic, types in pubs for t in types})


def wait_for_endpoints(probe, graph, expected: dict[str, tuple[set, set]]) -> dict[str, tuple[set, set]]:
    """Wait until every node has at least its expected subscriptions and publishers; return what it has.

    On a time-out the failure shows each node's actual topics (a camera on the wrong topic
    shows up there) and the nodes' logs.
    """
    actual: dict[str, tuple[set, set]] = {}

    def complete() -> bool:
        actual.update({name: endpoints(probe, name) for name in expected})
        return all(subs <= actual[name][0] and pubs <= actual[name][1] for name, (subs, pubs) in expected.items())

    def what_is_missing() -> str:
        missing = {
            name: (sorted(subs - actual[name][0]), sorted(pubs - actual[name][1]))
            for name, (subs, pubs) in expected.items()
        }
        return (
            "the nodes to be on the expected topics.\n"
            f"missing (subscriptions, publishers): {missing}\n"
            f"actual subscriptions: { {n: sorted(a[0]) for n, a in actual.items()} }"
        )

    wait_for(complete, STARTUP_TIMEOUT, what_is_missing, graph)
    return actual


def camera_subscriptions(subs: set) -> set:
    return {(topic, t) for topic, t in subs if t in CAMERA_TYPES}


ROBOT_POLICY_CASES = {
    # compressed camera on a custom topic: the encoder's own topic name is camera/image_raw/compressed
    "compressed-custom": (
        {"compressed": "true", "camera_topic": "/wrist_camera/image_raw/compressed"},
        "/wrist_camera/image_raw/compressed",
        COMPRESSED,
    ),
    "plain-default": ({}, "/camera/image_raw", IMAGE),
    "plain-custom": (
        {"camera_topic": "/wrist_camera/image_raw", "encoder_resolution": "112"},
        "/wrist_camera/image_raw",
        IMAGE,
    ),
}


@pytest.mark.parametrize("case", sorted(ROBOT_POLICY_CASES))
def test_robot_policy_nodes_resolve_to_the_given_topics(case, ros_domain, ros_node, tmp_path):
    overrides, camera, camera_type = ROBOT_POLICY_CASES[case]
    overrides = {
        "policy_checkpoint": "builtin:sim-pusht-policy",
        "limits_file": config_file("pusht_limits.yaml"),
        # the default (facebook/dinov2-small) needs hub weights, which cannot be had here
        "encoder_model": "builtin:dinov2-tiny-random",
        "joint_state_topic": "/arm/joint_states",
        "controller_topic": "/arm/joint_trajectory_controller/joint_trajectory",
        **overrides,
    }
    joints, controller = overrides["joint_state_topic"], overrides["controller_topic"]
    expected = {
        "encoder": ({(camera, camera_type)}, {("/features", "rla_wm_msgs/msg/FeatureMap")}),
        "policy": (
            {("/features", "rla_wm_msgs/msg/FeatureMap"), (joints, "sensor_msgs/msg/JointState")},
            {("/policy/joint_trajectory", "trajectory_msgs/msg/JointTrajectory")},
        ),
        "safety_gate": (
            {
                (camera, camera_type),
                (joints, "sensor_msgs/msg/JointState"),
                ("/policy/joint_trajectory", "trajectory_msgs/msg/JointTrajectory"),
                ("/estop", "std_msgs/msg/Bool"),
            },
            {(controller, "trajectory_msgs/msg/JointTrajectory")},
        ),
    }
    with launched("robot_policy.launch.xml", overrides, ros_domain, tmp_path / "logs") as graph:
        actual = wait_for_endpoints(ros_node, graph, expected)
        # Every node that watches the camera watches exactly the given topic, and nothing else
        # that carries images (a stray subscription on /camera/image_raw/compressed would be a bug).
        for name in ("encoder", "safety_gate"):
            assert camera_subscriptions(actual[name][0]) == {(camera, camera_type)}, (name, actual[name][0])
        assert not camera_subscriptions(actual["policy"][0])
        # Only the gate talks to the controller.
        assert not any(topic == controller for topic, _ in actual["policy"][1] | actual["encoder"][1])
        # The encoder runs at the size the launch argument gives (its default: 224), asked of the node itself.
        from rcl_interfaces.srv import GetParameters

        client = ros_node.create_client(GetParameters, "/encoder/get_parameters")
        wait_for(lambda: client.wait_for_service(timeout_sec=0.2), STARTUP_TIMEOUT, "/encoder/get_parameters", graph)
        future = client.call_async(GetParameters.Request(names=["resolution"]))
        wait_for(future.done, 30.0, "the answer of /encoder/get_parameters", graph)
        assert future.result().values[0].integer_value == int(overrides.get("encoder_resolution", 224))
        ros_node.destroy_client(client)


ROBOT_RECORD_CASES = {
    "compressed-custom": (
        {
            "compressed": "true",
            "camera_topic": "/wrist_camera/image_raw/compressed",
            "action_topic": "/leader/joint_states",
            "action_type": "joint_state",
        },
        "/wrist_camera/image_raw/compressed",
        COMPRESSED,
        ("/leader/joint_states", "sensor_msgs/msg/JointState"),
    ),
    "plain-default": (
        {},
        "/camera/image_raw",
        IMAGE,
        ("/arm_controller/joint_trajectory", "trajectory_msgs/msg/JointTrajectory"),
    ),
}


@pytest.mark.parametrize("case", sorted(ROBOT_RECORD_CASES))
def test_robot_record_recorder_resolves_to_the_given_topics(case, ros_domain, ros_node, tmp_path):
    overrides, camera, camera_type, action = ROBOT_RECORD_CASES[case]
    overrides = {"dataset_root": str(tmp_path / "dataset"), **overrides}
    expected = {
        "recorder": (
            {(camera, camera_type), ("/joint_states", "sensor_msgs/msg/JointState"), action},
            {("/recorder/status", "rla_wm_msgs/msg/RecorderStatus")},
        )
    }
    with launched("robot_record.launch.xml", overrides, ros_domain, tmp_path / "logs") as graph:
        actual = wait_for_endpoints(ros_node, graph, expected)
        assert camera_subscriptions(actual["recorder"][0]) == {(camera, camera_type)}


def test_robot_record_default_robot_type_is_the_empty_string(ros_domain, ros_node, tmp_path):
    """robot_type defaults to '' in the file: the recorder must start, with robot_type an empty string.

    Asked through the node's real parameter service, /recorder/get_parameters.
    """
    from rcl_interfaces.msg import ParameterType
    from rcl_interfaces.srv import GetParameters

    overrides = {"dataset_root": str(tmp_path / "dataset")}
    description = parse_launch_file(LAUNCH_DIR / "robot_record.launch.xml", overrides=overrides)
    assert description.args["robot_type"] == ""
    with launched("robot_record.launch.xml", overrides, ros_domain, tmp_path / "logs") as graph:
        client = ros_node.create_client(GetParameters, "/recorder/get_parameters")
        wait_for(
            lambda: client.wait_for_service(timeout_sec=0.2),
            STARTUP_TIMEOUT,
            "the recorder's /recorder/get_parameters service",
            graph,
        )
        future = client.call_async(GetParameters.Request(names=["robot_type", "dataset_root"]))
        wait_for(future.done, 30.0, "the answer of /recorder/get_parameters", graph)
        robot_type, dataset_root = future.result().values
        assert robot_type.type == ParameterType.PARAMETER_STRING
        assert robot_type.string_value == ""
        assert dataset_root.string_value == overrides["dataset_root"]
        assert all(graph.alive().values()), graph.tail_logs(30)
        ros_node.destroy_client(client)
