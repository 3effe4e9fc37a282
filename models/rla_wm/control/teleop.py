"""Teleoperation input -> joint-space targets (pure Python, no ROS).

`rla_wm.control.teleop_session` drives a teleop node's source with these pieces:
- `parse_keys` + `KeyboardTeleop`: raw terminal bytes -> a velocity (WASD / arrows,
  +/- speed, space = hold). A terminal cannot report key releases, so a key keeps
  the robot moving for `key_timeout` seconds; the terminal's auto-repeat keeps it alive
  while the key is held.
- `JoyMapping`: gamepad axes and buttons (sensor_msgs/Joy layout) -> a velocity, or
  None while the deadman button is released (the robot holds).
- `VelocityIntegrator`: velocity -> a moving target that never runs away from the
  measured position (a blocked robot does not wind up a far target) and stays inside
  the joint limits, and the short trajectory chunk to send.
- `PlaySource`: seeded random "play" over `rla_wm.envs.pusht.dataset.RandomWalkPolicy`.
- `JointRandomWalk`: seeded random "play" of an arm in joint space, within its joint limits.

Directions are in the Push-T image frame: +x right, +y down (w / up arrow = -y).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

# Names of the keys `parse_keys` reports, besides single characters.
UP, DOWN, LEFT, RIGHT = "up", "down", "left", "right"
FASTER, SLOWER, HOLD, QUIT = "faster", "slower", "hold", "quit"
# An arm's extra keys (rla_wm.control.arm_teleop): tool up/down, gripper, and "select1".."select9"
# to pick the joint the keyboard moves in joint space.
RAISE, LOWER, OPEN, CLOSE, SELECT = "raise", "lower", "open", "close", "select"

_ESCAPES = {
    b"\x1b[A": UP,
    b"\x1b[B": DOWN,
    b"\x1b[C": RIGHT,
    b"\x1b[D": LEFT,
    b"\x1bOA": UP,
    b"\x1bOB": DOWN,
    b"\x1bOC": RIGHT,
    b"\x1bOD": LEFT,
}
_CHARACTERS = {
    "w": UP,
    "s": DOWN,
    "a": LEFT,
    "d": RIGHT,
    "+": FASTER,
    "=": FASTER,
    "-": SLOWER,
    "_": SLOWER,
    " ": HOLD,
    "q": QUIT,
    "\x03": QUIT,
    "\x04": QUIT,
    "r": RAISE,
    "f": LOWER,
    "o": OPEN,
    "c": CLOSE,
    **{str(digit): f"{SELECT}{digit}" for digit in range(1, 10)},
}
DIRECTIONS = {UP: (0.0, -1.0), DOWN: (0.0, 1.0), LEFT: (-1.0, 0.0), RIGHT: (1.0, 0.0)}
KEY_HELP = (
    "teleop keys: w/a/s/d or arrows = move, + / - = speed, space = hold, q = quit "
    "(a key moves the robot while it is held down)"
)


def parse_keys(data: bytes) -> list[str]:
    """Terminal input bytes -> key names (UP..QUIT); unknown bytes are ignored.

    Arrow keys arrive as escape sequences (ESC [ A or ESC O A); letters in either case.
    """
    keys: list[str] = []
    index = 0
    while index < len(data):
        three = data[index : index + 3]
        if three in _ESCAPES:
            keys.append(_ESCAPES[three])
            index += 3
            continue
        if data[index : index + 1] == b"\x1b":
            # A lone ESC or an unknown sequence (F-keys, ...): skip the whole sequence.
            index += 1
            while index < len(data) and data[index : index + 1] in b"[O0123456789;":
                index += 1
            if index < len(data) and data[index : index + 1].isalpha():
                index += 1
            continue
        key = _CHARACTERS.get(chr(data[index]).lower())
        if key is not None:
            keys.append(key)
        index += 1
    return keys


class KeyboardTeleop:
    """Key presses -> velocity (units/s). Holding two directions (alternating repeats) moves diagonally."""

    def __init__(
        self,
        speed: float = 100.0,
        speed_factor: float = 1.25,
        min_speed: float = 5.0,
        max_speed: float = 400.0,
        key_timeout: float = 0.3,
    ) -> None:
        if not (0 < min_speed <= speed <= max_speed) or speed_factor <= 1.0 or key_timeout <= 0:
            raise ValueError("need 0 < min_speed <= speed <= max_speed, speed_factor > 1 and key_timeout > 0")
        self.speed = speed
        self.speed_factor = speed_factor
        self.min_speed = min_speed
        self.max_speed = max_speed
        self.key_timeout = key_timeout
        self.quit = False
        self._pressed: dict[str, float] = {}  # direction -> time of its last press

    def press(self, key: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if key in DIRECTIONS:
            opposite = {UP: DOWN, DOWN: UP, LEFT: RIGHT, RIGHT: LEFT}[key]
            self._pressed.pop(opposite, None)  # reversing is immediate, not a cancel-out
            self._pressed[key] = now
        elif key == FASTER:
            self.speed = min(self.max_speed, self.speed * self.speed_factor)
        elif key == SLOWER:
            self.speed = max(self.min_speed, self.speed / self.speed_factor)
        elif key == HOLD:
            self._pressed.clear()
        elif key == QUIT:
            self._pressed.clear()
            self.quit = True

    def velocity(self, now: float | None = None) -> np.ndarray:
        """Current velocity; zero once no direction key was pressed for `key_timeout` s."""
        now = time.monotonic() if now is None else now
        self._pressed = {key: at for key, at in self._pressed.items() if now - at <= self.key_timeout}
        direction = np.sum([DIRECTIONS[key] for key in self._pressed], axis=0) if self._pressed else np.zeros(2)
        norm = float(np.linalg.norm(direction))
        return direction / norm * self.speed if norm > 0 else np.zeros(2)


@dataclass(frozen=True)
class JoyMapping:
    """Gamepad -> velocity. Defaults fit the left stick of common pads under ROS joy_node, where
    pushing the stick left or up gives +1: both axes are inverted for the image frame.

    deadman_button: index of the button that must be held for any motion (-1: none, not advised).
    """

    axis_x: int = 0
    axis_y: int = 1
    invert_x: bool = True
    invert_y: bool = True
    deadzone: float = 0.1
    max_speed: float = 150.0
    deadman_button: int = 4

    def __post_init__(self) -> None:
        if not 0.0 <= self.deadzone < 1.0:
            raise ValueError(f"deadzone must be in [0, 1), got {self.deadzone}")
        if self.max_speed <= 0 or self.axis_x < 0 or self.axis_y < 0:
            raise ValueError("max_speed must be positive and axis indices non-negative")

    def velocity(self, axes: Sequence[float], buttons: Sequence[int]) -> np.ndarray | None:
        """Velocity (units/s), or None = hold (deadman released, or a message too short for the mapping)."""
        if deadman_released(buttons, self.deadman_button) or len(axes) <= max(self.axis_x, self.axis_y):
            return None
        raw = np.array([axes[self.axis_x], axes[self.axis_y]], dtype=np.float64)
        if not np.isfinite(raw).all():
            return None
        raw *= np.array([-1.0 if self.invert_x else 1.0, -1.0 if self.invert_y else 1.0])
        return beyond_deadzone(raw, self.deadzone) * self.max_speed


def deadman_released(buttons: Sequence[int], deadman_button: int) -> bool:
    """Whether a Joy message's buttons do not hold the deadman (-1: no deadman; a short message: released)."""
    return deadman_button >= 0 and (len(buttons) <= deadman_button or not buttons[deadman_button])


def beyond_deadzone(raw: np.ndarray, deadzone: float) -> np.ndarray:
    """Stick deflections in [-1, 1] with the deadzone rescaled away: no step in speed at its edge, full
    deflection still 1."""
    return np.sign(raw) * np.clip((np.abs(raw) - deadzone) / (1.0 - deadzone), 0.0, 1.0)


class VelocityIntegrator:
    """Integrates a velocity into a target and builds the chunk that moves there.

    The target never leads the measured position by more than `max_lead` (a robot blocked
    by a wall or an object does not wind up a far target that it would jump to later) and
    is clipped to [low, high]. `velocity=None` means hold: the target snaps to the
    measured position.
    """

    def __init__(self, low: np.ndarray, high: np.ndarray, max_lead: float = 30.0) -> None:
        self.low = np.asarray(low, dtype=np.float64)
        self.high = np.asarray(high, dtype=np.float64)
        if self.low.shape != self.high.shape or (self.low > self.high).any():
            raise ValueError(f"bad limits low={self.low} high={self.high}")
        if max_lead <= 0:
            raise ValueError(f"max_lead must be positive, got {max_lead}")
        self.max_lead = max_lead
        self.target: np.ndarray | None = None

    def step(self, velocity: np.ndarray | None, measured: np.ndarray, dt: float) -> np.ndarray:
        """Advance the target by velocity * dt from where it was; return it."""
        measured = np.asarray(measured, dtype=np.float64)
        if velocity is None or self.target is None:
            self.target = np.clip(measured, self.low, self.high)
            if velocity is None:
                return self.target.copy()
        target = self.target + np.asarray(velocity, dtype=np.float64) * dt
        lead = target - measured
        norm = float(np.linalg.norm(lead))
        if norm > self.max_lead:
            target = measured + lead * (self.max_lead / norm)
        self.target = np.clip(target, self.low, self.high)
        return self.target.copy()

    def release(self) -> None:
        """Forget the target: the next step starts from the measured position."""
        self.target = None

    def chunk(self, velocity: np.ndarray | None, points: int, period: float) -> tuple[np.ndarray, np.ndarray]:
        """Positions (points, J) and times_from_start (points,) continuing from the current target:
        the robot keeps moving smoothly if the next chunk is late, and stops at the horizon."""
        if self.target is None:
            raise RuntimeError("call step() first")
        if points < 1 or period <= 0:
            raise ValueError("need points >= 1 and period > 0")
        times = period * np.arange(1, points + 1)
        rate = np.zeros_like(self.target) if velocity is None else np.asarray(velocity, dtype=np.float64)
        positions = np.clip(self.target + rate[None, :] * (times - period)[:, None], self.low, self.high)
        return positions, times


def limit_lead(target: np.ndarray, measured: np.ndarray, max_lead: float) -> np.ndarray:
    """`target` moved toward `measured` until at most `max_lead` away (keeps a far target within the
    safety gate's velocity limit over one control period instead of having the chunk held)."""
    target = np.asarray(target, dtype=np.float64)
    measured = np.asarray(measured, dtype=np.float64)
    lead = target - measured
    norm = float(np.linalg.norm(lead))
    return measured + lead * (max_lead / norm) if norm > max_lead else target


def hold_chunk(target: np.ndarray, points: int, period: float) -> tuple[np.ndarray, np.ndarray]:
    """A chunk that goes to `target` by the first point and stays there (for position sources)."""
    if points < 1 or period <= 0:
        raise ValueError("need points >= 1 and period > 0")
    target = np.asarray(target, dtype=np.float64)
    return np.repeat(target[None, :], points, axis=0), period * np.arange(1, points + 1)


class PlaySource:
    """Random "play" for action-free data: `RandomWalkPolicy`, seeded, fed with positions only."""

    def __init__(self, seed: int = 0) -> None:
        from rla_wm.envs.pusht.dataset import RandomWalkPolicy

        self.walker = RandomWalkPolicy()
        self.rng = np.random.default_rng(seed)
        self._started = False

    def reset(self, position: np.ndarray) -> None:
        self.walker.reset(SimpleNamespace(position=np.asarray(position, dtype=np.float64)))  # type: ignore[arg-type]
        self._started = True

    def __call__(self, position: np.ndarray) -> np.ndarray:
        if not self._started:
            self.reset(position)
        # The walk only reads the position of the frame it starts from.
        frame = SimpleNamespace(position=position)
        return np.asarray(self.walker(frame, self.rng), dtype=np.float64)  # type: ignore[arg-type]


class JointRandomWalk:
    """Random "play" for an arm's action-free data: seeded, in joint space, within the joint limits.

    The target walks at `speed` (units per second, every joint) toward a waypoint drawn uniformly
    inside the limits less `margin` of each joint's range at either end (the ends of a range are
    where an arm folds into itself); on reaching it the next waypoint is drawn. Straight strokes
    between random poses sweep the arm (and what it touches) across its workspace. Each call is one
    tick of `period` seconds; `reset` starts from a measured position.
    """

    def __init__(
        self,
        low: np.ndarray,
        high: np.ndarray,
        seed: int | Sequence[int] = 0,
        speed: float = 1.0,
        period: float = 0.1,
        margin: float = 0.15,
    ) -> None:
        self.low = np.asarray(low, dtype=np.float64)
        self.high = np.asarray(high, dtype=np.float64)
        if self.low.shape != self.high.shape or self.low.ndim != 1 or not self.low.size:
            raise ValueError(f"limits must be two vectors of one length, got {self.low} and {self.high}")
        if not (np.isfinite(self.low).all() and np.isfinite(self.high).all() and (self.low < self.high).all()):
            raise ValueError(f"joint play needs finite limits with low < high, got {self.low} and {self.high}")
        if speed <= 0 or period <= 0 or not 0.0 <= margin < 0.5:
            raise ValueError(f"need speed > 0, period > 0 and 0 <= margin < 0.5, got {speed}, {period}, {margin}")
        span = self.high - self.low
        self.inner_low, self.inner_high = self.low + margin * span, self.high - margin * span
        self.step = speed * period
        self.rng = np.random.default_rng(seed)
        self.target: np.ndarray | None = None
        self.waypoint: np.ndarray | None = None

    def _draw(self) -> np.ndarray:
        return self.rng.uniform(self.inner_low, self.inner_high)

    def reset(self, position: np.ndarray) -> None:
        """Start a stroke from the measured `position` (clipped into the limits)."""
        self.target = np.clip(np.asarray(position, dtype=np.float64), self.low, self.high)
        self.waypoint = self._draw()

    def __call__(self, position: np.ndarray) -> np.ndarray:
        """The next target (within the limits, at most `speed * period` per joint from the last one)."""
        if self.target is None or self.waypoint is None:
            self.reset(position)
        assert self.target is not None and self.waypoint is not None
        move = np.clip(self.waypoint - self.target, -self.step, self.step)
        self.target = np.clip(self.target + move, self.low, self.high)
        if np.allclose(self.target, self.waypoint, rtol=0.0, atol=1e-9):
            self.waypoint = self._draw()
        return self.target.copy()
