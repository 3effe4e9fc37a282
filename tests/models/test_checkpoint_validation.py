"""Checkpoints refused at load time with an error naming the file: non-finite weights, a config.json
without its config section. (Before, NaN weights loaded and every chunk was dropped later, and a
missing section was a bare KeyError.)"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from rla_wm.models.checkpoint import CheckpointConfigError, CheckpointError, export_checkpoint
from rla_wm.models.policy import Policy, PolicyConfig
from rla_wm.models.rla import RLAAutoencoder, RLAConfig

from conftest import tiny_policy_config

CONFIG = tiny_policy_config()


def saved(tmp_path, name: str = "ckpt", config: PolicyConfig = CONFIG):
    torch.manual_seed(0)
    Policy(config).save(tmp_path / name)
    return tmp_path / name


def poison(folder, name: str, value: float, index: int = 3) -> None:
    weights = folder / "model.safetensors"
    state = load_file(str(weights))
    flat = state[name].flatten().clone()
    flat[index] = value
    state[name] = flat.reshape(state[name].shape)
    save_file(state, str(weights))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_weights_are_refused_naming_the_file_and_the_tensor(tmp_path, value):
    folder = saved(tmp_path)
    poison(folder, "trunk.0.self_attention.query.weight", value)
    with pytest.raises(CheckpointError, match="non-finite") as caught:
        Policy.load(folder)
    message = str(caught.value)
    assert str(folder / "model.safetensors") in message
    assert "'trunk.0.self_attention.query.weight'" in message and "has 1 of" in message


def test_the_first_bad_tensor_in_model_order_is_named(tmp_path):
    folder = saved(tmp_path)
    poison(folder, "action_out.1.weight", math.nan)
    poison(folder, "token_proj.1.weight", math.nan)  # earlier in the model
    with pytest.raises(CheckpointError, match=r"'token_proj\.1\.weight'"):
        Policy.load(folder)


def test_buffers_may_hold_inf_bounds_but_never_nan(tmp_path):
    unbounded = tiny_policy_config(action_low=(-math.inf, -math.inf), action_high=(math.inf, math.inf))
    folder = saved(tmp_path, "unbounded", unbounded)
    policy, _ = Policy.load(folder)  # config-derived ranges: +-inf is a valid bound
    assert torch.isinf(policy.action_low).all()
    poison(folder, "action_low", math.nan, index=0)
    with pytest.raises(CheckpointError, match="'action_low'.*NaN"):
        Policy.load(folder)


def test_other_models_are_refused_the_same_way_and_export_refuses_too(tmp_path):
    RLAAutoencoder(
        RLAConfig(
            token_dim=16,
            num_tokens=16,
            latent_tokens=2,
            latent_dim=4,
            width=32,
            encoder_depth=1,
            decoder_depth=1,
            heads=2,
        )
    ).save(tmp_path / "rla")
    name = next(iter(load_file(str(tmp_path / "rla" / "model.safetensors"))))
    poison(tmp_path / "rla", name, math.nan, index=0)
    with pytest.raises(CheckpointError, match="non-finite"):
        RLAAutoencoder.load(tmp_path / "rla")
    with pytest.raises(CheckpointError, match="non-finite"):
        export_checkpoint(tmp_path / "rla", tmp_path / "out")


def test_config_json_without_its_config_section_is_a_value_error_naming_the_file(tmp_path):
    folder = saved(tmp_path)
    meta_path = folder / "config.json"
    meta = json.loads(meta_path.read_text())
    del meta["config"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="no 'config' section") as caught:
        Policy.load(folder)
    assert str(meta_path) in str(caught.value)
    assert isinstance(caught.value, CheckpointError)  # callers catching CheckpointError still catch it

    meta["config"] = [1, 2]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointConfigError, match="must be an object"):
        Policy.load(folder)
    meta_path.write_text("[]")
    with pytest.raises(CheckpointConfigError, match=str(meta_path)):
        Policy.load(folder)


def test_a_config_the_model_refuses_names_the_file(tmp_path):
    folder = saved(tmp_path)
    meta_path = folder / "config.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["not_a_field"] = 1
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointConfigError, match="not_a_field") as caught:
        Policy.load(folder)
    assert str(meta_path) in str(caught.value)
    del meta["config"]["not_a_field"]
    meta["config"]["max_delta"] = [-1.0, 1.0]  # the model's own check
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointConfigError, match="max_delta must be positive"):
        Policy.load(folder)


def test_shipped_policy_checkpoint_passes_the_checks():
    policy, _ = Policy.load("builtin:sim-pusht-policy")
    assert policy.feature_grid == (16, 16, 192)
