"""Training of the RLA autoencoder, RLA-WM and the regression baseline on cached features.

One loop for all three, run through Hugging Face accelerate: the same command
trains on this CPU or, under `accelerate launch` / `torchrun`, with DDP on
several GPUs. Each run writes <out>/checkpoint (safetensors + config),
<out>/metrics.jsonl and <out>/loss.png.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from rla_wm.baselines import RegressionConfig, RegressionPredictor
from rla_wm.data import ChunkDataset, FeatureCache, FramePairDataset, split_episodes
from rla_wm.experiment import Experiment, TrainConfig, build_dataclass
from rla_wm.features import EncoderConfig, FeatureEncoder
from rla_wm.rla import RLAAutoencoder, RLAConfig
from rla_wm.visualize import plot_loss_curves
from rla_wm.world_model import RLAWorldModel, WorldModelConfig

LossFn = Callable[[torch.nn.Module, tuple], tuple[torch.Tensor, dict[str, float]]]


def open_caches(experiment: Experiment, include_action_free: bool) -> list[FeatureCache]:
    """Feature caches of the experiment's datasets (built on first use; the ViT runs once per frame)."""
    encoder = FeatureEncoder(build_dataclass(EncoderConfig, experiment.encoder, "encoder"))
    refs = [experiment.data] + (list(experiment.action_free) if include_action_free else [])
    return [
        FeatureCache.load_or_build(experiment.resolve(ref.dataset_root), ref.repo_id, encoder,
                                   experiment.resolve(experiment.cache_root))
        for ref in refs
    ]


def train_split(experiment: Experiment, cache: FeatureCache) -> tuple[list[int], list[int]]:
    return split_episodes(cache.episodes, experiment.held_out_fraction, experiment.split_seed)


def feature_shape(cache: FeatureCache) -> dict[str, object]:
    tokens, channels = cache.token_shape
    return {"token_dim": channels, "num_tokens": tokens, "encoder_id": cache.encoder_id}


def action_range(cache: FeatureCache, episodes: list[int]) -> dict[str, tuple[float, ...]]:
    """Per-dimension min/max of the training actions: the action encoder's normalisation."""
    import numpy as np

    actions = np.concatenate([cache.actions(e) for e in episodes])
    low, high = actions.min(axis=0), actions.max(axis=0)
    span = np.maximum(high - low, 1e-6)
    return {"action_low": tuple(float(v) for v in low), "action_high": tuple(float(v) for v in low + span)}


def fit(model: torch.nn.Module, dataset: Dataset, loss_fn: LossFn, config: TrainConfig, out: Path,
        name: str) -> list[dict]:
    """AdamW with linear warm-up and cosine decay, gradient clipping, logging; returns the metric log."""
    from accelerate import Accelerator

    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    torch.manual_seed(config.seed)
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, drop_last=len(dataset) > config.batch_size,
                        num_workers=config.num_workers, generator=torch.Generator().manual_seed(config.seed))
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=config.weight_decay)

    def schedule(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, schedule)
    model, optimiser, loader, scheduler = accelerator.prepare(model, optimiser, loader, scheduler)
    out.mkdir(parents=True, exist_ok=True)
    log: list[dict] = []
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    progress = tqdm(range(config.steps), desc=f"train {name}", disable=not accelerator.is_main_process)
    started = time.perf_counter()
    model.train()
    with open(out / "metrics.jsonl", "w") as metrics_file:
        for step in progress:
            batch = next(batches)
            with accelerator.autocast():
                loss, metrics = loss_fn(model, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{name}: loss became {loss.item()} at step {step}")
            optimiser.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            if config.grad_clip > 0:
                accelerator.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimiser.step()
            scheduler.step()
            if step % config.log_every == 0 or step == config.steps - 1:
                entry = {"step": step, "loss": float(loss.detach()), "lr": scheduler.get_last_lr()[0],
                         "seconds": time.perf_counter() - started, **metrics}
                log.append(entry)
                metrics_file.write(json.dumps(entry) + "\n")
                metrics_file.flush()
                progress.set_postfix(loss=f"{entry['loss']:.4f}")
    model.eval()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        plot_loss_curves({name: log}, out / "loss.png")
    return log


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def train_autoencoder(experiment: Experiment, out: Path) -> Path:
    """Train the RLA autoencoder on frame pairs of every dataset, action-free ones included."""
    config = experiment.train.get("rla", TrainConfig())
    caches = open_caches(experiment, include_action_free=True)
    rla_config = build_dataclass(RLAConfig, {**experiment.rla, **feature_shape(caches[0])}, "rla")
    parts = []
    for index, cache in enumerate(caches):
        # Held-out episodes of the labelled dataset stay out of every training set.
        episodes = train_split(experiment, cache)[0] if index == 0 else cache.episodes
        parts.append(FramePairDataset(cache, episodes, config.min_gap, config.max_gap, skip_short=True))
    dataset = torch.utils.data.ConcatDataset(parts)
    rla_config = dataclasses.replace(rla_config, residual_scale=residual_scale_of(dataset))
    model = RLAAutoencoder(rla_config)

    def loss_fn(model: torch.nn.Module, batch: tuple) -> tuple[torch.Tensor, dict[str, float]]:
        current, future, _gap = batch
        return _unwrap(model).loss(current.float(), future.float())

    log = fit(model, dataset, loss_fn, config, out, "rla")
    return _unwrap(model).save(out / "checkpoint", extra={"final": log[-1], "train": vars_of(config)})


def std_over_samples(dataset: Dataset, value_of: Callable[[tuple], torch.Tensor], samples: int = 256) -> float:
    """Standard deviation of value_of(batch) over about `samples` random items (seeded)."""
    loader = DataLoader(dataset, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    values, seen = [], 0
    with torch.no_grad():
        for batch in loader:
            values.append(value_of(batch).flatten())
            seen += batch[0].shape[0]
            if seen >= samples:
                break
    return float(torch.cat(values).std().clamp_min(1e-6))


def residual_scale_of(dataset: Dataset) -> float:
    """Spread of s_{t+h} - s_t over training pairs: the autoencoder's input scale."""
    return std_over_samples(dataset, lambda batch: batch[1].float() - batch[0].float())


def latent_scale_of(autoencoder: RLAAutoencoder, dataset: Dataset) -> float:
    """Spread of z over training chunks: the world model's target scale."""
    return std_over_samples(dataset, lambda batch: autoencoder.encode(batch[0].float(), batch[2].float()))


def train_world_model(experiment: Experiment, rla_checkpoint: str | Path, out: Path) -> Path:
    """Train RLA-WM on (s_t, a_{t:t+h}, s_{t+h}) with the autoencoder frozen."""
    config = experiment.train.get("world_model", TrainConfig())
    cache = open_caches(experiment, include_action_free=False)[0]
    autoencoder, _ = RLAAutoencoder.load(rla_checkpoint)
    autoencoder.requires_grad_(False)
    if autoencoder.config.encoder_id != cache.encoder_id:
        raise ValueError(f"autoencoder was trained on {autoencoder.config.encoder_id!r}, the data is "
                         f"{cache.encoder_id!r}")
    episodes = train_split(experiment, cache)[0]
    dataset = ChunkDataset(cache, episodes, config.horizon, skip_short=True)
    latent_scale = latent_scale_of(autoencoder, dataset)
    wm_config = build_dataclass(WorldModelConfig, {
        **experiment.world_model, **feature_shape(cache), **action_range(cache, episodes),
        "latent_tokens": autoencoder.config.latent_tokens, "latent_dim": autoencoder.config.latent_dim,
        "action_dim": cache.action_dim, "latent_scale": latent_scale,
    }, "world_model")
    if config.horizon > wm_config.max_horizon:
        raise ValueError(f"train horizon {config.horizon} exceeds world_model.max_horizon {wm_config.max_horizon}")
    model = RLAWorldModel(wm_config)

    def loss_fn(model: torch.nn.Module, batch: tuple) -> tuple[torch.Tensor, dict[str, float]]:
        current, actions, future = (part.float() for part in batch)
        with torch.no_grad():
            z = autoencoder.to(current.device).encode(current, future)
        return _unwrap(model).loss(current, actions, z)

    log = fit(model, dataset, loss_fn, config, out, "world_model")
    return _unwrap(model).save(out / "checkpoint", extra={"final": log[-1], "train": vars_of(config),
                                                          "rla_checkpoint": str(rla_checkpoint)})


def train_regression(experiment: Experiment, out: Path) -> Path:
    """Train the DINO-WM-style regression baseline on the same chunks as RLA-WM."""
    config = experiment.train.get("regression", TrainConfig())
    cache = open_caches(experiment, include_action_free=False)[0]
    episodes = train_split(experiment, cache)[0]
    dataset = ChunkDataset(cache, episodes, config.horizon, skip_short=True)
    reg_config = build_dataclass(RegressionConfig, {**experiment.regression, **feature_shape(cache),
                                                    **action_range(cache, episodes),
                                                    "action_dim": cache.action_dim}, "regression")
    model = RegressionPredictor(reg_config)

    def loss_fn(model: torch.nn.Module, batch: tuple) -> tuple[torch.Tensor, dict[str, float]]:
        current, actions, future = (part.float() for part in batch)
        return _unwrap(model).loss(current, actions, future)

    log = fit(model, dataset, loss_fn, config, out, "regression")
    return _unwrap(model).save(out / "checkpoint", extra={"final": log[-1], "train": vars_of(config)})


def vars_of(config: TrainConfig) -> dict:
    return dataclasses.asdict(config)
