"""Planning without decoding every candidate: batches that share the observation equal the
per-candidate computation, the latent cost is what it claims, and on a trained toy RLA-WM it
ranks candidates and reaches goals like the feature cost."""

from __future__ import annotations

import pytest
import torch

from rla_wm.control.latent_cost import check_prediction_length, latent_rollout_costs
from rla_wm.control.planner_setup import PlannerSettings, check_cost_space
from rla_wm.control.planning import (
    LoadedPredictor,
    PlannerConfig,
    PlanningError,
    feature_distance,
    plan,
    rollout_costs,
)
from rla_wm.models.prediction import RegressionPredictor, RLAWMPredictor
from rla_wm.models.regression import RegressionConfig, RegressionModel
from rla_wm.models.rla import RLAAutoencoder, RLAConfig
from rla_wm.models.world_model import RLAWorldModel, WorldModelConfig

TOKENS, CHANNELS, LATENT = 4, 8, (2, 4)
SIZES = dict(token_dim=CHANNELS, num_tokens=TOKENS, width=32, heads=2)
BOUNDS = dict(action_low=(-1.0, -1.0), action_high=(1.0, 1.0))


def random_models(seed: int = 0) -> tuple[RLAWorldModel, RLAAutoencoder, RegressionModel]:
    """Untrained models whose zero-initialised layers (adaLN gates, outputs) are randomised, so
    every shared or per-candidate term actually reaches the output."""
    torch.manual_seed(seed)
    latent = dict(latent_tokens=LATENT[0], latent_dim=LATENT[1])
    wm = RLAWorldModel(WorldModelConfig(**SIZES, **latent, **BOUNDS, condition_depth=2, flow_depth=2, max_horizon=4))
    ae = RLAAutoencoder(RLAConfig(**SIZES, **latent, encoder_depth=1, decoder_depth=2, residual_scale=0.5))
    reg = RegressionModel(RegressionConfig(**SIZES, **BOUNDS, depth=2, max_horizon=4))
    with torch.no_grad():
        for name, parameter in [*wm.named_parameters(), *ae.named_parameters(), *reg.named_parameters()]:
            if "modulation" in name or name.startswith(("velocity", "decoder.output", "output")):
                parameter.normal_(0, 0.1)
    return wm.eval(), ae.eval(), reg.eval()


def inputs(batch: int = 5, steps: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    current = torch.randn(1, TOKENS, CHANNELS, generator=generator)
    goal = torch.randn(1, TOKENS, CHANNELS, generator=generator)
    actions = torch.rand(batch, steps, 2, generator=generator) * 2 - 1
    return current, goal, actions


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    # Values are O(1); sharing changes only the shapes of the matmuls, i.e. float rounding (~1e-7).
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_shared_sampling_equals_per_candidate_sampling():
    wm, _, _ = random_models()
    current, _, actions = inputs(batch=6, steps=3)
    lengths = torch.tensor([3, 2, 1, 3, 2, 3])
    for lens in (None, lengths):
        generator = lambda: torch.Generator().manual_seed(4)  # noqa: E731
        expected = wm.sample(current.expand(6, -1, -1), actions, lens, steps=4, generator=generator())
        close(wm.sample(current, actions, lens, steps=4, generator=generator()), expected)
        close(wm.sample(current.expand(6, -1, -1), actions, lens, steps=4, generator=generator()), expected)
    assert (expected[0] - expected[1]).abs().max() > 1e-2  # the candidates' actions matter
    with pytest.raises(ValueError, match="need 1 or 6"):
        wm.sample(torch.randn(2, TOKENS, CHANNELS), actions)


def test_shared_decoding_and_regression_equal_the_per_candidate_forward():
    _, ae, reg = random_models()
    current, _, actions = inputs(batch=5)
    z = torch.randn(5, *LATENT)
    close(ae.decode(z, current), ae.decode(z, current.expand(5, -1, -1)))
    assert (ae.decode(z, current.expand(5, -1, -1)) - current).abs().max() > 1e-2  # z is decoded
    regression = RegressionPredictor(reg)
    close(regression.predict_shared(current, actions), regression.predict(current.expand(5, -1, -1), actions))
    with pytest.raises(ValueError, match="feature map"):
        ae.decode(z, torch.randn(2, TOKENS, CHANNELS))


class PerCandidate:
    """A predictor seen only through `predict` (the planner's path before sharing)."""

    def __init__(self, inner) -> None:
        self.inner, self.name = inner, inner.name

    def predict(self, current: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.inner.predict(current, actions)


def test_feature_rollout_costs_are_unchanged_by_sharing_the_observation():
    wm, ae, reg = random_models()
    current, goal, _ = inputs()
    chunks = torch.rand(7, 3, 2, 2, generator=torch.Generator().manual_seed(2)) * 2 - 1
    for predictor in (RLAWMPredictor(wm, ae, steps=3, seed=5), RegressionPredictor(reg)):
        args = (current, goal, chunks, "l2", 0.5, 3)
        if isinstance(predictor, RLAWMPredictor):
            predictor.reseed()
        shared = rollout_costs(predictor, *args)
        if isinstance(predictor, RLAWMPredictor):
            predictor.reseed()
        close(shared, rollout_costs(PerCandidate(predictor), *args))
        assert shared.std() > 1e-4  # candidates differ


def test_latent_rollout_costs_are_the_latent_distance_to_the_goal_latent():
    wm, ae, _ = random_models()
    current, goal, _ = inputs()
    chunks = torch.rand(5, 2, 2, 2, generator=torch.Generator().manual_seed(3)) * 2 - 1
    predictor = RLAWMPredictor(wm, ae, steps=3, seed=5)
    generator = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    # One prediction for both chunks: no candidate decoded, the goal latent from the observation.
    costs = latent_rollout_costs(predictor, current, goal, chunks, "l2", prediction_chunks=2)
    z = wm.sample(current.expand(5, -1, -1), chunks.reshape(5, 4, 2), steps=3, generator=generator())
    close(costs, (z - ae.encode(current, goal)).pow(2).mean(dim=(1, 2)))
    # One chunk per prediction: the first is decoded, the goal is encoded from its prediction.
    predictor.reseed()
    costs = latent_rollout_costs(predictor, current, goal, chunks, "l1", batch_size=2)
    expected = []
    stream = generator()
    for part in chunks.split(2):
        start = current.expand(part.shape[0], -1, -1)
        middle = ae.decode(wm.sample(start, part[:, 0], steps=3, generator=stream), start)
        z = wm.sample(middle, part[:, 1], steps=3, generator=stream)
        expected.append((z - ae.encode(middle, goal.expand_as(middle))).abs().mean(dim=(1, 2)))
    close(costs, torch.cat(expected))


class Recorder:
    """Features = current + sum of the actions' x (one channel); records the actions per call."""

    name = "recorder"
    max_horizon = 4

    def __init__(self) -> None:
        self.lengths: list[int] = []

    def predict(self, current: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        self.lengths.append(actions.shape[1])
        return current + actions[:, :, 0].sum(dim=1).view(-1, 1, 1)


def test_prediction_chunks_concatenate_chunks_into_one_call():
    current, goal = torch.zeros(1, TOKENS, CHANNELS), torch.ones(1, TOKENS, CHANNELS)
    chunks = torch.full((3, 5, 2, 2), 0.1)  # 5 chunks of 2 actions
    recorder = Recorder()
    grouped = rollout_costs(recorder, current, goal, chunks, "l1", 1.0, prediction_chunks=2)
    assert recorder.lengths == [4, 4, 2]  # chunks [0, 2), [2, 4), [4, 5)
    one = rollout_costs(recorder, current, goal, chunks, "l1", 0.0)
    assert recorder.lengths[3:] == [2] * 5
    # The end is the same; intermediate distances are taken after predictions 1 and 2 (0.6, 0.2).
    close(one, torch.full((3,), 0.0))
    close(grouped, torch.full((3,), 0.4))
    config = PlannerConfig(horizon=5, chunk_length=2, prediction_chunks=3, **BOUNDS)
    with pytest.raises(PlanningError, match="max_horizon 4"):
        check_prediction_length(recorder, config)
    with pytest.raises(PlanningError, match="max_horizon 4"):
        plan(recorder, current[0], goal[0], config)


def test_latent_cost_is_refused_where_it_cannot_work():
    wm, ae, reg = random_models()
    current, goal, _ = inputs()
    with pytest.raises(PlanningError, match="intermediate_weight"):
        PlannerConfig(cost_space="latent", intermediate_weight=0.5)
    with pytest.raises(PlanningError, match="cost_space"):
        PlannerConfig(cost_space="pixels")
    config = PlannerConfig(horizon=1, chunk_length=2, num_samples=4, iterations=1, elites=2, cost_space="latent")
    with pytest.raises(PlanningError, match="residual latent"):
        plan(RegressionPredictor(reg), current[0], goal[0], config)
    loaded = LoadedPredictor(RegressionPredictor(reg), "toy", TOKENS, CHANNELS, 2, 4, (-1.0, -1.0), (1.0, 1.0))
    with pytest.raises(PlanningError, match="residual latent"):
        check_cost_space(config, loaded)
    check_cost_space(config, LoadedPredictor(RLAWMPredictor(wm, ae), "toy", TOKENS, CHANNELS, 2, 4, *BOUNDS.values()))
    defaults = PlannerSettings(cost_space="latent", prediction_chunks=2).optimiser()
    assert (defaults.cost_space, defaults.prediction_chunks) == ("latent", 2)
    assert PlannerSettings().optimiser().cost_space == "features"  # the feature cost stays the default


# -- a trained toy RLA-WM ------------------------------------------------------------------------
CHUNK = 2  # actions per chunk; the world model is trained on 1 and 2 chunks per prediction


class TargetWorld:
    """Features linear in a 2-D agent position that moves to each chunk's last action (an
    absolute target, as in Push-T): where a plan ends is known exactly."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.weights = torch.randn(TOKENS * CHANNELS, 2, generator=generator)
        self.bias = torch.randn(TOKENS * CHANNELS, generator=generator)

    def features(self, position: torch.Tensor) -> torch.Tensor:
        return (position.reshape(-1, 2) @ self.weights.T + self.bias).view(-1, TOKENS, CHANNELS)


def train(model, loss_fn, steps: int) -> None:
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss, _ = loss_fn(torch.randint(0, 4096, (128,)))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()


@pytest.fixture(scope="module")
def toy() -> tuple[TargetWorld, RLAWMPredictor]:
    """RLA autoencoder, then RLA-WM on its latents, trained on the toy world (about 25 s)."""
    torch.manual_seed(0)
    world, latent = TargetWorld(), dict(latent_tokens=LATENT[0], latent_dim=LATENT[1])
    start, end = torch.rand(4096, 2) * 2 - 1, torch.rand(4096, 2) * 2 - 1
    current, future = world.features(start), world.features(end)
    scale = float((future - current).std())
    ae = RLAAutoencoder(RLAConfig(**SIZES, **latent, encoder_depth=1, decoder_depth=1, residual_scale=scale))
    train(ae, lambda i: ae.loss(current[i], future[i]), 300)
    # Sequences of one or two chunks (padded to two), as the paper trains on variable lengths.
    actions = torch.rand(4096, 2 * CHUNK, 2) * 2 - 1
    lengths = torch.randint(1, 3, (4096,)) * CHUNK
    with torch.no_grad():
        z = ae.encode(current, world.features(actions[torch.arange(4096), lengths - 1]))
    sizes = dict(condition_depth=1, flow_depth=1, max_horizon=2 * CHUNK, latent_scale=float(z.std()))
    wm = RLAWorldModel(WorldModelConfig(**SIZES, **latent, **BOUNDS, **sizes))
    train(wm, lambda i: wm.loss(current[i], actions[i], z[i], lengths[i]), 400)
    return world, RLAWMPredictor(wm, ae, steps=10, seed=0)


START, GOAL = torch.tensor([-0.5, -0.5]), torch.tensor([0.5, 0.3])  # 1.28 apart


def test_latent_cost_ranks_candidates_like_the_feature_cost(toy):
    world, predictor = toy
    current, goal = world.features(START), world.features(GOAL)
    candidates = torch.rand(64, 1, CHUNK, 2, generator=torch.Generator().manual_seed(1)) * 2 - 1
    predictor.reseed()  # the same flow noise for both costs: only the metric differs
    features = rollout_costs(predictor, current, goal, candidates)
    predictor.reseed()
    latent = latent_rollout_costs(predictor, current, goal, candidates)
    ranks = torch.stack([features.argsort().argsort(), latent.argsort().argsort()]).float()
    spearman = float(torch.corrcoef(ranks)[0, 1])
    assert spearman > 0.9, spearman  # measured 0.99
    # The latent cost's best candidate is (nearly) the feature cost's best.
    assert features[latent.argmin()] <= features.min() + 0.05 * features.median(), (features, latent)


@pytest.mark.parametrize(
    "horizon, prediction_chunks",
    [(1, 1), (2, 1), (2, 2)],
    ids=["one-chunk", "two-chunks-first-decoded", "two-chunks-one-prediction"],
)
def test_latent_plans_reach_the_goal_like_feature_plans(toy, horizon, prediction_chunks):
    world, predictor = toy
    current, goal = world.features(START)[0], world.features(GOAL)[0]
    reached = {}
    for cost_space in ("features", "latent"):
        config = PlannerConfig(
            horizon=horizon,
            chunk_length=CHUNK,
            num_samples=64,
            iterations=6,
            elites=8,
            cost_space=cost_space,
            prediction_chunks=prediction_chunks,
            **BOUNDS,
        )
        result = plan(predictor, current, goal, config)
        reached[cost_space] = float((result.actions[-1, -1] - GOAL).norm())  # the world's true end
        assert result.feature_cost is not None and result.feature_cost < 0.05 * float(
            feature_distance(current[None], goal[None])
        )
    # Both end near the goal (1.28 away at the start; measured 0.01-0.04), the latent plan no
    # farther than the feature plan beyond a margin.
    assert reached["features"] < 0.15 and reached["latent"] < 0.15, reached
    assert reached["latent"] <= reached["features"] + 0.1, reached
