"""Teleoperation / scripted data source: publishes short JointTrajectory chunks on `teleop/joint_trajectory`.

Sources (parameter `source`):
- keyboard: raw terminal on stdin (WASD / arrow keys, +/- speed, space = hold, q = quit);
  refuses to start when stdin is not a terminal (e.g. under a launch file).
- joy: sensor_msgs/Joy on `joy` (gamepad axes -> velocity while the deadman button is held).
- expert: the scripted Push-T expert (`rla_wm.envs.pusht.expert`) on the privileged `sim/object_pose`
  (+ `sim/goal_pose`), acting once per simulator step.
- play: seeded random play (`rla_wm.envs.pusht.dataset.RandomWalkPolicy`; on an arm a joint-space walk).

On an arm (joint_names other than Push-T's agent_x, agent_y), keyboard and joy move it in joint
space or in Cartesian space through its IK (`space`, `kinematics`, `gripper_joint`;
`rla_wm.control.arm_teleop`, config/so101_teleop.yaml).

Commands go to the robot only through the safety gate (the launch file routes this topic
into it). What each source commands is `rla_wm.control.teleop_session`; this node only moves
messages. Every callback is guarded (`rla_wm_ros.node_guard`): a malformed or non-finite joint
state or pose is a counted rejection on /diagnostics, and no exception ends the node.
"""

from __future__ import annotations

import sys
import threading

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.time import Time as RosTime
from sensor_msgs.msg import JointState, Joy
from trajectory_msgs.msg import JointTrajectory

from rla_wm.control.arm_teleop import ARM_KEY_HELP
from rla_wm.control.expert_source import planar_pose
from rla_wm.control.settings import setting_specs
from rla_wm.control.teleop import KEY_HELP
from rla_wm.control.teleop_session import TeleopChunk, TeleopSession, TeleopSettings
from rla_wm.control.terminal_keys import QUIT, NotATerminalError, RawTerminal, pump_keys
from rla_wm_msgs.msg import EpisodeStatus
from rla_wm_ros.conversions import Chunk, chunk_to_msg, joint_positions_or_reject, stamp_to_nanoseconds
from rla_wm_ros.node_guard import Health, NodeGuard, Rejected
from rla_wm_ros.params import declare
from rla_wm_ros.qos import LATCHED


def pose_of(msg: PoseStamped) -> np.ndarray:
    """(x, y, yaw) of a pose; Rejected if any of it is NaN or inf."""
    q = msg.pose.orientation
    try:
        return planar_pose(msg.pose.position.x, msg.pose.position.y, (q.x, q.y, q.z, q.w))
    except ValueError as err:
        raise Rejected("non_finite_pose", str(err)) from err


class TeleopNode(Node):
    def __init__(self) -> None:
        super().__init__("teleop")
        self.terminal: RawTerminal | None = None  # before anything can fail: destroy_node reads it
        settings = TeleopSettings(**{spec.name: declare(self, *spec) for spec in setting_specs(TeleopSettings)})
        self.source, self.joint_names = settings.source, tuple(settings.joint_names)
        self.key_help = ARM_KEY_HELP if settings.is_arm else KEY_HELP
        self.session = TeleopSession(settings, *settings.joint_limits())
        self.commands_published = 0

        self.guard = NodeGuard(self, "teleoperation", health=self.health)
        guard = self.guard.wrap
        self.command_pub = self.create_publisher(JointTrajectory, "teleop/joint_trajectory", 10)
        self.create_subscription(JointState, "joint_states", guard(self.on_state), 10)
        self.create_subscription(EpisodeStatus, "episode_status", guard(self.on_status), 10)
        if self.source == "keyboard":
            self.setup_keyboard()
        elif self.source == "joy":
            self.create_subscription(Joy, "joy", guard(self.on_joy), 10)
        elif self.source == "expert":
            self.create_subscription(PoseStamped, "sim/object_pose", guard(self.on_pose), 10)
            self.create_subscription(PoseStamped, "sim/goal_pose", guard(self.on_goal), LATCHED)
        if self.source != "expert":  # the expert acts on simulator steps, the others on the node clock
            self.create_timer(1.0 / settings.rate, guard(self.on_tick))
        space = f" in {settings.space} space" if settings.is_arm and self.source in ("keyboard", "joy") else ""
        self.get_logger().info(
            f"teleop source {self.source!r}{space}: {settings.horizon_points} points every {settings.point_period} s "
            f"on {self.command_pub.topic_name}"
        )

    def health(self) -> Health:
        fresh = self.session.state_fresh()
        return Health(
            f"source {self.source}" + ("" if fresh else ": no fresh joint state, not commanding"),
            values={"source": self.source, "state_fresh": fresh, "commands_published": self.commands_published},
        )

    # ------------------------------------------------------------------ inputs

    def on_state(self, msg: JointState) -> None:
        position = joint_positions_or_reject(msg, self.joint_names)
        self.session.observe_state(stamp_to_nanoseconds(msg.header.stamp), position)
        self.publish(self.session.expert_chunk())

    def on_status(self, msg: EpisodeStatus) -> None:
        self.session.new_episode(msg.episode)

    def on_joy(self, msg: Joy) -> None:
        self.session.observe_joy(msg.axes, msg.buttons)

    def on_pose(self, msg: PoseStamped) -> None:
        self.session.observe_pose(stamp_to_nanoseconds(msg.header.stamp), pose_of(msg))
        self.publish(self.session.expert_chunk())

    def on_goal(self, msg: PoseStamped) -> None:
        self.session.set_goal(pose_of(msg))

    def on_tick(self) -> None:
        self.publish(self.session.tick(self.get_clock().now().nanoseconds))

    def publish(self, chunk: TeleopChunk | None) -> None:
        """Publish a chunk stamped with its tick or, for the expert, with the step it answers."""
        if chunk is None:
            return
        stamp = RosTime(nanoseconds=chunk.stamp_ns).to_msg()
        self.command_pub.publish(chunk_to_msg(Chunk(self.joint_names, chunk.positions, chunk.times_from_start, stamp)))
        self.commands_published += 1

    # ------------------------------------------------------------------ keyboard

    def setup_keyboard(self) -> None:
        try:
            self.terminal = RawTerminal(sys.stdin.fileno())  # keys one by one, unechoed; Ctrl-C still works
        except NotATerminalError:
            message = (
                "source 'keyboard' needs an interactive terminal on stdin (it is not a TTY here, e.g. under a "
                "launch file): run `ros2 run rla_wm_ros teleop --ros-args -p source:=keyboard` in a terminal, "
                "or use source 'joy'"
            )
            self.get_logger().fatal(message)
            raise SystemExit(f"teleop: {message}") from None
        print(self.key_help, file=sys.stderr, flush=True)
        threading.Thread(target=self.read_keys, daemon=True).start()

    def read_keys(self) -> None:
        if pump_keys(self.terminal, self.session.press_keys, rclpy.ok) == QUIT:
            self.get_logger().info("quit key: stopping teleop")
            rclpy.try_shutdown()

    def destroy_node(self) -> None:
        if self.terminal is not None:
            self.terminal.close()
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    from rla_wm_ros.node_main import spin_node

    # One executor thread: the callbacks are tiny, and the expert's state stays single-threaded.
    spin_node(TeleopNode, args, threads=1)


if __name__ == "__main__":
    main()
