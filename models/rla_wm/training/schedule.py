"""The learning-rate schedule every trainer here uses (linear warm-up, then cosine decay), and the
clipped optimiser step of the single-process trainers (encoder pretraining, the camera estimators)."""

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


def clipped_step(
    loss: torch.Tensor,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    max_norm: float = 1.0,
) -> None:
    """Back-propagate `loss`, clip `module`'s gradient norm to `max_norm`, step the optimiser and the schedule."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm)
    optimizer.step()
    scheduler.step()
