"""Reference predictors measured beside RLA-WM on the same data.

- copy-last-frame: s_hat_{t+h} = s_t (what a world model must beat);
- DINO-WM-style direct regression: a ViT over the tokens of s_t, conditioned on the
  action sequence by adaLN, regresses s_{t+h} (as a residual on s_t).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rla_wm.models.checkpoint import Checkpointable
from rla_wm.models.layers import Block
from rla_wm.models.rla import check_features
from rla_wm.models.world_model import ActionEncoder

CHECKPOINT_KIND = "regression_predictor"


@dataclass(frozen=True)
class RegressionConfig:
    token_dim: int = 192
    num_tokens: int = 256
    action_dim: int = 2
    max_horizon: int = 15
    width: int = 256
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    action_low: tuple[float, ...] = (0.0, 0.0)
    action_high: tuple[float, ...] = (512.0, 512.0)
    encoder_id: str = "builtin:dinov2-tiny-random@224"

    @classmethod
    def paper(cls, token_dim: int = 1024, num_tokens: int = 1024, encoder_id: str = "") -> RegressionConfig:
        """The baseline at the paper's scale: 12 blocks of width 1024, as deep as the RLA decoder."""
        return cls(token_dim=token_dim, num_tokens=num_tokens, width=1024, depth=12, heads=16, encoder_id=encoder_id)


class RegressionModel(Checkpointable[RegressionConfig]):
    checkpoint_kind = CHECKPOINT_KIND
    config_type = RegressionConfig

    def __init__(self, config: RegressionConfig) -> None:
        super().__init__(config)
        self.actions = ActionEncoder.from_config(config)
        self.input = nn.Linear(config.token_dim, config.width)
        self.position = nn.Parameter(torch.randn(1, config.num_tokens, config.width) * 0.02)
        self.blocks = nn.ModuleList(
            Block(config.width, config.heads, config.mlp_ratio, condition_dim=config.width) for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(config.width)
        self.output = nn.Linear(config.width, config.token_dim)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(
        self, current: torch.Tensor, actions: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, N, C) predicted features for B action sequences from B feature maps, or from one (1, N, C) map
        shared by all B (a planner's candidates: its input projection then runs once; adaLN puts the
        actions into every block, so the blocks run per sequence either way)."""
        check_features(current, self.config, "current features")
        batch = actions.shape[0]
        if current.shape[0] not in (1, batch):
            raise ValueError(f"{batch} action sequences for {current.shape[0]} feature maps (need 1 or {batch})")
        condition = self.actions(actions, lengths)
        x = (self.input(current) + self.position).expand(batch, -1, -1)
        for block in self.blocks:
            x = block(x, condition=condition)
        return current + self.output(self.norm(x))

    def loss(
        self, current: torch.Tensor, actions: torch.Tensor, future: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        predicted = self(current, actions, lengths)
        l1 = F.l1_loss(predicted, future)
        mse = F.mse_loss(predicted, future)
        return l1 + mse, {"l1": float(l1.detach()), "mse": float(mse.detach())}
