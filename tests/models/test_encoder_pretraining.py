"""The project's own encoder: sim frames with logged state, masked-autoencoder pretraining, linear probe."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rla_wm.envs.pusht.frames import STATE_NAMES, StateFrames, collect_state_frames
from rla_wm.evaluation.probe import fit_attentive_probe, fit_probe, probe_encoder, spread_subset
from rla_wm.models.encoder import EncoderConfig, FeatureEncoder
from rla_wm.training.pretrain_encoder import MaskedAutoencoder, PretrainConfig, normalise, pretrain

TINY = PretrainConfig(
    image_size=32, patch_size=8, hidden_size=32, layers=1, heads=2, decoder_width=32, decoder_layers=1,
    decoder_heads=2, steps=4, batch_size=8, warmup_steps=1, save_every=2,
)  # fmt: skip


@pytest.fixture(scope="module")
def sim_frames() -> StateFrames:
    return collect_state_frames(4, steps=12, seed=123, image_size=32, progress=False)


def test_state_frames_log_the_sim_state_next_to_each_frame(sim_frames: StateFrames, tmp_path) -> None:
    # 4 episodes of at most 12 steps, each frame kept (reset frame included).
    assert 4 <= len(sim_frames) <= 4 * 13
    assert sorted(set(sim_frames.episode.tolist())) == [0, 1, 2, 3]
    assert sim_frames.images.shape[1:] == (32, 32, 3)
    cos, sin = sim_frames.state[:, STATE_NAMES.index("block_cos")], sim_frames.state[:, STATE_NAMES.index("block_sin")]
    np.testing.assert_allclose(cos**2 + sin**2, 1.0, atol=1e-5)
    agent = sim_frames.state[:, :2]
    assert ((agent >= 0) & (agent <= 512)).all()
    # The agent moves within an episode (play and expert both drive it).
    first = sim_frames.episode == 0
    assert np.ptp(agent[first], axis=0).max() > 1.0
    loaded = StateFrames.load(sim_frames.save(tmp_path / "frames.npz"))
    np.testing.assert_array_equal(loaded.images, sim_frames.images)
    np.testing.assert_array_equal(loaded.state, sim_frames.state)


def test_a_corrupt_frames_file_is_a_clear_error(tmp_path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="not a state-frames file"):
        StateFrames.load(bad)


def test_patchify_follows_the_encoder_patch_order() -> None:
    model = MaskedAutoencoder(TINY)
    pixels = torch.zeros(1, 3, 32, 32)
    for row in range(4):
        for col in range(4):
            pixels[0, :, row * 8 : (row + 1) * 8, col * 8 : (col + 1) * 8] = row * 4 + col
    patches = model.patchify(pixels)[0]
    assert patches.shape == (16, 8 * 8 * 3)
    np.testing.assert_array_equal(patches.numpy(), np.repeat(np.arange(16.0)[:, None], 192, axis=1))


def test_pretraining_lowers_the_reconstruction_loss(sim_frames: StateFrames) -> None:
    torch.manual_seed(0)
    model = MaskedAutoencoder(TINY)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = normalise(sim_frames.images[:16])
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(40):
        loss, _ = model(batch, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


def test_norm_pix_loss_targets_each_patch_normalised_by_its_own_statistics() -> None:
    """A flat patch costs nothing to predict as zeros; a patch with structure is compared after its own z-scoring."""
    import dataclasses

    model = MaskedAutoencoder(dataclasses.replace(TINY, norm_pix_loss=True, mask_ratio=0.5))
    flat = torch.full((1, 3, 32, 32), 0.7)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        torch.nn.init.zeros_(model.to_pixels.weight)
        torch.nn.init.zeros_(model.to_pixels.bias)
        flat_loss, _ = model(flat, generator)
        # Zero prediction vs z-scored structured patches: mean squared target = (n-1)/n of unit variance.
        checker = torch.from_numpy(np.indices((32, 32)).sum(0) % 2 * 2.0 - 1.0).float().expand(1, 3, 32, 32)
        structured_loss, _ = model(checker.contiguous(), generator)
    assert float(flat_loss) == pytest.approx(0.0, abs=1e-6)
    assert float(structured_loss) == pytest.approx(1.0, abs=0.01)
    # Without the option the same flat image costs its squared value.
    plain = MaskedAutoencoder(dataclasses.replace(TINY, mask_ratio=0.5))
    with torch.no_grad():
        torch.nn.init.zeros_(plain.to_pixels.weight)
        torch.nn.init.zeros_(plain.to_pixels.bias)
        plain_loss, _ = plain(flat, generator)
    assert float(plain_loss) == pytest.approx(0.49, abs=1e-4)


def test_the_pretrained_encoder_loads_as_a_feature_encoder(sim_frames: StateFrames, tmp_path) -> None:
    _, log = pretrain(sim_frames, TINY, tmp_path, progress=False)
    assert [entry["step"] for entry in log] == [0, TINY.steps - 1]
    assert (tmp_path / "log.jsonl").read_text().count("\n") == 2
    encoder = FeatureEncoder(EncoderConfig(model=str(tmp_path / "encoder"), resolution=32))
    features = encoder(sim_frames.images[:3])
    assert features.shape == (3, 16, 32)
    assert torch.isfinite(features).all()
    # Shipped in float16: the file holds half-precision tensors.
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(tmp_path / "encoder" / "model.safetensors").values()} == {torch.float16}


def test_the_saved_encoder_output_is_standardised_per_channel_without_losing_information(
    sim_frames: StateFrames,
) -> None:
    """standardise_output: mean 0, std 1 per channel on the calibration frames, an affine map of the old output."""
    from rla_wm.training.pretrain_encoder import standardise_output

    torch.manual_seed(0)
    encoder = MaskedAutoencoder(TINY).encoder.eval()
    with torch.no_grad():
        encoder.layernorm.bias.add_(5.0)  # a large constant part, as a trained masked autoencoder has
        encoder.layernorm.weight.mul_(0.01)
        pixels = normalise(sim_frames.images)
        before = encoder(pixel_values=pixels).last_hidden_state[:, 1:].reshape(-1, TINY.hidden_size)
        standardise_output(encoder, sim_frames.images)
        after = encoder(pixel_values=pixels).last_hidden_state[:, 1:].reshape(-1, TINY.hidden_size)
    torch.testing.assert_close(after.mean(0), torch.zeros(TINY.hidden_size), atol=1e-3, rtol=0)
    torch.testing.assert_close(after.std(0), torch.ones(TINY.hidden_size), atol=1e-3, rtol=0)
    # Per channel the new output is the old one shifted and scaled: correlation 1.
    for channel in range(TINY.hidden_size):
        correlation = torch.corrcoef(torch.stack([before[:, channel], after[:, channel]]))[0, 1]
        assert correlation > 0.999


def test_pretraining_refuses_frames_of_another_size(sim_frames: StateFrames, tmp_path) -> None:
    with pytest.raises(ValueError, match="image_size"):
        pretrain(sim_frames, PretrainConfig(image_size=64, steps=1), tmp_path, progress=False)


def test_the_probe_reads_a_linear_code_and_not_noise() -> None:
    rng = np.random.default_rng(0)
    n, episodes = 600, np.repeat(np.arange(12), 50)
    state = rng.normal(size=(n, 3)).astype(np.float32)
    mixing = rng.normal(size=(3, 40))
    informative = state @ mixing + 0.05 * rng.normal(size=(n, 40))
    noise = rng.normal(size=(n, 40))
    test = episodes >= 9
    names = ("a", "b", "c")
    good = fit_probe(informative[~test], state[~test], episodes[~test], informative[test], state[test], names)
    bad = fit_probe(noise[~test], state[~test], episodes[~test], noise[test], state[test], names)
    # A linear code is read almost exactly; noise is no better than the constant predictor.
    assert (good.probe_error < 0.1 * good.constant_error).all()
    assert (bad.probe_error > 0.8 * bad.constant_error).all()
    assert "constant MAE" in good.table()


def test_the_attentive_probe_finds_an_object_anywhere_and_reads_how_it_is_turned() -> None:
    """The object lights one of 16 patches (its position) and that patch's channels code its angle: a
    patch-shared read-out gets both; on noise it is no better than the mean."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    n, patches, channels = 1500, 16, 8
    where = rng.integers(0, patches, n)
    angle = rng.uniform(-np.pi, np.pi, n)
    tokens = 0.1 * rng.normal(size=(n, patches, channels)).astype(np.float32)
    tokens[np.arange(n), where, 0] += 2.0
    tokens[np.arange(n), where, 1] += np.cos(angle)
    tokens[np.arange(n), where, 2] += np.sin(angle)
    state = np.stack([where % 4, where // 4, np.cos(angle), np.sin(angle)], axis=1).astype(np.float32)
    test = np.arange(n) >= 1200
    names = ("x", "y", "cos", "sin")
    good = fit_attentive_probe(tokens[~test], state[~test], tokens[test], state[test], names, steps=600)
    noise = rng.normal(size=tokens.shape).astype(np.float32)
    bad = fit_attentive_probe(noise[~test], state[~test], noise[test], state[test], names, steps=300)
    # Measured: 0.1-0.2 of the constant predictor's error on every variable; noise 1.0-1.1.
    assert (good.probe_error < 0.4 * good.constant_error).all(), good.table()
    assert (bad.probe_error > 0.8 * bad.constant_error).all(), bad.table()
    assert "attentive probe" in good.table() and good.as_dict()["ridge"] is None


def test_probe_encoder_holds_out_whole_episodes(sim_frames: StateFrames) -> None:
    calls = []

    def encoder(images: np.ndarray) -> torch.Tensor:
        calls.append(len(images))
        return torch.as_tensor(images[:, ::8, ::8].reshape(len(images), -1, 3), dtype=torch.float32)

    result = probe_encoder(encoder, sim_frames, test_fraction=0.25)
    # One of four episodes is the test set; every frame was encoded once.
    assert result.train_frames + result.test_frames == len(sim_frames) == sum(calls)
    held_out = spread_subset(np.unique(sim_frames.episode), 1)
    assert result.test_frames == int(np.isin(sim_frames.episode, held_out).sum())


def test_the_cli_collects_pretrains_and_probes(tmp_path, capsys) -> None:
    from rla_wm.cli import main

    frames, run = tmp_path / "frames.npz", tmp_path / "run"
    assert main(["collect-frames", f"--out={frames}", "--episodes=4", "--steps=10", "--image_size=32"]) == 0
    tiny = [
        f"--{name}={getattr(TINY, name)}" for name in ("image_size", "patch_size", "hidden_size", "layers", "heads")
    ]
    decoder = ["--decoder_width=32", "--decoder_layers=1", "--decoder_heads=2", "--batch_size=4", "--steps=2"]
    assert main(["pretrain-encoder", f"--frames={frames}", f"--out={run}", *tiny, *decoder]) == 0
    assert (run / "loss.png").stat().st_size > 0
    assert main(["probe", f"--encoder={run / 'encoder'}", f"--frames={frames}", f"--json={tmp_path / 'p.json'}"]) == 0
    printed = capsys.readouterr().out
    assert "grid 4x4x32" in printed and "block_cos" in printed
    import json

    result = json.loads((tmp_path / "p.json").read_text())
    assert set(result["probe_mae"]) == set(STATE_NAMES)
