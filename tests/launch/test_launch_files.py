"""The shipped launch files: parse them as ros2 launch would and check the graph they describe."""
from pathlib import Path

import pytest
import yaml
from ament_index_python.packages import get_package_prefix, get_package_share_directory

from rla_wm_ros.launch_xml import parse_launch_file

LAUNCH_DIR = Path(get_package_share_directory("rla_wm_ros")) / "launch"
REPO_LAUNCH_DIR = Path(__file__).resolve().parents[2] / "launch"


def test_every_repo_launch_file_is_installed_and_parses():
    files = sorted(REPO_LAUNCH_DIR.glob("*.launch.xml"))
    assert files, "no launch files in launch/"
    for file in files:
        installed = LAUNCH_DIR / file.name
        assert installed.is_file(), f"{file.name} is not installed by the package"
        description = parse_launch_file(installed)
        assert description.nodes, f"{file.name} starts no nodes"
        for node in description.nodes:
            executable = Path(get_package_prefix(node.package)) / "lib" / node.package / node.executable
            assert executable.is_file(), f"{file.name}: {node.package}/{node.executable} is not installed"
            for params in node.param_files:
                content = yaml.safe_load(Path(params).read_text())
                assert "ros__parameters" in next(iter(content.values())), f"{params} is not a ROS params file"


def test_sim_demo_graph_wiring():
    description = parse_launch_file(LAUNCH_DIR / "sim_demo.launch.xml", overrides={"seed": "7", "dry_run": "true"})
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


def test_bad_launch_arguments_are_errors():
    from rla_wm_ros.launch_xml import LaunchFileError

    with pytest.raises(LaunchFileError, match="no_such_arg"):
        parse_launch_file(LAUNCH_DIR / "sim_demo.launch.xml", overrides={"no_such_arg": "1"})
    with pytest.raises(LaunchFileError):
        parse_launch_file(LAUNCH_DIR / "sim_demo.launch.xml", overrides={"config_dir": "/nonexistent"})
