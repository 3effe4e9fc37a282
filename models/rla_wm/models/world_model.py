"""RLA-WM: flow matching over residual latent actions z, conditioned on features and actions.

Conditioning (once per prediction): transformer blocks over the tokens of s_t,
with the action-sequence vector (per-step MLP + GRU) injected by adaLN.
Flow (once per Euler step): blocks over the K noisy latent tokens with
self-attention, cross-attention to the conditioning tokens (keys/values cached
across steps) and adaLN on the flow time.

Training target is z / latent_scale (10 in the paper) on the path
x_tau = (1 - tau) z + (sigma_min + (1 - sigma_min) tau) eps,
tau ~ logit-normal(0, 1), velocity v = (1 - sigma_min) eps - z; loss MSE + L1.
Sampling integrates from noise at tau = 1 to tau = 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rla_wm.models.checkpoint import Checkpointable
from rla_wm.models.layers import Block, timestep_embedding
from rla_wm.models.rla import RLAAutoencoder, check_features

CHECKPOINT_KIND = "rla_world_model"
SIGMA_MIN = 1e-5


@dataclass(frozen=True)
class WorldModelConfig:
    """Sizes; the paper's setting is width 1024 with 8 conditioning + 8 flow blocks."""

    token_dim: int = 192
    num_tokens: int = 256
    latent_tokens: int = 8
    latent_dim: int = 16
    action_dim: int = 2
    max_horizon: int = 15
    width: int = 256
    condition_depth: int = 4
    flow_depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    # Affine map of raw actions to roughly [-1, 1] before the action encoder.
    action_low: tuple[float, ...] = (0.0, 0.0)
    action_high: tuple[float, ...] = (512.0, 512.0)
    # The flow runs on z / latent_scale. The paper uses 10 for its autoencoder; training
    # sets it to the standard deviation of z on the training data so the target has unit scale.
    latent_scale: float = 10.0
    encoder_id: str = "builtin:dinov2-tiny-random@224"

    @classmethod
    def paper(cls, token_dim: int = 1024, num_tokens: int = 1024, encoder_id: str = "") -> WorldModelConfig:
        """The released setting: 8 conditioning + 8 flow blocks of width 1024 over RLAConfig.paper's z."""
        return cls(
            token_dim=token_dim,
            num_tokens=num_tokens,
            latent_tokens=32,
            latent_dim=64,
            width=1024,
            condition_depth=8,
            flow_depth=8,
            heads=16,
            encoder_id=encoder_id,
        )


class ActionEncoder(nn.Module):
    """Per-step MLP then a GRU over the (variable-length) action sequence -> one vector."""

    # Buffers (registered in __init__), declared for type checkers.
    low: torch.Tensor
    high: torch.Tensor

    def __init__(
        self,
        action_dim: int,
        width: int,
        max_horizon: int,
        action_low: tuple[float, ...],
        action_high: tuple[float, ...],
    ) -> None:
        super().__init__()
        if len(action_low) != action_dim or len(action_high) != action_dim:
            raise ValueError(f"action_low/high need {action_dim} entries")
        self.action_dim = action_dim
        self.max_horizon = max_horizon
        self.step = nn.Sequential(nn.Linear(action_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.gru = nn.GRU(width, width, batch_first=True)
        self.register_buffer("low", torch.tensor(action_low, dtype=torch.float32))
        self.register_buffer("high", torch.tensor(action_high, dtype=torch.float32))

    @classmethod
    def from_config(cls, config) -> ActionEncoder:
        return cls(config.action_dim, config.width, config.max_horizon, config.action_low, config.action_high)

    def forward(self, actions: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if actions.ndim != 3:
            raise ValueError(f"actions must be (B, steps, {self.action_dim}), got {tuple(actions.shape)}")
        batch, steps, dim = actions.shape
        if dim != self.action_dim or not 1 <= steps <= self.max_horizon:
            raise ValueError(f"actions {tuple(actions.shape)} != (B, 1..{self.max_horizon}, {self.action_dim})")
        if not torch.isfinite(actions).all():
            raise ValueError("actions contain NaN or inf")
        normalised = 2 * (actions - self.low) / (self.high - self.low) - 1
        embedded = self.step(normalised)
        if lengths is None:
            _, hidden = self.gru(embedded)
        else:
            lengths = lengths.to("cpu", torch.int64)
            if lengths.shape != (batch,) or (lengths < 1).any() or (lengths > steps).any():
                raise ValueError(f"lengths must be (B,) in [1, {steps}], got {lengths.tolist()}")
            packed = nn.utils.rnn.pack_padded_sequence(embedded, lengths, batch_first=True, enforce_sorted=False)
            _, hidden = self.gru(packed)
        return hidden[-1]


@dataclass
class Conditioning:
    """What the flow stage needs from one (s_t, actions) pair, computed once per prediction."""

    current: torch.Tensor
    cached_context: list[tuple[torch.Tensor, torch.Tensor]]


class RLAWorldModel(Checkpointable[WorldModelConfig]):
    checkpoint_kind = CHECKPOINT_KIND
    config_type = WorldModelConfig

    def __init__(self, config: WorldModelConfig) -> None:
        super().__init__(config)
        width = config.width
        self.actions = ActionEncoder.from_config(config)
        self.feature_input = nn.Linear(config.token_dim, width)
        self.feature_position = nn.Parameter(torch.randn(1, config.num_tokens, width) * 0.02)
        self.condition_blocks = nn.ModuleList(
            Block(width, config.heads, config.mlp_ratio, condition_dim=width) for _ in range(config.condition_depth)
        )
        self.condition_norm = nn.LayerNorm(width)
        self.latent_input = nn.Linear(config.latent_dim, width)
        self.latent_position = nn.Parameter(torch.randn(1, config.latent_tokens, width) * 0.02)
        self.time = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.flow_blocks = nn.ModuleList(
            Block(width, config.heads, config.mlp_ratio, cross_attention=True, condition_dim=width)
            for _ in range(config.flow_depth)
        )
        self.flow_norm = nn.LayerNorm(width)
        self.velocity = nn.Linear(width, config.latent_dim)
        nn.init.zeros_(self.velocity.weight)
        nn.init.zeros_(self.velocity.bias)

    # -- conditioning stage -------------------------------------------------------------
    def condition(
        self, current: torch.Tensor, actions: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> Conditioning:
        """The conditioning of B action sequences on B feature maps, or on one (1, N, C) map shared by all
        (a planner's candidates from one observation). Only the action-free input projection runs once
        for a shared map: adaLN injects each sequence's actions into every conditioning block."""
        check_features(current, self.config, "current features")
        batch = actions.shape[0]
        if current.shape[0] not in (1, batch):
            raise ValueError(f"{batch} action sequences for {current.shape[0]} feature maps (need 1 or {batch})")
        action_vector = self.actions(actions, lengths)
        x = (self.feature_input(current) + self.feature_position).expand(batch, -1, -1)
        for block in self.condition_blocks:
            x = block(x, condition=action_vector)
        context = self.condition_norm(x)
        cached = []
        for block in self.flow_blocks:
            assert isinstance(block, Block) and block.cross_attention is not None  # flow blocks cross-attend
            cached.append(block.cross_attention.keys_values(context))
        return Conditioning(current=current, cached_context=cached)

    # -- flow stage ---------------------------------------------------------------------
    def velocity_field(self, x: torch.Tensor, tau: torch.Tensor, conditioning: Conditioning) -> torch.Tensor:
        h = self.latent_input(x) + self.latent_position
        # The embedding is computed in float32 (sin of 1000 t); the layers may run in bfloat16.
        time = self.time(timestep_embedding(tau, self.config.width).to(h.dtype))
        for block, cached in zip(self.flow_blocks, conditioning.cached_context):
            h = block(h, condition=time, cached_context=cached)
        return self.velocity(self.flow_norm(h))

    def loss(
        self, current: torch.Tensor, actions: torch.Tensor, z: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Flow-matching loss for target latents z (from the frozen RLA encoder)."""
        target = z / self.config.latent_scale
        conditioning = self.condition(current, actions, lengths)
        tau = torch.sigmoid(torch.randn(z.shape[0], device=z.device))
        noise = torch.randn_like(target)
        tau_ = tau.view(-1, 1, 1)
        noisy = (1 - tau_) * target + (SIGMA_MIN + (1 - SIGMA_MIN) * tau_) * noise
        velocity_target = (1 - SIGMA_MIN) * noise - target
        predicted = self.velocity_field(noisy, tau, conditioning)
        mse = F.mse_loss(predicted, velocity_target)
        l1 = F.l1_loss(predicted, velocity_target)
        return mse + l1, {"mse": float(mse.detach()), "l1": float(l1.detach())}

    @torch.no_grad()
    def sample(
        self,
        current: torch.Tensor,
        actions: torch.Tensor,
        lengths: torch.Tensor | None = None,
        steps: int = 30,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Predict z (B, K, D) for B action sequences with `steps` Euler steps from Gaussian noise, seeded
        via `generator`; `current` is (B, N, C), or (1, N, C) shared by all B (a planner's candidates)."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        conditioning = self.condition(current, actions, lengths)
        shape = (actions.shape[0], self.config.latent_tokens, self.config.latent_dim)
        x = torch.randn(shape, generator=generator, device=current.device, dtype=current.dtype)
        taus = torch.linspace(1.0, 0.0, steps + 1, device=current.device)
        for tau, next_tau in zip(taus[:-1], taus[1:]):
            # One flow time for the whole batch: embedded once and broadcast over the rows.
            v = self.velocity_field(x, tau.reshape(1), conditioning)
            x = x + (next_tau - tau) * v
        return x * self.config.latent_scale

    @torch.no_grad()
    def predict(
        self,
        autoencoder: RLAAutoencoder,
        current: torch.Tensor,
        actions: torch.Tensor,
        lengths: torch.Tensor | None = None,
        steps: int = 30,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """s_hat_{t+h} = Dec(z_hat, s_t)."""
        return autoencoder.decode(self.sample(current, actions, lengths, steps, generator), current)
