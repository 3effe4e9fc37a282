"""Safety gate logic: limits over whole chunks, NaN, max step, watchdog, latching e-stop."""
import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from rla_wm.control.safety import CAMERA, MODEL, STATE, JointLimits, SafetyGate, Watchdog, check_chunk

LIMITS = JointLimits(("a", "b"), np.array([0.0, -1.0]), np.array([10.0, 1.0]), np.array([5.0, 2.0]))


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


def test_valid_chunk_passes():
    positions = np.array([[5.1, 0.1], [5.2, 0.2]])
    assert check_chunk(LIMITS, ["a", "b"], positions, np.array([0.1, 0.2]), np.array([5.0, 0.0]), 3.0).ok


def test_joint_order_is_mapped_by_name():
    positions = np.array([[0.1, 5.1]])  # (b, a)
    assert check_chunk(LIMITS, ["b", "a"], positions, np.array([0.1]), np.array([5.0, 0.0]), 3.0).ok
    # The same numbers in (a, b) order put a=0.1 far from the current 5.0.
    assert not check_chunk(LIMITS, ["a", "b"], positions, np.array([0.1]), np.array([5.0, 0.0]), 3.0).ok


@pytest.mark.parametrize(
    "positions, times, fragment",
    [
        ([[5.0, 0.0], [5.0, 1.5]], [0.5, 1.0], "outside"),  # last point out of limits, first fine
        ([[5.0, 0.0], [float("nan"), 0.0]], [0.5, 1.0], "NaN"),
        ([[5.0, 0.0], [5.0, float("inf")]], [0.5, 1.0], "NaN"),
        ([[9.0, 0.0]], [5.0], "from the current state"),
        ([[6.0, 0.0]], [0.1], "moves at"),
        ([[5.0, 0.0], [5.5, 0.0]], [0.5, 0.5], "strictly increasing"),
        ([[5.0, 0.0]], [0.0], "strictly increasing"),
        ([[5.0, 0.0, 1.0]], [0.5], "shape"),
    ],
)
def test_bad_chunks_are_rejected_with_reason(positions, times, fragment):
    verdict = check_chunk(LIMITS, ["a", "b"], np.array(positions), np.array(times), np.array([5.0, 0.0]), 3.0)
    assert not verdict.ok
    assert fragment in verdict.reason


def test_unknown_joint_names_rejected():
    verdict = check_chunk(LIMITS, ["a", "c"], np.array([[5.0, 0.0]]), np.array([0.5]), np.array([5.0, 0.0]), 3.0)
    assert not verdict.ok and "joint names" in verdict.reason


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


def test_gate_forwards_fresh_valid_chunk_and_holds_when_camera_stops():
    clock = FakeClock()
    gate = fresh_gate(clock)
    decision = gate.review(["a", "b"], np.array([[5.1, 0.0]]), np.array([0.1]))
    assert decision.forward and not decision.hold
    clock.now += 0.3
    gate.on_state(["a", "b"], [5.1, 0.0])
    gate.review(["a", "b"], np.array([[5.2, 0.0]]), np.array([0.1]))
    assert gate.tick().hold is False
    clock.now += 0.3  # camera now 0.6 s old, state 0.3 s
    decision = gate.tick()
    assert decision.hold and CAMERA in decision.reason
    # The hold is sent once per transition, and further commands are refused.
    assert gate.tick().hold is False
    refused = gate.review(["a", "b"], np.array([[5.2, 0.0]]), np.array([0.1]))
    assert not refused.forward and refused.hold and "camera" in refused.reason


def test_gate_holds_when_model_goes_silent():
    clock = FakeClock()
    gate = fresh_gate(clock)
    assert gate.review(["a", "b"], np.array([[5.1, 0.0]]), np.array([0.1])).forward
    for _ in range(11):
        clock.now += 0.1
        gate.on_camera()
        gate.on_state(["a", "b"], [5.1, 0.0])
    decision = gate.tick()
    assert decision.hold and MODEL in decision.reason


def test_gate_refuses_before_any_state():
    clock = FakeClock()
    gate = make_gate(clock)
    gate.on_camera()
    decision = gate.review(["a", "b"], np.array([[5.1, 0.0]]), np.array([0.1]))
    assert not decision.forward and STATE in decision.reason


def test_nonfinite_state_is_not_accepted():
    clock = FakeClock()
    gate = make_gate(clock)
    gate.on_camera()
    gate.on_state(["a", "b"], [float("nan"), 0.0])
    assert gate.current is None
    assert not gate.review(["a", "b"], np.array([[5.1, 0.0]]), np.array([0.1])).forward


def test_estop_latches_until_reset():
    clock = FakeClock()
    gate = fresh_gate(clock)
    assert gate.trigger_estop("button").hold
    for _ in range(3):
        decision = gate.review(["a", "b"], np.array([[5.1, 0.0]]), np.array([0.1]))
        assert not decision.forward and "e-stop" in decision.reason
    gate.trigger_estop("again")
    assert gate.estop.reason == "button"
    gate.reset_estop()
    assert gate.review(["a", "b"], np.array([[5.1, 0.0]]), np.array([0.1])).forward


chunk_values = st.one_of(st.floats(min_value=-50, max_value=50), st.sampled_from([math.nan, math.inf, -math.inf]))


@settings(max_examples=300, deadline=None)
@given(
    positions=arrays(np.float64, st.tuples(st.integers(1, 6), st.just(2)), elements=chunk_values),
    gaps=arrays(np.float64, 6, elements=st.floats(min_value=-0.1, max_value=2.0)),
    current=arrays(np.float64, 2, elements=st.floats(min_value=-1, max_value=10)),
)
def test_nothing_out_of_limits_or_nonfinite_ever_passes(positions, gaps, current):
    times = np.cumsum(gaps[: len(positions)])
    verdict = check_chunk(LIMITS, ["a", "b"], positions, times, current, 3.0)
    if verdict.ok:
        assert np.isfinite(positions).all()
        assert (positions >= LIMITS.lower).all() and (positions <= LIMITS.upper).all()
        assert (np.abs(positions - current) <= 3.0).all()
        path = np.vstack([current, positions])
        speeds = np.abs(np.diff(path, axis=0)) / np.diff(np.concatenate([[0.0], times]))[:, None]
        assert (speeds <= LIMITS.max_velocity + 1e-9).all()


@settings(max_examples=300, deadline=None)
@given(
    deltas=arrays(np.float64, st.tuples(st.integers(1, 8), st.just(2)), elements=st.floats(-4.0, 4.0)),
    gaps=arrays(np.float64, 8, elements=st.floats(0.01, 2.0)),
    current=arrays(np.float64, 2, elements=st.floats(-1, 10)),
)
def test_chunks_near_the_state_pass_exactly_when_within_limits(deltas, gaps, current):
    positions = current + np.cumsum(deltas, axis=0) * 0.3
    times = np.cumsum(gaps[: len(positions)])
    verdict = check_chunk(LIMITS, ["a", "b"], positions, times, current, 3.0)
    path = np.vstack([current, positions])
    speeds = np.abs(np.diff(path, axis=0)) / np.diff(np.concatenate([[0.0], times]))[:, None]
    within = (
        (positions >= LIMITS.lower).all() and (positions <= LIMITS.upper).all()
        and (np.abs(positions - current) <= 3.0).all() and (speeds <= LIMITS.max_velocity).all()
    )
    assert verdict.ok == bool(within), verdict.reason


CYCLE = 0.05  # the gate node's watchdog timer period
TIMEOUTS = {CAMERA: 0.5, STATE: 0.5, MODEL: 1.0}  # make_gate's
gate_events = st.lists(
    st.one_of(st.sampled_from([("camera",), ("state",), ("chunk",), ("estop",), ("reset",)]),
              st.tuples(st.just("wait"), st.floats(min_value=0.0, max_value=1.5))),
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
            decision = gate.review(["a", "b"], np.array([[5.1, 0.0]]), np.array([0.1]))
            last_seen[MODEL] = clock.now
            should_pass = not estop and not [name for name in stale_now() if name != MODEL]
            assert decision.forward == should_pass, decision.reason
            assert decision.hold != decision.forward  # a refused chunk always stops the robot
            moving = decision.forward
        elif kind == "estop":
            assert gate.trigger_estop("test").hold
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
                decision = gate.tick()
                assert not decision.forward
                if stale_now() and moving:
                    assert decision.hold, "a stale input did not hold the moving robot within one cycle"
                    moving = False
                if not stale_now() and not estop:
                    assert not decision.hold
