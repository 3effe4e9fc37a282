"""The planner node's logic without ROS (rla_wm.control.planner_session / planner_setup / settings):
what is planned from which observation and state, refusals and their reasons, MPC bookkeeping,
chunk timing, and setting a planner up from its settings.

A toy predictor (features move by the actions) keeps every plan fast and checkable, and a
simulated clock replaces waiting for inputs to go stale.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from rla_wm.control.planner_session import (
    MAX_ITERATIONS,
    ChunkTiming,
    ObservationError,
    PlannerSession,
    Refusal,
    goal_settings,
)
from rla_wm.control.planner_setup import (
    PlannerSettings,
    check_action_bounds,
    check_models_fit,
    mpc_settings,
)
from rla_wm.control.planning import LoadedPredictor, MPCController, Planner, PlannerConfig, PlanningError
from rla_wm.control.settings import setting, setting_specs
from rla_wm.models.regression import RegressionConfig, RegressionModel

FEATURES_TIMEOUT, STATE_TIMEOUT, MAX_DELTA = 1.0, 0.5, 10.0


class SimulatedClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class MovingPoint:
    """One token whose 2 channels are a position; a chunk moves it to the chunk's last action."""

    name = "moving-point"

    def predict(self, current: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return actions[:, -1][:, None, :].to(current.dtype)


class BrokenModel(MovingPoint):
    def predict(self, current: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("CUDA out of memory")


def tokens(x: float, y: float) -> np.ndarray:
    return np.array([[x, y]], dtype=np.float32)


def make_session(predictor=None, clock: SimulatedClock | None = None) -> PlannerSession[str]:
    config = PlannerConfig(
        horizon=2,
        chunk_length=2,
        num_samples=32,
        iterations=3,
        elites=8,
        action_low=(0.0, 0.0),
        action_high=(100.0, 100.0),
        max_delta=MAX_DELTA,
    )
    planner = Planner(predictor or MovingPoint(), config)
    mpc = MPCController(planner, planner.settings(num_samples=8, iterations=1))
    return PlannerSession(planner, mpc, FEATURES_TIMEOUT, STATE_TIMEOUT, clock=clock or SimulatedClock())


def test_the_newest_map_is_the_observation_until_it_is_stale_and_a_refused_one_blocks_older_ones():
    clock = SimulatedClock()
    session = make_session(clock=clock)
    with pytest.raises(ObservationError, match="no feature map"):
        session.observation()
    session.observe_features("map-1", tokens(10, 20))
    observation, current = session.observation()
    assert observation == "map-1" and torch.equal(current, torch.tensor([[10.0, 20.0]]))
    # A refused map is the newest observation: the good one before it is not used instead.
    session.observe_features("map-2", None, "grid_mismatch: 4x16 is not 8x8")
    with pytest.raises(ObservationError, match="refused: grid_mismatch: 4x16"):
        session.observation()
    session.observe_features("map-3", tokens(1, 2))
    clock.now += FEATURES_TIMEOUT  # exactly at the timeout: still usable
    assert session.observation()[0] == "map-3"
    clock.now += 0.5
    with pytest.raises(ObservationError, match="1.5 s old"):
        session.observation()


def test_joint_state_counts_only_within_state_timeout():
    clock = SimulatedClock()
    session = make_session(clock=clock)
    assert session.fresh_state() is None
    session.observe_state(np.array([5.0, 6.0]))
    clock.now += STATE_TIMEOUT
    np.testing.assert_array_equal(session.fresh_state(), [5.0, 6.0])
    clock.now += 0.01
    assert session.fresh_state() is None
    with pytest.raises(Refusal) as refused:
        session.state_for_execution()
    assert refused.value.reason == "no_fresh_state" and "went stale while planning" in refused.value.detail


def test_one_goal_at_a_time():
    session = make_session()
    assert session.begin_goal() is True
    assert session.begin_goal() is False  # rejected, not queued
    session.end_goal()
    assert session.begin_goal() is True


def test_goal_settings_zero_keeps_the_default_and_out_of_range_values_are_refused():
    session = make_session()
    defaults = session.planner.config
    assert session.goal_settings(0, 0, 0, 0.0) == defaults
    custom = session.goal_settings(3, 16, 7, 2.5)
    assert (custom.horizon, custom.num_samples, custom.iterations, custom.time_budget) == (3, 16, 7, 2.5)
    assert custom.chunk_length == defaults.chunk_length and custom.max_delta == defaults.max_delta
    for values, words in (
        ((0, 0, MAX_ITERATIONS + 1, 0.0), f"iterations {MAX_ITERATIONS + 1} exceeds"),
        ((0, 0, 0, -1.0), "time_budget must be >= 0"),
        ((0, 0, 0, math.nan), "time_budget must be >= 0"),
    ):
        with pytest.raises(Refusal) as refused:
            session.goal_settings(*values)
        assert refused.value.reason == "bad_goal" and words in refused.value.detail
    with pytest.raises(PlanningError, match="exceeds"):
        goal_settings(session.planner, 101, 0, 0, 0.0)


def test_a_goal_is_planned_from_the_newest_observation_and_the_fresh_state():
    session = make_session()
    goal = torch.tensor([[40.0, 30.0]])
    with pytest.raises(Refusal) as refused:
        session.plan_goal(goal, session.planner.config, execute=False)
    assert refused.value.reason == "no_observation"
    session.observe_features("map-7", tokens(20, 20))
    with pytest.raises(Refusal) as refused:
        session.plan_goal(goal, session.planner.config, execute=True)
    assert refused.value.reason == "no_fresh_state" and session.plans == 0
    session.observe_state(np.array([20.0, 20.0]))
    iterations = []
    planned = session.plan_goal(goal, session.planner.config, execute=True, callback=iterations.append)
    assert planned.observation == "map-7" and [s.iteration for s in iterations] == [1, 2, 3]
    # Executable from the measured state: the first target is at most max_delta away.
    assert (planned.plan.first_chunk[0] - torch.tensor([20.0, 20.0])).abs().max() <= MAX_DELTA + 1e-4
    assert session.plans == 1 and session.last_cost == planned.plan.cost
    # Without execute, no state is needed (the plan starts from holding the middle of the range).
    fresh = make_session()
    fresh.observe_features("map-1", tokens(20, 20))
    assert fresh.plan_goal(goal, fresh.planner.config, execute=False).observation == "map-1"


def test_a_cancel_from_the_callback_stops_the_goal_and_a_failing_model_is_a_refusal():
    session = make_session()
    session.observe_features("map", tokens(20, 20))
    settings = session.planner.settings(iterations=50)
    planned = session.plan_goal(torch.tensor([[40.0, 30.0]]), settings, execute=False, callback=lambda s: True)
    assert planned.plan.stopped == "cancelled" and len(planned.plan.stats) == 1
    broken = make_session(BrokenModel())
    broken.observe_features("map", tokens(20, 20))
    with pytest.raises(Refusal) as refused:
        broken.plan_goal(torch.tensor([[40.0, 30.0]]), broken.planner.config, execute=False)
    assert refused.value.reason == "planning_failed" and "CUDA out of memory" in refused.value.detail
    assert broken.plans == 0 and not broken.model_lock.locked()


def test_mpc_replans_once_per_observation_and_only_toward_a_goal():
    session = make_session()
    session.observe_state(np.array([20.0, 20.0]))
    session.observe_features("map-1", tokens(20, 20))
    assert session.replan() is None  # no goal
    assert session.set_goal(torch.tensor([[60.0, 20.0]])) is True and session.has_goal
    replan = session.replan()
    assert replan is not None and replan.observation == "map-1"
    assert replan.chunk.shape == (2, 2) and np.isfinite(replan.chunk).all() and math.isfinite(replan.cost)
    assert session.replan() is None  # never twice from one observation
    session.observe_features("map-2", tokens(25, 20))
    assert session.replan().observation == "map-2" and session.plans == 2
    # A latched goal republished unchanged keeps the warm start; clearing stops the replans.
    assert session.set_goal(torch.tensor([[60.0, 20.0]])) is False
    session.clear_goal()
    session.observe_features("map-3", tokens(25, 20))
    assert not session.has_goal and session.replan() is None and session.plans == 2


def test_mpc_skips_refused_maps_and_waits_for_an_action_goal_but_refuses_stale_inputs():
    clock = SimulatedClock()
    session = make_session(clock=clock)
    session.set_goal(torch.tensor([[60.0, 20.0]]))
    session.observe_state(np.array([20.0, 20.0]))
    session.observe_features("refused", None, "encoder_mismatch")
    assert session.replan() is None  # counted when it came, not again on every tick
    session.observe_features("map-1", tokens(20, 20))
    with session.model_lock:  # an action goal is planning: the next tick retries
        assert session.replan() is None
    clock.now += STATE_TIMEOUT + 0.1
    with pytest.raises(Refusal) as refused:
        session.replan()
    assert refused.value.reason == "no_fresh_state" and session.last_error == refused.value.detail
    clock.now += FEATURES_TIMEOUT  # the map is now 1.6 s old; the state is fresh again
    session.observe_state(np.array([20.0, 20.0]))
    with pytest.raises(Refusal) as refused:
        session.replan()
    assert refused.value.reason == "no_observation" and refused.value.detail.startswith("MPC: not replanning")
    assert session.plans == 0 and not session.model_lock.locked()


def test_summary_reports_the_bookkeeping():
    session = make_session()
    summary = session.summary()
    assert summary["world_model"] == "moving-point" and summary["plans"] == 0
    assert summary["last_cost"] == "nan" and summary["mpc_goal"] is False
    session.observe_features("map", tokens(20, 20))
    session.plan_goal(torch.tensor([[40.0, 30.0]]), session.planner.config, execute=False)
    session.last_plan_delay = 0.25
    summary = session.summary()
    assert summary["plans"] == 1 and summary["last_plan_delay_ms"] == "250.0"
    assert float(summary["last_cost"]) == pytest.approx(session.last_cost, rel=1e-5)


def test_a_late_plan_keeps_its_spacing_and_starts_late():
    timing = ChunkTiming(point_period=0.1, min_lead_time=0.05)
    np.testing.assert_allclose(timing.plan_times(3), [0.1, 0.2, 0.3])
    # Published right at the observation: only the lead time shifts it.
    delay, times = timing.late_start(3, stamp=10.0, now=10.0)
    assert delay == pytest.approx(0.05)
    np.testing.assert_allclose(times, [0.15, 0.25, 0.35])
    # Planning took 0.7 s: the first target is still a full step after now + lead, not already due.
    delay, times = timing.late_start(3, stamp=10.0, now=10.7)
    assert delay == pytest.approx(0.75)
    np.testing.assert_allclose(times - (10.7 - 10.0), [0.15, 0.25, 0.35])
    # A stamp ahead of the clock never moves the points earlier than their spacing.
    assert timing.late_start(2, stamp=10.0, now=9.0)[0] == 0.0


# -- setting a planner up ------------------------------------------------------------------------
ENCODER_ID, TOKENS, CHANNELS = "builtin:dinov2-tiny-random@56", 16, 32


def loaded_model(**overrides) -> LoadedPredictor:
    values = dict(
        predictor=MovingPoint(),
        encoder_id=ENCODER_ID,
        num_tokens=TOKENS,
        token_dim=CHANNELS,
        action_dim=2,
        max_horizon=6,
        action_low=(20.0, 20.0),
        action_high=(492.0, 492.0),
    )
    return LoadedPredictor(**{**values, **overrides})


def test_the_world_model_must_fit_the_encoder_the_joints_and_the_chunk_length():
    loaded = loaded_model()
    check_models_fit(loaded, ENCODER_ID, TOKENS, CHANNELS, ["x", "y"], 6)
    for args, words in (
        ((f"{ENCODER_ID[:-3]}@224", TOKENS, CHANNELS, ["x", "y"], 5), f"trained on {ENCODER_ID!r}"),
        ((ENCODER_ID, 64, CHANNELS, ["x", "y"], 5), "16x32 tokens"),
        ((ENCODER_ID, TOKENS, CHANNELS, ["x", "y", "z"], 5), "action_dim 2"),
        ((ENCODER_ID, TOKENS, CHANNELS, ["x", "y"], 7), "exceeds the world model's max_horizon 6"),
    ):
        with pytest.raises(PlanningError, match=words.replace("(", r"\(")):
            check_models_fit(loaded, *args)


def test_action_bounds_cover_every_joint_and_a_wider_range_is_a_warning():
    loaded = loaded_model()
    assert check_action_bounds(PlannerConfig(action_low=(20.0, 20.0), action_high=(492.0, 492.0)), loaded) is None
    warning = check_action_bounds(PlannerConfig(action_low=(0.0, 20.0), action_high=(492.0, 492.0)), loaded)
    assert warning is not None and "extrapolation" in warning
    with pytest.raises(PlanningError, match="need 2 values"):
        check_action_bounds(PlannerConfig(action_low=(0.0,), action_high=(1.0,)), loaded)


def test_mpc_settings_default_budget_is_a_share_of_the_period():
    planner = Planner(MovingPoint(), PlannerConfig(horizon=5, time_budget=3.0))
    replan = mpc_settings(planner, rate=4.0, horizon=0, num_samples=8, iterations=2, time_budget=0.0)
    assert (replan.horizon, replan.num_samples, replan.iterations) == (5, 8, 2)
    assert replan.time_budget == pytest.approx(0.9 / 4.0)
    assert mpc_settings(planner, 4.0, 2, 8, 2, time_budget=0.1).time_budget == 0.1
    assert mpc_settings(planner, 4.0, 2, 8, 2, 0.0).horizon == 2
    assert mpc_settings(planner, 0.0, 0, 8, 2, 0.0).time_budget == 0.0  # MPC off: no budget (and no replans)


@pytest.fixture(scope="module")
def regression_checkpoint(tmp_path_factory) -> str:
    """A tiny regression world model over a 4x4x32 feature grid, saved once for the module."""
    torch.manual_seed(0)
    config = RegressionConfig(
        token_dim=CHANNELS,
        num_tokens=TOKENS,
        width=32,
        depth=1,
        heads=2,
        max_horizon=6,
        action_low=(20.0, 20.0),
        action_high=(492.0, 492.0),
        encoder_id=ENCODER_ID,
    )
    folder = tmp_path_factory.mktemp("planner") / "regression"
    RegressionModel(config).save(folder)
    return str(folder)


def test_settings_build_a_session_with_the_parameters_as_optimiser_defaults(regression_checkpoint):
    settings = PlannerSettings(
        world_model="regression",
        regression_checkpoint=regression_checkpoint,
        chunk_length=3,
        horizon=4,
        num_samples=16,
        action_low=[30.0, 30.0],
        action_high=[400.0, 400.0],
        max_delta=0.0,
        mpc_rate=2.0,
        mpc_num_samples=8,
    )
    build = settings.build(ENCODER_ID, TOKENS, CHANNELS)
    planner = build.session.planner
    assert (planner.config.horizon, planner.config.chunk_length, planner.config.num_samples) == (4, 3, 16)
    assert planner.config.action_low == (30.0, 30.0) and planner.config.max_delta is None  # 0 = none
    assert build.session.mpc.config.num_samples == 8 and build.session.mpc.config.time_budget == pytest.approx(0.45)
    assert build.warnings == [] and "regression on" in build.summary and "MPC 8x" in build.summary
    assert "at 2.0 Hz" in build.summary
    # Bounds beyond the training range work, with a warning.
    wide = dataclasses.replace(settings, action_low=[0.0, 0.0])
    assert "extrapolation" in wide.build(ENCODER_ID, TOKENS, CHANNELS).warnings[0]
    timing = settings.timing()
    assert (timing.point_period, timing.min_lead_time) == (settings.point_period, settings.min_lead_time)


def test_settings_refuse_a_missing_or_foreign_world_model_and_bad_optimiser_values(regression_checkpoint):
    settings = PlannerSettings(world_model="regression", regression_checkpoint=regression_checkpoint, chunk_length=3)
    for changed, words in (
        (dict(regression_checkpoint=""), "cannot load world model 'regression': .*needs a regression checkpoint"),
        (dict(world_model="dino-wm"), "cannot load world model 'dino-wm'"),
        (dict(method="adam"), "bad optimiser parameters: method"),
        (dict(action_low=[0.0]), "bad optimiser parameters"),
        (dict(cost_channels=CHANNELS + 1), f"bad optimiser parameters: cost_channels {CHANNELS + 1} exceeds"),
    ):
        with pytest.raises(PlanningError, match=words):
            dataclasses.replace(settings, **changed).build(ENCODER_ID, TOKENS, CHANNELS)
    with pytest.raises(PlanningError, match="trained on"):
        settings.build("facebook/dinov2-small@224", 256, 384)


def test_setting_specs_list_every_field_with_its_description_and_range():
    specs = {spec.name: spec for spec in setting_specs(PlannerSettings)}
    assert list(specs) == [field.name for field in dataclasses.fields(PlannerSettings)]
    assert specs["joint_names"].default == ["agent_x", "agent_y"]  # a list: a ROS array parameter
    assert specs["iterations"].value_range == (1, MAX_ITERATIONS) and specs["method"].value_range is None
    assert all(spec.description for spec in specs.values())
    defaults = PlannerSettings()
    assert all(
        getattr(defaults, name) == (tuple(spec.default) if isinstance(spec.default, list) else spec.default)
        for name, spec in specs.items()
    )

    @dataclasses.dataclass
    class Undocumented:
        rate: float = setting(1.0, "Hz.")
        depth: int = 3

    with pytest.raises(TypeError, match="depth has no description"):
        setting_specs(Undocumented)
