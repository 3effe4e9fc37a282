"""Following a time-stamped joint trajectory the way joint_trajectory_controller does."""
from __future__ import annotations

import numpy as np


class TrajectoryFollower:
    """Holds the active trajectory and answers "where should the joints be at time t?".

    Times are absolute seconds on one clock. Points already past when the trajectory
    arrives are dropped; the target moves linearly from where the robot was at
    arrival through the remaining points and stays at the last one. An empty trajectory means hold: keep the position
    measured when it arrived.
    """

    def __init__(self, joint_names: tuple[str, ...]) -> None:
        self.joint_names = tuple(joint_names)
        self._times: np.ndarray | None = None
        self._positions: np.ndarray | None = None
        self._hold: np.ndarray | None = None

    def set_trajectory(
        self, joint_names: tuple[str, ...], positions: np.ndarray, start_time: float, times_from_start: np.ndarray,
        received_time: float, current: np.ndarray,
    ) -> None:
        if sorted(joint_names) != sorted(self.joint_names):
            raise ValueError(f"trajectory joints {list(joint_names)} != robot joints {list(self.joint_names)}")
        current = np.asarray(current, dtype=np.float64)
        positions = np.asarray(positions, dtype=np.float64)
        if positions.size == 0:
            self.hold(current)
            return
        order = [list(joint_names).index(name) for name in self.joint_names]
        positions = positions[:, order]
        times = start_time + np.asarray(times_from_start, dtype=np.float64)
        # Points already in the past are skipped; the path starts at the current state
        # at arrival time, so the target never jumps.
        future = times > received_time
        if not future.any():
            self.hold(current)
            return
        self._times = np.concatenate([[received_time], times[future]])
        self._positions = np.vstack([current, positions[future]])
        self._hold = None

    def hold(self, current: np.ndarray) -> None:
        self._times = None
        self._positions = None
        self._hold = np.asarray(current, dtype=np.float64).copy()

    @property
    def active(self) -> bool:
        return self._times is not None or self._hold is not None

    def target(self, now: float, current: np.ndarray) -> np.ndarray:
        """Target at time `now`; with nothing commanded yet, the current position."""
        if self._hold is not None:
            return self._hold
        if self._times is None:
            return np.asarray(current, dtype=np.float64)
        return np.array([np.interp(now, self._times, self._positions[:, j]) for j in range(len(self.joint_names))])
