"""So101Driver: the simulated SO-101 following JointTrajectory commands by joint_trajectory_controller's rules."""

from __future__ import annotations

import numpy as np
import pytest

from rla_wm.control.jtc import NANOSECONDS, Trajectory
from rla_wm.envs.so101.driver import PERIOD_NANOSECONDS, So101Driver
from rla_wm.envs.so101.expert import So101Expert
from rla_wm.envs.so101.sim import HOME, JOINT_NAMES, So101Sim

T0 = 1_700_000_000 * NANOSECONDS  # an ordinary ROS time, as the node's stamps are
PAN, ROLL, GRIPPER = (JOINT_NAMES.index(name) for name in ("shoulder_pan", "wrist_roll", "gripper"))
MOVE = np.zeros(len(JOINT_NAMES))
MOVE[[PAN, ROLL, GRIPPER]] = (0.4, 0.5, 0.6)  # joints gravity does not pull on, so they reach their targets


@pytest.fixture(scope="module")
def sim():
    sim = So101Sim(max_steps=60, render_images=False)
    yield sim
    sim.close()


def run(driver: So101Driver, steps: int, start_ns: int = T0) -> tuple[np.ndarray, int]:
    """Step `steps` periods after `start_ns`: (joint positions after each (steps, 6), the end time)."""
    positions = []
    now = start_ns
    for _ in range(steps):
        now += PERIOD_NANOSECONDS
        positions.append(driver.step(now).frame.joint_positions)
    return np.array(positions), now


def test_with_no_command_the_arm_holds_its_start_pose_without_sinking(sim):
    driver = So101Driver(sim)
    driver.reset(0)
    positions, _ = run(driver, 40)
    assert np.array_equal(driver.hold, HOME)  # the command stays the start pose, never the sagged measurement
    # The servos sag a little under gravity once, then settle (re-commanding the measured, sagged pose
    # instead would sink the arm by ~0.4 rad in these 4 s).
    assert np.abs(positions[-1] - positions[10]).max() < 5e-3
    assert np.abs(positions[-1] - HOME).max() < 0.05


def test_a_trajectory_is_interpolated_over_its_duration_with_joints_matched_by_name(sim):
    driver = So101Driver(sim)
    driver.reset(0)
    _, now = run(driver, 10)
    target = HOME + MOVE
    order = list(reversed(range(len(JOINT_NAMES))))  # the message lists the joints in another order
    trajectory = Trajectory.from_arrays([JOINT_NAMES[i] for i in order], target[None, order], [2 * NANOSECONDS])
    start = driver.frame.joint_positions.copy()
    assert driver.command(trajectory, now) == ""
    positions, _ = run(driver, 10, now)
    # Halfway through the 2 s, the command is halfway: interpolated from the state at receipt.
    assert np.allclose(driver.hold, start + 0.5 * (target - start))
    assert 0.15 < positions[-1, PAN] - HOME[PAN] < 0.25
    positions, _ = run(driver, 15, now + 10 * PERIOD_NANOSECONDS)
    assert np.allclose(driver.hold, target)
    assert np.abs(positions[-1] - target)[[PAN, ROLL, GRIPPER]].max() < 0.01  # the gripper moves in it too


def test_the_controller_samples_the_trajectory_within_each_period(sim):
    """Out and back within one period: a controller sampling only at the period's end would never move."""
    moved = {}
    for rate in (10, 100):
        driver = So101Driver(sim, update_rate=rate)
        driver.reset(0)
        _, now = run(driver, 10)
        here = driver.hold
        out = here.copy()
        out[PAN] += 0.3
        times = [PERIOD_NANOSECONDS // 2, PERIOD_NANOSECONDS]
        driver.command(Trajectory.from_arrays(JOINT_NAMES, np.stack([out, here]), times), now)
        frame = driver.step(now + PERIOD_NANOSECONDS).frame
        moved[rate] = abs(frame.joint_positions[PAN] - here[PAN]) + abs(frame.joint_velocities[PAN])
    assert moved[10] < 1e-6
    assert moved[100] > 0.05


def test_past_points_are_interpolated_through_not_replayed(sim):
    driver = So101Driver(sim)
    driver.reset(0)
    _, now = run(driver, 10)
    start = driver.hold
    # Stamped 1 s ago, with its points at 0.5 s (past) and 2 s (1 s ahead): the command starts where
    # the line between them is now, 1/3 of the way, not at the past point.
    first, last = start + MOVE / 3.0, start + MOVE
    trajectory = Trajectory.from_arrays(
        JOINT_NAMES, np.stack([first, last]), [NANOSECONDS // 2, 2 * NANOSECONDS], stamp_ns=now - NANOSECONDS
    )
    assert driver.command(trajectory, now) == ""
    driver.step(now + PERIOD_NANOSECONDS)
    expected = first + (last - first) * (0.6 / 1.5)  # 1.1 s after the stamp: 0.6 s into the 1.5 s segment
    assert np.allclose(driver.hold, expected)


def test_refused_messages_leave_the_running_trajectory_in_place(sim):
    driver = So101Driver(sim)
    driver.reset(0)
    _, now = run(driver, 10)
    start = driver.hold
    unknown = Trajectory.from_arrays((*JOINT_NAMES[:-1], "jaw"), (start + MOVE)[None], [NANOSECONDS])
    assert "do not match" in driver.command(unknown, now)
    positions, now = run(driver, 5, now)
    assert np.array_equal(driver.hold, start)  # nothing moved
    assert np.abs(positions[-1] - positions[0]).max() < 1e-3

    target = start + MOVE
    assert driver.command(Trajectory.from_arrays(JOINT_NAMES, target[None], [2 * NANOSECONDS]), now) == ""
    _, now = run(driver, 5, now)
    assert "empty trajectory" in driver.command(Trajectory(JOINT_NAMES, ()), now)
    positions, _ = run(driver, 25, now)
    assert np.allclose(driver.hold, target)  # the move went on after the empty trajectory, and then holds
    assert np.abs(positions[-1] - positions[-5]).max() < 1e-3


def test_non_finite_commands_are_refused_and_the_last_one_held(sim):
    driver = So101Driver(sim, update_rate=50)
    driver.reset(0)
    _, now = run(driver, 5)
    start = driver.hold
    bad = start.copy()
    bad[PAN] = np.nan
    driver.command(Trajectory.from_arrays(JOINT_NAMES, bad[None], [NANOSECONDS]), now)
    result = driver.step(now + PERIOD_NANOSECONDS)
    assert result.refused_commands == 5  # every controller update of the period
    assert np.array_equal(driver.hold, start)
    assert np.isfinite(result.frame.joint_positions).all()


def test_the_episode_ends_at_max_steps_and_the_driver_then_stands_still(sim):
    driver = So101Driver(sim)
    driver.reset(0)
    positions, now = run(driver, sim.max_steps)
    frame = driver.frame
    assert frame.done and not frame.success and frame.step == sim.max_steps
    driver.command(Trajectory.from_arrays(JOINT_NAMES, (HOME + MOVE)[None], [NANOSECONDS]), now)
    after, _ = run(driver, 3, now)
    assert driver.frame is frame and np.array_equal(after[-1], positions[-1])


@pytest.mark.parametrize("seed", (0, 4))
def test_the_expert_solves_the_task_through_trajectories(sim, seed):
    """The expert as a graph client drives it: one point 0.1 s ahead per step, stamped at receipt."""
    driver = So101Driver(sim)
    expert = So101Expert(sim.model)
    frame = driver.reset(seed)
    now = T0
    while not frame.done:
        command = expert.act_on_state(frame.joint_positions, frame.cube_pose, frame.zone)
        assert driver.command(Trajectory.from_arrays(JOINT_NAMES, command[None], [PERIOD_NANOSECONDS]), now) == ""
        now += PERIOD_NANOSECONDS
        frame = driver.step(now).frame
    assert frame.success, f"seed {seed}: cube {frame.distance:.3f} m from the zone after {frame.step} steps"


def test_update_rate_must_be_a_multiple_of_the_control_rate_up_to_the_physics_rate(sim):
    for rate in (15, 0, 510):
        with pytest.raises(ValueError, match="update_rate"):
            So101Driver(sim, update_rate=rate)
    assert So101Driver(sim, update_rate=500).update_rate == 500
