"""A policy's sampled chunks as the planner's first candidates (TD-MPC's policy prior for MPPI).

A flow-matching policy draws one mode of its action distribution per sample, so P samples from
the same observation are P different pushes. Each becomes a full-horizon plan: the chunk's
targets, then its last target held to the plan's end (as `shift_plan` pads a warm start), and
CEM / MPPI scores them with world-model rollouts next to its own random samples.
"""

from __future__ import annotations

import torch

from rla_wm.control.planning import PlanningError
from rla_wm.models.policy_loading import ChunkPolicy


class PolicyProposals:
    """`count` plans sampled from `policy` (on `device`) on one observation."""

    def __init__(self, policy: ChunkPolicy, count: int, device: torch.device | str = "cpu") -> None:
        if count < 1:
            raise PlanningError(f"need at least one proposal, got {count}")
        self.policy, self.count, self.device = policy, count, torch.device(device)

    def check_fits(self, encoder_id: str, tokens: int, channels: int, action_dim: int) -> None:
        """The policy must read the planner's feature space and command its joints; PlanningError otherwise."""
        config = self.policy.config
        if (config.encoder_id, config.num_tokens, config.token_dim) != (encoder_id, tokens, channels):
            raise PlanningError(
                f"proposal policy reads {config.encoder_id!r} ({config.num_tokens}x{config.token_dim} tokens), "
                f"the planner's features are {encoder_id!r} ({tokens}x{channels})"
            )
        if config.action_dim != action_dim:
            raise PlanningError(f"proposal policy has {config.action_dim} actions, the planner {action_dim}")

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor, state: torch.Tensor, steps: int) -> torch.Tensor:
        """(count, steps, A) plans from (N, C) features and the (A,) measured joint state."""
        batch_tokens = tokens.to(self.device, torch.float32)[None].expand(self.count, -1, -1)
        batch_state = state.to(self.device, torch.float32)[None].expand(self.count, -1)
        chunks = self.policy(batch_tokens, batch_state).float().cpu()
        if not torch.isfinite(chunks).all():
            raise PlanningError("the proposal policy produced NaN/inf")
        if chunks.shape[1] >= steps:
            return chunks[:, :steps].clone()
        held = chunks[:, -1:].expand(-1, steps - chunks.shape[1], -1)
        return torch.cat([chunks, held], dim=1)
