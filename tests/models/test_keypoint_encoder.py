"""The self-supervised keypoint encoder (rla_wm.models.keypoint_encoder): the Gaussian bottleneck, that
training without labels puts the points where things move, saving, loading and refusing frames."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rla_wm.envs.pusht.frames import STATE_NAMES, StateFrames
from rla_wm.evaluation.probe import fit_probe
from rla_wm.models.encoder import EncoderConfig, load_encoder
from rla_wm.models.keypoint_encoder import (
    CONFIG_FILE,
    KeypointAutoencoder,
    KeypointAutoencoderConfig,
    KeypointEncoder,
    gaussian_maps,
    save_keypoint_encoder,
    shipped_spec,
)
from rla_wm.models.keypoint_net import PoseEstimatorError, images_to_input
from rla_wm.training.train_keypoint_encoder import (
    KeypointTrainConfig,
    median_frame,
    train_keypoint_encoder,
    weighted_reconstruction_loss,
)

TINY = KeypointAutoencoderConfig(image_size=32, width=8, num_keypoints=2, render_size=8, target_size=16, sigma=0.1)


def square_frames(count: int, seed: int) -> StateFrames:
    """A red 6x6 square at a random place on a grey 32x32 frame: the only thing that moves. The logged
    "state" is the square's centre (in the agent columns) and zeros."""
    rng = np.random.default_rng(seed)
    images = np.full((count, 32, 32, 3), 120, dtype=np.uint8)
    state = np.zeros((count, len(STATE_NAMES)), dtype=np.float32)
    for index in range(count):
        left, top = rng.integers(2, 24, 2)
        images[index, top : top + 6, left : left + 6] = (230, 40, 40)
        state[index, :2] = (left + 3, top + 3)
    return StateFrames(images, state, np.arange(count) // 8)


def test_a_gaussian_map_peaks_at_its_point():
    points = torch.tensor([[[-0.75, 0.25], [0.5, -0.5]]])
    maps = gaussian_maps(points, size=8, sigma=0.1)
    assert maps.shape == (1, 2, 8, 8)
    # Cell centres are at -0.875, -0.625, ..., 0.875: (-0.75, 0.25) lies between columns 0/1 and on row 4/5's edge.
    row, column = divmod(int(maps[0, 1].argmax()), 8)
    assert (row, column) in {(1, 5), (1, 6), (2, 5), (2, 6)}
    assert float(maps.max()) <= 1.0 and float(maps[0, 0, 7, 7]) < 1e-6


class PaintsThe(torch.nn.Module):
    """A decoder that always paints `picture`, whatever the points."""

    def __init__(self, picture: torch.Tensor) -> None:
        super().__init__()
        self.picture = picture

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.picture.expand(len(points), -1, -1, -1)


def test_the_median_frame_is_the_static_scene_and_what_moves_weighs_more_in_the_loss():
    model = KeypointAutoencoder(TINY)
    frames = square_frames(64, seed=3)
    background = median_frame(model, frames.images)
    assert background.shape == (3, 16, 16)
    assert float((background - 120 / 255).abs().max()) < 0.02  # the square is elsewhere in most frames
    # A decoder that paints only the background is wrong exactly where the square is.
    model.decoder = PaintsThe(background)
    images = images_to_input(frames.images[:8], TINY.image_size, torch.device("cpu"))
    plain = model.reconstruction_errors(images)[1].mean()
    assert torch.allclose(weighted_reconstruction_loss(model, images, background, 0.0), plain, rtol=1e-4)
    # The square covers ~4 % of the pixels: weighting it 11x raises the loss ~8x.
    assert weighted_reconstruction_loss(model, images, background, 10.0) > 5 * plain


def test_training_without_labels_puts_the_points_on_what_moves(tmp_path):
    torch.manual_seed(0)
    frames, held_out = square_frames(768, seed=0), square_frames(256, seed=1)
    config = KeypointTrainConfig(steps=400, batch_size=32, lr=3e-3, warmup_steps=20, evaluate_every=400)
    model, log = train_keypoint_encoder(frames, held_out, tmp_path / "run", TINY, config, progress=False)
    assert log[-1]["loss"] < 0.5 * log[0]["loss"]
    encoder = KeypointEncoder(model)
    train_points = encoder(frames.images).reshape(len(frames), -1).numpy()
    test_points = encoder(held_out.images).reshape(len(held_out), -1).numpy()
    result = fit_probe(
        train_points, frames.state[:, :2], frames.episode, test_points, held_out.state[:, :2], ("x", "y")
    )
    # The constant predictor is off by ~5.5 px; a linear read-out of the points must find the square.
    assert (result.probe_error < 0.4 * result.constant_error).all(), (result.probe_error, result.constant_error)
    saved = json.loads((tmp_path / "run" / "keypoint_encoder" / "metrics.json").read_text())
    assert saved["step"] == 399 and set(saved["linear_probe"]) == set(STATE_NAMES)


def test_a_saved_encoder_loads_through_load_encoder_with_one_feature_space_and_refuses_other_scenes(tmp_path):
    torch.manual_seed(0)
    model = KeypointAutoencoder(TINY)
    frames = square_frames(16, seed=2)
    scene_errors = KeypointEncoder(model).points_and_errors(frames.images)[1]
    folder = save_keypoint_encoder(model, tmp_path / "sim-keypoints", 1.5 * float(scene_errors.max()))
    encoder = load_encoder(EncoderConfig(model=str(folder)))
    assert isinstance(encoder, KeypointEncoder)
    name, _, digest = encoder.encoder_id.rpartition("@")
    assert name == "keypoints:sim-keypoints" and len(digest) == 10
    assert shipped_spec(encoder.encoder_id) == "builtin:sim-keypoints"  # what rollout loads for a policy
    with pytest.raises(ValueError, match="not a keypoint encoder"):
        shipped_spec("builtin:dinov2-tiny-random@224")
    # The same weights under another name are the same points; other weights under the same name are not.
    copy = save_keypoint_encoder(KeypointEncoder.load(str(folder)).model, tmp_path / "sim-keypoints-copy", 1.0)
    assert KeypointEncoder.load(str(copy)).encoder_id.rpartition("@")[2] == digest
    retrained = save_keypoint_encoder(KeypointAutoencoder(TINY), tmp_path / "again" / "sim-keypoints", 1.0)
    assert KeypointEncoder.load(str(retrained)).encoder_id != encoder.encoder_id
    tokens = encoder(frames.images)
    assert tokens.shape == (16, 1, 4) and encoder.grid.channels == 4
    # LeRobot's decoded frames (float, channels first, in [0, 1]) give the same points as camera frames.
    planes = torch.from_numpy(frames.images).permute(0, 3, 1, 2).float() / 255
    assert torch.allclose(encoder(planes), tokens, atol=1e-5)
    # float16 weights: the points come back within a small fraction of the image.
    original = KeypointEncoder(model)(frames.images)
    assert float((tokens - original).abs().max()) < 0.02
    for frame in (np.zeros((1, 32, 32, 3), np.uint8), np.full((1, 32, 32, 3), 255, np.uint8)):  # black, white
        with pytest.raises(PoseEstimatorError, match="does not look like the scene"):
            encoder(frame)
    with pytest.raises(PoseEstimatorError, match="uint8"):
        encoder(np.zeros((1, 32, 32, 3), np.float32))


def test_broken_folders_are_refused(tmp_path):
    folder = save_keypoint_encoder(KeypointAutoencoder(TINY), tmp_path / "kp", 1.0)
    raw = json.loads((folder / CONFIG_FILE).read_text())
    (folder / CONFIG_FILE).write_text(
        json.dumps({key: value for key, value in raw.items() if key != "max_reconstruction_error"})
    )
    with pytest.raises(PoseEstimatorError, match="cannot load the keypoint encoder"):
        KeypointEncoder.load(str(folder))
    with pytest.raises(FileNotFoundError, match="not a keypoint-encoder folder"):
        KeypointEncoder.load(str(tmp_path))
    with pytest.raises(PoseEstimatorError, match="target_size"):
        KeypointAutoencoderConfig(render_size=10, target_size=48)


def test_the_cli_pretrains_a_keypoint_encoder_and_probes_it(tmp_path, capsys):
    from rla_wm.cli import main

    frames = square_frames(48, seed=4).save(tmp_path / "frames.npz")
    run = tmp_path / "run"
    tiny = ["--num_keypoints=2", "--width=8", "--batch_size=4", "--steps=3", "--evaluate_every=3", "--threads=1"]
    assert main(["pretrain-keypoints", f"--frames={frames}", f"--eval_frames={frames}", f"--out={run}", *tiny]) == 0
    assert (run / "loss.png").stat().st_size > 0 and (run / "examples.png").stat().st_size > 0
    assert "held-out linear probe after 3 steps" in capsys.readouterr().out
    report = tmp_path / "probe.json"
    assert main(["probe", f"--encoder={run / 'keypoint_encoder'}", f"--frames={frames}", f"--json={report}"]) == 0
    assert "encoder keypoints:keypoint_encoder@" in capsys.readouterr().out
    result = json.loads(report.read_text())
    assert result["encoder"].startswith("keypoints:keypoint_encoder@") and set(result["probe_mae"]) == set(STATE_NAMES)
