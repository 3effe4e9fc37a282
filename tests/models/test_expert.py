"""Scripted Push-T expert: succeeds, stays in the workspace and the gate's speed limit, is deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from rla_wm.envs.pusht.expert import (
    AGENT_HIGH,
    AGENT_LOW,
    AGENT_RADIUS,
    T_COG,
    PushTExpert,
    _outline_distance,
    run_episode,
)
from rla_wm.envs.pusht.sim import GOAL_POSE, WORKSPACE_HIGH, WORKSPACE_LOW, PushTSim


@pytest.fixture(scope="module")
def sim():
    sim = PushTSim(max_steps=300, image_size=32)
    yield sim
    sim.close()


@pytest.mark.parametrize("seed", [0, 7, 186])  # 186: the agent starts right beside the block
def test_expert_solves_fixed_seeds(sim, seed):
    result = run_episode(sim, PushTExpert(), seed)
    assert result.success, f"seed {seed}: coverage {result.coverage:.3f} after {result.steps} steps"
    assert result.steps < 300


def test_expert_frees_an_agent_that_starts_overlapping_the_block(sim):
    # Seed 6 spawns the agent inside the T; without backing off the expert would hold forever.
    result = run_episode(sim, PushTExpert(), 6)
    assert result.success


def test_actions_stay_in_the_workspace_and_within_the_lead_limit(sim):
    expert = PushTExpert(max_lead=40.0)
    frame = sim.reset(3)
    expert.reset()
    leads = []
    for _ in range(120):
        target = expert(frame)
        assert target.dtype == np.float32 and target.shape == (2,)
        assert np.isfinite(target).all()
        assert (target >= max(AGENT_LOW, WORKSPACE_LOW)).all() and (target <= min(AGENT_HIGH, WORKSPACE_HIGH)).all()
        # 40 px per 0.1 s step = 400 px/s, under the safety gate's 1000 px/s.
        leads.append(float(np.linalg.norm(target - frame.position)))
        assert leads[-1] <= 40.0 + 1e-4
        frame = sim.step(target)
        if frame.done:
            break
    # The limit was reached (about a quarter of the steps of this episode), so it was tested, not idle.
    assert sum(lead > 40.0 - 1e-3 for lead in leads) >= 5, max(leads)


def test_expert_is_deterministic(sim):
    def actions(seed: int) -> np.ndarray:
        expert = PushTExpert()
        frame = sim.reset(seed)
        out = []
        for _ in range(40):
            target = expert(frame)
            out.append(target)
            frame = sim.step(target)
        return np.array(out)

    np.testing.assert_array_equal(actions(11), actions(11))


def test_expert_walks_around_the_block_to_push_it_toward_the_goal():
    """Pose-only check: the T is right of the goal and the agent left of the T, so the agent must walk
    around the T (never through it) to its far side, then push toward the goal."""
    expert = PushTExpert()
    goal = np.asarray(GOAL_POSE)
    block = np.array([goal[0] + 100.0, goal[1], goal[2]])  # same angle: a pure translation is needed
    rotation = np.array([[np.cos(block[2]), -np.sin(block[2])], [np.sin(block[2]), np.cos(block[2])]])
    cog_x = block[0] + (rotation @ T_COG)[0]
    agent = np.array([cog_x - 120.0, goal[1]])
    clearance = []
    for _ in range(60):
        target = expert.act(agent, block, goal)
        if expert._pushing:
            break
        agent = agent + 0.5 * (target - agent)  # a lagging agent; the block stays put (no physics)
        clearance.append(_outline_distance(((agent - block[:2]) @ rotation)[None])[0])
    assert expert._pushing, "never reached a contact"
    assert min(clearance) > AGENT_RADIUS, "touched the block on the way"
    assert agent[0] > cog_x, "pushes from the goal's side: would move the block away from the goal"
    assert target[0] < agent[0] - 5.0, "the push must move the block toward the goal (left)"


def test_expert_rejects_non_finite_input():
    with pytest.raises(ValueError):
        PushTExpert().act(np.array([np.nan, 1.0]), np.array([200.0, 200.0, 0.0]))


def test_goal_image_shows_the_solved_task_without_touching_the_episode():
    from rla_wm.envs.pusht.sim import PushTSim

    sim = PushTSim(max_steps=10, image_size=96)
    try:
        frame = sim.reset(3)
        goal = sim.goal_image()
        assert goal.shape == (96, 96, 3) and goal.dtype == np.uint8
        assert np.abs(goal.astype(int) - frame.image.astype(int)).mean() > 1.0  # a different scene
        assert np.array_equal(sim.frame.image, frame.image)  # the running episode is untouched
        after = sim.step(frame.position)
        assert after.step == 1 and not after.success
    finally:
        sim.close()
