"""Each node in its own process, talking to the test over real rclpy + Fast DDS."""
from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from conftest import Inbox, config_file, wait_for
from rla_wm_msgs.msg import EpisodeStatus, FeatureMap
from rla_wm_ros.conversions import Chunk, chunk_to_msg, msg_to_features, stamp_to_nanoseconds
from rla_wm_ros.image_conversion import CvBridge
from rla_wm_ros.launch_xml import NodeSpec
from rla_wm_ros.qos import LATCHED

pytestmark = pytest.mark.timeout(120)



def image_msg(value: int, stamp: Time, height: int = 96, width: int = 96) -> Image:
    frame = np.full((height, width, 3), value, dtype=np.uint8)
    frame[: height // 2, :, 0] = 255 - value
    msg = CvBridge().cv2_to_imgmsg(frame, encoding="rgb8")
    msg.header.stamp = stamp
    return msg


def call(node, client, timeout: float = 10.0):
    assert client.wait_for_service(timeout_sec=timeout), f"service {client.srv_name} not available"
    future = client.call_async(Trigger.Request())
    deadline = time.monotonic() + timeout
    while not future.done():
        assert time.monotonic() < deadline, f"{client.srv_name} did not answer"
        time.sleep(0.01)
    return future.result()


def test_encoder_turns_images_into_feature_maps_with_source_stamp(ros_node, start_nodes):
    graph = start_nodes(NodeSpec("rla_wm_ros", "encoder", name="encoder", param_files=[config_file("encoder.yaml")]))
    features = Inbox()
    ros_node.create_subscription(FeatureMap, "features", features, 10)
    camera = ros_node.create_publisher(Image, "camera/image_raw", qos_profile_sensor_data)
    wait_for(lambda: camera.get_subscription_count() > 0, 60, "the encoder to subscribe to the camera", graph)

    sent: list[Time] = []
    bad = image_msg(0, Time(sec=99, nanosec=1))
    bad.data = bytes(bad.data)[:-5]  # length disagrees with height * step

    def publish_until_features():
        for index in range(200):
            if len(features.snapshot()) >= 3:
                return
            if index == 2:
                camera.publish(bad)
            stamp = Time(sec=1000 + index, nanosec=index * 1000)
            sent.append(stamp)
            camera.publish(image_msg(index % 200, stamp))
            time.sleep(0.2)

    publish_until_features()
    received = features.snapshot()
    assert len(received) >= 3, graph.tail_logs(30)
    sent_stamps = {stamp_to_nanoseconds(s) for s in sent}
    for msg in received:
        assert stamp_to_nanoseconds(msg.header.stamp) in sent_stamps  # the source image's stamp, not "now"
        assert (msg.grid_height, msg.grid_width, msg.channels) == (16, 16, 192)
        assert msg.encoder_id == "builtin:dinov2-tiny-random@224"
        tokens = msg_to_features(msg)
        assert tokens.shape == (256, 192) and np.isfinite(tokens).all()
    assert all(msg.header.stamp.sec != 99 for msg in received), "a malformed image produced features"
    assert graph.alive() == {"encoder": True}


def test_encoder_drops_a_backlog_instead_of_queueing_it(ros_node, start_nodes):
    graph = start_nodes(NodeSpec("rla_wm_ros", "encoder", name="encoder", param_files=[config_file("encoder.yaml")]))
    features = Inbox()
    ros_node.create_subscription(FeatureMap, "features", features, 100)
    camera = ros_node.create_publisher(Image, "camera/image_raw", qos_profile_sensor_data)
    wait_for(lambda: camera.get_subscription_count() > 0, 60, "the encoder to subscribe", graph)
    # Warm up until the first feature map comes back, then burst 60 frames far faster
    # than the encoder can run.
    deadline = time.monotonic() + 60
    while not features.snapshot():
        assert time.monotonic() < deadline, graph.tail_logs(20)
        camera.publish(image_msg(1, Time(sec=1)))
        time.sleep(0.2)
    time.sleep(0.5)
    features.clear()
    for index in range(60):
        camera.publish(image_msg(index, Time(sec=2000 + index)))
    time.sleep(3.0)
    received = [m.header.stamp.sec for m in features.snapshot()]
    assert received, graph.tail_logs(20)
    assert len(received) < 60, "every frame of the burst was encoded: the camera queue is not depth 1"
    assert max(received) == 2059, "the newest frame must always be encoded"


def test_sim_robot_executes_trajectory_and_resets(ros_node, start_nodes):
    graph = start_nodes(NodeSpec("rla_wm_ros", "sim_robot", name="sim_robot",
                                 param_files=[config_file("sim_robot.yaml")], params={"seed": "3"}))
    states, images, statuses = Inbox(), Inbox(), Inbox()
    ros_node.create_subscription(JointState, "joint_states", states, 10)
    ros_node.create_subscription(Image, "camera/image_raw", images, qos_profile_sensor_data)
    ros_node.create_subscription(EpisodeStatus, "episode_status", statuses, 10)
    commands = ros_node.create_publisher(JointTrajectory, "joint_trajectory", 10)
    wait_for(lambda: len(states.snapshot()) > 2 and images.snapshot(), 60, "joint states and images", graph)

    image = images.snapshot()[-1]
    assert (image.encoding, image.height, image.width) == ("rgb8", 96, 96)
    assert image.header.stamp.sec > 0
    start = np.array(states.snapshot()[-1].position)
    assert list(states.snapshot()[-1].name) == ["agent_x", "agent_y"]
    target = np.clip(start + np.array([60.0, -40.0]), 20, 490)
    wait_for(lambda: commands.get_subscription_count() > 0, 20, "the robot to subscribe to commands", graph)
    # Re-sent with a fresh stamp until executed: the first samples on a new DDS
    # connection may be lost while discovery completes.
    deadline = time.monotonic() + 15
    while np.linalg.norm(np.array(states.snapshot()[-1].position) - target) >= 8.0:
        assert time.monotonic() < deadline, f"agent did not reach {target}:\n{graph.tail_logs(20)}"
        current = np.array(states.snapshot()[-1].position)
        steps = np.linspace(current, target, 6)[1:]
        commands.publish(chunk_to_msg(Chunk(("agent_x", "agent_y"), steps, np.linspace(0.2, 1.0, 5),
                                            ros_node.get_clock().now().to_msg())))
        time.sleep(0.5)

    reset = ros_node.create_client(Trigger, "sim_robot/reset")
    episode_before = statuses.snapshot()[-1].episode
    response = call(ros_node, reset)
    assert response.success and "seed 4" in response.message
    wait_for(lambda: statuses.snapshot()[-1].episode == episode_before + 1, 5, "the next episode", graph)


def gate_spec(**params: str) -> NodeSpec:
    return NodeSpec("rla_wm_ros", "safety_gate", name="safety_gate", param_files=[config_file("safety_gate.yaml")],
                    params={"limits_file": config_file("pusht_limits.yaml"), **params})


class GateHarness:
    """Feeds the gate camera frames and joint states like a live robot; collects its output."""

    def __init__(self, node, graph, compressed: bool = False) -> None:
        self.node, self.graph = node, graph
        self.compressed = compressed
        self.out = Inbox()
        node.create_subscription(JointTrajectory, "joint_trajectory", self.out, 10)
        self.camera = node.create_publisher(CompressedImage if compressed else Image, "camera/image_raw",
                                            qos_profile_sensor_data)
        self.state = node.create_publisher(JointState, "joint_states", 10)
        self.model = node.create_publisher(JointTrajectory, "policy/joint_trajectory", 10)
        self.estop = node.create_publisher(Bool, "estop", LATCHED)
        self.position = np.array([200.0, 300.0])
        self.camera_on = True
        self.streaming_chunks = False  # publish a chunk every other cycle (10 Hz), as a policy does
        self._stop = False
        self._thread = threading.Thread(target=self._feed, daemon=True)
        self._thread.start()
        self.diagnostics = Inbox()
        node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics, 10)
        wait_for(lambda: self.model.get_subscription_count() > 0 and self.camera.get_subscription_count() > 0,
                 60, "the gate to subscribe", graph)
        wait_for(self.gate_sees_inputs, 20, "the gate to report fresh camera and state", graph)
        # DDS may drop the first samples while both ends of the model topic finish
        # matching: send valid chunks until the gate has accepted one.
        deadline = time.monotonic() + 20
        while self.gate_value("forwarded") in (None, "0"):
            assert time.monotonic() < deadline, graph.tail_logs(20)
            self.model.publish(self.chunk([[1.0, 1.0]]))
            time.sleep(0.3)
        self.out.clear()

    def gate_value(self, key: str) -> str | None:
        for array in reversed(self.diagnostics.snapshot()):
            for status in array.status:
                values = {kv.key: kv.value for kv in status.values}
                if key in values:
                    return values[key]
        return None

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
            state = JointState(name=["agent_x", "agent_y"], position=self.position.tolist())
            state.header.stamp = stamp
            self.state.publish(state)
            if self.streaming_chunks and cycle % 2 == 0:
                self.model.publish(self.chunk([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]))
            time.sleep(0.05)

    def chunk(self, offsets, period: float = 0.1) -> JointTrajectory:
        positions = self.position + np.asarray(offsets, dtype=np.float64)
        times = period * np.arange(1, len(positions) + 1)
        return chunk_to_msg(Chunk(("agent_x", "agent_y"), positions, times, self.node.get_clock().now().to_msg()))

    def send_and_collect(self, msg: JointTrajectory, wait: float = 0.6) -> list[JointTrajectory]:
        self.out.clear()
        self.model.publish(msg)
        time.sleep(wait)
        return self.out.snapshot()

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=2)


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


def forwarded(messages: list[JointTrajectory]) -> list[JointTrajectory]:
    return [m for m in messages if m.points]


def holds(messages: list[JointTrajectory]) -> list[JointTrajectory]:
    return [m for m in messages if not m.points]


def test_gate_forwards_valid_chunk_and_blocks_nan_and_out_of_limit(gate):
    good = gate.chunk([[5.0, 5.0], [10.0, 10.0], [15.0, 15.0]])
    out = gate.send_and_collect(good)
    assert len(forwarded(out)) == 1 and forwarded(out)[0].points[2].positions[0] == pytest.approx(215.0)

    with_nan = gate.chunk([[5.0, 5.0], [float("nan"), 10.0]])
    out = gate.send_and_collect(with_nan)
    assert not forwarded(out) and holds(out), "a NaN chunk must be replaced by a hold"

    # Only the LAST point leaves the workspace: the whole chunk must be refused.
    gate.position = np.array([500.0, 300.0])
    time.sleep(0.2)
    out = gate.send_and_collect(gate.chunk([[2.0, 0.0], [6.0, 0.0], [14.0, 0.0]]))
    assert not forwarded(out) and holds(out)

    gate.position = np.array([200.0, 300.0])
    time.sleep(0.2)
    too_fast = gate.chunk([[150.0, 0.0]])  # 150 px in 0.1 s = 1500 px/s > 600 px/s
    assert not forwarded(gate.send_and_collect(too_fast))
    ragged = gate.chunk([[1.0, 1.0]])
    ragged.points[0].positions = [201.0]
    assert not forwarded(gate.send_and_collect(ragged))
    assert all(gate.graph.alive().values())


def test_gate_holds_when_camera_stops_and_refuses_until_it_returns(camera_gate):
    gate = camera_gate
    gate.streaming_chunks = True
    wait_for(lambda: len(forwarded(gate.out.snapshot())) >= 3, 5, "chunks to flow through the gate", gate.graph)
    gate.out.clear()
    gate.camera_on = False
    stopped = time.monotonic()
    wait_for(lambda: holds(gate.out.snapshot()), 3.0, "a hold after the camera stopped", gate.graph)
    held_after = time.monotonic() - stopped
    # camera_timeout is 0.5 s and the watchdog runs at 50 Hz; allow for DDS and scheduling jitter.
    assert held_after < 0.5 + 0.3, f"hold came {held_after:.2f}s after the camera stopped"
    gate.out.clear()
    time.sleep(1.0)  # the policy keeps streaming: nothing may get through
    assert not forwarded(gate.out.snapshot())
    gate.camera_on = True
    wait_for(lambda: forwarded(gate.out.snapshot()), 3.0, "commands to flow again with the camera back", gate.graph)


def test_gate_estop_latches_until_reset(gate, ros_node):
    estop = ros_node.create_client(Trigger, "safety_gate/estop")
    reset = ros_node.create_client(Trigger, "safety_gate/reset")
    assert call(ros_node, estop).success
    for _ in range(2):
        assert not forwarded(gate.send_and_collect(gate.chunk([[1.0, 1.0]])))
    assert call(ros_node, reset).success
    assert forwarded(gate.send_and_collect(gate.chunk([[1.0, 1.0]])))
    # The topic form of the e-stop latches the same way.
    gate.estop.publish(Bool(data=True))
    time.sleep(0.3)
    assert not forwarded(gate.send_and_collect(gate.chunk([[1.0, 1.0]])))
    assert call(ros_node, reset).success
    assert forwarded(gate.send_and_collect(gate.chunk([[1.0, 1.0]])))


def test_gate_dry_run_sends_nothing(ros_node, start_nodes):
    harness = GateHarness(ros_node, start_nodes(gate_spec(dry_run="true")))
    try:
        assert harness.send_and_collect(harness.chunk([[1.0, 1.0]]), wait=1.0) == []
    finally:
        harness.close()


def test_gate_refuses_to_start_without_limits(start_nodes):
    graph = start_nodes(NodeSpec("rla_wm_ros", "safety_gate", name="safety_gate",
                                 param_files=[config_file("safety_gate.yaml")]))
    wait_for(lambda: not graph.alive()["safety_gate"], 30, "the gate to exit")
    assert graph.returncodes()["safety_gate"] != 0
    assert "limits_file is required" in graph.tail_logs(40)


def test_encoder_publishes_latent_actions_between_frame_t_minus_h_and_t(ros_node, start_nodes, tmp_path):
    from rla_wm.rla import RLAAutoencoder, RLAConfig
    from rla_wm_msgs.msg import LatentAction
    from rla_wm_ros.conversions import msg_to_latent

    config = RLAConfig(latent_tokens=4, latent_dim=6, width=32, encoder_depth=1, decoder_depth=1, heads=2)
    RLAAutoencoder(config).save(tmp_path / "rla")
    graph = start_nodes(NodeSpec("rla_wm_ros", "encoder", name="encoder", param_files=[config_file("encoder.yaml")],
                                 params={"rla_checkpoint": str(tmp_path / "rla"), "rla_horizon": "2",
                                         "rla_fps": "10.0"}))
    latents = Inbox()
    ros_node.create_subscription(LatentAction, "latent_action", latents, 10)
    camera = ros_node.create_publisher(Image, "camera/image_raw", qos_profile_sensor_data)
    wait_for(lambda: camera.get_subscription_count() > 0, 60, "the encoder to subscribe", graph)
    for index in range(60):
        if len(latents.snapshot()) >= 2:
            break
        # Camera stamps 0.1 s apart, published slowly enough that no frame is dropped.
        camera.publish(image_msg(index, Time(sec=500 + index // 10, nanosec=(index % 10) * 100_000_000)))
        time.sleep(0.25)
    received = latents.snapshot()
    assert len(received) >= 2, graph.tail_logs(30)
    for msg in received:
        gap = stamp_to_nanoseconds(msg.header.stamp) - stamp_to_nanoseconds(msg.start_stamp)
        assert abs(gap - 200_000_000) < 1_000, f"latent spans {gap} ns, expected 0.2 s"
        assert (msg.tokens, msg.dim, msg.horizon) == (4, 6, 2)
        assert np.isfinite(msg_to_latent(msg)).all()
