"""Shipping checkpoints as float16: half the bytes, same model within float16 rounding."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from rla_wm.models.checkpoint import CheckpointError, export_checkpoint
from rla_wm.models.rla import RLAAutoencoder, RLAConfig

CONFIG = RLAConfig(
    token_dim=16, num_tokens=9, latent_tokens=2, latent_dim=4, width=32, encoder_depth=1, decoder_depth=1, heads=2
)


def test_half_export_halves_the_file_and_keeps_outputs(tmp_path):
    torch.manual_seed(0)
    model = RLAAutoencoder(CONFIG).eval()
    model.save(tmp_path / "full")
    export_checkpoint(tmp_path / "full", tmp_path / "half")
    full_bytes = (tmp_path / "full" / "model.safetensors").stat().st_size
    half_bytes = (tmp_path / "half" / "model.safetensors").stat().st_size
    assert half_bytes < 0.6 * full_bytes
    assert all(
        v.dtype == torch.float16
        for v in load_file(str(tmp_path / "half" / "model.safetensors")).values()
        if v.is_floating_point()
    )
    assert json.loads((tmp_path / "half" / "config.json").read_text())["stored_dtype"] == "float16"

    loaded, _ = RLAAutoencoder.load(tmp_path / "half")
    assert all(p.dtype == torch.float32 for p in loaded.parameters())  # runs in float32
    current, future = torch.randn(2, 9, 16), torch.randn(2, 9, 16)
    z_full, z_half = model.encode(current, future), loaded.encode(current, future)
    assert not torch.equal(z_full, z_half)  # the weights really were rounded
    torch.testing.assert_close(z_half, z_full, rtol=2e-2, atol=2e-2)


def test_export_refuses_overflow_and_missing_folders(tmp_path):
    model = RLAAutoencoder(CONFIG)
    model.save(tmp_path / "big")
    state = load_file(str(tmp_path / "big" / "model.safetensors"))
    first = next(name for name, value in state.items() if value.is_floating_point())
    state[first] = state[first] + 1e6  # beyond float16's range (65504)
    save_file(state, str(tmp_path / "big" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="overflows float16"):
        export_checkpoint(tmp_path / "big", tmp_path / "out")
    export_checkpoint(tmp_path / "big", tmp_path / "out32", half=False)  # float32 export still possible
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        export_checkpoint(tmp_path / "absent", tmp_path / "out2")
