"""Transformer building blocks shared by the RLA autoencoder, the world model and the baselines."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head attention; keys/values can be precomputed once and reused (cross-attention cache)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key_value = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        return x.view(batch, tokens, self.heads, width // self.heads).transpose(1, 2)

    def keys_values(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.key_value(context).chunk(2, dim=-1)
        return self._split(keys), self._split(values)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        cached: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        keys, values = cached if cached is not None else self.keys_values(x if context is None else context)
        if keys.shape[0] != x.shape[0]:
            # One cached context serves a batch of queries (e.g. many samples from one state).
            repeat = x.shape[0] // keys.shape[0]
            keys, values = keys.repeat_interleave(repeat, 0), values.repeat_interleave(repeat, 0)
        attended = F.scaled_dot_product_attention(self._split(self.query(x)), keys, values)
        return self.out(attended.transpose(1, 2).flatten(2))


class Mlp(nn.Sequential):
    def __init__(self, width: int, ratio: float) -> None:
        hidden = int(width * ratio)
        super().__init__(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Block(nn.Module):
    """Pre-norm transformer block: self-attention, optional cross-attention, MLP.

    With `condition_dim`, every sub-layer is modulated by adaptive layer norm
    (shift, scale, gate from the condition vector, gates zero-initialised so the
    block starts as the identity), as in DiT.
    """

    def __init__(
        self,
        width: int,
        heads: int,
        mlp_ratio: float = 4.0,
        cross_attention: bool = False,
        condition_dim: int | None = None,
    ) -> None:
        super().__init__()
        adaptive = condition_dim is not None
        self.norm_self = nn.LayerNorm(width, elementwise_affine=not adaptive)
        self.self_attention = Attention(width, heads)
        self.cross_attention = Attention(width, heads) if cross_attention else None
        self.norm_cross = nn.LayerNorm(width) if cross_attention else None
        self.norm_mlp = nn.LayerNorm(width, elementwise_affine=not adaptive)
        self.mlp = Mlp(width, mlp_ratio)
        self.modulation: nn.Sequential | None = None
        if condition_dim is not None:
            projection = nn.Linear(condition_dim, 6 * width)
            nn.init.zeros_(projection.weight)
            nn.init.zeros_(projection.bias)
            self.modulation = nn.Sequential(nn.SiLU(), projection)

    def forward(
        self,
        x: torch.Tensor,
        condition: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        cached_context: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if self.modulation is not None:
            if condition is None:
                raise ValueError("this block is adaptive: pass a condition vector")
            shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(condition).chunk(6, dim=-1)
            x = x + gate1.unsqueeze(1) * self.self_attention(modulate(self.norm_self(x), shift1, scale1))
        else:
            x = x + self.self_attention(self.norm_self(x))
        if self.cross_attention is not None and self.norm_cross is not None:  # set together in __init__
            if context is None and cached_context is None:
                raise ValueError("this block cross-attends: pass context or cached_context")
            x = x + self.cross_attention(self.norm_cross(x), context=context, cached=cached_context)
        if self.modulation is not None:
            x = x + gate2.unsqueeze(1) * self.mlp(modulate(self.norm_mlp(x), shift2, scale2))
        else:
            x = x + self.mlp(self.norm_mlp(x))
        return x


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of scalar times in [0, 1] (scaled by 1000 as in diffusion models)."""
    half = dim // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = 1000.0 * t.float()[:, None] * frequencies[None]
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding
