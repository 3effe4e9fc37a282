"""Training of the RLA autoencoder, RLA-WM, the regression baseline and the world action model.

One loop for all of them, run through Hugging Face accelerate: the same command
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
import warnings
from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from rla_wm.assets import resolve_model_path
from rla_wm.data.datasets import ChunkDataset, FeatureCache, FramePairDataset, split_episodes
from rla_wm.data.policy_data import (
    MixedBatchSampler,
    MixedWindows,
    PolicyWindowDataset,
    checkpoint_digest,
    policy_statistics,
    rla_targets,
)
from rla_wm.evaluation.visualize import plot_loss_curves
from rla_wm.models.encoder import EncoderConfig, FeatureEncoder
from rla_wm.models.policy import Policy, PolicyConfig, PolicyLossWeights
from rla_wm.models.regression import RegressionConfig, RegressionModel
from rla_wm.models.rla import RLAAutoencoder, RLAConfig
from rla_wm.models.world_model import RLAWorldModel, WorldModelConfig
from rla_wm.training.config import ConfigError, Experiment, TrainConfig, build_dataclass

LossFn = Callable[[torch.nn.Module, tuple], tuple[torch.Tensor, dict[str, float]]]
ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)


def open_caches(experiment: Experiment, include_action_free: bool) -> list[FeatureCache]:
    """Feature caches of the experiment's datasets (built on first use; the ViT runs once per frame)."""
    encoder = FeatureEncoder(build_dataclass(EncoderConfig, experiment.encoder, "encoder"))
    refs = [experiment.data] + (list(experiment.action_free) if include_action_free else [])
    return [
        FeatureCache.load_or_build(
            experiment.resolve(ref.dataset_root), ref.repo_id, encoder, experiment.resolve(experiment.cache_root)
        )
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


def fit(
    model: torch.nn.Module,
    dataset: Dataset,
    loss_fn: LossFn,
    config: TrainConfig,
    out: Path,
    name: str,
    batch_sampler: Sampler[list[int]] | None = None,
) -> list[dict]:
    """AdamW with linear warm-up and cosine decay, gradient clipping, logging; returns the metric log.

    `batch_sampler` replaces the shuffled batches of `config.batch_size`, e.g. to fix the
    mix of labelled and action-free samples in every batch.
    """
    from accelerate import Accelerator

    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    torch.manual_seed(config.seed)
    if batch_sampler is not None:
        loader = DataLoader(dataset, batch_sampler=batch_sampler, num_workers=config.num_workers)
    else:
        if not isinstance(dataset, Sized):
            raise TypeError(f"{name}: shuffled batches need a dataset with a length, got {type(dataset).__name__}")
        loader = DataLoader(
            dataset,
            batch_size=config.batch_size,
            shuffle=True,
            drop_last=len(dataset) > config.batch_size,
            num_workers=config.num_workers,
            generator=torch.Generator().manual_seed(config.seed),
        )
    optimiser = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay
    )

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
                entry = {
                    "step": step,
                    "loss": float(loss.detach()),
                    "lr": scheduler.get_last_lr()[0],
                    "seconds": time.perf_counter() - started,
                    **metrics,
                }
                log.append(entry)
                metrics_file.write(json.dumps(entry) + "\n")
                metrics_file.flush()
                progress.set_postfix(loss=f"{entry['loss']:.4f}")
    model.eval()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        plot_loss_curves({name: log}, out / "loss.png")
    return log


def _unwrap(model: torch.nn.Module, kind: type[ModuleT]) -> ModuleT:
    """The `kind` model itself, also when accelerate wrapped it (DDP keeps it as `.module`)."""
    inner = getattr(model, "module", model)
    if not isinstance(inner, kind):
        raise TypeError(f"expected a {kind.__name__}, got {type(inner).__name__}")
    return inner


def train_autoencoder(experiment: Experiment, out: Path) -> Path:
    """Train the RLA autoencoder on frame pairs of every dataset, action-free ones included."""
    config = experiment.train.get("rla", TrainConfig())
    caches = open_caches(experiment, include_action_free=True)
    rla_config = build_dataclass(RLAConfig, {**experiment.rla, **feature_shape(caches[0])}, "rla")
    parts: list[FramePairDataset] = []
    for index, cache in enumerate(caches):
        # Held-out episodes of the labelled dataset stay out of every training set.
        episodes = train_split(experiment, cache)[0] if index == 0 else cache.episodes
        parts.append(FramePairDataset(cache, episodes, config.min_gap, config.max_gap, skip_short=True))
    dataset: torch.utils.data.ConcatDataset[tuple[torch.Tensor, torch.Tensor, int]] = torch.utils.data.ConcatDataset(
        parts
    )
    rla_config = dataclasses.replace(rla_config, residual_scale=residual_scale_of(dataset))
    model = RLAAutoencoder(rla_config)

    def loss_fn(model: torch.nn.Module, batch: tuple) -> tuple[torch.Tensor, dict[str, float]]:
        current, future, _gap = batch
        return _unwrap(model, RLAAutoencoder).loss(current.float(), future.float())

    log = fit(model, dataset, loss_fn, config, out, "rla")
    return _unwrap(model, RLAAutoencoder).save(out / "checkpoint", extra={"final": log[-1], "train": vars_of(config)})


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
        raise ValueError(
            f"autoencoder was trained on {autoencoder.config.encoder_id!r}, the data is {cache.encoder_id!r}"
        )
    episodes = train_split(experiment, cache)[0]
    dataset = ChunkDataset(cache, episodes, config.horizon, skip_short=True)
    latent_scale = latent_scale_of(autoencoder, dataset)
    wm_config = build_dataclass(
        WorldModelConfig,
        {
            **experiment.world_model,
            **feature_shape(cache),
            **action_range(cache, episodes),
            "latent_tokens": autoencoder.config.latent_tokens,
            "latent_dim": autoencoder.config.latent_dim,
            "action_dim": cache.action_dim,
            "latent_scale": latent_scale,
        },
        "world_model",
    )
    if config.horizon > wm_config.max_horizon:
        raise ValueError(f"train horizon {config.horizon} exceeds world_model.max_horizon {wm_config.max_horizon}")
    model = RLAWorldModel(wm_config)

    def loss_fn(model: torch.nn.Module, batch: tuple) -> tuple[torch.Tensor, dict[str, float]]:
        current, actions, future = (part.float() for part in batch)
        with torch.no_grad():
            z = autoencoder.to(current.device).encode(current, future)
        return _unwrap(model, RLAWorldModel).loss(current, actions, z)

    log = fit(model, dataset, loss_fn, config, out, "world_model")
    return _unwrap(model, RLAWorldModel).save(
        out / "checkpoint", extra={"final": log[-1], "train": vars_of(config), "rla_checkpoint": str(rla_checkpoint)}
    )


def train_regression(experiment: Experiment, out: Path) -> Path:
    """Train the DINO-WM-style regression baseline on the same chunks as RLA-WM."""
    config = experiment.train.get("regression", TrainConfig())
    cache = open_caches(experiment, include_action_free=False)[0]
    episodes = train_split(experiment, cache)[0]
    dataset = ChunkDataset(cache, episodes, config.horizon, skip_short=True)
    reg_config = build_dataclass(
        RegressionConfig,
        {
            **experiment.regression,
            **feature_shape(cache),
            **action_range(cache, episodes),
            "action_dim": cache.action_dim,
        },
        "regression",
    )
    model = RegressionModel(reg_config)

    def loss_fn(model: torch.nn.Module, batch: tuple) -> tuple[torch.Tensor, dict[str, float]]:
        current, actions, future = (part.float() for part in batch)
        return _unwrap(model, RegressionModel).loss(current, actions, future)

    log = fit(model, dataset, loss_fn, config, out, "regression")
    return _unwrap(model, RegressionModel).save(out / "checkpoint", extra={"final": log[-1], "train": vars_of(config)})


def vars_of(config: TrainConfig) -> dict:
    return dataclasses.asdict(config)


# --------------------------------------------------------------------------- world action model (policy)


@dataclass(frozen=True)
class PolicyTrainingConfig:
    """The `policy_training:` section: which windows train the policy and how the losses weigh."""

    # Share of labelled windows in every batch; the rest are action-free (the paper: half).
    labelled_fraction: float = 0.5
    # False: behaviour cloning on the labelled dataset alone (the baseline to beat).
    use_action_free: bool = True
    # Train on this many labelled episodes only (0 = all of the training split): the paper's
    # regime of few labelled episodes beside much more video. A seeded pick, so runs compare.
    max_labelled_episodes: int = 0
    # Share of labelled windows whose state is hidden behind the missing-state token, so
    # the policy also acts (anchored on its own state estimate) when no state is measured.
    state_dropout: float = 0.1
    action_weight: float = 1.0
    rla_weight: float = 1.0
    state_weight: float = 0.5


def policy_settings(
    experiment: Experiment, overrides: Sequence[str] = ()
) -> tuple[dict, PolicyTrainingConfig, TrainConfig]:
    """The `policy`, `policy_training` and `train.policy` sections, with KEY=VALUE overrides.

    Overrides name a section and a field, e.g. `policy.action_reads_rla=false`,
    `policy_training.use_action_free=false`, `train.policy.steps=100`; values are YAML.
    """
    import yaml

    raw = yaml.safe_load(experiment.path.read_text()) or {}
    sections = {
        "policy": dict(raw.get("policy") or {}),
        "policy_training": dict(raw.get("policy_training") or {}),
        "train.policy": dict((raw.get("train") or {}).get("policy") or {}),
    }
    for item in overrides:
        key, separator, value = item.partition("=")
        section, _, field = key.strip().rpartition(".")
        if not separator or section not in sections or not field:
            raise ConfigError(f"override {item!r}: expected SECTION.FIELD=VALUE with SECTION one of {list(sections)}")
        sections[section][field] = yaml.safe_load(value)
    training = build_dataclass(PolicyTrainingConfig, sections["policy_training"], "policy_training")
    if not 0.0 < training.labelled_fraction <= 1.0:
        raise ConfigError(f"policy_training.labelled_fraction must be in (0, 1], got {training.labelled_fraction}")
    if training.max_labelled_episodes < 0:
        raise ConfigError(f"policy_training.max_labelled_episodes must be >= 0, got {training.max_labelled_episodes}")
    if not 0.0 <= training.state_dropout < 1.0:
        raise ConfigError(f"policy_training.state_dropout must be in [0, 1), got {training.state_dropout}")
    return sections["policy"], training, build_dataclass(TrainConfig, sections["train.policy"], "train.policy")


def load_frozen_autoencoder(rla_checkpoint: str | Path, encoder_id: str) -> tuple[RLAAutoencoder, dict]:
    """The RLA autoencoder whose z the policy learns to predict; refuses one of another feature space."""
    autoencoder, meta = RLAAutoencoder.load(rla_checkpoint)
    autoencoder.requires_grad_(False)
    if autoencoder.config.encoder_id != encoder_id:
        raise ValueError(f"autoencoder was trained on {autoencoder.config.encoder_id!r}, the data is {encoder_id!r}")
    return autoencoder, meta


def train_policy(experiment: Experiment, rla_checkpoint: str | Path, out: Path, overrides: Sequence[str] = ()) -> Path:
    """Train the world action model on labelled windows (action + RLA + state losses) mixed with
    action-free windows (RLA loss only), the RLA autoencoder frozen as the target's encoder."""
    model_values, training, config = policy_settings(experiment, overrides)
    caches = open_caches(experiment, include_action_free=training.use_action_free)
    cache = caches[0]
    if training.use_action_free and len(caches) == 1:
        warnings.warn("policy_training.use_action_free is set but data.action_free lists no dataset", stacklevel=2)
    autoencoder, rla_meta = load_frozen_autoencoder(rla_checkpoint, cache.encoder_id)
    chunk_length = int(model_values.get("chunk_length", PolicyConfig.chunk_length))
    rla_horizon = int(model_values.get("rla_horizon", PolicyConfig.rla_horizon))
    gaps = rla_meta.get("train", {})
    if not gaps.get("min_gap", rla_horizon) <= rla_horizon <= gaps.get("max_gap", rla_horizon):
        warnings.warn(
            f"policy.rla_horizon {rla_horizon} is outside the gaps [{gaps['min_gap']}, "
            f"{gaps['max_gap']}] the autoencoder was trained on; its z may be meaningless",
            stacklevel=2,
        )
    digest = checkpoint_digest(rla_checkpoint)
    targets = [rla_targets(c, autoencoder, digest, rla_horizon) for c in caches]
    episodes = train_split(experiment, cache)[0]
    if 0 < training.max_labelled_episodes < len(episodes):
        order = np.random.default_rng(experiment.split_seed).permutation(len(episodes))
        episodes = sorted(episodes[i] for i in order[: training.max_labelled_episodes])
    labelled = PolicyWindowDataset(cache, episodes, chunk_length, rla_horizon, labelled=True, targets=targets[0])
    action_free = [
        PolicyWindowDataset(c, c.episodes, chunk_length, rla_horizon, labelled=False, targets=t)
        for c, t in zip(caches[1:], targets[1:])
    ]
    dataset = MixedWindows(labelled, action_free)
    latent_scale = std_over_samples(dataset, lambda batch: batch[1].float())
    policy_config = build_dataclass(
        PolicyConfig,
        {
            **model_values,
            **feature_shape(cache),
            **policy_statistics(cache, episodes),
            "state_dim": dataset.state_dim,
            "action_dim": dataset.action_dim,
            "latent_tokens": autoencoder.config.latent_tokens,
            "latent_dim": autoencoder.config.latent_dim,
            "latent_scale": latent_scale,
        },
        "policy",
    )
    model = Policy(policy_config)
    sampler = MixedBatchSampler(
        dataset.labelled_count,
        dataset.action_free_count,
        config.batch_size,
        training.labelled_fraction,
        seed=config.seed,
    )
    weights = PolicyLossWeights(action=training.action_weight, rla=training.rla_weight, state=training.state_weight)

    def loss_fn(model: torch.nn.Module, batch: tuple) -> tuple[torch.Tensor, dict[str, float]]:
        current, z, state, actions, is_labelled = batch
        # Drawn from torch's generator, which fit seeds: the same windows lose their state on a rerun.
        visible = is_labelled & (torch.rand(is_labelled.shape, device=is_labelled.device) >= training.state_dropout)
        return _unwrap(model, Policy).loss(
            current.float(), z.float(), state.float(), actions.float(), is_labelled, visible, weights
        )

    log = fit(model, dataset, loss_fn, config, out, "policy", batch_sampler=sampler)
    return _unwrap(model, Policy).save(
        out / "checkpoint",
        extra={
            "final": log[-1],
            "train": vars_of(config),
            "policy_training": dataclasses.asdict(training),
            "rla_checkpoint": resolve_model_path(str(rla_checkpoint)),
            "rla_digest": digest,
            "data": {
                "labelled_windows": dataset.labelled_count,
                "action_free_windows": dataset.action_free_count,
                "train_episodes": episodes,
                "labelled_per_batch": sampler.labelled_per_batch,
            },
        },
    )
