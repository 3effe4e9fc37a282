"""Visuomotor policy over patch features: (tokens, robot state) -> action chunk.

This is the network the policy node runs. The world action model (action head +
RLA head, trained on labelled and action-free episodes) builds on it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rla_wm.checkpoint import Checkpointable

CHECKPOINT_KIND = "chunk_policy"


@dataclass(frozen=True)
class PolicyConfig:
    token_dim: int = 192
    num_tokens: int = 256
    state_dim: int = 2
    action_dim: int = 2
    chunk_length: int = 8
    width: int = 128
    heads: int = 4
    # Actions are target positions reached by increments of at most max_delta per
    # point from the measured state, so every chunk starts where the robot is and
    # moves smoothly; targets are then clipped to the physical range.
    max_delta: tuple[float, ...] = (20.0, 20.0)
    action_low: tuple[float, ...] = (0.0, 0.0)
    action_high: tuple[float, ...] = (512.0, 512.0)
    state_low: tuple[float, ...] = (0.0, 0.0)
    state_high: tuple[float, ...] = (512.0, 512.0)
    encoder_id: str = "builtin:dinov2-tiny-random@224"


class ChunkPolicy(Checkpointable, nn.Module):
    """Attention-pools patch tokens with a state-conditioned query, then predicts a chunk."""

    checkpoint_kind = CHECKPOINT_KIND
    config_type = PolicyConfig

    def __init__(self, config: PolicyConfig) -> None:
        super().__init__()
        if len(config.action_low) != config.action_dim or len(config.action_high) != config.action_dim:
            raise ValueError("action_low/high must have action_dim entries")
        if config.state_dim != config.action_dim or len(config.max_delta) != config.action_dim:
            raise ValueError("actions are increments on the state: state_dim, action_dim and max_delta must agree")
        if len(config.state_low) != config.state_dim or len(config.state_high) != config.state_dim:
            raise ValueError("state_low/high must have state_dim entries")
        self.config = config
        self.token_proj = nn.Sequential(nn.LayerNorm(config.token_dim), nn.Linear(config.token_dim, config.width))
        self.position = nn.Parameter(torch.zeros(1, config.num_tokens, config.width))
        self.state_proj = nn.Linear(config.state_dim, config.width)
        self.query = nn.Parameter(torch.randn(1, 1, config.width) * 0.02)
        self.pool = nn.MultiheadAttention(config.width, config.heads, batch_first=True)
        self.head = nn.Sequential(
            nn.LayerNorm(2 * config.width),
            nn.Linear(2 * config.width, config.width),
            nn.GELU(),
            nn.Linear(config.width, config.chunk_length * config.action_dim),
        )
        self.register_buffer("action_low", torch.tensor(config.action_low, dtype=torch.float32))
        self.register_buffer("action_high", torch.tensor(config.action_high, dtype=torch.float32))
        self.register_buffer("max_delta", torch.tensor(config.max_delta, dtype=torch.float32))
        self.register_buffer("state_low", torch.tensor(config.state_low, dtype=torch.float32))
        self.register_buffer("state_high", torch.tensor(config.state_high, dtype=torch.float32))

    def normalise_state(self, state: torch.Tensor) -> torch.Tensor:
        return 2 * (state - self.state_low) / (self.state_high - self.state_low) - 1

    def forward_normalised(self, tokens: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """(B, N, C) tokens, (B, S) state in physical units -> (B, T, A) increments in [-1, 1]."""
        config = self.config
        if tokens.ndim != 3 or tokens.shape[1:] != (config.num_tokens, config.token_dim):
            raise ValueError(f"tokens {tuple(tokens.shape)} != (B, {config.num_tokens}, {config.token_dim})")
        if state.ndim != 2 or state.shape != (tokens.shape[0], config.state_dim):
            raise ValueError(f"state {tuple(state.shape)} != ({tokens.shape[0]}, {config.state_dim})")
        keys = self.token_proj(tokens) + self.position
        state_embedding = self.state_proj(self.normalise_state(state))
        query = self.query + state_embedding.unsqueeze(1)
        pooled, _ = self.pool(query, keys, keys, need_weights=False)
        features = torch.cat([pooled.squeeze(1), state_embedding], dim=-1)
        raw = self.head(features).view(-1, config.chunk_length, config.action_dim)
        return torch.tanh(raw)

    def forward(self, tokens: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Action chunk (B, T, A) in physical units."""
        increments = self.forward_normalised(tokens, state) * self.max_delta
        targets = state.unsqueeze(1) + torch.cumsum(increments, dim=1)
        return torch.maximum(torch.minimum(targets, self.action_high), self.action_low)
