"""CEM / MPPI planning over world-model rollouts: optimum on toy models with known solutions,
constraints, stopping (cancel, time budget), warm start, MPC, and the real predictors."""

from __future__ import annotations

import pytest
import torch

from rla_wm.control.planning import (
    MPCController,
    Planner,
    PlannerConfig,
    PlanningError,
    feature_distance,
    load_predictor,
    plan,
    project_actions,
    rollout_costs,
    shift_plan,
)
from rla_wm.models.checkpoint import CheckpointError
from rla_wm.models.prediction import RegressionPredictor, RLAWMPredictor
from rla_wm.models.regression import RegressionConfig, RegressionModel
from rla_wm.models.rla import RLAAutoencoder, RLAConfig
from rla_wm.models.world_model import RLAWorldModel, WorldModelConfig

TOKENS, CHANNELS = 4, 8


class SimulatedClock:
    """Seconds that pass only when a simulated model says it computed for that long."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class LinearWorld:
    """Features linear in a 2-D position: s = W p + b (b keeps cosine distances meaningful).

    mode "sum": each chunk moves the position by the sum of its actions (increments).
    mode "target": the position after a chunk is the chunk's last action (an absolute target
    that the agent reaches, as in Push-T).
    clock: with it, every prediction advances it by `seconds_per_call` (a slow model, no waiting).
    """

    name = "linear-toy"

    def __init__(
        self,
        mode: str = "sum",
        record: bool = False,
        clock: SimulatedClock | None = None,
        seconds_per_call: float = 0.0,
    ) -> None:
        generator = torch.Generator().manual_seed(1)
        self.weights = torch.randn(TOKENS * CHANNELS, 2, generator=generator)
        self.bias = torch.randn(TOKENS * CHANNELS, generator=generator) * 3
        self.mode = mode
        self.clock, self.seconds_per_call = clock, seconds_per_call
        self.seen: list[torch.Tensor] = [] if record else None
        self.calls = 0

    def features(self, position) -> torch.Tensor:
        position = torch.as_tensor(position, dtype=torch.float32).view(-1, 2)
        return (position @ self.weights.T + self.bias).view(-1, TOKENS, CHANNELS)

    def position(self, features: torch.Tensor) -> torch.Tensor:
        flat = features.reshape(features.shape[0], -1) - self.bias
        return flat @ torch.linalg.pinv(self.weights).T

    def predict(self, current: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.clock is not None:
            self.clock.now += self.seconds_per_call
        if self.seen is not None:
            self.seen.append(actions.clone())
        if self.mode == "sum":
            return self.features(self.position(current) + actions.sum(dim=1))
        return self.features(actions[:, -1])


def toy_config(**overrides) -> PlannerConfig:
    values = dict(
        horizon=3,
        chunk_length=2,
        num_samples=200,
        iterations=25,
        elites=20,
        action_low=(-1.0, -1.0),
        action_high=(1.0, 1.0),
        seed=0,
    )
    values.update(overrides)
    return PlannerConfig(**values)


@pytest.mark.parametrize("method", ["cem", "mppi"])
@pytest.mark.parametrize("cost", ["l2", "cosine"])
def test_reaches_a_reachable_goal(method, cost):
    world = LinearWorld("sum")
    start, goal = torch.tensor([0.0, 0.0]), torch.tensor([2.0, -1.5])  # 6 steps of at most 1: reachable
    config = toy_config(method=method, cost=cost)
    result = plan(world, world.features(start)[0], world.features(goal)[0], config)
    reached = start + result.actions.reshape(-1, 2).sum(dim=0)
    assert torch.allclose(reached, goal, atol=0.1), (reached, result.cost)
    assert result.cost < 1e-2 * float(feature_distance(world.features(start), world.features(goal), cost))
    assert result.stopped == "iterations" and len(result.stats) == config.iterations
    assert result.stats[-1].best_cost <= result.stats[0].best_cost


@pytest.mark.parametrize("method", ["cem", "mppi"])
def test_unreachable_goal_saturates_at_the_bound_corner(method):
    """Goal far outside the reachable set: the unique optimum is every action at (high_x, low_y)."""
    world = LinearWorld("sum")
    config = toy_config(method=method, action_low=(-1.0, -0.5), action_high=(0.5, 1.0))
    result = plan(world, world.features([0.0, 0.0])[0], world.features([50.0, -50.0])[0], config)
    actions = result.actions.reshape(-1, 2)
    assert torch.allclose(actions[:, 0], torch.full((6,), 0.5), atol=0.05), actions
    assert torch.allclose(actions[:, 1], torch.full((6,), -0.5), atol=0.05), actions


def test_every_sampled_sequence_respects_bounds_and_step_limit():
    world = LinearWorld("target", record=True)
    start = torch.tensor([100.0, 400.0])
    config = PlannerConfig(
        horizon=3,
        chunk_length=4,
        num_samples=64,
        iterations=4,
        action_low=(20.0, 20.0),
        action_high=(492.0, 300.0),
        max_delta=15.0,
        init_std=0.5,
    )
    result = plan(world, world.features(start)[0], world.features([480.0, 30.0])[0], config, start_action=start)
    sequences = [seen for seen in world.seen]
    assert len(sequences) == 3 * 4  # horizon chunks per iteration
    everything = torch.cat([s.reshape(-1, 2) for s in sequences] + [result.actions.reshape(-1, 2)])
    assert (everything[:, 0] >= 20).all() and (everything[:, 0] <= 492).all()
    assert (everything[:, 1] >= 20).all() and (everything[:, 1] <= 300).all()
    # The start (y=400) lies outside the bounds: bounds win over the step limit for y only.
    steps = result.actions.reshape(-1, 2)
    assert abs(float(steps[0, 0] - start[0])) <= 15.0 + 1e-4
    assert (steps[1:] - steps[:-1]).abs().max() <= 15.0 + 1e-4


def test_step_limit_target_world_reaches_goal_along_a_feasible_path():
    world = LinearWorld("target")
    start, goal = torch.tensor([200.0, 200.0]), torch.tensor([300.0, 160.0])  # 100 px in 12 steps of 20
    config = PlannerConfig(
        horizon=3,
        chunk_length=4,
        num_samples=200,
        iterations=20,
        elites=20,
        action_low=(0.0, 0.0),
        action_high=(512.0, 512.0),
        max_delta=20.0,
        init_std=0.1,
    )
    result = plan(world, world.features(start)[0], world.features(goal)[0], config, start_action=start)
    assert torch.allclose(result.actions[-1, -1], goal, atol=3.0), result.actions[-1, -1]
    path = torch.cat([start[None], result.actions.reshape(-1, 2)])
    assert (path[1:] - path[:-1]).abs().max() <= 20.0 + 1e-4


def test_intermediate_weight_pulls_early_chunks_to_the_goal():
    world = LinearWorld("target")
    start, goal = torch.tensor([0.0, 0.0]), torch.tensor([0.8, 0.8])
    final_only = plan(world, world.features(start)[0], world.features(goal)[0], toy_config(seed=3))
    accumulated = plan(
        world, world.features(start)[0], world.features(goal)[0], toy_config(seed=3, intermediate_weight=1.0)
    )
    # Only the last chunk matters without the intermediate term; with it every chunk ends at the goal.
    ends = accumulated.actions[:, -1]
    assert torch.allclose(ends, goal.expand_as(ends), atol=0.1), ends
    assert (final_only.actions[:-1, -1] - goal).norm(dim=-1).max() > 0.1


class ScaledCopyWorld:
    """One token [x, y, 5x, 5y] of a 2-D position moved by the sum of each chunk's actions: channels 2-3
    stand for a quantity the goal does not fix (an orientation the goal image cannot show)."""

    name = "scaled-copy-toy"

    @staticmethod
    def features(position) -> torch.Tensor:
        position = torch.as_tensor(position, dtype=torch.float32).view(-1, 2)
        return torch.cat([position, 5 * position], dim=1).view(-1, 1, 4)

    def predict(self, current: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.features(current[:, 0, :2] + actions.sum(dim=1))


def test_cost_channels_compare_only_the_leading_channels():
    world = ScaledCopyWorld()
    start = world.features([0.0, 0.0])[0]
    goal = torch.tensor([[2.0, -1.5, -10.0, 7.5]])  # channels 2-3 claim the opposite position
    for channels, expected in ((2, (2.0, -1.5)), (0, None)):
        result = plan(world, start, goal, toy_config(cost_channels=channels))
        reached = result.actions.reshape(-1, 2).sum(dim=0)
        if expected is not None:
            assert torch.allclose(reached, torch.tensor(expected), atol=0.1), reached
            assert result.cost < 1e-2
        else:  # all channels: the 25x heavier copy pulls the plan toward the opposite corner
            assert reached[0] < 0 < reached[1], reached
    with pytest.raises(PlanningError, match="exceeds the features' 4 channels"):
        plan(world, start, goal, toy_config(cost_channels=5, iterations=1))
    with pytest.raises(PlanningError, match="cost_channels needs cost_space 'features'"):
        toy_config(cost_space="latent", cost_channels=2)


def test_callback_cancels_between_iterations():
    world = LinearWorld("sum")
    seen = []

    def on_iteration(stats) -> bool:
        seen.append(stats)
        return stats.iteration == 3

    result = plan(
        world, world.features([0, 0])[0], world.features([1, 1])[0], toy_config(iterations=50), callback=on_iteration
    )
    assert result.stopped == "cancelled"
    assert [s.iteration for s in seen] == [1, 2, 3] and len(result.stats) == 3
    assert world.calls == 3 * 3  # no rollout after the cancel
    assert torch.isfinite(result.actions).all()


def test_time_budget_stops_before_an_iteration_would_overrun_it():
    clock = SimulatedClock()
    # 3 chunks of 1/64 s: 3/64 s per iteration (binary fractions, so the arithmetic is exact).
    world = LinearWorld("sum", clock=clock, seconds_per_call=1 / 64)
    result = plan(
        world,
        world.features([0, 0])[0],
        world.features([1, 1])[0],
        toy_config(iterations=1000, num_samples=16, time_budget=0.25),
        clock=clock,
    )
    # After 5 iterations (15/64 s) a 6th would end at 18/64 s > 0.25 s: planning stops there.
    assert result.stopped == "time_budget"
    assert [s.iteration for s in result.stats] == [1, 2, 3, 4, 5]
    assert [s.elapsed for s in result.stats] == [3 / 64 * k for k in range(1, 6)]
    assert result.elapsed == 15 / 64 and world.calls == 15
    # A budget shorter than one iteration still gives one iteration's plan.
    short = plan(
        world,
        world.features([0, 0])[0],
        world.features([1, 1])[0],
        toy_config(iterations=1000, num_samples=16, time_budget=0.01),
        clock=clock,
    )
    assert short.stopped == "time_budget" and len(short.stats) == 1
    assert torch.isfinite(short.actions).all()


def test_shift_plan_drops_executed_chunks_and_holds_the_last_target():
    previous = torch.arange(3 * 2 * 2, dtype=torch.float32).view(3, 2, 2)
    shifted = shift_plan(previous, 1)
    assert torch.equal(shifted[:2], previous[1:])
    assert torch.equal(shifted[2], previous[-1, -1].expand(2, 2))
    assert shift_plan(previous, 0, horizon=2).shape == (2, 2, 2)
    assert torch.equal(shift_plan(previous, 1, horizon=5)[4], previous[-1, -1].expand(2, 2))


def test_warm_start_is_the_initial_mean():
    world = LinearWorld("sum")
    warm = torch.full((3, 2, 2), 0.25)
    warm[0] = 0.5
    one_shot = toy_config(num_samples=1, iterations=1)  # only the mean is evaluated
    result = plan(world, world.features([0, 0])[0], world.features([1, 1])[0], one_shot, warm_start=warm)
    assert torch.equal(result.actions, warm)
    with pytest.raises(PlanningError, match="warm_start"):
        plan(world, world.features([0, 0])[0], world.features([1, 1])[0], one_shot, warm_start=torch.zeros(3, 5, 2))


def test_mpc_replans_from_the_newest_observation_with_a_shifted_warm_start():
    world = LinearWorld("sum")
    # The intermediate term makes the first chunk head for the goal; with the final distance
    # alone any first chunk that the later ones make up for is optimal.
    planner = Planner(world, toy_config(intermediate_weight=1.0))
    mpc = MPCController(planner)
    with pytest.raises(PlanningError, match="no goal"):
        mpc.step(world.features([0, 0])[0])
    goal = torch.tensor([1.5, 1.0])
    mpc.set_goal(world.features(goal)[0])
    first = mpc.step(world.features([0, 0])[0])
    assert first.chunk.shape == (2, 2) and torch.equal(first.chunk, first.result.actions[0])
    position = first.chunk.sum(dim=0)  # execute the first chunk
    # With one sample and one iteration the next plan is exactly the shifted warm start.
    mpc.config = toy_config(num_samples=1, iterations=1, intermediate_weight=1.0)
    second = mpc.step(world.features(position)[0])
    assert torch.equal(second.result.actions, shift_plan(first.result.actions, 1))
    mpc.config = planner.config
    for _ in range(3):
        position = position + mpc.step(world.features(position)[0]).chunk.sum(dim=0)
    assert torch.allclose(position, goal, atol=0.15), position
    # The same goal again (a latched goal image republished) keeps the warm start; a new one drops it.
    kept = mpc.previous
    assert mpc.set_goal(world.features(goal)[0]) is False and mpc.previous is kept
    assert mpc.set_goal(world.features(torch.tensor([0.5, 0.5]))[0]) is True and mpc.previous is None
    mpc.clear_goal()
    assert mpc.goal is None and mpc.previous is None


def test_same_seed_same_plan():
    world = LinearWorld("sum")
    args = (world, world.features([0, 0])[0], world.features([1, -1])[0])
    assert torch.equal(plan(*args, toy_config(seed=5)).actions, plan(*args, toy_config(seed=5)).actions)
    assert not torch.equal(plan(*args, toy_config(seed=5)).actions, plan(*args, toy_config(seed=6)).actions)


def test_bad_input_raises():
    world = LinearWorld("sum")
    good = world.features([0, 0])[0]
    nan = good.clone()
    nan[0, 0] = float("nan")
    with pytest.raises(PlanningError, match="current features"):
        plan(world, nan, good, toy_config())
    with pytest.raises(PlanningError, match="goal features"):
        plan(world, good, nan, toy_config())
    with pytest.raises(PlanningError, match="do not match"):
        plan(world, good, torch.zeros(TOKENS + 1, CHANNELS), toy_config())
    with pytest.raises(PlanningError, match="start_action"):
        plan(world, good, good, toy_config(), start_action=[float("nan"), 0.0])
    for bad in (
        dict(method="adam"),
        dict(cost="l3"),
        dict(action_low=(1.0, 0.0)),
        dict(iterations=0),
        dict(max_delta=-1.0),
        dict(action_low=(0.0,)),
    ):
        with pytest.raises(PlanningError):
            toy_config(**bad)

    class Broken(LinearWorld):
        def predict(self, current, actions):
            return torch.full_like(current, float("nan"))

    with pytest.raises(PlanningError, match="not finite"):
        plan(Broken(), good, good, toy_config(iterations=2, num_samples=4))


def test_rollout_costs_sub_batches_agree_and_project_clamps():
    world = LinearWorld("sum")
    chunks = torch.rand(10, 3, 2, 2, generator=torch.Generator().manual_seed(0)) - 0.5
    current, goal = world.features([0, 0]), world.features([0.5, 0.5])
    whole = rollout_costs(world, current, goal, chunks, "l1", 0.5)
    parts = rollout_costs(world, current, goal, chunks, "l1", 0.5, batch_size=3)
    assert torch.allclose(whole, parts)
    clamped = project_actions(
        torch.tensor([[[5.0, -5.0], [0.0, 0.0]]]),
        torch.tensor([-1.0, -1.0]),
        torch.tensor([1.0, 1.0]),
        torch.tensor([0.0, 0.0]),
        max_delta=0.5,
    )
    assert torch.equal(clamped, torch.tensor([[[0.5, -0.5], [0.0, 0.0]]]))


# -- the real predictors at tiny sizes -----------------------------------------------------------
REAL_TOKENS, REAL_CHANNELS = 16, 32
RLA = RLAConfig(
    token_dim=REAL_CHANNELS,
    num_tokens=REAL_TOKENS,
    latent_tokens=4,
    latent_dim=8,
    width=32,
    encoder_depth=1,
    decoder_depth=1,
    heads=2,
)
WM = WorldModelConfig(
    token_dim=REAL_CHANNELS,
    num_tokens=REAL_TOKENS,
    latent_tokens=4,
    latent_dim=8,
    width=32,
    condition_depth=1,
    flow_depth=1,
    heads=2,
    max_horizon=6,
    latent_scale=1.0,
    action_low=(20.0, 20.0),
    action_high=(492.0, 492.0),
)
REG = RegressionConfig(
    token_dim=REAL_CHANNELS,
    num_tokens=REAL_TOKENS,
    width=32,
    depth=1,
    heads=2,
    max_horizon=6,
    action_low=(20.0, 20.0),
    action_high=(492.0, 492.0),
)


@pytest.fixture(scope="module")
def real_predictors() -> tuple[RLAWMPredictor, RegressionPredictor]:
    """Tiny RLA-WM and regression predictors, built once for the module (planning only reads them)."""
    torch.manual_seed(0)
    autoencoder, world_model, regression = RLAAutoencoder(RLA), RLAWorldModel(WM), RegressionModel(REG)
    with torch.no_grad():  # zero-initialised outputs would make every candidate cost the same
        for model in (autoencoder.decoder.output, world_model.velocity, regression.output):
            model.weight.normal_(0, 0.05)
    return RLAWMPredictor(world_model, autoencoder, steps=2, seed=0), RegressionPredictor(regression)


@pytest.mark.parametrize("which", [0, 1], ids=["rla-wm", "regression"])
@pytest.mark.parametrize("method", ["cem", "mppi"])
def test_plans_with_real_predictors(real_predictors, which, method):
    predictor = real_predictors[which]
    generator = torch.Generator().manual_seed(0)
    current = torch.randn(REAL_TOKENS, REAL_CHANNELS, generator=generator)
    goal = torch.randn(REAL_TOKENS, REAL_CHANNELS, generator=generator)
    config = PlannerConfig(
        method=method,
        horizon=2,
        chunk_length=3,
        num_samples=12,
        iterations=2,
        elites=4,
        action_low=(20.0, 20.0),
        action_high=(492.0, 492.0),
        max_delta=30.0,
        batch_size=5,
    )
    start = torch.tensor([100.0, 200.0])
    result = plan(predictor, current, goal, config, start_action=start)
    assert result.actions.shape == (2, 3, 2) and torch.isfinite(result.actions).all()
    assert ((result.actions >= 20) & (result.actions <= 492)).all()
    assert (result.actions[0, 0] - start).abs().max() <= 30.0 + 1e-4
    assert result.cost >= 0 and len(result.stats) == 2
    again = plan(predictor, current, goal, config, start_action=start)
    assert torch.equal(result.actions, again.actions)  # seeded, RLA-WM's flow noise included


def test_load_predictor_from_checkpoints(real_predictors, tmp_path):
    rla_wm, regression = real_predictors
    rla_wm.autoencoder.save(tmp_path / "rla")
    rla_wm.world_model.save(tmp_path / "wm")
    regression.model.save(tmp_path / "reg")
    loaded = load_predictor("rla-wm", str(tmp_path / "rla"), str(tmp_path / "wm"), euler_steps=2)
    assert isinstance(loaded.predictor, RLAWMPredictor) and loaded.predictor.steps == 2
    assert (loaded.num_tokens, loaded.token_dim, loaded.max_horizon) == (REAL_TOKENS, REAL_CHANNELS, 6)
    assert loaded.action_low == (20.0, 20.0) and loaded.encoder_id == WM.encoder_id
    assert isinstance(
        load_predictor("regression", regression_checkpoint=str(tmp_path / "reg")).predictor, RegressionPredictor
    )
    with pytest.raises(CheckpointError):
        load_predictor("rla-wm", str(tmp_path / "rla"), str(tmp_path / "missing"))
    with pytest.raises(CheckpointError):  # a regression checkpoint is not a world model
        load_predictor("rla-wm", str(tmp_path / "rla"), str(tmp_path / "reg"))
    with pytest.raises(PlanningError, match="needs"):
        load_predictor("regression")
    with pytest.raises(PlanningError, match="one of"):
        load_predictor("dino-wm")
    other = RLAAutoencoder(
        RLAConfig(
            token_dim=REAL_CHANNELS,
            num_tokens=REAL_TOKENS,
            latent_tokens=2,
            latent_dim=8,
            width=32,
            encoder_depth=1,
            decoder_depth=1,
            heads=2,
        )
    )
    other.save(tmp_path / "other_rla")
    with pytest.raises(PlanningError, match="not trained together"):
        load_predictor("rla-wm", str(tmp_path / "other_rla"), str(tmp_path / "wm"))
