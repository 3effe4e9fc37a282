"""Seeded random trajectories for fuzzing the safety gate: valid chunks, near misses and garbage.

Shared by the DDS fuzz test, the standalone fuzz script and the property tests, so all three send
the kinds of message an outside tester found dangerous: non-finite or absurd velocities,
accelerations and effort; first points a few nanoseconds ahead of a zero stamp; past points outside
the limits; unordered or negative times; negative or far-off stamps; ragged sizes; wrong joints.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rla_wm.control.jtc import NANOSECONDS, Trajectory, TrajectoryPoint
from rla_wm.control.safety import JointLimits

_WILD = np.array([np.nan, np.inf, -np.inf, 1e6, -1e6, 1e300, 0.0, -0.0])


def _near_valid(rng: np.random.Generator, limits: JointLimits, current: np.ndarray, now_ns: int) -> Trajectory:
    """A chunk near the state at up to ~1.2x the speed limit, stamped around now (or zero)."""
    count = int(rng.integers(1, 9))
    spacing = rng.uniform(0.03, 0.3, size=count)
    times = np.cumsum(spacing)
    speed = limits.max_velocity * rng.uniform(0.0, 1.2)
    steps = rng.uniform(-1, 1, size=(count, len(limits.names))) * speed * spacing[:, None]
    positions = current + np.cumsum(steps, axis=0)
    stamp = int(
        rng.choice(
            [0, now_ns - int(rng.uniform(0, 0.2) * NANOSECONDS), now_ns + int(rng.uniform(0, 0.05) * NANOSECONDS)]
        )
    )
    names = list(limits.names)
    order = rng.permutation(len(names)) if rng.random() < 0.3 else np.arange(len(names))
    return Trajectory.from_arrays(
        [names[i] for i in order], positions[:, order], (times * NANOSECONDS).astype(np.int64), stamp
    )


def _corrupt(rng: np.random.Generator, trajectory: Trajectory, limits: JointLimits, now_ns: int) -> Trajectory:
    """One of the dangerous edits to an otherwise valid chunk."""
    points = list(trajectory.points)
    joints = len(trajectory.joint_names)
    index = int(rng.integers(len(points)))
    point = points[index]
    kind = int(rng.integers(9))
    if kind == 0:  # a non-finite or absurd value in a field other than positions
        field = str(rng.choice(["velocities", "accelerations", "effort"]))
        values = rng.choice(_WILD, size=joints)
        points[index] = TrajectoryPoint(**{**point.__dict__, field: tuple(float(v) for v in values)})
    elif kind == 1:  # a first point due within nanoseconds of a zero stamp, far away or non-finite
        target = tuple(float(v) for v in rng.choice(_WILD[:6], size=joints))
        points[0] = TrajectoryPoint(positions=target, time_from_start_ns=int(rng.integers(1, 1000)))
        return Trajectory(trajectory.joint_names, tuple(points), 0)
    elif kind == 2:  # a past point outside the limits, stamped 150 ms ago
        bad = tuple(float(v) for v in rng.choice(_WILD[:6], size=joints))
        points.insert(0, TrajectoryPoint(positions=bad, time_from_start_ns=20_000_000))
        shifted = [
            TrajectoryPoint(**{**p.__dict__, "time_from_start_ns": p.time_from_start_ns + 200_000_000})
            for p in points[1:]
        ]
        return Trajectory(trajectory.joint_names, (points[0], *shifted), now_ns - 150_000_000)
    elif kind == 3 and len(points) > 1:  # times out of order
        a, b = rng.choice(len(points), size=2, replace=False)
        ta, tb = points[a].time_from_start_ns, points[b].time_from_start_ns
        points[a] = TrajectoryPoint(**{**points[a].__dict__, "time_from_start_ns": tb})
        points[b] = TrajectoryPoint(**{**points[b].__dict__, "time_from_start_ns": ta})
    elif kind == 4:  # a negative stamp or time_from_start
        if rng.random() < 0.5:
            return Trajectory(trajectory.joint_names, tuple(points), -int(rng.integers(1, 10 * NANOSECONDS)))
        points[0] = TrajectoryPoint(**{**points[0].__dict__, "time_from_start_ns": -int(rng.integers(1, NANOSECONDS))})
        return Trajectory(trajectory.joint_names, tuple(points), 0)
    elif kind == 5:  # a ragged point
        size = int(rng.choice([0, 1, joints + 1]))
        field = str(rng.choice(["positions", "velocities", "accelerations", "effort"]))
        points[index] = TrajectoryPoint(**{**point.__dict__, field: tuple(rng.normal(size=size).tolist())})
    elif kind == 6:  # wrong joint names
        options = [
            (),
            ("x",) * joints,
            (trajectory.joint_names[0],) * joints,
            trajectory.joint_names[:-1],
            (*trajectory.joint_names, "extra"),
        ]
        names = options[int(rng.integers(len(options)))]
        return Trajectory(tuple(names), tuple(points), trajectory.stamp_ns)
    elif kind == 7:  # a stamp far in the past or future, or no points at all
        if rng.random() < 0.3:
            return Trajectory(trajectory.joint_names, (), trajectory.stamp_ns)
        offset = int(rng.choice([-1, 1]) * rng.uniform(0.5, 1e4) * NANOSECONDS)
        return Trajectory(trajectory.joint_names, tuple(points), max(0, now_ns + offset))
    else:  # a non-finite or far position anywhere in the chunk
        positions = list(point.positions)
        positions[int(rng.integers(joints))] = float(rng.choice(_WILD[:6]))
        points[index] = TrajectoryPoint(**{**point.__dict__, "positions": tuple(positions)})
    return Trajectory(trajectory.joint_names, tuple(points), trajectory.stamp_ns)


def random_trajectory(
    rng: np.random.Generator,
    limits: JointLimits,
    current: np.ndarray,
    now_ns: int,
) -> Trajectory:
    """About a third valid-looking chunks (some too fast), the rest corrupted in one of nine ways."""
    base = _near_valid(rng, limits, np.asarray(current, dtype=np.float64), now_ns)
    if rng.random() < 0.35:
        return base
    return _corrupt(rng, base, limits, now_ns)


def trajectory_stream(
    seed: int,
    limits: JointLimits,
    current: Callable[[], np.ndarray],
    now_ns: Callable[[], int],
):
    """An endless seeded stream of fuzz trajectories around the (changing) state and clock."""
    rng = np.random.default_rng(seed)
    while True:
        yield random_trajectory(rng, limits, current(), now_ns())
