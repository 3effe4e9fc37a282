"""What ros2_control's joint_trajectory_controller (JTC) does with a JointTrajectory (pure Python, no ROS).

The safety gate must vet what the controller will *execute*, not its own reading of a message,
so the controller's rules live here once and both the gate and the simulated robots use them:

- Acceptance (`jtc_rejection`): JTC refuses a message with joint names that are not exactly its
  joints, no points, a size mismatch in any point's positions/velocities/accelerations/effort,
  `time_from_start` not strictly increasing, or a non-zero stamp whose last point is already past.
  It does NOT check finiteness, limits or speeds. A refused message leaves the previous one running,
  which is why an empty trajectory is not a hold on a real controller.
- Execution (`JtcExecution`): the start time is `header.stamp`, or the moment of receipt when the
  stamp is zero. Until the first point's time the command moves linearly from the state at receipt
  to the first point; then it interpolates between consecutive points and stays at the last one.
  A first point whose time is already past at receipt is not skipped: the command jumps to wherever
  the interpolation between the (past) points is at that moment. Points that carry velocities or
  accelerations are interpolated with splines by JTC; this model is linear in positions, which is
  exact for the position-only messages the gate emits.

Times are integer nanoseconds on the ROS clock, as in the messages: float seconds at epoch scale
resolve only ~0.2 us.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

NANOSECONDS = 1_000_000_000


@dataclass(frozen=True)
class TrajectoryPoint:
    """trajectory_msgs/JointTrajectoryPoint; empty tuples are absent fields, as in the message."""

    positions: tuple[float, ...]
    velocities: tuple[float, ...] = ()
    accelerations: tuple[float, ...] = ()
    effort: tuple[float, ...] = ()
    time_from_start_ns: int = 0


@dataclass(frozen=True)
class Trajectory:
    """trajectory_msgs/JointTrajectory; `stamp_ns` 0 means "start when the controller receives it"."""

    joint_names: tuple[str, ...]
    points: tuple[TrajectoryPoint, ...]
    stamp_ns: int = 0

    @classmethod
    def from_arrays(
        cls,
        joint_names: Sequence[str],
        positions: np.ndarray,
        times_from_start_ns: Sequence[int] | np.ndarray,
        stamp_ns: int = 0,
    ) -> Trajectory:
        """Position-only trajectory: positions (T, J) at integer-nanosecond times."""
        points = tuple(
            TrajectoryPoint(positions=tuple(float(v) for v in row), time_from_start_ns=int(t))
            for row, t in zip(np.asarray(positions, dtype=np.float64), times_from_start_ns)
        )
        return cls(tuple(joint_names), points, int(stamp_ns))

    def positions(self) -> np.ndarray:
        """(T, J) positions; only valid for a trajectory whose points all have J positions."""
        return np.array([p.positions for p in self.points], dtype=np.float64).reshape(len(self.points), -1)

    def times_ns(self) -> np.ndarray:
        return np.array([p.time_from_start_ns for p in self.points], dtype=np.int64)


def is_tail_of(points: np.ndarray, chunk: np.ndarray) -> bool:
    """Whether `points` (K, J) are exactly the last K points of `chunk` (T, J): how a gated command,
    the gate's copy of a chunk's remaining points, is traced back to that chunk."""
    points, chunk = np.asarray(points), np.asarray(chunk)
    if points.ndim != 2 or chunk.ndim != 2 or points.size == 0 or len(points) > len(chunk):
        return False
    return bool(np.array_equal(chunk[len(chunk) - len(points) :], points))


def jtc_rejection(trajectory: Trajectory, controller_joints: Sequence[str], now_ns: int) -> str:
    """Why JTC (allow_partial_joints_goal false) would refuse `trajectory` at `now_ns`; "" if it accepts it."""
    names = list(trajectory.joint_names)
    if not names:
        return "empty joint names"
    if len(names) != len(controller_joints) or sorted(names) != sorted(controller_joints):
        return f"joints {names} do not match the controller's {list(controller_joints)}"
    if not trajectory.points:
        return "empty trajectory (JTC refuses it and keeps executing the previous one)"
    if trajectory.stamp_ns != 0 and trajectory.stamp_ns + trajectory.points[-1].time_from_start_ns < now_ns:
        return "non-zero start time and the trajectory ends in the past"
    joints = len(names)
    previous = None
    for index, point in enumerate(trajectory.points):
        if previous is not None and point.time_from_start_ns <= previous:
            return f"time_from_start of points {index - 1} and {index} is not strictly increasing"
        previous = point.time_from_start_ns
        if len(point.positions) != joints:
            return f"point {index} has {len(point.positions)} positions for {joints} joints"
        for label in ("velocities", "accelerations", "effort"):
            size = len(getattr(point, label))
            if size not in (0, joints):
                return f"point {index} has {size} {label} for {joints} joints"
    return ""


@dataclass
class JtcExecution:
    """The command JTC produces over time after accepting `trajectory` at `receipt_ns` with the
    joints at `start_state` (in `controller_joints` order)."""

    trajectory: Trajectory
    controller_joints: tuple[str, ...]
    receipt_ns: int
    start_state: np.ndarray
    _times: np.ndarray = field(init=False, repr=False)
    _positions: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        order = [list(self.trajectory.joint_names).index(name) for name in self.controller_joints]
        self.start_state = np.asarray(self.start_state, dtype=np.float64).copy()
        start_ns = self.trajectory.stamp_ns if self.trajectory.stamp_ns != 0 else self.receipt_ns
        self._times = start_ns + self.trajectory.times_ns()
        self._positions = self.trajectory.positions()[:, order]

    def sample(self, t_ns: int) -> np.ndarray:
        """Commanded positions at time `t_ns` (the start state before receipt)."""
        if t_ns <= self.receipt_ns:
            return self.start_state.copy()
        first = self._times[0]
        if t_ns < first:
            # Before the first point: from the state at receipt toward it.
            fraction = (t_ns - self.receipt_ns) / (first - self.receipt_ns)
            return self.start_state + fraction * (self._positions[0] - self.start_state)
        if t_ns >= self._times[-1]:
            return self._positions[-1].copy()
        index = int(np.searchsorted(self._times, t_ns, side="right")) - 1
        t0, t1 = self._times[index], self._times[index + 1]
        fraction = (t_ns - t0) / (t1 - t0)
        return self._positions[index] + fraction * (self._positions[index + 1] - self._positions[index])

    def knots(self) -> tuple[np.ndarray, np.ndarray]:
        """Times (K,) and positions (K, J) of the piecewise-linear command, starting with the state at
        receipt. A repeated time marks a jump (a first point already past at receipt)."""
        times = [self.receipt_ns]
        positions = [self.start_state]
        at_receipt = self.sample(self.receipt_ns + 1)  # right after receipt: a jump shows up here
        if self._times[0] <= self.receipt_ns:
            times.append(self.receipt_ns)
            positions.append(at_receipt)
        for t, p in zip(self._times, self._positions):
            if t > self.receipt_ns:
                times.append(int(t))
                positions.append(p)
        return np.array(times, dtype=np.int64), np.vstack(positions)

    def breakpoints_between(self, start_ns: int, end_ns: int) -> list[int]:
        """Times in [start_ns, end_ns] where the command's velocity may change, plus both ends."""
        times = [start_ns, end_ns] + [int(t) for t in self._times if start_ns < t < end_ns]
        if start_ns < self.receipt_ns < end_ns:
            times.append(self.receipt_ns)
        return sorted(set(times))


def execution_violations(
    execution: JtcExecution,
    lower: np.ndarray,
    upper: np.ndarray,
    max_velocity: np.ndarray,
    reference: np.ndarray | None = None,
    max_step: float | None = None,
    tolerance: float = 1e-9,
) -> list[str]:
    """Every way the executed command leaves the limits: a commanded position outside [lower, upper] or
    further than `max_step` from `reference`, or a segment (the one from the start state included)
    faster than `max_velocity`. A jump is an infinitely fast segment."""
    times, positions = execution.knots()
    problems: list[str] = []
    commanded = positions[1:]
    if not np.isfinite(commanded).all():
        return ["a commanded position is not finite"]
    if (commanded < lower - tolerance).any() or (commanded > upper + tolerance).any():
        problems.append("a commanded position is outside the joint limits")
    if reference is not None and max_step is not None and (np.abs(commanded - reference) > max_step + tolerance).any():
        problems.append("a commanded position is further than max_step from the measured state")
    durations = np.diff(times) * 1e-9
    moves = np.abs(np.diff(positions, axis=0))
    for index, (duration, move) in enumerate(zip(durations, moves)):
        allowed = max_velocity * duration * (1.0 + tolerance) + tolerance
        if (move > allowed).any():
            problems.append(f"segment {index} moves {move.max():.4g} in {duration:.4g} s (too fast)")
    return problems
