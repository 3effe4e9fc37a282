"""The experiment: one typed dataclass tree, read from a YAML file and overridden on the command line.

One loader, `parse_config`, and one syntax (draccus, as LeRobot uses it):

    rla-wm train-wm --config_path=models/configs/sim_pusht.yaml --rla_checkpoint=runs/rla/checkpoint \\
        --out=runs/wm --train.world_model.steps=300 --policy.action_reads_rla=false

`--config_path` names the YAML file (models/configs/*.yaml); every other `--a.b=value` sets one
field, its value read as YAML. Unknown keys, missing required keys and values of the wrong type
are ConfigErrors naming the key.

Layout (see models/configs/pusht_small.yaml):

    data:            DataConfig: the labelled dataset, action-free ones, the feature cache, the split
    encoder:         EncoderConfig (rla_wm.models.encoder)
    rla, world_model, regression, policy:
                     the sizes you choose; what training measures on the data (feature sizes, the
                     encoder id, action and state ranges, scales) is filled in by training
    policy_training: PolicyTrainingConfig: the policy's batch mix and loss weights
    train:           {rla, world_model, regression, policy}: TrainConfig of each training command
    evaluate:        EvaluateConfig

Relative paths under `data:` are relative to the config file's folder, also when given on the
command line (the experiment's data lives next to its config); without a config file, to the
current folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import draccus
import yaml

from rla_wm.models.encoder import EncoderConfig
from rla_wm.models.policy import PolicyConfig
from rla_wm.models.regression import RegressionConfig
from rla_wm.models.rla import RLAConfig
from rla_wm.models.world_model import WorldModelConfig

ConfigT = TypeVar("ConfigT")

MIXED_PRECISION = ("no", "fp16", "bf16")


class ConfigError(ValueError):
    """The experiment configuration is missing something, has a key no section knows, or a bad value."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class DatasetRef:
    dataset_root: str
    repo_id: str


@dataclass(frozen=True)
class DataConfig:
    """The `data:` section."""

    # The labelled LeRobot dataset (frames, states, actions).
    dataset_root: str
    repo_id: str
    # Feature caches live in <cache_root>/<encoder id>/<repo id>.
    cache_root: str = "cache"
    # Video-only datasets: the autoencoder and the policy's RLA head also learn from them.
    action_free: tuple[DatasetRef, ...] = ()
    # More labelled datasets for the world models (RLA-WM, regression) and the autoencoder, used whole:
    # e.g. noisy-expert or play recordings, so a planner's candidates that miss the object are seen too.
    # The held-out split and the policy use dataset_root alone.
    extra_labelled: tuple[DatasetRef, ...] = ()
    # Share of the labelled episodes held out of training (for `evaluate`), split by `seed`.
    held_out_fraction: float = 0.2
    seed: int = 0
    # The camera a ViT encoder reads (e.g. observation.images.front), needed when the datasets have
    # several; empty: the dataset's only camera (or observation.image).
    image_key: str = ""

    def __post_init__(self) -> None:
        _require(
            0.0 < self.held_out_fraction < 1.0,
            f"data.held_out_fraction must be in (0, 1), got {self.held_out_fraction}",
        )

    @property
    def labelled(self) -> DatasetRef:
        return DatasetRef(self.dataset_root, self.repo_id)


@dataclass(frozen=True)
class RLASettings:
    """The `rla:` section: the autoencoder's sizes (feature sizes and residual scale come from the data)."""

    latent_tokens: int = RLAConfig.latent_tokens
    latent_dim: int = RLAConfig.latent_dim
    width: int = RLAConfig.width
    encoder_depth: int = RLAConfig.encoder_depth
    decoder_depth: int = RLAConfig.decoder_depth
    heads: int = RLAConfig.heads
    mlp_ratio: float = RLAConfig.mlp_ratio


@dataclass(frozen=True)
class WorldModelSettings:
    """The `world_model:` section: RLA-WM's sizes (latent sizes come from the autoencoder)."""

    max_horizon: int = WorldModelConfig.max_horizon
    width: int = WorldModelConfig.width
    condition_depth: int = WorldModelConfig.condition_depth
    flow_depth: int = WorldModelConfig.flow_depth
    heads: int = WorldModelConfig.heads
    mlp_ratio: float = WorldModelConfig.mlp_ratio


@dataclass(frozen=True)
class RegressionSettings:
    """The `regression:` section: the regression baseline's sizes."""

    max_horizon: int = RegressionConfig.max_horizon
    width: int = RegressionConfig.width
    depth: int = RegressionConfig.depth
    heads: int = RegressionConfig.heads
    mlp_ratio: float = RegressionConfig.mlp_ratio


@dataclass(frozen=True)
class PolicySettings:
    """The `policy:` section: the world action model (normalisation and latent sizes come from the data)."""

    chunk_length: int = PolicyConfig.chunk_length
    # The RLA head predicts z between frame t and t + rla_horizon; keep it inside the
    # autoencoder's training gaps (train.rla min_gap..max_gap).
    rla_horizon: int = PolicyConfig.rla_horizon
    # The action head attends to the predicted z.
    action_reads_rla: bool = PolicyConfig.action_reads_rla
    token_merge: int = PolicyConfig.token_merge
    token_norm: bool = PolicyConfig.token_norm
    # "flow" (samples one mode of multimodal demonstrations) or "regression" (their mean).
    action_head: str = PolicyConfig.action_head
    flow_steps: int = PolicyConfig.flow_steps
    width: int = PolicyConfig.width
    depth: int = PolicyConfig.depth
    head_depth: int = PolicyConfig.head_depth
    heads: int = PolicyConfig.heads
    mlp_ratio: float = PolicyConfig.mlp_ratio


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
    # > 0: a scene head learns to read the simulator's scene state (observation.environment_state,
    # e.g. Push-T's block pose) out of the trunk on labelled windows. Training-only supervision
    # that makes the trunk see the block; the policy never takes the scene as input.
    scene_weight: float = 0.0
    # Start a window at every frame, padding chunks and RLA targets past an episode's end with its
    # last action and frame (Diffusion Policy's and LeRobot's padding). Off: windows end inside the
    # episode, which loses each episode's last chunk_length frames: little of Push-T's 300-frame
    # episodes, the whole final push of the SO-101's ~19-frame demonstrations.
    pad_episode_end: bool = False

    def __post_init__(self) -> None:
        _require(self.scene_weight >= 0.0, f"policy_training.scene_weight must be >= 0, got {self.scene_weight}")
        _require(
            0.0 < self.labelled_fraction <= 1.0,
            f"policy_training.labelled_fraction must be in (0, 1], got {self.labelled_fraction}",
        )
        _require(
            self.max_labelled_episodes >= 0,
            f"policy_training.max_labelled_episodes must be >= 0, got {self.max_labelled_episodes}",
        )
        _require(
            0.0 <= self.state_dropout < 1.0,
            f"policy_training.state_dropout must be in [0, 1), got {self.state_dropout}",
        )


@dataclass(frozen=True)
class TrainConfig:
    """One training command's optimisation (a `train.<model>:` section)."""

    steps: int = 2000
    # The global batch: split evenly across the processes of a multi-process run, so a run
    # takes the same steps on the same data whatever the number of processes.
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    # The saved weights are an exponential moving average of the trained ones with this decay
    # (0: the last weights). Diffusion Policy's recipe: a sampled policy is only as steady as its
    # weights, and single steps of a noisy flow-matching loss move them around.
    ema_decay: float = 0.0
    log_every: int = 25
    # Seeds the model's initialisation and the batches (the same in every process); each
    # process draws its own noise from seed + its rank.
    seed: int = 0
    num_workers: int = 0
    # accelerate's mixed precision: "no", "fp16" or "bf16" (GPU).
    mixed_precision: str = "no"
    # Frame gap h for the autoencoder (uniform in [min_gap, max_gap]) and chunk length for predictors.
    min_gap: int = 2
    max_gap: int = 20
    horizon: int = 5

    def __post_init__(self) -> None:
        _require(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        _require(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _require(self.lr > 0, f"lr must be positive, got {self.lr}")
        _require(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        _require(self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}")
        _require(0.0 <= self.ema_decay < 1.0, f"ema_decay must be in [0, 1), got {self.ema_decay}")
        _require(self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}")
        _require(
            self.mixed_precision in MIXED_PRECISION,
            f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}",
        )
        _require(1 <= self.min_gap <= self.max_gap, f"need 1 <= min_gap <= max_gap, got {self.min_gap}, {self.max_gap}")
        _require(self.horizon >= 1, f"horizon must be >= 1, got {self.horizon}")


@dataclass(frozen=True)
class TrainSections:
    """The `train:` section: one TrainConfig per training command."""

    rla: TrainConfig = field(default_factory=TrainConfig)
    world_model: TrainConfig = field(default_factory=TrainConfig)
    regression: TrainConfig = field(default_factory=TrainConfig)
    policy: TrainConfig = field(default_factory=TrainConfig)


@dataclass(frozen=True)
class EvaluateConfig:
    """The `evaluate:` section (`rla-wm evaluate` and `evaluate-policy`)."""

    # Chunks of the world model's horizon rolled out per window.
    chunks: int = 3
    max_windows: int = 64
    # Euler steps of the flow-matching sampler.
    euler_steps: int = 30
    seed: int = 0
    # RLA-WM samples per window: 1 scores one sample; more also scores their mean (evaluate_predictors).
    samples: int = 1
    policy_max_windows: int = 512


@dataclass(frozen=True, kw_only=True)
class Experiment:
    """Everything an `rla-wm` command reads from the experiment's YAML file."""

    data: DataConfig
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    rla: RLASettings = field(default_factory=RLASettings)
    world_model: WorldModelSettings = field(default_factory=WorldModelSettings)
    regression: RegressionSettings = field(default_factory=RegressionSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    policy_training: PolicyTrainingConfig = field(default_factory=PolicyTrainingConfig)
    train: TrainSections = field(default_factory=TrainSections)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


# --------------------------------------------------------------------------- the loader

CONFIG_PATH_ARG = "--config_path"
ExperimentT = TypeVar("ExperimentT", bound=Experiment)


def config_path_of(args: Sequence[str]) -> Path | None:
    """The `--config_path` file of a command line (`--config_path=F` or `--config_path F`), if any."""
    for index, arg in enumerate(args):
        if arg.startswith(CONFIG_PATH_ARG + "="):
            return Path(arg.split("=", 1)[1])
        if arg == CONFIG_PATH_ARG and index + 1 < len(args):
            return Path(args[index + 1])
    return None


def _describe(err: BaseException) -> str:
    """draccus's error on one line, or the ConfigError of a section's own check when that is the cause."""
    cause = err.__cause__
    while cause is not None:
        if isinstance(cause, ConfigError):
            return str(cause)
        cause = cause.__cause__
    return re.sub(r"\s+", " ", str(err)).strip()


def _section_type(kind: type, dotted: str) -> type | None:
    """The dataclass type of field `dotted` ("train.rla") of `kind`, or None if it is not a section."""
    current: object = kind
    for name in dotted.split("."):
        if not (isinstance(current, type) and dataclasses.is_dataclass(current)):
            return None
        hints = typing.get_type_hints(current)
        if name not in hints:
            return None
        current = hints[name]
    return current if isinstance(current, type) and dataclasses.is_dataclass(current) else None


def _refuse_values_for_sections(kind: type, args: list[str]) -> None:
    """`--rla=runs/rla` (a value for a whole section, e.g. an old-style flag) would otherwise fail
    deep inside draccus with an unreadable message."""
    for index, arg in enumerate(args):
        if not arg.startswith("--"):
            continue
        name, separator, value = arg[2:].partition("=")
        section = _section_type(kind, name)
        if section is None:
            continue
        if not separator:
            value = args[index + 1] if index + 1 < len(args) else ""
        try:
            is_mapping = isinstance(yaml.safe_load(value), dict)
        except yaml.YAMLError:
            is_mapping = False
        if not is_mapping:
            example = dataclasses.fields(section)[0].name
            raise ConfigError(
                f"--{name} is the `{name}:` section ({section.__name__}), not a value: set its fields, "
                f"e.g. --{name}.{example}=..."
            )


def parse_config(kind: type[ConfigT], args: Sequence[str], prog: str | None = None) -> ConfigT:
    """Build `kind` from `--config_path=FILE` (YAML) and `--a.b=value` overrides: the one loader.

    Raises ConfigError for a missing file, an unreadable YAML, an unknown key, a missing required
    key or a value of the wrong type. An Experiment's relative data paths are made absolute here.
    """
    args = list(args)
    config_path = config_path_of(args)
    where = f"{config_path}" if config_path is not None else "the command line"
    if config_path is not None:
        if not config_path.is_file():
            raise ConfigError(f"experiment config {config_path} does not exist")
        try:
            top = yaml.safe_load(config_path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"{where}: not valid YAML: {err}") from err
        if not isinstance(top, dict):
            raise ConfigError(f"{where}: expected a mapping of sections (data:, train:, ...), got {type(top).__name__}")
    _refuse_values_for_sections(kind, args)
    try:
        # No abbreviations: `--config X` or `--wm=...` (old flags) must be refused, not guessed.
        parser = draccus.argparsing.ArgumentParser(
            config_class=kind, exit_on_error=False, prog=prog, allow_abbrev=False
        )
        config = parser.parse_args(args)
    except (draccus.utils.DraccusException, argparse.ArgumentError, yaml.YAMLError) as err:
        raise ConfigError(f"{where}: {_describe(err)}") from err
    if isinstance(config, Experiment):
        # A path written in the YAML file is relative to that file; one typed on the command line, to
        # the directory the command runs in (what a shell user expects).
        file_base = config_path.resolve().parent if config_path is not None else Path.cwd()
        typed = {
            key
            for key in ("dataset_root", "cache_root", "action_free", "extra_labelled")
            if _typed(args, f"data.{key}")
        }
        config = with_data_paths_from(config, file_base, Path.cwd(), typed)
    return config


def _typed(args: Sequence[str], key: str) -> bool:
    """Whether `--key=value` or `--key value` is among the command-line arguments."""
    return any(arg == f"--{key}" or arg.startswith(f"--{key}=") for arg in args)


def load_experiment(path: str | Path, overrides: Sequence[str] = ()) -> Experiment:
    """The Experiment of a YAML file, with `--a.b=value` overrides (parse_config for an Experiment)."""
    return parse_config(Experiment, [f"{CONFIG_PATH_ARG}={path}", *overrides])


def with_data_paths_from(
    experiment: ExperimentT, base: Path, typed_base: Path | None = None, typed: frozenset[str] | set[str] = frozenset()
) -> ExperimentT:
    """The experiment with its relative data paths made absolute: against `typed_base` for the data
    fields named in `typed` (given on the command line), against `base` for the others."""

    def absolute(path: str, field: str) -> str:
        candidate = Path(path).expanduser()
        root = typed_base if typed_base is not None and field in typed else base
        return str(candidate if candidate.is_absolute() else (root / candidate).resolve())

    data = experiment.data
    return dataclasses.replace(
        experiment,
        data=dataclasses.replace(
            data,
            dataset_root=absolute(data.dataset_root, "dataset_root"),
            cache_root=absolute(data.cache_root, "cache_root"),
            action_free=tuple(
                DatasetRef(absolute(ref.dataset_root, "action_free"), ref.repo_id) for ref in data.action_free
            ),
            extra_labelled=tuple(
                DatasetRef(absolute(ref.dataset_root, "extra_labelled"), ref.repo_id) for ref in data.extra_labelled
            ),
        ),
    )
