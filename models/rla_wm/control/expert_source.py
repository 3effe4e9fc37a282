"""The scripted Push-T expert (`rla_wm.envs.pusht.expert`) as a live command source.

The expert needs the agent position and the block pose of the same simulator step. They come
on two streams (joint states and object poses), each stamped with its step. `ExpertSource`
pairs them by stamp, not as "the latest of each", so a late joint state is never paired with
the next step's pose, and it acts once per step, on the newest step that has both (steps it
fell behind on are skipped).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from rla_wm.control.freshness import remember_newest
from rla_wm.envs.pusht.sim import GOAL_POSE


def yaw_from_quaternion(x: float, y: float, z: float, w: float) -> float:
    """Rotation about z of a unit quaternion (radians, in (-pi, pi])."""
    return math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


def planar_pose(x: float, y: float, orientation: tuple[float, float, float, float]) -> np.ndarray:
    """(x, y, yaw) of a pose in the table plane, orientation as (qx, qy, qz, qw); ValueError if any
    of it is NaN or inf."""
    pose = np.array([x, y, yaw_from_quaternion(*orientation)])
    if not np.isfinite(pose).all():
        raise ValueError(f"pose (x, y, yaw) {pose.tolist()}")
    return pose


class ExpertSource:
    """Pairs joint states and object poses of one simulator step; the expert's target per step."""

    def __init__(self, max_lead: float, sync_tolerance: float, history: int = 10) -> None:
        """`sync_tolerance`: seconds two stamps may differ and still be one step."""
        from rla_wm.envs.pusht.expert import PushTExpert

        self.expert = PushTExpert(max_lead=max_lead)
        self.goal = np.asarray(GOAL_POSE, dtype=np.float64)  # gym-pusht's fixed goal until one is set
        self.tolerance_ns = sync_tolerance * 1e9
        self.history = history
        self._states: OrderedDict[int, np.ndarray] = OrderedDict()  # by stamp (ns)
        self._poses: OrderedDict[int, np.ndarray] = OrderedDict()
        self._acted_stamp = -1

    def reset(self) -> None:
        """A new episode: the simulator moved the agent and the block."""
        self.expert.reset()

    def add_state(self, stamp_ns: int, position: np.ndarray) -> None:
        remember_newest(self._states, stamp_ns, position, self.history)

    def add_pose(self, stamp_ns: int, pose: np.ndarray) -> None:
        remember_newest(self._poses, stamp_ns, pose, self.history)

    def act(self) -> tuple[int, np.ndarray] | None:
        """(step stamp, target) for the newest step not acted on that has both a pose and a joint
        state; None when there is none."""
        for stamp in reversed(self._poses):
            if stamp <= self._acted_stamp:
                return None
            state_stamps = [s for s in self._states if abs(s - stamp) <= self.tolerance_ns]
            if state_stamps:
                break
        else:
            return None
        position = self._states[min(state_stamps, key=lambda s: abs(s - stamp))]
        self._acted_stamp = stamp
        return stamp, self.expert.act(position, self._poses[stamp], self.goal)
