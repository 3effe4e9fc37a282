"""Online latent actions pair the right frames by timestamp."""

import numpy as np
import pytest
import torch

from rla_wm.control.latent_tracker import LatentTracker
from rla_wm.models.rla import RLAAutoencoder, RLAConfig

CONFIG = RLAConfig(
    token_dim=8,
    num_tokens=4,
    latent_tokens=2,
    latent_dim=3,
    width=16,
    encoder_depth=1,
    decoder_depth=1,
    heads=2,
    encoder_id="enc@56",
)


def frames(count: int, fps: float = 10.0, start: float = 100.0):
    rng = np.random.default_rng(0)
    return [(start + i / fps, rng.normal(size=(4, 8)).astype(np.float32)) for i in range(count)]


def test_latent_pairs_frame_t_minus_h_with_t():
    torch.manual_seed(0)
    autoencoder = RLAAutoencoder(CONFIG)
    tracker = LatentTracker(autoencoder, "rla", horizon=3, fps=10.0)
    sequence = frames(6)
    outputs = [tracker.push(stamp, tokens) for stamp, tokens in sequence]
    assert outputs[:3] == [None, None, None]
    for index in range(3, 6):
        start, z = outputs[index]
        assert start == pytest.approx(sequence[index - 3][0])
        expected = (
            autoencoder.encode(
                torch.from_numpy(sequence[index - 3][1])[None], torch.from_numpy(sequence[index][1])[None]
            )[0]
            .detach()
            .numpy()
        )
        np.testing.assert_allclose(z, expected, atol=1e-6)


def test_dropped_frame_skips_latent_instead_of_pairing_wrong_frames():
    tracker = LatentTracker(RLAAutoencoder(CONFIG), "rla", horizon=2, fps=10.0)
    sequence = frames(6)
    del sequence[1]  # frame at t=100.1 never arrived
    outputs = {stamp: tracker.push(stamp, tokens) for stamp, tokens in sequence}
    assert outputs[sequence[2][0]] is None  # t=100.3 would need t=100.1
    assert outputs[sequence[3][0]] is not None  # t=100.4 pairs with t=100.2


def test_checkpoint_for_other_encoder_is_refused(tmp_path):
    RLAAutoencoder(CONFIG).save(tmp_path / "rla")
    with pytest.raises(ValueError, match="trained on features of 'enc@56'"):
        LatentTracker.from_checkpoint(str(tmp_path / "rla"), "other@224", 2, 10.0)
