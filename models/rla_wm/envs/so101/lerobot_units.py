"""SO-101 joint positions: the simulator's / ROS radians <-> LeRobot's SO-101 units and feature names.

LeRobot's SO-101 follower (lerobot 0.4.4, ``lerobot/robots/so_follower/so_follower.py``,
``SOFollower.__init__`` and ``_motors_ft``) reads six Feetech motors in this order: shoulder_pan,
shoulder_lift, elbow_flex, wrist_flex, wrist_roll, gripper. Its observation and action features
are ``<motor>.pos``; ``lerobot-record`` (``hw_to_dataset_features`` in
``lerobot/datasets/utils.py``) stacks them, in that order, into the float32 vectors
``observation.state`` and ``action``. The units (``MotorsBus._normalize`` in
``lerobot/motors/motors_bus.py``):

- the five body joints in ``MotorNormMode.DEGREES`` (``SOFollowerConfig.use_degrees`` defaults to
  True): degrees from the middle of the calibrated range. The URDF of LeRobot's ``so101_new_calib``
  calibration (the one the simulator is built from) puts each joint's zero at that middle, and
  LeRobot's own kinematics (``lerobot/model/kinematics.py``) feeds ``np.deg2rad`` of these values
  straight into that URDF: degrees = the URDF joint angle in degrees, same sign;
- the gripper in ``MotorNormMode.RANGE_0_100``: 0 at the calibrated range's minimum (closed), 100 at
  its maximum (open), clamped to [0, 100]. Here the range is the URDF gripper joint's limits.

The simulator, the ROS graph (JointState, JointTrajectory), the safety gate and the models work in
radians with the URDF's joint names; datasets in LeRobot's layout are converted on the way in
(`to_lerobot`, by the recorder) and on the way out (`to_radians`, by the training data reader).

Not covered: datasets recorded with ``use_degrees=False`` (body joints in -100..100 of each arm's
own calibration), which cannot be turned into angles without that arm's calibration file.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

# LeRobot's motor order (SOFollower's bus); also the URDF's joint names and the simulator's order.
JOINT_NAMES = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")
GRIPPER = "gripper"
GRIPPER_INDEX = JOINT_NAMES.index(GRIPPER)
# LeRobot's feature names: `<motor>.pos` (SOFollower._motors_ft), the names of observation.state and action.
FEATURE_NAMES = tuple(f"{name}.pos" for name in JOINT_NAMES)
# The robot type `lerobot-record --robot.type=so101_follower` names and LeRobot's SO-101 datasets store.
ROBOT_TYPE = "so101_follower"
GRIPPER_RANGE = 100.0  # RANGE_0_100: 0 closed .. 100 open


def lerobot_feature_order(names: Sequence[str]) -> np.ndarray | None:
    """Where each of `JOINT_NAMES` is among `names` when these are LeRobot's SO-101 feature names
    (`FEATURE_NAMES`, in any order), else None: ``values[..., order]`` puts a vector in `JOINT_NAMES` order."""
    names = [str(name) for name in names]
    if len(names) != len(FEATURE_NAMES) or set(names) != set(FEATURE_NAMES):
        return None
    return np.array([names.index(name) for name in FEATURE_NAMES], dtype=np.int64)


@dataclass(frozen=True)
class So101LeRobotUnits:
    """The conversion, for a gripper whose joint runs from `gripper_lower` (closed) to `gripper_upper`
    (open), in radians. `from_urdf` reads them from a URDF; `default_units()` from the simulator's."""

    gripper_lower: float
    gripper_upper: float

    def __post_init__(self) -> None:
        lower, upper = float(self.gripper_lower), float(self.gripper_upper)
        if not (math.isfinite(lower) and math.isfinite(upper) and lower < upper):
            raise ValueError(f"the gripper range must be finite with lower < upper, got [{lower}, {upper}]")

    @classmethod
    def from_urdf(cls, urdf: str | bytes | Path) -> So101LeRobotUnits:
        """The gripper joint's position limits of a URDF (its text, or a file path)."""
        from rla_wm.control.limits import limits_from_urdf

        source = "URDF"
        if isinstance(urdf, Path):
            source, urdf = f"URDF {urdf}", urdf.read_bytes()
        limits = limits_from_urdf(urdf, (GRIPPER,), source=source)
        return cls(float(limits.lower[0]), float(limits.upper[0]))

    def to_lerobot(self, radians: npt.ArrayLike) -> np.ndarray:
        """Joint positions (..., 6) in radians, `JOINT_NAMES` order -> LeRobot's units, same order:
        body joints in degrees, the gripper in 0..100 (clamped, as LeRobot's RANGE_0_100 is). float64."""
        values = _joints(radians, "radians")
        out = np.degrees(values)
        span = self.gripper_upper - self.gripper_lower
        gripper = (values[..., GRIPPER_INDEX] - self.gripper_lower) / span * GRIPPER_RANGE
        out[..., GRIPPER_INDEX] = np.clip(gripper, 0.0, GRIPPER_RANGE)
        return out

    def to_radians(self, lerobot: npt.ArrayLike) -> np.ndarray:
        """Inverse of `to_lerobot`: LeRobot's units (..., 6), `JOINT_NAMES` order -> radians. A gripper
        value outside 0..100 is clamped first (as LeRobot clamps a commanded one). float64."""
        values = _joints(lerobot, "LeRobot units")
        out = np.radians(values)
        fraction = np.clip(values[..., GRIPPER_INDEX], 0.0, GRIPPER_RANGE) / GRIPPER_RANGE
        out[..., GRIPPER_INDEX] = self.gripper_lower + fraction * (self.gripper_upper - self.gripper_lower)
        return out

    def radians_from_features(self, values: npt.ArrayLike, names: Sequence[str]) -> np.ndarray:
        """A LeRobot SO-101 vector (..., 6) whose entries are named `names` (`FEATURE_NAMES` in any
        order) -> radians in `JOINT_NAMES` order; ValueError for other names."""
        order = lerobot_feature_order(names)
        if order is None:
            raise ValueError(f"not LeRobot's SO-101 feature names {list(FEATURE_NAMES)}: {list(names)}")
        return self.to_radians(np.asarray(values, dtype=np.float64)[..., order])


def _joints(values: npt.ArrayLike, what: str) -> np.ndarray:
    array = np.array(values, dtype=np.float64)
    if array.ndim == 0 or array.shape[-1] != len(JOINT_NAMES):
        raise ValueError(f"expected (..., {len(JOINT_NAMES)}) joint values {JOINT_NAMES} in {what}, got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"joint values in {what} are not finite: {array}")
    return array


@functools.cache
def default_units() -> So101LeRobotUnits:
    """The conversion for the simulated SO-101: the gripper range of the pinned wheel's URDF
    (so101_new_calib.urdf: -0.174533 .. 1.74533 rad)."""
    from rla_wm.envs.so101 import assets

    return So101LeRobotUnits.from_urdf(assets.urdf_path())
