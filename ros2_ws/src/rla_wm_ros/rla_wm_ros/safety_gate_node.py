"""Safety gate: the only path from model commands to the robot's trajectory controller.

In: model chunks (JointTrajectory), joint states, the camera (liveness only),
an e-stop topic. Out: vetted JointTrajectory to the controller, or an empty
trajectory (hold position), plus diagnostics that say why commands are held.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import yaml
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from rla_wm.control.safety import Decision, JointLimits, SafetyGate
from rla_wm_ros.conversions import MessageShapeError, hold_msg, msg_to_chunk, stamp_to_nanoseconds, stamp_to_seconds
from rla_wm_ros.params import declare
from rla_wm_ros.qos import CAMERA_QOS, LATCHED

def load_limits_file(path: str) -> tuple[JointLimits, float]:
    """YAML with `joints: {name: {lower, upper, max_velocity}}` and `max_step` -> limits."""
    if not path:
        raise ValueError("limits_file is required: the gate never runs without joint limits")
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"limits_file {path} does not exist")
    content = yaml.safe_load(file.read_text()) or {}
    if "joints" not in content or "max_step" not in content:
        raise ValueError(f"{path}: needs `joints` and `max_step`")
    return JointLimits.from_mapping(content["joints"]), float(content["max_step"])


class SafetyGateNode(Node):
    def __init__(self) -> None:
        super().__init__("safety_gate")
        limits_file = declare(self, "limits_file", "", "YAML with per-joint lower/upper/max_velocity and max_step.")
        camera_timeout = declare(self, "camera_timeout", 0.5, "Hold if no camera frame for this long (s).", (0.01, 60.0))
        state_timeout = declare(self, "state_timeout", 0.5, "Hold if no joint state for this long (s).", (0.01, 60.0))
        command_timeout = declare(self, "command_timeout", 1.0, "Hold if the model is silent this long (s).", (0.01, 60.0))
        self.dry_run = declare(self, "dry_run", False, "Log vetted commands but send nothing to the robot.")
        check_rate = declare(self, "check_rate", 50.0, "Watchdog checks per second.", (1.0, 1000.0))
        compressed_camera = declare(self, "compressed_camera", False,
                                    "The camera topic carries sensor_msgs/CompressedImage (liveness only).")
        limits, max_step = load_limits_file(limits_file)
        self.gate = SafetyGate(limits, max_step, camera_timeout, state_timeout, command_timeout)
        self.last_rejection = ""
        self.last_log = -math.inf

        self.command_pub = self.create_publisher(JointTrajectory, "joint_trajectory", 10)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_subscription(JointTrajectory, "policy/joint_trajectory", self.on_command, 10)
        self.create_subscription(JointState, "joint_states", self.on_state, 10)
        self.create_subscription(CompressedImage if compressed_camera else Image, "camera/image_raw", self.on_camera,
                                 CAMERA_QOS)
        self.create_subscription(Bool, "estop", self.on_estop_topic, LATCHED)
        self.create_service(Trigger, "~/estop", self.on_estop_service)
        self.create_service(Trigger, "~/reset", self.on_reset_service)
        self.create_timer(1.0 / check_rate, self.on_check)
        self.create_timer(1.0, self.publish_diagnostics)
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

    def on_command(self, msg: JointTrajectory) -> None:
        try:
            chunk = msg_to_chunk(msg)
        except MessageShapeError as err:
            self.apply(self.gate.reject(f"malformed trajectory: {err}"), msg)
            return
        start_ns = stamp_to_nanoseconds(chunk.stamp)
        # Check what the controller will execute: the points still ahead, timed from now. The
        # stamp-to-now offset is taken in integer nanoseconds: float seconds at epoch scale
        # resolve only ~0.2 us, and a point due "now" would flicker between past and a
        # velocity spike. Points due within a microsecond count as past.
        offset = (start_ns - self.get_clock().now().nanoseconds) * 1e-9 if start_ns > 0 else 0.0
        until = chunk.times_from_start + offset
        ahead = until > 1e-6
        if not ahead.any():
            self.apply(self.gate.reject("every point of the chunk is in the past"), msg)
            return
        self.apply(self.gate.review(chunk.joint_names, chunk.positions[ahead], until[ahead]), msg)

    def on_check(self) -> None:
        self.apply(self.gate.tick(), None)

    def on_estop_topic(self, msg: Bool) -> None:
        if msg.data:
            self.apply(self.gate.trigger_estop("estop topic"), None)

    def on_estop_service(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self.apply(self.gate.trigger_estop("estop service"), None)
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

    def apply(self, decision: Decision, msg: JointTrajectory | None) -> None:
        if decision.forward and msg is not None:
            if self.dry_run:
                self.get_logger().info(f"dry run: would send {len(msg.points)} points", throttle_duration_sec=1.0)
            else:
                self.command_pub.publish(msg)
            return
        if decision.hold and (decision.reason != self.last_rejection or time.monotonic() - self.last_log > 2.0):
            # Every hold sent is logged, except repeats of the same reason within 2 s.
            self.get_logger().warning(f"holding: {decision.reason}")
            self.last_log = time.monotonic()
        self.last_rejection = decision.reason or self.last_rejection
        if decision.hold and not self.dry_run:
            self.command_pub.publish(hold_msg(self.gate.limits.names))

    def publish_diagnostics(self) -> None:
        gate = self.gate
        status = DiagnosticStatus(name=f"{self.get_name()}: safety gate", hardware_id="rla_wm_ros")
        if gate.estop.engaged:
            status.level, status.message = DiagnosticStatus.ERROR, f"e-stop engaged ({gate.estop.reason})"
        elif gate.held:
            status.level, status.message = DiagnosticStatus.WARN, f"holding: {gate.hold_reason}"
        else:
            status.level, status.message = DiagnosticStatus.OK, "forwarding commands"
        ages = {name: gate.watchdog.age(name) for name in gate.watchdog.timeouts}
        status.values = [
            KeyValue(key="dry_run", value=str(self.dry_run)),
            KeyValue(key="forwarded", value=str(gate.forwarded)),
            KeyValue(key="rejected", value=str(gate.rejected)),
            KeyValue(key="last_rejection", value=self.last_rejection),
            *[KeyValue(key=f"age_{name}_s", value=f"{age:.3f}" if np.isfinite(age) else "never")
              for name, age in ages.items()],
        ]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_pub.publish(array)


def main(args: list[str] | None = None) -> None:
    from rla_wm_ros.node_main import spin_node

    spin_node(SafetyGateNode, args, threads=1)


if __name__ == "__main__":
    main()
