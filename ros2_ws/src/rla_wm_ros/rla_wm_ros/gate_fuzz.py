"""Fuzz a running safety gate over DDS and check what reaches the controller topic.

The driver plays a still robot (joint states and camera frames at 20 Hz), sends seeded fuzz
trajectories (`rla_wm.control.trajectory_fuzz`) on the model topic, and runs every message that
leaves the gate through the model of joint_trajectory_controller, chained as a controller would
execute them: each starts, on arrival, from wherever the previous one had brought the command.
Used by `tests/ros/test_safety_gate.py` (a few thousand messages) and `scripts/fuzz_safety_gate.py`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from rclpy.subscription import MessageInfo
from sensor_msgs.msg import Image, JointState
from trajectory_msgs.msg import JointTrajectory

from rla_wm.control.jtc import JtcExecution, Trajectory, execution_violations, is_tail_of, jtc_rejection
from rla_wm.control.safety import JointLimits
from rla_wm.control.trajectory_fuzz import random_trajectory
from rla_wm_ros.conversions import msg_to_trajectory, trajectory_to_msg


@dataclass
class FuzzReport:
    sent: int = 0
    received: int = 0
    forwarded_copies: int = 0  # outputs whose points are a tail of a fuzz message's points
    holds: int = 0
    violations: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"sent {self.sent}, controller messages {self.received} ({self.forwarded_copies} forwarded chunks, "
            f"{self.holds} holds), violations {len(self.violations)}"
        )


class _ControllerModel:
    """joint_trajectory_controller as the gate's output drives it, checked message by message."""

    def __init__(self, limits: JointLimits, max_step: float, state: np.ndarray) -> None:
        self.limits, self.max_step, self.state = limits, max_step, state
        self.execution: JtcExecution | None = None
        self.lock = threading.Lock()
        self.report = FuzzReport()
        self.sent_positions: list[np.ndarray] = []

    def on_message(self, msg: JointTrajectory, receipt_ns: int) -> None:
        with self.lock:
            self.report.received += 1
            trajectory = msg_to_trajectory(msg)
            reason = jtc_rejection(trajectory, self.limits.names, receipt_ns)
            if reason:
                self.report.violations.append(f"the controller refuses the gate's message: {reason}")
                return
            if trajectory.stamp_ns != 0 or any(p.velocities or p.accelerations or p.effort for p in trajectory.points):
                self.report.violations.append("the gate's message is not a zero-stamped position-only trajectory")
            start = self.execution.sample(receipt_ns) if self.execution is not None else self.state
            execution = JtcExecution(trajectory, self.limits.names, receipt_ns, start)
            problems = execution_violations(
                execution,
                self.limits.lower,
                self.limits.upper,
                self.limits.max_velocity,
                reference=self.state,
                max_step=self.max_step,
            )
            self.report.violations += problems
            self.execution = execution
            if self._is_forwarded_copy(trajectory):
                self.report.forwarded_copies += 1
            else:
                self.report.holds += 1

    def _is_forwarded_copy(self, trajectory: Trajectory) -> bool:
        positions = trajectory.positions()
        return any(is_tail_of(positions, sent) for sent in reversed(self.sent_positions[-50:]))


def run_gate_fuzz(
    node: Node,
    limits: JointLimits,
    max_step: float,
    position: np.ndarray,
    messages: int,
    seed: int,
    rate_hz: float = 150.0,
    settle: float = 1.0,
) -> FuzzReport:
    """Drive the gate reachable from `node` (spun by the caller) with `messages` fuzz trajectories.

    Topics relative to `node`: `joint_states`, `camera/image_raw` (sensor QoS), `policy/joint_trajectory`
    in, `joint_trajectory` out. Returns after the last message plus `settle` seconds."""
    state = np.asarray(position, dtype=np.float64)
    model = _ControllerModel(limits, max_step, state)

    def on_controller_message(msg: JointTrajectory, info: MessageInfo) -> None:
        # The middleware's arrival time, as a controller would see it: the time this Python
        # callback runs adds executor and GIL delays a C++ controller does not have.
        received = int(info.get("received_timestamp", 0)) or node.get_clock().now().nanoseconds
        model.on_message(msg, received)

    node.create_subscription(JointTrajectory, "joint_trajectory", on_controller_message, 100)
    camera = node.create_publisher(Image, "camera/image_raw", qos_profile_sensor_data)
    joint_states = node.create_publisher(JointState, "joint_states", 10)
    commands = node.create_publisher(JointTrajectory, "policy/joint_trajectory", 100)
    stop = threading.Event()

    def feed() -> None:
        frame = Image(height=8, width=8, encoding="rgb8", step=24, data=bytes(8 * 8 * 3))
        while not stop.is_set():
            stamp = node.get_clock().now().to_msg()
            frame.header.stamp = stamp
            camera.publish(frame)
            msg = JointState(name=list(limits.names), position=state.tolist())
            msg.header.stamp = stamp
            joint_states.publish(msg)
            stop.wait(0.05)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    rng = np.random.default_rng(seed)
    try:
        deadline = time.monotonic() + 30
        while commands.get_subscription_count() == 0:
            if time.monotonic() > deadline:
                raise TimeoutError("the gate did not subscribe to policy/joint_trajectory within 30 s")
            time.sleep(0.05)
        time.sleep(settle)  # the gate must have seen camera and state before fuzzing starts
        period = 1.0 / rate_hz
        next_send = time.monotonic()
        for _ in range(messages):
            trajectory = random_trajectory(rng, limits, state, node.get_clock().now().nanoseconds)
            with model.lock:
                if all(len(p.positions) == len(trajectory.joint_names) for p in trajectory.points):
                    names = list(trajectory.joint_names)
                    if sorted(names) == sorted(limits.names) and len(set(names)) == len(names) and trajectory.points:
                        order = [names.index(n) for n in limits.names]
                        model.sent_positions.append(trajectory.positions()[:, order])
            commands.publish(trajectory_to_msg(trajectory))
            model.report.sent += 1
            next_send += period
            time.sleep(max(0.0, next_send - time.monotonic()))
        time.sleep(settle)
    finally:
        stop.set()
        feeder.join(timeout=2)
    return model.report
