"""Safety gate logic: vetting whole trajectories, holds, watchdog, latching e-stop."""

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from rla_wm.control.jtc import Trajectory, TrajectoryPoint, jtc_rejection
from rla_wm.control.safety import CAMERA, MODEL, STATE, JointLimits, SafetyGate, Watchdog, vet_trajectory

LIMITS = JointLimits(("a", "b"), np.array([0.0, -1.0]), np.array([10.0, 1.0]), np.array([5.0, 2.0]))
S = 1_000_000_000  # nanoseconds per second
NOW = 1_000 * S  # the ROS clock at the start of each test
MARGIN = 20_000_000  # the gate's delivery margin (0.02 s)
CURRENT = np.array([5.0, 0.0])


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_gate(clock: FakeClock) -> SafetyGate:
    return SafetyGate(LIMITS, max_step=3.0, camera_timeout=0.5, state_timeout=0.5, command_timeout=1.0, clock=clock)


def fresh_gate(clock: FakeClock, current=(5.0, 0.0)) -> SafetyGate:
    gate = make_gate(clock)
    gate.on_camera()
    gate.on_state(["a", "b"], list(current))
    return gate


def chunk(positions, times_s, names=("a", "b"), stamp_ns=NOW, **fields) -> Trajectory:
    """A trajectory with the given positions at `times_s`; extra per-point fields apply to every point."""
    points = tuple(
        TrajectoryPoint(positions=tuple(p), time_from_start_ns=round(t * S), **fields)
        for p, t in zip(positions, times_s)
    )
    return Trajectory(tuple(names), points, stamp_ns)


def vet(trajectory: Trajectory, current=CURRENT, now=NOW):
    return vet_trajectory(trajectory, LIMITS, 3.0, np.asarray(current, dtype=float), now, MARGIN)


def test_valid_chunk_is_forwarded_as_a_copy_the_gate_builds():
    vetting = vet(chunk([[5.1, 0.1], [5.2, 0.2]], [0.1, 0.2], names=("b", "a")[::-1]))
    assert vetting.verdict.ok, vetting.verdict.reason
    command = vetting.command
    assert command.stamp_ns == 0 and command.joint_names == ("a", "b")
    assert [p.time_from_start_ns for p in command.points] == [100_000_000, 200_000_000]
    assert all(p.velocities == p.accelerations == p.effort == () for p in command.points)
    assert jtc_rejection(command, LIMITS.names, NOW) == ""


def test_joint_order_is_mapped_by_name_and_the_output_uses_the_limits_order():
    vetting = vet(chunk([[0.1, 5.1]], [0.1], names=("b", "a")))
    assert vetting.verdict.ok and vetting.command.points[0].positions == (5.1, 0.1)
    # The same numbers in (a, b) order put a=0.1 far from the current 5.0.
    assert not vet(chunk([[0.1, 5.1]], [0.1])).verdict.ok


def test_past_points_and_points_due_within_the_margin_are_vetted_but_not_sent():
    # Stamped 150 ms ago: the points at 0.1 s and 0.16 s are past or due within 20 ms; the rest is re-timed from now.
    trajectory = chunk(
        [[5.0, 0.0], [5.05, 0.0], [5.2, 0.0], [5.4, 0.0]], [0.1, 0.16, 0.25, 0.35], stamp_ns=NOW - 150_000_000
    )
    vetting = vet(trajectory)
    assert vetting.verdict.ok, vetting.verdict.reason
    assert [p.time_from_start_ns for p in vetting.command.points] == [100_000_000, 200_000_000]
    assert [p.positions[0] for p in vetting.command.points] == [5.2, 5.4]
    # A past point is still vetted: out of limits there refuses the chunk although JTC would only pass through it.
    bad_past = chunk([[1e6, 0.0], [5.2, 0.0]], [0.02, 0.25], stamp_ns=NOW - 150_000_000)
    assert "outside" in vet(bad_past).verdict.reason


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "trajectory, fragment",
    [
        (chunk([[5.0, 0.0], [5.0, 1.5]], [0.5, 1.0]), "outside"),  # last point out of limits, first fine
        (chunk([[5.0, 0.0], [NAN, 0.0]], [0.5, 1.0]), "positions contain NaN"),
        (chunk([[5.1, 0.0]], [0.5], velocities=(NAN, 0.0)), "velocities contain NaN"),
        (chunk([[5.1, 0.0]], [0.5], accelerations=(INF, 0.0)), "accelerations contain NaN"),
        (chunk([[5.1, 0.0]], [0.5], effort=(0.0, NAN)), "effort contain NaN"),
        (chunk([[5.1, 0.0]], [0.5], velocities=(1e6, -1e6)), "velocities exceed"),
        (chunk([[5.1, 0.0]], [0.5], velocities=(0.0,)), "1 velocities for 2 joints"),
        (chunk([[9.0, 0.0]], [5.0]), "from the current state"),
        (chunk([[6.0, 0.0]], [0.1]), "is 1 away"),
        (chunk([[5.0, 0.0], [5.5, 0.0]], [0.5, 0.5]), "strictly increasing"),
        (
            chunk([[5.0, 0.0], [5.1, 0.0], [5.2, 0.0]], [0.5, 0.02, 1.0], stamp_ns=NOW - 150_000_000),
            "strictly increasing",
        ),
        (chunk([[5.0, 0.0]], [-0.5], stamp_ns=0), "negative time_from_start"),
        (chunk([[5.1, 0.0]], [0.5], stamp_ns=-S), "negative"),
        (chunk([[5.1, 0.0]], [0.5], stamp_ns=NOW + 5 * S), "in the future"),
        (chunk([[5.0, 0.0, 1.0]], [0.5]), "3 positions for 2 joints"),
        (chunk([[5.0, 0.0]], [0.5], names=("a", "c")), "joint names"),
        (chunk([[5.0, 0.0]], [0.5], names=("a", "a")), "joint names"),
        (chunk([], [], names=()), "joint names"),
        (Trajectory(("a", "b"), (), NOW), "no points"),
        # The outside tester's cases: a zero stamp with a first point 500 ns (or 1 ns) ahead is a jump.
        (chunk([[0.0, -1.0]], [500e-9], stamp_ns=0), "from the current state"),
        (chunk([[5.1, 0.0]], [1e-9], stamp_ns=0), "in the past"),
        (chunk([[5.0, 0.0], [5.01, 0.0]], [0.0, 0.01], stamp_ns=0), "in the past"),
    ],
)
def test_bad_trajectories_are_refused_with_reason(trajectory, fragment):
    vetting = vet(trajectory)
    assert not vetting.verdict.ok and vetting.command is None
    assert fragment in vetting.verdict.reason, vetting.verdict.reason


def test_a_late_stamp_cannot_compress_the_first_segment():
    # 0.45 away at 5/s needs 0.09 s. Stamped 80 ms ago with the point at 0.1 s leaves 20 ms: refused,
    # where a check of the point's original spacing would have let 22.5/s through.
    assert "is 0.45 away" in vet(chunk([[5.45, 0.0]], [0.1], stamp_ns=NOW - 80_000_000)).verdict.reason
    assert vet(chunk([[5.45, 0.0]], [0.1], stamp_ns=NOW)).verdict.ok


def test_limits_validation():
    with pytest.raises(ValueError, match="exceed"):
        JointLimits(("a",), np.array([1.0]), np.array([0.0]), np.array([1.0]))
    with pytest.raises(ValueError, match="positive"):
        JointLimits(("a",), np.array([0.0]), np.array([1.0]), np.array([0.0]))
    with pytest.raises(ValueError, match="missing"):
        JointLimits.from_mapping({"a": {"lower": 0.0, "upper": 1.0}})


def test_watchdog_never_seen_is_stale_and_ages_on_steady_clock():
    clock = FakeClock()
    dog = Watchdog({"camera": 0.5}, clock)
    assert dog.stale() == ["camera"] and math.isinf(dog.age("camera"))
    dog.feed("camera")
    clock.now += 0.4
    assert dog.stale() == []
    clock.now += 0.2
    assert dog.stale() == ["camera"]
    with pytest.raises(KeyError):
        dog.feed("lidar")


STEP = chunk([[5.1, 0.0]], [0.1])  # a valid one-point chunk stamped NOW


def test_gate_forwards_fresh_valid_chunk_and_holds_when_camera_stops():
    clock = FakeClock()
    gate = fresh_gate(clock)
    decision = gate.review(STEP, NOW)
    assert decision.forward and not decision.hold and decision.command.points[0].positions == (5.1, 0.0)
    clock.now += 0.3
    gate.on_state(["a", "b"], [5.1, 0.0])
    gate.review(chunk([[5.2, 0.0]], [0.1], stamp_ns=NOW + 300_000_000), NOW + 300_000_000)
    assert gate.tick(NOW + 300_000_000).hold is False
    clock.now += 0.3  # camera now 0.6 s old, state 0.3 s
    decision = gate.tick(NOW + 600_000_000)
    assert decision.hold and CAMERA in decision.reason
    # The hold is sent once per transition, and further commands are refused.
    assert gate.tick(NOW + 620_000_000).hold is False
    refused = gate.review(chunk([[5.2, 0.0]], [0.1], stamp_ns=NOW + 650_000_000), NOW + 650_000_000)
    assert not refused.forward and refused.hold and "camera" in refused.reason


def test_a_hold_is_one_point_where_the_last_command_is_one_margin_ahead():
    clock = FakeClock()
    gate = fresh_gate(clock)
    gate.review(chunk([[5.5, 0.0], [6.0, 0.0]], [0.2, 0.4]), NOW)  # 2.5/s toward a = 6.0
    decision = gate.trigger_estop("button", NOW + 100_000_000)
    hold = decision.command
    # Not an empty trajectory: joint_trajectory_controller refuses those and keeps executing.
    assert jtc_rejection(hold, LIMITS.names, NOW) == "" and len(hold.points) == 1 and hold.stamp_ns == 0
    # 120 ms into a 0.2 s ramp from 5.0 to 5.5: a = 5.3; reached in two margins.
    assert hold.points[0].positions == pytest.approx((5.3, 0.0))
    assert hold.points[0].time_from_start_ns == 2 * MARGIN
    # With nothing sent yet, a hold is the measured state.
    assert make_gate(clock).hold_command(NOW) is None
    assert fresh_gate(clock, (4.0, 0.5)).hold_command(NOW).points[0].positions == (4.0, 0.5)


def test_dry_run_builds_the_same_decisions_but_keeps_no_model_of_the_controller():
    clock = FakeClock()
    gate = SafetyGate(LIMITS, 3.0, 0.5, 0.5, 1.0, dry_run=True, clock=clock)
    gate.on_camera()
    gate.on_state(["a", "b"], [5.0, 0.0])
    assert gate.review(STEP, NOW).forward and gate.plan is None


def test_gate_holds_when_model_goes_silent():
    clock = FakeClock()
    gate = fresh_gate(clock)
    assert gate.review(STEP, NOW).forward
    for _ in range(11):
        clock.now += 0.1
        gate.on_camera()
        gate.on_state(["a", "b"], [5.1, 0.0])
    decision = gate.tick(NOW + 1_100_000_000)
    assert decision.hold and MODEL in decision.reason


def test_gate_refuses_before_any_state():
    clock = FakeClock()
    gate = make_gate(clock)
    gate.on_camera()
    decision = gate.review(STEP, NOW)
    assert not decision.forward and STATE in decision.reason and decision.command is None


def test_nonfinite_state_is_not_accepted():
    clock = FakeClock()
    gate = make_gate(clock)
    gate.on_camera()
    gate.on_state(["a", "b"], [float("nan"), 0.0])
    assert gate.current is None
    assert not gate.review(STEP, NOW).forward


def test_estop_latches_until_reset():
    clock = FakeClock()
    gate = fresh_gate(clock)
    assert gate.trigger_estop("button", NOW).hold
    for _ in range(3):
        decision = gate.review(STEP, NOW)
        assert not decision.forward and "e-stop" in decision.reason
    gate.trigger_estop("again", NOW)
    assert gate.estop.reason == "button"
    gate.reset_estop()
    assert gate.review(STEP, NOW).forward


CYCLE = 0.05  # the gate node's watchdog timer period
TIMEOUTS = {CAMERA: 0.5, STATE: 0.5, MODEL: 1.0}  # make_gate's
gate_events = st.lists(
    st.one_of(
        st.sampled_from([("camera",), ("state",), ("chunk",), ("estop",), ("reset",)]),
        st.tuples(st.just("wait"), st.floats(min_value=0.0, max_value=1.5)),
    ),
    min_size=8,
    max_size=40,
)


@settings(max_examples=400, deadline=None)
@given(events=gate_events)
@example(events=[("camera",), ("state",), ("chunk",), ("wait", 0.6)])  # camera and state go quiet
@example(events=[("camera",), ("state",), ("chunk",), ("wait", 0.4), ("camera",), ("state",), ("wait", 0.7)])  # model
@example(events=[("camera",), ("state",), ("estop",), ("chunk",), ("reset",), ("chunk",)])  # latch, then reset
def test_stale_input_holds_within_one_cycle_and_estop_latches(events):
    """Random event streams against an independent model of ages: a chunk passes only when camera and
    state are fresh and the e-stop is released; a robot that is moving is told to hold at the first
    watchdog cycle after any input (camera, state, model) goes stale."""
    clock = FakeClock()
    gate = make_gate(clock)
    last_seen = {name: -math.inf for name in TIMEOUTS}
    estop, moving = False, False

    def stale_now() -> list[str]:
        return [name for name, timeout in TIMEOUTS.items() if clock.now - last_seen[name] > timeout]

    for event in events:
        kind = event[0]
        if kind == "camera":
            gate.on_camera()
            last_seen[CAMERA] = clock.now
        elif kind == "state":
            gate.on_state(["a", "b"], [5.0, 0.0])
            last_seen[STATE] = clock.now
        elif kind == "chunk":
            decision = gate.review(STEP, NOW)
            last_seen[MODEL] = clock.now
            should_pass = not estop and not [name for name in stale_now() if name != MODEL]
            assert decision.forward == should_pass, decision.reason
            # A refused chunk always stops the robot, unless the gate has never known where it is
            # (no joint state yet and nothing sent), when there is nothing to stop.
            knows_position = gate.current is not None or gate.plan is not None
            assert decision.forward or decision.hold or not knows_position
            moving = decision.forward
        elif kind == "estop":
            knows_position = gate.current is not None or gate.plan is not None
            assert gate.trigger_estop("test", NOW).hold == knows_position
            estop, moving = True, False
        elif kind == "reset":
            gate.reset_estop()
            estop = False
        else:
            remaining = event[1]
            while remaining > 1e-12:  # the node ticks the watchdog every cycle while time passes
                step = min(CYCLE, remaining)
                clock.now += step
                remaining -= step
                decision = gate.tick(NOW)
                assert not decision.forward
                if stale_now() and moving:
                    assert decision.hold, "a stale input did not hold the moving robot within one cycle"
                    moving = False
                if not stale_now() and not estop:
                    assert not decision.hold


def test_a_robot_moved_by_something_else_is_held_where_it_is_not_sent_back():
    clock = FakeClock()
    gate = fresh_gate(clock)
    assert gate.review(chunk([[5.5, 0.0]], [0.2]), NOW).forward
    # The robot is reset (or moved by hand) far from the gate's last command: that model is dropped,
    # so the hold is the measured state instead of a jump back toward the old command.
    gate.on_state(["a", "b"], [1.0, 0.5])
    hold = gate.trigger_estop("button", NOW + 100_000_000).command
    assert hold.points[0].positions == (1.0, 0.5)
    # The hold is now the gate's model of the controller's command: it stays at the measured state.
    assert gate.commanded(NOW + 1_000_000_000).tolist() == [1.0, 0.5]
    gate.reset_estop()
    # A chunk from the new position is vetted from there, not refused as a jump from the old command.
    assert gate.review(chunk([[1.2, 0.5]], [0.1], stamp_ns=NOW + 200_000_000), NOW + 200_000_000).forward
