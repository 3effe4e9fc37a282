"""A simulated robot's joint_trajectory_controller: follows JointTrajectory commands by JTC's rules."""

from __future__ import annotations

import numpy as np

from rla_wm.control.jtc import JtcExecution, Trajectory, jtc_rejection


class TrajectoryFollower:
    """Holds the active trajectory and answers "where should the joints be at time t?".

    Acceptance and execution are `rla_wm.control.jtc`'s model of joint_trajectory_controller: a
    refused message (an empty one included) leaves the previous trajectory running; past points are
    interpolated through, not skipped. The state at receipt is the measured position (JTC's default,
    closed-loop start). Times are integer nanoseconds on one clock.
    """

    def __init__(self, joint_names: tuple[str, ...]) -> None:
        self.joint_names = tuple(joint_names)
        self._execution: JtcExecution | None = None

    def command(self, trajectory: Trajectory, now_ns: int, current: np.ndarray) -> str:
        """Take a new trajectory as JTC would; returns why it was refused ("" if accepted)."""
        reason = jtc_rejection(trajectory, self.joint_names, now_ns)
        if not reason:
            self._execution = JtcExecution(trajectory, self.joint_names, now_ns, np.asarray(current, dtype=np.float64))
        return reason

    def target(self, now_ns: int, current: np.ndarray) -> np.ndarray:
        """Commanded positions at `now_ns`; with nothing commanded yet, the current position."""
        if self._execution is None:
            return np.asarray(current, dtype=np.float64).copy()
        return self._execution.sample(now_ns)
