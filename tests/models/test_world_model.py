"""RLA autoencoder, flow-matching RLA-WM and the regression baseline: learning, sampling, I/O, errors."""

import pytest
import torch

from rla_wm.models.checkpoint import CheckpointError
from rla_wm.models.layers import Block
from rla_wm.models.prediction import CopyLastPredictor, RegressionPredictor, RLAWMPredictor, rollout
from rla_wm.models.regression import RegressionConfig, RegressionModel
from rla_wm.models.rla import RLAAutoencoder, RLAConfig
from rla_wm.models.world_model import ActionEncoder, RLAWorldModel, WorldModelConfig

TOKENS, CHANNELS = 16, 32
RLA = RLAConfig(
    token_dim=CHANNELS,
    num_tokens=TOKENS,
    latent_tokens=4,
    latent_dim=8,
    width=64,
    encoder_depth=2,
    decoder_depth=2,
    heads=4,
)
WM = WorldModelConfig(
    token_dim=CHANNELS,
    num_tokens=TOKENS,
    latent_tokens=4,
    latent_dim=8,
    width=64,
    condition_depth=2,
    flow_depth=2,
    heads=4,
    max_horizon=6,
    latent_scale=1.0,
)
REG = RegressionConfig(token_dim=CHANNELS, num_tokens=TOKENS, width=64, depth=2, heads=4, max_horizon=6)


def toy_data(count: int = 32, seed: int = 0):
    """Futures that depend on the actions: s_{t+h} = s_t + shift(actions)."""
    generator = torch.Generator().manual_seed(seed)
    current = torch.randn(count, TOKENS, CHANNELS, generator=generator)
    actions = torch.rand(count, 5, 2, generator=generator) * 512
    direction = torch.randn(1, TOKENS, CHANNELS, generator=generator)
    future = current + direction * (actions.mean(dim=(1, 2)) / 256 - 1).view(-1, 1, 1)
    return current, actions, future


def fit(model, loss_fn, steps: int, lr: float = 2e-3) -> float:
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(steps):
        loss, _ = loss_fn()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return float(loss_fn()[0].detach())


def test_autoencoder_overfits_tiny_dataset():
    torch.manual_seed(0)
    current = torch.randn(32, TOKENS, CHANNELS)
    future = current + 0.5 * torch.randn(32, TOKENS, CHANNELS)
    model = RLAAutoencoder(RLA)
    initial = float(model.loss(current, future)[0].detach())
    final = fit(model, lambda: model.loss(current, future), steps=300)
    # L1 + MSE starts at the copy-last error (~0.65) and must fall below 0.15 within 300 steps.
    assert initial > 0.5 and final < 0.15, (initial, final)
    z = model.encode(current, future)
    assert z.shape == (32, 4, 8)


def test_untrained_decoder_is_copy_last():
    current, _, future = toy_data(4)
    model = RLAAutoencoder(RLA)
    torch.testing.assert_close(model.decode(torch.randn(4, 4, 8), current), current)


def test_world_model_overfits_and_samples_the_right_latent():
    torch.manual_seed(0)
    current, actions, future = toy_data(16)
    z = torch.randn(16, 4, 8)  # any fixed targets: the flow must learn them from (s_t, actions)
    model = RLAWorldModel(WM)
    final = fit(model, lambda: model.loss(current, actions, z), steps=400)
    # MSE + L1 on the velocity starts near 2.4 (unit-variance noise and targets).
    assert final < 1.0, final
    sampled = model.sample(current, actions, steps=20, generator=torch.Generator().manual_seed(0))
    error = (sampled - z).abs().mean()
    assert error < 0.5 * z.abs().mean(), f"sampled z is off by {error:.3f}"


def test_sampling_is_seeded_and_reproducible():
    current, actions, _ = toy_data(3)
    model = RLAWorldModel(WM)
    torch.nn.init.normal_(model.velocity.weight, std=0.1)  # a non-trivial velocity field
    first = model.sample(current, actions, steps=5, generator=torch.Generator().manual_seed(7))
    second = model.sample(current, actions, steps=5, generator=torch.Generator().manual_seed(7))
    other = model.sample(current, actions, steps=5, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert not torch.allclose(first, other)


def test_cached_cross_attention_equals_recomputed():
    torch.manual_seed(0)
    block = Block(32, 4, cross_attention=True, condition_dim=32)
    torch.nn.init.normal_(block.modulation[1].weight, std=0.1)
    x, context, condition = torch.randn(2, 5, 32), torch.randn(2, 9, 32), torch.randn(2, 32)
    cached = block.cross_attention.keys_values(context)
    torch.testing.assert_close(block(x, condition, context=context), block(x, condition, cached_context=cached))
    # One cached context serves several queries per state (planning batches).
    repeated = block(x.repeat_interleave(3, 0), condition.repeat_interleave(3, 0), cached_context=cached)
    torch.testing.assert_close(repeated[::3], block(x, condition, context=context))


def test_variable_length_actions_ignore_padding():
    encoder = ActionEncoder(2, 16, 6, (0.0, 0.0), (512.0, 512.0))
    actions = torch.rand(2, 6, 2) * 512
    padded = actions.clone()
    padded[0, 3:] = 999.0  # garbage beyond the length must not matter
    lengths = torch.tensor([3, 6])
    with_lengths = encoder(padded, lengths)
    torch.testing.assert_close(with_lengths[0], encoder(actions[:1, :3])[0])
    torch.testing.assert_close(with_lengths[1], encoder(actions[1:])[0])
    with pytest.raises(ValueError, match="lengths"):
        encoder(actions, torch.tensor([0, 6]))
    with pytest.raises(ValueError, match="1..6"):
        encoder(torch.rand(1, 7, 2), None)
    with pytest.raises(ValueError, match="NaN"):
        encoder(torch.full((1, 3, 2), float("nan")))


def test_bad_feature_inputs_raise():
    model = RLAAutoencoder(RLA)
    with pytest.raises(ValueError, match="expected"):
        model.encode(torch.randn(1, TOKENS + 1, CHANNELS), torch.randn(1, TOKENS + 1, CHANNELS))
    nan = torch.randn(1, TOKENS, CHANNELS)
    nan[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model.encode(nan, nan)
    with pytest.raises(ValueError, match="z has shape"):
        model.decode(torch.randn(1, 5, 8), torch.randn(1, TOKENS, CHANNELS))
    with pytest.raises(ValueError, match="action sequences"):
        RLAWorldModel(WM).condition(torch.randn(2, TOKENS, CHANNELS), torch.rand(3, 4, 2))


def test_checkpoints_round_trip_and_refuse_other_kinds(tmp_path):
    current, actions, future = toy_data(2)
    autoencoder, world_model, regression = (
        RLAAutoencoder(RLA).eval(),
        RLAWorldModel(WM).eval(),
        RegressionModel(REG).eval(),
    )
    autoencoder.save(tmp_path / "ae")
    world_model.save(tmp_path / "wm")
    regression.save(tmp_path / "reg")
    torch.testing.assert_close(
        RLAAutoencoder.load(tmp_path / "ae")[0](current, future)[0], autoencoder(current, future)[0]
    )
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    torch.testing.assert_close(
        RLAWorldModel.load(tmp_path / "wm")[0].sample(current, actions, steps=3, generator=g()),
        world_model.sample(current, actions, steps=3, generator=g()),
    )
    torch.testing.assert_close(
        RegressionModel.load(tmp_path / "reg")[0](current, actions), regression(current, actions)
    )
    with pytest.raises(CheckpointError, match="expected 'rla_world_model'"):
        RLAWorldModel.load(tmp_path / "ae")


def test_regression_baseline_learns_action_dependence():
    torch.manual_seed(0)
    current, actions, future = toy_data()
    model = RegressionModel(REG)
    copy_last = float(torch.nn.functional.l1_loss(current, future))
    fit(model, lambda: model.loss(current, actions, future), steps=150)
    assert float(torch.nn.functional.l1_loss(model(current, actions), future)) < 0.5 * copy_last


def test_rollout_broadcasts_start_and_chains_predictions():
    start = torch.randn(1, TOKENS, CHANNELS)
    chunks = torch.rand(4, 3, 5, 2) * 512
    assert torch.equal(rollout(CopyLastPredictor(), start, chunks), start.expand(4, 3, -1, -1).contiguous())
    regression = RegressionPredictor(RegressionModel(REG))
    torch.nn.init.normal_(regression.model.output.weight, std=0.05)
    predicted = rollout(regression, start, chunks)
    assert predicted.shape == (4, 3, TOKENS, CHANNELS)
    second = regression.predict(predicted[:, 0], chunks[:, 1])
    torch.testing.assert_close(predicted[:, 1], second)
    wm = RLAWMPredictor(RLAWorldModel(WM), RLAAutoencoder(RLA), steps=2, seed=3)
    first = rollout(wm, start, chunks)
    wm.reseed()
    torch.testing.assert_close(rollout(wm, start, chunks), first)
    with pytest.raises(ValueError, match="start must be"):
        rollout(CopyLastPredictor(), torch.randn(2, TOKENS, CHANNELS), chunks)


def test_predictors_run_in_bfloat16_close_to_float32():
    """The GPU benchmarks' --dtype bfloat16: every predictor's forward pass stays in the model's dtype (the
    flow time embedding is computed in float32 and cast) and lands near the float32 prediction."""
    start = torch.randn(2, TOKENS, CHANNELS)
    actions = torch.rand(2, 5, 2) * 512
    for make in (
        lambda: RegressionPredictor(RegressionModel(REG)),
        lambda: RLAWMPredictor(RLAWorldModel(WM), RLAAutoencoder(RLA), steps=2, seed=3),
    ):
        torch.manual_seed(0)
        predictor = make()
        reference = predictor.predict(start, actions)
        for module in vars(predictor).values():
            if isinstance(module, torch.nn.Module):
                module.to(torch.bfloat16)
        if hasattr(predictor, "reseed"):
            predictor.reseed()
        low = predictor.predict(start.bfloat16(), actions.bfloat16())
        assert low.dtype == torch.bfloat16 and torch.isfinite(low.float()).all()
        # bfloat16 keeps ~3 significant digits; the features are O(1).
        assert (low.float() - reference).abs().mean() < 0.1 * reference.abs().mean() + 0.05
