"""End to end: a LeRobot pretrained_model folder in the sim graph, without the encoder.

sim robot -> camera -> policy node (the folder `lerobot-train` wrote) -> safety gate -> sim robot, started
from sim_policy.launch.xml with policy_checkpoint:=<folder> run_encoder:=false, as docs/lerobot_policies.md
says. A policy trained for three steps outputs noise across the dataset's whole action range, which the
gate rightly refuses (points hundreds of pixels from the agent). So the test narrows the folder's action
statistics (the post-processor's MIN_MAX range) to a 30 px box around the agent's start: diffusion's clipped
sample then lands in that box, the gate passes the chunks, and every published position lying in the box
shows that the post-processor's units reach the trajectory.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from ament_index_python.packages import get_package_share_directory
from sensor_msgs.msg import JointState
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from rla_wm.envs.pusht.sim import JOINT_NAMES, PushTSim
from rla_wm_ros.conversions import duration_to_seconds, stamp_to_nanoseconds
from rla_wm_ros.launch_xml import LaunchedGraph, parse_launch_file

from conftest import Inbox, call_service, closed_loop_runner, wait_for

pytestmark = pytest.mark.timeout(240)

SEED = 3
HALF_BOX = 15.0  # px either side of the agent's start
UNNORMALIZER = "policy_postprocessor_step_0_unnormalizer_processor.safetensors"


def narrowed_copy(folder: Path, destination: Path, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Copy the pretrained_model folder with its action range set to a box around `centre`; return the box."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(folder, destination)
    stats = load_file(destination / UNNORMALIZER)
    low, high = centre - HALF_BOX, centre + HALF_BOX
    stats["action.min"] = torch.as_tensor(low, dtype=stats["action.min"].dtype)
    stats["action.max"] = torch.as_tensor(high, dtype=stats["action.max"].dtype)
    save_file(stats, destination / UNNORMALIZER)
    return low, high


def is_forwarded(command: JointTrajectory, chunks: list[JointTrajectory]) -> bool:
    """Whether the gate's command carries points of one of the policy's chunks (the gate forwards a vetted
    copy of a chunk's still-due points; its hold is a single interpolated point)."""
    if not command.points:
        return False
    sent = np.array([point.positions for point in command.points])
    for chunk in chunks:
        planned = np.array([point.positions for point in chunk.points])
        if all(np.isclose(planned, row, atol=1e-6, rtol=0).all(axis=1).any() for row in sent):
            return True
    return False


def test_lerobot_folder_drives_the_sim_robot_through_the_gate(lerobot_pretrained, ros_node, ros_domain, tmp_path):
    start = PushTSim(image_size=96).reset(SEED).position
    folder = tmp_path / "pretrained_model"
    low, high = narrowed_copy(lerobot_pretrained("diffusion"), folder, start)

    share = Path(get_package_share_directory("rla_wm_ros"))
    description = parse_launch_file(
        share / "launch" / "sim_policy.launch.xml",
        overrides={
            "policy_checkpoint": str(folder),
            "run_encoder": "false",
            "execute_steps": "1",  # as docs/lerobot_policies.md: the history spaced as in the dataset
            "seed": str(SEED),
            "max_episode_steps": "3000",  # no episode end (a finished episode stands still) during the test
        },
    )
    assert sorted(node.name for node in description.nodes) == ["policy", "safety_gate", "sim_robot"]

    chunks, commands, states = Inbox(), Inbox(), Inbox()
    ros_node.create_subscription(JointTrajectory, "/policy/joint_trajectory", chunks, 100)
    ros_node.create_subscription(JointTrajectory, description.args["command_topic"], commands, 100)
    ros_node.create_subscription(JointState, "/joint_states", states, 100)

    def moved() -> float:
        positions = [state.position for state in states.snapshot()]
        return max((float(np.linalg.norm(np.subtract(p, start))) for p in positions), default=0.0)

    def forwarded() -> int:
        policy_chunks = chunks.snapshot()
        return sum(is_forwarded(command, policy_chunks) for command in commands.snapshot())

    command_topic = description.args["command_topic"]
    with LaunchedGraph() as graph, closed_loop_runner(ros_domain, command_topic) as runner:
        graph.start(description, env={"ROS_DOMAIN_ID": str(ros_domain)}, log_dir=tmp_path / "logs")
        wait_for(lambda: len(chunks.snapshot()) >= 3, 150, "chunks from the LeRobot policy", graph)
        # The demo's observer (what the evaluation script runs) finds the camera as the policy's input, since
        # the folder reads no FeatureMap, and times each chunk from its frame.
        runner.wait_until_flowing(60.0, lambda: all(graph.alive().values()))
        assert runner.observer.model_input_topic == "/camera/image_raw"
        wait_for(
            lambda: runner.observer.latency.stage_seconds()["features_to_chunk"].size >= 2,
            60,
            lambda: f"chunks timed from their frames: {runner.observer.latency.stage_seconds()['features_to_chunk']}",
            graph,
        )
        assert np.median(runner.observer.latency.stage_seconds()["features_to_chunk"]) > 0
        wait_for(
            lambda: forwarded() >= 2 and moved() > 2.0,
            90,
            lambda: f"the gate to forward chunks ({forwarded()}) and the agent to move ({moved():.2f} px)",
            graph,
        )
        assert "LeRobot diffusion policy" in graph.tail_logs(400)

        # ~/reset starts a new observation history (an episode start); the policy keeps acting after it.
        # It waits for at most the prediction in progress (seconds on a loaded 2-core machine).
        answer = call_service(ros_node.create_client(Trigger, "/policy/reset"), timeout=30.0, graph=graph)
        assert answer.success, answer.message
        count = len(chunks.snapshot())
        wait_for(lambda: len(chunks.snapshot()) >= count + 2, 60, "chunks after ~/reset", graph)
        assert all(graph.alive().values()), graph.tail_logs(30)

    # The exact messages the policy node published: the sim's joints, finite positions in the folder's action
    # range (its post-processor's pixels), increasing times, each anchored at the stamp of a sim frame.
    frame_stamps = {stamp_to_nanoseconds(state.header.stamp) for state in states.snapshot()}
    for chunk in chunks.snapshot():
        assert list(chunk.joint_names) == list(JOINT_NAMES)
        positions = np.array([point.positions for point in chunk.points])
        assert positions.ndim == 2 and positions.shape[1] == 2 and len(positions) >= 1
        assert np.isfinite(positions).all()
        assert (positions >= low - 1e-3).all() and (positions <= high + 1e-3).all(), (positions, low, high)
        times = np.array([duration_to_seconds(point.time_from_start) for point in chunk.points])
        assert times[0] > 0 and (np.diff(times) > 0).all()
        assert stamp_to_nanoseconds(chunk.header.stamp) in frame_stamps
