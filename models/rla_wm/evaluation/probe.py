"""Probes: how much of the simulator's state can be read from encoder features.

Linear: ridge regression from the flattened patch grid (N tokens x C channels) to the logged
state, fitted on some episodes and scored on others. The ridge strength is chosen on
a validation split of the training episodes, never on the test episodes. A flattened grid
gives every patch its own weights, so a linear read-out needs training frames with the agent
and block at every place.

Attentive: the standard frozen-feature probe of masked-image-modelling work (a learned query
attends over the patch tokens, then a small MLP; e.g. V-JEPA's attentive probe). Its weights are
shared across patches, so it reads "where is the block and how is it turned" wherever the block
is, which is what a policy on these features has to do. Trained with Adam on the training
episodes, scored on the held-out ones.

Errors are mean absolute errors per state variable, next to a constant predictor (the training
mean) so a number can be read against "knows nothing".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rla_wm.envs.pusht.frames import STATE_NAMES, StateFrames

RIDGE_STRENGTHS = (1e-1, 1.0, 1e1, 1e2, 1e3, 1e4, 1e5)


@dataclass(frozen=True)
class ProbeResult:
    names: tuple[str, ...]
    probe_error: np.ndarray  # (V,) mean absolute error on the test episodes
    constant_error: np.ndarray  # (V,) same for the training mean
    ridge: float | None  # the chosen ridge strength; None for the attentive probe
    train_frames: int
    test_frames: int

    def table(self) -> str:
        rows = [f"{'variable':<10} {'probe MAE':>10} {'constant MAE':>13}"]
        for name, probe, constant in zip(self.names, self.probe_error, self.constant_error, strict=True):
            rows.append(f"{name:<10} {probe:>10.3f} {constant:>13.3f}")
        fitted = "attentive probe" if self.ridge is None else f"ridge {self.ridge:g}"
        rows.append(f"{fitted}; {self.train_frames} training frames, {self.test_frames} test frames")
        return "\n".join(rows)

    def as_dict(self) -> dict[str, object]:
        return {
            "probe_mae": dict(zip(self.names, self.probe_error.round(4).tolist(), strict=True)),
            "constant_mae": dict(zip(self.names, self.constant_error.round(4).tolist(), strict=True)),
            "ridge": self.ridge,
            "train_frames": self.train_frames,
            "test_frames": self.test_frames,
        }


def spread_subset(episodes: np.ndarray, count: int) -> np.ndarray:
    """`count` episodes spread evenly over `episodes` (not the last ones, which may all be of one kind)."""
    return episodes[np.linspace(0, len(episodes) - 1, count).round().astype(int)]


def encode_tokens(encoder: object, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Patch tokens (N, tokens, channels) float16 from a FeatureEncoder-like callable."""
    chunks = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            tokens = encoder(images[start : start + batch_size])  # type: ignore[operator]
            chunks.append(torch.as_tensor(tokens).cpu().numpy().astype(np.float16))
    return np.concatenate(chunks)


def encode_frames(encoder: object, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Features (N, tokens * channels) float32 from a FeatureEncoder-like callable."""
    tokens = encode_tokens(encoder, images, batch_size)
    return tokens.reshape(len(tokens), -1).astype(np.float32)


def _ridge_fit(features: np.ndarray, targets: np.ndarray, strength: float) -> np.ndarray:
    """Dual-form ridge (cheap when features are wider than there are frames): returns weights (D, V)."""
    gram = features @ features.T
    gram[np.diag_indices_from(gram)] += strength
    return features.T @ np.linalg.solve(gram, targets)


def fit_probe(
    train_features: np.ndarray,
    train_state: np.ndarray,
    train_episodes: np.ndarray,
    test_features: np.ndarray,
    test_state: np.ndarray,
    names: tuple[str, ...] = STATE_NAMES,
    validation_fraction: float = 0.2,
) -> ProbeResult:
    """Standardise with training statistics, pick the ridge strength on held-out training episodes, refit, score."""
    if len(train_features) != len(train_state) or len(test_features) != len(test_state):
        raise ValueError("features and state must have one row per frame")
    mean, std = train_features.mean(0), train_features.std(0)
    # A feature (near-)constant on the training frames must not be blown up by 1/std on the test
    # frames (a background pixel the agent crosses only in a test episode would dominate).
    std = np.maximum(std, 0.1 * std.mean() + 1e-6)
    x_train = ((train_features - mean) / std).astype(np.float64)
    x_test = ((test_features - mean) / std).astype(np.float64)
    y_mean = train_state.mean(0)
    y_train = train_state - y_mean

    episodes = np.unique(train_episodes)
    n_validation = max(1, round(validation_fraction * len(episodes)))
    if len(episodes) <= n_validation:
        raise ValueError(f"need more than {n_validation} training episodes to choose the ridge strength")
    # Every k-th episode, so validation mixes expert and play episodes like the rest.
    validation = np.isin(train_episodes, spread_subset(episodes, n_validation))
    scale = np.abs(y_train).mean(0) + 1e-9  # compare variables in their own units
    best, best_score = RIDGE_STRENGTHS[0], np.inf
    for strength in RIDGE_STRENGTHS:
        weights = _ridge_fit(x_train[~validation], y_train[~validation], strength * x_train.shape[1] / 1000)
        score = float((np.abs(x_train[validation] @ weights - y_train[validation]) / scale).mean())
        if score < best_score:
            best, best_score = strength, score
    weights = _ridge_fit(x_train, y_train, best * x_train.shape[1] / 1000)
    predicted = x_test @ weights + y_mean
    return ProbeResult(
        names=tuple(names),
        probe_error=np.abs(predicted - test_state).mean(0),
        constant_error=np.abs(y_mean - test_state).mean(0),
        ridge=best,
        train_frames=len(x_train),
        test_frames=len(x_test),
    )


class AttentiveProbe(torch.nn.Module):
    """One learned query attends over the (normalised, projected, position-coded) patch tokens; an MLP reads it."""

    def __init__(self, tokens: int, channels: int, outputs: int, width: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.project = torch.nn.Sequential(torch.nn.LayerNorm(channels), torch.nn.Linear(channels, width))
        self.position = torch.nn.Parameter(torch.randn(1, tokens, width) * 0.02)
        self.query = torch.nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.attention = torch.nn.MultiheadAttention(width, heads, batch_first=True)
        self.read = torch.nn.Sequential(
            torch.nn.LayerNorm(width), torch.nn.Linear(width, width), torch.nn.GELU(), torch.nn.Linear(width, outputs)
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        keys = self.project(tokens) + self.position
        pooled, _ = self.attention(self.query.expand(len(tokens), -1, -1), keys, keys, need_weights=False)
        return self.read(pooled[:, 0])


def fit_attentive_probe(
    train_tokens: np.ndarray,
    train_state: np.ndarray,
    test_tokens: np.ndarray,
    test_state: np.ndarray,
    names: tuple[str, ...] = STATE_NAMES,
    steps: int = 2000,
    batch_size: int = 128,
    seed: int = 0,
) -> ProbeResult:
    """Train an AttentiveProbe on (frames, N, C) tokens to the standardised state, score it on the test frames."""
    if train_tokens.ndim != 3 or len(train_tokens) != len(train_state) or len(test_tokens) != len(test_state):
        raise ValueError("tokens must be (frames, N, C) with one state row per frame")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    y_mean, y_std = train_state.mean(0), train_state.std(0) + 1e-6
    targets = torch.from_numpy(((train_state - y_mean) / y_std).astype(np.float32))
    probe = AttentiveProbe(train_tokens.shape[1], train_tokens.shape[2], train_state.shape[1])
    optimiser = torch.optim.AdamW(probe.parameters(), lr=1e-3, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=1e-3, total_steps=steps, pct_start=0.1)
    for _ in range(steps):
        rows = torch.randint(0, len(train_tokens), (batch_size,), generator=generator).numpy()
        loss = torch.nn.functional.smooth_l1_loss(probe(torch.from_numpy(train_tokens[rows]).float()), targets[rows])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
    probe.eval()
    with torch.no_grad():
        predicted = np.concatenate(
            [probe(torch.from_numpy(test_tokens[i : i + 256]).float()).numpy() for i in range(0, len(test_tokens), 256)]
        )
    predicted = predicted * y_std + y_mean
    return ProbeResult(
        names=tuple(names),
        probe_error=np.abs(predicted - test_state).mean(0),
        constant_error=np.abs(y_mean - test_state).mean(0),
        ridge=None,
        train_frames=len(train_tokens),
        test_frames=len(test_tokens),
    )


PROBE_KINDS = ("linear", "attentive")


def probe_encoder(
    encoder: object, frames: StateFrames, test_fraction: float = 0.25, kind: str = "linear"
) -> ProbeResult:
    """Encode `frames`, hold out a spread `test_fraction` of its episodes, fit and score the probe of `kind`."""
    if kind not in PROBE_KINDS:
        raise ValueError(f"probe kind must be one of {PROBE_KINDS}, got {kind!r}")
    episodes = np.unique(frames.episode)
    n_test = max(1, round(test_fraction * len(episodes)))
    if len(episodes) - n_test < 2:
        raise ValueError(f"need at least {n_test + 2} episodes for a probe, got {len(episodes)}")
    test_episodes = spread_subset(episodes, n_test)
    train, test = frames.select(np.setdiff1d(episodes, test_episodes)), frames.select(test_episodes)
    if kind == "attentive":
        return fit_attentive_probe(
            encode_tokens(encoder, train.images), train.state, encode_tokens(encoder, test.images), test.state
        )
    return fit_probe(
        encode_frames(encoder, train.images),
        train.state,
        train.episode,
        encode_frames(encoder, test.images),
        test.state,
    )


def model_image_size(model: str) -> int:
    """The image size a transformers ViT config was built for (its natural resolution)."""
    from transformers import AutoConfig

    from rla_wm.assets import resolve_model_path

    return int(AutoConfig.from_pretrained(resolve_model_path(model)).image_size)
