"""Safety checks between any model output and the robot (pure Python, no ROS).

A command chunk is accepted whole or rejected whole: clamping a learned chunk changes its meaning,
so the robot holds instead and the reason is reported. What is forwarded is a copy the gate builds
from the vetted points (see `vet_trajectory`), never the model's message itself.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from rla_wm.control.joints import select_joints
from rla_wm.control.jtc import NANOSECONDS, JtcExecution, Trajectory


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
    def from_mapping(cls, joints: Mapping[str, Mapping[str, float]]) -> JointLimits:
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


@dataclass(frozen=True)
class Vetting:
    """The outcome of vetting one model trajectory: the copy to send, or why there is none."""

    verdict: Verdict
    command: Trajectory | None = None


def _finite(values: Sequence[float]) -> bool:
    return all(math.isfinite(v) for v in values)


def command_window(plan: JtcExecution, now_ns: int, delivery_margin_ns: int) -> list[np.ndarray]:
    """Where the controller's command can be when a message sent now arrives: on the gate's last
    command anywhere within one delivery margin either side of now (that command may itself have
    arrived up to a margin late). Positions at both ends and at every knot in between; the path is
    linear between them, so these bound every distance the vetting measures."""
    moments = plan.breakpoints_between(now_ns - delivery_margin_ns, now_ns + delivery_margin_ns)
    return [plan.sample(t) for t in moments]


def vet_trajectory(
    trajectory: Trajectory,
    limits: JointLimits,
    max_step: float,
    current: np.ndarray | None,
    now_ns: int,
    delivery_margin_ns: int,
    plan: JtcExecution | None = None,
    max_stamp_lead_ns: int = NANOSECONDS,
) -> Vetting:
    """Vet every field of every point of `trajectory` and build the message the controller gets.

    The output is a new trajectory the gate builds: the limited joints in `limits.names` order,
    positions only (velocities, accelerations and effort are dropped, so the controller interpolates
    linearly between vetted points), a zero stamp (the controller starts it on receipt, so a late
    delivery delays the chunk but never compresses it), and only the points due at least
    `delivery_margin_ns` from now, timed from now (JTC starts a zero-stamped trajectory on receipt).
    Every point of the input, past ones included, must
    be finite, inside the limits and within `max_step` of the measured state, and every segment
    between consecutive points within the velocity limits. The first executed segment must be within
    the velocity limits from the measured state and from anywhere the controller's previous command
    (`plan`, the gate's model of what it last sent) can be when the chunk arrives (`command_window`). A stamp more than
    `max_stamp_lead_ns` ahead of now is refused as a clock mismatch.
    """

    def refuse(reason: str) -> Vetting:
        return Vetting(Verdict(False, reason))

    if trajectory.stamp_ns < 0:
        return refuse(f"header stamp is negative ({trajectory.stamp_ns} ns)")
    if trajectory.stamp_ns > now_ns + max_stamp_lead_ns:
        return refuse(f"header stamp is {(trajectory.stamp_ns - now_ns) * 1e-9:.3f} s in the future (clock mismatch?)")
    names = list(trajectory.joint_names)
    if sorted(names) != sorted(limits.names) or len(set(names)) != len(names):
        return refuse(f"joint names {names} differ from the limited joints {list(limits.names)}")
    if not trajectory.points:
        return refuse("the trajectory has no points")
    if current is None or not np.isfinite(current).all():
        return refuse("no measured joint state")
    joints = len(names)
    previous_ns = None
    for index, point in enumerate(trajectory.points):
        if len(point.positions) != joints:
            return refuse(f"point {index} has {len(point.positions)} positions for {joints} joints")
        for label in ("velocities", "accelerations", "effort"):
            values = getattr(point, label)
            if len(values) not in (0, joints):
                return refuse(f"point {index} has {len(values)} {label} for {joints} joints")
            if not _finite(values):
                return refuse(f"point {index} {label} contain NaN or inf")
        if not _finite(point.positions):
            return refuse(f"point {index} positions contain NaN or inf")
        if point.time_from_start_ns < 0:
            return refuse(f"point {index} has a negative time_from_start")
        if previous_ns is not None and point.time_from_start_ns <= previous_ns:
            return refuse(f"time_from_start is not strictly increasing at point {index}")
        previous_ns = point.time_from_start_ns
    order = [names.index(name) for name in limits.names]
    positions = trajectory.positions()[:, order]
    for index, point in enumerate(trajectory.points):
        if point.velocities and (np.abs(np.asarray(point.velocities)[order]) > limits.max_velocity).any():
            return refuse(f"point {index} velocities exceed the velocity limits")
    outside = (positions < limits.lower) | (positions > limits.upper)
    if outside.any():
        point, joint = np.argwhere(outside)[0]
        return refuse(
            f"point {point} joint {limits.names[joint]}={positions[point, joint]:.4g} outside "
            f"[{limits.lower[joint]:.4g}, {limits.upper[joint]:.4g}]"
        )
    offsets = np.abs(positions - current)
    if (offsets > max_step).any():
        point, joint = np.argwhere(offsets > max_step)[0]
        return refuse(
            f"point {point} joint {limits.names[joint]} is {offsets[point, joint]:.4g} from the current state "
            f"(max_step {max_step:.4g})"
        )
    times_ns = trajectory.times_ns()
    if len(times_ns) > 1:
        speeds = np.abs(np.diff(positions, axis=0)) / (np.diff(times_ns) * 1e-9)[:, None]
        if (speeds > limits.max_velocity).any():
            point, joint = np.argwhere(speeds > limits.max_velocity)[0]
            return refuse(
                f"segment from point {point} to {point + 1} joint {limits.names[joint]} moves at "
                f"{speeds[point, joint]:.4g}/s (max {limits.max_velocity[joint]:.4g}/s)"
            )
    start_ns = trajectory.stamp_ns if trajectory.stamp_ns != 0 else now_ns
    until_ns = start_ns + times_ns - now_ns
    ahead = until_ns >= delivery_margin_ns
    if not ahead.any():
        return refuse("every point is due before it could reach the controller (in the past)")
    first = int(np.argmax(ahead))
    # Where the controller may be when the chunk arrives: the measured state, or anywhere along its
    # current command during the delivery margin (checked at the ends and every knot in between).
    starts = [current]
    if plan is not None:
        starts += command_window(plan, now_ns, delivery_margin_ns)
    allowed = limits.max_velocity * (until_ns[first] * 1e-9)
    for start in starts:
        move = np.abs(positions[first] - start)
        if (move > allowed).any():
            joint = int(np.argmax(move - allowed))
            return refuse(
                f"first executed point is due in {until_ns[first] * 1e-9:.3f} s but joint {limits.names[joint]} "
                f"is {move[joint]:.4g} away (max {limits.max_velocity[joint]:.4g}/s)"
            )
    command = Trajectory.from_arrays(limits.names, positions[ahead], until_ns[ahead], stamp_ns=0)
    return Vetting(Verdict(True), command)


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
    """What the gate does: send `command` (a vetted copy of the model's chunk, or a hold) or nothing."""

    forward: bool
    command: Trajectory | None = None
    reason: str = ""

    @property
    def hold(self) -> bool:
        return self.command is not None and not self.forward


class SafetyGate:
    """Every model command passes here on its way to the robot.

    A chunk is forwarded only if the e-stop is released, camera, joint state and model output are
    all fresh, and `vet_trajectory` accepts every field of it; what is sent is the gate's own vetted
    copy. Otherwise the robot is told to hold. A hold is a one-point trajectory, because
    joint_trajectory_controller refuses an empty one and keeps executing the previous chunk: the point
    is where the gate's last command puts the robot `delivery_margin` from now, reached in that time.

    `tracking_tolerance` (default max_step / 4) is how far the measured state may be from the gate's
    last command before the gate assumes something else moved the robot (see `tracked_plan`).

    Times: `now_ns` arguments are the ROS clock (as the message stamps); the watchdog runs on the
    steady `clock`. With `dry_run` nothing reaches the controller, so the gate's model of the
    controller's command stays empty.
    """

    def __init__(
        self,
        limits: JointLimits,
        max_step: float,
        camera_timeout: float,
        state_timeout: float,
        command_timeout: float,
        delivery_margin: float = 0.02,
        dry_run: bool = False,
        tracking_tolerance: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (max_step > 0 and math.isfinite(max_step)):
            raise ValueError(f"max_step must be positive and finite, got {max_step}")
        if not (0 < delivery_margin < 1.0):
            raise ValueError(f"delivery_margin must be in (0, 1) s, got {delivery_margin}")
        self.limits = limits
        self.max_step = max_step
        self.delivery_margin_ns = int(round(delivery_margin * NANOSECONDS))
        self.tracking_tolerance = max_step / 4 if tracking_tolerance is None else tracking_tolerance
        if not (self.tracking_tolerance > 0 and math.isfinite(self.tracking_tolerance)):
            raise ValueError(f"tracking_tolerance must be positive and finite, got {tracking_tolerance}")
        self.dry_run = dry_run
        self.watchdog = Watchdog({CAMERA: camera_timeout, STATE: state_timeout, MODEL: command_timeout}, clock)
        self.estop = EStop()
        self.current: np.ndarray | None = None
        self.plan: JtcExecution | None = None  # the controller's command as the gate last set it
        self.held = True
        self.hold_reason = "waiting for inputs"
        self.forwarded = 0
        self.rejected = 0

    def on_camera(self, age: float = 0.0) -> None:
        self.watchdog.feed(CAMERA, age)

    def on_state(self, names: Sequence[str], positions: Sequence[float], age: float = 0.0) -> None:
        """Record the measured joint positions (ignored, so they go stale, if ragged, incomplete or non-finite)."""
        try:
            self.current = select_joints(names, positions, self.limits.names)
        except (ValueError, TypeError):
            return
        self.watchdog.feed(STATE, age)

    def tracked_plan(self, now_ns: int) -> JtcExecution | None:
        """The gate's model of the controller's command, while the robot follows it. A measured state
        further than `tracking_tolerance` from where that command was when the state was measured means
        something else moved the robot (a reset, another controller, a hand): the model is dropped and
        the measured state stands in, so a hold never pulls the robot back toward an old command."""
        if self.plan is not None and self.current is not None:
            age = self.watchdog.age(STATE)
            measured_ns = now_ns - int(age * NANOSECONDS) if math.isfinite(age) else now_ns
            if (np.abs(self.plan.sample(measured_ns) - self.current) > self.tracking_tolerance).any():
                self.plan = None
        return self.plan

    def commanded(self, now_ns: int) -> np.ndarray | None:
        """Where the controller's command is at `now_ns`: the gate's last output, else the measured state."""
        plan = self.tracked_plan(now_ns)
        if plan is not None:
            return plan.sample(now_ns)
        return None if self.current is None else self.current.copy()

    def review(self, trajectory: Trajectory, now_ns: int) -> Decision:
        """Decide on one model trajectory received at `now_ns`."""
        self.watchdog.feed(MODEL)
        if self.estop.engaged:
            return self.reject(f"e-stop engaged: {self.estop.reason}", now_ns)
        stale = [name for name in self.watchdog.stale() if name != MODEL]
        if stale:
            return self.reject(f"stale inputs: {', '.join(stale)}", now_ns)
        vetting = vet_trajectory(
            trajectory,
            self.limits,
            self.max_step,
            self.current,
            now_ns,
            self.delivery_margin_ns,
            self.tracked_plan(now_ns),
        )
        if not vetting.verdict.ok or vetting.command is None:
            return self.reject(vetting.verdict.reason, now_ns)
        self._sent(vetting.command, now_ns)
        self.held = False
        self.hold_reason = ""
        self.forwarded += 1
        return Decision(forward=True, command=vetting.command)

    def tick(self, now_ns: int) -> Decision:
        """Periodic check: hold once when an input goes stale or the e-stop engages."""
        if self.estop.engaged:
            reason = f"e-stop engaged: {self.estop.reason}"
        else:
            stale = self.watchdog.stale()
            reason = f"stale inputs: {', '.join(stale)}" if stale else ""
        if not reason:
            return Decision(forward=False)
        return self._hold(reason, now_ns)

    def trigger_estop(self, reason: str, now_ns: int) -> Decision:
        self.estop.trigger(reason)
        return self._hold(f"e-stop engaged: {self.estop.reason}", now_ns, force=True)

    def reset_estop(self) -> None:
        self.estop.reset()

    def reject(self, reason: str, now_ns: int) -> Decision:
        self.rejected += 1
        return self._hold(reason, now_ns, force=True)

    def hold_command(self, now_ns: int) -> Trajectory | None:
        """Stop where the current command will be one delivery margin from now, reached two margins
        after receipt: from anywhere in `command_window` that is no faster than the command itself.
        None when the gate knows no position (it has sent nothing and never had a measured state)."""
        target = self.commanded(now_ns + self.delivery_margin_ns)
        if target is None:
            return None
        return Trajectory.from_arrays(self.limits.names, target[None, :], [2 * self.delivery_margin_ns], stamp_ns=0)

    def _sent(self, command: Trajectory, now_ns: int) -> None:
        if self.dry_run:
            return
        start = self.commanded(now_ns)
        # Only vetted commands are sent, and vetting refuses any without a measured state; with one,
        # `commanded` is never None.
        assert start is not None, "a command was sent with no known joint position"
        self.plan = JtcExecution(command, self.limits.names, now_ns, start)

    def _hold(self, reason: str, now_ns: int, force: bool = False) -> Decision:
        # A rejected command is answered with a hold every time, so a robot still executing an older
        # chunk stops; a stale input holds only on the transition.
        send = force or not self.held
        self.held = True
        self.hold_reason = reason
        command = self.hold_command(now_ns) if send else None
        if command is not None:
            self._sent(command, now_ns)
        return Decision(forward=False, command=command, reason=reason)
