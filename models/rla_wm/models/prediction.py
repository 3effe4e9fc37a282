"""One interface over every feature predictor: (s_t, a_{t:t+h}) -> s_hat_{t+h}, and rollouts.

Evaluation and planning take any `Predictor`, so RLA-WM and the baselines are
measured and swapped through the same code.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from rla_wm.models.regression import RegressionModel
from rla_wm.models.rla import RLAAutoencoder
from rla_wm.models.world_model import RLAWorldModel


class Predictor(Protocol):
    name: str

    def predict(self, current: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """(B, N, C) features and (B, h, A) actions -> (B, N, C) predicted features h steps later."""


@runtime_checkable
class Reseedable(Protocol):
    """A predictor that samples (RLA-WM's flow noise): `reseed` restarts its random stream.

    Not part of `Predictor`: deterministic predictors (copy-last, regression, test doubles)
    have nothing to reseed.
    """

    def reseed(self, seed: int | None = None) -> None:
        """Restart the random stream, from `seed` if given, else from the current seed."""


class CopyLastPredictor:
    name = "copy-last"

    def predict(self, current: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return current.clone()


class RegressionPredictor:
    name = "regression"

    def __init__(self, model: RegressionModel) -> None:
        self.model = model.eval()

    @torch.no_grad()
    def predict(self, current: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.model(current, actions)


class RLAWMPredictor:
    """RLA-WM sampling + RLA decoding; seeded so repeated predictions are reproducible."""

    name = "rla-wm"

    def __init__(
        self, world_model: RLAWorldModel, autoencoder: RLAAutoencoder, steps: int = 30, seed: int | None = 0
    ) -> None:
        self.world_model = world_model.eval()
        self.autoencoder = autoencoder.eval()
        self.steps = steps
        self.seed = seed
        self._generator: torch.Generator | None = None

    def reseed(self, seed: int | None = None) -> None:
        self._generator = None
        if seed is not None:
            self.seed = seed

    @torch.no_grad()
    def predict(self, current: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        if self.seed is not None and self._generator is None:
            self._generator = torch.Generator(device=current.device).manual_seed(self.seed)
        return self.world_model.predict(self.autoencoder, current, actions, steps=self.steps, generator=self._generator)


@torch.no_grad()
def rollout(predictor: Predictor, start: torch.Tensor, action_chunks: torch.Tensor) -> torch.Tensor:
    """Autoregressive multi-chunk prediction on predicted features.

    start: (1 or B, N, C); action_chunks: (B, M, h, A), e.g. a planner's B candidate
    sequences of M chunks from one observed state. Returns (B, M, N, C): the
    predicted features after each chunk.
    """
    if action_chunks.ndim != 4:
        raise ValueError(f"action_chunks must be (B, M, h, A), got {tuple(action_chunks.shape)}")
    batch, chunks = action_chunks.shape[:2]
    if start.ndim != 3 or start.shape[0] not in (1, batch):
        raise ValueError(f"start must be (1 or {batch}, N, C), got {tuple(start.shape)}")
    current = start.expand(batch, -1, -1)
    predictions = []
    for index in range(chunks):
        current = predictor.predict(current, action_chunks[:, index])
        predictions.append(current)
    return torch.stack(predictions, dim=1)
