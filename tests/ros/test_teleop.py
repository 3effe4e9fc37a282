"""Teleop node in its own process over real rclpy + Fast DDS: joy and expert sources, keyboard refusal."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
from geometry_msgs.msg import PoseStamped
from sensor_msgs.msg import JointState, Joy
from trajectory_msgs.msg import JointTrajectory

from rla_wm.envs.pusht.expert import PushTExpert
from rla_wm.envs.pusht.sim import GOAL_POSE
from rla_wm_ros.conversions import msg_to_chunk, stamp_to_nanoseconds
from rla_wm_ros.launch_xml import NodeSpec

from conftest import Inbox, config_file, wait_for

pytestmark = pytest.mark.timeout(120)

START = np.array([200.0, 300.0])


def teleop_spec(source: str, **params: str) -> NodeSpec:
    return NodeSpec(
        "rla_wm_ros",
        "teleop",
        name="teleop",
        param_files=[config_file("teleop.yaml")],
        params={"source": source, "limits_file": config_file("pusht_limits.yaml"), **params},
    )


def state_msg(position: np.ndarray, stamp) -> JointState:
    msg = JointState(name=["agent_x", "agent_y"], position=[float(v) for v in position])
    msg.header.stamp = stamp
    return msg


def first_targets(messages: list[JointTrajectory]) -> np.ndarray:
    return np.array([msg_to_chunk(m).positions[0] for m in messages]).reshape(-1, 2)


def resend_until(send: Callable[[], None], done: Callable[[], bool], what: str, graph, timeout: float = 20.0) -> None:
    """Call `send`, then wait up to 0.3 s for `done()`; repeat until it holds. The first samples on
    a fresh DDS connection can be lost, so one send could wait forever."""
    pause = threading.Event()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert all(graph.alive().values()), graph.tail_logs(20)
        send()
        retry_at = time.monotonic() + 0.3
        while time.monotonic() < retry_at:
            if done():
                return
            pause.wait(0.02)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{graph.tail_logs(20)}")


class JoyHarness:
    """Streams joint states (a robot standing at START) and Joy messages at 20 Hz."""

    def __init__(self, node, graph) -> None:
        self.node, self.graph = node, graph
        self.out = Inbox()
        node.create_subscription(JointTrajectory, "teleop/joint_trajectory", self.out, 10)
        self.state = node.create_publisher(JointState, "joint_states", 10)
        self.joy_pub = node.create_publisher(Joy, "joy", 10)
        self.axes, self.buttons = [0.0, 0.0], [0] * 8
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._feed, daemon=True)
        self._thread.start()
        wait_for(
            lambda: self.joy_pub.get_subscription_count() > 0 and self.state.get_subscription_count() > 0,
            60,
            "the teleop node to subscribe",
            graph,
        )
        wait_for(lambda: len(self.out.snapshot()) > 2, 20, "teleop commands", graph)

    def _feed(self) -> None:
        while not self._stop.is_set():
            stamp = self.node.get_clock().now().to_msg()
            self.state.publish(state_msg(START, stamp))
            joy = Joy(axes=list(self.axes), buttons=list(self.buttons))
            joy.header.stamp = stamp
            self.joy_pub.publish(joy)
            self._stop.wait(0.05)

    def collect(
        self, axes: list[float], deadman: bool, took_effect: Callable[[np.ndarray], bool], count: int = 6
    ) -> np.ndarray:
        """Set the stick and the deadman, then return the first targets of the first command that
        shows the new input (`took_effect`) and of the `count - 1` commands after it."""
        self.out.clear()  # commands of the previous input may still arrive: took_effect skips them
        self.axes = axes
        self.buttons = [0, 0, 0, 0, 1 if deadman else 0, 0, 0, 0]  # button 4: the deadman of teleop.yaml

        def effect() -> int | None:
            return next((i for i, t in enumerate(first_targets(self.out.snapshot())) if took_effect(t)), None)

        wait_for(
            lambda: effect() is not None and len(self.out.snapshot()) >= effect() + count,
            20,
            f"{count} commands for axes {axes}, deadman {deadman}",
            self.graph,
        )
        start = effect()
        messages = self.out.snapshot()[start : start + count]
        for msg in messages:
            assert list(msg.joint_names) == ["agent_x", "agent_y"]
            assert stamp_to_nanoseconds(msg.header.stamp) > 0
            times = msg_to_chunk(msg).times_from_start
            assert len(times) == 3 and np.all(np.diff(times) > 0) and times[0] > 0
        return first_targets(messages)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


def test_joy_moves_the_target_in_the_stick_direction_and_the_deadman_holds(ros_node, start_nodes):
    graph = start_nodes(teleop_spec("joy"))
    joy = JoyHarness(ros_node, graph)
    try:
        # joy_node: stick right = axis 0 negative -> +x in the image frame; the robot stands still, so
        # the target leads it by at most max_lead (40 px) and never more.
        right = joy.collect([-1.0, 0.0], deadman=True, took_effect=lambda t: t[0] > START[0] + 10.0)
        assert (np.diff(right[:, 0]) >= -1e-9).all() and (right[:, 0] <= START[0] + 40.0 + 1e-6).all()
        np.testing.assert_allclose(right[:, 1], START[1])
        # Deadman released with the stick still pushed: every command holds the measured position.
        released = joy.collect([-1.0, 0.0], deadman=False, took_effect=lambda t: np.allclose(t, START))
        np.testing.assert_allclose(released, np.repeat(START[None], len(released), 0))
        # Stick up = axis 1 positive -> -y.
        up = joy.collect([0.0, 1.0], deadman=True, took_effect=lambda t: t[1] < START[1] - 10.0)
        assert (np.diff(up[:, 1]) <= 1e-9).all() and (up[:, 1] >= START[1] - 40.0 - 1e-6).all()
        np.testing.assert_allclose(up[:, 0], START[0])
        np.testing.assert_allclose(up[-1], START + [0.0, -40.0])  # 15 px a tick: at max_lead after 3
        # Centred stick with the deadman held: the target stops where it was, it does not snap back to
        # the robot as a released deadman does. No command shows when the centred stick arrived (the
        # target was already still at max_lead); over 10 commands (1 s of 20 Hz Joy) it certainly did.
        centred = joy.collect([0.0, 0.0], deadman=True, took_effect=lambda t: np.allclose(t, up[-1]), count=10)
        np.testing.assert_allclose(centred, np.repeat(up[-1:], len(centred), 0))
    finally:
        joy.close()
    assert graph.alive() == {"teleop": True}


def pose_msg(pose: np.ndarray, stamp) -> PoseStamped:
    msg = PoseStamped()
    msg.header.stamp = stamp
    msg.pose.position.x, msg.pose.position.y = float(pose[0]), float(pose[1])
    msg.pose.orientation.z, msg.pose.orientation.w = float(np.sin(pose[2] / 2)), float(np.cos(pose[2] / 2))
    return msg


def test_expert_source_answers_each_object_pose_with_the_experts_target(ros_node, start_nodes):
    graph = start_nodes(teleop_spec("expert"))
    out = Inbox()
    ros_node.create_subscription(JointTrajectory, "teleop/joint_trajectory", out, 10)
    poses = ros_node.create_publisher(PoseStamped, "sim/object_pose", 10)
    states = ros_node.create_publisher(JointState, "joint_states", 10)
    wait_for(
        lambda: poses.get_subscription_count() > 0 and states.get_subscription_count() > 0,
        60,
        "the teleop node to subscribe",
        graph,
    )
    block = np.array([320.0, 260.0, 0.3])
    agent = np.array([120.0, 400.0])
    expected = PushTExpert(max_lead=40.0).act(agent, block, np.asarray(GOAL_POSE))

    # The same simulator step: pose and state carry one stamp. Re-sent with new stamps until the first
    # samples of the fresh DDS connection get through.
    sent = set()

    def send_step() -> None:
        stamp = ros_node.get_clock().now().to_msg()
        sent.add(stamp_to_nanoseconds(stamp))
        poses.publish(pose_msg(block, stamp))
        states.publish(state_msg(agent, stamp))

    resend_until(send_step, lambda: out.snapshot(), "the expert's first command", graph)
    command = out.snapshot()[0]
    assert stamp_to_nanoseconds(command.header.stamp) in sent, "chunk not stamped with the observation it answers"
    chunk = msg_to_chunk(command)
    np.testing.assert_allclose(chunk.positions, np.repeat(expected[None].astype(np.float64), 3, 0), atol=1e-3)
    assert np.linalg.norm(chunk.positions[0] - agent) <= 40.0 + 1e-3

    # A pose without the joint state of its step is not acted on (it would pair a stale agent position);
    # the next step, with both, is. Both topics are in order, so the unpaired step came in first.
    unpaired = ros_node.get_clock().now()
    poses.publish(pose_msg(block, unpaired.to_msg()))
    states.publish(state_msg(agent, (unpaired + rclpy_duration(0.05)).to_msg()))
    paired = (unpaired + rclpy_duration(0.5)).to_msg()
    poses.publish(pose_msg(block, paired))
    states.publish(state_msg(agent, paired))
    wait_for(
        lambda: stamp_to_nanoseconds(paired) in [stamp_to_nanoseconds(m.header.stamp) for m in out.snapshot()],
        20,
        "the answer to the paired step",
        graph,
    )
    answered = {stamp_to_nanoseconds(m.header.stamp) for m in out.snapshot()}
    assert stamp_to_nanoseconds(unpaired.to_msg()) not in answered
    assert answered <= sent | {stamp_to_nanoseconds(paired)}
    assert graph.alive() == {"teleop": True}


def rclpy_duration(seconds: float):
    from rclpy.duration import Duration

    return Duration(nanoseconds=int(seconds * 1e9))


def test_keyboard_source_refuses_without_a_terminal(start_nodes):
    graph = start_nodes(teleop_spec("keyboard"))  # launched nodes get /dev/null on stdin
    wait_for(lambda: not graph.alive()["teleop"], 30, "the keyboard teleop to refuse and exit")
    assert graph.returncodes()["teleop"] != 0
    assert "needs an interactive terminal" in graph.log_paths["teleop"].read_text()


def test_non_finite_poses_and_malformed_states_are_counted_never_acted_on(ros_node, start_nodes):
    from diagnostic_msgs.msg import DiagnosticArray

    from rla_wm_ros.node_guard import rejection_counts

    graph = start_nodes(teleop_spec("expert"))
    out, diagnostics = Inbox(), Inbox()
    ros_node.create_subscription(JointTrajectory, "teleop/joint_trajectory", out, 10)
    ros_node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics, 10)
    poses = ros_node.create_publisher(PoseStamped, "sim/object_pose", 10)
    states = ros_node.create_publisher(JointState, "joint_states", 10)
    wait_for(
        lambda: poses.get_subscription_count() > 0 and states.get_subscription_count() > 0,
        60,
        "the teleop node to subscribe",
        graph,
    )

    def counts() -> dict[str, int]:
        for array in reversed(diagnostics.snapshot()):
            for status in array.status:
                if status.name.startswith("teleop:"):
                    return rejection_counts(status)
        return {}

    block, agent = np.array([320.0, 260.0, 0.3]), np.array([120.0, 400.0])
    bad_steps, good_steps = set(), set()

    def send_bad_step() -> None:
        stamp = ros_node.get_clock().now().to_msg()
        bad_steps.add(stamp_to_nanoseconds(stamp))
        poses.publish(pose_msg(np.array([np.nan, 260.0, 0.3]), stamp))
        states.publish(state_msg(agent, stamp))
        states.publish(JointState(name=["agent_x"], position=[1.0]))  # a joint missing
        states.publish(state_msg(np.array([np.inf, 400.0]), stamp))

    def send_good_step() -> None:
        stamp = ros_node.get_clock().now().to_msg()
        good_steps.add(stamp_to_nanoseconds(stamp))
        poses.publish(pose_msg(block, stamp))
        states.publish(state_msg(agent, stamp))

    resend_until(
        send_bad_step,
        lambda: counts().get("on_pose/non_finite_pose") and counts().get("on_state/malformed_joint_state"),
        "the rejections on /diagnostics",
        graph,
        timeout=30,
    )
    # Still answering a valid step, and only valid ones: a NaN pose never produced a command.
    resend_until(send_good_step, lambda: out.snapshot(), "an answer to a valid step", graph)
    answered = {stamp_to_nanoseconds(m.header.stamp) for m in out.snapshot()}
    assert answered <= good_steps and not answered & bad_steps
    assert all(np.isfinite(msg_to_chunk(m).positions).all() for m in out.snapshot())
    assert graph.alive() == {"teleop": True}
