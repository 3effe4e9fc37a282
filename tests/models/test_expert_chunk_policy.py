"""The scripted expert served as a chunk policy on block state tokens (the ladder's top rung), and
`load_policy`, which picks what the policy node runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from rla_wm.envs.pusht.expert import AGENT_HIGH, AGENT_LOW, PushTExpert
from rla_wm.envs.pusht.privileged import (
    BLOCK_STATE_CHANNELS,
    BLOCK_STATE_ENCODER_ID,
    ExpertChunkPolicy,
    block_pose_from_tokens,
    block_state_tokens,
)
from rla_wm.envs.pusht.sim import GOAL_POSE, PushTSim
from rla_wm.models.checkpoint import CheckpointError
from rla_wm.models.policy import Policy
from rla_wm.models.policy_loading import load_policy

from conftest import REPO, tiny_policy_config

SEEDS = (1000, 1001, 1002, 1003)
PUSHT_LIMITS = REPO / "ros2_ws" / "src" / "rla_wm_ros" / "config" / "pusht_limits.yaml"


@pytest.fixture(scope="module")
def sim():
    sim = PushTSim(max_steps=300, image_size=32)
    yield sim
    sim.close()


def observe(frame) -> tuple[torch.Tensor, torch.Tensor]:
    """What the policy node feeds the policy: (1, 1, C) tokens and the (1, 2) agent position."""
    tokens = torch.from_numpy(block_state_tokens(frame.block_pose))[None]
    return tokens, torch.from_numpy(frame.position).float()[None]


def wrap(angle):
    return (np.asarray(angle) + np.pi) % (2 * np.pi) - np.pi


POSES = np.array([[256.0, 256.0, np.pi / 4], [100.0, 420.0, -3.0], [480.0, 30.0, 7.5], [0.0, 512.0, 0.0]])


def test_block_state_tokens_round_trip_the_pose():
    for pose in POSES:
        tokens = block_state_tokens(pose)
        assert tokens.shape == (1, BLOCK_STATE_CHANNELS) and tokens.dtype == np.float32
        assert (np.abs(tokens) <= 1.0 + 1e-6).all()  # scaled to the range a network expects
        decoded = block_pose_from_tokens(tokens)[0]
        np.testing.assert_allclose(decoded[:2], pose[:2], atol=0.01)
        assert abs(wrap(decoded[2] - pose[2])) < 1e-5
    with pytest.raises(ValueError):
        block_state_tokens([1.0, np.nan, 0.0])
    with pytest.raises(ValueError):
        block_pose_from_tokens(np.zeros((1, BLOCK_STATE_CHANNELS)))  # no angle in it


def test_a_policy_takes_block_state_tokens_as_a_one_by_one_grid():
    """The second rung: a Policy with one token of BLOCK_STATE_CHANNELS channels and no merging."""
    config = tiny_policy_config(
        num_tokens=1, token_dim=BLOCK_STATE_CHANNELS, token_merge=1, encoder_id=BLOCK_STATE_ENCODER_ID
    )
    policy = Policy(config).eval()
    assert policy.feature_grid == (1, 1, BLOCK_STATE_CHANNELS)
    tokens = torch.from_numpy(block_state_tokens(POSES[0]))[None]
    with torch.no_grad():
        chunk = policy(tokens, torch.tensor([[100.0, 100.0]]))
    assert chunk.shape == (1, config.chunk_length, 2) and torch.isfinite(chunk).all()


def test_expert_chunks_have_the_policy_interface_shape_and_bounds(sim):
    policy = load_policy("expert:pusht")
    assert isinstance(policy, ExpertChunkPolicy)
    config = policy.config
    assert (config.encoder_id, config.num_tokens, config.token_dim) == (BLOCK_STATE_ENCODER_ID, 1, 4)
    assert policy.feature_grid == (1, 1, BLOCK_STATE_CHANNELS)
    assert policy.to(torch.device("cpu")) is policy and policy.eval() is policy
    frame = sim.reset(SEEDS[0])
    fresh = PushTExpert(max_lead=config.max_lead)
    # The safety gate refuses a chunk with any point farther than max_step (per joint) from the state.
    max_step = float(yaml.safe_load(PUSHT_LIMITS.read_text())["max_step"])
    leads, reach = [], []
    for _ in range(60):
        chunk = policy(*observe(frame))
        assert chunk.shape == (1, config.chunk_length, config.action_dim) and chunk.dtype == torch.float32
        points = chunk[0].numpy()
        assert ((points >= AGENT_LOW) & (points <= AGENT_HIGH)).all()
        path = np.vstack([frame.position[None], points])
        assert (np.linalg.norm(np.diff(path, axis=0), axis=1) <= np.asarray(config.max_delta)[0] + 1e-3).all()
        leads.append(float(np.linalg.norm(points[0] - frame.position)))
        assert leads[-1] <= config.max_lead + 1e-3  # the command now keeps the expert's own bound
        reach.append(float(np.abs(points - frame.position).max()))
        frame = sim.step(points[0])
    assert sum(lead > config.max_lead - 1e-2 for lead in leads) >= 10  # the bound was reached, so it was tested
    assert max(reach) <= max_step, f"a chunk reaches {max(reach):.0f} px, the gate's max_step is {max_step:.0f}"
    # The first point is the expert's own command for a fresh episode.
    frame = sim.reset(SEEDS[1])
    tokens, state = observe(frame)
    np.testing.assert_array_equal(
        load_policy("expert:pusht")(tokens, state)[0, 0].numpy(),
        fresh.act(state[0].double().numpy(), block_pose_from_tokens(tokens[0, 0].double().numpy()), GOAL_POSE),
    )
    with pytest.raises(ValueError, match="batch size"):
        policy(tokens.repeat(2, 1, 1), state.repeat(2, 1))
    with pytest.raises(ValueError, match="shape"):
        policy(tokens[..., :3], state)


def test_first_points_replay_the_expert_exactly_and_solve_the_seeds(sim):
    """Executing the first point of every chunk is the expert itself, step for step: its memory advances
    once per call, and a new episode (the block and agent jump) resets it without being told.

    The direct expert sees what the policy sees (the pose read back from float32 tokens, the float32
    state), so any difference comes from the chunking, not from rounding."""
    policy = ExpertChunkPolicy()  # one policy for all episodes, never reset by hand
    direct = PushTExpert(max_lead=policy.config.max_lead)
    successes = 0
    prediction_errors: list[list[float]] = [[], [], []]  # chunk point k + 1 vs the command given k steps later
    for seed in SEEDS:
        direct.reset()
        frame = sim.reset(seed)
        chunks, targets = [], []
        while not frame.done:
            tokens, state = observe(frame)
            chunks.append(policy(tokens, state)[0].numpy())
            target = chunks[-1][0]
            targets.append(target)
            seen_pose = block_pose_from_tokens(tokens[0, 0].double().numpy())
            expected = direct.act(state[0].double().numpy(), seen_pose, GOAL_POSE)
            np.testing.assert_array_equal(target, expected, err_msg=f"seed {seed}, step {frame.step}")
            frame = sim.step(target)
        successes += frame.success
        for k, errors in enumerate(prediction_errors, start=1):
            errors += [float(np.linalg.norm(c[k] - t)) for c, t in zip(chunks, targets[k:], strict=False)]
    assert successes >= len(SEEDS) - 1, f"{successes}/{len(SEEDS)} solved"
    # The chunk is the expert's plan: its later points are the commands it then gives (the block moves
    # meanwhile, so not exactly). Assuming the agent reached each target would be off by ~13, 24, 30 px.
    medians = [float(np.median(errors)) for errors in prediction_errors]
    assert max(medians) < 8.0, medians


def test_a_new_episode_forgets_the_contact_being_pushed(sim):
    """Memory of a push in the last episode would steer the first command of the next one."""
    policy = ExpertChunkPolicy()
    stale = PushTExpert(max_lead=policy.config.max_lead)  # the expert without the reset
    frame = sim.reset(SEEDS[0])
    for _ in range(40):  # well into pushing
        policy(*observe(frame))
        frame = sim.step(stale(frame))
    frame = sim.reset(SEEDS[3])  # seeds 1000 -> 1003: the remembered push moves the first command ~25 px
    tokens, state = observe(frame)
    after_jump = policy(tokens, state)[0, 0].numpy()
    seen = (state[0].double().numpy(), block_pose_from_tokens(tokens[0, 0].double().numpy()), GOAL_POSE)
    fresh = PushTExpert(max_lead=policy.config.max_lead).act(*seen)
    np.testing.assert_array_equal(after_jump, fresh)
    remembered = stale.act(*seen)
    assert np.linalg.norm(remembered - fresh) > 1.0, "this case does not show the memory; pick other seeds"


def test_load_policy_untrained_is_seeded_and_unknown_names_are_checkpoint_errors(tmp_path):
    first, second, other = (load_policy("untrained", seed=s) for s in (3, 3, 4))
    assert isinstance(first, Policy) and not first.training
    state = first.state_dict()
    assert all(torch.equal(value, second.state_dict()[key]) for key, value in state.items())
    assert not all(torch.equal(value, other.state_dict()[key]) for key, value in state.items())
    with pytest.raises(CheckpointError, match="unknown expert"):
        load_policy("expert:ur5")
    with pytest.raises(CheckpointError):
        load_policy(str(tmp_path / "missing"))
    saved = Policy(tiny_policy_config()).save(tmp_path / "tiny")
    loaded = load_policy(str(saved))
    assert isinstance(loaded, Policy) and loaded.config == tiny_policy_config()
