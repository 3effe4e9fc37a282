"""The safety gate process over real DDS: what leaves it is exactly a vetted copy or a hold, the
e-stop engages from any publisher, and a seeded fuzz stream never puts the controller out of limits."""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from rla_wm.control.jtc import is_tail_of, jtc_rejection
from rla_wm.control.limits import load_limits
from rla_wm_ros.conversions import Chunk, chunk_to_msg, msg_to_trajectory
from rla_wm_ros.gate_fuzz import run_gate_fuzz
from rla_wm_ros.image_conversion import CvBridge
from rla_wm_ros.launch_xml import NodeSpec

from conftest import Inbox, config_file, wait_for
from test_nodes import call, image_msg

pytestmark = pytest.mark.timeout(180)
NAMES = ("agent_x", "agent_y")


def gate_spec(**params: str) -> NodeSpec:
    return NodeSpec(
        "rla_wm_ros",
        "safety_gate",
        name="safety_gate",
        param_files=[config_file("safety_gate.yaml")],
        params={"limits_file": config_file("pusht_limits.yaml"), **params},
    )


def positions(msg: JointTrajectory) -> np.ndarray:
    return np.array([p.positions for p in msg.points], dtype=np.float64).reshape(len(msg.points), -1)


class GateHarness:
    """Feeds the gate camera frames and joint states like a live robot; collects its output."""

    def __init__(self, node, graph, compressed: bool = False) -> None:
        self.node, self.graph = node, graph
        self.compressed = compressed
        self.out = Inbox()
        self.arrivals = Inbox()  # time.monotonic() of each output, for latency figures
        node.create_subscription(JointTrajectory, "joint_trajectory", self._on_output, 10)
        self.camera = node.create_publisher(
            CompressedImage if compressed else Image, "camera/image_raw", qos_profile_sensor_data
        )
        self.state = node.create_publisher(JointState, "joint_states", 10)
        self.model = node.create_publisher(JointTrajectory, "policy/joint_trajectory", 10)
        self.position = np.array([200.0, 300.0])
        self.camera_on = True
        self.streaming_chunks = False  # publish a chunk every other cycle (10 Hz), as a policy does
        self._stop = False
        self._thread = threading.Thread(target=self._feed, daemon=True)
        self._thread.start()
        self.diagnostics = Inbox()
        node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics, 10)
        wait_for(
            lambda: self.model.get_subscription_count() > 0 and self.camera.get_subscription_count() > 0,
            60,
            "the gate to subscribe",
            graph,
        )
        wait_for(self.gate_sees_inputs, 20, "the gate to report fresh camera and state", graph)
        # DDS may drop the first samples while both ends of the model topic finish
        # matching: send valid chunks until the gate has accepted one.
        deadline = time.monotonic() + 20
        while self.gate_value("forwarded") in (None, "0"):
            assert time.monotonic() < deadline, graph.tail_logs(20)
            self.model.publish(self.chunk([[1.0, 1.0]]))
            time.sleep(0.3)
        time.sleep(0.2)
        self.out.clear()

    def gate_value(self, key: str) -> str | None:
        for array in reversed(self.diagnostics.snapshot()):
            for status in array.status:
                values = {kv.key: kv.value for kv in status.values}
                if key in values:
                    return values[key]
        return None

    def _on_output(self, msg: JointTrajectory) -> None:
        self.arrivals(time.monotonic())
        self.out(msg)

    def fresh_values(self) -> dict[str, str]:
        """The gate's diagnostics values from a message published after this call (1 Hz)."""
        self.diagnostics.clear()
        wait_for(lambda: self.diagnostics.snapshot(), 5, "fresh gate diagnostics", self.graph)
        return {kv.key: kv.value for kv in self.diagnostics.snapshot()[-1].status[0].values}

    def gate_sees_inputs(self) -> bool:
        for array in self.diagnostics.snapshot()[-3:]:
            for status in array.status:
                values = {kv.key: kv.value for kv in status.values}
                if values.get("age_camera_s", "never") != "never" and values.get("age_state_s", "never") != "never":
                    return True
        return False

    def _feed(self) -> None:
        frame = image_msg(10, Time(), 8, 8)
        if self.compressed:
            frame = CvBridge().cv2_to_compressed_imgmsg(np.full((8, 8, 3), 10, np.uint8), dst_format="jpg")
        for cycle in itertools.count():
            if self._stop:
                return
            stamp = self.node.get_clock().now().to_msg()
            if self.camera_on:
                frame.header.stamp = stamp
                self.camera.publish(frame)
            state = JointState(name=list(NAMES), position=self.position.tolist())
            state.header.stamp = stamp
            self.state.publish(state)
            if self.streaming_chunks and cycle % 2 == 0:
                self.model.publish(self.chunk([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]))
            time.sleep(0.05)

    def chunk(self, offsets, period: float = 0.1) -> JointTrajectory:
        points = self.position + np.asarray(offsets, dtype=np.float64)
        times = period * np.arange(1, len(points) + 1)
        return chunk_to_msg(Chunk(NAMES, points, times, self.node.get_clock().now().to_msg()))

    def send_and_collect(self, msg: JointTrajectory, settle: float = 0.6) -> list[JointTrajectory]:
        """Publish `msg`; return what the gate sent in the next `settle` seconds (once something came)."""
        self.out.clear()
        self.model.publish(msg)
        deadline = time.monotonic() + 5.0
        while not self.out.snapshot() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(settle)
        return self.out.snapshot()

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=2)


def copies_of(sent: JointTrajectory, out: list[JointTrajectory]) -> list[JointTrajectory]:
    """Outputs whose points are the tail of `sent`'s points (the gate's copy of it)."""
    return [m for m in out if is_tail_of(positions(m), positions(sent))]


def holds(out: list[JointTrajectory], sent: JointTrajectory | None = None) -> list[JointTrajectory]:
    """One-point trajectories that are not a copy of `sent` (a hold: joint_trajectory_controller refuses
    an empty trajectory, so the gate never sends one)."""
    copies = copies_of(sent, out) if sent is not None else []
    return [m for m in out if len(m.points) == 1 and m not in copies]


@pytest.fixture(params=[False, True], ids=["image", "compressed"])
def camera_gate(request, ros_node, start_nodes):
    """The gate watching a raw or a compressed camera stream."""
    compressed = request.param
    harness = GateHarness(ros_node, start_nodes(gate_spec(compressed_camera=str(compressed).lower())), compressed)
    yield harness
    harness.close()


@pytest.fixture
def gate(ros_node, start_nodes):
    harness = GateHarness(ros_node, start_nodes(gate_spec()))
    yield harness
    harness.close()


def test_the_message_leaving_the_gate_is_the_vetted_copy_and_never_the_original(gate):
    good = gate.chunk([[5.0, 5.0], [10.0, 10.0], [15.0, 15.0]])
    good.points[1].velocities = [1.0, 1.0]  # a field the gate does not forward
    out = gate.send_and_collect(good)
    assert len(out) == 1, out
    sent = out[0]
    trajectory = msg_to_trajectory(sent)
    assert jtc_rejection(trajectory, NAMES, gate.node.get_clock().now().nanoseconds) == ""
    assert sent.header.stamp.sec == 0 and sent.header.stamp.nanosec == 0  # the controller starts it on receipt
    assert list(sent.joint_names) == list(NAMES)
    assert all(not p.velocities and not p.accelerations and not p.effort for p in sent.points)
    assert positions(sent).tolist() == positions(good)[len(positions(good)) - len(sent.points) :].tolist()
    # Re-timed from the moment the gate vetted it: each point at most its original offset from the stamp.
    original = [p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in good.points][-len(sent.points) :]
    retimed = [p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in sent.points]
    assert all(0 < r <= o for r, o in zip(retimed, original)) and np.all(np.diff(retimed) > 0)


def test_gate_blocks_nan_out_of_limit_too_fast_and_ragged_chunks_with_a_one_point_hold(gate):
    bad = [
        gate.chunk([[5.0, 5.0], [float("nan"), 10.0]]),
        gate.chunk([[1.0, 1.0], [2.0, 2.0]]),
        gate.chunk([[150.0, 0.0]]),  # 150 px in 0.1 s = 1500 px/s > 600 px/s
        gate.chunk([[1.0, 1.0]]),
    ]
    bad[1].points[0].velocities = [float("nan"), 0.0]
    bad[3].points[0].positions = [201.0]
    for msg in bad:
        out = gate.send_and_collect(msg)
        assert not copies_of(msg, [m for m in out if len(m.points[0].positions) == 2]) and holds(out, msg), out
        hold = holds(out, msg)[0]
        assert positions(hold)[0] == pytest.approx(gate.position, abs=20.0)  # where the robot is, not a jump
    # Only the LAST point leaves the workspace: the whole chunk must be refused.
    gate.position = np.array([500.0, 300.0])
    time.sleep(0.2)
    edge = gate.chunk([[2.0, 0.0], [6.0, 0.0], [14.0, 0.0]])
    out = gate.send_and_collect(edge)
    assert not copies_of(edge, out) and holds(out, edge)
    assert all(gate.graph.alive().values())


def test_gate_holds_when_camera_stops_and_refuses_until_it_returns(camera_gate):
    gate = camera_gate
    gate.streaming_chunks = True
    wait_for(lambda: len(gate.out.snapshot()) >= 3, 5, "chunks to flow through the gate", gate.graph)
    gate.camera_on = False
    wait_for(lambda: "camera" in (gate.gate_value("last_rejection") or ""), 5, "a camera hold", gate.graph)
    # The policy keeps streaming: nothing may get through while the camera is silent.
    before = gate.fresh_values()
    time.sleep(0.5)
    after = gate.fresh_values()
    assert after["forwarded"] == before["forwarded"] and int(after["rejected"]) >= int(before["rejected"]) + 3
    count = int(after["forwarded"])
    gate.camera_on = True
    wait_for(lambda: int(gate.gate_value("forwarded")) > count, 5, "commands to flow again", gate.graph)


def test_gate_estop_latches_until_reset(gate, ros_node):
    estop = ros_node.create_client(Trigger, "safety_gate/estop")
    reset = ros_node.create_client(Trigger, "safety_gate/reset")
    assert call(ros_node, estop).success
    for offset in (1.5, 2.5):
        msg = gate.chunk([[offset, -offset]])
        out = gate.send_and_collect(msg, settle=0.2)
        assert not copies_of(msg, out) and holds(out, msg)
    assert call(ros_node, reset).success
    msg = gate.chunk([[3.5, -3.5]])
    assert copies_of(msg, gate.send_and_collect(msg, settle=0.2))


ESTOP_PUBLISHERS = {
    "ros2 topic pub (reliable, volatile)": QoSProfile(depth=10),
    "best effort": QoSProfile(depth=1, reliability=QoSReliabilityPolicy.BEST_EFFORT),
    "latched": QoSProfile(
        depth=1, reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL
    ),
}


@pytest.mark.parametrize("kind", list(ESTOP_PUBLISHERS))
def test_estop_topic_engages_from_any_publisher_and_holds_at_once(gate, ros_node, kind):
    publisher = ros_node.create_publisher(Bool, "estop", ESTOP_PUBLISHERS[kind])
    wait_for(lambda: publisher.get_subscription_count() >= 1, 10, f"the gate to match a {kind} e-stop publisher")
    gate.streaming_chunks = True
    wait_for(lambda: len(gate.out.snapshot()) >= 2, 5, "chunks to flow", gate.graph)
    gate.streaming_chunks = False
    time.sleep(0.15)  # the last streamed chunk has passed the gate
    gate.out.clear()
    gate.arrivals.clear()
    published = time.monotonic()
    publisher.publish(Bool(data=True))
    wait_for(lambda: gate.out.snapshot(), 5, f"a hold after the {kind} e-stop", gate.graph)
    latency = gate.arrivals.snapshot()[0] - published
    print(f"e-stop from a {kind} publisher: first hold on the controller topic after {latency * 1000:.1f} ms")
    assert len(gate.out.snapshot()[0].points) == 1
    before = gate.fresh_values()
    gate.streaming_chunks = True
    time.sleep(0.5)  # five chunks at 10 Hz
    after = gate.fresh_values()
    assert "e-stop" in after["last_rejection"] and int(after["rejected"]) >= int(before["rejected"]) + 3
    assert after["forwarded"] == before["forwarded"]
    count = int(after["forwarded"])
    assert call(ros_node, ros_node.create_client(Trigger, "safety_gate/reset")).success
    wait_for(lambda: int(gate.gate_value("forwarded")) > count, 5, "commands after the reset", gate.graph)


def test_gate_dry_run_sends_nothing(ros_node, start_nodes):
    harness = GateHarness(ros_node, start_nodes(gate_spec(dry_run="true")))
    try:
        msg = harness.chunk([[1.0, 1.0]])
        harness.model.publish(msg)
        wait_for(lambda: int(harness.gate_value("forwarded") or 0) >= 2, 5, "the gate to vet the chunk")
        assert harness.out.snapshot() == []
    finally:
        harness.close()


def test_gate_refuses_to_start_without_limits(start_nodes):
    graph = start_nodes(
        NodeSpec("rla_wm_ros", "safety_gate", name="safety_gate", param_files=[config_file("safety_gate.yaml")])
    )
    wait_for(lambda: not graph.alive()["safety_gate"], 30, "the gate to exit")
    assert graph.returncodes()["safety_gate"] != 0
    assert "limits_file is required" in graph.tail_logs(40)


def test_dds_fuzz_nothing_reaching_the_controller_leaves_the_limits(ros_node, start_nodes):
    """2,000 seeded fuzz trajectories over DDS; every controller message is executed by the JTC model."""
    graph = start_nodes(gate_spec(delivery_margin="0.1"))
    limits, max_step = load_limits(config_file("pusht_limits.yaml"))
    report = run_gate_fuzz(ros_node, limits, max_step, np.array([200.0, 300.0]), messages=2000, seed=7)
    print(report.summary())
    assert all(graph.alive().values()), graph.tail_logs(30)
    assert not report.violations, report.violations[:5]
    assert report.forwarded_copies >= 100 and report.holds >= 100, report.summary()
