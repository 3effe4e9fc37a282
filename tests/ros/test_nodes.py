"""Each node in its own process, talking to the test over real rclpy + Fast DDS."""

from __future__ import annotations

import threading

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

from conftest import Inbox, call_service, config_file, publish_until, wait_for

pytestmark = pytest.mark.timeout(120)


def image_msg(value: int, stamp: Time, height: int = 96, width: int = 96) -> Image:
    frame = np.full((height, width, 3), value, dtype=np.uint8)
    frame[: height // 2, :, 0] = 255 - value
    msg = CvBridge().cv2_to_imgmsg(frame, encoding="rgb8")
    msg.header.stamp = stamp
    return msg


def encoder_status(diagnostics: Inbox):
    for array in reversed(diagnostics.snapshot()):
        for status in array.status:
            if status.name.startswith("encoder:"):
                return {kv.key: kv.value for kv in status.values}
    return {}


def feature_stamps(features: Inbox) -> set[int]:
    return {stamp_to_nanoseconds(msg.header.stamp) for msg in features.snapshot()}


def start_encoder(ros_node, start_nodes, **params: str):
    """The encoder node with config/encoder.yaml (and `params`), and a camera publisher with the QoS of a
    camera driver, once the encoder has subscribed to it: (graph, camera)."""
    graph = start_nodes(
        NodeSpec("rla_wm_ros", "encoder", name="encoder", param_files=[config_file("encoder.yaml")], params=params)
    )
    camera = ros_node.create_publisher(Image, "camera/image_raw", qos_profile_sensor_data)
    wait_for(lambda: camera.get_subscription_count() > 0, 60, "the encoder to subscribe to the camera", graph)
    return graph, camera


def test_encoder_turns_images_into_feature_maps_with_source_stamp(ros_node, start_nodes):
    features, diagnostics = Inbox(), Inbox()
    ros_node.create_subscription(FeatureMap, "features", features, 10)
    ros_node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics, 10)
    graph, camera = start_encoder(ros_node, start_nodes)

    sent: list[Time] = []
    for index in range(3):
        stamp = Time(sec=1000 + index, nanosec=index * 1000)
        sent.append(stamp)
        # One frame at a time (sent again if best effort lost it), each waited for by its stamp.
        publish_until(
            lambda stamp=stamp, index=index: camera.publish(image_msg(index, stamp)),
            lambda stamp=stamp: stamp_to_nanoseconds(stamp) in feature_stamps(features),
            60,
            f"the feature map of frame {index}",
            graph,
            every=3.0,
        )
    # A malformed frame: the encoder counts it as refused (so it did arrive) and publishes nothing for it.
    bad = image_msg(0, Time(sec=99, nanosec=1))
    bad.data = bytes(bad.data)[:-5]  # length disagrees with height * step
    publish_until(
        lambda: camera.publish(bad),
        lambda: int(encoder_status(diagnostics).get("rejected/on_image/bad_image", 0)) >= 1,
        30,
        "the encoder to count the malformed frame",
        graph,
        every=3.0,
    )
    # A good frame after it is encoded; the feature maps arrive in order, so none for the bad one can follow.
    last = Time(sec=2000)
    sent.append(last)
    publish_until(
        lambda: camera.publish(image_msg(50, last)),
        lambda: stamp_to_nanoseconds(last) in feature_stamps(features),
        30,
        "the feature map of the frame after the malformed one",
        graph,
        every=3.0,
    )
    received = features.snapshot()
    assert feature_stamps(features) == {stamp_to_nanoseconds(s) for s in sent}  # the source stamps, not "now"
    assert all(msg.header.stamp.sec != 99 for msg in received), "a malformed image produced features"
    for msg in received:
        assert (msg.grid_height, msg.grid_width, msg.channels) == (16, 16, 192)
        assert msg.encoder_id == "builtin:dinov2-tiny-random@224"
        tokens = msg_to_features(msg)
        assert tokens.shape == (256, 192) and np.isfinite(tokens).all()
    # Different frames give different features (not a constant output).
    assert not np.allclose(msg_to_features(received[0]), msg_to_features(received[-1]))
    assert graph.alive() == {"encoder": True}


def test_encoder_counts_malformed_images_on_diagnostics_and_keeps_encoding(ros_node, start_nodes):
    features, diagnostics = Inbox(), Inbox()
    ros_node.create_subscription(FeatureMap, "features", features, 10)
    ros_node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics, 10)
    graph, camera = start_encoder(ros_node, start_nodes)
    wait_for(lambda: encoder_status(diagnostics), 60, "the encoder to report", graph)

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

        # Best effort: sent again only if it was never counted.
        publish_until(
            lambda msg=msg: camera.publish(msg),
            lambda count=count: int(encoder_status(diagnostics).get("rejected/on_image/bad_image", 0)) >= count,
            30,
            f"malformed image {count} to be counted",
            graph,
            every=5.0,
        )
    values = encoder_status(diagnostics)
    # Every one counted (one sent again because its count came late counts twice) and none encoded.
    assert int(values["frames_rejected"]) == int(values["rejected_inputs"]) >= len(malformed)
    assert values["frames_encoded"] == "0"
    assert graph.alive() == {"encoder": True}
    publish_until(lambda: camera.publish(image_msg(7, Time(sec=1234))), features.snapshot, 30, "a feature map", graph)
    assert all(msg.header.stamp.sec == 1234 for msg in features.snapshot())


def test_encoder_drops_a_backlog_instead_of_queueing_it(ros_node, start_nodes):
    features = Inbox()
    ros_node.create_subscription(FeatureMap, "features", features, 100)
    graph, camera = start_encoder(ros_node, start_nodes)
    # Warm up until the first feature map comes back, then burst 60 frames far faster
    # than the encoder can run.
    publish_until(
        lambda: camera.publish(image_msg(1, Time(sec=1))), features.snapshot, 60, "a first feature map", graph
    )
    for index in range(59):
        camera.publish(image_msg(index, Time(sec=2000 + index)))
    # The newest frame is always encoded (a depth-1 queue keeps it), and it is encoded last: once its
    # feature map is here, every feature map of the burst is. (Sent again only if best effort lost it.)
    publish_until(
        lambda: camera.publish(image_msg(59, Time(sec=2059))),
        lambda: 2059 in {m.header.stamp.sec for m in features.snapshot()},
        60,
        "the burst's last frame",
        graph,
        every=5.0,
    )
    burst = [m.header.stamp.sec for m in features.snapshot() if m.header.stamp.sec >= 2000]
    assert burst[-1] == 2059 and burst == sorted(burst)
    assert len(burst) < 60, "every frame of the burst was encoded: the camera queue is not depth 1"


def test_encoder_max_rate_encodes_frames_at_most_that_often_by_their_stamps(ros_node, start_nodes):
    features = Inbox()
    ros_node.create_subscription(FeatureMap, "features", features, 100)
    graph, camera = start_encoder(ros_node, start_nodes, max_rate="2.0")
    publish_until(
        lambda: camera.publish(image_msg(1, Time(sec=1))), features.snapshot, 60, "a first feature map", graph
    )
    # A 10 Hz camera, paced so the encoder keeps up: 40 frames over 4 s of stamps.
    pause = threading.Event()
    for index in range(40):
        camera.publish(image_msg(index, Time(sec=100 + index // 10, nanosec=(index % 10) * 100_000_000)))
        pause.wait(0.1)
    wait_for(lambda: any(m.header.stamp.sec >= 103 for m in features.snapshot()), 30, "the last second's frame", graph)
    stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for m in features.snapshot()]
    stamps = [t for t in stamps if t >= 100]
    # 2 per second of stamps: 0.5 s apart (frames lost in transport could only widen a gap), 8 of 40.
    assert 5 <= len(stamps) <= 8, stamps
    assert min(np.diff(stamps)) >= 0.49, stamps


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
    # A step's camera frame and joint state carry one stamp.
    wait_for(
        lambda: (
            {stamp_to_nanoseconds(m.header.stamp) for m in images.snapshot()}
            & {stamp_to_nanoseconds(m.header.stamp) for m in states.snapshot()}
        ),
        10,
        "a camera frame and a joint state with the same stamp",
        graph,
    )
    start = np.array(states.snapshot()[-1].position)
    assert list(states.snapshot()[-1].name) == ["agent_x", "agent_y"]
    target = np.clip(start + np.array([60.0, -40.0]), 20, 490)
    wait_for(lambda: commands.get_subscription_count() > 0, 20, "the robot to subscribe to commands", graph)

    def command_towards_target() -> None:
        current = np.array(states.snapshot()[-1].position)
        steps = np.linspace(current, target, 6)[1:]
        stamp = ros_node.get_clock().now().to_msg()
        commands.publish(chunk_to_msg(Chunk(("agent_x", "agent_y"), steps, np.linspace(0.2, 1.0, 5), stamp)))

    # Re-sent with a fresh stamp until executed: the first samples on a new DDS
    # connection may be lost while discovery completes.
    publish_until(
        command_towards_target,
        lambda: np.linalg.norm(np.array(states.snapshot()[-1].position) - target) < 8.0,
        30,
        f"the agent to reach {target}",
        graph,
        every=0.5,
    )

    reset = ros_node.create_client(Trigger, "sim_robot/reset")
    episode_before = statuses.snapshot()[-1].episode
    response = call_service(reset, graph=graph)
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
    start = np.array(states.snapshot()[-1].position)
    target = start + np.array([80.0 if start[0] < 256 else -80.0, 0.0])
    toward_target = np.sign(target[0] - start[0])

    def moved() -> float:
        return (states.snapshot()[-1].position[0] - start[0]) * toward_target

    # A slow 6 s move, sent until the agent is seen moving (the first samples on a new DDS connection
    # may be lost); then at once an empty trajectory: a real JTC refuses it and keeps moving.
    slow_move = chunk_to_msg(Chunk(("agent_x", "agent_y"), target[None, :], np.array([6.0]), Time()))
    publish_until(lambda: commands.publish(slow_move), lambda: moved() > 2.0, 20, "the slow move to start", graph)
    empty = JointTrajectory(joint_names=["agent_x", "agent_y"])
    at_refusal: list[float] = []

    def refused() -> bool:
        if "rejected trajectory (empty trajectory" not in graph.tail_logs(60):
            return False
        at_refusal.append(moved())
        return True

    publish_until(lambda: commands.publish(empty), refused, 20, "the sim to refuse the empty trajectory", graph)
    # It was refused mid-move (80 px in 6 s)...
    assert at_refusal[0] < 70.0, f"the empty trajectory arrived after the move ended ({at_refusal[0]:.0f} px)"
    # ...and the move went on to its target.
    wait_for(
        lambda: abs(states.snapshot()[-1].position[0] - target[0]) < 10.0,
        20,
        "the move to continue past the empty trajectory",
        graph,
    )
    nan = chunk_to_msg(Chunk(("agent_x", "agent_y"), np.array([[float("nan"), 100.0]]), np.array([0.2]), Time()))
    publish_until(
        lambda: commands.publish(nan),
        lambda: "non-finite joint target" in graph.tail_logs(40),
        20,
        "the sim to refuse NaN targets",
        graph,
    )
    # The sim lives on after the NaN targets: ten more joint states, all finite.
    seen = len(states.snapshot())
    wait_for(lambda: len(states.snapshot()) >= seen + 10, 20, "joint states after the NaN targets", graph)
    assert all(graph.alive().values()), graph.tail_logs(20)
    assert all(np.isfinite(msg.position).all() for msg in states.snapshot()[seen:])


def test_encoder_publishes_latent_actions_between_frame_t_minus_h_and_t(ros_node, start_nodes, tmp_path):
    from rla_wm.models.rla import RLAAutoencoder, RLAConfig
    from rla_wm_msgs.msg import LatentAction
    from rla_wm_ros.conversions import msg_to_latent

    config = RLAConfig(latent_tokens=4, latent_dim=6, width=32, encoder_depth=1, decoder_depth=1, heads=2)
    RLAAutoencoder(config).save(tmp_path / "rla")
    latents, features = Inbox(), Inbox()
    ros_node.create_subscription(LatentAction, "latent_action", latents, 10)
    ros_node.create_subscription(FeatureMap, "features", features, 10)
    graph, camera = start_encoder(
        ros_node, start_nodes, rla_checkpoint=str(tmp_path / "rla"), rla_horizon="2", rla_fps="10.0"
    )
    for index in range(6):
        # Camera stamps 0.1 s apart, each frame sent once the previous one is encoded, so none is dropped.
        stamp = Time(sec=500 + index // 10, nanosec=(index % 10) * 100_000_000)
        publish_until(
            lambda stamp=stamp, index=index: camera.publish(image_msg(index, stamp)),
            lambda stamp=stamp: stamp_to_nanoseconds(stamp) in feature_stamps(features),
            60,
            f"the feature map of frame {index}",
            graph,
            every=3.0,
        )
    # Frames 2..5 each have the frame two before them (h = 2 at 10 fps): four latent actions, the last
    # published with the last frame's feature map or just after it.
    wait_for(lambda: len(latents.snapshot()) >= 4, 10, "four latent actions", graph)
    received = latents.snapshot()
    assert sorted({stamp_to_nanoseconds(msg.header.stamp) for msg in received}) == [
        500_000_000_000 + k * 100_000_000 for k in range(2, 6)
    ]
    for msg in received:
        gap = stamp_to_nanoseconds(msg.header.stamp) - stamp_to_nanoseconds(msg.start_stamp)
        assert abs(gap - 200_000_000) < 1_000, f"latent spans {gap} ns, expected 0.2 s"
        assert (msg.tokens, msg.dim, msg.horizon) == (4, 6, 2)
        assert np.isfinite(msg_to_latent(msg)).all()


def test_encoder_with_the_pose_estimator_publishes_the_block_pose_and_refuses_a_frame_without_a_t(
    ros_node, start_nodes
):
    """A sim camera frame becomes the block-state token of its true pose; a black frame (a dead camera)
    is a counted rejection with nothing published, so no policy acts on a made-up pose."""
    from rla_wm.envs.pusht.privileged import BLOCK_STATE_ENCODER_ID, block_pose_from_tokens
    from rla_wm.envs.pusht.sim import PushTSim

    features, diagnostics = Inbox(), Inbox()
    ros_node.create_subscription(FeatureMap, "features", features, 10)
    ros_node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics, 10)
    graph, camera = start_encoder(ros_node, start_nodes, model="builtin:sim-pusht-pose-cnn")

    sim = PushTSim(max_steps=5)
    frame = sim.reset(seed=7)
    good = CvBridge().cv2_to_imgmsg(frame.image, encoding="rgb8")
    good.header.stamp = Time(sec=10)
    publish_until(
        lambda: camera.publish(good),
        lambda: stamp_to_nanoseconds(good.header.stamp) in feature_stamps(features),
        60,
        "the block pose of the sim frame",
        graph,
        every=3.0,
    )
    msg = features.snapshot()[-1]
    assert msg.encoder_id == BLOCK_STATE_ENCODER_ID and (msg.grid_height, msg.grid_width) == (1, 1)
    pose = block_pose_from_tokens(msg_to_features(msg))[0]
    assert np.hypot(*(pose[:2] - frame.block_pose[:2])) < 3.0, (pose, frame.block_pose)

    dead = CvBridge().cv2_to_imgmsg(np.zeros_like(frame.image), encoding="rgb8")
    dead.header.stamp = Time(sec=20)
    publish_until(
        lambda: camera.publish(dead),
        lambda: int(encoder_status(diagnostics).get("rejected/on_image/unencodable_image", 0)) >= 1,
        30,
        "the encoder to refuse the black frame",
        graph,
        every=3.0,
    )
    assert all(m.header.stamp.sec != 20 for m in features.snapshot()), "a frame without a T produced a pose"
