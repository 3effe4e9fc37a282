"""Experiment configuration: one YAML file names the data, the encoder, each model and training.

Layout (see models/configs/pusht_small.yaml):

    data:    {dataset_root, repo_id, cache_root, action_free: [{dataset_root, repo_id}, ...],
              held_out_fraction, seed}
    encoder: {model, resolution, device, dtype}
    rla:     RLAConfig fields            (token_dim / num_tokens / encoder_id are filled in)
    world_model: WorldModelConfig fields (likewise, plus latent sizes from the autoencoder)
    regression:  RegressionConfig fields
    train:   {rla: TrainConfig fields, world_model: ..., regression: ...}
    evaluate: {chunks: [1, 2, 3], max_windows: 64, euler_steps: 30, seed: 0}
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

DataclassT = TypeVar("DataclassT", bound="DataclassInstance")


class ConfigError(ValueError):
    """The experiment YAML is missing something or has a key no model knows."""


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    log_every: int = 25
    seed: int = 0
    num_workers: int = 0
    # accelerate's mixed precision: "no", "fp16" or "bf16" (GPU).
    mixed_precision: str = "no"
    # Frame gap h for the autoencoder (uniform in [min_gap, max_gap]) and chunk length for predictors.
    min_gap: int = 2
    max_gap: int = 20
    horizon: int = 5


@dataclass(frozen=True)
class DatasetRef:
    dataset_root: str
    repo_id: str


@dataclass(frozen=True)
class Experiment:
    path: Path
    data: DatasetRef
    cache_root: str
    action_free: tuple[DatasetRef, ...]
    held_out_fraction: float
    split_seed: int
    encoder: dict[str, Any]
    rla: dict[str, Any]
    world_model: dict[str, Any]
    regression: dict[str, Any]
    train: dict[str, TrainConfig]
    evaluate: dict[str, Any] = field(default_factory=dict)

    def resolve(self, path: str) -> Path:
        """Paths in the YAML are relative to the YAML file's folder."""
        candidate = Path(path).expanduser()
        return candidate if candidate.is_absolute() else (self.path.parent / candidate).resolve()


def build_dataclass(kind: type[DataclassT], values: dict[str, Any], where: str) -> DataclassT:
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    return kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def load_experiment(path: str | Path) -> Experiment:
    path = Path(path).resolve()
    if not path.is_file():
        raise ConfigError(f"experiment config {path} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    try:
        data = raw["data"]
        main = DatasetRef(str(data["dataset_root"]), str(data["repo_id"]))
    except KeyError as err:
        raise ConfigError(f"{path}: data.{err.args[0]} is required") from err
    action_free = tuple(DatasetRef(str(d["dataset_root"]), str(d["repo_id"])) for d in data.get("action_free", []))
    train = {
        name: build_dataclass(TrainConfig, values or {}, f"{path}: train.{name}")
        for name, values in (raw.get("train") or {}).items()
    }
    return Experiment(
        path=path,
        data=main,
        cache_root=str(data.get("cache_root", "cache")),
        action_free=action_free,
        held_out_fraction=float(data.get("held_out_fraction", 0.2)),
        split_seed=int(data.get("seed", 0)),
        encoder=dict(raw.get("encoder") or {}),
        rla=dict(raw.get("rla") or {}),
        world_model=dict(raw.get("world_model") or {}),
        regression=dict(raw.get("regression") or {}),
        train=train,
        evaluate=dict(raw.get("evaluate") or {}),
    )
