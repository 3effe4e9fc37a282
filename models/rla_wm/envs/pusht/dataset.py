"""Record Push-T episodes from the simulator as a LeRobot v3 dataset (parquet + mp4).

The dataset is what the world model trains on: `observation.image` (video),
`observation.state` (agent xy), optionally `action` (the commanded target xy) and, optionally,
`observation.environment_state` (the block pose as `block_state_tokens`: privileged sim state, for
the ladder's policy that sees the block's pose instead of the camera; the same values the recorder
writes from the sim robot's /sim/block_state).
RLA-WM learns from action-free video, so `with_actions=False` writes no `action`
feature at all rather than a zero-filled one that could be mistaken for real labels.

Row t holds the observation at frame t and the action commanded *at* frame t, i.e.
the target that moves the scene from frame t to frame t+1 (LeRobot's convention).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from rla_wm.envs.pusht.privileged import (
    BLOCK_STATE_CHANNELS,
    BLOCK_STATE_NAMES,
    block_state_tokens,
)
from rla_wm.envs.pusht.sim import CONTROL_HZ, JOINT_NAMES, PushTSim, SimFrame
from rla_wm.recording.environment import ENVIRONMENT_STATE_KEY

# Keep the random walk away from the walls: targets on the border pin the agent there.
TARGET_LOW = 20.0
TARGET_HIGH = 492.0

IMAGE_KEY = "observation.image"
STATE_KEY = "observation.state"
ACTION_KEY = "action"

ActionSource = Callable[[SimFrame, np.random.Generator], np.ndarray]


class RandomWalkPolicy:
    """Smooth, seeded random walk of the agent's target (a momentum random walk).

    White-noise targets make the agent jitter in place and rarely reach the block;
    momentum gives strokes of ~10-30 px per step that sweep across the table, and a
    weak pull toward the centre (where the block starts) makes contacts common
    (about half of 100-step episodes move the block).
    """

    def __init__(
        self,
        momentum: float = 0.8,
        noise_px: float = 10.0,
        max_step_px: float = 30.0,
        center_pull: float = 0.01,
    ) -> None:
        self.momentum = momentum
        self.noise_px = noise_px
        self.max_step_px = max_step_px
        self.center_pull = center_pull
        self._target: np.ndarray | None = None
        self._velocity: np.ndarray = np.zeros(2)

    def reset(self, frame: SimFrame) -> None:
        self._target = np.clip(np.asarray(frame.position, dtype=np.float64), TARGET_LOW, TARGET_HIGH)
        self._velocity = np.zeros(2)

    def __call__(self, frame: SimFrame, rng: np.random.Generator) -> np.ndarray:
        if self._target is None:
            self.reset(frame)
        assert self._target is not None
        center = 0.5 * (TARGET_LOW + TARGET_HIGH)
        velocity = (
            self.momentum * self._velocity
            + rng.normal(0.0, self.noise_px, size=2)
            + self.center_pull * (center - self._target)
        )
        speed = float(np.linalg.norm(velocity))
        if speed > self.max_step_px:
            velocity *= self.max_step_px / speed
        target = self._target + velocity
        # Bounce off the workspace limits instead of sliding along them.
        outside = (target < TARGET_LOW) | (target > TARGET_HIGH)
        velocity[outside] *= -1.0
        self._target = np.clip(target, TARGET_LOW, TARGET_HIGH)
        self._velocity = velocity
        return self._target.astype(np.float32)


def pusht_features(
    with_actions: bool = True, image_size: int = 96, with_environment_state: bool = False
) -> dict[str, dict]:
    """LeRobot feature spec of the recorded dataset."""
    features: dict[str, dict] = {
        IMAGE_KEY: {
            "dtype": "video",
            "shape": (image_size, image_size, 3),
            "names": ["height", "width", "channel"],
        },
        STATE_KEY: {"dtype": "float32", "shape": (len(JOINT_NAMES),), "names": list(JOINT_NAMES)},
    }
    if with_actions:
        features[ACTION_KEY] = {"dtype": "float32", "shape": (len(JOINT_NAMES),), "names": list(JOINT_NAMES)}
    if with_environment_state:
        features[ENVIRONMENT_STATE_KEY] = {
            "dtype": "float32",
            "shape": (BLOCK_STATE_CHANNELS,),
            "names": list(BLOCK_STATE_NAMES),
        }
    return features


def record_pusht_dataset(
    root: str | Path,
    repo_id: str = "local/pusht_random",
    episodes: int = 10,
    steps_per_episode: int = 100,
    seed: int = 0,
    policy: str | ActionSource = "random",
    with_actions: bool = True,
    task: str = "Push the T block onto the target",
    image_size: int = 96,
    overwrite: bool = False,
    progress: bool = True,
    with_environment_state: bool = False,
    execution_noise_px: float = 0.0,
) -> Path:
    """Run PushTSim and write a LeRobot v3 dataset at CONTROL_HZ (10) fps; returns `root`.

    Episode e resets the simulator with seed `seed + e` and draws its actions from a
    generator seeded with (seed, e), so every episode is reproducible on its own.
    An episode ends early (fewer than `steps_per_episode` frames) only if the task is
    solved, which the random policy practically never does.

    policy: "random" (RandomWalkPolicy) or a callable (frame, rng) -> target xy.
    with_environment_state: also write the block pose as `observation.environment_state`.
    execution_noise_px: the sim executes the recorded action plus Gaussian noise of this std (px),
        while the dataset keeps the policy's own action (DART, Laskey et al. 2017): the expert's
        demonstrations then visit the states a slightly-off learner reaches and label them with
        the expert's correction, the compounding error plain demonstrations leave untaught.
    overwrite: remove an existing `root` first; otherwise an existing `root` is an error,
        because LeRobot refuses to create a dataset in an existing folder.
    """
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.utils.utils import SuppressProgressBars
    from tqdm.auto import tqdm

    from rla_wm.recording.thread_scheduling import keep_thread_scheduling

    if episodes <= 0 or steps_per_episode <= 0:
        raise ValueError(f"episodes and steps_per_episode must be positive, got {episodes}, {steps_per_episode}")
    root = Path(root)
    if root.exists():
        if not overwrite:
            raise FileExistsError(f"dataset folder {root} already exists; pass overwrite=True to replace it")
        shutil.rmtree(root)
    if not (np.isfinite(execution_noise_px) and execution_noise_px >= 0):
        raise ValueError(f"execution_noise_px must be >= 0, got {execution_noise_px}")
    if isinstance(policy, str) and policy != "random":
        raise ValueError(f"unknown policy {policy!r}; use 'random' or a callable (frame, rng) -> target")

    # SVT-AV1 prints its whole configuration to stderr for every episode unless told not to.
    os.environ.setdefault("SVT_LOG", "1")
    dataset = LeRobotDataset.create(
        repo_id,
        fps=CONTROL_HZ,
        features=pusht_features(with_actions, image_size, with_environment_state),
        root=root,
        robot_type="pusht",
        use_videos=True,
    )
    sim = PushTSim(max_steps=steps_per_episode, image_size=image_size)
    try:
        for episode in tqdm(range(episodes), desc="recording Push-T", unit="episode", disable=not progress):
            frame = sim.reset(seed=seed + episode)
            rng = np.random.default_rng([seed, episode])
            act: ActionSource
            if policy == "random":
                walker = RandomWalkPolicy()
                walker.reset(frame)
                act = walker
            else:
                act = policy  # type: ignore[assignment]
            for step in range(steps_per_episode):
                target = np.asarray(act(frame, rng), dtype=np.float32).reshape(len(JOINT_NAMES))
                row = {
                    IMAGE_KEY: frame.image,
                    STATE_KEY: np.asarray(frame.position, dtype=np.float32),
                    "task": task,
                }
                if with_actions:
                    row[ACTION_KEY] = target
                if with_environment_state:
                    row[ENVIRONMENT_STATE_KEY] = block_state_tokens(frame.block_pose)[0]
                dataset.add_frame(row)
                if frame.done or step == steps_per_episode - 1:
                    break
                noise = rng.normal(0.0, execution_noise_px, size=target.shape) if execution_noise_px > 0 else 0.0
                frame = sim.step((target + noise).astype(np.float32))
            # save_episode runs a `datasets` map with its own bar; one bar (ours) is enough.
            with SuppressProgressBars(), keep_thread_scheduling():  # SVT-AV1 as root: see the module
                dataset.save_episode()
    finally:
        sim.close()
        # Without finalize() the parquet footers are missing and the dataset is unreadable.
        dataset.finalize()
    return root
