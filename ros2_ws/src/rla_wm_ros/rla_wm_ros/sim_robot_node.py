"""Simulated robot + camera (gym-pusht) with the interfaces of a real arm driver.

Publishes the camera (sensor_msgs/Image rgb8) and joint states, follows
trajectory_msgs/JointTrajectory commands like joint_trajectory_controller
(an empty trajectory holds position), and reports episode progress. For scripted
experts it also publishes the privileged block pose (`sim/object_pose`) and the goal
pose (`sim/goal_pose`, latched) as geometry_msgs/PoseStamped (pixels, yaw about z). With
`publish_block_state` the block pose also goes out as a 1x1 rla_wm_msgs/FeatureMap
(`sim/block_state`, `rla_wm.envs.pusht.privileged`), stamped like the camera image of the
same step, so a policy node can act on it in place of encoder features.

With `publish_clock` the node is the graph's time source, like a Gazebo server:
simulated time advances exactly 1 / CONTROL_HZ per step and goes out on /clock, every
message is stamped with it, and steps run `real_time_factor` times faster than real
time (or as fast as the CPU allows); once an episode is done, time stands still until the
next reset. The other nodes run with `use_sim_time:=true`.
"""

from __future__ import annotations

import math

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseStamped
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rosgraph_msgs.msg import Clock as ClockMsg
from sensor_msgs.msg import Image, JointState
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from rla_wm.control.trajectory import TrajectoryFollower
from rla_wm.envs.pusht.privileged import BLOCK_STATE_ENCODER_ID, block_state_tokens
from rla_wm.envs.pusht.sim import CONTROL_HZ, JOINT_NAMES, PushTSim
from rla_wm_msgs.msg import EpisodeStatus, FeatureMap
from rla_wm_ros.conversions import MessageShapeError, features_to_msg, msg_to_trajectory, nanoseconds_to_stamp
from rla_wm_ros.image_conversion import CvBridge
from rla_wm_ros.node_guard import Health, NodeGuard
from rla_wm_ros.params import declare
from rla_wm_ros.qos import LATCHED

STEP_NANOSECONDS = 1_000_000_000 // CONTROL_HZ


def pose_msg(pose: np.ndarray, stamp: Time, frame_id: str) -> PoseStamped:
    """(x, y, yaw) -> PoseStamped in the table plane (z = 0, rotation about z)."""
    msg = PoseStamped()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.pose.position.x, msg.pose.position.y = float(pose[0]), float(pose[1])
    msg.pose.orientation.z = math.sin(float(pose[2]) / 2.0)
    msg.pose.orientation.w = math.cos(float(pose[2]) / 2.0)
    return msg


class SimRobotNode(Node):
    def __init__(self) -> None:
        super().__init__("sim_robot")
        self.seed = declare(self, "seed", 0, "Seed of the first episode; episode k uses seed + k.", (0, 2**31 - 1))
        max_steps = declare(self, "max_episode_steps", 300, "Steps (at 10 Hz) before an episode ends.", (1, 100000))
        image_size = declare(self, "image_size", 96, "Camera image side in pixels.", (32, 1024))
        self.frame_id = declare(self, "camera_frame_id", "sim_camera", "frame_id of published images.")
        self.rate_scale = declare(
            self, "real_time_factor", 1.0, "Simulated seconds per wall second (1 = real time).", (0.1, 100.0)
        )
        self.publish_clock = declare(
            self,
            "publish_clock",
            False,
            "Be the time source: publish /clock, advancing 1/CONTROL_HZ s per step, and stamp everything with it; "
            "time stands still while an episode is done (until reset).",
        )
        self.pose_frame_id = declare(self, "pose_frame_id", "sim_table", "frame_id of the object and goal poses.")
        publish_block_state = declare(
            self,
            "publish_block_state",
            False,
            "Also publish the block pose as a 1x1 FeatureMap on sim/block_state (encoder_id "
            f"{BLOCK_STATE_ENCODER_ID!r}), stamped like the camera image: privileged input for a policy.",
        )
        self.sim = PushTSim(max_steps=max_steps, image_size=image_size)
        self.bridge = CvBridge()
        self.follower = TrajectoryFollower(JOINT_NAMES)
        self.episode = 0
        self.frame = self.sim.reset(self.seed)
        # Simulated time starts at the wall time of start-up (whole steps), so stamps are never 0
        # ("unstamped" to the gate and the trajectory follower) and look like ordinary times.
        self.sim_nanoseconds = (Clock().now().nanoseconds // STEP_NANOSECONDS) * STEP_NANOSECONDS
        self.frame_published_done = False
        self.paused_ticks = 0

        self.image_pub = self.create_publisher(Image, "camera/image_raw", qos_profile_sensor_data)
        self.state_pub = self.create_publisher(JointState, "joint_states", 10)
        self.status_pub = self.create_publisher(EpisodeStatus, "episode_status", 10)
        self.object_pub = self.create_publisher(PoseStamped, "sim/object_pose", 10)
        self.goal_pub = self.create_publisher(PoseStamped, "sim/goal_pose", LATCHED)
        # The solved task as a camera image: what a user would give the planner as its goal.
        self.goal_image_pub = self.create_publisher(Image, "sim/goal_image", LATCHED)
        self.goal_image = self.sim.goal_image()
        self.block_state_pub = self.create_publisher(FeatureMap, "sim/block_state", 10) if publish_block_state else None
        self.clock_pub = (
            self.create_publisher(ClockMsg, "/clock", QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
            if self.publish_clock
            else None
        )
        self.rejected_commands = 0
        self.guard = NodeGuard(self, "simulated robot", health=self.health)
        guard = self.guard.wrap
        self.create_subscription(JointTrajectory, "joint_trajectory", guard(self.on_trajectory), 10)
        self.create_service(Trigger, "~/reset", guard(self.on_reset))
        # Paced on a steady clock: under use_sim_time a ROS-clock timer would wait for the /clock
        # this node itself publishes.
        self.create_timer(
            1.0 / (CONTROL_HZ * self.rate_scale), guard(self.on_tick), clock=Clock(clock_type=ClockType.STEADY_TIME)
        )
        self.publish_goal()
        # Latched for late joiners that ask for it, and repeated for volatile subscribers
        # (a planner started after the sim) that cannot receive latched history.
        self.create_timer(1.0, guard(self.publish_goal), clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.get_logger().info(
            f"Push-T simulated robot: joints {list(JOINT_NAMES)}, {CONTROL_HZ} Hz, seed {self.seed}, "
            f"{max_steps} steps per episode"
            + (f", publishing /clock at {self.rate_scale}x real time" if self.publish_clock else "")
        )

    def now_nanoseconds(self) -> int:
        return self.sim_nanoseconds if self.publish_clock else self.get_clock().now().nanoseconds

    def stamp(self) -> Time:
        return nanoseconds_to_stamp(self.now_nanoseconds())

    def publish_goal(self) -> None:
        self.goal_pub.publish(pose_msg(self.frame.goal_pose, self.stamp(), self.pose_frame_id))
        image = self.bridge.cv2_to_imgmsg(self.goal_image, encoding="rgb8")
        image.header.stamp = self.stamp()
        image.header.frame_id = self.frame_id
        self.goal_image_pub.publish(image)

    def health(self) -> Health:
        return Health(
            message=f"episode {self.episode}, step {self.frame.step}",
            values={"rejected_commands": self.rejected_commands, "episode": self.episode},
        )

    def on_trajectory(self, msg: JointTrajectory) -> None:
        # As joint_trajectory_controller: a refused message (an empty one too) is logged and the
        # previous trajectory keeps running.
        try:
            reason = self.follower.command(msg_to_trajectory(msg), self.now_nanoseconds(), self.frame.position)
        except MessageShapeError as err:
            reason = str(err)
        if reason:
            self.rejected_commands += 1
            self.get_logger().error(f"rejected trajectory ({reason}); the previous one continues")

    def on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self.episode += 1
        self.frame = self.sim.reset(self.seed + self.episode)
        self.follower = TrajectoryFollower(JOINT_NAMES)
        self.publish_goal()
        response.success = True
        response.message = f"episode {self.episode} (seed {self.seed + self.episode})"
        self.get_logger().info(f"reset: {response.message}")
        return response

    def on_tick(self) -> None:
        if self.publish_clock and self.frame.done and self.frame_published_done:
            # A finished episode is a paused world: time stands still until reset, so a recorder sees
            # the episode end exactly at its last step (no trailing frames). The still time and the last
            # frame, with its stamp, are re-sent about CONTROL_HZ times per wall second, as a paused
            # Gazebo keeps publishing /clock: a node started after the episode ended has a time (not 0),
            # watchdogs stay fed and late joiners learn the episode's state.
            self.paused_ticks += 1
            if self.paused_ticks % max(1, round(self.rate_scale)) == 0:
                self.clock_pub.publish(ClockMsg(clock=self.stamp()))
                self.publish_frame()
            return
        if self.publish_clock:
            # The frame this step produces is the state at the end of the step; the follower is
            # asked for the target due then, so a command for "now + 1 step" acts this step.
            self.sim_nanoseconds += STEP_NANOSECONDS
            self.clock_pub.publish(ClockMsg(clock=self.stamp()))
        if not self.frame.done:
            target = self.follower.target(self.now_nanoseconds(), self.frame.position)
            if not np.isfinite(target).all():
                # JTC forwards whatever numbers it was given; the drive (this sim) refuses non-finite
                # targets and holds instead of dying.
                self.rejected_commands += 1
                self.get_logger().error(
                    f"non-finite joint target {target.tolist()}; holding", throttle_duration_sec=1.0
                )
                target = self.frame.position
            self.frame = self.sim.step(target)
        self.publish_frame()
        self.frame_published_done = self.frame.done

    def publish_frame(self) -> None:
        stamp = self.stamp()
        image = self.bridge.cv2_to_imgmsg(self.frame.image, encoding="rgb8")
        image.header.stamp = stamp
        image.header.frame_id = self.frame_id
        self.image_pub.publish(image)

        state = JointState()
        state.header.stamp = stamp
        state.name = list(JOINT_NAMES)
        state.position = self.frame.position.tolist()
        state.velocity = self.frame.velocity.tolist()
        self.state_pub.publish(state)

        status = EpisodeStatus()
        status.header.stamp = stamp
        status.episode = self.episode
        status.step = self.frame.step
        status.reward = float(self.frame.reward)
        status.coverage = float(self.frame.coverage)
        status.success = self.frame.success
        status.done = self.frame.done
        self.status_pub.publish(status)
        self.object_pub.publish(pose_msg(self.frame.block_pose, stamp, self.pose_frame_id))
        if self.block_state_pub is not None:
            # Last, after the joint state of this step: a policy acts as soon as it arrives, on the newest
            # joint state it has (with camera features the encoder's delay gives the state time to arrive).
            tokens = block_state_tokens(self.frame.block_pose)
            self.block_state_pub.publish(features_to_msg(tokens, 1, 1, BLOCK_STATE_ENCODER_ID, image.header))


def main(args: list[str] | None = None) -> None:
    from rla_wm_ros.node_main import spin_node

    # One executor thread: all callbacks share the default (mutually exclusive) group, so a second
    # thread adds nothing but rclpy's busy re-polling of ready-but-blocked callbacks, which at
    # tens of steps per second starves the step itself of the GIL.
    spin_node(SimRobotNode, args, threads=1)


if __name__ == "__main__":
    main()
