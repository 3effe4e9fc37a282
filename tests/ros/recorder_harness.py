"""The recorder tests' live robot and their handle on the recorder node.

A feeder thread publishes two cameras and a JointState at 30 Hz and a JointTrajectory at 10 Hz (and,
if asked, an environment state as a 1x1 FeatureMap at 30 Hz, stamped like the cameras, as the sim does).
Stamps lie on an exact 1/30 s grid of the probe's clock, and every value encodes its grid index k, so
a recorded frame can be traced back to the messages it came from. The datasets are read back with
LeRobot itself. `from recorder_harness import *` brings in the `feeder` fixture (`__all__` names it).
"""

from __future__ import annotations

import math
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from rla_wm_msgs.msg import FeatureMap, RecorderStatus
from rla_wm_msgs.srv import StartEpisode
from rla_wm_ros.image_conversion import CvBridge
from rla_wm_ros.launch_xml import NodeSpec

from conftest import Inbox, call_service, config_file, wait_for

__all__ = ["feeder"]

HEIGHT, WIDTH = 48, 64  # not square: a swapped height/width would show
RATE = 30.0  # cameras and joint state
FPS = 10  # the dataset
JOINTS = ["shoulder", "elbow"]
CAMERAS = {"front": "cam/front/image_raw", "wrist": "cam/wrist/image_raw"}
REPO = "local/recorder_test"


def level(camera: str, k: int) -> int:
    """Grey level of camera frame k (flat images survive video compression)."""
    return (20 + 3 * k) % 200 + 20 if camera == "front" else 235 - (7 * k) % 180


def shows_frame(pixels, camera: str, k: int, spread: int = 0) -> bool:
    """Whether a decoded flat image (values in [0, 1]) is `camera`'s frame j for some |j - k| <= spread.
    The reference camera's frame is the row's own (spread 0); another camera gives its sample nearest
    the tick, up to one 30 Hz index away (spread 1). AV1 shifts a flat level by a grey or so."""
    grey = float(pixels.mean()) * 255
    return any(abs(grey - level(camera, j)) < 3 for j in range(k - spread, k + spread + 1))


def state_of(k: int) -> list[float]:
    return [float(k), 0.5 * k + 100.0]


def action_of(k: int) -> list[float]:
    return [k + 0.25, -float(k)]


def environment_of(k: int) -> list[float]:
    """Environment state k (4 values: no two alike, and not a joint state)."""
    return [float(k), -0.5 * k, 0.25 * k + 3.0, 1000.0 - k]


def environment_msg(values: list[float], stamp: Time) -> FeatureMap:
    """A 1x1 FeatureMap of `values` (channels = their count), like the sim's sim/block_state."""
    msg = FeatureMap(encoder_id="test:environment", grid_height=1, grid_width=1, channels=len(values), data=values)
    msg.header.stamp = stamp
    return msg


def to_time(seconds: float) -> Time:
    sec = int(math.floor(seconds))
    return Time(sec=sec, nanosec=min(int(round((seconds - sec) * 1e9)), 999_999_999))


def seconds(stamp: Time) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


class Feeder:
    """Publishes stamped, k-encoded camera frames, joint states and commands from a thread."""

    def __init__(
        self,
        node,
        cameras=CAMERAS,
        compressed: bool = False,
        action: bool = True,
        clock_from: float | None = None,
        environment: bool = False,
    ) -> None:
        self.node = node
        self.bridge = CvBridge()
        self.compressed = compressed
        image_type = CompressedImage if compressed else Image
        self.cameras = {
            name: node.create_publisher(image_type, topic, qos_profile_sensor_data) for name, topic in cameras.items()
        }
        self.state = node.create_publisher(JointState, "robot/joint_states", 10)
        self.action = node.create_publisher(JointTrajectory, "teleop/joint_trajectory", 10) if action else None
        # Default QoS (reliable, volatile, depth 10): what the sim and `ros2 topic pub` publish with.
        self.environment = node.create_publisher(FeatureMap, "sim/block_state", 10) if environment else None
        self.clock_pub = None
        if clock_from is not None:
            from rosgraph_msgs.msg import Clock

            self.clock_pub = node.create_publisher(Clock, "/clock", 10)
        self.clock_from = clock_from  # seconds after the start when /clock begins (a late simulator)
        self.camera_on = {name: True for name in cameras}
        self.nan_state: set[int] = set()  # grid indices whose state is NaN
        self.bad_size: set[int] = set()  # grid indices whose front image has the wrong size
        self.bad_environment: dict[int, list[float]] = {}  # grid index -> environment values sent instead
        self.t0 = math.floor(node.get_clock().now().nanoseconds * 1e-9) + 1.0
        self.k = 0
        self.sent_front: dict[int, float] = {}
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stamp(self, k: int) -> float:
        return self.t0 + k / RATE

    def k_of(self, stamp: float) -> int:
        return int(round((stamp - self.t0) * RATE))

    def image(self, camera: str, k: int):
        height, width = (HEIGHT, WIDTH) if k not in self.bad_size or camera != "front" else (HEIGHT + 2, WIDTH)
        frame = np.full((height, width, 3), level(camera, k), dtype=np.uint8)
        if self.compressed:
            msg = self.bridge.cv2_to_compressed_imgmsg(frame, dst_format="png")
        else:
            msg = self.bridge.cv2_to_imgmsg(frame, encoding="rgb8")
        msg.header.stamp = to_time(self.stamp(k))
        return msg

    def _run(self) -> None:
        # Each message is published at its stamp's time, as a live sensor does: the pause between them
        # is the input under test (30 Hz streams stamped on the node clock), not a wait for a result.
        start = time.monotonic()
        wall0 = self.node.get_clock().now().nanoseconds * 1e-9
        while not self._stop:
            k = self.k
            # Publish k no earlier than its stamp (stamps stay on the node clock's timeline).
            delay = (self.stamp(k) - wall0) - (time.monotonic() - start)
            if delay > 0:
                time.sleep(delay)
            stamp = to_time(self.stamp(k))
            if self.clock_pub is not None and time.monotonic() - start > self.clock_from:
                from rosgraph_msgs.msg import Clock

                self.clock_pub.publish(Clock(clock=stamp))
            for name, pub in self.cameras.items():
                if self.camera_on[name]:
                    pub.publish(self.image(name, k))
                    if name == "front":
                        self.sent_front[k] = seconds(stamp)
            state = JointState(name=list(reversed(JOINTS)), position=list(reversed(state_of(k))))  # by name
            if k in self.nan_state:
                state.position = [float("nan"), float("nan")]
            state.header.stamp = stamp
            self.state.publish(state)
            if self.environment is not None:
                self.environment.publish(environment_msg(self.bad_environment.get(k, environment_of(k)), stamp))
            if self.action is not None and k % 3 == 0:
                traj = JointTrajectory(joint_names=JOINTS)
                traj.header.stamp = stamp
                traj.points = [JointTrajectoryPoint(positions=action_of(k)), JointTrajectoryPoint(positions=[0.0, 0.0])]
                self.action.publish(traj)
            self.k = k + 1

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=2)


def recorder_spec(root: Path, **params) -> NodeSpec:
    values = {
        "dataset_root": str(root),
        "repo_id": REPO,
        "robot_type": "test_arm",
        "fps": f"{float(FPS)}",
        "camera_topics": "[" + ",".join(CAMERAS.values()) + "]",
        "camera_names": "[" + ",".join(CAMERAS) + "]",
        "image_height": str(HEIGHT),
        "image_width": str(WIDTH),
        "state_topic": "robot/joint_states",
        "joint_names": "[" + ",".join(JOINTS) + "]",
        "action_topic": "teleop/joint_trajectory",
        "action_tolerance": "0.05",  # 10 Hz commands
    }
    values.update({key: str(value) for key, value in params.items()})
    return NodeSpec(
        "rla_wm_ros", "recorder", name="recorder", param_files=[config_file("recorder.yaml")], params=values
    )


class Recorder:
    """Service clients and the status inbox of a running recorder."""

    def __init__(self, node, graph) -> None:
        self.node, self.graph = node, graph
        self.status = Inbox()
        node.create_subscription(RecorderStatus, "recorder/status", self.status, 10)
        self.start_client = node.create_client(StartEpisode, "recorder/start_episode")
        self.stop_client = node.create_client(Trigger, "recorder/stop_episode")
        self.discard_client = node.create_client(Trigger, "recorder/discard_episode")
        for client in (self.start_client, self.stop_client, self.discard_client):
            wait_for(lambda c=client: c.service_is_ready(), 60, f"service {client.srv_name}", graph)
        # Every stream flowing: the recorder reports no stale stream (needs DDS discovery done).
        wait_for(
            lambda: self.last() is not None and self.last().stale_streams == [] and len(self.last().message) > 0,
            30,
            "the recorder to see every stream",
            graph,
        )

    def last(self) -> RecorderStatus | None:
        return self.status.last()

    def call(self, client, request, timeout: float = 30.0):
        return call_service(client, request, timeout, self.graph)

    def start(self, task: str):
        return self.call(self.start_client, StartEpisode.Request(task=task))

    def stop(self):
        return self.call(self.stop_client, Trigger.Request())

    def discard(self):
        return self.call(self.discard_client, Trigger.Request())

    def wait_frames(self, n: int, timeout: float = 20.0) -> None:
        wait_for(
            lambda: self.last().recording and self.last().frames_recorded >= n,
            timeout,
            f"{n} recorded frames",
            self.graph,
        )


def counts(message: str) -> tuple[int, int]:
    """(frames, skipped) from a stop/discard answer."""
    match = re.search(r"(\d+) frames, (\d+) skipped", message)
    assert match, message
    return int(match.group(1)), int(match.group(2))


def load(root: Path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset(REPO, root=root)


def column(dataset, key: str) -> np.ndarray:
    """A column in its stored dtype (the numpy formatter would round float64 stamps to float32)."""
    import pyarrow as pa

    col = dataset.hf_dataset.with_format("arrow", columns=[key])[:][key].combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        return col.flatten().to_numpy().reshape(len(col), col.type.list_size)
    return col.to_numpy()


def episode_rows(dataset, episode: int) -> np.ndarray:
    return np.flatnonzero(column(dataset, "episode_index") == episode)


@pytest.fixture
def feeder(ros_node):
    feeders = []

    def make(**kwargs) -> Feeder:
        feeders.append(Feeder(ros_node, **kwargs))
        return feeders[-1]

    yield make
    for f in feeders:
        f.close()
