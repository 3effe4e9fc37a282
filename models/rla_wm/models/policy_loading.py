"""Which chunk policy a policy node runs, from one text: a checkpoint, a random policy, or a scripted expert.

- "untrained": a randomly initialised `Policy` (seeded), to exercise the loop without a model;
- "expert:pusht": the scripted Push-T expert on the simulator's block state
  (`rla_wm.envs.pusht.privileged.ExpertChunkPolicy`), the top rung of the closed-loop ladder;
- "expert:so101": the scripted SO-101 push-cube expert on the arm simulator's environment state
  (`rla_wm.envs.so101.chunk_policy.So101ExpertChunkPolicy`), the same rung for the arm;
- anything else: a `Policy` checkpoint folder or builtin:NAME (`Policy.load`; CheckpointError
  if it is missing, corrupt or does not build the model).

All of them take (B, N, C) tokens and a (B, S) state and return (B, T, A) absolute targets.
A LeRobot pretrained-policy folder ("lerobot:<folder>", or a folder whose config.json names a
LeRobot policy type) takes camera images instead: `load_policy` refuses it with a CheckpointError
that says so, and `load_any_policy` (what the policy node calls) returns it as a
`rla_wm.models.lerobot_policy.LeRobotChunkPolicy`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch

from rla_wm.models.checkpoint import CheckpointError
from rla_wm.models.lerobot_policy import LeRobotChunkPolicy, lerobot_folder, load_lerobot_policy
from rla_wm.models.policy import Policy, PolicyConfig

if TYPE_CHECKING:
    from rla_wm.envs.so101.lerobot_units import So101LeRobotUnits

UNTRAINED = "untrained"
EXPERT_PREFIX = "expert:"
EXPERTS = ("pusht", "so101")


class ChunkPolicyConfig(Protocol):
    """The configuration a policy node needs to feed a chunk policy and schedule its chunks."""

    @property
    def encoder_id(self) -> str: ...
    @property
    def num_tokens(self) -> int: ...
    @property
    def token_dim(self) -> int: ...
    @property
    def action_dim(self) -> int: ...
    @property
    def chunk_length(self) -> int: ...
    @property
    def max_delta(self) -> tuple[float, ...]: ...


class ChunkPolicy(Protocol):
    """What the policy node calls: `Policy`, or anything else that makes chunks the same way."""

    @property
    def config(self) -> ChunkPolicyConfig: ...
    @property
    def feature_grid(self) -> tuple[int, int, int] | None: ...
    def to(self, device: torch.device) -> ChunkPolicy: ...
    def eval(self) -> ChunkPolicy: ...
    def __call__(self, tokens: torch.Tensor, state: torch.Tensor) -> torch.Tensor: ...


def load_policy(spec: str, seed: int = 0) -> ChunkPolicy:
    """The chunk policy `spec` names (see the module docstring), in eval mode; `seed` seeds "untrained"."""
    if spec == UNTRAINED:
        torch.manual_seed(seed)
        return Policy(PolicyConfig()).eval()
    if spec.startswith(EXPERT_PREFIX):
        name = spec.removeprefix(EXPERT_PREFIX)
        if name not in EXPERTS:
            raise CheckpointError(f"unknown expert {spec!r}; known: {', '.join(EXPERT_PREFIX + e for e in EXPERTS)}")
        if name == "so101":
            # Imported only here: it loads MuJoCo and the arm's model, which no other policy needs.
            from rla_wm.envs.so101.chunk_policy import So101ExpertChunkPolicy

            return So101ExpertChunkPolicy()
        from rla_wm.envs.pusht.privileged import ExpertChunkPolicy

        return ExpertChunkPolicy()
    if lerobot_folder(spec) is not None:
        raise CheckpointError(
            f"{spec} is a LeRobot policy folder: it acts on camera images, not on features; run it in the "
            "policy node (which then subscribes to the camera) or load it with load_any_policy"
        )
    policy, _ = Policy.load(spec)
    return policy


def load_any_policy(
    spec: str,
    seed: int = 0,
    device: str = "cpu",
    history_timeout: float | None = None,
    lerobot_joint_units: So101LeRobotUnits | None = None,
) -> ChunkPolicy | LeRobotChunkPolicy:
    """`load_policy(spec, seed)`, or for a LeRobot policy folder its image-driven policy on `device` whose
    observation history resets after a gap of more than `history_timeout` s, converting joints from and to
    LeRobot's SO-101 units with `lerobot_joint_units` (see lerobot_policy)."""
    if lerobot_folder(spec) is not None:
        return load_lerobot_policy(
            spec, device=device, history_timeout=history_timeout, joint_units=lerobot_joint_units
        )
    return load_policy(spec, seed=seed)
