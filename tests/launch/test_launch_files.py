"""The shipped launch files: parse them as ros2 launch would and check the graph they describe."""

from pathlib import Path

import pytest
import yaml
from ament_index_python.packages import get_package_prefix, get_package_share_directory

from rla_wm_ros.launch_xml import parse_launch_file

LAUNCH_DIR = Path(get_package_share_directory("rla_wm_ros")) / "launch"
REPO_LAUNCH_DIR = Path(__file__).resolve().parents[2] / "launch"
LIMITS = str(Path(get_package_share_directory("rla_wm_ros")) / "config" / "pusht_limits.yaml")
# Arguments a file has no default for (a real arm must name its own checkpoint and limits).
REQUIRED_ARGS = {
    "robot_policy.launch.xml": {"policy_checkpoint": "/opt/policy", "limits_file": LIMITS},
    "robot_record.launch.xml": {"dataset_root": "/data/teleop"},
    "robot_teleop.launch.xml": {"limits_file": LIMITS},
    "robot_planner.launch.xml": {"limits_file": LIMITS},
}


def test_every_repo_launch_file_is_installed_and_parses():
    files = sorted(REPO_LAUNCH_DIR.glob("*.launch.xml"))
    assert files, "no launch files in launch/"
    for file in files:
        installed = LAUNCH_DIR / file.name
        assert installed.is_file(), f"{file.name} is not installed by the package"
        description = parse_launch_file(installed, overrides=REQUIRED_ARGS.get(file.name, {}))
        assert description.nodes, f"{file.name} starts no nodes"
        for node in description.nodes:
            executable = Path(get_package_prefix(node.package)) / "lib" / node.package / node.executable
            assert executable.is_file(), f"{file.name}: {node.package}/{node.executable} is not installed"
            for params in node.param_files:
                content = yaml.safe_load(Path(params).read_text())
                assert "ros__parameters" in next(iter(content.values())), f"{params} is not a ROS params file"


def test_sim_policy_graph_wiring():
    description = parse_launch_file(LAUNCH_DIR / "sim_policy.launch.xml", overrides={"seed": "7", "dry_run": "true"})
    nodes = {node.name: node for node in description.nodes}
    assert set(nodes) == {"sim_robot", "encoder", "policy", "safety_gate"}
    remaps = {name: dict(node.remaps) for name, node in nodes.items()}
    command_topic = description.args["command_topic"]
    # The robot listens only to the gate; the policy talks only to the gate.
    assert remaps["sim_robot"]["joint_trajectory"] == command_topic
    assert remaps["safety_gate"]["joint_trajectory"] == command_topic
    assert remaps["policy"]["policy/joint_trajectory"] == remaps["safety_gate"]["policy/joint_trajectory"]
    assert remaps["policy"].get("joint_trajectory") is None
    assert remaps["encoder"]["features"] == remaps["policy"]["features"]
    assert remaps["encoder"]["camera/image_raw"] == remaps["sim_robot"]["camera/image_raw"]
    assert nodes["sim_robot"].params["seed"] == "7"
    assert nodes["safety_gate"].params["dry_run"] == "true"
    assert Path(nodes["safety_gate"].params["limits_file"]).is_file()


def test_robot_policy_starts_in_dry_run_and_needs_checkpoint_and_limits():
    from rla_wm_ros.launch_xml import LaunchFileError

    path = LAUNCH_DIR / "robot_policy.launch.xml"
    for missing in ("policy_checkpoint", "limits_file"):
        args = dict(REQUIRED_ARGS["robot_policy.launch.xml"])
        del args[missing]
        with pytest.raises(LaunchFileError, match=f"required launch argument '{missing}'"):
            parse_launch_file(path, overrides=args)
    description = parse_launch_file(
        path,
        overrides={
            **REQUIRED_ARGS["robot_policy.launch.xml"],
            "camera_topic": "/wrist/image/compressed",
            "compressed": "true",
            "joint_state_topic": "/arm/joint_states",
            "controller_topic": "/arm/follow_joint_trajectory/cmd",
        },
    )
    nodes = {node.name: node for node in description.nodes}
    assert set(nodes) == {"encoder", "policy", "safety_gate"}
    assert nodes["safety_gate"].params["dry_run"] == "true"  # nothing reaches the arm unless asked
    assert nodes["encoder"].params["model"] == "facebook/dinov2-small"  # real DINO weights by default
    remaps = {name: dict(node.remaps) for name, node in nodes.items()}
    assert remaps["safety_gate"]["joint_trajectory"] == "/arm/follow_joint_trajectory/cmd"
    assert remaps["policy"].get("joint_trajectory") is None  # only the gate talks to the controller
    assert (
        remaps["encoder"]["camera/image_raw"] == remaps["safety_gate"]["camera/image_raw"] == "/wrist/image/compressed"
    )
    assert nodes["encoder"].params["compressed_input"] == nodes["safety_gate"].params["compressed_camera"] == "true"
    assert remaps["policy"]["joint_states"] == remaps["safety_gate"]["joint_states"] == "/arm/joint_states"
    assert nodes["safety_gate"].params["limits_file"] == LIMITS


def test_bad_launch_arguments_are_errors():
    from rla_wm_ros.launch_xml import LaunchFileError

    with pytest.raises(LaunchFileError, match="no_such_arg"):
        parse_launch_file(LAUNCH_DIR / "sim_policy.launch.xml", overrides={"no_such_arg": "1"})
    with pytest.raises(LaunchFileError):
        parse_launch_file(LAUNCH_DIR / "sim_policy.launch.xml", overrides={"config_dir": "/nonexistent"})


def test_robot_record_wiring():
    description = parse_launch_file(
        LAUNCH_DIR / "robot_record.launch.xml",
        overrides={
            "dataset_root": "/data/teleop",
            "camera_topic": "/wrist/image_raw/compressed",
            "compressed": "true",
            "action_topic": "/leader/joint_states",
            "action_type": "joint_state",
        },
    )
    (recorder,) = description.nodes
    assert recorder.executable == "recorder"
    assert dict(recorder.remaps)["camera/image_raw"] == "/wrist/image_raw/compressed"
    assert recorder.params["dataset_root"] == "/data/teleop"
    assert recorder.params["compressed"] == "true"
    assert (recorder.params["action_topic"], recorder.params["action_type"]) == ("/leader/joint_states", "joint_state")


def test_sim_arm_collect_with_a_gamepad_routes_joy_through_teleop_and_the_gate():
    description = parse_launch_file(
        LAUNCH_DIR / "sim_arm_collect.launch.xml", overrides={"command_source": "joy", "teleop_space": "joint"}
    )
    nodes = {node.name: node for node in description.nodes}
    assert set(nodes) == {"sim_arm", "teleop", "safety_gate", "recorder"}  # no expert
    teleop, gate = dict(nodes["teleop"].remaps), dict(nodes["safety_gate"].remaps)
    assert nodes["teleop"].params["source"] == "joy" and nodes["teleop"].params["space"] == "joint"
    assert teleop["joy"] == "/joy"
    assert gate["policy/joint_trajectory"] == teleop["teleop/joint_trajectory"]
    assert gate["joint_trajectory"] == dict(nodes["sim_arm"].remaps)["joint_trajectory"]


def test_robot_teleop_without_a_gamepad_starts_only_the_gate():
    description = parse_launch_file(
        LAUNCH_DIR / "robot_teleop.launch.xml", overrides={"limits_file": LIMITS, "teleop_source": "none"}
    )
    assert [node.name for node in description.nodes] == ["safety_gate"]
    assert dict(description.nodes[0].remaps)["policy/joint_trajectory"] == "/teleop/joint_trajectory"


def test_sim_policy_encodes_every_frame_for_a_camera_policy_and_once_a_second_beside_block_state():
    for observation, rate in (("camera", "0.0"), ("block_state", "1.0")):
        description = parse_launch_file(LAUNCH_DIR / "sim_policy.launch.xml", overrides={"observation": observation})
        encoder = next(node for node in description.nodes if node.name == "encoder")
        assert encoder.params["max_rate"] == rate, observation
