"""Which chunk policy a policy node runs, from one text: a checkpoint, a random policy, or a scripted expert.

- "untrained": a randomly initialised `Policy` (seeded), to exercise the loop without a model;
- "expert:pusht": the scripted Push-T expert on the simulator's block state
  (`rla_wm.envs.pusht.privileged.ExpertChunkPolicy`), the top rung of the closed-loop ladder;
- anything else: a `Policy` checkpoint folder or builtin:NAME (`Policy.load`; CheckpointError
  if it is missing, corrupt or does not build the model).

All of them take (B, N, C) tokens and a (B, S) state and return (B, T, A) absolute targets.
"""

from __future__ import annotations

from typing import Protocol

import torch

from rla_wm.models.checkpoint import CheckpointError
from rla_wm.models.policy import Policy, PolicyConfig

UNTRAINED = "untrained"
EXPERT_PREFIX = "expert:"
EXPERTS = ("pusht",)


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
        if name != "pusht":
            raise CheckpointError(f"unknown expert {spec!r}; known: {', '.join(EXPERT_PREFIX + e for e in EXPERTS)}")
        from rla_wm.envs.pusht.privileged import ExpertChunkPolicy

        return ExpertChunkPolicy()
    policy, _ = Policy.load(spec)
    return policy
