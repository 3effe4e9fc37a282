"""In-process closed loop (rla-wm rollout): the expert solves its episodes, holding still does not,
execute_steps sets how often the policy is asked, and the CLI writes what it prints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rla_wm.envs.pusht.privileged import BLOCK_STATE_ENCODER_ID, ExpertChunkConfig
from rla_wm.evaluation.rollout import run_rollouts, tokens_function, wilson_interval
from rla_wm.models.policy_loading import load_policy


class HoldStill:
    """Chunks that keep the agent where it is; counts its calls."""

    config = ExpertChunkConfig()
    feature_grid = (1, 1, ExpertChunkConfig().token_dim)

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, tokens: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return state[:, None].repeat(1, self.config.chunk_length, 1)


def test_expert_solves_unseen_seeds_in_process():
    policy = load_policy("expert:pusht")
    summary, episodes = run_rollouts(
        policy, tokens_function(BLOCK_STATE_ENCODER_ID, torch.device("cpu")), [1001, 1002], 1, progress=False
    )
    assert summary.successes == 2, episodes
    assert all(e.coverage > 0.9 and e.steps < 300 for e in episodes)


def test_holding_still_fails_and_execute_steps_sets_the_replans():
    policy = HoldStill()
    tokens_of = tokens_function(BLOCK_STATE_ENCODER_ID, torch.device("cpu"))
    summary, episodes = run_rollouts(policy, tokens_of, [1001], execute_steps=4, max_steps=40, progress=False)
    assert summary.successes == 0 and episodes[0].steps == 40
    assert episodes[0].replans == 10 == policy.calls  # 40 steps, 4 points executed per chunk
    with pytest.raises(ValueError, match="execute_steps"):
        run_rollouts(policy, tokens_of, [1001], execute_steps=0, progress=False)


def test_a_refused_frame_makes_no_chunk_and_the_episode_goes_on():
    """A camera estimator refusing a frame (PoseEstimatorError, a FeatureEncoderError) must not end the
    episode: as in the graph, that observation makes no chunk and the next frame is tried."""
    from rla_wm.models.keypoint_net import PoseEstimatorError

    policy = HoldStill()
    exact = tokens_function(BLOCK_STATE_ENCODER_ID, torch.device("cpu"))
    seen = []

    def every_other_refused(frame):
        seen.append(frame.step)
        if len(seen) % 2 == 0:
            raise PoseEstimatorError("no block pose in the frame")
        return exact(frame)

    summary, episodes = run_rollouts(policy, every_other_refused, [1001], execute_steps=2, max_steps=30, progress=False)
    episode = episodes[0]
    assert episode.steps == 30 and episode.refused > 0
    assert episode.replans == policy.calls == len(seen) - episode.refused
    # Each chunk runs 2 steps, each refusal 1: together they fill the episode.
    assert 2 * episode.replans + episode.refused == 30


def test_wilson_interval_brackets_the_rate():
    low, high = wilson_interval(25, 50)
    assert low < 0.5 < high and high - low == pytest.approx(0.27, abs=0.02)
    assert wilson_interval(50, 50)[1] == 1.0 and wilson_interval(50, 50)[0] > 0.9
    assert wilson_interval(0, 50)[0] == 0.0


def test_image_encoder_tokens_match_the_policy_grid(tmp_path):
    from rla_wm.envs.pusht.sim import PushTSim

    tokens_of = tokens_function("builtin:dinov2-tiny-random@56", torch.device("cpu"))
    sim = PushTSim(max_steps=2, image_size=96)
    try:
        tokens = tokens_of(sim.reset(3))
    finally:
        sim.close()
    assert tokens.shape[0] == 1 and tokens.shape[1] == 16 and torch.isfinite(tokens).all()
    with pytest.raises(ValueError, match="encoder id"):
        tokens_function("no-resolution", torch.device("cpu"))


def test_cli_prints_the_summary_and_writes_episodes(tmp_path, capsys):
    from rla_wm.cli import main

    main(["rollout", "--policy=expert:pusht", "--episodes=1", "--seed=1003", f"--out={tmp_path}"])
    printed = capsys.readouterr().out
    assert "1/1 episodes succeeded (rate 1.00" in printed
    saved = json.loads((tmp_path / "rollouts.json").read_text())
    assert saved["summary"]["successes"] == 1 and saved["episodes"][0]["seed"] == 1003
    assert np.isclose(saved["summary"]["success_rate"], 1.0)


class RecordingSim:
    """The Push-T sim, remembering every target it was stepped with."""

    def __init__(self, max_steps: int) -> None:
        from rla_wm.envs.pusht.sim import PushTSim

        self.sim = PushTSim(max_steps=max_steps, image_size=96)
        self.targets: list[np.ndarray] = []
        self.joint_names = self.sim.joint_names

    def reset(self, seed: int):
        return self.sim.reset(seed)

    def step(self, target):
        self.targets.append(np.array(target, dtype=np.float64))
        return self.sim.step(target)

    def close(self) -> None:
        self.sim.close()


class Ramp:
    """Chunks of 8 points 10 px apart along +x from the joint state: point k (1-based) is state + 10k."""

    config = ExpertChunkConfig()

    def __call__(self, tokens: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        steps = torch.arange(1, 9, dtype=torch.float32)[:, None] * torch.tensor([10.0, 0.0])
        return state[:, None] + steps[None]


def targets_with(timing, execute_steps: int, steps: int) -> tuple[np.ndarray, list[np.ndarray]]:
    from rla_wm.evaluation.rollout import run_episode

    sim = RecordingSim(max_steps=steps)
    try:
        start = np.asarray(sim.reset(1001).position, dtype=np.float64)
        tokens_of = tokens_function(BLOCK_STATE_ENCODER_ID, torch.device("cpu"))
        run_episode(sim, Ramp(), tokens_of, 1001, execute_steps, torch.device("cpu"), timing)
    finally:
        sim.close()
    return start, sim.targets


def test_zero_graph_timing_makes_each_chunk_point_the_next_target():
    from rla_wm.evaluation.rollout import GraphTiming

    start, targets = targets_with(GraphTiming(), execute_steps=3, steps=3)
    np.testing.assert_allclose(np.array(targets) - start, [[10, 0], [20, 0], [30, 0]], atol=1e-9)


def test_a_point_dropped_for_latency_makes_the_controller_interpolate_toward_the_next():
    from rla_wm.evaluation.rollout import GraphTiming

    # 60 ms after the observation with a 50 ms lead, the point due at 100 ms is dropped: JTC moves
    # from the state at receipt (60 ms) toward the 200 ms point, 40/140 of the way by the step at 100 ms.
    start, targets = targets_with(GraphTiming(latency=0.06, min_lead_time=0.05), execute_steps=2, steps=2)
    np.testing.assert_allclose(targets[0] - start, [20 * 0.04 / 0.14, 0], atol=1e-6)
    np.testing.assert_allclose(targets[1] - start, [20, 0], atol=1e-6)
    # With a 10 ms lead the same latency keeps that point: the in-process target again.
    start, targets = targets_with(GraphTiming(latency=0.06, min_lead_time=0.01), execute_steps=1, steps=1)
    np.testing.assert_allclose(targets[0] - start, [10, 0], atol=1e-6)


def test_a_late_chunk_leaves_the_previous_one_running_and_blending_fades_the_seam():
    from rla_wm.evaluation.rollout import GraphTiming

    # 150 ms late: the first step holds (nothing commanded yet), later steps follow the chunk.
    start, targets = targets_with(GraphTiming(latency=0.15), execute_steps=3, steps=3)
    np.testing.assert_allclose(targets[0], start, atol=1e-9)
    np.testing.assert_allclose(targets[1] - start, [20, 0], atol=1e-6)
    # Blending: a new chunk's first point is where the previous chunk is at that time.
    _, plain = targets_with(GraphTiming(), execute_steps=2, steps=4)
    _, blended = targets_with(GraphTiming(blend_time=0.2), execute_steps=2, steps=4)
    np.testing.assert_allclose(blended[:2], plain[:2], atol=1e-9)  # the first chunk has nothing to blend into
    assert not np.allclose(blended[2], plain[2])  # the second chunk's first point is the first chunk's third


def test_a_chunk_later_than_the_execute_window_still_arrives_and_runs():
    from rla_wm.evaluation.rollout import GraphTiming

    # 450 ms late with 3 steps per replan: the chunk still reaches the controller at 450 ms (a node
    # makes one chunk at a time), so the steps before hold and the ones after follow it.
    start, targets = targets_with(GraphTiming(latency=0.45), execute_steps=3, steps=6)
    np.testing.assert_allclose(np.array(targets[:4]), np.repeat(start[None], 4, axis=0), atol=1e-9)
    np.testing.assert_allclose(targets[4] - start, [50, 0], atol=1e-6)
    np.testing.assert_allclose(targets[5] - start, [60, 0], atol=1e-6)


def test_block_pose_noise_perturbs_the_seen_pose_with_the_asked_spread():
    from rla_wm.envs.pusht.privileged import block_pose_from_tokens
    from rla_wm.envs.pusht.sim import SimFrame
    from rla_wm.evaluation.rollout import BlockPoseNoise

    frame = SimFrame(
        image=np.zeros((8, 8, 3), np.uint8),
        position=np.zeros(2),
        velocity=np.zeros(2),
        reward=0.0,
        coverage=0.0,
        success=False,
        done=False,
        step=0,
        block_pose=np.array([256.0, 300.0, 0.5]),
    )
    exact = tokens_function(BLOCK_STATE_ENCODER_ID, torch.device("cpu"))
    np.testing.assert_allclose(block_pose_from_tokens(exact(frame).numpy()[0, 0]), [256.0, 300.0, 0.5], atol=1e-3)
    noisy = tokens_function(BLOCK_STATE_ENCODER_ID, torch.device("cpu"), block_noise=BlockPoseNoise(10.0, 20.0))
    poses = np.array([block_pose_from_tokens(noisy(frame).numpy()[0, 0]) for _ in range(2000)])
    errors = poses - [256.0, 300.0, 0.5]
    # Fresh draws per observation around the true pose, with the asked standard deviations.
    assert np.std(errors[:, 0]) == pytest.approx(10.0, rel=0.1) and np.std(errors[:, 1]) == pytest.approx(10.0, rel=0.1)
    assert np.degrees(np.std(errors[:, 2])) == pytest.approx(20.0, rel=0.1)
    assert abs(np.mean(errors[:, 0])) < 1.5
    with pytest.raises(ValueError, match="block-state encoder only"):
        tokens_function("builtin:dinov2-tiny-random@56", torch.device("cpu"), block_noise=BlockPoseNoise(1.0))
    with pytest.raises(ValueError, match=">= 0"):
        BlockPoseNoise(-1.0)
