"""sim_arm_planner.launch.xml: the simulated SO-101 planned for through robot_planner.launch.xml, the file a real
arm uses. The graph as ROS resolves it, the sim's goal image reaching the planner, MPC plans for the arm's six
joints inside the URDF's ranges, and dry run: the gate vets them and nothing reaches the arm.

The world models are tiny and random: this checks the wiring and the messages, not planning quality. The
second test is the cube-state variant: the front-camera cube estimator is both the encoder and the planner's
reader of the goal image, with so101_cube_state_planner.yaml's settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ament_index_python.packages import get_package_share_directory
from rcl_interfaces.srv import GetParameters
from trajectory_msgs.msg import JointTrajectory

from rla_wm.envs.so101.environment_state import CUBE_STATE_CHANNELS, CUBE_STATE_ENCODER_ID
from rla_wm.envs.so101.sim import JOINT_NAMES, urdf_limits
from rla_wm_msgs.msg import FeatureMap
from rla_wm_ros.conversions import msg_to_chunk
from rla_wm_ros.launch_xml import LaunchedGraph, parse_launch_file

from conftest import Inbox, call_service, config_file, node_endpoints, wait_for
from test_planner_node import make_checkpoints

pytestmark = pytest.mark.timeout(300)

LAUNCH_FILE = Path(get_package_share_directory("rla_wm_ros")) / "launch" / "sim_arm_planner.launch.xml"
RESOLUTION = 112  # builtin:dinov2-tiny-random at 112 px: 8 x 8 patches, make_checkpoints' grid
CONTROLLER = "/arm_controller/joint_trajectory"
IMAGE, FEATURES = "sensor_msgs/msg/Image", "rla_wm_msgs/msg/FeatureMap"
STATE, TRAJECTORY = "sensor_msgs/msg/JointState", "trajectory_msgs/msg/JointTrajectory"
MAX_DELTA = 0.2  # config/so101_planner.yaml


def tiny_arm_world_model(folder: Path, **features) -> dict[str, str]:
    """Random RLA autoencoder, RLA-WM and regression for the SO-101's six joints (the URDF's ranges) on
    the 8x8 tiny-random features (or `features`: encoder_id, tokens, channels)."""
    limits = urdf_limits()
    order = [limits.names.index(name) for name in JOINT_NAMES]
    return make_checkpoints(
        folder,
        features.pop("encoder_id", f"builtin:dinov2-tiny-random@{RESOLUTION}"),
        action_low=tuple(float(limits.lower[i]) for i in order),
        action_high=tuple(float(limits.upper[i]) for i in order),
        **features,
    )


def assert_plans_fit_the_arm(plans: list[JointTrajectory]) -> None:
    limits = urdf_limits()
    order = [limits.names.index(name) for name in JOINT_NAMES]
    for msg in plans:
        assert list(msg.joint_names) == list(JOINT_NAMES)
        chunk = msg_to_chunk(msg)
        assert np.all(chunk.positions >= limits.lower[order] - 1e-6)
        assert np.all(chunk.positions <= limits.upper[order] + 1e-6)
        assert np.abs(np.diff(chunk.positions, axis=0)).max() <= MAX_DELTA + 1e-6


def test_the_planner_plans_for_the_arm_toward_the_sims_goal_image_in_dry_run(ros_domain, ros_node, tmp_path):
    checkpoints = tiny_arm_world_model(tmp_path)
    description = parse_launch_file(
        LAUNCH_FILE,
        overrides={"encoder_resolution": str(RESOLUTION), "dry_run": "true", "mpc_rate": "2.0", **checkpoints},
    )
    assert [node.name for node in description.nodes] == ["sim_arm", "encoder", "planner", "safety_gate"]
    # What each node must be on, as ROS resolves it (nodes also have parameter, log and action topics).
    expected = {
        "sim_arm": ({(CONTROLLER, TRAJECTORY)}, {("/front/image_raw", IMAGE), ("/sim/goal_image", IMAGE)}),
        "encoder": ({("/front/image_raw", IMAGE)}, {("/features", FEATURES)}),
        "planner": (
            {("/features", FEATURES), ("/joint_states", STATE), ("/sim/goal_image", IMAGE)},
            {("/planner/joint_trajectory", TRAJECTORY)},
        ),
        "safety_gate": (
            {("/planner/joint_trajectory", TRAJECTORY), ("/front/image_raw", IMAGE)},
            {(CONTROLLER, TRAJECTORY)},
        ),
    }
    plans, sent = Inbox(), Inbox()
    ros_node.create_subscription(JointTrajectory, "/planner/joint_trajectory", plans, 10)
    ros_node.create_subscription(JointTrajectory, CONTROLLER, sent, 10)
    with LaunchedGraph() as graph:
        graph.start(description, env={"ROS_DOMAIN_ID": str(ros_domain)}, log_dir=tmp_path / "logs")
        actual: dict = {}

        def resolved() -> bool:
            actual.update({name: node_endpoints(ros_node, name) for name in expected})
            return all(subs <= actual[name][0] and pubs <= actual[name][1] for name, (subs, pubs) in expected.items())

        wait_for(resolved, 150, lambda: f"the resolved graph to include {expected}; it is {actual}", graph)
        # Only the gate publishes to the arm's controller.
        assert [info.node_name for info in ros_node.get_publishers_info_by_topic(CONTROLLER)] == ["safety_gate"]
        wait_for(lambda: "MPC goal set from goal_image" in graph.tail_logs(200), 120, "the sim's goal image", graph)
        wait_for(lambda: len(plans.snapshot()) >= 2, 120, "two MPC plans", graph)
        assert_plans_fit_the_arm(plans.snapshot())
        wait_for(lambda: "dry run: would send" in graph.tail_logs(200), 60, "the gate's dry-run log line", graph)
        assert not sent.snapshot(), "dry run sent a command to the arm's controller"
        assert all(graph.alive().values()), graph.tail_logs(30)


def test_the_cube_state_planner_reads_the_goal_image_with_the_camera_estimator(ros_domain, ros_node, tmp_path):
    checkpoints = tiny_arm_world_model(
        tmp_path, encoder_id=CUBE_STATE_ENCODER_ID, tokens=1, channels=CUBE_STATE_CHANNELS
    )
    description = parse_launch_file(
        LAUNCH_FILE,
        overrides={
            "encoder_model": "builtin:sim-so101-cube-cnn",
            "planner_params": config_file("so101_cube_state_planner.yaml"),
            "dry_run": "true",
            "mpc_rate": "2.0",
            **checkpoints,
        },
    )
    plans, features = Inbox(), Inbox()
    ros_node.create_subscription(JointTrajectory, "/planner/joint_trajectory", plans, 10)
    ros_node.create_subscription(FeatureMap, "/features", features, 10)
    with LaunchedGraph() as graph:
        graph.start(description, env={"ROS_DOMAIN_ID": str(ros_domain)}, log_dir=tmp_path / "logs")
        # The goal image becomes a goal only through the estimator: a ViT loader refuses its folder.
        wait_for(lambda: "MPC goal set from goal_image" in graph.tail_logs(200), 150, "the sim's goal image", graph)
        wait_for(lambda: len(plans.snapshot()) >= 2, 120, "two MPC plans", graph)
        assert_plans_fit_the_arm(plans.snapshot())
        observed = features.last()
        assert (observed.encoder_id, observed.grid_height * observed.grid_width, observed.channels) == (
            CUBE_STATE_ENCODER_ID,
            1,
            CUBE_STATE_CHANNELS,
        )
        # The running planner's settings are so101_cube_state_planner.yaml's, over planner.yaml's.
        answer = call_service(
            ros_node.create_client(GetParameters, "/planner/get_parameters"),
            GetParameters.Request(names=["cost_channels", "mpc_num_samples", "model"]),
            timeout=30.0,
            graph=graph,
        )
        values = answer.values
        assert [values[0].integer_value, values[1].integer_value, values[2].string_value] == [
            2,
            64,
            "builtin:sim-so101-cube-cnn",
        ]
        assert all(graph.alive().values()), graph.tail_logs(30)


def test_the_cube_state_planner_file_keeps_the_arms_joints_and_step_limit():
    """so101_cube_state_planner.yaml replaces so101_planner.yaml: the joints and their order, the step limit,
    and a search range inside the arm's own must stay the arm's."""
    import yaml

    arm, cube = (
        yaml.safe_load(open(config_file(name)))["/**"]["ros__parameters"]
        for name in ("so101_planner.yaml", "so101_cube_state_planner.yaml")
    )
    assert cube["joint_names"] == arm["joint_names"] and cube["max_delta"] == arm["max_delta"]
    assert all(a <= c for a, c in zip(arm["action_low"], cube["action_low"], strict=True))
    assert all(c <= a for a, c in zip(arm["action_high"], cube["action_high"], strict=True))
