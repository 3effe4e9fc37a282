"""Each node in its own process, talking to the test over real rclpy + Fast DDS."""

from __future__ import annotations

import time

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from rla_wm_msgs.msg import EpisodeStatus, FeatureMap
from rla_wm_ros.conversions import Chunk, chunk_to_msg, msg_to_features, stamp_to_nanoseconds
from rla_wm_ros.image_conversion import CvBridge
from rla_wm_ros.launch_xml import NodeSpec

from conftest import Inbox, config_file, wait_for

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


def encoder_status(diagnostics: Inbox):
    for array in reversed(diagnostics.snapshot()):
        for status in array.status:
            if status.name.startswith("encoder:"):
                return {kv.key: kv.value for kv in status.values}
    return {}


def test_encoder_counts_malformed_images_on_diagnostics_and_keeps_encoding(ros_node, start_nodes):
    graph = start_nodes(NodeSpec("rla_wm_ros", "encoder", name="encoder", param_files=[config_file("encoder.yaml")]))
    features, diagnostics = Inbox(), Inbox()
    ros_node.create_subscription(FeatureMap, "features", features, 10)
    ros_node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics, 10)
    camera = ros_node.create_publisher(Image, "camera/image_raw", qos_profile_sensor_data)
    wait_for(
        lambda: camera.get_subscription_count() > 0 and encoder_status(diagnostics),
        60,
        "the encoder to subscribe and report",
        graph,
    )

    def raw(encoding: str, height: int, width: int, step: int, data: bytes) -> Image:
        msg = Image(encoding=encoding, height=height, width=width, step=step, data=data)
        msg.header.stamp = Time(sec=99)
        return msg

    malformed = [
        CvBridge().cv2_to_imgmsg(np.zeros((4, 4), np.float32), encoding="32FC1"),  # no colour meaning
        raw("rgb8", 0, 0, 0, b""),  # empty
        raw("yuv_unknown", 2, 2, 6, bytes(12)),  # unknown encoding
        raw("rgb8", 1000, 1000, 3000, bytes(12)),  # data far shorter than declared
    ]
    for count, msg in enumerate(malformed, start=1):
        msg.header.stamp = Time(sec=99)

        def counted(count: int = count) -> bool:
            return encoder_status(diagnostics).get("rejected/on_image/bad_image") == str(count)

        deadline = time.monotonic() + 20
        while not counted():
            assert time.monotonic() < deadline, f"image {count} was not counted\n{graph.tail_logs(30)}"
            camera.publish(msg)
            retry = time.monotonic() + 3.0  # best effort: sent again only if it never arrived
            while not counted() and time.monotonic() < retry:
                time.sleep(0.05)
    values = encoder_status(diagnostics)
    assert (
        values["frames_rejected"] == values["rejected_inputs"] == str(len(malformed))
        and values["frames_encoded"] == "0"
    )
    assert graph.alive() == {"encoder": True}
    deadline = time.monotonic() + 30
    while not features.snapshot():
        assert time.monotonic() < deadline, graph.tail_logs(30)
        camera.publish(image_msg(7, Time(sec=1234)))
        time.sleep(0.3)
    assert all(msg.header.stamp.sec == 1234 for msg in features.snapshot())


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
    graph = start_nodes(
        NodeSpec(
            "rla_wm_ros",
            "sim_robot",
            name="sim_robot",
            param_files=[config_file("sim_robot.yaml")],
            params={"seed": "3"},
        )
    )
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
        commands.publish(
            chunk_to_msg(
                Chunk(("agent_x", "agent_y"), steps, np.linspace(0.2, 1.0, 5), ros_node.get_clock().now().to_msg())
            )
        )
        time.sleep(0.5)

    reset = ros_node.create_client(Trigger, "sim_robot/reset")
    episode_before = statuses.snapshot()[-1].episode
    response = call(ros_node, reset)
    assert response.success and "seed 4" in response.message
    wait_for(lambda: statuses.snapshot()[-1].episode == episode_before + 1, 5, "the next episode", graph)


def test_sim_robot_follows_jtc_rules_and_survives_bad_commands(ros_node, start_nodes):
    """Commands sent straight to the sim (no gate): an empty trajectory is refused and the running one
    continues, as on joint_trajectory_controller; NaN targets are refused by the drive, and the node
    lives on."""
    graph = start_nodes(
        NodeSpec(
            "rla_wm_ros",
            "sim_robot",
            name="sim_robot",
            param_files=[config_file("sim_robot.yaml")],
            params={"seed": "3"},
        )
    )
    states = Inbox()
    ros_node.create_subscription(JointState, "joint_states", states, 10)
    commands = ros_node.create_publisher(JointTrajectory, "joint_trajectory", 10)
    wait_for(lambda: len(states.snapshot()) > 2 and commands.get_subscription_count() > 0, 60, "the sim", graph)
    time.sleep(0.5)  # discovery settles both ways before the commands that must not be lost
    start = np.array(states.snapshot()[-1].position)
    target = np.clip(start + np.array([80.0, 0.0]), 20, 490)
    # A slow 3 s move, then at once an empty trajectory: a real JTC refuses it and keeps moving.
    commands.publish(chunk_to_msg(Chunk(("agent_x", "agent_y"), target[None, :], np.array([3.0]), Time())))
    time.sleep(0.3)
    commands.publish(JointTrajectory(joint_names=["agent_x", "agent_y"]))
    wait_for(
        lambda: abs(states.snapshot()[-1].position[0] - target[0]) < 10.0,
        10,
        "the move to continue past the empty trajectory",
        graph,
    )
    nan = chunk_to_msg(Chunk(("agent_x", "agent_y"), np.array([[float("nan"), 100.0]]), np.array([0.2]), Time()))
    for _ in range(3):
        commands.publish(nan)
        time.sleep(0.2)
    wait_for(lambda: "non-finite joint target" in graph.tail_logs(40), 5, "the sim to refuse NaN targets", graph)
    time.sleep(0.5)
    assert all(graph.alive().values()), graph.tail_logs(20)
    assert np.isfinite(states.snapshot()[-1].position).all()
    assert "rejected trajectory (empty trajectory" in graph.tail_logs(60)


def test_encoder_publishes_latent_actions_between_frame_t_minus_h_and_t(ros_node, start_nodes, tmp_path):
    from rla_wm.models.rla import RLAAutoencoder, RLAConfig
    from rla_wm_msgs.msg import LatentAction
    from rla_wm_ros.conversions import msg_to_latent

    config = RLAConfig(latent_tokens=4, latent_dim=6, width=32, encoder_depth=1, decoder_depth=1, heads=2)
    RLAAutoencoder(config).save(tmp_path / "rla")
    graph = start_nodes(
        NodeSpec(
            "rla_wm_ros",
            "encoder",
            name="encoder",
            param_files=[config_file("encoder.yaml")],
            params={"rla_checkpoint": str(tmp_path / "rla"), "rla_horizon": "2", "rla_fps": "10.0"},
        )
    )
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
