"""Checkpoints as a folder: model.safetensors + config.json (the config the model was built with)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from rla_wm.assets import resolve_model_path

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

ConfigT = TypeVar("ConfigT", bound="DataclassInstance")
ModelT = TypeVar("ModelT", bound="Checkpointable[Any]")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or was made for another model or config."""


class CheckpointConfigError(CheckpointError, ValueError):
    """A checkpoint's config.json lacks a section it must have, or has one of the wrong type."""


def first_non_finite(
    state: dict[str, torch.Tensor], order: list[str] | None = None, skip_inf: set[str] | frozenset = frozenset()
) -> str | None:
    """Describe the first floating-point tensor of `state` holding NaN or inf, or None if all are finite.

    `order` is the order to look in (e.g. the model's state_dict order; default: the dict's).
    Tensors named in `skip_inf` may hold +-inf (e.g. an unbounded range buffer) but not NaN.
    """
    for name in order or list(state):
        value = state.get(name)
        if value is None or not value.is_floating_point():
            continue
        bad = torch.isnan(value) if name in skip_inf else ~torch.isfinite(value)
        count = int(bad.sum())
        if count:
            kinds = [
                kind for kind, mask in (("NaN", torch.isnan(value)), ("inf", torch.isinf(value))) if bool(mask.any())
            ]
            return f"tensor {name!r} {tuple(value.shape)} has {count} of {value.numel()} values {' / '.join(kinds)}"
    return None


def save_checkpoint(
    folder: str | Path, model: torch.nn.Module, kind: str, config: DataclassInstance, extra: dict | None = None
) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: value.detach().cpu().contiguous() for name, value in model.state_dict().items()}
    save_file(tensors, str(folder / "model.safetensors"))
    meta = {"kind": kind, "config": dataclasses.asdict(config), **(extra or {})}
    (folder / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return folder


def read_checkpoint_meta(spec: str | Path, kind: str) -> dict:
    folder = Path(resolve_model_path(str(spec)))
    meta_path = folder / "config.json"
    if not meta_path.is_file() or not (folder / "model.safetensors").is_file():
        raise CheckpointError(f"{spec}: not a checkpoint folder (needs config.json and model.safetensors)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{meta_path}: corrupt config ({err})") from err
    if not isinstance(meta, dict):
        raise CheckpointConfigError(
            f"{meta_path}: expected a JSON object with 'kind' and 'config', got a {type(meta).__name__}"
        )
    if meta.get("kind") != kind:
        raise CheckpointError(f"{spec}: holds a {meta.get('kind')!r} model, expected {kind!r} ({meta_path})")
    if "config" not in meta:
        raise CheckpointConfigError(
            f"{meta_path}: no 'config' section (the {kind} model's configuration, "
            f"written by save_checkpoint); the file has only {sorted(meta)}"
        )
    if not isinstance(meta["config"], dict):
        raise CheckpointConfigError(
            f"{meta_path}: the 'config' section must be an object of config fields, "
            f"got a {type(meta['config']).__name__}"
        )
    return meta


def load_state_into(spec: str | Path, model: torch.nn.Module) -> None:
    """Load the folder's weights into `model` (strict); CheckpointError if unreadable, mismatched or
    not finite. A NaN/inf weight would only show up later as every prediction being NaN (a policy
    whose every chunk is dropped), so it is refused here, naming the file and the first bad tensor.
    Buffers (config-derived ranges) may hold +-inf, never NaN."""
    folder = Path(resolve_model_path(str(spec)))
    weights = folder / "model.safetensors"
    try:
        state = load_file(str(weights))
    except Exception as err:  # safetensors raises several types for truncated/corrupt files
        raise CheckpointError(f"{weights} is unreadable: {err}") from err
    order = list(model.state_dict()) + sorted(set(state) - set(model.state_dict()))
    buffers = {name for name, _ in model.named_buffers()}
    bad = first_non_finite(state, order, skip_inf=buffers)
    if bad is not None:
        raise CheckpointError(f"{weights}: non-finite weights, refusing to load: {bad} (a diverged training run?)")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{folder}: weights do not fit the configured model: {err}") from err


def config_from_dict(config_type: type[ConfigT], values: dict) -> ConfigT:
    """Rebuild a config dataclass, rejecting unknown keys (a sign of a mismatched checkpoint)."""
    known = {f.name for f in dataclasses.fields(config_type)}
    unknown = set(values) - known
    if unknown:
        raise CheckpointError(f"config has keys {sorted(unknown)} unknown to {config_type.__name__}")
    fields = {}
    for f in dataclasses.fields(config_type):
        if f.name in values:
            value = values[f.name]
            fields[f.name] = tuple(value) if isinstance(value, list) else value
    return config_type(**fields)


class Checkpointable(nn.Module, Generic[ConfigT]):
    """Base of the nn.Modules built from one config dataclass: save/load as a checkpoint folder.

    A subclass sets `checkpoint_kind` and `config_type` and passes its config to `__init__`.
    """

    checkpoint_kind: str
    config_type: type[ConfigT]

    def __init__(self, config: ConfigT) -> None:
        super().__init__()
        self.config = config

    def save(self, folder: str | Path, extra: dict | None = None) -> Path:
        return save_checkpoint(folder, self, self.checkpoint_kind, self.config, extra)

    @classmethod
    def load(cls: type[ModelT], spec: str | Path) -> tuple[ModelT, dict]:
        """Load a checkpoint folder: the model in eval mode and the checkpoint's metadata."""
        meta = read_checkpoint_meta(spec, cls.checkpoint_kind)
        try:
            model = cls(config_from_dict(cls.config_type, meta["config"]))
        except (CheckpointError, TypeError, ValueError) as err:  # unknown keys; values the model refuses
            meta_path = Path(resolve_model_path(str(spec))) / "config.json"
            raise CheckpointConfigError(
                f"{meta_path}: its 'config' section does not build a {cls.__name__}: {err}"
            ) from err
        load_state_into(spec, model)
        return model.eval(), meta


def export_checkpoint(source: str | Path, destination: str | Path, half: bool = True) -> Path:
    """Copy a checkpoint folder for shipping, floating-point weights stored as float16 when `half`.

    Loading is unchanged: `load_state_dict` copies float16 values into the float32
    parameters, so a shipped model runs in float32 with weights rounded to float16.
    """
    source_folder = Path(resolve_model_path(str(source)))
    meta_path = source_folder / "config.json"
    if not meta_path.is_file():
        raise CheckpointError(f"{source}: not a checkpoint folder (no config.json)")
    try:
        state = load_file(str(source_folder / "model.safetensors"))
    except Exception as err:
        raise CheckpointError(f"{source_folder}/model.safetensors is unreadable: {err}") from err
    bad = first_non_finite(state)
    if bad is not None:
        raise CheckpointError(f"{source_folder}/model.safetensors: non-finite weights, not exporting: {bad}")
    if half:
        for name, value in state.items():
            if value.is_floating_point():
                if not torch.isfinite(value.half()).all():
                    raise CheckpointError(f"{source}: weight {name} overflows float16; export with half=False")
                state[name] = value.half()
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    save_file(state, str(destination / "model.safetensors"))
    meta = json.loads(meta_path.read_text())
    meta["stored_dtype"] = "float16" if half else "float32"
    (destination / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return destination
