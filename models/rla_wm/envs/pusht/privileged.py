"""Privileged Push-T observations for the first rungs of the closed-loop ladder.

The ladder localises each loss of the visual policy by swapping one part at a time on the same
ROS path (chunking, timing, blending, safety gate): first the scripted expert, then a policy on
the simulator's block state, then the policy on encoder features. For the first two the
simulator's block pose travels as a 1x1 "feature map" (`block_state_tokens`) in the same
FeatureMap message encoder features use, and `ExpertChunkPolicy` serves the scripted expert
behind the interface the policy node runs `rla_wm.models.policy.Policy` through.

torch is imported only where chunks are made, so the sim robot node that publishes block
states does not pay for it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from rla_wm.envs.expert_inputs import single_robot_inputs
from rla_wm.envs.pusht.expert import AGENT_HIGH, AGENT_LOW, PushTExpert
from rla_wm.envs.pusht.sim import GOAL_POSE, WORKSPACE_HIGH, WORKSPACE_LOW

if TYPE_CHECKING:
    import torch

BLOCK_STATE_ENCODER_ID = "sim:pusht-block-state"
# [x, y, cos(angle), sin(angle)], x and y scaled from the workspace to [-1, 1]. A Policy on these
# needs token_norm=False: a layer norm over 4 channels erases their mean and scale, and with them
# most of the pose.
BLOCK_STATE_CHANNELS = 4
BLOCK_STATE_NAMES = ("block_x", "block_y", "block_cos", "block_sin")
# Largest change of the block between two observations of one episode: the expert moves it at
# most ~13 px and ~0.12 rad per 10 Hz step; these bounds allow for several skipped frames.
# A larger jump is a reset to a new episode.
EPISODE_JUMP_PX = 60.0
EPISODE_JUMP_RAD = 0.8
EPISODE_JUMP_AGENT_PX = 150.0


def _normalise(value: npt.ArrayLike) -> np.ndarray:
    return 2.0 * (np.asarray(value, dtype=np.float64) - WORKSPACE_LOW) / (WORKSPACE_HIGH - WORKSPACE_LOW) - 1.0


def block_state_tokens(block_pose: npt.ArrayLike) -> np.ndarray:
    """Block pose (x, y pixels, angle rad) -> (1, BLOCK_STATE_CHANNELS) float32: one token of a 1x1 grid,
    [x, y, cos, sin] with x, y scaled from the workspace to [-1, 1]."""
    pose = np.asarray(block_pose, dtype=np.float64)
    if pose.shape != (3,) or not np.isfinite(pose).all():
        raise ValueError(f"block_pose must be 3 finite numbers (x, y, angle), got {pose}")
    return np.array([[*_normalise(pose[:2]), np.cos(pose[2]), np.sin(pose[2])]], dtype=np.float32)


def block_pose_from_tokens(tokens: npt.ArrayLike) -> np.ndarray:
    """Inverse of `block_state_tokens` on (..., BLOCK_STATE_CHANNELS) -> (..., 3); the angle in (-pi, pi]."""
    values = np.asarray(tokens, dtype=np.float64)
    if values.shape[-1] != BLOCK_STATE_CHANNELS:
        raise ValueError(f"block state tokens have {values.shape[-1]} channels, expected {BLOCK_STATE_CHANNELS}")
    if not np.isfinite(values).all() or (np.hypot(values[..., 2], values[..., 3]) < 1e-6).any():
        raise ValueError("block state tokens are not finite or carry no angle")
    position = (values[..., :2] + 1.0) / 2.0 * (WORKSPACE_HIGH - WORKSPACE_LOW) + WORKSPACE_LOW
    angle = np.arctan2(values[..., 3], values[..., 2])
    return np.concatenate([position, angle[..., None]], axis=-1)


@dataclass(frozen=True)
class ExpertChunkConfig:
    """The fields of `PolicyConfig` the policy node reads, for the expert served as a policy."""

    chunk_length: int = 8
    max_lead: float = 40.0  # the expert's bound on each target's distance from the agent
    # Fraction of the way to its target the agent covers in one 10 Hz step (gym-pusht's critically
    # damped PD drive, measured on expert episodes: 0.41 median). Rolling the agent forward by it
    # predicts the expert's next commands to ~3 px (median, 3 steps ahead); assuming it reaches each
    # target runs the chunk ~25 px ahead of the robot by then, which blending turns into jumps the
    # safety gate refuses, and at 8 points it would pass the gate's max_step (200 px).
    agent_progress: float = 0.4
    encoder_id: str = BLOCK_STATE_ENCODER_ID
    num_tokens: int = 1
    token_dim: int = BLOCK_STATE_CHANNELS
    state_dim: int = 2
    action_dim: int = 2
    action_low: tuple[float, ...] = (AGENT_LOW, AGENT_LOW)
    action_high: tuple[float, ...] = (AGENT_HIGH, AGENT_HIGH)

    @property
    def max_delta(self) -> tuple[float, ...]:
        """Bound on the move between consecutive points (and from the state to the first): a target is at
        most max_lead from an agent that stands at most (1 - agent_progress) * max_lead from the last one."""
        return ((2.0 - self.agent_progress) * self.max_lead,) * self.action_dim


class ExpertChunkPolicy:
    """The scripted Push-T expert as a chunk policy: block state tokens + agent position -> (B, T, 2).

    A chunk is the commands the expert would give over the next steps if the block stayed put:
    p_1 = act(a_0), p_2 = act(a_1), ... with the agent a_k moved `agent_progress` of the way to p_k
    each step (a geometric planner, so this is its plan; the same quantity as a chunk of recorded
    demonstrations). The expert remembers the contact it is pushing; that memory advances once per
    call (p_1, the command it would give now) while p_2.. are planned on a copy. It is forgotten
    when the block or the agent jumps (a new episode), as the expert is reset at every episode start.
    """

    def __init__(self, config: ExpertChunkConfig | None = None, goal_pose: npt.ArrayLike = GOAL_POSE) -> None:
        self.config = config or ExpertChunkConfig()
        if self.config.chunk_length < 1 or not 0.0 < self.config.agent_progress <= 1.0:
            raise ValueError(f"chunk_length must be >= 1 and agent_progress in (0, 1]: {self.config}")
        self.expert = PushTExpert(max_lead=self.config.max_lead)
        self.goal_pose = np.asarray(goal_pose, dtype=np.float64)
        self._last: tuple[np.ndarray, np.ndarray] | None = None  # (block pose, agent) of the previous call

    @property
    def feature_grid(self) -> tuple[int, int, int]:
        return (1, 1, self.config.token_dim)

    def to(self, device: object) -> ExpertChunkPolicy:
        return self  # runs on the CPU whatever the device: it is numpy geometry

    def eval(self) -> ExpertChunkPolicy:
        return self

    def reset(self) -> None:
        """Forget the episode: the next call starts the expert afresh."""
        self.expert.reset()
        self._last = None

    def __call__(self, tokens: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """tokens (1, 1, BLOCK_STATE_CHANNELS), state (1, 2) agent position -> (1, chunk_length, 2) targets."""
        import torch

        config = self.config
        token, agent = single_robot_inputs(config, tokens, state)
        block_pose = block_pose_from_tokens(token)
        if not np.isfinite(agent).all():
            raise ValueError(f"state must be finite, got {agent}")
        if self._last is not None and self._jumped(block_pose, agent, *self._last):
            self.expert.reset()
        self._last = (block_pose, agent)
        points = [self.expert.act(agent, block_pose, self.goal_pose)]
        planner = copy.deepcopy(self.expert)
        for _ in range(config.chunk_length - 1):
            agent = agent + config.agent_progress * (points[-1] - agent)
            points.append(planner.act(agent, block_pose, self.goal_pose))
        chunk = np.stack(points).astype(np.float32)[None]
        return torch.from_numpy(chunk).to(tokens.device)

    @staticmethod
    def _jumped(block_pose: np.ndarray, agent: np.ndarray, last_pose: np.ndarray, last_agent: np.ndarray) -> bool:
        turn = abs((block_pose[2] - last_pose[2] + np.pi) % (2 * np.pi) - np.pi)
        return bool(
            np.linalg.norm(block_pose[:2] - last_pose[:2]) > EPISODE_JUMP_PX
            or turn > EPISODE_JUMP_RAD
            or np.linalg.norm(agent - last_agent) > EPISODE_JUMP_AGENT_PX
        )
