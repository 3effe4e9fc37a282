"""Held-out evaluation: feature-prediction error at several horizons for every predictor.

For windows of M chunks of h frames in held-out episodes, each predictor rolls
out from the true s_t with the recorded actions; predictions after k chunks are
compared with the true features at t + k*h (DINO-token L1 and cosine distance).
Also: the autoencoder's reconstruction error, and per-prediction wall time and
FLOPs of each model at batch 1.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from rla_wm.data import FeatureCache
from rla_wm.prediction import Predictor, RLAWMPredictor, rollout
from rla_wm.rla import RLAAutoencoder


@dataclass(frozen=True)
class Windows:
    """Evaluation windows: start features, action chunks and the true features after each chunk."""

    start: torch.Tensor  # (W, N, C)
    actions: torch.Tensor  # (W, M, h, A)
    truth: torch.Tensor  # (W, M, N, C)
    horizon: int


def collect_windows(cache: FeatureCache, episodes: list[int], horizon: int, chunks: int, max_windows: int,
                    seed: int = 0) -> Windows:
    span = horizon * chunks
    candidates = [(episode, t) for episode in episodes
                  for t in range(0, cache.episode_length(episode) - span)]
    if not candidates:
        lengths = {e: cache.episode_length(e) for e in episodes}
        raise ValueError(f"no held-out episode is longer than {span} frames ({chunks} chunks of {horizon}): {lengths}")
    rng = np.random.default_rng(seed)
    chosen = [candidates[i] for i in sorted(rng.choice(len(candidates), min(max_windows, len(candidates)),
                                                       replace=False))]
    start, actions, truth = [], [], []
    for episode, t in chosen:
        episode_actions = cache.actions(episode)
        start.append(cache.features(episode, t))
        actions.append(episode_actions[t: t + span].reshape(chunks, horizon, -1))
        truth.append(np.stack([cache.features(episode, t + k * horizon) for k in range(1, chunks + 1)]))
    as_tensor = lambda items: torch.from_numpy(np.stack(items)).float()  # noqa: E731
    return Windows(as_tensor(start), as_tensor(actions), as_tensor(truth), horizon)


def feature_errors(predicted: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """Mean absolute token error and mean cosine distance (1 - cos) over tokens."""
    l1 = (predicted - truth).abs().mean()
    cosine = 1 - F.cosine_similarity(predicted, truth, dim=-1).mean()
    return {"l1": float(l1), "cosine": float(cosine)}


def evaluate_predictors(predictors: list[Predictor], windows: Windows, batch_size: int = 16
                        ) -> dict[str, dict[int, dict[str, float]]]:
    """{predictor name: {horizon in frames: {"l1", "cosine"}}}."""
    results: dict[str, dict[int, dict[str, float]]] = {}
    for predictor in predictors:
        if isinstance(predictor, RLAWMPredictor):
            predictor.reseed()
        outputs = [rollout(predictor, windows.start[i: i + batch_size], windows.actions[i: i + batch_size])
                   for i in range(0, len(windows.start), batch_size)]
        predicted = torch.cat(outputs)
        results[predictor.name] = {
            (k + 1) * windows.horizon: feature_errors(predicted[:, k], windows.truth[:, k])
            for k in range(windows.truth.shape[1])
        }
    return results


def reconstruction_errors(autoencoder: RLAAutoencoder, windows: Windows) -> dict[str, float]:
    """How well Dec(Enc(s_t, s_{t+h}), s_t) reproduces s_{t+h}: the ceiling for RLA-WM."""
    with torch.no_grad():
        reconstructed, _ = autoencoder(windows.start, windows.truth[:, 0])
    return feature_errors(reconstructed, windows.truth[:, 0])


def cost_per_prediction(predictor: Predictor, windows: Windows, repeats: int = 5) -> dict[str, float]:
    """Wall time (median, batch 1) and FLOPs of one prediction of h frames."""
    current, actions = windows.start[:1], windows.actions[:1, 0]
    with FlopCounterMode(display=False) as counter:
        predictor.predict(current, actions)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        predictor.predict(current, actions)
        times.append(time.perf_counter() - started)
    return {"ms": float(np.median(times) * 1e3), "gflops": counter.get_total_flops() / 1e9}


def markdown_table(results: dict[str, dict[int, dict[str, float]]], costs: dict[str, dict[str, float]],
                   reconstruction: dict[str, float] | None) -> str:
    horizons = sorted(next(iter(results.values())))
    header = "| model | " + " | ".join(f"L1 @{h}" for h in horizons) + " | " + \
        " | ".join(f"cos-dist @{h}" for h in horizons) + " | ms / pred | GFLOPs / pred |"
    lines = [header, "|" + "---|" * (2 * len(horizons) + 3)]
    for name, by_horizon in results.items():
        l1 = " | ".join(f"{by_horizon[h]['l1']:.4f}" for h in horizons)
        cosine = " | ".join(f"{by_horizon[h]['cosine']:.4f}" for h in horizons)
        cost = costs.get(name, {})
        lines.append(f"| {name} | {l1} | {cosine} | {cost.get('ms', float('nan')):.1f} | "
                     f"{cost.get('gflops', float('nan')):.3f} |")
    if reconstruction is not None:
        lines.append(f"\nRLA autoencoder reconstruction at h={horizons[0]}: L1 {reconstruction['l1']:.4f}, "
                     f"cosine distance {reconstruction['cosine']:.4f}")
    return "\n".join(lines)


def save_report(out: Path, results: dict, costs: dict, reconstruction: dict | None, meta: dict) -> str:
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(results, costs, reconstruction)
    (out / "results.json").write_text(json.dumps(
        {"results": {name: {str(h): v for h, v in by_h.items()} for name, by_h in results.items()},
         "costs": costs, "reconstruction": reconstruction, **meta}, indent=2))
    (out / "results.md").write_text(table + "\n")
    return table


def plot_predictions(out: Path, predictors: list[Predictor], windows: Windows, grid: tuple[int, int]) -> Path:
    """Feature PCA images of the truth and of each model's rollout for one window, per horizon."""
    from rla_wm.visualize import _pyplot, feature_pca_rgb

    plt = _pyplot()
    rows = {"truth": [windows.truth[0, k].numpy() for k in range(windows.truth.shape[1])]}
    for predictor in predictors:
        if isinstance(predictor, RLAWMPredictor):
            predictor.reseed()
        predicted = rollout(predictor, windows.start[:1], windows.actions[:1])[0]
        rows[predictor.name] = [predicted[k].numpy() for k in range(predicted.shape[0])]
    height, width = grid
    # One PCA basis for every map so colours compare across cells.
    stacked = np.concatenate([m for maps in rows.values() for m in maps])
    images = feature_pca_rgb(stacked, height * len(stacked) // (height * width), width)
    images = images.reshape(-1, height, width, 3)
    columns = windows.truth.shape[1]
    figure, axes = plt.subplots(len(rows), columns, figsize=(2.2 * columns, 2.2 * len(rows)), squeeze=False)
    for index, (name, _maps) in enumerate(rows.items()):
        for k in range(columns):
            axis = axes[index][k]
            axis.imshow(images[index * columns + k], interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if index == 0:
                axis.set_title(f"+{(k + 1) * windows.horizon} frames")
            if k == 0:
                axis.set_ylabel(name)
    figure.tight_layout()
    path = out / "predictions_pca.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
