"""The teleop node's logic without ROS (rla_wm.control.teleop_session, expert_source,
terminal_keys, freshness): chunks per source, freshness of inputs, the expert's step pairing,
and keys from a real pseudo-terminal. A simulated clock replaces waiting for inputs to go stale.
"""

from __future__ import annotations

import os
import termios

import numpy as np
import pytest

from rla_wm.control.expert_source import ExpertSource, planar_pose, yaw_from_quaternion
from rla_wm.control.freshness import LatestSample
from rla_wm.control.teleop import RIGHT, UP
from rla_wm.control.teleop_session import TICK_MARGIN, TeleopSession, TeleopSettings, joint_bounds
from rla_wm.control.terminal_keys import END_OF_INPUT, QUIT, STOPPED, NotATerminalError, RawTerminal, pump_keys
from rla_wm.envs.pusht.expert import PushTExpert
from rla_wm.envs.pusht.sim import GOAL_POSE

MS = 1_000_000  # nanoseconds
LOW, HIGH = np.array([0.0, 0.0]), np.array([512.0, 512.0])


class SimulatedClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def session_for(source: str, clock: SimulatedClock, **changes) -> TeleopSession:
    return TeleopSession(TeleopSettings(source=source, **changes), LOW, HIGH, clock=clock)


def test_stamp_throttle_admits_at_most_max_rate_samples_per_second_of_stamps():
    from rla_wm.control.freshness import StampThrottle

    throttle = StampThrottle(2.0)
    admitted = [t for t in np.arange(0.0, 3.0, 0.1) if throttle.admit(float(t))]
    np.testing.assert_allclose(admitted, [0.0, 0.5, 1.0, 1.5, 2.0, 2.5], atol=1e-9)
    assert throttle.skipped == 24
    assert throttle.admit(0.2)  # an older stamp (a restarted source) starts over
    assert all(StampThrottle(0.0).admit(0.0) for _ in range(3))  # 0: every sample
    with pytest.raises(ValueError, match="max_rate"):
        StampThrottle(-1.0)


def test_latest_sample_is_fresh_only_within_its_timeout():
    clock = SimulatedClock()
    sample: LatestSample[str] = LatestSample(0.5, clock)
    assert sample.fresh() is None and sample.age() == float("inf")
    sample.update("a")
    clock.now += 0.5
    assert sample.fresh() == "a" and sample.age() == 0.5
    clock.now += 0.01
    assert sample.fresh() is None
    sample.update("b")
    assert sample.fresh() == "b"
    with pytest.raises(ValueError, match="positive"):
        LatestSample(0.0)


def test_settings_check_the_source_and_joint_bounds_follow_the_joint_order():
    with pytest.raises(ValueError, match="source must be one of"):
        TeleopSettings(source="mouse")
    settings = TeleopSettings(source="joy", joy_max_speed=80.0, deadman_button=-1, speed=50.0)
    assert settings.joy().max_speed == 80.0 and settings.joy().deadman_button == -1
    assert settings.keyboard().speed == 50.0
    low, high = joint_bounds(["a", "b", "c"], np.array([0.0, 1.0, 2.0]), np.array([10.0, 11.0, 12.0]), ["c", "a"])
    np.testing.assert_array_equal(low, [2.0, 0.0])
    np.testing.assert_array_equal(high, [12.0, 10.0])
    with pytest.raises(ValueError, match=r"joint_names \['z'\] have no limits"):
        joint_bounds(["a"], np.zeros(1), np.ones(1), ["a", "z"])


def test_joint_limits_come_from_the_gates_limits_file_in_joint_order(tmp_path):
    limits_file = tmp_path / "limits.yaml"
    limits_file.write_text(
        "joints:\n"
        "  agent_x: {lower: 10.0, upper: 500.0, max_velocity: 600.0}\n"
        "  agent_y: {lower: 20.0, upper: 400.0, max_velocity: 600.0}\n"
        "max_step: 200.0\n"
    )
    low, high = TeleopSettings(limits_file=str(limits_file), joint_names=["agent_y", "agent_x"]).joint_limits()
    np.testing.assert_array_equal(low, [20.0, 10.0])
    np.testing.assert_array_equal(high, [400.0, 500.0])
    low, high = TeleopSettings().joint_limits()  # no limits here: the gate still vets
    assert np.isneginf(low).all() and np.isposinf(high).all() and low.shape == (2,)
    with pytest.raises(ValueError, match="have no limits"):
        TeleopSettings(limits_file=str(limits_file), joint_names=["agent_x", "gripper"]).joint_limits()


def test_no_chunk_without_a_fresh_joint_state():
    clock = SimulatedClock()
    session = session_for("keyboard", clock)
    assert session.tick(1_000 * MS) is None and not session.state_fresh()
    session.observe_state(1_000 * MS, np.array([100.0, 100.0]))
    assert session.tick(1_100 * MS) is not None
    clock.now += TeleopSettings().state_timeout + 0.01
    assert session.tick(1_200 * MS) is None and not session.state_fresh()


def test_keyboard_moves_the_target_by_speed_times_the_tick_interval_and_a_stalled_clock_cannot_jump():
    clock = SimulatedClock()
    session = session_for("keyboard", clock, speed=100.0, max_lead=1000.0)
    session.observe_state(0, np.array([100.0, 100.0]))
    assert session.press_keys([RIGHT]) is False
    first = session.tick(1_000 * MS)  # the first tick integrates one point period (0.1 s)
    np.testing.assert_allclose(first.positions, [[110.0, 100.0], [120.0, 100.0], [130.0, 100.0]])
    np.testing.assert_allclose(first.times_from_start, np.array([0.1, 0.2, 0.3]) - TICK_MARGIN)
    assert first.stamp_ns == 1_000 * MS
    session.press_keys([RIGHT])  # the key repeats while held
    second = session.tick(1_050 * MS)  # 50 ms later
    np.testing.assert_allclose(second.positions[0], [115.0, 100.0])
    session.press_keys([RIGHT])
    late = session.tick(11_050 * MS)  # 10 s without a tick: at most 3 point periods are integrated
    np.testing.assert_allclose(late.positions[0], [145.0, 100.0])
    # Released keys time out (key_timeout 0.3 s on the session clock): the target stops.
    clock.now += 0.31
    stopped = session.tick(11_150 * MS)
    np.testing.assert_allclose(stopped.positions, np.repeat([[145.0, 100.0]], 3, 0))
    assert session.press_keys([UP, "quit"]) is True


def test_joy_moves_while_the_deadman_is_held_and_holds_when_the_gamepad_goes_quiet():
    clock = SimulatedClock()
    session = session_for("joy", clock, max_lead=1000.0)
    session.observe_state(0, np.array([100.0, 100.0]))
    session.observe_joy([-1.0, 0.0], [0, 0, 0, 0, 1])  # stick right, deadman held: +x at 150 units/s
    np.testing.assert_allclose(session.tick(1_000 * MS).positions[0], [115.0, 100.0])
    np.testing.assert_allclose(session.tick(1_100 * MS).positions[0], [130.0, 100.0])
    session.observe_joy([-1.0, 0.0], [0, 0, 0, 0, 0])  # deadman released: back to the measured position
    np.testing.assert_allclose(session.tick(1_200 * MS).positions, np.repeat([[100.0, 100.0]], 3, 0))
    session.observe_joy([-1.0, 0.0], [0, 0, 0, 0, 1])
    assert session.tick(1_300 * MS).positions[0, 0] > 100.0
    clock.now += TeleopSettings().joy_timeout + 0.01  # no Joy message for too long; the state is re-sent
    session.observe_state(0, np.array([100.0, 100.0]))
    np.testing.assert_allclose(session.tick(1_400 * MS).positions, np.repeat([[100.0, 100.0]], 3, 0))


def test_play_is_seeded_bounded_and_restarts_from_the_robot_at_a_new_episode():
    def targets(seed: int) -> np.ndarray:
        session = session_for("play", SimulatedClock(), seed=seed)
        session.observe_state(0, np.array([200.0, 200.0]))
        return np.array([session.tick(k * 100 * MS).positions[0] for k in range(10)])

    a = targets(3)
    np.testing.assert_array_equal(a, targets(3))
    assert not np.array_equal(a, targets(4))
    assert (np.linalg.norm(a - [200.0, 200.0], axis=1) <= TeleopSettings().max_lead + 1e-9).all()

    clock = SimulatedClock()
    session = session_for("play", clock, max_lead=1000.0)
    session.observe_state(0, np.array([100.0, 100.0]))
    session.new_episode(0)
    for k in range(5):
        chunk = session.tick(k * 100 * MS)
    far = np.array([400.0, 400.0])
    session.observe_state(0, far)  # the robot was moved, but it is the same episode: the walk goes on
    session.new_episode(0)
    assert np.linalg.norm(session.tick(600 * MS).positions[0] - far) > 100.0
    session.new_episode(1)  # a new episode: the walk restarts where the robot is (steps of <= 30 px)
    chunk = session.tick(700 * MS)
    assert np.linalg.norm(chunk.positions[0] - far) <= 30.0 + 1e-9
    np.testing.assert_allclose(chunk.positions, np.repeat(chunk.positions[:1], 3, 0))  # a position source holds


def test_planar_pose_reads_yaw_and_refuses_non_finite_values():
    yaw = 0.3
    pose = planar_pose(1.0, 2.0, (0.0, 0.0, float(np.sin(yaw / 2)), float(np.cos(yaw / 2))))
    np.testing.assert_allclose(pose, [1.0, 2.0, yaw])
    assert yaw_from_quaternion(0.0, 0.0, 1.0, 0.0) == pytest.approx(np.pi)
    with pytest.raises(ValueError, match=r"pose \(x, y, yaw\)"):
        planar_pose(float("nan"), 2.0, (0.0, 0.0, 0.0, 1.0))


BLOCK, AGENT = np.array([320.0, 260.0, 0.3]), np.array([120.0, 400.0])


def test_expert_pairs_pose_and_state_of_one_step_and_acts_once_per_step():
    expected = PushTExpert(max_lead=40.0).act(AGENT, BLOCK, np.asarray(GOAL_POSE))
    expert = ExpertSource(max_lead=40.0, sync_tolerance=0.01)
    assert expert.act() is None
    expert.add_pose(1_000 * MS, BLOCK)
    assert expert.act() is None  # no joint state of that step yet
    expert.add_state(1_050 * MS, AGENT)  # another step (50 ms off): not paired
    assert expert.act() is None
    expert.add_state(1_004 * MS, AGENT)  # within sync_tolerance: the same step
    stamp, target = expert.act()
    assert stamp == 1_000 * MS
    np.testing.assert_allclose(target, expected)
    assert expert.act() is None  # once per step
    # Behind by two steps: only the newest is answered, and the skipped one never later.
    for step in (1_100, 1_200):
        expert.add_state(step * MS, AGENT)
        expert.add_pose(step * MS, BLOCK)
    assert expert.act()[0] == 1_200 * MS and expert.act() is None


def test_expert_chunks_need_a_fresh_state_hold_the_clipped_target_and_carry_the_step_stamp():
    clock = SimulatedClock()
    session = TeleopSession(TeleopSettings(source="expert"), LOW, np.array([512.0, 395.0]), clock=clock)
    session.observe_state(1_000 * MS, AGENT)
    session.observe_pose(1_000 * MS, BLOCK)
    chunk = session.expert_chunk()
    expected = PushTExpert(max_lead=40.0).act(AGENT, BLOCK, np.asarray(GOAL_POSE))
    target = np.clip(expected, LOW, [512.0, 395.0])
    assert chunk.stamp_ns == 1_000 * MS
    np.testing.assert_allclose(chunk.positions, np.repeat(target[None], 3, 0), atol=1e-4)
    np.testing.assert_allclose(chunk.times_from_start, np.array([0.1, 0.2, 0.3]) - TICK_MARGIN)
    assert session.expert_chunk() is None
    session.observe_pose(1_100 * MS, BLOCK)
    session.expert.add_state(1_100 * MS, AGENT)  # paired, but the freshest joint state is too old
    clock.now += TeleopSettings().state_timeout + 0.01
    assert session.expert_chunk() is None
    # The goal pose is the expert's goal; other sources ignore poses.
    session.set_goal(np.array([200.0, 200.0, 0.0]))
    np.testing.assert_array_equal(session.expert.goal, [200.0, 200.0, 0.0])
    keyboard = session_for("keyboard", clock)
    keyboard.observe_state(0, AGENT)
    keyboard.observe_pose(0, BLOCK)
    assert keyboard.expert is None and keyboard.expert_chunk() is None


def test_pump_keys_reads_a_real_terminal_until_quit_and_restores_it():
    controller, terminal_side = os.openpty()
    try:
        before = termios.tcgetattr(terminal_side)
        terminal = RawTerminal(terminal_side)
        mode = termios.tcgetattr(terminal_side)
        assert not mode[3] & termios.ICANON and not mode[3] & termios.ECHO  # keys one by one, unechoed
        session = session_for("keyboard", SimulatedClock())
        session.observe_state(0, np.array([100.0, 100.0]))
        batches: list[list[str]] = []

        def on_keys(keys: list[str]) -> bool:
            batches.append(keys)
            return session.press_keys(keys)

        os.write(controller, b"d\x1b[C")  # a letter and an arrow key's escape sequence
        assert pump_keys(terminal, on_keys, running=lambda: not batches) == STOPPED
        assert batches == [[RIGHT, RIGHT]] and session.tick(1_000 * MS).positions[0, 0] > 100.0
        os.write(controller, b"q")
        assert pump_keys(terminal, on_keys, running=lambda: True) == QUIT and session.keyboard.quit
        terminal.close()
        terminal.close()  # a second close changes nothing
        assert termios.tcgetattr(terminal_side) == before
    finally:
        os.close(controller)
        os.close(terminal_side)


def test_pump_keys_stops_at_the_end_of_input_or_when_told_and_needs_a_terminal():
    class Scripted:
        def __init__(self, *reads: bytes | None) -> None:
            self.reads = list(reads)

        def read(self, timeout: float) -> bytes | None:
            return self.reads.pop(0)

    batches: list[list[str]] = []
    assert (
        pump_keys(Scripted(None, b"w", b""), lambda keys: batches.append(keys) or False, lambda: True) == END_OF_INPUT
    )
    assert batches == [[UP]]
    assert pump_keys(Scripted(), lambda keys: True, running=lambda: False) == STOPPED
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(NotATerminalError):
            RawTerminal(read_end)
    finally:
        os.close(read_end)
        os.close(write_end)
