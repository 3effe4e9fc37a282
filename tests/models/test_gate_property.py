"""Property: nothing joint_trajectory_controller would execute from the gate's output leaves the limits.

Arbitrary message streams (seeded fuzz and hypothesis-built structures) go through the ROS-free gate;
every command it emits is run through the model of JTC (`rla_wm.control.jtc`) from wherever the
controller can be when it arrives, and the executed command is checked, not the gate's own view.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from rla_wm.control.jtc import JtcExecution, Trajectory, TrajectoryPoint, execution_violations, jtc_rejection
from rla_wm.control.safety import JointLimits, SafetyGate
from rla_wm.control.trajectory_fuzz import random_trajectory

LIMITS = JointLimits(("a", "b"), np.array([0.0, -1.0]), np.array([10.0, 1.0]), np.array([5.0, 2.0]))
MAX_STEP = 3.0
S = 1_000_000_000
MARGIN = 20_000_000


class Clock:
    def __init__(self) -> None:
        self.ns = 1_000 * S

    def __call__(self) -> float:
        return self.ns * 1e-9


def controller_starts(
    plan: JtcExecution | None, measured: np.ndarray, now_ns: int, rng: np.random.Generator, forward: bool
) -> list[np.ndarray]:
    """Where the controller may be when a command sent at `now_ns` arrives: anywhere on the gate's last
    command within one margin either side of now (random moments, not the gate's own knots), or, for
    a forwarded chunk or when nothing was sent before, the measured state."""
    starts = []
    if plan is not None:
        moments = [now_ns - MARGIN, now_ns + MARGIN, *rng.integers(now_ns - MARGIN, now_ns + MARGIN, size=6)]
        starts += [plan.sample(int(t)) for t in moments]
    if forward or plan is None:
        starts.append(measured)
    return starts


def check_command(
    gate: SafetyGate, plan_before: JtcExecution | None, decision, now_ns: int, rng: np.random.Generator
) -> None:
    command = decision.command
    assert jtc_rejection(command, LIMITS.names, now_ns) == "", "the controller would refuse the gate's own message"
    assert command.stamp_ns == 0 and command.joint_names == LIMITS.names
    assert all(p.velocities == p.accelerations == p.effort == () for p in command.points)
    for start in controller_starts(plan_before, gate.current, now_ns, rng, decision.forward):
        execution = JtcExecution(command, LIMITS.names, now_ns, start)
        problems = execution_violations(
            execution,
            LIMITS.lower,
            LIMITS.upper,
            LIMITS.max_velocity,
            reference=gate.current if decision.forward else None,
            max_step=MAX_STEP if decision.forward else None,
        )
        assert not problems, f"{'chunk' if decision.forward else 'hold'} from {start}: {problems}"


floats = st.one_of(
    st.floats(min_value=-20, max_value=20),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e6, -1e300]),
)
field = st.one_of(st.just(()), st.lists(floats, min_size=1, max_size=3).map(tuple))
arbitrary_points = st.lists(
    st.builds(
        TrajectoryPoint,
        positions=st.lists(floats, min_size=0, max_size=3).map(tuple),
        velocities=field,
        accelerations=field,
        effort=field,
        time_from_start_ns=st.integers(-S, 3 * S),
    ),
    max_size=6,
).map(tuple)
arbitrary_trajectories = st.builds(
    Trajectory,
    joint_names=st.sampled_from([("a", "b"), ("b", "a"), ("a",), ("a", "a"), (), ("a", "b", "c")]),
    points=arbitrary_points,
    stamp_ns=st.one_of(st.just(0), st.integers(-S, 2_000 * S), st.integers(1_000 * S - S, 1_000 * S + S)),
)
events = st.lists(
    st.one_of(
        st.tuples(st.just("fuzz"), st.integers(0, 2**32 - 1)),
        st.tuples(st.just("message"), arbitrary_trajectories),
        st.tuples(st.just("state"), st.tuples(st.floats(0.0, 10.0), st.floats(-1.0, 1.0))),
        st.tuples(st.just("wait"), st.integers(0, 300_000_000)),
        st.tuples(st.just("estop"), st.none()),
        st.tuples(st.just("reset"), st.none()),
    ),
    min_size=5,
    max_size=40,
)


@settings(max_examples=400, deadline=None)
@given(events=events, seed=st.integers(0, 2**32 - 1))
def test_nothing_the_controller_executes_is_outside_the_limits(events, seed):
    rng = np.random.default_rng(seed)
    clock = Clock()
    gate = SafetyGate(
        LIMITS,
        MAX_STEP,
        camera_timeout=0.5,
        state_timeout=0.5,
        command_timeout=1.0,
        delivery_margin=MARGIN * 1e-9,
        clock=clock,
    )
    measured = np.array([5.0, 0.0])
    gate.on_state(LIMITS.names, measured.tolist())
    sent = 0
    for kind, value in events:
        gate.on_camera()
        plan_before = gate.tracked_plan(clock.ns)
        if kind == "fuzz":
            fuzz_rng = np.random.default_rng(value)
            decision = gate.review(random_trajectory(fuzz_rng, LIMITS, gate.current, clock.ns), clock.ns)
        elif kind == "message":
            decision = gate.review(value, clock.ns)
        elif kind == "state":
            gate.on_state(LIMITS.names, list(value))
            continue
        elif kind == "wait":
            clock.ns += value
            plan_before = gate.tracked_plan(clock.ns)
            decision = gate.tick(clock.ns)
        elif kind == "estop":
            decision = gate.trigger_estop("test", clock.ns)
        else:
            gate.reset_estop()
            continue
        if decision.command is not None:
            sent += 1
            check_command(gate, plan_before, decision, clock.ns, rng)
        assert not (decision.forward and gate.estop.engaged)
    assert sent <= len(events)


def test_fuzz_streams_exercise_both_forwarding_and_refusal():
    """The fuzz generator is not vacuous: a seeded stream yields forwarded chunks and every refusal kind
    the gate reports, and all emitted commands pass the execution check."""
    rng = np.random.default_rng(0)
    clock = Clock()
    gate = SafetyGate(LIMITS, MAX_STEP, 0.5, 0.5, 1.0, delivery_margin=MARGIN * 1e-9, clock=clock)
    gate.on_state(LIMITS.names, [5.0, 0.0])
    reasons: set[str] = set()
    forwarded = 0
    for _ in range(3000):
        gate.on_camera()
        gate.on_state(LIMITS.names, gate.current.tolist())
        plan_before = gate.tracked_plan(clock.ns)
        decision = gate.review(random_trajectory(rng, LIMITS, gate.current, clock.ns), clock.ns)
        forwarded += decision.forward
        if not decision.forward:
            reasons.add(decision.reason.split(" ")[0] + " " + decision.reason.split(" ")[1])
        check_command(gate, plan_before, decision, clock.ns, rng)
        clock.ns += 50_000_000
    assert forwarded > 300, forwarded
    expected = ["header stamp", "joint names", "every point", "first executed", "time_from_start is"]
    assert all(any(reason.startswith(e) for reason in reasons) for e in expected), reasons
    assert any("velocities" in r or "accelerations" in r or "effort" in r for r in reasons) or len(reasons) > 8
