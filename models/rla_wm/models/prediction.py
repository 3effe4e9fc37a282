"""One interface over every feature predictor: (s_t, a_{t:t+h}) -> s_hat_{t+h}, and rollouts.

Evaluation and planning take any `Predictor`, so RLA-WM and the baselines are
measured and swapped through the same code. Two optional capabilities serve the planner:
`SharedPredictor` (one observation's features shared by a batch of candidate action
sequences) and `LatentPredictor` (RLA-WM's residual latent z: predict, decode and encode it,
so candidates can be scored without decoding them).
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


@runtime_checkable
class SharedPredictor(Protocol):
    """A predictor that takes one feature map for a whole batch of action sequences."""

    def predict_shared(self, current: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """(1 or B, N, C) features and (B, h, A) actions -> (B, N, C); `predict` to float rounding."""


@runtime_checkable
class LatentPredictor(Protocol):
    """A predictor through a residual latent: s_hat = decode(predict_latent(s, a), s)."""

    def predict_latent(self, current: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """(1 or B, N, C) features and (B, h, A) actions -> (B, K, D) predicted z."""

    def decode(self, z: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        """(B, K, D) z from (1 or B, N, C) features -> (B, N, C) features."""

    def encode(self, current: torch.Tensor, future: torch.Tensor) -> torch.Tensor:
        """The z of the change current -> future; either may be one map broadcast to the other's batch."""


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

    @property
    def max_horizon(self) -> int:
        return self.model.config.max_horizon

    @torch.no_grad()
    def predict_shared(self, current: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """One feature map (1, N, C) may serve B action sequences (RegressionModel.forward)."""
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

    # -- planning (SharedPredictor, LatentPredictor): the same random stream as predict ---------
    @property
    def max_horizon(self) -> int:
        return self.world_model.config.max_horizon

    def _stream(self, device: torch.device) -> torch.Generator | None:
        if self.seed is not None and self._generator is None:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
        return self._generator

    @torch.no_grad()
    def predict_latent(self, current: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        generator = self._stream(current.device)
        return self.world_model.sample(current, actions, steps=self.steps, generator=generator)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(z, current)

    @torch.no_grad()
    def encode(self, current: torch.Tensor, future: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.encode(current, future)

    @torch.no_grad()
    def predict_shared(self, current: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.decode(self.predict_latent(current, actions), current)


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
