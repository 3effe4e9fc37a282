"""Training data of the world action model: windows from labelled and action-free episodes, mixed batches.

A window starts at frame t of an episode and holds
    s_t                   patch tokens of its first frame (the policy's observation)
    z                     the frozen RLA autoencoder's z(s_t, s_{t+H}), H = rla_horizon (the RLA target)
    state_t, a_{t:t+T}    the measured state and the T actions commanded at frames t .. t+T-1
                          (zeros in action-free windows, flagged by `labelled` = False)
    scene_t               the simulator's scene state at t (observation.environment_state), when the
                          window reads scenes: a training-only read-out target; (0,) otherwise
Features are read from the memory-mapped FeatureCache on demand; only states and
actions (small) are held in RAM.

The autoencoder is frozen, so z of a window never changes: `rla_targets` encodes every
pair once and stores the result in the feature cache folder (memory-mapped, keyed by the
autoencoder's weights and H), instead of re-running the encoder on every training step.
A rebuilt feature cache replaces its folder, and the targets with it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from rla_wm.assets import resolve_model_path
from rla_wm.data.datasets import DataError, FeatureCache, _usable_episodes

if TYPE_CHECKING:
    from rla_wm.models.rla import RLAAutoencoder

TARGETS_DIR = "rla_targets"


def checkpoint_digest(spec: str | Path) -> str:
    """sha256 of a checkpoint's weights file: names the autoencoder whose z a target file holds."""
    path = Path(resolve_model_path(str(spec))) / "model.safetensors"
    if not path.is_file():
        raise DataError(f"{spec}: no model.safetensors to identify the autoencoder by")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def rla_targets(
    cache: FeatureCache,
    autoencoder: RLAAutoencoder,
    digest: str,
    horizon: int,
    batch_size: int = 64,
    progress: bool = True,
    pad_end: bool = False,
) -> np.ndarray:
    """z(s_t, s_{t+H}) for every row of the cache, (total_frames, K, D) float32, memory-mapped.

    Rows whose frame t + H lies past the end of their episode hold NaN, or with `pad_end` the
    change to the episode's last frame (the episode padded by repeating it). Computed once for
    (autoencoder weights `digest`, H, padding, this cache's build) and reused by later runs.
    """
    from tqdm.auto import tqdm

    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    if autoencoder.config.encoder_id != cache.encoder_id:
        raise ValueError(
            f"autoencoder was trained on {autoencoder.config.encoder_id!r}, the feature cache "
            f"{cache.path} holds {cache.encoder_id!r}"
        )
    folder = cache.path / TARGETS_DIR
    name = f"{digest[:16]}_h{horizon}" + ("_padded" if pad_end else "")
    path, meta_path = folder / f"{name}.npy", folder / f"{name}.json"
    shape = (cache.total_frames, autoencoder.config.latent_tokens, autoencoder.config.latent_dim)
    identity = {
        "digest": digest,
        "horizon": int(horizon),
        "cache_created": cache.meta.get("created"),
        "fingerprint": cache.meta.get("fingerprint"),
        "shape": list(shape),
    }
    if pad_end:
        identity["pad_end"] = True
    if path.is_file() and meta_path.is_file():
        try:
            if json.loads(meta_path.read_text()) == identity:
                targets = np.load(path, mmap_mode="r")
                if list(targets.shape) == list(shape):
                    return targets
        except (OSError, ValueError):
            pass  # unreadable or stale: recompute below
    folder.mkdir(exist_ok=True)
    tmp = folder / f".{name}.tmp-{os.getpid()}.npy"
    targets = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
    targets[:] = np.nan
    pairs = [
        (cache.row(e, t), cache.row(e, min(t + horizon, cache.episode_length(e) - 1)))
        for e in cache.episodes
        for t in range(cache.episode_length(e) if pad_end else cache.episode_length(e) - horizon)
    ]
    try:
        with (
            torch.no_grad(),
            tqdm(
                total=len(pairs),
                desc=f"RLA targets h={horizon} {cache.meta['repo_id']}",
                unit="pair",
                disable=not progress,
            ) as bar,
        ):
            for start in range(0, len(pairs), batch_size):
                rows = np.array(pairs[start : start + batch_size])
                current = torch.from_numpy(np.asarray(cache.array[rows[:, 0]], dtype=np.float32))
                future = torch.from_numpy(np.asarray(cache.array[rows[:, 1]], dtype=np.float32))
                targets[rows[:, 0]] = autoencoder.encode(current, future).numpy()
                bar.update(len(rows))
        targets.flush()
        del targets
        os.replace(tmp, path)
        meta_path.write_text(json.dumps(identity))  # written last: marks the targets complete
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return np.load(path, mmap_mode="r")


class PolicyWindowDataset(Dataset[tuple[torch.Tensor, ...]]):
    """Windows (s_t, z, state_t, a_{t:t+T}, labelled, scene_t) of one feature cache.

    `targets` is the cache's `rla_targets` array for H = rla_horizon.

    `labelled=True` needs a dataset with actions and states; `labelled=False` treats the
    episodes as video only, even if the dataset records states, as real action-free
    video (e.g. from the web) has neither. `scenes=True` (labelled windows only) adds the
    dataset's observation.environment_state.

    `pad_end=True` starts a window at every frame: chunk points past the episode's end repeat its
    last action, and `targets` must hold the RLA target to the last frame there (`rla_targets`
    with pad_end), as Diffusion Policy and LeRobot pad. Without it a window's chunk and RLA frame
    must end inside the episode, which drops the last max(T - 1, H) frames of every episode: for
    demonstrations that stop at success (the SO-101's, ~19 frames) that is the final push.
    """

    def __init__(
        self,
        cache: FeatureCache,
        episodes: Sequence[int],
        chunk_length: int,
        rla_horizon: int,
        labelled: bool,
        targets: np.ndarray,
        skip_short: bool = True,
        scenes: bool = False,
        pad_end: bool = False,
    ) -> None:
        if scenes and not labelled:
            raise ValueError("scene targets are labels: action-free windows cannot read them")
        if chunk_length < 1 or rla_horizon < 1:
            raise ValueError(f"chunk_length and rla_horizon must be >= 1, got {chunk_length}, {rla_horizon}")
        if labelled and not cache.has_actions:
            raise DataError("labelled policy windows need actions: " + cache._no_actions_message())
        self.cache = cache
        self.chunk_length = int(chunk_length)
        self.rla_horizon = int(rla_horizon)
        self.labelled = bool(labelled)
        # The last window's chunk must end inside the episode (t + T - 1 <= len - 1) and so
        # must its RLA frame (t + H <= len - 1).
        span = 0 if pad_end else max(self.chunk_length - 1, self.rla_horizon)
        self.episodes = _usable_episodes(cache, episodes, span, "PolicyWindowDataset", skip_short)
        self._actions: dict[int, torch.Tensor] = {}
        self._states: dict[int, torch.Tensor] = {}
        self._scenes: dict[int, torch.Tensor] = {}
        self.scene_dim = 0
        if self.labelled:
            for e in self.episodes:
                self._actions[e] = torch.from_numpy(cache.actions(e))
                self._states[e] = torch.from_numpy(cache.states(e))
                if scenes:
                    self._scenes[e] = torch.from_numpy(cache.scenes(e))
            self.action_dim = int(next(iter(self._actions.values())).shape[1])
            self.state_dim = int(next(iter(self._states.values())).shape[1])
            if scenes:
                self.scene_dim = int(next(iter(self._scenes.values())).shape[1])
        starts = [(e, t) for e in self.episodes for t in range(cache.episode_length(e) - span)]
        self._starts = np.array(starts, dtype=np.int64).reshape(-1, 2)
        if targets.ndim != 3 or targets.shape[0] != cache.total_frames:
            raise DataError(
                f"RLA targets of shape {targets.shape} do not cover the {cache.total_frames} frames "
                f"of feature cache {cache.path}"
            )
        self.targets = targets

    def __len__(self) -> int:
        return len(self._starts)

    def sample(self, index: int) -> tuple[int, int]:
        """(episode, t) of item `index`."""
        episode, t = self._starts[index]
        return int(episode), int(t)

    def item(self, index: int, state_dim: int, action_dim: int, scene_dim: int = 0) -> tuple[torch.Tensor, ...]:
        """The window, with placeholder zeros of the given sizes where there are no labels."""
        episode, t = self.sample(index)
        current = torch.from_numpy(self.cache.features(episode, t))
        z = torch.from_numpy(np.array(self.targets[self.cache.row(episode, t)], dtype=np.float32))
        if not torch.isfinite(z).all():
            raise DataError(
                f"no RLA target for episode {episode} frame {t} in {self.cache.path}: the targets were "
                f"computed for another horizon than {self.rla_horizon}"
            )
        if self.labelled:
            state = self._states[episode][t].clone()
            actions = self._actions[episode][t : t + self.chunk_length].clone()
            if len(actions) < self.chunk_length:  # pad_end: the episode's last action, held
                actions = torch.cat([actions, actions[-1:].expand(self.chunk_length - len(actions), -1)])
        else:
            state = torch.zeros(state_dim)
            actions = torch.zeros(self.chunk_length, action_dim)
        scene = self._scenes[episode][t].clone() if self._scenes else torch.zeros(scene_dim)
        return current, z, state, actions, torch.tensor(self.labelled), scene

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        if not self.labelled:
            raise TypeError("action-free windows have no label sizes of their own; read them through MixedWindows")
        return self.item(index, self.state_dim, self.action_dim, self.scene_dim)


class MixedWindows(Dataset[tuple[torch.Tensor, ...]]):
    """Labelled windows (indices 0 .. L-1) followed by action-free windows (L .. L+F-1)."""

    def __init__(self, labelled: PolicyWindowDataset, action_free: Sequence[PolicyWindowDataset] = ()) -> None:
        if not labelled.labelled:
            raise ValueError("the first part of MixedWindows must be labelled")
        self.parts = [labelled, *action_free]
        self.state_dim, self.action_dim, self.scene_dim = labelled.state_dim, labelled.action_dim, labelled.scene_dim
        self.labelled_count = len(labelled)
        self._ends = np.cumsum([len(p) for p in self.parts])

    @property
    def action_free_count(self) -> int:
        return len(self) - self.labelled_count

    def __len__(self) -> int:
        return int(self._ends[-1])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} windows")
        part = int(np.searchsorted(self._ends, index, side="right"))
        local = index - (int(self._ends[part - 1]) if part else 0)
        return self.parts[part].item(local, self.state_dim, self.action_dim, self.scene_dim)


class MixedBatchSampler(Sampler[list[int]]):
    """Batches of MixedWindows indices with a fixed share of labelled windows in each.

    Each batch holds round(batch_size * labelled_fraction) labelled windows (at least one)
    and action-free windows for the rest; without action-free windows every batch is
    labelled. An epoch is one pass over the labelled windows; action-free windows are
    drawn from their own shuffled stream, so a small labelled set does not starve the
    video. Every pass reshuffles from a generator seeded by (seed, pass), so a run is
    reproducible.
    """

    def __init__(
        self, labelled_count: int, action_free_count: int, batch_size: int, labelled_fraction: float, seed: int = 0
    ) -> None:
        if labelled_count < 1:
            raise DataError("no labelled windows: the action head has nothing to learn from")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0.0 < labelled_fraction <= 1.0:
            raise ValueError(f"labelled_fraction must be in (0, 1], got {labelled_fraction}")
        self.labelled_count = int(labelled_count)
        self.action_free_count = int(action_free_count)
        self.batch_size = int(batch_size)
        per_batch = self.batch_size if action_free_count == 0 else round(self.batch_size * labelled_fraction)
        self.labelled_per_batch = min(max(per_batch, 1), self.batch_size, self.labelled_count)
        self.action_free_per_batch = 0 if action_free_count == 0 else self.batch_size - self.labelled_per_batch
        self.seed = int(seed)
        self._passes = 0

    def __len__(self) -> int:
        return max(1, self.labelled_count // self.labelled_per_batch)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self._passes])
        self._passes += 1
        labelled = rng.permutation(self.labelled_count)
        free_needed = len(self) * self.action_free_per_batch
        free = np.concatenate(
            [rng.permutation(self.action_free_count) for _ in range(-(-free_needed // max(self.action_free_count, 1)))]
            or [np.zeros(0, dtype=np.int64)]
        )
        for b in range(len(self)):
            batch = labelled[b * self.labelled_per_batch : (b + 1) * self.labelled_per_batch].tolist()
            chosen = free[b * self.action_free_per_batch : (b + 1) * self.action_free_per_batch]
            batch += (chosen + self.labelled_count).tolist()
            yield [int(i) for i in batch]


TOKEN_SPAN_FLOOR = 0.1


def policy_statistics(
    cache: FeatureCache, episodes: Sequence[int], margin: float = 1.1, scenes: bool = False, tokens: bool = False
) -> dict[str, tuple[float, ...]]:
    """Normalisation of the labelled training episodes: state and action ranges, increment bound,
    with `scenes` the range of the scene read-out target, and with `tokens` each token channel's range
    (for a few-channel privileged state that reaches the policy without a layer norm).

    max_delta bounds every step of a chunk, the first one (from the measured state to the
    first target) included; it is the 99.9th percentile of those steps with a margin, so
    the recorded chunks are reachable without letting one outlier set the scale.
    """
    states = [cache.states(e) for e in episodes]
    actions = [cache.actions(e) for e in episodes]
    steps = np.concatenate(
        [np.abs(np.diff(np.concatenate([s[:1], a]), axis=0)) for s, a in zip(states, actions)]
        + [np.abs(a - s) for s, a in zip(states, actions)]
    )
    all_states, all_actions = np.concatenate(states), np.concatenate(actions)
    if not (np.isfinite(all_states).all() and np.isfinite(all_actions).all()):
        raise DataError(f"feature cache {cache.path}: states or actions contain NaN or inf")
    max_delta = np.maximum(np.percentile(steps, 99.9, axis=0) * margin, 1e-3)

    def span(values: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
        low, high = values.min(axis=0), values.max(axis=0)
        return tuple(float(v) for v in low), tuple(float(v) for v in low + np.maximum(high - low, 1e-6))

    action_low, action_high = span(all_actions)
    state_low, state_high = span(all_states)
    statistics = {
        "max_delta": tuple(float(v) for v in max_delta),
        "action_low": action_low,
        "action_high": action_high,
        "state_low": state_low,
        "state_high": state_high,
    }
    if scenes:
        all_scenes = np.concatenate([cache.scenes(e) for e in episodes])
        if not np.isfinite(all_scenes).all():
            raise DataError(f"feature cache {cache.path}: scene states contain NaN or inf")
        statistics["scene_low"], statistics["scene_high"] = span(all_scenes)
    if tokens:
        all_tokens = np.concatenate([cache.episode_features(e).reshape(-1, cache.token_shape[1]) for e in episodes])
        low, high = all_tokens.min(axis=0), all_tokens.max(axis=0)
        # A channel that hardly varies (the cube's height on the table, the zone's radius) keeps a
        # span of at least TOKEN_SPAN_FLOOR of the widest one, so its noise is not blown up to [-1, 1].
        spread = np.maximum(high - low, TOKEN_SPAN_FLOOR * float(np.max(high - low)) + 1e-6)
        statistics["token_low"] = tuple(float(v) for v in low)
        statistics["token_high"] = tuple(float(v) for v in low + spread)
    return statistics
