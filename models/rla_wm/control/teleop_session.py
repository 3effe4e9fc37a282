"""The teleop node's work between messages, without ROS.

`TeleopSettings` are the node's parameters (one per field). `TeleopSession` turns the inputs of
one source into short trajectory chunks:

- keyboard and joy: a velocity (`rla_wm.control.teleop`) integrated into a target on each
  control tick; the gamepad holds when its messages stop for `joy_timeout`. On an arm (joints other
  than Push-T's) the velocity is over `space`'s axes (`rla_wm.control.arm_teleop`): every joint,
  or the tool point in Cartesian space through the arm's IK (`kinematics`), plus the gripper;
- play: seeded random play, a target per tick: Push-T's random walk of the agent when the joints
  are Push-T's (agent_x, agent_y), otherwise a random joint-space walk of an arm within its joint
  limits (`JointRandomWalk`, at `play_joint_speed`);
- expert: the scripted Push-T expert, once per simulator step (`rla_wm.control.expert_source`).

No chunk is made without a joint state received within `state_timeout` (steady clock). Targets
stay inside the joint limits and within `max_lead` of the measured position.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from rla_wm.control.arm_teleop import KINEMATICS, SPACES, ArmJoyMapping, ArmKeyboard, ArmTeleop
from rla_wm.control.expert_source import ExpertSource
from rla_wm.control.freshness import LatestSample
from rla_wm.control.limits import load_limits
from rla_wm.control.settings import setting
from rla_wm.control.teleop import (
    JointRandomWalk,
    JoyMapping,
    KeyboardTeleop,
    PlaySource,
    VelocityIntegrator,
    hold_chunk,
    limit_lead,
)
from rla_wm.envs.pusht.sim import JOINT_NAMES

SOURCES = ("keyboard", "joy", "expert", "play")
# Chunk points fall this long before the control ticks. Under sim time a chunk can arrive exactly
# on the tick its first point is due; with float seconds at epoch scale (~2e-7 s resolution) that
# point would come out randomly "just ahead" (an impossible speed: the gate holds) or past. A
# margin makes it unambiguously past, and the next point (same or continued target) takes over.
TICK_MARGIN = 1e-4


@dataclass(frozen=True)
class TeleopSettings:
    """Everything a teleop source is configured with: the teleop node declares one parameter per field.

    Every source's settings exist whatever the source, so all are listed and range-checked.
    """

    source: str = setting("keyboard", f"Command source: one of {', '.join(SOURCES)}.")
    joint_names: Sequence[str] = setting(JOINT_NAMES, "Joints commanded.")
    limits_file: str = setting(
        "", "Joint limits YAML (the gate's); targets stay inside. Empty = no clamping here (the gate still vets)."
    )
    robot_description: str = setting("", "URDF XML; joint limits are read from it (limits_file still gives max_step)")
    urdf_file: str = setting(
        "", "URDF path or package://PACKAGE/PATH; joint limits are read from it, as the gate's urdf_file"
    )
    rate: float = setting(10.0, "Command rate (Hz) of keyboard, joy and play, on the node clock.", (1.0, 200.0))
    horizon_points: int = setting(3, "Points per chunk (a late chunk is still valid).", (1, 50))
    point_period: float = setting(0.1, "Seconds between chunk points.", (0.01, 1.0))
    max_lead: float = setting(40.0, "Max distance of a target from the measured position.", (0.001, 1000.0))
    state_timeout: float = setting(0.5, "No commands if joint states are older (s, steady).", (0.01, 60.0))
    # -- keyboard ----------------------------------------------------------------------------------
    speed: float = setting(
        100.0, "Initial keyboard speed (units/s; an arm: rad/s in joint space, m/s in Cartesian).", (0.001, 5000.0)
    )
    speed_factor: float = setting(1.25, "+/- multiply / divide the speed by this.", (1.01, 10.0))
    max_speed: float = setting(400.0, "Highest keyboard speed (units/s).", (0.001, 5000.0))
    key_timeout: float = setting(0.3, "A key moves the robot this long after its last repeat (s).", (0.05, 5.0))
    # -- joy ---------------------------------------------------------------------------------------
    axis_x: int = setting(0, "Joy axis for +x.", (0, 63))
    axis_y: int = setting(1, "Joy axis for +y.", (0, 63))
    invert_x: bool = setting(True, "Negate axis_x (joy_node: stick left = +1).")
    invert_y: bool = setting(True, "Negate axis_y (joy_node: stick up = +1; image +y is down).")
    deadzone: float = setting(0.1, "Axis deadzone.", (0.0, 0.95))
    joy_max_speed: float = setting(150.0, "Speed at full deflection (units/s).", (1.0, 5000.0))
    deadman_button: int = setting(4, "Button that must be held (-1 = none).", (-1, 63))
    joy_timeout: float = setting(0.5, "Hold if no Joy message for this long (s, steady).", (0.01, 10.0))
    # -- an arm's keyboard and joy (joint_names other than Push-T's agent_x, agent_y) ----------------
    space: str = setting(
        "joint", "Arm teleop space: joint (each joint an axis) or cartesian (the tool point through IK)."
    )
    kinematics: str = setting("so101", f"IK model of the arm for space cartesian: one of {', '.join(KINEMATICS)}.")
    gripper_joint: str = setting("", "The gripper among joint_names (o/c keys, joy buttons); empty: no gripper.")
    gripper_speed: float = setting(1.0, "Gripper speed while its key or button is held (units/s).", (0.001, 100.0))
    cartesian_max_lead: float = setting(
        0.03, "Cartesian: max distance of the tool target from the measured tool point (m).", (0.001, 1.0)
    )
    joy_cartesian_axes: Sequence[int] = setting(
        (1, 0, 4), "Cartesian joy: axis indices driving tool x (forward), y (left), z (up); -1: none."
    )
    joy_cartesian_scales: Sequence[float] = setting(
        (0.05, 0.05, 0.05), "Cartesian joy: m/s at full deflection per axis (negative inverts)."
    )
    joy_joint_axes: Sequence[int] = setting(
        (0, 1, 4, 3, 6), "Joint-space joy: an axis index per joint other than the gripper, in order; -1: none."
    )
    joy_joint_scales: Sequence[float] = setting(
        (1.0, 1.0, 1.0, 1.0, 1.0), "Joint-space joy: units/s at full deflection per joint (negative inverts)."
    )
    gripper_open_button: int = setting(1, "Joy button that opens the gripper while held.", (0, 63))
    gripper_close_button: int = setting(0, "Joy button that closes the gripper while held.", (0, 63))
    # -- expert and play ---------------------------------------------------------------------------
    sync_tolerance: float = setting(
        0.01, "Expert: act when object pose and joint state stamps agree this closely (s).", (0.0, 1.0)
    )
    seed: int = setting(0, "Seed of the random play.", (0, 2**31 - 1))
    play_joint_speed: float = setting(
        1.0,
        "Play on an arm (joints other than Push-T's): speed of the joint-space random walk (units/s per joint).",
        (0.001, 1000.0),
    )

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        if self.space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {self.space!r}")
        if self.gripper_joint and self.gripper_joint not in self.joint_names:
            raise ValueError(f"gripper_joint {self.gripper_joint!r} is not one of joint_names {list(self.joint_names)}")

    @property
    def is_arm(self) -> bool:
        """Joints other than Push-T's agent (whose two joints are its own Cartesian position)."""
        return tuple(self.joint_names) != tuple(JOINT_NAMES)

    @property
    def gripper_index(self) -> int | None:
        return list(self.joint_names).index(self.gripper_joint) if self.gripper_joint else None

    def arm_keyboard(self) -> ArmKeyboard:
        return ArmKeyboard(
            self.space,
            len(self.joint_names),
            self.gripper_index,
            speed=self.speed,
            gripper_speed=self.gripper_speed,
            max_speed=self.max_speed,
            speed_factor=self.speed_factor,
            key_timeout=self.key_timeout,
        )

    def arm_joy(self) -> ArmJoyMapping:
        """The gamepad mapping of the arm's space; its axis count is checked against the joints."""
        if self.space == "cartesian":
            axes, scales = tuple(self.joy_cartesian_axes), tuple(self.joy_cartesian_scales)
            want = 3
        else:
            axes, scales = tuple(self.joy_joint_axes), tuple(self.joy_joint_scales)
            want = len(self.joint_names) - (self.gripper_index is not None)
        if len(axes) != want:
            raise ValueError(f"{self.space} joy teleop needs {want} axes (one per non-gripper axis), got {list(axes)}")
        return ArmJoyMapping(
            axes=axes,
            scales=scales,
            gripper_speed=self.gripper_speed,
            open_button=self.gripper_open_button,
            close_button=self.gripper_close_button,
            deadzone=self.deadzone,
            deadman_button=self.deadman_button,
        )

    def arm_teleop(self, low: np.ndarray, high: np.ndarray) -> ArmTeleop:
        kinematics = None
        if self.space == "cartesian":
            if self.kinematics not in KINEMATICS:
                raise ValueError(f"kinematics must be one of {list(KINEMATICS)}, got {self.kinematics!r}")
            kinematics = KINEMATICS[self.kinematics](self.joint_names)
        return ArmTeleop(
            self.space,
            low,
            high,
            self.gripper_index,
            self.cartesian_max_lead if kinematics else self.max_lead,
            kinematics=kinematics,
            gripper_max_lead=self.max_lead,
        )

    def joint_limits(self) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) of `joint_names` from limits_file / robot_description (the gate's limits);
        unbounded without either (the gate still vets every command)."""
        if not (self.limits_file or self.robot_description or self.urdf_file):
            return np.full(len(self.joint_names), -np.inf), np.full(len(self.joint_names), np.inf)
        limits, _ = load_limits(self.limits_file, self.robot_description, self.urdf_file)
        return joint_bounds(limits.names, limits.lower, limits.upper, self.joint_names)

    def keyboard(self) -> KeyboardTeleop:
        return KeyboardTeleop(
            speed=self.speed, speed_factor=self.speed_factor, max_speed=self.max_speed, key_timeout=self.key_timeout
        )

    def joy(self) -> JoyMapping:
        return JoyMapping(
            axis_x=self.axis_x,
            axis_y=self.axis_y,
            invert_x=self.invert_x,
            invert_y=self.invert_y,
            deadzone=self.deadzone,
            max_speed=self.joy_max_speed,
            deadman_button=self.deadman_button,
        )


def joint_bounds(
    limited: Sequence[str], lower: np.ndarray, upper: np.ndarray, joint_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of `joint_names`, in their order, from limits of the `limited` joints; ValueError
    if a joint has no limits."""
    unlimited = [name for name in joint_names if name not in limited]
    if unlimited:
        raise ValueError(f"joint_names {unlimited} have no limits (limited joints: {list(limited)})")
    order = [list(limited).index(name) for name in joint_names]
    return np.asarray(lower)[order], np.asarray(upper)[order]


@dataclass(frozen=True)
class TeleopChunk:
    positions: np.ndarray  # (points, joints)
    times_from_start: np.ndarray  # (points,) seconds after the stamp
    stamp_ns: int  # the control tick, or the simulator step the expert answers


class TeleopSession:
    def __init__(
        self,
        settings: TeleopSettings,
        low: np.ndarray,
        high: np.ndarray,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`low`/`high`: the joint limits in `joint_names` order (e.g. `settings.joint_limits()`)."""
        self.settings = settings
        self.low, self.high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
        self.clock = clock
        self.joy = settings.joy()
        self.integrator = VelocityIntegrator(self.low, self.high, settings.max_lead)
        # An arm's keyboard and joy sources move over its space's axes instead of Push-T's x/y.
        self.arm: ArmTeleop | None = None
        self.arm_joy: ArmJoyMapping | None = None
        # Speeds are the arm's units (m/s, rad/s) on an arm, Push-T's pixels per second otherwise.
        self.keyboard: KeyboardTeleop | ArmKeyboard = (
            settings.arm_keyboard() if settings.is_arm else settings.keyboard()
        )
        if settings.is_arm and settings.source in ("keyboard", "joy"):
            self.arm = settings.arm_teleop(self.low, self.high)
            self.arm_joy = settings.arm_joy() if settings.source == "joy" else None
        self.state: LatestSample[np.ndarray] = LatestSample(settings.state_timeout, clock)
        self.joy_input: LatestSample[tuple[Sequence[float], Sequence[int]]] = LatestSample(settings.joy_timeout, clock)
        self.expert = ExpertSource(settings.max_lead, settings.sync_tolerance) if settings.source == "expert" else None
        self.play = self._play_source(settings) if settings.source == "play" else None
        self._restart_play = True
        self._episode: int | None = None
        self._last_tick_ns: int | None = None
        self._lock = threading.Lock()  # a keyboard thread vs. the executor

    def _play_source(self, settings: TeleopSettings) -> PlaySource | JointRandomWalk:
        """Push-T's random walk for Push-T's joints; a joint-space walk within the limits for an arm."""
        if tuple(settings.joint_names) == tuple(JOINT_NAMES):
            return PlaySource(settings.seed)
        if not (np.isfinite(self.low).all() and np.isfinite(self.high).all()):
            raise ValueError(
                f"play on the joints {list(settings.joint_names)} walks within their limits: "
                "give limits_file (or robot_description)"
            )
        return JointRandomWalk(
            self.low, self.high, seed=settings.seed, speed=settings.play_joint_speed, period=1.0 / settings.rate
        )

    # -- inputs -------------------------------------------------------------------------------------
    def observe_state(self, stamp_ns: int, position: np.ndarray) -> None:
        self.state.update(position)
        if self.expert is not None:
            self.expert.add_state(stamp_ns, position)

    def state_fresh(self) -> bool:
        return self.state.fresh() is not None

    def observe_joy(self, axes: Sequence[float], buttons: Sequence[int]) -> None:
        self.joy_input.update((axes, buttons))

    def press_keys(self, keys: Sequence[str]) -> bool:
        """Key presses from the terminal; True when one of them was the quit key."""
        with self._lock:
            for key in keys:
                self.keyboard.press(key, now=self.clock())
            return self.keyboard.quit

    def new_episode(self, episode: int) -> None:
        """The episode status; a new episode number means the simulator moved the robot and the block."""
        if episode == self._episode:
            return
        self._episode = episode
        if self.expert is not None:
            self.expert.reset()
        self._restart_play = True

    def observe_pose(self, stamp_ns: int, pose: np.ndarray) -> None:
        """The block's (x, y, yaw) at a simulator step (expert)."""
        if self.expert is not None:
            self.expert.add_pose(stamp_ns, pose)

    def set_goal(self, pose: np.ndarray) -> None:
        if self.expert is not None:
            self.expert.goal = np.asarray(pose, dtype=np.float64)

    # -- chunks -------------------------------------------------------------------------------------
    def expert_chunk(self) -> TeleopChunk | None:
        """The expert's answer to the newest simulator step not answered yet, stamped with that step."""
        if self.expert is None or not self.state_fresh():
            return None
        action = self.expert.act()
        if action is None:
            return None
        stamp_ns, target = action
        return self._hold(np.clip(target, self.low, self.high), stamp_ns)

    def tick(self, now_ns: int) -> TeleopChunk | None:
        """The chunk of a control tick at `now_ns` (keyboard, joy, play); None without a fresh state."""
        period = self.settings.point_period
        dt = period if self._last_tick_ns is None else (now_ns - self._last_tick_ns) * 1e-9
        self._last_tick_ns = now_ns
        dt = float(np.clip(dt, 0.0, 3.0 * period))  # a stalled clock must not turn into a jump
        with self._lock:
            position = self.state.fresh()
            if position is None:
                return None
            position = position.copy()
            if self.play is not None:
                if self._restart_play:
                    self.play.reset(position)
                    self._restart_play = False
                target = limit_lead(self.play(position), position, self.settings.max_lead)
                return self._hold(np.clip(target, self.low, self.high), now_ns)
            if self.arm is not None:
                arm_velocity = self.keyboard.velocity(self.clock()) if self.arm_joy is None else self._arm_joy()
                positions, times = self.arm.chunk(arm_velocity, position, dt, self.settings.horizon_points, period)
                return TeleopChunk(positions, times - TICK_MARGIN, now_ns)
            velocity = self.keyboard.velocity(self.clock()) if self.settings.source == "keyboard" else self._joy()
            self.integrator.step(velocity, position, dt)
            positions, times = self.integrator.chunk(velocity, self.settings.horizon_points, period)
        return TeleopChunk(positions, times - TICK_MARGIN, now_ns)

    def _joy(self) -> np.ndarray | None:
        joy = self.joy_input.fresh()
        return None if joy is None else self.joy.velocity(*joy)  # no gamepad, or it went quiet: hold

    def _arm_joy(self) -> np.ndarray | None:
        joy = self.joy_input.fresh()
        if joy is None or self.arm_joy is None or self.arm is None:
            return None
        return self.arm_joy.velocity(*joy, gripper_axis=self.arm.gripper_axis)

    def _hold(self, target: np.ndarray, stamp_ns: int) -> TeleopChunk:
        positions, times = hold_chunk(target, self.settings.horizon_points, self.settings.point_period)
        return TeleopChunk(positions, times - TICK_MARGIN, stamp_ns)
