"""Simulated robot + camera (gym-pusht) with the interfaces of a real arm driver.

Publishes the camera (sensor_msgs/Image rgb8) and joint states, follows
trajectory_msgs/JointTrajectory commands like joint_trajectory_controller
(an empty trajectory holds position), and reports episode progress.
"""
from __future__ import annotations

import rclpy
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from rla_wm.control.trajectory import TrajectoryFollower
from rla_wm.sim import CONTROL_HZ, JOINT_NAMES, PushTSim
from rla_wm_msgs.msg import EpisodeStatus
from rla_wm_ros.conversions import MessageShapeError, msg_to_chunk, stamp_to_seconds
from rla_wm_ros.image_conversion import CvBridge
from rla_wm_ros.params import declare


class SimRobotNode(Node):
    def __init__(self) -> None:
        super().__init__("sim_robot")
        self.seed = declare(self, "seed", 0, "Seed of the first episode; episode k uses seed + k.", (0, 2**31 - 1))
        max_steps = declare(self, "max_episode_steps", 300, "Steps (at 10 Hz) before an episode ends.", (1, 100000))
        image_size = declare(self, "image_size", 96, "Camera image side in pixels.", (32, 1024))
        self.frame_id = declare(self, "camera_frame_id", "sim_camera", "frame_id of published images.")
        self.rate_scale = declare(
            self, "real_time_factor", 1.0, "Simulated seconds per wall second (1 = real time).", (0.1, 10.0)
        )
        self.sim = PushTSim(max_steps=max_steps, image_size=image_size)
        self.bridge = CvBridge()
        self.follower = TrajectoryFollower(JOINT_NAMES)
        self.episode = 0
        self.frame = self.sim.reset(self.seed)

        self.image_pub = self.create_publisher(Image, "camera/image_raw", qos_profile_sensor_data)
        self.state_pub = self.create_publisher(JointState, "joint_states", 10)
        self.status_pub = self.create_publisher(EpisodeStatus, "episode_status", 10)
        self.create_subscription(JointTrajectory, "joint_trajectory", self.on_trajectory, 10)
        self.create_service(Trigger, "~/reset", self.on_reset)
        self.create_timer(1.0 / (CONTROL_HZ * self.rate_scale), self.on_tick)
        self.rejected_commands = 0
        self.get_logger().info(
            f"Push-T simulated robot: joints {list(JOINT_NAMES)}, {CONTROL_HZ} Hz, seed {self.seed}, "
            f"{max_steps} steps per episode"
        )

    def now_seconds(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def on_trajectory(self, msg: JointTrajectory) -> None:
        try:
            chunk = msg_to_chunk(msg)
            start = stamp_to_seconds(chunk.stamp)
            now = self.now_seconds()
            # A zero stamp means "start now", as in joint_trajectory_controller.
            self.follower.set_trajectory(
                chunk.joint_names, chunk.positions, start if start > 0 else now, chunk.times_from_start,
                now, self.frame.position,
            )
        except (MessageShapeError, ValueError) as err:
            self.rejected_commands += 1
            self.follower.hold(self.frame.position)
            self.get_logger().error(f"rejected trajectory, holding: {err}")

    def on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self.episode += 1
        self.frame = self.sim.reset(self.seed + self.episode)
        self.follower = TrajectoryFollower(JOINT_NAMES)
        response.success = True
        response.message = f"episode {self.episode} (seed {self.seed + self.episode})"
        self.get_logger().info(f"reset: {response.message}")
        return response

    def on_tick(self) -> None:
        if not self.frame.done:
            target = self.follower.target(self.now_seconds(), self.frame.position)
            self.frame = self.sim.step(target)
        self.publish_frame()

    def publish_frame(self) -> None:
        stamp = self.get_clock().now().to_msg()
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


def main(args: list[str] | None = None) -> None:
    from rla_wm_ros.node_main import spin_node

    spin_node(SimRobotNode, args)


if __name__ == "__main__":
    main()
