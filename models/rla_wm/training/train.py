"""Training of the RLA autoencoder, RLA-WM, the regression baseline and the world action model.

One loop for all of them, run through Hugging Face accelerate: the same command trains on
this CPU or, under `accelerate launch` / `torchrun`, with DDP on several processes, taking the
same steps on the same data whatever their number (see rla_wm.training.distributed). Each run
writes <out>/checkpoint (safetensors + config), <out>/metrics.jsonl and <out>/loss.png.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import time
import warnings
from collections.abc import Callable, Sized
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

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
from rla_wm.models.encoder import EncoderConfig, TokenEncoder, load_encoder
from rla_wm.models.policy import Policy, PolicyConfig, PolicyLossWeights
from rla_wm.models.regression import RegressionConfig, RegressionModel
from rla_wm.models.rla import RLAAutoencoder, RLAConfig
from rla_wm.models.world_model import RLAWorldModel, WorldModelConfig
from rla_wm.training.config import ConfigError, Experiment, TrainConfig
from rla_wm.training.distributed import (
    LossFn,
    Objective,
    ShardedBatches,
    ShuffledBatches,
    mean_over_processes,
    same_on_every_process,
    save_on_main,
    start_run,
)
from rla_wm.training.schedule import warmup_cosine

if TYPE_CHECKING:
    from _typeshed import DataclassInstance
    from accelerate import Accelerator

ConfigT = TypeVar("ConfigT")


def build_encoder(config: EncoderConfig) -> TokenEncoder:
    """The encoder `encoder.model` names: a simulator's privileged state (Push-T's block, the SO-101's
    cube and zone) for the ladder's privileged rung, or a camera encoder (`load_encoder`: a ViT, the
    keypoint encoder or a camera estimator)."""
    from rla_wm.envs.environment_state_encoder import ENVIRONMENT_STATE_CHANNELS, EnvironmentStateEncoder

    if config.model in ENVIRONMENT_STATE_CHANNELS:
        return EnvironmentStateEncoder(config.model)
    return load_encoder(config)


def open_caches(
    experiment: Experiment,
    include_action_free: bool,
    device: torch.device | None = None,
    include_extra_labelled: bool = False,
) -> list[FeatureCache]:
    """Feature caches of the experiment's datasets (built on first use; the ViT runs once per frame):
    the labelled dataset first, then the extra labelled ones, then the action-free ones, as included.

    `device` replaces a "cuda" encoder device, so each process of a multi-GPU run uses its own GPU.
    """
    encoder_config = experiment.encoder
    if device is not None and device.type == "cuda" and encoder_config.device.startswith("cuda"):
        encoder_config = dataclasses.replace(encoder_config, device=str(device))
    encoder = build_encoder(encoder_config)
    data = experiment.data
    refs = (
        [data.labelled]
        + (list(data.extra_labelled) if include_extra_labelled else [])
        + (list(data.action_free) if include_action_free else [])
    )
    # A privileged encoder (sim state) names the dataset column it reads; a ViT reads the camera.
    image_key = getattr(encoder, "input_key", None) or data.image_key or None
    return [
        FeatureCache.load_or_build(ref.dataset_root, ref.repo_id, encoder, data.cache_root, image_key=image_key)
        for ref in refs
    ]


def open_caches_once(
    experiment: Experiment, include_action_free: bool, accelerator: Accelerator, include_extra_labelled: bool = False
) -> list[FeatureCache]:
    """open_caches in a multi-process run: the main process builds what is missing, then the others open it."""
    with accelerator.main_process_first():
        return open_caches(experiment, include_action_free, accelerator.device, include_extra_labelled)


def world_model_chunks(
    experiment: Experiment, horizon: int, accelerator: Accelerator
) -> tuple[FeatureCache, Dataset, dict[str, tuple[float, ...]]]:
    """The world models' training data: (s_t, a_{t:t+h}, s_{t+h}) chunks of the labelled dataset's training
    split and of every extra labelled dataset, and the action range over all of them. The first cache
    (the labelled dataset) gives the feature shape."""
    caches = open_caches_once(
        experiment, include_action_free=False, accelerator=accelerator, include_extra_labelled=True
    )
    splits = [(caches[0], train_split(experiment, caches[0])[0])] + [(cache, cache.episodes) for cache in caches[1:]]
    for cache, _ in splits[1:]:
        if (cache.encoder_id, cache.action_dim) != (caches[0].encoder_id, caches[0].action_dim):
            raise ValueError(
                f"extra labelled dataset {cache.path} has features {cache.encoder_id!r} and {cache.action_dim} "
                f"actions; the labelled one has {caches[0].encoder_id!r} and {caches[0].action_dim}"
            )
    dataset: Dataset = torch.utils.data.ConcatDataset(
        [ChunkDataset(cache, episodes, horizon, skip_short=True) for cache, episodes in splits]
    )
    actions = np.concatenate([cache.actions(e) for cache, episodes in splits for e in episodes])
    return caches[0], dataset, action_range_of(actions)


def model_config(kind: type[ConfigT], chosen: DataclassInstance, **measured: Any) -> ConfigT:
    """A model's config: the sizes the experiment chose plus what training measured on the data."""
    return kind(**dataclasses.asdict(chosen), **measured)


def train_split(experiment: Experiment, cache: FeatureCache) -> tuple[list[int], list[int]]:
    return split_episodes(cache.episodes, experiment.data.held_out_fraction, experiment.data.seed)


def feature_shape(cache: FeatureCache) -> dict[str, object]:
    tokens, channels = cache.token_shape
    return {"token_dim": channels, "num_tokens": tokens, "encoder_id": cache.encoder_id}


def action_range_of(actions: np.ndarray) -> dict[str, tuple[float, ...]]:
    """(T, A) actions -> their per-dimension min and max (a span of at least 1e-6)."""
    low, high = actions.min(axis=0), actions.max(axis=0)
    span = np.maximum(high - low, 1e-6)
    return {"action_low": tuple(float(v) for v in low), "action_high": tuple(float(v) for v in low + span)}


def fit(
    model: torch.nn.Module,
    loss_fn: LossFn,
    dataset: Dataset,
    config: TrainConfig,
    out: Path,
    name: str,
    accelerator: Accelerator,
    global_batches: Sampler[list[int]] | None = None,
) -> list[dict]:
    """AdamW with linear warm-up and cosine decay, gradient clipping, logging and, with
    `config.ema_decay`, an exponential moving average of the weights that replaces them at the end;
    returns the metric log.

    `loss_fn(batch)` computes `model`'s loss on this process's part of a batch. `global_batches`
    yields the indices of each global batch of `config.batch_size` (default: shuffled
    batches); it must be the same in every process, e.g. seeded, as it fixes the mix of
    labelled and action-free samples in every batch. The log holds averages over processes;
    only the main process writes it.
    """
    from accelerate.utils import set_seed

    if global_batches is None:
        if not isinstance(dataset, Sized):
            raise TypeError(f"{name}: shuffled batches need a dataset with a length, got {type(dataset).__name__}")
        try:
            global_batches = ShuffledBatches(len(dataset), config.batch_size, seed=config.seed)
        except ConfigError as err:
            raise ConfigError(f"train.{name}: {err}") from err
    # Not accelerator.prepare(loader): it hands whole batches to the processes in turn, so
    # what a step trains on would depend on the number of processes.
    loader = DataLoader(
        dataset,
        batch_sampler=ShardedBatches(global_batches, accelerator.process_index, accelerator.num_processes),
        num_workers=config.num_workers,
    )
    optimiser = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay
    )

    scheduler = warmup_cosine(optimiser, config.warmup_steps, config.steps, floor=0.1)
    objective, optimiser, scheduler = accelerator.prepare(Objective(model, loss_fn), optimiser, scheduler)
    # Each process draws its own noise (flow-matching noise, state dropout, worker seeds): the
    # same draws on different samples would correlate the processes' gradients.
    set_seed(config.seed, device_specific=True)
    log: list[dict] = []
    trained: list[torch.Tensor] = [p for p in model.parameters() if p.requires_grad]
    # The average starts at the initial weights; its warm-up (1 + step) / (10 + step) keeps the
    # random start from lingering in it.
    average = [p.detach().clone() for p in trained] if config.ema_decay > 0 else None
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    progress = tqdm(range(config.steps), desc=f"train {name}", disable=not accelerator.is_main_process)
    started = time.perf_counter()
    objective.train()
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    # Only the main process holds the file; the others write nothing.
    metrics_file = open(out / "metrics.jsonl", "w") if accelerator.is_main_process else None
    try:
        for step in progress:
            batch = tuple(part.to(accelerator.device) for part in next(batches))
            with accelerator.autocast():
                loss, metrics = objective(batch)
            # Averaged before the backward pass, so a non-finite loss in any process stops all
            # of them here instead of leaving the others waiting in the gradient all-reduce.
            averaged = mean_over_processes(accelerator, loss, metrics)
            if not math.isfinite(averaged["loss"]):
                raise FloatingPointError(f"{name}: loss became {averaged['loss']} at step {step}")
            optimiser.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            if config.grad_clip > 0:
                accelerator.clip_grad_norm_(objective.parameters(), config.grad_clip)
            optimiser.step()
            scheduler.step()
            if average is not None:
                decay = min(config.ema_decay, (1 + step) / (10 + step))
                with torch.no_grad():
                    torch._foreach_lerp_(average, trained, 1.0 - decay)
            if step % config.log_every == 0 or step == config.steps - 1:
                entry = {
                    "step": step,
                    "loss": averaged["loss"],
                    "lr": scheduler.get_last_lr()[0],
                    "seconds": time.perf_counter() - started,
                    **{k: v for k, v in averaged.items() if k != "loss"},
                }
                log.append(entry)
                if metrics_file is not None:
                    metrics_file.write(json.dumps(entry) + "\n")
                    metrics_file.flush()
                progress.set_postfix(loss=f"{entry['loss']:.4f}")
    finally:
        if metrics_file is not None:
            metrics_file.close()
    if average is not None:
        with torch.no_grad():
            torch._foreach_copy_(trained, average)
    objective.eval()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        plot_loss_curves({name: log}, out / "loss.png")
    return log


def train_autoencoder(experiment: Experiment, out: Path) -> Path:
    """Train the RLA autoencoder on frame pairs of every dataset, extra labelled and action-free ones included."""
    config = experiment.train.rla
    accelerator = start_run(config)
    caches = open_caches_once(
        experiment, include_action_free=True, accelerator=accelerator, include_extra_labelled=True
    )
    parts: list[FramePairDataset] = []
    for index, cache in enumerate(caches):
        # Held-out episodes of the labelled dataset stay out of every training set.
        episodes = train_split(experiment, cache)[0] if index == 0 else cache.episodes
        parts.append(FramePairDataset(cache, episodes, config.min_gap, config.max_gap, skip_short=True))
    dataset: torch.utils.data.ConcatDataset[tuple[torch.Tensor, torch.Tensor, int]] = torch.utils.data.ConcatDataset(
        parts
    )
    rla_config = same_on_every_process(
        accelerator,
        model_config(
            RLAConfig,
            experiment.rla,
            **feature_shape(caches[0]),
            residual_scale=residual_scale_of(dataset),
        ),
    )
    torch.manual_seed(config.seed)  # the same initial weights in every process and every run
    model = RLAAutoencoder(rla_config)

    def loss_fn(batch: tuple) -> tuple[torch.Tensor, dict[str, float]]:
        current, future, _gap = batch
        return model.loss(current.float(), future.float())

    log = fit(model, loss_fn, dataset, config, out, "rla", accelerator)
    return save_on_main(accelerator, model, out / "checkpoint", {"final": log[-1], "train": vars_of(config)})


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
    config = experiment.train.world_model
    accelerator = start_run(config)
    cache, dataset, actions = world_model_chunks(experiment, config.horizon, accelerator)
    autoencoder, _ = RLAAutoencoder.load(rla_checkpoint)
    autoencoder.requires_grad_(False)
    if autoencoder.config.encoder_id != cache.encoder_id:
        raise ValueError(
            f"autoencoder was trained on {autoencoder.config.encoder_id!r}, the data is {cache.encoder_id!r}"
        )
    wm_config = same_on_every_process(
        accelerator,
        model_config(
            WorldModelConfig,
            experiment.world_model,
            **feature_shape(cache),
            **actions,
            latent_tokens=autoencoder.config.latent_tokens,
            latent_dim=autoencoder.config.latent_dim,
            action_dim=cache.action_dim,
            latent_scale=latent_scale_of(autoencoder, dataset),
        ),
    )
    if config.horizon > wm_config.max_horizon:
        raise ConfigError(
            f"train.world_model.horizon {config.horizon} exceeds world_model.max_horizon {wm_config.max_horizon}"
        )
    torch.manual_seed(config.seed)
    model = RLAWorldModel(wm_config)
    autoencoder.to(accelerator.device)

    def loss_fn(batch: tuple) -> tuple[torch.Tensor, dict[str, float]]:
        current, actions, future = (part.float() for part in batch)
        with torch.no_grad():
            z = autoencoder.encode(current, future)
        return model.loss(current, actions, z)

    log = fit(model, loss_fn, dataset, config, out, "world_model", accelerator)
    extra = {"final": log[-1], "train": vars_of(config), "rla_checkpoint": str(rla_checkpoint)}
    return save_on_main(accelerator, model, out / "checkpoint", extra)


def train_regression(experiment: Experiment, out: Path) -> Path:
    """Train the DINO-WM-style regression baseline on the same chunks as RLA-WM."""
    config = experiment.train.regression
    accelerator = start_run(config)
    cache, dataset, actions = world_model_chunks(experiment, config.horizon, accelerator)
    reg_config = same_on_every_process(
        accelerator,
        model_config(
            RegressionConfig,
            experiment.regression,
            **feature_shape(cache),
            **actions,
            action_dim=cache.action_dim,
        ),
    )
    torch.manual_seed(config.seed)
    model = RegressionModel(reg_config)

    def loss_fn(batch: tuple) -> tuple[torch.Tensor, dict[str, float]]:
        current, actions, future = (part.float() for part in batch)
        return model.loss(current, actions, future)

    log = fit(model, loss_fn, dataset, config, out, "regression", accelerator)
    return save_on_main(accelerator, model, out / "checkpoint", {"final": log[-1], "train": vars_of(config)})


def vars_of(config: TrainConfig) -> dict:
    return dataclasses.asdict(config)


# --------------------------------------------------------------------------- world action model (policy)


def load_frozen_autoencoder(rla_checkpoint: str | Path, encoder_id: str) -> tuple[RLAAutoencoder, dict]:
    """The RLA autoencoder whose z the policy learns to predict; refuses one of another feature space."""
    autoencoder, meta = RLAAutoencoder.load(rla_checkpoint)
    autoencoder.requires_grad_(False)
    if autoencoder.config.encoder_id != encoder_id:
        raise ValueError(f"autoencoder was trained on {autoencoder.config.encoder_id!r}, the data is {encoder_id!r}")
    return autoencoder, meta


def train_policy(experiment: Experiment, rla_checkpoint: str | Path, out: Path) -> Path:
    """Train the world action model on labelled windows (action + RLA + state losses) mixed with
    action-free windows (RLA loss only), the RLA autoencoder frozen as the target's encoder."""
    settings, training, config = experiment.policy, experiment.policy_training, experiment.train.policy
    accelerator = start_run(config)
    caches = open_caches_once(experiment, include_action_free=training.use_action_free, accelerator=accelerator)
    cache = caches[0]
    if training.use_action_free and len(caches) == 1:
        warnings.warn("policy_training.use_action_free is set but data.action_free lists no dataset", stacklevel=2)
    autoencoder, rla_meta = load_frozen_autoencoder(rla_checkpoint, cache.encoder_id)
    gaps, rla_horizon = rla_meta.get("train", {}), settings.rla_horizon
    if not gaps.get("min_gap", rla_horizon) <= rla_horizon <= gaps.get("max_gap", rla_horizon):
        warnings.warn(
            f"policy.rla_horizon {rla_horizon} is outside the gaps [{gaps['min_gap']}, "
            f"{gaps['max_gap']}] the autoencoder was trained on; its z may be meaningless",
            stacklevel=2,
        )
    digest = checkpoint_digest(rla_checkpoint)
    with accelerator.main_process_first():  # computed once, by the main process, then read by the others
        targets = [rla_targets(c, autoencoder, digest, rla_horizon, pad_end=training.pad_episode_end) for c in caches]
    episodes = train_split(experiment, cache)[0]
    if 0 < training.max_labelled_episodes < len(episodes):
        order = np.random.default_rng(experiment.data.seed).permutation(len(episodes))
        episodes = sorted(episodes[i] for i in order[: training.max_labelled_episodes])
    chunk_length = settings.chunk_length
    scenes = training.scene_weight > 0
    if scenes and not cache.has_scenes:
        raise ConfigError(
            f"policy_training.scene_weight {training.scene_weight} needs observation.environment_state in the "
            f"labelled dataset; {cache.path} has none (record with environment_state, or set scene_weight 0)"
        )
    pad = training.pad_episode_end
    labelled = PolicyWindowDataset(
        cache, episodes, chunk_length, rla_horizon, labelled=True, targets=targets[0], scenes=scenes, pad_end=pad
    )
    action_free = [
        PolicyWindowDataset(c, c.episodes, chunk_length, rla_horizon, labelled=False, targets=t, pad_end=pad)
        for c, t in zip(caches[1:], targets[1:])
    ]
    dataset = MixedWindows(labelled, action_free)
    policy_config = same_on_every_process(
        accelerator,
        model_config(
            PolicyConfig,
            settings,
            **feature_shape(cache),
            **policy_statistics(cache, episodes, scenes=scenes, tokens=not settings.token_norm),
            scene_dim=dataset.scene_dim,
            state_dim=dataset.state_dim,
            action_dim=dataset.action_dim,
            latent_tokens=autoencoder.config.latent_tokens,
            latent_dim=autoencoder.config.latent_dim,
            latent_scale=std_over_samples(dataset, lambda batch: batch[1].float()),
        ),
    )
    sampler = MixedBatchSampler(
        dataset.labelled_count,
        dataset.action_free_count,
        config.batch_size,
        training.labelled_fraction,
        seed=config.seed,
    )
    processes = accelerator.num_processes
    if sampler.labelled_per_batch % processes or sampler.action_free_per_batch % processes:
        raise ConfigError(
            f"a batch of {sampler.labelled_per_batch} labelled and {sampler.action_free_per_batch} action-free "
            f"windows does not split evenly across {processes} processes: each must get the same mix "
            "(change train.policy.batch_size or policy_training.labelled_fraction)"
        )
    torch.manual_seed(config.seed)
    model = Policy(policy_config)
    weights = PolicyLossWeights(
        action=training.action_weight, rla=training.rla_weight, state=training.state_weight, scene=training.scene_weight
    )

    calls = itertools.count()  # fit calls loss_fn once per step, so this is the step

    def loss_fn(batch: tuple) -> tuple[torch.Tensor, dict[str, float]]:
        current, z, state, actions, is_labelled, scene = batch
        step = next(calls)
        logged = step % config.log_every == 0 or step == config.steps - 1  # fit's logging rule
        # Drawn from torch's generator, which fit seeds per process: a rerun hides the same states.
        visible = is_labelled & (torch.rand(is_labelled.shape, device=is_labelled.device) >= training.state_dropout)
        return model.loss(
            current.float(),
            z.float(),
            state.float(),
            actions.float(),
            is_labelled,
            visible,
            weights,
            logged,
            scene=scene.float() if scenes else None,
        )

    log = fit(model, loss_fn, dataset, config, out, "policy", accelerator, global_batches=sampler)
    extra = {
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
    }
    return save_on_main(accelerator, model, out / "checkpoint", extra)
