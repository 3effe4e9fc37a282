"""Safety checks between any model output and the robot (pure Python, no ROS).

A command chunk is accepted whole or rejected whole: clamping a learned chunk
changes its meaning, so the robot holds instead and the reason is reported.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np


@dataclass(frozen=True)
class JointLimits:
    """Per-joint position range [lower, upper] and speed bound |v| <= max_velocity (units/s)."""

    names: tuple[str, ...]
    lower: np.ndarray
    upper: np.ndarray
    max_velocity: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.names)
        for label in ("lower", "upper", "max_velocity"):
            value = np.asarray(getattr(self, label), dtype=np.float64)
            if value.shape != (n,):
                raise ValueError(f"{label} has shape {value.shape}, expected ({n},) for joints {self.names}")
            if not np.isfinite(value).all():
                raise ValueError(f"{label} must be finite, got {value}")
            object.__setattr__(self, label, value)
        if len(set(self.names)) != n:
            raise ValueError(f"duplicate joint names {self.names}")
        if (self.lower > self.upper).any():
            raise ValueError(f"lower limits {self.lower} exceed upper limits {self.upper}")
        if (self.max_velocity <= 0).any():
            raise ValueError(f"max_velocity must be positive, got {self.max_velocity}")

    @classmethod
    def from_mapping(cls, joints: Mapping[str, Mapping[str, float]]) -> "JointLimits":
        """Build from {"joint": {"lower": .., "upper": .., "max_velocity": ..}, ...} (the YAML layout)."""
        names = tuple(joints)
        try:
            return cls(
                names=names,
                lower=np.array([joints[n]["lower"] for n in names], dtype=np.float64),
                upper=np.array([joints[n]["upper"] for n in names], dtype=np.float64),
                max_velocity=np.array([joints[n]["max_velocity"] for n in names], dtype=np.float64),
            )
        except KeyError as err:
            raise ValueError(f"joint limits need lower, upper and max_velocity for every joint; missing {err}") from err


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""


def check_chunk(
    limits: JointLimits,
    joint_names: Sequence[str],
    positions: np.ndarray,
    times_from_start: np.ndarray,
    current: np.ndarray,
    max_step: float,
) -> Verdict:
    """Check a whole trajectory chunk against the limits.

    positions: (T, J) targets for `joint_names` (any order of the limited joints); times_from_start: (T,) seconds after
    the chunk's start, strictly increasing; current: (J,) measured positions in
    `limits.names` order. max_step bounds how far any point may be from the current
    state, so a chunk can never ask for a jump however slowly it is timed.
    """
    if sorted(joint_names) != sorted(limits.names) or len(set(joint_names)) != len(joint_names):
        return Verdict(False, f"joint names {list(joint_names)} differ from the limited joints {list(limits.names)}")
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim == 2 and positions.shape[1] == len(joint_names):
        # Reorder columns into the limits' joint order.
        positions = positions[:, [list(joint_names).index(name) for name in limits.names]]
    times = np.asarray(times_from_start, dtype=np.float64)
    current = np.asarray(current, dtype=np.float64)
    joints = len(limits.names)
    if positions.ndim != 2 or positions.shape[1] != joints or positions.shape[0] == 0:
        return Verdict(False, f"positions have shape {positions.shape}, expected (T>0, {joints})")
    if times.shape != (positions.shape[0],):
        return Verdict(False, f"{times.shape[0] if times.ndim else 0} times for {positions.shape[0]} points")
    if current.shape != (joints,) or not np.isfinite(current).all():
        return Verdict(False, f"current state {current} is missing or not finite")
    if not np.isfinite(positions).all():
        return Verdict(False, "positions contain NaN or inf")
    if not np.isfinite(times).all() or (times <= 0).any() or (np.diff(times) <= 0).any():
        return Verdict(False, f"time_from_start must be positive and strictly increasing, got {times.tolist()}")
    below = positions < limits.lower
    above = positions > limits.upper
    if below.any() or above.any():
        point, joint = np.argwhere(below | above)[0]
        return Verdict(
            False,
            f"point {point} joint {limits.names[joint]}={positions[point, joint]:.4g} outside "
            f"[{limits.lower[joint]:.4g}, {limits.upper[joint]:.4g}]",
        )
    offsets = np.abs(positions - current)
    if (offsets > max_step).any():
        point, joint = np.argwhere(offsets > max_step)[0]
        return Verdict(
            False,
            f"point {point} joint {limits.names[joint]} is {offsets[point, joint]:.4g} from the current state "
            f"(max_step {max_step:.4g})",
        )
    # Velocity between consecutive points, starting from the current state at t=0.
    path = np.vstack([current, positions])
    durations = np.diff(np.concatenate([[0.0], times]))
    speeds = np.abs(np.diff(path, axis=0)) / durations[:, None]
    too_fast = speeds > limits.max_velocity
    if too_fast.any():
        point, joint = np.argwhere(too_fast)[0]
        return Verdict(
            False,
            f"segment to point {point} joint {limits.names[joint]} moves at {speeds[point, joint]:.4g}/s "
            f"(max {limits.max_velocity[joint]:.4g}/s)",
        )
    return Verdict(True)


@dataclass
class Watchdog:
    """Tracks when each input was last seen, on a steady (monotonic) clock.

    An input that was never seen counts as stale: the robot must not move before
    the camera, the state and the model have all spoken.
    """

    timeouts: dict[str, float]
    clock: Callable[[], float] = time.monotonic
    _last_seen: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, timeout in self.timeouts.items():
            if not (timeout > 0 and math.isfinite(timeout)):
                raise ValueError(f"timeout for {name!r} must be positive and finite, got {timeout}")

    def feed(self, name: str, age: float = 0.0) -> None:
        """Mark `name` as seen; `age` (s) is how old the data already was (from its header stamp),
        so a message delivered late does not look fresh."""
        if name not in self.timeouts:
            raise KeyError(f"unknown watchdog input {name!r}; known: {sorted(self.timeouts)}")
        seen = self.clock() - max(0.0, age)
        self._last_seen[name] = max(seen, self._last_seen.get(name, -math.inf))

    def age(self, name: str) -> float:
        """Seconds since `name` was last fed (inf if never)."""
        seen = self._last_seen.get(name)
        return math.inf if seen is None else self.clock() - seen

    def stale(self) -> list[str]:
        return [name for name, timeout in self.timeouts.items() if self.age(name) > timeout]


@dataclass
class EStop:
    """Latching emergency stop: once triggered, only an explicit reset clears it."""

    engaged: bool = False
    reason: str = ""

    def trigger(self, reason: str) -> None:
        if not self.engaged:
            self.engaged = True
            self.reason = reason

    def reset(self) -> None:
        self.engaged = False
        self.reason = ""


CAMERA = "camera"
STATE = "state"
MODEL = "model"


@dataclass(frozen=True)
class Decision:
    """What the gate does with one command: forward it, or hold position (and why)."""

    forward: bool
    hold: bool
    reason: str = ""


class SafetyGate:
    """Every model command passes here on its way to the robot.

    A chunk is forwarded only if the e-stop is released, camera, joint state and
    model output are all fresh, and the whole chunk is within limits. Otherwise
    the robot is told to hold position once per transition into the held state.
    """

    def __init__(
        self, limits: JointLimits, max_step: float, camera_timeout: float, state_timeout: float,
        command_timeout: float, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (max_step > 0 and math.isfinite(max_step)):
            raise ValueError(f"max_step must be positive and finite, got {max_step}")
        self.limits = limits
        self.max_step = max_step
        self.watchdog = Watchdog({CAMERA: camera_timeout, STATE: state_timeout, MODEL: command_timeout}, clock)
        self.estop = EStop()
        self.current: np.ndarray | None = None
        self.held = True
        self.hold_reason = "waiting for inputs"
        self.forwarded = 0
        self.rejected = 0

    def on_camera(self, age: float = 0.0) -> None:
        self.watchdog.feed(CAMERA, age)

    def on_state(self, names: Sequence[str], positions: Sequence[float], age: float = 0.0) -> None:
        """Record the measured joint positions (ignored, so they go stale, if incomplete or non-finite)."""
        try:
            current = np.array([positions[list(names).index(n)] for n in self.limits.names], dtype=np.float64)
        except (ValueError, IndexError):
            return
        if np.isfinite(current).all():
            self.current = current
            self.watchdog.feed(STATE, age)

    def review(self, joint_names: Sequence[str], positions: np.ndarray, seconds_until_points: np.ndarray) -> Decision:
        """Decide on a chunk whose points are `seconds_until_points` from now (past points already dropped)."""
        self.watchdog.feed(MODEL)
        if self.estop.engaged:
            return self.reject(f"e-stop engaged: {self.estop.reason}")
        stale = [name for name in self.watchdog.stale() if name != MODEL]
        if stale:
            return self.reject(f"stale inputs: {', '.join(stale)}")
        verdict = check_chunk(self.limits, joint_names, positions, seconds_until_points, self.current, self.max_step)
        if not verdict.ok:
            return self.reject(verdict.reason)
        self.held = False
        self.hold_reason = ""
        self.forwarded += 1
        return Decision(forward=True, hold=False)

    def tick(self) -> Decision:
        """Periodic check: hold once when an input goes stale or the e-stop engages."""
        if self.estop.engaged:
            reason = f"e-stop engaged: {self.estop.reason}"
        else:
            stale = self.watchdog.stale()
            reason = f"stale inputs: {', '.join(stale)}" if stale else ""
        if not reason:
            return Decision(forward=False, hold=False)
        return self._hold(reason)

    def trigger_estop(self, reason: str) -> Decision:
        self.estop.trigger(reason)
        return self._hold(f"e-stop engaged: {self.estop.reason}", force=True)

    def reset_estop(self) -> None:
        self.estop.reset()

    def reject(self, reason: str) -> Decision:
        self.rejected += 1
        return self._hold(reason, force=True)

    def _hold(self, reason: str, force: bool = False) -> Decision:
        # A rejected command is answered with a hold every time, so a robot still
        # executing an older chunk stops; a stale input holds only on the transition.
        send = force or not self.held
        self.held = True
        self.hold_reason = reason
        return Decision(forward=False, hold=send, reason=reason)
