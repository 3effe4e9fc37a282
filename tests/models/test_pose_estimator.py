"""The block-pose estimator (rla_wm.models.pose_estimator): the Procrustes fit, soft-argmax read-out,
bad input and checkpoints, and training that lowers the held-out error on real sim frames."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rla_wm.envs.pusht.frames import collect_state_frames
from rla_wm.envs.pusht.privileged import BLOCK_STATE_ENCODER_ID
from rla_wm.models.encoder import EncoderConfig, FeatureEncoder, FeatureEncoderError, load_encoder
from rla_wm.models.pose_estimator import (
    CONFIG_FILE,
    T_KEYPOINTS,
    BlockPoseEstimator,
    BlockPoseNet,
    PoseEstimatorError,
    PoseNetConfig,
    keypoints_of_pose,
    pose_from_keypoints,
    save_pose_estimator,
)
from rla_wm.training.train_pose_estimator import PoseTrainConfig, estimate_poses, pose_errors, train_pose_estimator

# An untrained net's keypoints fit no rigid T: tests of shapes, loading and plumbing turn the refusal off
# (the refusal itself is tested on the shipped estimator, test_shipped_pose_estimator.py).
UNCHECKED = 1e9


def angle_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(np.angle(np.exp(1j * (np.asarray(a) - np.asarray(b)))))


def test_procrustes_recovers_the_pose_that_placed_the_keypoints():
    rng = np.random.default_rng(0)
    poses = np.column_stack([rng.uniform(50, 450, (64, 2)), rng.uniform(-np.pi, np.pi, 64)])
    rows = torch.tensor(np.column_stack([poses[:, :2], np.cos(poses[:, 2]), np.sin(poses[:, 2])]), dtype=torch.float64)
    model = torch.tensor(T_KEYPOINTS, dtype=torch.float64)
    points = keypoints_of_pose(rows, model)
    fitted = pose_from_keypoints(points, model).numpy()
    np.testing.assert_allclose(fitted[:, :2], poses[:, :2], atol=1e-6)
    assert angle_error(fitted[:, 2], poses[:, 2]).max() < 1e-6
    # The stem points away from the bar in +y of the body frame: at angle 0 the stem's tip is below the bar.
    upright = keypoints_of_pose(torch.tensor([[256.0, 256.0, 1.0, 0.0]], dtype=torch.float64), model)[0]
    assert upright[3, 1] > upright[0, 1] and upright[0, 0] < upright[1, 0]
    # Independent 2 px noise on four points moves the fitted angle by well under what one point's 2 px would.
    noisy = points + torch.from_numpy(rng.normal(0.0, 2.0, points.shape))
    refit = pose_from_keypoints(noisy, model).numpy()
    assert np.degrees(angle_error(refit[:, 2], poses[:, 2])).mean() < 2.0


def test_the_soft_argmax_reads_a_peaked_heat_map_at_its_peak_in_workspace_pixels():
    net = BlockPoseNet(PoseNetConfig(image_size=32, width=8))
    side = 16  # heat maps at half the input size
    peak = torch.full((1, len(T_KEYPOINTS), side, side), -50.0)
    peak[0, :, 3, 10] = 50.0  # row 3, column 10 for every keypoint

    class Peak(torch.nn.Module):
        def forward(self, _):
            return peak

    net.fuse = Peak()
    points = net(torch.zeros(1, 3, 32, 32))
    cell = 512.0 / side
    np.testing.assert_allclose(points[0].detach().numpy(), [[(10 + 0.5) * cell, (3 + 0.5) * cell]] * 4, atol=1e-3)


def test_bad_frames_are_refused_with_a_clear_error():
    estimator = BlockPoseEstimator(BlockPoseNet(PoseNetConfig(image_size=32, width=8)), max_fit_residual=UNCHECKED)
    assert issubclass(PoseEstimatorError, FeatureEncoderError)  # the encoder node counts these as rejections
    for frames, words in (
        (np.zeros((1, 32, 32, 3), dtype=np.float32), "uint8"),
        (np.zeros((1, 32, 32), dtype=np.uint8), "uint8 RGB"),
        (np.zeros((0, 32, 32, 3), dtype=np.uint8), "empty"),
        (np.zeros((1, 0, 32, 3), dtype=np.uint8), "empty"),
    ):
        with pytest.raises(PoseEstimatorError, match=words):
            estimator(frames)
    # Any size is resized to the network's input; one frame without a batch axis is a batch of one.
    tokens = estimator(np.zeros((48, 64, 3), dtype=np.uint8))
    assert tuple(tokens.shape) == (1, 1, 4) and torch.isfinite(tokens).all()
    assert np.allclose(np.hypot(tokens[..., 2], tokens[..., 3]), 1.0)


def test_a_saved_estimator_loads_back_through_load_encoder_and_broken_folders_are_refused(tmp_path):
    torch.manual_seed(0)
    net = BlockPoseNet(PoseNetConfig(image_size=32, width=8))
    folder = save_pose_estimator(net, tmp_path / "pose", {"note": "test"}, max_fit_residual=UNCHECKED)
    encoder = load_encoder(EncoderConfig(model=str(folder)))
    assert isinstance(encoder, BlockPoseEstimator)
    assert encoder.encoder_id == BLOCK_STATE_ENCODER_ID
    assert (encoder.grid.height, encoder.grid.width, encoder.grid.channels) == (1, 1, 4)
    frames = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    # float16 storage: the loaded net's keypoints within a pixel of the float32 original's.
    assert encoder.max_fit_residual == UNCHECKED
    original = BlockPoseEstimator(net, max_fit_residual=UNCHECKED)
    assert torch.allclose(encoder.poses(frames)[:, :2], original.poses(frames)[:, :2], atol=1.0)
    # A ViT spec still gives the ViT.
    assert isinstance(load_encoder(EncoderConfig(model="builtin:dinov2-tiny-random")), FeatureEncoder)
    with pytest.raises(FileNotFoundError, match="not a pose-estimator folder"):
        BlockPoseEstimator.load(str(tmp_path))
    (folder / CONFIG_FILE).write_text(json.dumps({"image_size": 32}))
    with pytest.raises(PoseEstimatorError, match="cannot load"):
        BlockPoseEstimator.load(str(folder))
    (folder / CONFIG_FILE).write_text("{not json")
    with pytest.raises(PoseEstimatorError, match="cannot load"):
        BlockPoseEstimator.load(str(folder))


def test_training_on_sim_frames_lowers_the_held_out_pose_error(tmp_path):
    """A few hundred steps on 8 episodes is far from the shipped estimator, but must beat the untrained
    net clearly on held-out episodes (other seeds): the labels, keypoints and loss fit together."""
    torch.set_num_threads(1)
    train = collect_state_frames(episodes=8, steps=60, seed=300_000, every=2, progress=False)
    held_out = collect_state_frames(episodes=2, steps=60, seed=310_000, every=4, progress=False)
    config = PoseNetConfig(image_size=96, width=8)
    torch.manual_seed(0)
    before = pose_errors(estimate_poses(BlockPoseNet(config), held_out.images)[0], held_out.state)
    net, log = train_pose_estimator(
        train,
        held_out,
        tmp_path,
        config,
        PoseTrainConfig(steps=150, batch_size=16, warmup_steps=10, evaluate_every=150),
        progress=False,
    )
    after = log[-1]["held_out"]
    assert (tmp_path / "pose_estimator" / CONFIG_FILE).is_file() and (tmp_path / "log.jsonl").is_file()
    position_before = before["x_px_mean"] + before["y_px_mean"]
    position_after = after["x_px_mean"] + after["y_px_mean"]
    assert position_after < 0.7 * position_before, (before, after)  # measured: 0.4
    assert log[-1]["loss_px"] < log[0]["loss_px"]


def test_rollout_takes_a_camera_encoder_only_for_the_feature_space_the_policy_reads(tmp_path):
    from rla_wm.envs.pusht.sim import PushTSim
    from rla_wm.evaluation.rollout import BlockPoseNoise, tokens_function

    net = BlockPoseNet(PoseNetConfig(image_size=32, width=8))
    folder = save_pose_estimator(net, tmp_path / "pose", max_fit_residual=UNCHECKED)
    tokens_of = tokens_function(BLOCK_STATE_ENCODER_ID, torch.device("cpu"), camera_encoder=str(folder))
    sim = PushTSim(max_steps=5, image_size=96)
    tokens = tokens_of(sim.reset(seed=3))
    assert tuple(tokens.shape) == (1, 1, 4)
    with pytest.raises(ValueError, match="produces 'sim:pusht-block-state' features"):
        tokens_function("builtin:dinov2-tiny-random@224", torch.device("cpu"), camera_encoder=str(folder))
    with pytest.raises(ValueError, match="not to a camera encoder"):
        noise = BlockPoseNoise(5.0, 5.0)
        tokens_function(BLOCK_STATE_ENCODER_ID, torch.device("cpu"), block_noise=noise, camera_encoder=str(folder))


def test_the_overlay_draws_the_t_where_the_pose_puts_it():
    from rla_wm.envs.pusht.sim import PushTSim
    from rla_wm.evaluation.visualize import block_pose_overlay, image_grid

    sim = PushTSim(max_steps=5, image_size=96)
    frame = sim.reset(seed=5)

    def red_centroid(pose: np.ndarray) -> np.ndarray:
        picture = block_pose_overlay(frame.image, pose, height=256).astype(int)
        assert picture.shape == (256, 256, 3)
        red = (picture[..., 0] > 180) & (picture[..., 1] < 90) & (picture[..., 2] < 90)
        ys, xs = np.nonzero(red)
        assert len(xs) > 100, "no outline drawn"
        return np.array([xs.mean(), ys.mean()]) * 512.0 / 256.0  # back to workspace pixels

    pose = np.asarray(frame.block_pose, dtype=np.float64)
    # The outline's centroid: mean of its perimeter in the body frame, rotated and placed by the pose.
    rotation = np.array([[np.cos(pose[2]), -np.sin(pose[2])], [np.sin(pose[2]), np.cos(pose[2])]])
    body_centroid = np.array([0.0, 43.1])  # the centroid of the T outline's perimeter
    expected = rotation @ body_centroid + pose[:2]
    at_pose = red_centroid(pose)
    assert np.hypot(*(at_pose - expected)) < 20.0, (at_pose, expected)
    moved = red_centroid(pose + [60.0, -40.0, 0.0])
    np.testing.assert_allclose(moved - at_pose, [60.0, -40.0], atol=3.0)
    sheet = image_grid([np.zeros((10, 12, 3), np.uint8)] * 5, columns=2, gap=4)
    assert sheet.shape == (3 * 10 + 2 * 4, 2 * 12 + 4, 3)
    with pytest.raises(ValueError):
        image_grid([np.zeros((10, 12, 3), np.uint8), np.zeros((11, 12, 3), np.uint8)], columns=2)


def test_the_train_command_writes_the_estimator_its_curve_and_examples(tmp_path, capsys):
    from rla_wm.cli import main

    frames = collect_state_frames(episodes=3, steps=30, seed=320_000, every=3, progress=False).save(tmp_path / "f.npz")
    out = tmp_path / "run"
    arguments = [f"--frames={frames}", f"--eval_frames={frames}", f"--out={out}", "--steps=10", "--evaluate_every=5"]
    main(["train-pose-estimator", *arguments, "--width=8", "--warmup_steps=2", "--threads=1"])
    assert "held-out block pose error after 10 steps" in capsys.readouterr().out
    for written in (
        "pose_estimator/pose_estimator.pt",
        "pose_estimator/metrics.json",
        "log.jsonl",
        "loss.png",
        "examples.png",
    ):
        assert (out / written).is_file(), written
    # The folder loads back as an encoder of the block-state feature space.
    encoder = load_encoder(EncoderConfig(model=str(out / "pose_estimator")))
    assert isinstance(encoder, BlockPoseEstimator) and encoder.net.config.width == 8
