"""Feature encoder: loading real transformers models from local folders, shapes, bad input."""

import numpy as np
import pytest
import torch

from rla_wm.assets import resolve_model_path
from rla_wm.models.encoder import EncoderConfig, FeatureEncoder, FeatureEncoderError, make_random_vit


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return make_random_vit(
        tmp_path_factory.mktemp("enc") / "tiny", hidden_size=32, layers=1, heads=2, patch_size=14, image_size=56
    )


def test_patch_tokens_shape_without_class_token(tiny_folder):
    encoder = FeatureEncoder(EncoderConfig(model=str(tiny_folder), resolution=56))
    frames = np.random.default_rng(0).integers(0, 255, (3, 96, 96, 3), dtype=np.uint8)
    tokens = encoder(frames)
    assert tokens.shape == (3, 16, 32)
    assert encoder.grid.height == encoder.grid.width == 4
    # Class token removed: the output must equal hidden states 1: of the raw model.
    pixels = encoder.preprocess(frames)
    raw = encoder.model(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(tokens, raw[:, 1:])


def test_batched_equals_single(tiny_folder):
    encoder = FeatureEncoder(EncoderConfig(model=str(tiny_folder), resolution=56))
    frames = np.random.default_rng(1).integers(0, 255, (2, 64, 80, 3), dtype=np.uint8)
    batched = encoder(frames)
    torch.testing.assert_close(batched[1], encoder(frames[1])[0], atol=1e-5, rtol=1e-5)


def test_float_and_uint8_inputs_agree(tiny_folder):
    encoder = FeatureEncoder(EncoderConfig(model=str(tiny_folder), resolution=56))
    frames = np.random.default_rng(2).integers(0, 255, (1, 56, 56, 3), dtype=np.uint8)
    as_float = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(encoder(frames), encoder(as_float))


def test_save_and_reload_round_trip(tiny_folder, tmp_path):
    first = FeatureEncoder(EncoderConfig(model=str(tiny_folder), resolution=56))
    first.model.save_pretrained(tmp_path / "copy")
    second = FeatureEncoder(EncoderConfig(model=str(tmp_path / "copy"), resolution=56))
    frames = np.full((1, 56, 56, 3), 100, dtype=np.uint8)
    torch.testing.assert_close(first(frames), second(frames))


def test_register_tokens_are_dropped(tmp_path):
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    config = Dinov2WithRegistersConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        patch_size=14,
        image_size=56,
        num_register_tokens=4,
    )
    Dinov2WithRegistersModel(config).save_pretrained(tmp_path / "reg")
    encoder = FeatureEncoder(EncoderConfig(model=str(tmp_path / "reg"), resolution=56))
    assert encoder.prefix_tokens == 5
    assert encoder(np.zeros((1, 56, 56, 3), dtype=np.uint8)).shape == (1, 16, 32)


def test_random_dinov3_loads_with_its_register_tokens_dropped(tmp_path):
    folder = make_random_vit(tmp_path / "v3", family="dinov3", hidden_size=32, layers=1, heads=2, patch_size=16)
    encoder = FeatureEncoder(EncoderConfig(model=str(folder), resolution=64))
    assert encoder.prefix_tokens == 5  # class token + 4 registers, as DINOv3 ViT-L/16 ships
    tokens = encoder(np.zeros((2, 480, 640, 3), dtype=np.uint8))
    assert tokens.shape == (2, 16, 32) and torch.isfinite(tokens).all()


def test_random_vit_refuses_an_unknown_family(tmp_path):
    with pytest.raises(FeatureEncoderError, match="family"):
        make_random_vit(tmp_path / "x", family="clip")


def test_shipped_builtin_encoder_loads():
    encoder = FeatureEncoder(EncoderConfig())
    assert encoder.encoder_id == "builtin:dinov2-tiny-random@224"
    assert encoder(np.zeros((1, 96, 96, 3), dtype=np.uint8)).shape == (1, 256, 192)


@pytest.mark.parametrize(
    "frames, fragment",
    [
        (np.zeros((1, 56, 56, 4), dtype=np.uint8), "RGB"),
        (np.zeros((56, 56), dtype=np.uint8), "shape"),
        (np.zeros((1, 56, 56, 3), dtype=np.int32), "int32"),
        (torch.full((1, 3, 56, 56), float("nan")), "NaN"),
        (np.zeros((0, 56, 56, 3), dtype=np.uint8), "empty"),
    ],
)
def test_bad_frames_raise_clear_errors(tiny_folder, frames, fragment):
    encoder = FeatureEncoder(EncoderConfig(model=str(tiny_folder), resolution=56))
    with pytest.raises(FeatureEncoderError, match=fragment):
        encoder(frames)


def test_bad_configs_raise(tiny_folder, tmp_path):
    with pytest.raises(FeatureEncoderError, match="multiple of the patch size"):
        FeatureEncoder(EncoderConfig(model=str(tiny_folder), resolution=50))
    with pytest.raises(FeatureEncoderError, match="cannot load"):
        FeatureEncoder(EncoderConfig(model=str(tmp_path / "missing-but-local"), resolution=56))
    with pytest.raises(FeatureEncoderError, match="dtype"):
        FeatureEncoder(EncoderConfig(model=str(tiny_folder), dtype="int8"))
    with pytest.raises(FileNotFoundError, match="no shipped checkpoint"):
        resolve_model_path("builtin:does-not-exist")


def test_half_precision_output_dtype(tiny_folder):
    # bf16 runs on CPU too; on a GPU the same switch halves memory and time.
    encoder = FeatureEncoder(EncoderConfig(model=str(tiny_folder), resolution=56, dtype="bfloat16"))
    frames = np.random.default_rng(3).integers(0, 255, (2, 56, 56, 3), dtype=np.uint8)
    tokens = encoder(frames)
    assert tokens.dtype == torch.bfloat16
    reference = FeatureEncoder(EncoderConfig(model=str(tiny_folder), resolution=56))(frames)
    assert (tokens.float() - reference).abs().mean() < 0.05 * reference.abs().mean()
