"""Simulated SO-101 arm (MuJoCo, push-cube task) with the interfaces of a real arm's driver.

Publishes `joint_states` (sensor_msgs/JointState, the URDF's joint names, radians), both
cameras (`front/image_raw`, `wrist/image_raw`, sensor_msgs/Image rgb8) and `episode_status`,
all of one step with the same stamp (the capture time), and follows trajectory_msgs/JointTrajectory
on `joint_trajectory` by joint_trajectory_controller's rules (`rla_wm.envs.so101.driver`):
interpolated at `update_rate`, joints matched by name in any order, the gripper a joint like the
others, a refused message (unknown joints, no points) logged and the running trajectory kept.
`~/reset` (std_srvs/Trigger) starts the next episode: episode k uses seed + k.

With `publish_environment_state` the cube pose and the zone also go out as a 1x1
rla_wm_msgs/FeatureMap on `sim/environment_state` (`rla_wm.envs.so101.environment_state`).

With `publish_clock` the node is the graph's time source, as the Push-T sim (`sim_robot_node`):
simulated time advances 1 / CONTROL_HZ per step on /clock, steps run `real_time_factor` times
faster than real time, and time stands still while an episode is done, until reset.

The simulator owns an OpenGL context, so it is built, stepped, rendered and closed on one thread:
the executor is single-threaded and spins on the thread that built the node.
"""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rosgraph_msgs.msg import Clock as ClockMsg
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Header
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from rla_wm.control.settings import setting_specs
from rla_wm.envs.so101.driver import PERIOD_NANOSECONDS, So101Driver
from rla_wm.envs.so101.environment_state import CUBE_STATE_ENCODER_ID, cube_state_tokens
from rla_wm.envs.so101.scene import SCENE_CAMERA, WRIST_CAMERA
from rla_wm.envs.so101.sim import CONTROL_HZ, JOINT_NAMES, So101Frame, So101Sim
from rla_wm.envs.so101.sim_arm_settings import SimArmSettings
from rla_wm_msgs.msg import EpisodeStatus, FeatureMap
from rla_wm_ros.conversions import MessageShapeError, features_to_msg, msg_to_trajectory, nanoseconds_to_stamp
from rla_wm_ros.image_conversion import CvBridge
from rla_wm_ros.node_guard import Health, NodeGuard
from rla_wm_ros.params import declare
from rla_wm_ros.qos import LATCHED


class SimArmNode(Node):
    def __init__(self) -> None:
        super().__init__("sim_arm")
        settings = SimArmSettings(**{spec.name: declare(self, *spec) for spec in setting_specs(SimArmSettings)})
        self.settings = settings
        self.seed = settings.seed
        sim = So101Sim(max_steps=settings.max_episode_steps, width=settings.image_width, height=settings.image_height)
        self.driver = So101Driver(sim, settings.update_rate)
        self.bridge = CvBridge()
        self.episode = 0
        self.frame = self.driver.reset(self.seed)
        # Simulated time starts at the wall time of start-up (whole steps), so stamps are never 0
        # ("unstamped" to the gate and the trajectory follower) and look like ordinary times.
        self.sim_nanoseconds = (Clock().now().nanoseconds // PERIOD_NANOSECONDS) * PERIOD_NANOSECONDS
        self.frame_published_done = False
        self.paused_ticks = 0
        self.rejected_commands = 0

        self.camera_pubs = {
            camera: (self.create_publisher(Image, f"{camera}/image_raw", qos_profile_sensor_data), frame_id)
            for camera, frame_id in ((SCENE_CAMERA, settings.front_frame_id), (WRIST_CAMERA, settings.wrist_frame_id))
        }
        self.state_pub = self.create_publisher(JointState, "joint_states", 10)
        self.status_pub = self.create_publisher(EpisodeStatus, "episode_status", 10)
        self.environment_pub = (
            self.create_publisher(FeatureMap, "sim/environment_state", 10)
            if settings.publish_environment_state
            else None
        )
        self.clock_pub = (
            self.create_publisher(ClockMsg, "/clock", QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
            if settings.publish_clock
            else None
        )
        self.goal_image_pub = (
            self.create_publisher(Image, "sim/goal_image", LATCHED) if settings.publish_goal_image else None
        )
        self.goal_image: np.ndarray | None = None  # rendered once per episode
        self.guard = NodeGuard(self, "simulated SO-101 arm", health=self.health)
        guard = self.guard.wrap
        self.create_subscription(JointTrajectory, "joint_trajectory", guard(self.on_trajectory), 10)
        self.create_service(Trigger, "~/reset", guard(self.on_reset))
        # Paced on a steady clock: under use_sim_time a ROS-clock timer would wait for the /clock
        # this node itself publishes.
        self.create_timer(
            1.0 / (CONTROL_HZ * settings.real_time_factor),
            guard(self.on_tick),
            clock=Clock(clock_type=ClockType.STEADY_TIME),
        )
        self.get_logger().info(
            f"SO-101 simulated arm: joints {list(JOINT_NAMES)}, cameras {list(self.camera_pubs)} at "
            f"{settings.image_width}x{settings.image_height}, {CONTROL_HZ} Hz steps, controller at "
            f"{settings.update_rate} Hz, seed {self.seed}, {settings.max_episode_steps} steps per episode"
            + (f", publishing /clock at {settings.real_time_factor}x real time" if settings.publish_clock else "")
        )
        if self.goal_image_pub is not None:
            self.publish_goal_image()
            # Latched for late joiners that ask for it, and repeated for volatile subscribers (a planner
            # started after the sim) that cannot receive latched history.
            self.create_timer(1.0, guard(self.publish_goal_image), clock=Clock(clock_type=ClockType.STEADY_TIME))

    def now_nanoseconds(self) -> int:
        return self.sim_nanoseconds if self.settings.publish_clock else self.get_clock().now().nanoseconds

    def stamp(self) -> Time:
        return nanoseconds_to_stamp(self.now_nanoseconds())

    def health(self) -> Health:
        return Health(
            message=f"episode {self.episode}, step {self.frame.step}",
            values={"rejected_commands": self.rejected_commands, "episode": self.episode},
        )

    def on_trajectory(self, msg: JointTrajectory) -> None:
        # As joint_trajectory_controller: a refused message (an empty one too) is logged and the
        # previous trajectory keeps running.
        try:
            reason = self.driver.command(msg_to_trajectory(msg), self.now_nanoseconds())
        except MessageShapeError as err:
            reason = str(err)
        if reason:
            self.rejected_commands += 1
            self.get_logger().error(f"rejected trajectory ({reason}); the previous one continues")

    def on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self.episode += 1
        self.frame = self.driver.reset(self.seed + self.episode)
        self.goal_image = None  # a new layout
        self.publish_goal_image()
        response.success = True
        response.message = f"episode {self.episode} (seed {self.seed + self.episode})"
        self.get_logger().info(f"reset: {response.message}")
        return response

    def on_tick(self) -> None:
        if self.settings.publish_clock and self.frame.done and self.frame_published_done:
            # A finished episode is a paused world (see sim_robot_node): time stands still until reset,
            # and the still time and the last frame are re-sent about CONTROL_HZ times per wall second.
            self.paused_ticks += 1
            if self.paused_ticks % max(1, round(self.settings.real_time_factor)) == 0:
                self.clock_pub.publish(ClockMsg(clock=self.stamp()))
                self.publish_frame(self.frame)
            return
        if self.settings.publish_clock:
            # The frame this step produces is the state at the end of the step, stamped then.
            self.sim_nanoseconds += PERIOD_NANOSECONDS
            self.clock_pub.publish(ClockMsg(clock=self.stamp()))
        if not self.frame.done:
            result = self.driver.step(self.now_nanoseconds())
            self.frame = result.frame
            if result.refused_commands:
                # JTC forwards whatever numbers it was given; the drive (this sim) refuses non-finite
                # targets and holds instead of dying.
                self.rejected_commands += 1
                self.get_logger().error(
                    f"non-finite joint target in {result.refused_commands} controller updates; holding "
                    f"{self.driver.hold.tolist()}",
                    throttle_duration_sec=1.0,
                )
        self.publish_frame(self.frame)
        self.frame_published_done = self.frame.done

    def publish_frame(self, frame: So101Frame) -> None:
        stamp = self.stamp()
        for camera, (publisher, frame_id) in self.camera_pubs.items():
            image = self.bridge.cv2_to_imgmsg(frame.images[camera], encoding="rgb8")
            image.header.stamp = stamp
            image.header.frame_id = frame_id
            publisher.publish(image)

        state = JointState()
        state.header.stamp = stamp
        state.name = list(JOINT_NAMES)
        state.position = frame.joint_positions.tolist()
        state.velocity = frame.joint_velocities.tolist()
        self.state_pub.publish(state)

        status = EpisodeStatus()
        status.header.stamp = stamp
        status.episode = self.episode
        status.step = frame.step
        status.reward = float(frame.coverage)  # the task's graded reward: how much of the cube is over the zone
        status.coverage = float(frame.coverage)
        status.success = frame.success
        status.done = frame.done
        self.status_pub.publish(status)
        if self.environment_pub is not None:
            # Last, after the joint state of this step: a consumer that acts on it finds that step's
            # joint state already delivered.
            header = Header(stamp=stamp, frame_id=self.settings.world_frame_id)
            tokens = cube_state_tokens(frame.cube_pose, frame.zone)
            self.environment_pub.publish(features_to_msg(tokens, 1, 1, CUBE_STATE_ENCODER_ID, header))

    def publish_goal_image(self) -> None:
        """The front camera's view of this episode's layout solved (a new layout at each reset)."""
        if self.goal_image_pub is None:
            return
        if self.goal_image is None:
            self.goal_image = self.driver.sim.goal_images()[SCENE_CAMERA]
        image = self.bridge.cv2_to_imgmsg(self.goal_image, encoding="rgb8")
        image.header.stamp = self.stamp()
        image.header.frame_id = self.settings.front_frame_id
        self.goal_image_pub.publish(image)

    def destroy_node(self) -> None:
        self.driver.sim.close()  # on the thread that made the GL context, like every other sim call
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    from rla_wm_ros.node_main import spin_node

    # One executor thread, the one that built the node: the simulator's OpenGL context belongs to it
    # (and a second thread would only add rclpy's busy re-polling, see sim_robot_node).
    spin_node(SimArmNode, args, threads=1)


if __name__ == "__main__":
    main()
