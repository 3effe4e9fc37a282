"""fit's weight average (train.<model>.ema_decay): the weights it leaves are the moving average of
the trained ones, with its warm-up, and training itself is unchanged by it."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from rla_wm.training.config import ConfigError, TrainConfig
from rla_wm.training.distributed import start_run
from rla_wm.training.train import fit

STEPS = 30


def train(tmp_path, ema_decay: float) -> tuple[list[float], float]:
    """One run of a one-weight regression; returns the weight before every step and the weight fit leaves."""
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    inputs = torch.linspace(-1, 1, 64)[:, None]
    data = TensorDataset(inputs, 3.0 * inputs)
    seen: list[float] = []

    def loss_fn(batch: tuple) -> tuple[torch.Tensor, dict[str, float]]:
        x, y = batch
        seen.append(float(model.weight))
        return (model(x) - y).pow(2).mean(), {}

    config = TrainConfig(steps=STEPS, batch_size=16, lr=0.05, warmup_steps=0, ema_decay=ema_decay, log_every=10)
    fit(model, loss_fn, data, config, tmp_path / f"ema_{ema_decay}", "toy", start_run(config))
    return seen, float(model.weight)


def test_the_saved_weights_are_the_warmed_up_moving_average(tmp_path):
    plain_path, plain_final = train(tmp_path, 0.0)
    averaged_path, averaged_final = train(tmp_path, 0.9)
    assert averaged_path == plain_path  # the average does not feed back into training
    trained = plain_path[1:] + [plain_final]  # the weights after each step
    expected = plain_path[0]
    for step, weight in enumerate(trained):
        decay = min(0.9, (1 + step) / (10 + step))
        expected = decay * expected + (1 - decay) * weight
    assert averaged_final == pytest.approx(expected, rel=1e-4, abs=1e-5)
    # It lags the trained weight, which climbs from 0 toward 3.
    assert 0.0 < averaged_final < plain_final - 0.01


def test_ema_decay_must_be_below_one():
    with pytest.raises(ConfigError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)
