"""The safety gate process over real DDS: what leaves it is exactly a vetted copy or a hold, the
e-stop engages from any publisher, and a seeded fuzz stream never puts the controller out of limits."""

from __future__ import annotations

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

from conftest import Inbox, call_service, config_file, publish_until, wait_for
from test_nodes import image_msg

pytestmark = pytest.mark.timeout(180)
NAMES = ("agent_x", "agent_y")
# The harness's model is silent between a test's steps: a model-timeout hold would be taken for the
# gate's answer to the next chunk, so that timeout is set out of the way (camera and state keep theirs).
QUIET_MODEL = {"command_timeout": "60.0"}


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


def copies_of(sent: JointTrajectory, out: list[JointTrajectory]) -> list[JointTrajectory]:
    """Outputs whose points are the tail of `sent`'s points (the gate's copy of it)."""
    return [m for m in out if is_tail_of(positions(m), positions(sent))]


def holds(out: list[JointTrajectory], sent: JointTrajectory | None = None) -> list[JointTrajectory]:
    """One-point trajectories that are not a copy of `sent` (a hold: joint_trajectory_controller refuses
    an empty trajectory, so the gate never sends one)."""
    copies = copies_of(sent, out) if sent is not None else []
    return [m for m in out if len(m.points) == 1 and m not in copies]


class GateHarness:
    """Feeds the gate camera frames and joint states like a live robot (a 20 Hz timer on the test's
    node); collects its output.

    The gate answers every model chunk with exactly one message (its copy or a hold), in order, from
    one thread; ticks add a hold only when an input goes stale. So once the copy of a chunk sent last
    has arrived, every answer to the chunks before it has too: `sync` uses that instead of waiting a
    while for stragglers.
    """

    def __init__(self, node, graph, compressed: bool = False, dry_run: bool = False) -> None:
        self.node, self.graph = node, graph
        self.compressed = compressed
        self.out = Inbox()
        self.arrivals = Inbox()  # time.monotonic() of each output, for the printed latency only
        node.create_subscription(JointTrajectory, "joint_trajectory", self._on_output, 10)
        self.camera = node.create_publisher(
            CompressedImage if compressed else Image, "camera/image_raw", qos_profile_sensor_data
        )
        self.state = node.create_publisher(JointState, "joint_states", 10)
        self.model = node.create_publisher(JointTrajectory, "policy/joint_trajectory", 10)
        self.position = np.array([200.0, 300.0])
        self.camera_on = True
        self.streaming_chunks = False  # publish a chunk every other cycle (10 Hz), as a policy does
        self.cycles = 0  # feed cycles completed
        self.markers = 0
        self.frame = image_msg(10, Time(), 8, 8)
        if compressed:
            self.frame = CvBridge().cv2_to_compressed_imgmsg(np.full((8, 8, 3), 10, np.uint8), dst_format="jpg")
        self.diagnostics = Inbox()
        node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics, 10)
        self.timer = node.create_timer(0.05, self._feed)
        wait_for(
            lambda: self.model.get_subscription_count() > 0 and self.camera.get_subscription_count() > 0,
            60,
            "the gate to subscribe",
            graph,
        )
        wait_for(self.gate_sees_inputs, 20, "the gate to report fresh camera and state", graph)
        # DDS may drop the first samples while both ends of the model topic finish
        # matching: send valid chunks until the gate has vetted one.
        publish_until(
            lambda: self.model.publish(self.chunk([[1.0, 1.0]])),
            lambda: self.gate_value("forwarded") not in (None, "0"),
            30,
            "the gate to vet a first chunk",
            graph,
        )
        if not dry_run:
            self.sync()

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
        stamp = self.node.get_clock().now().to_msg()
        if self.camera_on:
            self.frame.header.stamp = stamp
            self.camera.publish(self.frame)
        state = JointState(name=list(NAMES), position=self.position.tolist())
        state.header.stamp = stamp
        self.state.publish(state)
        if self.streaming_chunks and self.cycles % 2 == 0:
            self.model.publish(self.stream_chunk())
        self.cycles += 1

    def wait_cycles(self, count: int) -> None:
        """Wait until `count` more feed cycles have completed (so one under way when asked has ended)."""
        target = self.cycles + count
        wait_for(lambda: self.cycles >= target, 10, f"{count} feed cycles", self.graph)

    def chunk(self, offsets, period: float = 0.1) -> JointTrajectory:
        points = self.position + np.asarray(offsets, dtype=np.float64)
        times = period * np.arange(1, len(points) + 1)
        return chunk_to_msg(Chunk(NAMES, points, times, self.node.get_clock().now().to_msg()))

    def stream_chunk(self) -> JointTrajectory:
        return self.chunk([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])

    def sync(self) -> list[JointTrajectory]:
        """Send a marker chunk the gate forwards and wait for its copy. Returns what came before it (every
        answer to what was sent before it) and empties the inbox."""
        self.markers += 1
        marker = self.chunk([[0.37 * self.markers, -0.29 * self.markers]])
        self.model.publish(marker)
        wait_for(lambda: copies_of(marker, self.out.snapshot()), 10, "the gate's copy of a marker chunk", self.graph)
        out = self.out.snapshot()
        self.out.clear()
        return out[: out.index(copies_of(marker, out)[0])]

    def send_and_collect(self, msg: JointTrajectory) -> list[JointTrajectory]:
        """Publish `msg`; return every message the gate sent in answer (through a `sync`)."""
        self.out.clear()
        self.model.publish(msg)
        return self.sync()

    def send_and_answer(self, msg: JointTrajectory) -> JointTrajectory:
        """Publish `msg` and return the gate's one answer to it (for when a marker would not be forwarded)."""
        self.out.clear()
        self.model.publish(msg)
        wait_for(lambda: self.out.snapshot(), 10, "the gate's answer", self.graph)
        return self.out.snapshot()[0]

    def close(self) -> None:
        self.timer.cancel()


@pytest.fixture(params=[False, True], ids=["image", "compressed"])
def camera_gate(request, ros_node, start_nodes):
    """The gate watching a raw or a compressed camera stream."""
    compressed = request.param
    graph = start_nodes(gate_spec(compressed_camera=str(compressed).lower(), **QUIET_MODEL))
    harness = GateHarness(ros_node, graph, compressed)
    yield harness
    harness.close()


@pytest.fixture
def gate(ros_node, start_nodes):
    harness = GateHarness(ros_node, start_nodes(gate_spec(**QUIET_MODEL)))
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
        gate.chunk([[150.0, 0.0]]),  # 150 px in 0.1 s = 1500 px/s > 1000 px/s
        gate.chunk([[1.0, 1.0]]),
    ]
    bad[1].points[0].velocities = [float("nan"), 0.0]
    bad[3].points[0].positions = [201.0]
    for msg in bad:
        out = gate.send_and_collect(msg)
        # Exactly one answer, a hold, and no copy (the ragged chunk's copy would have one-joint points).
        assert len(out) == 1 and holds(out, msg), out
        assert not copies_of(msg, [m for m in out if len(m.points[0].positions) == 2]), out
        assert positions(out[0])[0] == pytest.approx(gate.position, abs=20.0)  # where the robot is, not a jump
    # Only the LAST point leaves the workspace: the whole chunk must be refused. First the gate must
    # know the robot is at the edge: a step from there is forwarded only then (from 200 px it is a 300 px
    # jump, refused whatever the edge check does).
    gate.position = np.array([500.0, 300.0])
    probe = gate.chunk([[-1.0, 0.0]])
    publish_until(
        lambda: gate.model.publish(gate.chunk([[-1.0, 0.0]])),  # freshly stamped each time
        lambda: copies_of(probe, gate.out.snapshot()),
        10,
        "the gate to forward a step from the workspace's edge",
        gate.graph,
        every=0.5,
    )
    gate.sync()
    edge = gate.chunk([[2.0, 0.0], [6.0, 0.0], [14.0, 0.0]])
    out = gate.send_and_collect(edge)
    assert len(out) == 1 and holds(out, edge) and not copies_of(edge, out), out
    assert all(gate.graph.alive().values())


def test_gate_holds_when_camera_stops_and_refuses_until_it_returns(camera_gate):
    gate = camera_gate
    gate.streaming_chunks = True
    wait_for(lambda: len(copies_of(gate.stream_chunk(), gate.out.snapshot())) >= 3, 10, "chunks to pass", gate.graph)
    gate.camera_on = False
    wait_for(lambda: "camera" in (gate.gate_value("last_rejection") or ""), 5, "a camera hold", gate.graph)
    # The policy keeps streaming: the gate keeps receiving (and refusing) chunks, and none gets through.
    before = gate.fresh_values()
    gate.out.clear()
    wait_for(
        lambda: int(gate.gate_value("rejected")) >= int(before["rejected"]) + 3,
        10,
        "three streamed chunks refused while the camera is silent",
        gate.graph,
    )
    assert gate.gate_value("forwarded") == before["forwarded"] and "camera" in gate.gate_value("last_rejection")
    assert not copies_of(gate.stream_chunk(), gate.out.snapshot())
    count = int(before["forwarded"])
    gate.camera_on = True
    wait_for(lambda: int(gate.gate_value("forwarded")) > count, 5, "commands to flow again", gate.graph)


def test_gate_estop_latches_until_reset(gate, ros_node):
    estop = ros_node.create_client(Trigger, "safety_gate/estop")
    reset = ros_node.create_client(Trigger, "safety_gate/reset")
    assert call_service(estop, graph=gate.graph).success
    for offset in (1.5, 2.5):
        msg = gate.chunk([[offset, -offset]])
        answer = gate.send_and_answer(msg)
        assert holds([answer], msg), answer
    assert call_service(reset, graph=gate.graph).success
    msg = gate.chunk([[3.5, -3.5]])
    assert copies_of(msg, gate.send_and_collect(msg)), "the gate still holds after the reset"


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
    gate.wait_cycles(2)  # a feed cycle under way when streaming stopped has ended
    gate.sync()  # ...and the gate has answered every streamed chunk
    gate.arrivals.clear()
    published = time.monotonic()
    # Best effort may lose it: sent again until the gate answers (every e-stop is answered with a hold).
    publish_until(
        lambda: publisher.publish(Bool(data=True)),
        lambda: gate.out.snapshot(),
        10,
        f"a hold after the {kind} e-stop",
        gate.graph,
        every=1.0,
    )
    latency = gate.arrivals.snapshot()[0] - published
    print(f"e-stop from a {kind} publisher: first hold on the controller topic after {latency * 1000:.1f} ms")
    assert len(gate.out.snapshot()[0].points) == 1
    # The policy streams again: the gate keeps receiving (and refusing) chunks, and none gets through.
    before = gate.fresh_values()
    gate.out.clear()
    gate.streaming_chunks = True
    wait_for(
        lambda: int(gate.gate_value("rejected")) >= int(before["rejected"]) + 3,
        10,
        "three streamed chunks refused under the e-stop",
        gate.graph,
    )
    assert "e-stop" in gate.gate_value("last_rejection") and gate.gate_value("forwarded") == before["forwarded"]
    assert not copies_of(gate.stream_chunk(), gate.out.snapshot())
    count = int(before["forwarded"])
    assert call_service(ros_node.create_client(Trigger, "safety_gate/reset"), graph=gate.graph).success
    wait_for(lambda: int(gate.gate_value("forwarded")) > count, 5, "commands after the reset", gate.graph)


def test_gate_dry_run_sends_nothing(ros_node, start_nodes):
    harness = GateHarness(ros_node, start_nodes(gate_spec(dry_run="true", **QUIET_MODEL)), dry_run=True)
    try:
        # The test's subscription is matched to the gate's controller publisher: anything sent would arrive.
        wait_for(lambda: ros_node.count_publishers("joint_trajectory") >= 1, 10, "the gate's controller publisher")
        vetted = int(harness.gate_value("forwarded"))
        msg = harness.chunk([[1.0, 1.0]])
        publish_until(
            lambda: harness.model.publish(msg),
            lambda: int(harness.gate_value("forwarded")) > vetted,
            10,
            "the gate to vet the chunk",
            harness.graph,
            every=1.0,
        )
        # It decided to send them (it says so), and one more diagnostics message, published after that
        # decision, has arrived: a command published at the decision would be here before it.
        wait_for(lambda: "dry run: would send" in harness.graph.tail_logs(40), 10, "the dry-run log line")
        harness.fresh_values()
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
