"""Residual Latent Action (RLA) autoencoder.

Encoder: K learnable query tokens attend over the feature residual s_{t+h} - s_t
and are projected to z (K x D, continuous, deterministic). Decoder: reads z and
s_t and predicts s_{t+h}. The decoder's output projection is zero-initialised on
top of s_t, so an untrained decoder starts as the copy-last-frame predictor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rla_wm.models.checkpoint import Checkpointable
from rla_wm.models.layers import Block

CHECKPOINT_KIND = "rla_autoencoder"


@dataclass(frozen=True)
class RLAConfig:
    """Sizes; the paper's setting is latent 32x64, 12 blocks, width 1024, 16 heads."""

    token_dim: int = 192
    num_tokens: int = 256
    latent_tokens: int = 8
    latent_dim: int = 16
    width: int = 256
    encoder_depth: int = 4
    decoder_depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    # Residuals are divided by this before the encoder. Feature changes between frames
    # are small next to the features themselves (most patches are static), so training
    # sets it to the residuals' standard deviation to give the encoder unit-scale input.
    residual_scale: float = 1.0
    encoder_id: str = "builtin:dinov2-tiny-random@224"

    @classmethod
    def paper(cls, token_dim: int = 1024, num_tokens: int = 1024, encoder_id: str = "") -> RLAConfig:
        return cls(
            token_dim=token_dim,
            num_tokens=num_tokens,
            latent_tokens=32,
            latent_dim=64,
            width=1024,
            encoder_depth=12,
            decoder_depth=12,
            heads=16,
            encoder_id=encoder_id,
        )


def check_features(features: torch.Tensor, config, name: str) -> None:
    """Raise ValueError unless features are finite (B, config.num_tokens, config.token_dim)."""
    expected = (config.num_tokens, config.token_dim)
    if features.ndim != 3 or tuple(features.shape[1:]) != expected:
        raise ValueError(f"{name} has shape {tuple(features.shape)}, expected (B, {expected[0]}, {expected[1]})")
    if not torch.isfinite(features).all():
        raise ValueError(f"{name} contains NaN or inf")


class RLAEncoder(nn.Module):
    def __init__(self, config: RLAConfig) -> None:
        super().__init__()
        self.config = config
        self.input = nn.Linear(config.token_dim, config.width)
        self.position = nn.Parameter(torch.randn(1, config.num_tokens, config.width) * 0.02)
        self.queries = nn.Parameter(torch.randn(1, config.latent_tokens, config.width) * 0.02)
        self.blocks = nn.ModuleList(
            Block(config.width, config.heads, config.mlp_ratio) for _ in range(config.encoder_depth)
        )
        self.norm = nn.LayerNorm(config.width)
        self.output = nn.Linear(config.width, config.latent_dim)

    def forward(self, residual: torch.Tensor) -> torch.Tensor:
        tokens = self.input(residual) + self.position
        x = torch.cat([self.queries.expand(residual.shape[0], -1, -1), tokens], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.output(self.norm(x[:, : self.config.latent_tokens]))


class RLADecoder(nn.Module):
    def __init__(self, config: RLAConfig) -> None:
        super().__init__()
        self.config = config
        self.latent_input = nn.Linear(config.latent_dim, config.width)
        self.latent_position = nn.Parameter(torch.randn(1, config.latent_tokens, config.width) * 0.02)
        self.feature_input = nn.Linear(config.token_dim, config.width)
        self.feature_position = nn.Parameter(torch.randn(1, config.num_tokens, config.width) * 0.02)
        self.blocks = nn.ModuleList(
            Block(config.width, config.heads, config.mlp_ratio) for _ in range(config.decoder_depth)
        )
        self.norm = nn.LayerNorm(config.width)
        self.output = nn.Linear(config.width, config.token_dim)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(self, z: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        """Features (B, N, C) from B latents and B feature maps, or one (1, N, C) map shared by all B
        (a planner's candidates from one observation: its input projection then runs once)."""
        latent = self.latent_input(z) + self.latent_position
        features = (self.feature_input(current) + self.feature_position).expand(z.shape[0], -1, -1)
        x = torch.cat([latent, features], dim=1)
        for block in self.blocks:
            x = block(x)
        # The change is predicted in residual-scale units, like the encoder's input.
        change = self.output(self.norm(x[:, self.config.latent_tokens :]))
        return current + self.config.residual_scale * change


class RLAAutoencoder(Checkpointable[RLAConfig]):
    """z = encode(s_t, s_{t+h});  s_{t+h} ~= decode(z, s_t)."""

    checkpoint_kind = CHECKPOINT_KIND
    config_type = RLAConfig

    def __init__(self, config: RLAConfig) -> None:
        super().__init__(config)
        self.encoder = RLAEncoder(config)
        self.decoder = RLADecoder(config)

    def encode(self, current: torch.Tensor, future: torch.Tensor) -> torch.Tensor:
        check_features(current, self.config, "current features")
        check_features(future, self.config, "future features")
        return self.encoder((future - current) / self.config.residual_scale)

    def decode(self, z: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        check_features(current, self.config, "current features")
        expected = (self.config.latent_tokens, self.config.latent_dim)
        # B latents on B feature maps, or on one map shared by all (a planner's candidates).
        if z.ndim != 3 or tuple(z.shape[1:]) != expected or current.shape[0] not in (1, z.shape[0]):
            raise ValueError(
                f"z has shape {tuple(z.shape)}, expected (B, {expected[0]}, {expected[1]}) "
                f"for {current.shape[0]} feature map(s)"
            )
        return self.decoder(z, current)

    def forward(self, current: torch.Tensor, future: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(current, future)
        return self.decoder(z, current), z

    def loss(self, current: torch.Tensor, future: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """L1 + MSE between reconstructed and true future features, in residual-scale units.

        L1 + MSE is not scale-free: on raw features whose frame-to-frame changes are tiny,
        L1 dominates and favours predicting no change at all; measured in units of the
        residuals' spread, both terms weigh the moving patches as intended.
        """
        reconstruction, _ = self(current, future)
        error = (reconstruction - future) / self.config.residual_scale
        l1 = error.abs().mean()
        mse = error.pow(2).mean()
        with torch.no_grad():
            # Feature-unit errors, and copy-last on the same batch: does z carry the change?
            feature_l1 = F.l1_loss(reconstruction, future)
            copy_last_l1 = F.l1_loss(current, future)
        return l1 + mse, {
            "l1": float(feature_l1),
            "copy_last_l1": float(copy_last_l1),
            "scaled_l1": float(l1.detach()),
            "scaled_mse": float(mse.detach()),
        }
