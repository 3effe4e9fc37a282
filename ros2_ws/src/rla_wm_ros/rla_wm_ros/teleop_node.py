"""Teleoperation / scripted data source: publishes short JointTrajectory chunks on `teleop/joint_trajectory`.

Sources (parameter `source`):
- keyboard: raw terminal on stdin (WASD / arrow keys, +/- speed, space = hold, q = quit);
  refuses to start when stdin is not a terminal (e.g. under a launch file).
- joy: sensor_msgs/Joy on `joy` (gamepad axes -> velocity while the deadman button is held).
- expert: the scripted Push-T expert (`rla_wm.envs.pusht.expert`) on the privileged `sim/object_pose`
  (+ `sim/goal_pose`), acting once per simulator step.
- play: seeded random play (`rla_wm.envs.pusht.dataset.RandomWalkPolicy`).

Commands go to the robot only through the safety gate (the launch file routes this topic
into it). The input mapping lives in `rla_wm.control.teleop`; this node only moves messages.
Every callback is guarded (`rla_wm_ros.node_guard`): a malformed or non-finite joint state or
pose is a counted rejection on /diagnostics, and no exception ends the node.
"""

from __future__ import annotations

import collections
import sys
import threading
import time

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.time import Time as RosTime
from sensor_msgs.msg import JointState, Joy
from trajectory_msgs.msg import JointTrajectory

from rla_wm.control.limits import load_limits
from rla_wm.control.teleop import (
    JoyMapping,
    KeyboardTeleop,
    PlaySource,
    VelocityIntegrator,
    hold_chunk,
    limit_lead,
    parse_keys,
)
from rla_wm.envs.pusht.sim import GOAL_POSE, JOINT_NAMES
from rla_wm_msgs.msg import EpisodeStatus
from rla_wm_ros.conversions import Chunk, MessageShapeError, chunk_to_msg, joint_positions, stamp_to_nanoseconds
from rla_wm_ros.node_guard import Health, NodeGuard, Rejected
from rla_wm_ros.params import declare
from rla_wm_ros.qos import LATCHED

SOURCES = ("keyboard", "joy", "expert", "play")
# Chunk points fall this long before the control ticks. Under sim time a chunk can arrive exactly
# on the tick its first point is due; with float seconds at epoch scale (~2e-7 s resolution) that
# point would come out randomly "just ahead" (an impossible speed: the gate holds) or past. A
# margin makes it unambiguously past, and the next point (same or continued target) takes over.
TICK_MARGIN = 1e-4
KEY_HELP = (
    "teleop keys: w/a/s/d or arrows = move, + / - = speed, space = hold, q = quit "
    "(a key moves the robot while it is held down)"
)


def remember(table: collections.OrderedDict, stamp: int, value: np.ndarray, size: int = 10) -> None:
    """Keep the newest `size` samples by stamp (arrival order is stamp order per topic)."""
    table[stamp] = value
    while len(table) > size:
        table.popitem(last=False)


def yaw_of(msg: PoseStamped) -> float:
    q = msg.pose.orientation
    return float(np.arctan2(2.0 * (q.w * q.z + q.x * q.y), 1.0 - 2.0 * (q.y * q.y + q.z * q.z)))


def planar_pose(msg: PoseStamped) -> np.ndarray:
    """(x, y, yaw) of a pose; Rejected if any of it is NaN or inf."""
    pose = np.array([msg.pose.position.x, msg.pose.position.y, yaw_of(msg)])
    if not np.isfinite(pose).all():
        raise Rejected("non_finite_pose", f"pose (x, y, yaw) {pose.tolist()}")
    return pose


class TeleopNode(Node):
    def __init__(self) -> None:
        super().__init__("teleop")
        self.source = declare(self, "source", "keyboard", f"Command source: one of {', '.join(SOURCES)}.")
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        self.joint_names = tuple(declare(self, "joint_names", list(JOINT_NAMES), "Joints commanded.", param_type=list))
        limits_file = declare(
            self,
            "limits_file",
            "",
            "Joint limits YAML (the gate's); targets stay inside. Empty = no clamping here (the gate still vets).",
        )
        robot_description = declare(
            self, "robot_description", "", "URDF XML; joint limits are read from it (limits_file still gives max_step)"
        )
        rate = declare(
            self, "rate", 10.0, "Command rate (Hz) of keyboard, joy and play, on the node clock.", (1.0, 200.0)
        )
        self.points = declare(self, "horizon_points", 3, "Points per chunk (a late chunk is still valid).", (1, 50))
        self.period = declare(self, "point_period", 0.1, "Seconds between chunk points.", (0.01, 1.0))
        self.max_lead = declare(
            self, "max_lead", 40.0, "Max distance of a target from the measured position.", (1.0, 1000.0)
        )
        self.state_timeout = declare(
            self, "state_timeout", 0.5, "No commands if joint states are older (s, steady).", (0.01, 60.0)
        )

        low, high = np.full(len(self.joint_names), -np.inf), np.full(len(self.joint_names), np.inf)
        if limits_file or robot_description:
            limits, _ = load_limits(limits_file, robot_description)
            unlimited = [name for name in self.joint_names if name not in limits.names]
            if unlimited:
                raise ValueError(f"joint_names {unlimited} have no limits (limited joints: {list(limits.names)})")
            order = [limits.names.index(name) for name in self.joint_names]
            low, high = limits.lower[order], limits.upper[order]
        self.integrator = VelocityIntegrator(low, high, self.max_lead)
        self.low, self.high = low, high

        self.position: np.ndarray | None = None
        # Recent joint states by stamp (ns), for pairing with the object pose of the same sim step.
        self.recent_states: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self.state_seen = -np.inf  # steady time of the last joint state
        self.episode: int | None = None
        self.last_tick_ns: int | None = None
        self.commands_published = 0
        self.guard = NodeGuard(self, "teleoperation", health=self.health)
        guard = self.guard.wrap
        self.command_pub = self.create_publisher(JointTrajectory, "teleop/joint_trajectory", 10)
        self.create_subscription(JointState, "joint_states", guard(self.on_state), 10)
        self.create_subscription(EpisodeStatus, "episode_status", guard(self.on_status), 10)
        self.lock = threading.Lock()  # the keyboard thread vs. the executor

        # Every source's parameters are declared whatever the source, so all are listed and range-checked.
        self.keyboard = KeyboardTeleop(
            speed=declare(self, "speed", 100.0, "Initial keyboard speed (units/s).", (1.0, 5000.0)),
            speed_factor=declare(self, "speed_factor", 1.25, "+/- multiply / divide the speed by this.", (1.01, 10.0)),
            max_speed=declare(self, "max_speed", 400.0, "Highest keyboard speed (units/s).", (1.0, 5000.0)),
            key_timeout=declare(
                self, "key_timeout", 0.3, "A key moves the robot this long after its last repeat (s).", (0.05, 5.0)
            ),
        )
        self.joy = JoyMapping(
            axis_x=declare(self, "axis_x", 0, "Joy axis for +x.", (0, 63)),
            axis_y=declare(self, "axis_y", 1, "Joy axis for +y.", (0, 63)),
            invert_x=declare(self, "invert_x", True, "Negate axis_x (joy_node: stick left = +1)."),
            invert_y=declare(self, "invert_y", True, "Negate axis_y (joy_node: stick up = +1; image +y is down)."),
            deadzone=declare(self, "deadzone", 0.1, "Axis deadzone.", (0.0, 0.95)),
            max_speed=declare(self, "joy_max_speed", 150.0, "Speed at full deflection (units/s).", (1.0, 5000.0)),
            deadman_button=declare(self, "deadman_button", 4, "Button that must be held (-1 = none).", (-1, 63)),
        )
        self.joy_timeout = declare(
            self, "joy_timeout", 0.5, "Hold if no Joy message for this long (s, steady).", (0.01, 10.0)
        )
        self.sync_tolerance = declare(
            self,
            "sync_tolerance",
            0.01,
            "Expert: act when object pose and joint state stamps agree this closely (s).",
            (0.0, 1.0),
        )
        play_seed = declare(self, "seed", 0, "Seed of the random play.", (0, 2**31 - 1))

        if self.source == "keyboard":
            self.setup_keyboard()
        elif self.source == "joy":
            self.last_joy: Joy | None = None
            self.joy_seen = -np.inf
            self.create_subscription(Joy, "joy", guard(self.on_joy), 10)
        elif self.source == "expert":
            from rla_wm.envs.pusht.expert import PushTExpert

            self.expert = PushTExpert(max_lead=self.max_lead)
            self.goal = np.asarray(GOAL_POSE, dtype=np.float64)  # gym-pusht's fixed goal until one is published
            self.recent_poses: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
            self.acted_stamp = -1
            self.create_subscription(PoseStamped, "sim/object_pose", guard(self.on_pose), 10)
            self.create_subscription(PoseStamped, "sim/goal_pose", guard(self.on_goal), LATCHED)
        else:
            self.play = PlaySource(play_seed)
            self.play_reset = True
        if self.source != "expert":
            self.create_timer(1.0 / rate, guard(self.on_tick))
        self.get_logger().info(
            f"teleop source {self.source!r}: {self.points} points every {self.period} s on "
            f"{self.command_pub.topic_name}"
        )

    # ------------------------------------------------------------------ inputs

    def health(self) -> Health:
        fresh = self.state_fresh()
        return Health(
            f"source {self.source}" + ("" if fresh else ": no fresh joint state, not commanding"),
            values={"source": self.source, "state_fresh": fresh, "commands_published": self.commands_published},
        )

    def on_state(self, msg: JointState) -> None:
        try:
            position = joint_positions(msg, self.joint_names)
        except MessageShapeError as err:
            raise Rejected("malformed_joint_state", str(err)) from err
        with self.lock:
            self.position = position
            remember(self.recent_states, stamp_to_nanoseconds(msg.header.stamp), position)
            self.state_seen = time.monotonic()
        if self.source == "expert":
            self.act_expert()

    def on_status(self, msg: EpisodeStatus) -> None:
        if msg.episode == self.episode:
            return
        self.episode = msg.episode
        # A new episode: the sim moved the robot and the block.
        if self.source == "expert":
            self.expert.reset()
        elif self.source == "play":
            self.play_reset = True

    def on_joy(self, msg: Joy) -> None:
        self.last_joy = msg
        self.joy_seen = time.monotonic()

    def on_pose(self, msg: PoseStamped) -> None:
        remember(self.recent_poses, stamp_to_nanoseconds(msg.header.stamp), planar_pose(msg))
        self.act_expert()

    def on_goal(self, msg: PoseStamped) -> None:
        self.goal = planar_pose(msg)

    # ------------------------------------------------------------------ sources

    def state_fresh(self) -> bool:
        return self.position is not None and time.monotonic() - self.state_seen <= self.state_timeout

    def act_expert(self) -> None:
        """Once per simulator step, on the newest step whose object pose and joint state are both in.

        Pairing by stamp (not "latest of each") keeps a late joint state from being paired with the
        next step's pose; acting only on the newest pair skips steps the node fell behind on.
        """
        if not self.recent_poses or not self.state_fresh():
            return
        tolerance = self.sync_tolerance * 1e9
        for stamp in reversed(self.recent_poses):
            if stamp <= self.acted_stamp:
                return
            state_stamps = [s for s in self.recent_states if abs(s - stamp) <= tolerance]
            if state_stamps:
                break
        else:
            return
        position = self.recent_states[min(state_stamps, key=lambda s: abs(s - stamp))]
        self.acted_stamp = stamp
        target = self.expert.act(position, self.recent_poses[stamp], self.goal)
        positions, times = hold_chunk(np.clip(target, self.low, self.high), self.points, self.period)
        # Stamped with the observation it answers, like the policy's chunks.
        self.publish(positions, times, stamp)

    def on_tick(self) -> None:
        now = self.get_clock().now().nanoseconds
        dt = self.period if self.last_tick_ns is None else (now - self.last_tick_ns) * 1e-9
        self.last_tick_ns = now
        dt = float(np.clip(dt, 0.0, 3.0 * self.period))  # a stalled clock must not turn into a jump
        with self.lock:
            if not self.state_fresh():
                return
            position = self.position.copy()
            if self.source == "play":
                if self.play_reset:
                    self.play.reset(position)
                    self.play_reset = False
                target = np.clip(limit_lead(self.play(position), position, self.max_lead), self.low, self.high)
                positions, times = hold_chunk(target, self.points, self.period)
            else:
                velocity = self.keyboard.velocity() if self.source == "keyboard" else self.joy_velocity()
                self.integrator.step(velocity, position, dt)
                positions, times = self.integrator.chunk(velocity, self.points, self.period)
        self.publish(positions, times, now)

    def joy_velocity(self) -> np.ndarray | None:
        if self.last_joy is None or time.monotonic() - self.joy_seen > self.joy_timeout:
            return None  # no gamepad (or it went quiet): hold
        return self.joy.velocity(self.last_joy.axes, self.last_joy.buttons)

    def publish(self, positions: np.ndarray, times: np.ndarray, stamp_ns: int) -> None:
        stamp = RosTime(nanoseconds=stamp_ns).to_msg()
        self.command_pub.publish(chunk_to_msg(Chunk(self.joint_names, positions, times - TICK_MARGIN, stamp)))
        self.commands_published += 1

    # ------------------------------------------------------------------ keyboard

    def setup_keyboard(self) -> None:
        if not sys.stdin.isatty():
            message = (
                "source 'keyboard' needs an interactive terminal on stdin (it is not a TTY here, e.g. under a "
                "launch file): run `ros2 run rla_wm_ros teleop --ros-args -p source:=keyboard` in a terminal, "
                "or use source 'joy'"
            )
            self.get_logger().fatal(message)
            raise SystemExit(f"teleop: {message}")
        import termios
        import tty

        self.stdin_fd = sys.stdin.fileno()
        self.terminal_settings = termios.tcgetattr(self.stdin_fd)
        tty.setcbreak(self.stdin_fd)  # keys arrive one by one, unechoed; Ctrl-C still interrupts
        print(KEY_HELP, file=sys.stderr, flush=True)
        threading.Thread(target=self.read_keys, daemon=True).start()

    def read_keys(self) -> None:
        import os
        import select

        while rclpy.ok():
            ready, _, _ = select.select([self.stdin_fd], [], [], 0.1)
            if not ready:
                continue
            data = os.read(self.stdin_fd, 64)
            if not data:
                break  # end of input
            with self.lock:
                for key in parse_keys(data):
                    self.keyboard.press(key)
                quit_now = self.keyboard.quit
            if quit_now:
                self.get_logger().info("quit key: stopping teleop")
                rclpy.try_shutdown()
                return

    def destroy_node(self) -> None:
        if getattr(self, "terminal_settings", None) is not None:
            import termios

            termios.tcsetattr(self.stdin_fd, termios.TCSADRAIN, self.terminal_settings)
            self.terminal_settings = None
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    from rla_wm_ros.node_main import spin_node

    # One executor thread: the callbacks are tiny, and the expert's state stays single-threaded.
    spin_node(TeleopNode, args, threads=1)


if __name__ == "__main__":
    main()
