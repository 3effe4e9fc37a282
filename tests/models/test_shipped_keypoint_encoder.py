"""The shipped self-supervised keypoint encoder (builtin:sim-pusht-keypoints): small, float16, a card with its
numbers; a linear probe of its points finds the agent and the block, and the block's angle, on sim frames of
seeds it never saw, also from a 480 px camera; frames of no scene are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rla_wm.assets import CHECKPOINT_DIR
from rla_wm.envs.pusht.frames import STATE_NAMES, collect_state_frames
from rla_wm.evaluation.probe import probe_encoder
from rla_wm.models.encoder import EncoderConfig, load_encoder
from rla_wm.models.keypoint_encoder import WEIGHTS_FILE, KeypointEncoder
from rla_wm.models.keypoint_net import PoseEstimatorError

NAME = "sim-pusht-keypoints"
# Issue 11's probe targets are 5 px and 0.1 (cos / sin); the card has the measured errors (well inside them,
# on 200 held-out episodes). These bounds are for a probe fitted on 30 episodes, with a margin for other CPUs.
POSITION_PX = 8.0
COS_SIN = 0.15


@pytest.fixture(scope="module")
def encoder() -> KeypointEncoder:
    torch.set_num_threads(1)
    loaded = load_encoder(EncoderConfig(model=f"builtin:{NAME}"))
    assert isinstance(loaded, KeypointEncoder)
    return loaded


def test_it_is_shipped_small_with_a_card():
    folder = CHECKPOINT_DIR / NAME
    assert (folder / WEIGHTS_FILE).stat().st_size < 2e6
    state = torch.load(folder / WEIGHTS_FILE, weights_only=True)
    assert all(value.dtype == torch.float16 for value in state.values() if value.is_floating_point())
    card = (folder / "README.md").read_text()
    for section in ("## Data", "## Training", "## Linear probe", "## Refused frames", "## Size"):
        assert section in card, f"the card lacks {section!r}"
    probe = json.loads((folder / "metrics.json").read_text())["linear_probe"]
    assert max(probe["block_x"], probe["block_y"]) <= 5.0 and max(probe["block_cos"], probe["block_sin"]) <= 0.1


def test_a_linear_probe_of_the_points_reads_the_state_on_unseen_episodes(encoder):
    # Seeds far from its training (100000-100299) and held-out (150000-150199) frames; half expert, half play.
    frames = collect_state_frames(40, steps=150, seed=180_000, every=3, progress=False)
    result = probe_encoder(encoder, frames)
    error = dict(zip(result.names, result.probe_error))
    constant = dict(zip(result.names, result.constant_error))
    assert set(error) == set(STATE_NAMES)
    for name in ("agent_x", "agent_y", "block_x", "block_y"):
        assert error[name] < POSITION_PX < constant[name], result.table()
    for name in ("block_cos", "block_sin"):
        assert error[name] < COS_SIN < constant[name], result.table()


def test_a_480_px_camera_gives_the_points_of_the_96_px_one(encoder):
    small = collect_state_frames(2, steps=60, seed=181_000, every=10, image_size=96, progress=False)
    large = collect_state_frames(2, steps=60, seed=181_000, every=10, image_size=480, progress=False)
    assert large.images.shape[1:] == (480, 480, 3)
    np.testing.assert_allclose(small.state, large.state, atol=1e-3)  # the same episodes
    # Points in [-1, 1] image units: 0.02 is half a pixel of the 96 px frame.
    assert float((encoder(large.images) - encoder(small.images)).abs().max()) < 0.02


def test_frames_of_no_scene_are_refused(encoder):
    rng = np.random.default_rng(0)
    for frame in (
        np.zeros((1, 96, 96, 3), np.uint8),
        np.full((1, 96, 96, 3), 255, np.uint8),
        rng.integers(0, 256, (1, 96, 96, 3), dtype=np.uint8),
    ):
        with pytest.raises(PoseEstimatorError, match="does not look like the scene"):
            encoder(frame)
    scene = collect_state_frames(2, steps=60, seed=182_000, every=5, progress=False)
    assert encoder(scene.images).shape == (len(scene), 1, encoder.grid.channels)
