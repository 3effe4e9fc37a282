"""sim_collect.launch.xml's record_environment_state: the sim publishes its block state and the recorder
records it, on one topic. Parsed as ros2 launch would (test_launch_files.py style), then started and asked
from the ROS graph for the topics the two nodes really end up on (test_launch_graph.py style)."""

from __future__ import annotations

from pathlib import Path

from rla_wm_ros.launch_xml import parse_launch_file

from test_launch_graph import LAUNCH_DIR, launched, wait_for_endpoints

FEATURE_MAP = "rla_wm_msgs/msg/FeatureMap"
COLLECT = "sim_collect.launch.xml"


def nodes_of(overrides: dict[str, str]) -> dict:
    description = parse_launch_file(LAUNCH_DIR / COLLECT, overrides=overrides)
    return {node.name: node for node in description.nodes}


def test_record_environment_state_switches_the_block_state_on_in_the_sim_and_the_recorder():
    nodes = nodes_of({"record_environment_state": "true"})
    sim, recorder = nodes["sim_robot"], nodes["recorder"]
    assert sim.params["publish_block_state"] == "true"
    topic = recorder.params["environment_state_topic"]
    assert topic.startswith("/") and dict(sim.remaps)["sim/block_state"] == topic

    default = nodes_of({})
    assert default["sim_robot"].params["publish_block_state"] == "false"
    # The empty string (written '' as for action_topic, which the runner passes as YAML's ''): not recorded.
    assert default["recorder"].params["environment_state_topic"] in ("", "''")


def test_collect_graph_with_environment_state_resolves_publisher_and_subscription_to_one_topic(
    ros_domain, ros_node, tmp_path: Path
):
    overrides = {"dataset_root": str(tmp_path / "dataset"), "record_environment_state": "true"}
    with launched(COLLECT, overrides, ros_domain, tmp_path / "logs") as graph:
        actual = wait_for_endpoints(
            ros_node,
            graph,
            {
                "sim_robot": (set(), {("/sim/block_state", FEATURE_MAP)}),
                "recorder": ({("/sim/block_state", FEATURE_MAP)}, set()),
            },
        )
        published = {topic for topic, kind in actual["sim_robot"][1] if kind == FEATURE_MAP}
        subscribed = {topic for topic, kind in actual["recorder"][0] if kind == FEATURE_MAP}
        assert published == subscribed == {"/sim/block_state"}
        assert all(graph.alive().values()), graph.tail_logs(30)
