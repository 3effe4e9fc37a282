"""The scripted SO-101 expert served as a chunk policy: `expert:so101`, rung 1 of the ladder for the arm.

The policy node runs it like `rla_wm.models.policy.Policy`: tokens (B, 1, CUBE_STATE_CHANNELS) from the
sim's environment state (`rla_wm.envs.so101.environment_state`, on sim/environment_state) and the
measured joint positions (B, 6) in, absolute joint targets (B, T, 6) out. So the expert's commands
take the same path a learned policy's do: chunking, timing, blending, the safety gate, the
trajectory controller. `rla_wm.envs.pusht.privileged.ExpertChunkPolicy` does the same for Push-T.

A chunk is the expert's plan: c_1 is the command the expert gives now (its memory of the episode
advances once per call); c_2.. are planned on a copy of it, with the arm assumed at each command's IK
solution a step later (the servos get there within about one 10 Hz step: median 1.03 of the way on
expert episodes) and, while the plan pushes, the cube moved along by the push (otherwise the plan
would have the tool stall behind a cube that never moves, then lift off). The chunk's T points, due
0.1 s apart from the observation's stamp, are h, c_1, c_2, ..., c_{T-1} with h halfway from the
measured joints to c_1: the arm can only start toward c_1 once the chunk has arrived, after the
graph's latency, so one step after the observation it is about halfway there. Without h, a chunk
whose first point is dropped as due too soon (latency above the policy node's min_lead_time) starts
at c_2, a step ahead of the arm, and the arm skips the expert's "lift first" moves: in a simulated
loop (sim, JTC, chunk blending, gate) at 60-100 ms latency the tool then hovered stuck beside the
cube on some seeds (9/12 solved), against 16/16 at 30-150 ms with h. And a first point of c_1 due
~40 ms after receipt is a move the gate refuses as too fast at an episode's start (0.5 rad of pan).

A new episode is noticed without being told, as the expert must be reset at each episode start:
the zone moves (it is fixed within an episode) or the cube jumps.

torch is imported only where chunks are made, like the Push-T expert's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from rla_wm.envs.expert_inputs import single_robot_inputs
from rla_wm.envs.so101.environment_state import CUBE_STATE_CHANNELS, CUBE_STATE_ENCODER_ID, cube_state_from_tokens
from rla_wm.envs.so101.expert import MAX_PUSH, So101Expert
from rla_wm.envs.so101.sim import JOINT_NAMES

if TYPE_CHECKING:
    import mujoco
    import torch

# A new episode: the zone moved at all (beyond float32 rounding), or the cube moved farther between two
# observations than pushes move it (0.2 m/s, so 2 cm a step) over several skipped steps.
ZONE_MOVED = 1e-3  # m
CUBE_JUMP = 0.06  # m


@dataclass(frozen=True)
class So101ExpertChunkConfig:
    """The fields of `PolicyConfig` the policy node reads, for the SO-101 expert served as a policy."""

    chunk_length: int = 4  # 0.4 s at 10 Hz: rides over a late chunk or two, short enough to stay on plan
    # Bound on the move between consecutive commands (rad): the expert moves the tool at most 4 cm a
    # step, which moved a joint's command at most 0.39 rad on 20 expert episodes. Scales the policy
    # node's follow_tolerance_steps.
    step_bound: float = 0.4
    encoder_id: str = CUBE_STATE_ENCODER_ID
    num_tokens: int = 1
    token_dim: int = CUBE_STATE_CHANNELS
    state_dim: int = len(JOINT_NAMES)
    action_dim: int = len(JOINT_NAMES)

    @property
    def max_delta(self) -> tuple[float, ...]:
        return (self.step_bound,) * self.action_dim


class So101ExpertChunkPolicy:
    """The push-cube expert as a chunk policy: cube state tokens + joint positions -> (1, T, 6) targets."""

    def __init__(self, config: So101ExpertChunkConfig | None = None, model: mujoco.MjModel | None = None) -> None:
        self.config = config or So101ExpertChunkConfig()
        if self.config.chunk_length < 2:
            raise ValueError(f"chunk_length must be >= 2 (h, then the expert's command): {self.config}")
        self.expert = So101Expert(model)
        self._last: tuple[np.ndarray, np.ndarray] | None = None  # (cube xy, zone xy) of the previous call

    @property
    def feature_grid(self) -> tuple[int, int, int]:
        return (1, 1, self.config.token_dim)

    def to(self, device: object) -> So101ExpertChunkPolicy:
        return self  # numpy and MuJoCo on the CPU whatever the device

    def eval(self) -> So101ExpertChunkPolicy:
        return self

    def reset(self) -> None:
        """Forget the episode: the next call starts the expert afresh."""
        self.expert.reset()
        self._last = None

    def plan(self, joint_positions: np.ndarray, cube_pose: np.ndarray, zone: np.ndarray) -> np.ndarray:
        """(chunk_length, 6) targets from the measured joints (rad), cube pose (7,) and zone (3,); numpy."""
        joints = np.asarray(joint_positions, dtype=np.float64)
        cube = np.asarray(cube_pose, dtype=np.float64).copy()
        zone = np.asarray(zone, dtype=np.float64)
        if joints.shape != (self.config.state_dim,) or not np.isfinite(joints).all():
            raise ValueError(f"joint positions must be {self.config.state_dim} finite numbers, got {joints}")
        if self._last is not None and self._new_episode(cube[:2], zone[:2], *self._last):
            self.expert.reset()
        self._last = (cube[:2].copy(), zone[:2].copy())
        points = [self.expert.act_on_state(joints, cube, zone)]
        planner = self.expert.plan_copy()
        for _ in range(self.config.chunk_length - 2):
            if planner.pushing:
                # The push carries the cube as far as the tool goes past the push point (see the expert).
                offset = zone[:2] - cube[:2]
                distance = float(np.linalg.norm(offset))
                if distance > 1e-9:
                    cube[:2] += offset / distance * min(MAX_PUSH, distance)
            solution = planner.solution
            assert solution is not None  # set by every act_on_state
            points.append(planner.act_on_state(solution, cube, zone))
        # Halfway to the command now one step after the observation (see the module docstring).
        return np.stack([0.5 * (joints + points[0]), *points])

    def __call__(self, tokens: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """tokens (1, 1, CUBE_STATE_CHANNELS), state (1, 6) joint positions -> (1, chunk_length, 6) float32."""
        import torch

        token, joints = single_robot_inputs(self.config, tokens, state)
        cube_pose, zone = cube_state_from_tokens(token)
        chunk = self.plan(joints, cube_pose, zone)
        return torch.from_numpy(chunk.astype(np.float32)[None]).to(tokens.device)

    @staticmethod
    def _new_episode(cube: np.ndarray, zone: np.ndarray, last_cube: np.ndarray, last_zone: np.ndarray) -> bool:
        return bool(np.linalg.norm(zone - last_zone) > ZONE_MOVED or np.linalg.norm(cube - last_cube) > CUBE_JUMP)
