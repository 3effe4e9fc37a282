"""The learning-rate schedule every trainer here uses: linear warm-up, then cosine decay."""

from __future__ import annotations

import math

import torch


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, steps: int, floor: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Scale the learning rate from 1/warmup_steps up to 1 over `warmup_steps`, then down to `floor`
    along a half cosine by step `steps` (and hold it there)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        done = (step - warmup_steps) / max(1, steps - warmup_steps)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
