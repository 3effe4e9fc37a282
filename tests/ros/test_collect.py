"""Sim-time collection through the real graph: the sim's /clock, then `collect` end to end into LeRobot datasets."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from geometry_msgs.msg import PoseStamped
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import JointState
from std_srvs.srv import Trigger

from rla_wm_msgs.msg import EpisodeStatus
from rla_wm_ros.conversions import stamp_to_nanoseconds
from rla_wm_ros.launch_xml import NodeSpec

from conftest import Inbox, config_file, wait_for

pytestmark = pytest.mark.timeout(240)
STEP_NS = 100_000_000


def test_sim_publishes_clock_in_whole_steps_stamps_with_it_and_pauses_when_done(ros_node, start_nodes):
    params = {"publish_clock": "true", "real_time_factor": "4.0", "max_episode_steps": "30", "seed": "2"}
    graph = start_nodes(
        NodeSpec(
            "rla_wm_ros", "sim_robot", name="sim_robot", param_files=[config_file("sim_robot.yaml")], params=params
        )
    )
    reliable = QoSProfile(depth=1000, reliability=QoSReliabilityPolicy.RELIABLE)
    clocks, states, poses, statuses, goals = Inbox(), Inbox(), Inbox(), Inbox(), Inbox()
    ros_node.create_subscription(Clock, "/clock", clocks, reliable)
    ros_node.create_subscription(JointState, "joint_states", states, reliable)
    ros_node.create_subscription(PoseStamped, "sim/object_pose", poses, reliable)
    ros_node.create_subscription(EpisodeStatus, "episode_status", statuses, reliable)
    ros_node.create_subscription(
        PoseStamped,
        "sim/goal_pose",
        goals,
        QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL),
    )
    reset = ros_node.create_client(Trigger, "sim_robot/reset")
    wait_for(lambda: reset.wait_for_service(timeout_sec=0.1), 60, "the sim's reset service", graph)
    # Start a fresh episode with everything subscribed: its steps are counted from here.
    future = reset.call_async(Trigger.Request())
    wait_for(future.done, 10, "the reset", graph)
    episode = future.result().message
    wait_for(
        lambda: any(s.done for s in statuses.snapshot()[-5:]) and len(clocks.snapshot()) > 20,
        30,
        "the 30-step episode to end",
        graph,
    )
    final = [s for s in statuses.snapshot() if s.done][-1]
    assert final.step == 30
    done_at = stamp_to_nanoseconds(final.header.stamp)
    # Paused once done: the sim goes on re-sending its last frame (ten more joint states), and time
    # stands still: every one of them carries the last step's stamp, and /clock repeats that time (a
    # node that starts now must learn it) and gets no further.
    seen, clocks_seen = len(states.snapshot()), len(clocks.snapshot())
    wait_for(lambda: len(states.snapshot()) >= seen + 10, 30, "joint states re-sent while paused", graph)
    assert {stamp_to_nanoseconds(m.header.stamp) for m in states.snapshot()[-8:]} == {done_at}
    paused_ticks = [stamp_to_nanoseconds(c.clock) for c in clocks.snapshot()[clocks_seen:]]
    assert len(paused_ticks) >= 5 and set(paused_ticks) == {done_at}, "the still time is re-sent while paused"

    ticks = [stamp_to_nanoseconds(c.clock) for c in clocks.snapshot()]
    steps = np.diff(ticks)
    moving = steps[steps != 0]
    assert (steps >= 0).all() and (moving % STEP_NS == 0).all(), "sim time moves in whole 0.1 s steps"
    assert (moving == STEP_NS).mean() > 0.9, "a best-effort /clock may drop a few, but not many"
    assert max(ticks) == done_at, episode

    # Every message of a step carries the step's sim time.
    tick_set = set(ticks)
    assert all(stamp_to_nanoseconds(m.header.stamp) in tick_set for m in states.snapshot()[-20:])
    pose = poses.snapshot()[-1]
    assert stamp_to_nanoseconds(pose.header.stamp) == done_at
    assert 0 < pose.pose.position.x < 512 and 0 < pose.pose.position.y < 512
    assert math.isclose(pose.pose.orientation.z**2 + pose.pose.orientation.w**2, 1.0, rel_tol=1e-6)
    wait_for(lambda: goals.snapshot(), 10, "the latched goal pose", graph)
    goal = goals.snapshot()[-1]
    yaw = 2 * math.atan2(goal.pose.orientation.z, goal.pose.orientation.w)
    assert (goal.pose.position.x, goal.pose.position.y) == (256.0, 256.0) and yaw == pytest.approx(math.pi / 4)

    # A reset resumes time.
    future = reset.call_async(Trigger.Request())
    wait_for(future.done, 10, "the second reset", graph)
    wait_for(
        lambda: stamp_to_nanoseconds(clocks.snapshot()[-1].clock) > done_at + 5 * STEP_NS,
        10,
        "time to resume after the reset",
        graph,
    )


def run_collect(tmp_path, mode: str, episodes: int, steps: int) -> tuple[int, dict, object]:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from rla_wm_ros.collect import main

    root = tmp_path / f"{mode}_dataset"
    output = tmp_path / f"{mode}_out"
    code = main(
        [
            "--mode",
            mode,
            "--episodes",
            str(episodes),
            "--max-episode-steps",
            str(steps),
            "--dataset-root",
            str(root),
            "--repo-id",
            f"test/{mode}",
            "--real-time-factor",
            "4.0",
            "--seed",
            "10",
            "--output",
            str(output),
            "--no-progress",
        ]
    )
    summary = json.loads((output / "summary.json").read_text())
    logs = "\n".join(f"== {p.name}\n{p.read_text()[-3000:]}" for p in sorted((output / "logs").glob("*.log")))
    assert code == 0, f"{summary['failure']}\n{logs}"
    return code, summary, LeRobotDataset(f"test/{mode}", root=root)


def test_collect_expert_and_play_episodes_into_lerobot_datasets(ros_domain, tmp_path):
    steps = 40
    _, summary, dataset = run_collect(tmp_path, "expert", 2, steps)
    assert (summary["episodes"], summary["episodes_saved"]) == (2, 2)
    on_disk = sum(path.stat().st_size for path in dataset.root.rglob("*") if path.is_file())
    assert summary["dataset_bytes"] == on_disk > 0
    assert summary["wall_seconds"] >= sum(r["wall_seconds"] for r in summary["episode_records"]) > 0
    assert [r["steps"] for r in summary["episode_records"]] == [steps, steps]  # short: the step limit ends them
    assert dataset.num_episodes == 2 and dataset.num_frames == summary["frames"]
    assert {"observation.images.front", "observation.state", "action"} <= set(dataset.meta.features)
    assert list(dataset.meta.tasks.index) == ["Push the T block onto the target"]
    # Vectors straight from the parquet files (float64 stamps; no video decoding for them).
    table = pd.concat([pd.read_parquet(f) for f in sorted((dataset.root / "data").rglob("*.parquet"))])
    table = table.sort_values("index")
    capture_stamps = table["capture_stamp"].to_numpy(dtype=np.float64).ravel()
    all_states = np.stack(table["observation.state"].to_numpy()).astype(np.float64)
    all_actions = np.stack(table["action"].to_numpy()).astype(np.float64)
    for episode in range(2):
        start = int(dataset.meta.episodes[episode]["dataset_from_index"])
        end = int(dataset.meta.episodes[episode]["dataset_to_index"])
        # Most steps recorded (a busy machine may skip a few); none after the episode ended (the sim pauses).
        assert steps // 2 <= end - start <= steps + 1
        states, actions = all_states[start:end], all_actions[start:end]
        np.testing.assert_allclose(dataset[start]["observation.state"].numpy(), states[0], rtol=1e-6)
        assert ((states >= 0) & (states <= 512)).all() and ((actions >= 0) & (actions <= 512)).all()
        # The action of frame t is the expert's target answering frame t: within its 40 px lead.
        assert (np.linalg.norm(actions - states, axis=1) <= 40.0 + 1e-3).all(), np.c_[states, actions][
            np.linalg.norm(actions - states, axis=1) > 40
        ]
        assert np.linalg.norm(actions - states, axis=1).max() > 1.0, "the expert never moved the agent"
        # Frames are captured on simulated time: whole 0.1 s steps apart (float64 in the parquet files;
        # the dataset's tensors are float32, too coarse for epoch seconds).
        stamps = capture_stamps[start:end]
        gaps = np.diff(stamps) / 0.1
        assert (np.abs(gaps - np.round(gaps)) < 1e-3).all() and (np.round(gaps) >= 1).all()
        image = dataset[start]["observation.images.front"]  # decoded from the episode's video
        assert tuple(image.shape) == (3, 96, 96) and float(image.std()) > 0.0

    _, summary, dataset = run_collect(tmp_path, "play", 1, 30)
    assert summary["episodes_saved"] == 1 and summary["task"] == "play"
    assert dataset.num_episodes == 1 and dataset.num_frames == summary["frames"] > 10
    assert "action" not in dataset.meta.features, "play data must be action-free"
    assert list(dataset.meta.tasks.index) == ["play"]
    states = np.stack([dataset[i]["observation.state"].numpy() for i in (0, dataset.num_frames - 1)])
    assert np.linalg.norm(states[-1] - states[0]) > 5.0, "random play did not move the agent"
