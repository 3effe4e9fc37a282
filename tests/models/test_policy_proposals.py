"""A policy's sampled chunks as the planner's first candidates (rla_wm.control.policy_proposals and
`plan(..., proposals=...)`): they are scored, the best wins, the planner node's settings load and
check the policy, and MPC uses them at every replan."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_planner_session import CHANNELS, ENCODER_ID, TOKENS, MovingPoint

from rla_wm.control.planner_session import PlannerSession
from rla_wm.control.planner_setup import PlannerSettings
from rla_wm.control.planning import MPCController, Planner, PlannerConfig, PlanningError, plan
from rla_wm.control.policy_proposals import PolicyProposals
from rla_wm.models.policy import Policy, PolicyConfig
from rla_wm.models.regression import RegressionConfig, RegressionModel


class FixedChunks:
    """A chunk policy that draws one of `chunks` (K, T, A) per sample, in turn, and records its inputs."""

    def __init__(self, chunks: torch.Tensor, encoder_id: str = "point", tokens: int = 1, channels: int = 2) -> None:
        self.chunks = chunks
        self.config = SimpleNamespace(
            encoder_id=encoder_id, num_tokens=tokens, token_dim=channels, action_dim=chunks.shape[-1]
        )
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, tokens: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        self.calls.append((tokens, state))
        return self.chunks[torch.arange(len(tokens)) % len(self.chunks)]


def point_config(**overrides) -> PlannerConfig:
    values = dict(
        horizon=2,
        chunk_length=2,
        num_samples=8,
        iterations=1,
        elites=2,
        action_low=(0.0, 0.0),
        action_high=(100.0, 100.0),
        init_std=1e-4,  # random samples stay where the robot is: only a proposal can reach the goal
        seed=0,
    )
    values.update(overrides)
    return PlannerConfig(**values)


def test_a_proposal_that_reaches_the_goal_is_chosen_where_random_samples_cannot_find_it():
    start, goal = torch.tensor([[10.0, 10.0]]), torch.tensor([[80.0, 30.0]])
    config = point_config()
    alone = plan(MovingPoint(), start, goal, config, start_action=start[0])
    assert alone.cost > 1000.0  # the random samples hold still
    towards = torch.tensor([[80.0, 30.0]]).expand(config.steps, 2)
    away = torch.tensor([[0.0, 90.0]]).expand(config.steps, 2)
    proposals = torch.stack([away, towards])
    result = plan(MovingPoint(), start, goal, config, start_action=start[0], proposals=proposals)
    assert result.cost < 1e-6
    assert torch.equal(result.actions.reshape(-1, 2), towards)


def test_with_proposals_the_warm_start_is_not_a_fixed_candidate():
    """A warm start is the plan of an older observation: with proposals it no longer competes as is."""
    start, goal = torch.tensor([[10.0, 10.0]]), torch.tensor([[80.0, 30.0]])
    config = point_config(num_samples=2)
    warm = goal.expand(config.horizon, config.chunk_length, 2)  # predicted to reach the goal exactly
    without = plan(MovingPoint(), start, goal, config, start_action=start[0], warm_start=warm)
    assert without.cost < 1e-6
    proposals = torch.tensor([[50.0, 50.0]]).expand(2, config.steps, 2)
    result = plan(MovingPoint(), start, goal, config, start_action=start[0], warm_start=warm, proposals=proposals)
    assert torch.equal(result.actions.reshape(-1, 2), proposals[0])


def test_proposals_are_scored_in_the_first_iteration_only_and_must_fit():
    """Later iterations search around what the first one found; proposals that do not fit are refused."""
    seen: list[torch.Tensor] = []

    class Recording(MovingPoint):
        def predict(self, current, actions):
            seen.append(actions.clone())
            return super().predict(current, actions)

    start, goal = torch.tensor([[10.0, 10.0]]), torch.tensor([[80.0, 30.0]])
    config = point_config(iterations=2, horizon=1)
    marker = torch.full((1, config.steps, 2), 55.0)
    plan(Recording(), start, goal, config, start_action=start[0], proposals=marker)
    first, second = seen
    assert (first == 55.0).all(dim=(1, 2)).sum() == 1 and not (second == 55.0).all(dim=(1, 2)).any()
    for bad, words in (
        (torch.zeros(config.num_samples + 1, config.steps, 2), "do not fit in num_samples"),
        (torch.zeros(1, config.steps + 1, 2), "proposals must be"),
        (torch.full((1, config.steps, 2), float("nan")), "NaN"),
    ):
        with pytest.raises(PlanningError, match=words):
            plan(MovingPoint(), start, goal, config, start_action=start[0], proposals=bad)


def test_policy_chunks_become_full_horizon_plans_holding_their_last_target():
    chunks = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], [[7.0, 8.0], [9.0, 9.0], [9.0, 7.0]]])
    policy = FixedChunks(chunks)
    proposals = PolicyProposals(policy, count=3)
    tokens, state = torch.tensor([[0.5, 0.5]]), torch.tensor([2.0, 2.0])
    plans = proposals(tokens, state, steps=5)
    assert plans.shape == (3, 5, 2)
    assert torch.equal(plans[0], torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [5.0, 6.0], [5.0, 6.0]]))
    assert torch.equal(plans[2], plans[0]) and torch.equal(plans[1, 3:], torch.tensor([[9.0, 7.0]] * 2))
    assert torch.equal(proposals(tokens, state, steps=2), chunks[[0, 1, 0], :2])  # a shorter plan: cut
    # Every sample reads the same observation and measured state.
    batch_tokens, batch_state = policy.calls[0]
    assert batch_tokens.shape == (3, 1, 2) and torch.equal(batch_state, state.expand(3, 2))
    policy.chunks = torch.full((1, 3, 2), float("inf"))
    with pytest.raises(PlanningError, match="NaN/inf"):
        proposals(tokens, state, steps=5)


def test_a_policy_of_another_feature_space_or_joint_count_is_refused():
    proposals = PolicyProposals(FixedChunks(torch.zeros(1, 3, 2), encoder_id="camera-a"), count=2)
    proposals.check_fits("camera-a", 1, 2, 2)
    with pytest.raises(PlanningError, match="reads 'camera-a'"):
        proposals.check_fits("camera-b", 1, 2, 2)
    with pytest.raises(PlanningError, match="2 actions, the planner 3"):
        proposals.check_fits("camera-a", 1, 2, 3)


def test_mpc_plans_from_the_policys_proposals_at_every_replan():
    config = point_config(horizon=2, num_samples=4)
    planner = Planner(MovingPoint(), config)
    policy = FixedChunks(torch.tensor([[[20.0, 20.0], [40.0, 25.0], [60.0, 30.0]]]))
    session: PlannerSession[str] = PlannerSession(
        planner, MPCController(planner), 1.0, 0.5, proposals=PolicyProposals(policy, count=2)
    )
    session.set_goal(torch.tensor([[60.0, 30.0]]))
    session.observe_state(np.array([10.0, 10.0]))
    session.observe_features("frame 1", np.array([[10.0, 10.0]], dtype=np.float32))
    replan = session.replan()
    assert replan is not None and replan.cost < 1e-6
    np.testing.assert_array_equal(replan.chunk, [[20.0, 20.0], [40.0, 25.0]])  # the policy's first chunk
    tokens, state = policy.calls[-1]
    assert torch.equal(tokens[0], torch.tensor([[10.0, 10.0]])) and torch.equal(state[0], torch.tensor([10.0, 10.0]))
    session.observe_features("frame 2", np.array([[20.0, 20.0]], dtype=np.float32))
    assert session.replan() is not None and len(policy.calls) == 2


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    """A tiny regression world model and a tiny policy over the same 4x4x32 feature grid."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("proposals")
    world = RegressionConfig(
        token_dim=CHANNELS, num_tokens=TOKENS, width=32, depth=1, heads=2, max_horizon=6, encoder_id=ENCODER_ID
    )
    RegressionModel(world).save(root / "regression")
    policy = PolicyConfig(
        token_dim=CHANNELS, num_tokens=TOKENS, width=32, depth=1, heads=2, encoder_id=ENCODER_ID, action_head="flow"
    )
    Policy(policy).save(root / "policy")
    Policy(dataclasses.replace(policy, encoder_id="builtin:dinov2-tiny-random@224")).save(root / "foreign")
    return {name: str(root / name) for name in ("regression", "policy", "foreign")}


def test_planner_settings_load_the_proposal_policy_and_refuse_one_that_does_not_fit(checkpoints):
    settings = PlannerSettings(
        world_model="regression",
        regression_checkpoint=checkpoints["regression"],
        chunk_length=3,
        num_samples=16,
        mpc_rate=2.0,
        mpc_num_samples=8,
        proposal_policy=checkpoints["policy"],
        policy_proposals=6,
    )
    build = settings.build(ENCODER_ID, TOKENS, CHANNELS)
    assert build.session.proposals.count == 6 and "6 proposals from" in build.summary
    plans = build.session.propose(torch.zeros(TOKENS, CHANNELS), torch.tensor([256.0, 256.0]), build.session.mpc.config)
    assert plans.shape == (6, build.session.mpc.config.steps, 2) and torch.isfinite(plans).all()
    for changed, words in (
        (dict(policy_proposals=9), "policy_proposals 9 do not fit in mpc_num_samples 8"),
        (dict(proposal_policy=checkpoints["foreign"]), "proposal policy reads 'builtin:dinov2-tiny-random@224'"),
        (dict(proposal_policy=checkpoints["regression"] + "-missing"), "cannot load proposal_policy"),
    ):
        with pytest.raises(PlanningError, match=words):
            dataclasses.replace(settings, **changed).build(ENCODER_ID, TOKENS, CHANNELS)
    with pytest.raises(PlanningError, match="published_chunks 6 exceeds the plans' horizon"):
        dataclasses.replace(settings, published_chunks=6).build(ENCODER_ID, TOKENS, CHANNELS)
    assert (
        dataclasses.replace(settings, published_chunks=2).build(ENCODER_ID, TOKENS, CHANNELS).session.published_chunks
        == 2
    )
    plain = dataclasses.replace(settings, proposal_policy="").build(ENCODER_ID, TOKENS, CHANNELS)
    assert plain.session.proposals is None and "proposals" not in plain.summary


def test_a_session_publishes_the_first_published_chunks_of_each_plan():
    config = point_config(horizon=3, num_samples=4)
    planner = Planner(MovingPoint(), config)
    policy = FixedChunks(torch.tensor([[[20.0, 20.0], [40.0, 25.0], [60.0, 30.0], [70.0, 30.0]]]))
    session: PlannerSession[str] = PlannerSession(
        planner, MPCController(planner), 1.0, 0.5, proposals=PolicyProposals(policy, count=1), published_chunks=2
    )
    session.set_goal(torch.tensor([[70.0, 30.0]]))
    session.observe_state(np.array([10.0, 10.0]))
    session.observe_features("frame", np.array([[10.0, 10.0]], dtype=np.float32))
    replan = session.replan()
    np.testing.assert_array_equal(replan.chunk, [[20.0, 20.0], [40.0, 25.0], [60.0, 30.0], [70.0, 30.0]])
    assert replan.actions.shape == (3, 2, 2)  # the whole plan stays the warm start
    with pytest.raises(PlanningError, match="published_chunks"):
        PlannerSession(planner, MPCController(planner), 1.0, 0.5, published_chunks=0)
