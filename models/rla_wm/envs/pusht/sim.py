"""The simulated robot and camera of the embedded default: gym-pusht behind a small API.

The agent's (x, y) target position in pixels is the robot's "joint" command,
as in Diffusion Policy and DINO-WM's Push-T.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

JOINT_NAMES = ("agent_x", "agent_y")
WORKSPACE_LOW = 0.0
WORKSPACE_HIGH = 512.0
CONTROL_HZ = 10
# gym-pusht's fixed goal pose of the T block: x, y (pixels), angle (rad).
GOAL_POSE = (256.0, 256.0, float(np.pi / 4))


@dataclass(frozen=True)
class SimFrame:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    position: np.ndarray  # (2,) agent position
    velocity: np.ndarray  # (2,)
    reward: float
    coverage: float
    success: bool
    done: bool
    step: int
    # Privileged state for scripted experts (not a camera observation): the T block's body-frame
    # origin x, y (pixels) and angle (rad, unwrapped), and the goal pose in the same layout.
    block_pose: np.ndarray = field(default_factory=lambda: np.full(3, np.nan))
    goal_pose: np.ndarray = field(default_factory=lambda: np.asarray(GOAL_POSE))


class PushTSim:
    """Push-T with pixel observations; one `step` advances 1 / CONTROL_HZ seconds."""

    def __init__(self, max_steps: int = 300, image_size: int = 96) -> None:
        import gym_pusht  # noqa: F401  (registers the environment)
        import gymnasium as gym

        if max_steps <= 0:
            raise ValueError(f"max_steps must be positive, got {max_steps}")
        self.max_steps = max_steps
        self._image_size = image_size
        self._env = gym.make(
            "gym_pusht/PushT-v0",
            obs_type="pixels_agent_pos",
            render_mode="rgb_array",
            observation_width=image_size,
            observation_height=image_size,
            max_episode_steps=max_steps,
        )
        self._frame: SimFrame | None = None

    @property
    def joint_names(self) -> tuple[str, ...]:
        return JOINT_NAMES

    @property
    def frame(self) -> SimFrame:
        if self._frame is None:
            raise RuntimeError("call reset() first")
        return self._frame

    def reset(self, seed: int) -> SimFrame:
        observation, info = self._env.reset(seed=seed)
        self._frame = self._make_frame(observation, info, 0.0, False, 0)
        return self._frame

    def step(self, target: np.ndarray) -> SimFrame:
        """Drive the agent toward `target` for one control period; no-op once the episode is done."""
        frame = self.frame
        if frame.done:
            return frame
        target = np.asarray(target, dtype=np.float32)
        if target.shape != (2,) or not np.isfinite(target).all():
            raise ValueError(f"target must be 2 finite numbers, got {target}")
        target = np.clip(target, WORKSPACE_LOW, WORKSPACE_HIGH)
        observation, reward, terminated, truncated, info = self._env.step(target)
        step = frame.step + 1
        done = bool(terminated or truncated or step >= self.max_steps)
        self._frame = self._make_frame(observation, info, float(reward), done, step)
        return self._frame

    def goal_image(self, agent_position: tuple[float, float] = (256.0, 430.0)) -> np.ndarray:
        """Camera image of the solved task: the block at the goal pose, the agent at `agent_position`.

        The planner's goal. Rendered in a separate environment, so the running episode is untouched.
        """
        import gymnasium as gym

        env = gym.make(
            "gym_pusht/PushT-v0",
            obs_type="pixels_agent_pos",
            render_mode="rgb_array",
            observation_width=self._image_size,
            observation_height=self._image_size,
        )
        try:
            goal = np.asarray(GOAL_POSE, dtype=np.float64)
            # gym-pusht sets the block position before its angle, and the rotation about the
            # centre of mass moves the block: measure that shift once and start from goal - shift.
            _, info = env.reset(seed=0, options={"reset_to_state": [*agent_position, *goal]})
            shift = np.asarray(info["block_pose"][:2]) - goal[:2]
            observation, info = env.reset(
                seed=0, options={"reset_to_state": [*agent_position, *(goal[:2] - shift), goal[2]]}
            )
            if not np.allclose(info["block_pose"], goal, atol=1e-3):
                raise RuntimeError(f"could not place the block at the goal pose: {info['block_pose']}")
            return np.ascontiguousarray(observation["pixels"], dtype=np.uint8)
        finally:
            env.close()

    def close(self) -> None:
        self._env.close()

    @staticmethod
    def _make_frame(observation: dict, info: dict, reward: float, done: bool, step: int) -> SimFrame:
        return SimFrame(
            image=np.ascontiguousarray(observation["pixels"], dtype=np.uint8),
            position=np.asarray(observation["agent_pos"], dtype=np.float64),
            velocity=np.asarray(info.get("vel_agent", (0.0, 0.0)), dtype=np.float64),
            reward=reward,
            coverage=float(info.get("coverage", 0.0)),
            success=bool(info.get("is_success", False)),
            done=done,
            step=step,
            block_pose=np.asarray(info["block_pose"], dtype=np.float64),
            goal_pose=np.asarray(info.get("goal_pose", GOAL_POSE), dtype=np.float64),
        )
