"""Safety gate: the only path from model commands to the robot's trajectory controller.

In: model chunks (JointTrajectory), joint states, the camera (liveness only), an e-stop topic (any
QoS a publisher may use). Out: the gate's own vetted copy of each accepted chunk, or a one-point hold,
on the controller topic, plus diagnostics that say why commands are held. The vetting itself is the
ROS-free `rla_wm.control.safety`; this node converts messages and keeps time.
"""

from __future__ import annotations

import math
import time

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from rla_wm.control.limits import load_limits
from rla_wm.control.safety import Decision, SafetyGate
from rla_wm_ros.conversions import MessageShapeError, msg_to_trajectory, stamp_to_seconds, trajectory_to_msg
from rla_wm_ros.node_guard import ERROR, OK, WARN, Health, NodeGuard
from rla_wm_ros.params import declare
from rla_wm_ros.qos import CAMERA_QOS, ESTOP_QOS


class SafetyGateNode(Node):
    def __init__(self) -> None:
        super().__init__("safety_gate")
        limits_file = declare(
            self,
            "limits_file",
            "",
            "YAML with max_step and the joint limits (or `urdf:`, or tightening of robot_description's limits).",
        )
        robot_description = declare(
            self, "robot_description", "", "URDF XML; joint limits are read from it (limits_file still gives max_step)."
        )
        urdf_file = declare(
            self,
            "urdf_file",
            "",
            "URDF file (a path or package://PACKAGE/PATH, a ROS or Python package); joint limits are read from "
            "it as from robot_description (limits_file still gives max_step).",
        )
        camera_timeout = declare(
            self, "camera_timeout", 0.5, "Hold if no camera frame for this long (s).", (0.01, 60.0)
        )
        state_timeout = declare(self, "state_timeout", 0.5, "Hold if no joint state for this long (s).", (0.01, 60.0))
        command_timeout = declare(
            self, "command_timeout", 1.0, "Hold if the model is silent this long (s).", (0.01, 60.0)
        )
        self.dry_run = declare(self, "dry_run", False, "Log vetted commands but send nothing to the robot.")
        check_rate = declare(self, "check_rate", 50.0, "Watchdog checks per second.", (1.0, 1000.0))
        delivery_margin = declare(
            self,
            "delivery_margin",
            0.02,
            "Seconds allowed for a command to reach the controller: points due sooner are dropped, and the "
            "first executed segment must respect the speed limits from anywhere the robot can be by then.",
            (0.001, 0.5),
        )
        tracking_tolerance = declare(
            self,
            "tracking_tolerance",
            0.0,
            "How far (joint units) the measured state may be from the gate's last command before the gate "
            "assumes something else moved the robot and holds it where it is; 0 = max_step / 4.",
            (0.0, 1e6),
        )
        compressed_camera = declare(
            self, "compressed_camera", False, "The camera topic carries sensor_msgs/CompressedImage (liveness only)."
        )
        limits, max_step = load_limits(limits_file, robot_description, urdf_file)
        self.gate = SafetyGate(
            limits,
            max_step,
            camera_timeout,
            state_timeout,
            command_timeout,
            delivery_margin=delivery_margin,
            dry_run=self.dry_run,
            tracking_tolerance=tracking_tolerance or None,
        )
        self.last_rejection = ""
        self.last_log = -math.inf

        self.command_pub = self.create_publisher(JointTrajectory, "joint_trajectory", 10)
        self.guard = NodeGuard(self, "safety gate", health=self.health)
        guard = self.guard.wrap
        # An unexpected error while vetting a command still answers it with a hold.
        self.create_subscription(
            JointTrajectory, "policy/joint_trajectory", guard(self.on_command, on_error=self.hold_on_error), 10
        )
        self.create_subscription(JointState, "joint_states", guard(self.on_state), 10)
        self.create_subscription(
            CompressedImage if compressed_camera else Image, "camera/image_raw", guard(self.on_camera), CAMERA_QOS
        )
        # One subscription per kind of publisher, so any of them engages the e-stop: reliable or best
        # effort, volatile (`ros2 topic pub`, a default rclpy publisher) or latched.
        for qos in ESTOP_QOS:
            self.create_subscription(Bool, "estop", guard(self.on_estop_topic), qos)
        self.create_service(Trigger, "~/estop", guard(self.on_estop_service))
        self.create_service(Trigger, "~/reset", guard(self.on_reset_service))
        self.create_timer(1.0 / check_rate, guard(self.on_check, on_error=self.hold_on_error))
        mode = "DRY RUN (nothing is sent)" if self.dry_run else "live"
        self.get_logger().info(f"safety gate {mode}: joints {list(limits.names)}, max_step {max_step}")

    def now_seconds(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def age_of(self, stamp) -> float:
        """Seconds since a header stamp; 0 for unstamped messages (arrival time is all we know)."""
        seconds = stamp_to_seconds(stamp)
        return max(0.0, self.now_seconds() - seconds) if seconds > 0 else 0.0

    def on_camera(self, msg: Image | CompressedImage) -> None:
        self.gate.on_camera(self.age_of(msg.header.stamp))

    def on_state(self, msg: JointState) -> None:
        self.gate.on_state(msg.name, msg.position, self.age_of(msg.header.stamp))

    def now_nanoseconds(self) -> int:
        return self.get_clock().now().nanoseconds

    def on_command(self, msg: JointTrajectory) -> None:
        now_ns = self.now_nanoseconds()
        try:
            trajectory = msg_to_trajectory(msg)
        except MessageShapeError as err:
            self.apply(self.gate.reject(f"malformed trajectory: {err}", now_ns))
            return
        self.apply(self.gate.review(trajectory, now_ns))

    def on_check(self) -> None:
        self.apply(self.gate.tick(self.now_nanoseconds()))

    def on_estop_topic(self, msg: Bool) -> None:
        if msg.data:
            self.apply(self.gate.trigger_estop("estop topic", self.now_nanoseconds()))

    def on_estop_service(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self.apply(self.gate.trigger_estop("estop service", self.now_nanoseconds()))
        response.success = True
        response.message = "e-stop engaged; call reset to release"
        return response

    def on_reset_service(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        was = self.gate.estop.engaged
        self.gate.reset_estop()
        response.success = True
        response.message = "e-stop released" if was else "e-stop was not engaged"
        self.get_logger().warning(response.message)
        return response

    def apply(self, decision: Decision) -> None:
        """Publish exactly the command the gate built (nothing else ever reaches the controller)."""
        if decision.hold and (decision.reason != self.last_rejection or time.monotonic() - self.last_log > 2.0):
            # Every hold is logged, except repeats of the same reason within 2 s.
            self.get_logger().warning(f"holding: {decision.reason}")
            self.last_log = time.monotonic()
        self.last_rejection = decision.reason or self.last_rejection
        if decision.command is None:
            return
        if self.dry_run:
            if decision.forward:
                points = len(decision.command.points)
                self.get_logger().info(f"dry run: would send {points} points", throttle_duration_sec=1.0)
            return
        self.command_pub.publish(trajectory_to_msg(decision.command))

    def hold_on_error(self, error: Exception, *_args) -> None:
        self.apply(self.gate.reject(f"internal error: {error}", self.now_nanoseconds()))

    def health(self) -> Health:
        gate = self.gate
        if gate.estop.engaged:
            level, message = ERROR, f"e-stop engaged ({gate.estop.reason})"
        elif gate.held:
            level, message = WARN, f"holding: {gate.hold_reason}"
        else:
            level, message = OK, "forwarding commands"
        ages = {name: gate.watchdog.age(name) for name in gate.watchdog.timeouts}
        return Health(
            message=message,
            level=level,
            values={
                "dry_run": str(self.dry_run),
                "forwarded": gate.forwarded,
                "rejected": gate.rejected,
                "last_rejection": self.last_rejection,
                "delivery_margin_s": f"{gate.delivery_margin_ns * 1e-9:.3f}",
                **{f"age_{name}_s": f"{age:.3f}" if np.isfinite(age) else "never" for name, age in ages.items()},
            },
        )


def main(args: list[str] | None = None) -> None:
    from rla_wm_ros.node_main import spin_node

    spin_node(SafetyGateNode, args, threads=1)


if __name__ == "__main__":
    main()
