"""Drive closed-loop episodes on a running graph and measure it from the outside.

An observer node listens to the same topics the nodes use: camera frames,
feature maps, model chunks and the gated commands the robot executes. Every chunk
carries its camera frame's stamp; a gated command is the gate's re-timed copy of a
chunk's remaining points (zero stamp), so it is traced back to its chunk by those
points. Each stage's latency is thus measured per frame: camera -> features ->
policy chunk -> command at the robot. A command that is no chunk's tail is a hold.
The model's chunks are timed from the FeatureMap topic the model node reads, as the ROS
graph reports it: the encoder's /features, or e.g. the sim's /sim/block_state. The arithmetic from
arrival times to per-stage latencies is ROS-free, in `rla_wm.evaluation.latency`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from rla_wm.control.freshness import remember_newest
from rla_wm.control.jtc import is_tail_of
from rla_wm.evaluation.latency import LatencyLog
from rla_wm_msgs.msg import EpisodeStatus, FeatureMap
from rla_wm_ros.background_spin import BackgroundSpin
from rla_wm_ros.conversions import MessageShapeError, msg_to_features, stamp_to_nanoseconds
from rla_wm_ros.image_conversion import CvBridgeError, image_msg_to_rgb
from rla_wm_ros.qos import CAMERA_QOS

FEATURES_TOPIC = "/features"  # the encoder's output
FEATURE_MAP_TYPE = "rla_wm_msgs/msg/FeatureMap"
IMAGE_TYPE = "sensor_msgs/msg/Image"
RECENT = 20  # frames, feature maps and chunks kept per table
# An episode's frames kept for its video: 30 s at 10 Hz (decoded only after the episode).
MAX_EPISODE_FRAMES = 300


@dataclass
class EpisodeResult:
    episode: int
    success: bool
    coverage: float
    steps: int
    wall_seconds: float
    commands: int
    holds: int
    picture: np.ndarray | None = None
    frames: list[np.ndarray] | None = None  # the episode's camera frames, when asked for (keep_frames)


def _rgb_or_none(msg: Image | None) -> np.ndarray | None:
    if msg is None:
        return None
    try:
        return image_msg_to_rgb(msg)
    except CvBridgeError:
        return None


class ClosedLoopObserver(Node):
    """Resets the simulated robot, watches episodes, and logs stage latencies."""

    def __init__(
        self,
        command_topic: str,
        model_topic: str = "/policy/joint_trajectory",
        reset_service: str = "/sim_robot/reset",
        sim_clock: bool = False,
        camera_topic: str = "/camera/image_raw",
        extra_camera_topics: tuple[str, ...] = (),
        extra_feature_topics: dict[str, str] | None = None,
    ) -> None:
        """extra_feature_topics: camera topic of `extra_camera_topics` -> the FeatureMap topic an encoder
        of that camera publishes (the arm's wrist encoder), drawn beside the camera in the picture."""
        super().__init__("closed_loop_observer")
        self.model_topic = model_topic
        self.camera_topic = camera_topic
        self.model_input_topic: str | None = None  # found in the graph (find_model_input)
        self.latency = LatencyLog(stamps_are_wall_time=not sim_clock)
        self.status: EpisodeStatus | None = None
        self.commands = 0
        self.holds = 0
        self._lock = threading.Lock()
        self._frames: dict[int, Image] = {}  # decoded only for the episode picture, off the camera hot path
        self._features: dict[int, FeatureMap] = {}
        self._chunks: dict[int, tuple[list[str], np.ndarray]] = {}  # stamp -> (joint names, positions)
        self.episode_images: list[Image] | None = None  # collected while not None
        self.create_subscription(Image, camera_topic, self.on_image, CAMERA_QOS)
        # Other cameras (the arm's wrist camera), for the episode picture only: their recent frames and,
        # where an encoder reads them, its recent feature maps, paired by stamp.
        self.extra_frames: dict[str, dict[int, Image]] = {topic: {} for topic in extra_camera_topics}
        self.extra_features: dict[str, dict[int, FeatureMap]] = {}
        for topic in extra_camera_topics:
            self.create_subscription(Image, topic, lambda msg, topic=topic: self.on_extra_image(topic, msg), CAMERA_QOS)
        for camera, features in (extra_feature_topics or {}).items():
            if camera not in self.extra_frames:
                raise ValueError(f"extra feature topic {features} for {camera}, which is not an extra camera")
            self.extra_features[camera] = {}
            self.create_subscription(
                FeatureMap, features, lambda msg, camera=camera: self.on_extra_features(camera, msg), 10
            )
        self.create_subscription(FeatureMap, FEATURES_TOPIC, self.on_features, 10)
        self.create_subscription(JointTrajectory, model_topic, self.on_chunk, 10)
        self.create_subscription(JointTrajectory, command_topic, self.on_command, 10)
        self.create_subscription(EpisodeStatus, "/episode_status", self.on_status, 10)
        self.reset_client = self.create_client(Trigger, reset_service)
        self._input_timer = self.create_timer(0.5, self.find_model_input)

    def find_model_input(self) -> None:
        """Time features_to_chunk from the one FeatureMap topic the node publishing the model's chunks
        subscribes to, once discovery shows that node (timing /features when the model reads
        another topic would put a chunk before its own input). A node that reads no FeatureMap but
        one camera (a LeRobot policy folder) is timed from that camera's frames."""
        for publisher in self.get_publishers_info_by_topic(self.model_topic):
            try:
                topics = self.get_subscriber_names_and_types_by_node(publisher.node_name, publisher.node_namespace)
            except RuntimeError:  # NodeNameNonExistentError while discovery is under way
                continue
            inputs = [topic for topic, types in topics if FEATURE_MAP_TYPE in types]
            reads_features = bool(inputs)
            if not reads_features:
                inputs = [topic for topic, types in topics if IMAGE_TYPE in types]
            if len(inputs) == 1:
                break
        else:
            return
        self._input_timer.cancel()
        topic = inputs[0]
        if not reads_features and topic == self.camera_topic:
            self.latency.model_inputs = self.latency.frames  # on_image already logs these arrivals
        elif topic != FEATURES_TOPIC:
            self.latency.model_inputs = {}
            if reads_features:
                self.create_subscription(FeatureMap, topic, self.on_model_input, 10)
            else:
                self.create_subscription(Image, topic, self.on_model_input, CAMERA_QOS)
        self.model_input_topic = topic

    def on_image(self, msg: Image) -> None:
        stamp = stamp_to_nanoseconds(msg.header.stamp)
        self.latency.frames.setdefault(stamp, time.time_ns())
        with self._lock:
            remember_newest(self._frames, stamp, msg, RECENT)
            if self.episode_images is not None and len(self.episode_images) < MAX_EPISODE_FRAMES:
                self.episode_images.append(msg)

    def on_extra_image(self, topic: str, msg: Image) -> None:
        with self._lock:
            remember_newest(self.extra_frames[topic], stamp_to_nanoseconds(msg.header.stamp), msg, RECENT)

    def on_extra_features(self, camera: str, msg: FeatureMap) -> None:
        with self._lock:
            remember_newest(self.extra_features[camera], stamp_to_nanoseconds(msg.header.stamp), msg, RECENT)

    def picture_rows(self) -> list[np.ndarray]:
        """The episode picture's rows: the main camera's, then one per extra camera (`camera_row`)."""
        with self._lock:
            cameras = [(dict(self._frames), dict(self._features))]
            cameras += [(dict(frames), dict(self.extra_features.get(t, {}))) for t, frames in self.extra_frames.items()]
        return [row for row in (camera_row(frames, features) for frames, features in cameras) if row is not None]

    def on_features(self, msg: FeatureMap) -> None:
        stamp = stamp_to_nanoseconds(msg.header.stamp)
        with self._lock:
            self.latency.features[stamp] = time.time_ns()
            remember_newest(self._features, stamp, msg, RECENT)

    def on_model_input(self, msg: FeatureMap | Image) -> None:
        if self.latency.model_inputs is not None:
            self.latency.model_inputs.setdefault(stamp_to_nanoseconds(msg.header.stamp), time.time_ns())

    def on_chunk(self, msg: JointTrajectory) -> None:
        stamp = stamp_to_nanoseconds(msg.header.stamp)
        self.latency.chunks.setdefault(stamp, time.time_ns())
        try:
            positions = np.array([p.positions for p in msg.points], dtype=np.float64)
        except ValueError:  # ragged: the gate refuses it anyway
            return
        with self._lock:
            remember_newest(self._chunks, stamp, (list(msg.joint_names), positions), RECENT)

    def on_command(self, msg: JointTrajectory) -> None:
        arrival = time.time_ns()
        stamp = self._source_chunk(msg)
        if stamp is None:
            self.holds += 1
            return
        self.commands += 1
        self.latency.commands.setdefault(stamp, arrival)

    def _source_chunk(self, msg: JointTrajectory) -> int | None:
        """Stamp of the newest chunk whose last points are exactly this command's points."""
        names = list(msg.joint_names)
        command = np.array([p.positions for p in msg.points], dtype=np.float64).reshape(len(msg.points), -1)
        with self._lock:
            chunks = sorted(self._chunks.items(), reverse=True)
        for stamp, (chunk_names, positions) in chunks:
            if sorted(chunk_names) != sorted(names) or positions.ndim != 2:
                continue
            if is_tail_of(command, positions[:, [chunk_names.index(n) for n in names]]):
                return stamp
        return None

    def on_status(self, msg: EpisodeStatus) -> None:
        self.status = msg


def _frame_with_features(
    frames: dict[int, Image], features: dict[int, FeatureMap]
) -> tuple[np.ndarray, FeatureMap, np.ndarray] | None:
    """The newest frame of `frames` (by stamp) that has a feature map: (rgb, the feature map, its tokens)."""
    for stamp in sorted(features, reverse=True):
        if stamp in frames:
            msg = features[stamp]
            try:
                return image_msg_to_rgb(frames[stamp]), msg, msg_to_features(msg)
            except (MessageShapeError, CvBridgeError):
                continue
    return None


def camera_row(frames: dict[int, Image], features: dict[int, FeatureMap]) -> np.ndarray | None:
    """One camera's row of the episode picture: its newest frame that has a feature map beside what the
    encoder made of it, else its newest frame alone (scaled to the rows' height); None without a
    decodable frame."""
    from rla_wm.evaluation.visualize import side_by_side

    if (snapshot := _frame_with_features(frames, features)) is not None:
        return camera_and_features_picture(*snapshot)
    if frames and (frame := _rgb_or_none(frames[max(frames)])) is not None:
        return side_by_side(frame)
    return None


def episode_picture(observer: ClosedLoopObserver) -> np.ndarray | None:
    """The main camera's newest frame beside what the encoder made of it (when an encoder runs), with a row
    below for each other camera (its frame, beside its encoder's feature map when one runs); None before
    any frame."""
    from rla_wm.evaluation.visualize import stack_rows

    rows = observer.picture_rows()
    return stack_rows(rows) if rows else None


def camera_and_features_picture(frame: np.ndarray, msg: FeatureMap, tokens: np.ndarray) -> np.ndarray:
    """The camera frame next to what the encoder made of it: the PCA of a patch-feature map; for a
    block-pose estimator (block-state feature space) the frame with the T drawn at the estimated pose; for
    the arm's cube estimator (cube-state space) the frame with crosses where the sim's front camera sees
    the estimated cube (white) and zone (cyan) centres; for the keypoint encoder the frame with its points."""
    from rla_wm.envs.pusht.privileged import BLOCK_STATE_ENCODER_ID, block_pose_from_tokens
    from rla_wm.envs.so101.environment_state import CUBE_STATE_ENCODER_ID
    from rla_wm.evaluation.visualize import (
        block_pose_overlay,
        feature_pca_rgb,
        keypoint_overlay,
        points_overlay,
        side_by_side,
    )
    from rla_wm.models.keypoint_encoder import ENCODER_ID_PREFIX

    if msg.encoder_id == BLOCK_STATE_ENCODER_ID:
        return side_by_side(frame, block_pose_overlay(frame, block_pose_from_tokens(tokens)[0]))
    if msg.encoder_id.startswith(ENCODER_ID_PREFIX):
        return side_by_side(frame, keypoint_overlay(frame, np.asarray(tokens, dtype=np.float64).reshape(-1, 2)))
    if msg.encoder_id == CUBE_STATE_ENCODER_ID:
        from rla_wm.envs.so101.camera import front_camera
        from rla_wm.models.cube_estimator import image_points

        height, width = frame.shape[:2]
        token = np.asarray(tokens, dtype=np.float64).reshape(-1)
        try:
            cube, zone = image_points(front_camera(width, height), token[0:3], token[7:9]) * [width, height]
        except ValueError:  # a point behind the camera: nothing to draw
            return side_by_side(frame, frame)
        return side_by_side(frame, points_overlay(frame, [(cube, (255, 255, 255)), (zone, (0, 220, 255))]))
    return side_by_side(frame, feature_pca_rgb(tokens, msg.grid_height, msg.grid_width))


# Seconds a start-up waits on a finished (paused) episode before it starts a new one.
RESTART_PAUSED_EPISODE_AFTER = 3.0


class ClosedLoopRunner:
    """Owns the observer and a background executor; runs episodes one after another."""

    def __init__(
        self,
        command_topic: str,
        model_topic: str = "/policy/joint_trajectory",
        sim_clock: bool = False,
        camera_topic: str = "/camera/image_raw",
        reset_service: str = "/sim_robot/reset",
        extra_camera_topics: tuple[str, ...] = (),
        extra_feature_topics: dict[str, str] | None = None,
    ) -> None:
        self.observer = ClosedLoopObserver(
            command_topic,
            model_topic,
            reset_service=reset_service,
            sim_clock=sim_clock,
            camera_topic=camera_topic,
            extra_camera_topics=extra_camera_topics,
            extra_feature_topics=extra_feature_topics,
        )
        self._spin = BackgroundSpin(self.observer)

    def wait_until_flowing(self, timeout: float, alive: callable = lambda: True) -> None:
        """Block until the model's input (features, or another FeatureMap topic it reads) and gated
        commands are flowing."""
        deadline = time.monotonic() + timeout
        observer = self.observer
        last_reset = time.monotonic()
        while time.monotonic() < deadline:
            # No /features when the model reads something else (a sim's state) and no encoder runs.
            fed = observer.latency.features or observer.latency.model_inputs
            flowing = fed and observer.commands > 0 and observer.status is not None
            if flowing and observer.model_input_topic is not None:
                return
            if not alive():
                raise RuntimeError("a node of the graph exited during start-up")
            status = observer.status
            if status is not None and status.done and time.monotonic() - last_reset > RESTART_PAUSED_EPISODE_AFTER:
                # On the simulator's clock a finished episode is a paused world: nothing moves, so a graph
                # that came up after the first episode ended (a slow start) never shows a command. Start
                # a new episode, as a user would, instead of waiting for one that cannot come.
                if observer.reset_client.service_is_ready():
                    observer.reset_client.call_async(Trigger.Request())
                last_reset = time.monotonic()
            time.sleep(0.1)
        raise TimeoutError(
            f"graph not flowing after {timeout:.0f}s: features={len(observer.latency.features)} "
            f"model inputs={len(observer.latency.model_inputs or {})} "
            f"chunks={len(observer.latency.chunks)} commands={observer.commands} status={observer.status is not None} "
            f"model input={observer.model_input_topic} (the FeatureMap topic of {observer.model_topic}'s publisher)"
        )

    def run_episode(self, timeout: float, keep_frames: bool = False) -> EpisodeResult:
        """Reset the sim, wait for the episode to end; keep_frames: also return its camera frames."""
        observer = self.observer
        if not observer.reset_client.wait_for_service(timeout_sec=10.0):
            raise TimeoutError("reset service of the simulated robot is not available")
        previous_episode = observer.status.episode if observer.status is not None else -1
        future = observer.reset_client.call_async(Trigger.Request())
        deadline = time.monotonic() + 10.0
        while not future.done():
            if time.monotonic() > deadline:
                raise TimeoutError("reset call did not return")
            time.sleep(0.01)
        if keep_frames:
            with observer._lock:
                observer.episode_images = []
        start = time.monotonic()
        commands_before, holds_before = observer.commands, observer.holds
        while time.monotonic() - start < timeout:
            status = observer.status
            if status is not None and status.episode != previous_episode and status.done:
                break
            time.sleep(0.02)
        else:
            raise TimeoutError(f"episode did not finish within {timeout:.0f}s")
        status = observer.status
        with observer._lock:
            images, observer.episode_images = observer.episode_images, None
        frames = [image_msg_to_rgb(msg) for msg in images] if images is not None else None
        return EpisodeResult(
            episode=status.episode,
            success=status.success,
            coverage=float(status.coverage),
            steps=status.step,
            wall_seconds=time.monotonic() - start,
            commands=observer.commands - commands_before,
            holds=observer.holds - holds_before,
            picture=episode_picture(observer),
            frames=frames,
        )

    def close(self) -> None:
        self._spin.close()
