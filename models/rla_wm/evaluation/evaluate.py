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
from typing import TypedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from rla_wm.data.datasets import FeatureCache
from rla_wm.models.policy import Policy
from rla_wm.models.prediction import Predictor, RLAWMPredictor, rollout
from rla_wm.models.rla import RLAAutoencoder


@dataclass(frozen=True)
class Windows:
    """Evaluation windows: start features, action chunks and the true features after each chunk."""

    start: torch.Tensor  # (W, N, C)
    actions: torch.Tensor  # (W, M, h, A)
    truth: torch.Tensor  # (W, M, N, C)
    horizon: int


def collect_windows(
    cache: FeatureCache, episodes: list[int], horizon: int, chunks: int, max_windows: int, seed: int = 0
) -> Windows:
    span = horizon * chunks
    candidates = [(episode, t) for episode in episodes for t in range(0, cache.episode_length(episode) - span)]
    if not candidates:
        lengths = {e: cache.episode_length(e) for e in episodes}
        raise ValueError(f"no held-out episode is longer than {span} frames ({chunks} chunks of {horizon}): {lengths}")
    rng = np.random.default_rng(seed)
    chosen = [
        candidates[i] for i in sorted(rng.choice(len(candidates), min(max_windows, len(candidates)), replace=False))
    ]
    start, actions, truth = [], [], []
    for episode, t in chosen:
        episode_actions = cache.actions(episode)
        start.append(cache.features(episode, t))
        actions.append(episode_actions[t : t + span].reshape(chunks, horizon, -1))
        truth.append(np.stack([cache.features(episode, t + k * horizon) for k in range(1, chunks + 1)]))
    as_tensor = lambda items: torch.from_numpy(np.stack(items)).float()  # noqa: E731
    return Windows(as_tensor(start), as_tensor(actions), as_tensor(truth), horizon)


def feature_errors(predicted: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """Mean absolute token error and mean cosine distance (1 - cos) over tokens."""
    l1 = (predicted - truth).abs().mean()
    cosine = 1 - F.cosine_similarity(predicted, truth, dim=-1).mean()
    return {"l1": float(l1), "cosine": float(cosine)}


def evaluate_predictors(
    predictors: list[Predictor], windows: Windows, batch_size: int = 16, samples: int = 1
) -> dict[str, dict[int, dict[str, float]]]:
    """{predictor name: {horizon in frames: {"l1", "cosine"}}}.

    A sampling model (RLA-WM) is scored on one sample per window; with `samples` > 1 also on the mean of
    that many samples (row "<name> mean of N"). One sample of a model of a spread of futures is farther
    from the truth, in L1, than the spread's middle, which a regression predicts; the mean shows how much
    of a gap to a regression is that and not error.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")

    def predict_all(predictor: Predictor) -> torch.Tensor:
        outputs = [
            rollout(predictor, windows.start[i : i + batch_size], windows.actions[i : i + batch_size])
            for i in range(0, len(windows.start), batch_size)
        ]
        return torch.cat(outputs)

    def errors(predicted: torch.Tensor) -> dict[int, dict[str, float]]:
        return {
            (k + 1) * windows.horizon: feature_errors(predicted[:, k], windows.truth[:, k])
            for k in range(windows.truth.shape[1])
        }

    results: dict[str, dict[int, dict[str, float]]] = {}
    for predictor in predictors:
        if not isinstance(predictor, RLAWMPredictor):
            results[predictor.name] = errors(predict_all(predictor))
            continue
        seed = predictor.seed if predictor.seed is not None else 0
        draws = []
        for draw in range(samples):
            predictor.reseed(seed + draw)
            draws.append(predict_all(predictor))
        predictor.reseed(seed)
        results[predictor.name] = errors(draws[0])
        if samples > 1:
            results[f"{predictor.name} mean of {samples}"] = errors(torch.stack(draws).mean(dim=0))
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


def markdown_table(
    results: dict[str, dict[int, dict[str, float]]],
    costs: dict[str, dict[str, float]],
    reconstruction: dict[str, float] | None,
) -> str:
    horizons = sorted(next(iter(results.values())))
    header = (
        "| model | "
        + " | ".join(f"L1 @{h}" for h in horizons)
        + " | "
        + " | ".join(f"cos-dist @{h}" for h in horizons)
        + " | ms / pred | GFLOPs / pred |"
    )
    lines = [header, "|" + "---|" * (2 * len(horizons) + 3)]
    for name, by_horizon in results.items():
        l1 = " | ".join(f"{by_horizon[h]['l1']:.4f}" for h in horizons)
        cosine = " | ".join(f"{by_horizon[h]['cosine']:.4f}" for h in horizons)
        cost = costs.get(name, {})
        lines.append(
            f"| {name} | {l1} | {cosine} | {cost.get('ms', float('nan')):.1f} | "
            f"{cost.get('gflops', float('nan')):.3f} |"
        )
    if reconstruction is not None:
        lines.append(
            f"\nRLA autoencoder reconstruction at h={horizons[0]}: L1 {reconstruction['l1']:.4f}, "
            f"cosine distance {reconstruction['cosine']:.4f}"
        )
    return "\n".join(lines)


def save_report(out: Path, results: dict, costs: dict, reconstruction: dict | None, meta: dict) -> str:
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(results, costs, reconstruction)
    (out / "results.json").write_text(
        json.dumps(
            {
                "results": {name: {str(h): v for h, v in by_h.items()} for name, by_h in results.items()},
                "costs": costs,
                "reconstruction": reconstruction,
                **meta,
            },
            indent=2,
        )
    )
    (out / "results.md").write_text(table + "\n")
    return table


def plot_predictions(out: Path, predictors: list[Predictor], windows: Windows, grid: tuple[int, int]) -> Path:
    """Feature PCA images of the truth and of each model's rollout for one window, per horizon."""
    from rla_wm.evaluation.visualize import _pyplot, feature_pca_rgb

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


# --------------------------------------------------------------------------- world action model (policy)


@dataclass(frozen=True)
class PolicyWindows:
    """Held-out labelled windows: s_t, the autoencoder's z(s_t, s_{t+H}), the measured state, the recorded chunk."""

    current: torch.Tensor  # (W, N, C)
    z: torch.Tensor  # (W, K, D)
    state: torch.Tensor  # (W, S)
    actions: torch.Tensor  # (W, T, A)
    chunk_length: int
    rla_horizon: int
    scene: torch.Tensor | None = None  # (W, E) recorded observation.environment_state, where the data has it


def collect_policy_windows(
    cache: FeatureCache,
    episodes: list[int],
    chunk_length: int,
    rla_horizon: int,
    targets: np.ndarray,
    max_windows: int,
    seed: int = 0,
) -> PolicyWindows:
    """Up to `max_windows` windows drawn without replacement (seeded) from the given labelled episodes.

    `targets`: the cache's `rla_targets` for H = rla_horizon.
    """
    from rla_wm.data.policy_data import PolicyWindowDataset

    dataset = PolicyWindowDataset(
        cache, episodes, chunk_length, rla_horizon, labelled=True, targets=targets, scenes=cache.has_scenes
    )
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(dataset), min(max_windows, len(dataset)), replace=False))
    items = [dataset[int(i)] for i in chosen]
    stack = lambda k: torch.stack([item[k] for item in items]).float()  # noqa: E731
    scene = stack(5) if cache.has_scenes else None
    return PolicyWindows(stack(0), stack(1), stack(2), stack(3), chunk_length, rla_horizon, scene)


class ChunkErrors(TypedDict):
    """Errors of action chunks against the recorded ones, in the action's units."""

    action_l1: float
    action_mse: float
    action_l1_per_step: list[float]


class _PolicyMetricsRequired(ChunkErrors):
    no_state_action_l1: float
    no_state_action_mse: float
    no_state_state_l1: float
    rla_cosine: float
    rla_mse: float
    rla_mse_mean_z: float
    rla_cosine_mean_z: float
    rla_cosine_centred: float
    windows: int


class PolicyMetrics(_PolicyMetricsRequired, total=False):
    """What `evaluate_policy` measures; `checkpoint` is added by the caller that names the policy.
    `scene_l1` (the scene head's error per scene variable, data units) and `scene_l1_constant` (the
    windows' mean guessed every time: the floor to beat), only for a policy with a scene head."""

    checkpoint: str
    scene_l1: list[float]
    scene_l1_constant: list[float]


def _chunk_errors(predicted: torch.Tensor, truth: torch.Tensor) -> ChunkErrors:
    error = predicted - truth
    return {
        "action_l1": float(error.abs().mean()),
        "action_mse": float(error.pow(2).mean()),
        "action_l1_per_step": [float(v) for v in error.abs().mean(dim=(0, 2))],
    }


def hold_baseline(windows: PolicyWindows) -> ChunkErrors:
    """Errors of the chunk that stays at the measured state: the floor any policy must beat."""
    hold = windows.state[:, None].expand_as(windows.actions)
    return _chunk_errors(hold, windows.actions)


def evaluate_policy(policy: Policy, windows: PolicyWindows, batch_size: int = 64) -> tuple[PolicyMetrics, torch.Tensor]:
    """Offline metrics of a world action model on held-out windows, and its chunks (W, T, A).

    Action errors are in the action's units (pixels for Push-T), on the clipped chunk the
    robot would get, with the measured state and with the state hidden ("no_state_*",
    the missing-state token). RLA cosine: between the predicted and the autoencoder's z,
    flattened, averaged over windows; "rla_cosine_mean_z" is what the constant mean z of
    these windows would score, the reference the head has to beat, and "rla_cosine_centred"
    compares both after subtracting that mean (0 for a head that only learned the mean).
    """
    config = policy.config
    if (config.chunk_length, config.rla_horizon) != (windows.chunk_length, windows.rla_horizon):
        raise ValueError(
            f"windows are for chunk {windows.chunk_length} / rla horizon {windows.rla_horizon}, the "
            f"policy predicts {config.chunk_length} / {config.rla_horizon}"
        )
    chunks, blind_chunks, blind_states, predicted_z, true_z, scenes = [], [], [], [], [], []
    read_scene = policy.scene_out is not None and windows.scene is not None
    with torch.no_grad():
        for i in range(0, len(windows.current), batch_size):
            current, state = windows.current[i : i + batch_size], windows.state[i : i + batch_size]
            if read_scene:
                scenes.append(policy.estimate_scene(current, state))
            output = policy.predict(current, state)
            blind = policy.predict(current, None)
            chunks.append(policy.clip_actions(output.actions))
            blind_chunks.append(policy.clip_actions(blind.actions))
            blind_states.append(blind.state)
            predicted_z.append(output.rla.flatten(1))
            true_z.append(windows.z[i : i + batch_size].flatten(1) / config.latent_scale)
    chunk, blind_chunk = torch.cat(chunks), torch.cat(blind_chunks)
    predicted, truth = torch.cat(predicted_z), torch.cat(true_z)
    no_state = _chunk_errors(blind_chunk, windows.actions)
    mean_z = truth.mean(dim=0, keepdim=True)
    metrics: PolicyMetrics = {
        **_chunk_errors(chunk, windows.actions),
        "no_state_action_l1": no_state["action_l1"],
        "no_state_action_mse": no_state["action_mse"],
        "no_state_state_l1": float((torch.cat(blind_states) - windows.state).abs().mean()),
        "rla_cosine": float(F.cosine_similarity(predicted, truth, dim=1).mean()),
        "rla_mse": float((predicted - truth).pow(2).mean()),
        "rla_mse_mean_z": float((mean_z - truth).pow(2).mean()),
        "rla_cosine_mean_z": float(F.cosine_similarity(mean_z.expand_as(truth), truth, dim=1).mean()),
        # About the mean: does the head predict how this window's z differs from the average one?
        "rla_cosine_centred": float(F.cosine_similarity(predicted - mean_z, truth - mean_z, dim=1).mean()),
        "windows": len(windows.current),
    }
    if read_scene:
        assert windows.scene is not None
        metrics["scene_l1"] = [float(v) for v in (torch.cat(scenes) - windows.scene).abs().mean(dim=0)]
        constant = windows.scene.mean(dim=0, keepdim=True)
        metrics["scene_l1_constant"] = [float(v) for v in (constant - windows.scene).abs().mean(dim=0)]
    return metrics, chunk


def policy_table(results: dict[str, PolicyMetrics], hold: ChunkErrors) -> str:
    """Markdown: action errors (action units), the same without a state, RLA head against the mean z."""
    header = (
        "| policy | action L1 | action MSE | L1 first point | L1 last point | L1 no state | state est. L1 "
        "| RLA cos | RLA cos (mean z) | RLA cos centred | RLA MSE | RLA MSE (mean z) |"
    )
    lines = [header, "|" + "---|" * 12]
    for name, m in results.items():
        steps = m["action_l1_per_step"]
        lines.append(
            f"| {name} | {m['action_l1']:.2f} | {m['action_mse']:.1f} | {steps[0]:.2f} | {steps[-1]:.2f} | "
            f"{m['no_state_action_l1']:.2f} | {m['no_state_state_l1']:.2f} | {m['rla_cosine']:.3f} | "
            f"{m['rla_cosine_mean_z']:.3f} | {m['rla_cosine_centred']:.3f} | {m['rla_mse']:.3f} | "
            f"{m['rla_mse_mean_z']:.3f} |"
        )
    steps = hold["action_l1_per_step"]
    lines.append(
        f"| hold (state repeated) | {hold['action_l1']:.2f} | {hold['action_mse']:.1f} | {steps[0]:.2f} | "
        f"{steps[-1]:.2f} |" + " - |" * 7
    )
    return "\n".join(lines)


def plot_policy_chunks(path: Path, windows: PolicyWindows, chunks: dict[str, torch.Tensor], count: int = 4) -> Path:
    """Predicted vs recorded chunks of `count` windows spread over the set, one panel per window and joint."""
    from rla_wm.evaluation.visualize import _pyplot

    plt = _pyplot()
    count = min(count, len(windows.current))
    # Windows are in episode order: spread the picks so they are not four views of one stroke.
    picks = np.linspace(0, len(windows.current) - 1, count).round().astype(int)
    dims = windows.actions.shape[-1]
    figure, axes = plt.subplots(count, dims, figsize=(3.2 * dims, 2.2 * count), squeeze=False)
    steps = np.arange(windows.chunk_length + 1)  # step 0 is the measured state
    for row, window in enumerate(picks):
        state = windows.state[window].numpy()
        for dim in range(dims):
            axis = axes[row][dim]
            truth = np.concatenate([[state[dim]], windows.actions[window, :, dim].numpy()])
            axis.plot(steps, truth, "k-o", markersize=3, label="recorded")
            for name, chunk in chunks.items():
                axis.plot(
                    steps, np.concatenate([[state[dim]], chunk[window, :, dim].numpy()]), "-x", markersize=3, label=name
                )
            axis.grid(True, alpha=0.3)
            if row == 0:
                axis.set_title(f"joint {dim}")
            if row == count - 1:
                axis.set_xlabel("chunk step (0 = state)")
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
