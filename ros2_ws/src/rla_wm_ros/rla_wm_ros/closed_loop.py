"""Drive closed-loop episodes on a running graph and measure it from the outside.

An observer node listens to the same topics the nodes use: camera frames,
feature maps, model chunks and the gated commands the robot executes. Every chunk
carries its camera frame's stamp; a gated command is the gate's re-timed copy of a
chunk's remaining points (zero stamp), so it is traced back to its chunk by those
points. Each stage's latency is thus measured per frame: camera -> features ->
policy chunk -> command at the robot. A command that is no chunk's tail is a hold.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from rla_wm.control.jtc import is_tail_of
from rla_wm_msgs.msg import EpisodeStatus, FeatureMap
from rla_wm_ros.conversions import MessageShapeError, msg_to_features, stamp_to_nanoseconds
from rla_wm_ros.image_conversion import CvBridgeError, image_msg_to_rgb
from rla_wm_ros.qos import CAMERA_QOS

STAGES = ("camera_to_features", "features_to_chunk", "chunk_to_command", "camera_to_command")


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


@dataclass
class LatencyLog:
    """Wall-clock arrival times (ns) per camera stamp at each stage, turned into per-stage latencies.

    On wall-clock stamps a frame's latency starts at its stamp (when it was taken). On the
    simulator's clock a stamp is simulated time, so the frame's arrival at the observer
    stands in for it (a DDS hop later than the capture).
    """

    stamps_are_wall_time: bool = True
    frames: dict[int, int] = field(default_factory=dict)
    features: dict[int, int] = field(default_factory=dict)
    chunks: dict[int, int] = field(default_factory=dict)
    commands: dict[int, int] = field(default_factory=dict)

    def stage_seconds(self) -> dict[str, np.ndarray]:
        camera = None if self.stamps_are_wall_time else self.frames

        def gaps(later: dict[int, int], earlier: dict[int, int] | None) -> np.ndarray:
            values = [
                arrival - (earlier[stamp] if earlier is not None else stamp)
                for stamp, arrival in later.items()
                if earlier is None or stamp in earlier
            ]
            return np.array(values, dtype=np.float64) * 1e-9

        return {
            "camera_to_features": gaps(self.features, camera),
            "features_to_chunk": gaps(self.chunks, self.features),
            "chunk_to_command": gaps(self.commands, self.chunks),
            "camera_to_command": gaps(self.commands, camera),
        }


def percentiles_ms(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {"n": 0, "p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    return {
        "n": int(values.size),
        "p50_ms": float(np.percentile(values, 50) * 1e3),
        "p99_ms": float(np.percentile(values, 99) * 1e3),
        "max_ms": float(values.max() * 1e3),
    }


class ClosedLoopObserver(Node):
    """Resets the simulated robot, watches episodes, and logs stage latencies."""

    def __init__(
        self,
        command_topic: str,
        model_topic: str = "/policy/joint_trajectory",
        reset_service: str = "/sim_robot/reset",
        sim_clock: bool = False,
    ) -> None:
        super().__init__("closed_loop_observer")
        self.latency = LatencyLog(stamps_are_wall_time=not sim_clock)
        self.status: EpisodeStatus | None = None
        self.commands = 0
        self.holds = 0
        self._lock = threading.Lock()
        self._frames: dict[int, Image] = {}  # decoded only for the episode picture, off the camera hot path
        self._features: dict[int, FeatureMap] = {}
        self._chunks: dict[int, tuple[list[str], np.ndarray]] = {}  # stamp -> (joint names, positions)
        self.create_subscription(Image, "/camera/image_raw", self.on_image, CAMERA_QOS)
        self.create_subscription(FeatureMap, "/features", self.on_features, 10)
        self.create_subscription(JointTrajectory, model_topic, self.on_chunk, 10)
        self.create_subscription(JointTrajectory, command_topic, self.on_command, 10)
        self.create_subscription(EpisodeStatus, "/episode_status", self.on_status, 10)
        self.reset_client = self.create_client(Trigger, reset_service)

    def on_image(self, msg: Image) -> None:
        stamp = stamp_to_nanoseconds(msg.header.stamp)
        self.latency.frames.setdefault(stamp, time.time_ns())
        with self._lock:
            self._frames[stamp] = msg
            _keep_newest(self._frames, 20)

    def on_features(self, msg: FeatureMap) -> None:
        stamp = stamp_to_nanoseconds(msg.header.stamp)
        with self._lock:
            self.latency.features[stamp] = time.time_ns()
            self._features[stamp] = msg
            _keep_newest(self._features, 20)

    def on_chunk(self, msg: JointTrajectory) -> None:
        stamp = stamp_to_nanoseconds(msg.header.stamp)
        self.latency.chunks.setdefault(stamp, time.time_ns())
        try:
            positions = np.array([p.positions for p in msg.points], dtype=np.float64)
        except ValueError:  # ragged: the gate refuses it anyway
            return
        with self._lock:
            self._chunks[stamp] = (list(msg.joint_names), positions)
            _keep_newest(self._chunks, 20)

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

    def latest_frame_and_features(self) -> tuple[np.ndarray, np.ndarray, int, int] | None:
        """Newest camera frame that has a feature map: (rgb, tokens, grid_h, grid_w)."""
        with self._lock:
            for stamp in sorted(self._features, reverse=True):
                if stamp in self._frames:
                    msg = self._features[stamp]
                    try:
                        rgb = image_msg_to_rgb(self._frames[stamp])
                        return rgb, msg_to_features(msg), msg.grid_height, msg.grid_width
                    except (MessageShapeError, CvBridgeError):
                        continue
        return None


def _keep_newest(table: dict[int, object], count: int) -> None:
    for stamp in sorted(table)[:-count]:
        del table[stamp]


class ClosedLoopRunner:
    """Owns the observer and a background executor; runs episodes one after another."""

    def __init__(
        self, command_topic: str, model_topic: str = "/policy/joint_trajectory", sim_clock: bool = False
    ) -> None:
        self.observer = ClosedLoopObserver(command_topic, model_topic, sim_clock=sim_clock)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.observer)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def wait_until_flowing(self, timeout: float, alive: callable = lambda: True) -> None:
        """Block until camera, features and gated commands are all flowing."""
        deadline = time.monotonic() + timeout
        observer = self.observer
        while time.monotonic() < deadline:
            if observer.latency.features and observer.commands > 0 and observer.status is not None:
                return
            if not alive():
                raise RuntimeError("a node of the graph exited during start-up")
            time.sleep(0.1)
        raise TimeoutError(
            f"graph not flowing after {timeout:.0f}s: features={len(observer.latency.features)} "
            f"chunks={len(observer.latency.chunks)} commands={observer.commands} status={observer.status is not None}"
        )

    def run_episode(self, timeout: float) -> EpisodeResult:
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
        picture = None
        snapshot = observer.latest_frame_and_features()
        if snapshot is not None:
            from rla_wm.evaluation.visualize import feature_pca_rgb, side_by_side

            frame, tokens, grid_h, grid_w = snapshot
            picture = side_by_side(frame, feature_pca_rgb(tokens, grid_h, grid_w))
        return EpisodeResult(
            episode=status.episode,
            success=status.success,
            coverage=float(status.coverage),
            steps=status.step,
            wall_seconds=time.monotonic() - start,
            commands=observer.commands - commands_before,
            holds=observer.holds - holds_before,
            picture=picture,
        )

    def close(self) -> None:
        self.executor.shutdown()
        self.observer.destroy_node()
