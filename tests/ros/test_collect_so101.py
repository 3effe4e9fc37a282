"""`collect --robot so101` end to end: the simulated SO-101 recorded through the real graph (sim_arm -> expert
or play source -> safety gate -> sim_arm, recorder listening) into LeRobot v3 datasets in LeRobot's SO-101
layout (`shoulder_pan.pos` ... `gripper.pos` in degrees and 0..100, observation.images.front and .wrist)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from rclpy.qos import QoSProfile
from sensor_msgs.msg import JointState

from rla_wm.envs.so101.dataset import EXPERT_TASK, PLAY_TASK
from rla_wm.envs.so101.environment_state import CUBE_STATE_NAMES
from rla_wm.envs.so101.layout import sample_layout
from rla_wm.envs.so101.lerobot_units import FEATURE_NAMES, JOINT_NAMES, ROBOT_TYPE, default_units
from rla_wm.envs.so101.sim import HOME, urdf_limits
from rla_wm_ros.conversions import stamp_to_nanoseconds

pytestmark = pytest.mark.timeout(300)
SIZE = 64  # smaller than the default 128: a faster render and encode, the same path


def run_collect(
    tmp_path, mode: str, episodes: int, steps: int, extra: tuple[str, ...] = ()
) -> tuple[dict, object, pd.DataFrame]:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from rla_wm_ros.collect import main

    root = tmp_path / f"{mode}_dataset"
    output = tmp_path / f"{mode}_out"
    code = main(
        [
            "--robot",
            "so101",
            "--mode",
            mode,
            "--episodes",
            str(episodes),
            "--max-episode-steps",
            str(steps),
            "--dataset-root",
            str(root),
            "--repo-id",
            f"test/so101_{mode}",
            "--image-size",
            str(SIZE),
            "--seed",
            "2",
            "--output",
            str(output),
            "--no-progress",
            *extra,
        ]
    )
    summary = json.loads((output / "summary.json").read_text())
    logs = "\n".join(f"== {p.name}\n{p.read_text()[-3000:]}" for p in sorted((output / "logs").glob("*.log")))
    assert code == 0, f"{summary['failure']}\n{logs}"
    dataset = LeRobotDataset(f"test/so101_{mode}", root=root)
    table = pd.concat([pd.read_parquet(f) for f in sorted((root / "data").rglob("*.parquet"))]).sort_values("index")
    return summary, dataset, table


def vectors(table: pd.DataFrame, key: str) -> np.ndarray:
    return np.stack(table[key].to_numpy()).astype(np.float64)


def test_collect_records_the_arm_in_lerobots_so101_layout(ros_node, tmp_path):
    steps = 12
    # The sim's joint states as the graph carries them (radians, by stamp), to check the dataset against.
    published: dict[int, np.ndarray] = {}

    def on_state(msg: JointState) -> None:
        positions = dict(zip(msg.name, msg.position))
        step = round(stamp_to_nanoseconds(msg.header.stamp) / 1e8)  # sim time moves in whole 0.1 s steps
        published[step] = np.array([positions[name] for name in JOINT_NAMES])

    ros_node.create_subscription(JointState, "/joint_states", on_state, QoSProfile(depth=1000))
    summary, dataset, table = run_collect(tmp_path, "expert", 2, steps)
    assert summary["robot"] == "so101" and (summary["episodes"], summary["episodes_saved"]) == (2, 2)
    assert dataset.num_episodes == 2 and dataset.num_frames == summary["frames"]
    meta = dataset.meta
    assert meta.robot_type == ROBOT_TYPE and meta.fps == 10
    assert list(meta.tasks.index) == [EXPERT_TASK]
    for key in ("observation.state", "action"):
        assert meta.features[key]["dtype"] == "float32" and meta.features[key]["names"] == list(FEATURE_NAMES)
    for camera in ("front", "wrist"):
        feature = meta.features[f"observation.images.{camera}"]
        assert feature["dtype"] == "video" and tuple(feature["shape"]) == (SIZE, SIZE, 3)
        image = dataset[0][f"observation.images.{camera}"]  # decoded from the episode's video
        assert tuple(image.shape) == (3, SIZE, SIZE) and float(image.std()) > 0.0

    units, limits = default_units(), urdf_limits()
    states, actions = vectors(table, "observation.state"), vectors(table, "action")
    # LeRobot's units: the body in degrees within the URDF's limits, the gripper in 0..100.
    for values in (states, actions):
        assert (np.abs(values[:, :5]) <= np.degrees(np.maximum(-limits.lower, limits.upper))[:5] + 3.0).all()
        assert ((values[:, 5] >= 0.0) & (values[:, 5] <= 100.0)).all()
        radians = units.to_radians(values)
        assert (radians >= limits.lower - 0.05).all() and (radians <= limits.upper + 0.05).all()
    # Each frame's state is the sim's joint state of its capture stamp, converted: degrees, not radians.
    stamps = np.round(table["capture_stamp"].to_numpy(dtype=np.float64).ravel() * 10).astype(np.int64)
    matched = [(row, published[int(stamp)]) for row, stamp in enumerate(stamps) if int(stamp) in published]
    assert len(matched) >= 0.8 * len(stamps), f"{len(matched)} of {len(stamps)} frames matched a joint state"
    for row, radians in matched:
        np.testing.assert_allclose(states[row], units.to_lerobot(radians), atol=1e-3)
    assert np.abs(states[:, :5]).max() > 10.0
    # The expert's jaws stay shut at 0 rad (9.09 of 0..100) and its wrist unrolled (0 degrees).
    closed = float(units.to_lerobot(HOME)[5])
    np.testing.assert_allclose(actions[:, 5], closed, atol=1.0)
    np.testing.assert_allclose(states[:, 5], closed, atol=3.0)
    np.testing.assert_allclose(actions[:, 4], 0.0, atol=2.0)
    # Frames without a fresh command are skipped (recorder stale_policy: skip): when the expert's first chunk
    # of the run comes late (its first inference on a busy machine) an episode the expert solves in ~12 steps
    # keeps few frames. So: every episode has frames, and at least one most of its steps.
    lengths = []
    for episode in range(2):
        start = int(meta.episodes[episode]["dataset_from_index"])
        end = int(meta.episodes[episode]["dataset_to_index"])
        lengths.append(end - start)
        assert 1 <= end - start <= steps + 1
        # A command is a target near the measured joints: the expert's stay within 0.72 rad (41 degrees).
        assert (np.abs(actions[start:end] - states[start:end])[:, :5] <= 57.3 + 1e-3).all()
        stamps = table["capture_stamp"].to_numpy(dtype=np.float64).ravel()[start:end]
        gaps = np.diff(stamps) / 0.1
        assert (np.abs(gaps - np.round(gaps)) < 1e-3).all() and (np.round(gaps) >= 1).all()
    assert max(lengths) >= steps // 2, lengths
    assert np.abs(np.diff(states[:, :5], axis=0)).max() > 1.0, "the expert never moved the arm"

    # Play with --environment-state: the cube pose and zone recorded beside each frame.
    summary, dataset, table = run_collect(tmp_path, "play", 1, steps, extra=("--environment-state",))
    assert summary["episodes_saved"] == 1 and summary["task"] == PLAY_TASK
    feature = dataset.meta.features["observation.environment_state"]
    assert feature["names"] == list(CUBE_STATE_NAMES) and tuple(feature["shape"]) == (len(CUBE_STATE_NAMES),)
    scene = vectors(table, "observation.environment_state")
    # The zone stays where the episode's seeded layout put it (collect's first episode runs seed 2 or, after
    # the sim's own start, the next one); the cube starts at that layout's place.
    np.testing.assert_allclose(scene[:, 7:9], np.repeat(scene[:1, 7:9], len(scene), 0), atol=1e-6)
    layout = next(
        sample_layout(seed) for seed in (2, 3) if np.allclose(sample_layout(seed).zone_xy, scene[0, 7:9], atol=1e-4)
    )
    np.testing.assert_allclose(scene[0, :2], layout.cube_xy, atol=0.02)
    assert np.allclose(np.linalg.norm(scene[:, 3:7], axis=1), 1.0, atol=1e-3)  # unit quaternions
    assert dataset.num_episodes == 1 and dataset.num_frames == summary["frames"] >= steps // 2
    assert "action" not in dataset.meta.features, "play data is action-free, as on Push-T"
    assert dataset.meta.features["observation.state"]["names"] == list(FEATURE_NAMES)
    assert list(dataset.meta.tasks.index) == [PLAY_TASK]
    states = vectors(table, "observation.state")
    assert np.abs(states[-1, :5] - states[0, :5]).max() > 5.0, "random play did not move the arm (degrees)"
