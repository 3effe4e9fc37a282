"""Record the simulated SO-101 in process as a LeRobot v3 dataset laid out like LeRobot's SO-101 recordings.

The layout is the one `lerobot-record --robot.type=so101_follower` writes (see
`rla_wm.envs.so101.lerobot_units` for where in LeRobot each part comes from), and the one the
recorder node writes with `joint_layout: so101_lerobot` (`collect --robot so101`):

    observation.state         float32 (6,)  shoulder_pan.pos ... gripper.pos: degrees, gripper 0..100
    action                    float32 (6,)  the same names and units (absent in action-free data)
    observation.images.front  video (H, W, 3)  the scene camera
    observation.images.wrist  video (H, W, 3)  the camera on the gripper

at the simulator's control rate (CONTROL_HZ = 10 fps), robot type `so101_follower`, one task string
per episode. With `with_environment_state`, also

    observation.environment_state  float32 (10,)  the cube's pose and the zone (`cube_state_tokens`)

the privileged input of the arm's cube-state rung, as the recorder node stores /sim/environment_state.
Without ROS: for tests and quick datasets; the ROS path (`collect --robot so101`) records the same
layout through the real graph.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from rla_wm.envs.so101.environment_state import CUBE_STATE_CHANNELS, CUBE_STATE_NAMES, cube_state_tokens
from rla_wm.envs.so101.lerobot_units import FEATURE_NAMES, ROBOT_TYPE, default_units
from rla_wm.envs.so101.scene import SCENE_CAMERA, WRIST_CAMERA
from rla_wm.recording.environment import ENVIRONMENT_STATE_KEY

CAMERA_KEYS = {SCENE_CAMERA: f"observation.images.{SCENE_CAMERA}", WRIST_CAMERA: f"observation.images.{WRIST_CAMERA}"}
STATE_KEY = "observation.state"
ACTION_KEY = "action"
EXPERT_TASK = "Push the cube into the target zone"
PLAY_TASK = "play"
POLICIES = ("expert", "play")


def so101_features(
    image_height: int = 128, image_width: int = 128, with_actions: bool = True, with_environment_state: bool = False
) -> dict[str, dict]:
    """The LeRobot feature spec of an SO-101 dataset (LeRobot's own layout; videos for the cameras)."""
    joints: dict[str, Any] = {"dtype": "float32", "shape": (len(FEATURE_NAMES),), "names": list(FEATURE_NAMES)}
    image = {"dtype": "video", "shape": (image_height, image_width, 3), "names": ["height", "width", "channels"]}
    features: dict[str, dict] = {key: dict(image) for key in CAMERA_KEYS.values()}
    features[STATE_KEY] = dict(joints)
    if with_actions:
        features[ACTION_KEY] = dict(joints)
    if with_environment_state:
        features[ENVIRONMENT_STATE_KEY] = {
            "dtype": "float32",
            "shape": (CUBE_STATE_CHANNELS,),
            "names": list(CUBE_STATE_NAMES),
        }
    return features


def record_so101_dataset(
    root: str | Path,
    repo_id: str = "local/so101_sim",
    episodes: int = 2,
    steps_per_episode: int = 50,
    seed: int = 0,
    policy: str = "expert",
    with_actions: bool = True,
    task: str | None = None,
    image_size: int = 128,
    overwrite: bool = False,
    with_environment_state: bool = False,
    execution_noise: float = 0.0,
    progress: bool = False,
) -> Path:
    """Run `So101Sim` and write a LeRobot v3 dataset at CONTROL_HZ fps; returns `root`.

    Episode e resets the simulator with seed `seed + e`. policy: "expert" (the scripted push-cube
    expert) or "play" (`JointRandomWalk` within the URDF's limits, seeded with (seed, e)). Row t holds
    the observation at frame t and the target commanded at frame t. An expert episode ends early on
    success. overwrite: replace an existing `root` (otherwise it is an error, as LeRobot refuses one).
    with_environment_state: also write the cube's pose and the zone as `observation.environment_state`.
    execution_noise: the sim executes each recorded target plus Gaussian noise of this std (rad) on
    every joint but the gripper, while the dataset keeps the clean target (DART: the demonstrations
    then show how the expert recovers from the states a learned policy's errors lead to).
    progress: show a progress bar over the episodes.
    """
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.utils.utils import SuppressProgressBars
    from tqdm.auto import tqdm

    from rla_wm.control.teleop import JointRandomWalk
    from rla_wm.envs.so101.expert import So101Expert
    from rla_wm.envs.so101.sim import CONTROL_HZ, So101Sim, body_joint_noise
    from rla_wm.recording.thread_scheduling import keep_thread_scheduling

    if episodes <= 0 or steps_per_episode <= 0:
        raise ValueError(f"episodes and steps_per_episode must be positive, got {episodes}, {steps_per_episode}")
    if not (np.isfinite(execution_noise) and execution_noise >= 0):
        raise ValueError(f"execution_noise must be >= 0, got {execution_noise}")
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    root = Path(root)
    if root.exists():
        if not overwrite:
            raise FileExistsError(f"dataset folder {root} already exists; pass overwrite=True to replace it")
        shutil.rmtree(root)
    task = task or (EXPERT_TASK if policy == "expert" else PLAY_TASK)
    units = default_units()
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its configuration for every episode otherwise
    dataset = LeRobotDataset.create(
        repo_id,
        fps=CONTROL_HZ,
        features=so101_features(image_size, image_size, with_actions, with_environment_state),
        root=root,
        robot_type=ROBOT_TYPE,
        use_videos=True,
    )
    sim = So101Sim(max_steps=steps_per_episode, width=image_size, height=image_size)
    expert = So101Expert(sim.model) if policy == "expert" else None
    try:
        for episode in tqdm(range(episodes), desc="episodes", unit="episode", disable=not progress):
            frame = sim.reset(seed + episode)
            walk = JointRandomWalk(sim.limits.lower, sim.limits.upper, seed=[seed, episode], period=1.0 / CONTROL_HZ)
            noise = np.random.default_rng([seed, episode, 1])
            if expert is not None:
                expert.reset()
            for step in range(steps_per_episode):
                target = expert(frame) if expert is not None else walk(frame.joint_positions)
                row: dict[str, Any] = {key: frame.images[camera] for camera, key in CAMERA_KEYS.items()}
                row[STATE_KEY] = units.to_lerobot(frame.joint_positions).astype(np.float32)
                if with_environment_state:
                    row[ENVIRONMENT_STATE_KEY] = cube_state_tokens(frame.cube_pose, frame.zone)[0]
                if with_actions:
                    row[ACTION_KEY] = units.to_lerobot(sim.clip(target)).astype(np.float32)
                row["task"] = task
                dataset.add_frame(row)
                if frame.done or step == steps_per_episode - 1:
                    break
                if execution_noise > 0:
                    target = target + body_joint_noise(noise, execution_noise)
                frame = sim.step(target)
            with SuppressProgressBars(), keep_thread_scheduling():  # SVT-AV1 as root: see the module
                dataset.save_episode()
    finally:
        sim.close()
        dataset.finalize()  # without it the parquet footers are missing
    return root
