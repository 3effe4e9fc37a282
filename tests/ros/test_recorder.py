"""The LeRobot dataset recorder node, in its own process, fed over real rclpy + Fast DDS.

A feeder thread in the test publishes two cameras and a JointState at 30 Hz and a
JointTrajectory at 10 Hz. Stamps lie on an exact 1/30 s grid of the probe's clock, and every
value encodes its grid index k, so a recorded frame can be traced back to the messages it
came from. The datasets are then read back with LeRobot itself.
"""

from __future__ import annotations

import math
import os
import re
import signal
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

from rla_wm_msgs.msg import RecorderStatus
from rla_wm_msgs.srv import StartEpisode
from rla_wm_ros.image_conversion import CvBridge
from rla_wm_ros.launch_xml import NodeSpec

from conftest import Inbox, config_file, wait_for

pytestmark = pytest.mark.timeout(150)

HEIGHT, WIDTH = 48, 64  # not square: a swapped height/width would show
RATE = 30.0  # cameras and joint state
FPS = 10  # the dataset
JOINTS = ["shoulder", "elbow"]
CAMERAS = {"front": "cam/front/image_raw", "wrist": "cam/wrist/image_raw"}
REPO = "local/recorder_test"


def level(camera: str, k: int) -> int:
    """Grey level of camera frame k (flat images survive video compression)."""
    return (20 + 3 * k) % 200 + 20 if camera == "front" else 235 - (7 * k) % 180


def state_of(k: int) -> list[float]:
    return [float(k), 0.5 * k + 100.0]


def action_of(k: int) -> list[float]:
    return [k + 0.25, -float(k)]


def to_time(seconds: float) -> Time:
    sec = int(math.floor(seconds))
    return Time(sec=sec, nanosec=min(int(round((seconds - sec) * 1e9)), 999_999_999))


def seconds(stamp: Time) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


class Feeder:
    """Publishes stamped, k-encoded camera frames, joint states and commands from a thread."""

    def __init__(
        self, node, cameras=CAMERAS, compressed: bool = False, action: bool = True, clock_from: float | None = None
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
        self.clock_pub = None
        if clock_from is not None:
            from rosgraph_msgs.msg import Clock

            self.clock_pub = node.create_publisher(Clock, "/clock", 10)
        self.clock_from = clock_from  # seconds after the start when /clock begins (a late simulator)
        self.camera_on = {name: True for name in cameras}
        self.nan_state: set[int] = set()  # grid indices whose state is NaN
        self.bad_size: set[int] = set()  # grid indices whose front image has the wrong size
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
        future = client.call_async(request)
        deadline = time.monotonic() + timeout
        while not future.done():
            if time.monotonic() > deadline:
                pytest.fail(f"{client.srv_name} did not answer:\n{self.graph.tail_logs(30)}")
            time.sleep(0.01)
        return future.result()

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


def test_records_episodes_through_services_and_lerobot_loads_them(ros_node, start_nodes, feeder, tmp_path):
    root = tmp_path / "dataset"
    graph = start_nodes(recorder_spec(root))
    feed = feeder()
    rec = Recorder(ros_node, graph)
    idle = rec.last()
    assert not idle.recording and idle.dataset_root == str(root) and idle.episode_index == 0
    assert "created dataset" in idle.message

    # Wrong-state requests are refused with a reason, and change nothing.
    for answer, reason in (
        (rec.stop(), "not recording"),
        (rec.discard(), "not recording"),
        (rec.start("  "), "non-empty"),
    ):
        assert not answer.success and reason in answer.message

    answers = {}
    for task, n in (("pick the cube", 12), ("place the cube", 8)):
        started = rec.start(task)
        assert started.success, started.message
        again = rec.start("another")
        assert not again.success and "already recording" in again.message
        rec.wait_frames(n)
        status = rec.last()
        assert status.recording and status.task == task and status.episode_index == started.episode_index
        answers[started.episode_index] = rec.stop()
        assert answers[started.episode_index].success, answers[started.episode_index].message
        assert f"saved episode {started.episode_index}" in answers[started.episode_index].message
    assert sorted(answers) == [0, 1]

    mistake = rec.start("a mistake")
    assert mistake.success and mistake.episode_index == 2
    rec.wait_frames(5)
    discarded = rec.discard()
    assert discarded.success and "discarded episode 2" in discarded.message
    wait_for(lambda: not rec.last().recording and rec.last().episode_index == 2, 5, "idle after discard", graph)

    # SIGINT while recording: the default (save_on_shutdown false) discards the unfinished episode.
    unfinished = rec.start("never finished")
    assert unfinished.success and unfinished.episode_index == 2
    rec.wait_frames(3)
    feed.close()
    assert graph.stop()["recorder"] == 0, graph.tail_logs(30)
    assert "discarded unfinished episode 2" in graph.tail_logs(30)
    assert not (root / "images").exists()

    ds = load(root)
    assert ds.num_episodes == 2 and ds.fps == FPS and ds.meta.robot_type == "test_arm"
    assert [list(t) for t in ds.meta.episodes["tasks"]] == [["pick the cube"], ["place the cube"]]
    assert not {"a mistake", "never finished"} & set(ds.meta.tasks.index)
    for name in CAMERAS:
        feature = ds.features[f"observation.images.{name}"]
        assert feature["dtype"] == "video" and tuple(feature["shape"]) == (HEIGHT, WIDTH, 3)
    assert ds.features["observation.state"]["names"] == JOINTS and ds.features["action"]["names"] == JOINTS
    assert tuple(ds.features["observation.state"]["shape"]) == (2,) == tuple(ds.features["action"]["shape"])

    state, action, stamps = column(ds, "observation.state"), column(ds, "action"), column(ds, "capture_stamp")
    assert stamps.dtype == np.float64
    for episode, answer in answers.items():
        frames, skipped = counts(answer.message)
        rows = episode_rows(ds, episode)
        # No frame is lost on a healthy machine; a little slack for DDS under other tests' load.
        assert len(rows) == frames >= (12 if episode == 0 else 8) and skipped <= 2, answer.message
        assert list(column(ds, "frame_index")[rows]) == list(range(frames))
        np.testing.assert_allclose(column(ds, "timestamp")[rows], np.arange(frames) / FPS, atol=1e-6)
        # The stored capture stamps are the published camera stamps, one frame period apart.
        ks = [feed.k_of(s) for s in stamps[rows]]
        for k, stamp in zip(ks, stamps[rows]):
            assert stamp == pytest.approx(feed.sent_front[k], abs=1e-6)
        steps = np.diff(ks)
        assert np.all(steps > 0) and np.all(steps % (RATE / FPS) == 0)  # frame times on the tick grid
        assert len(ks) + skipped >= (ks[-1] - ks[0]) // (RATE / FPS) + 1  # every gap is a counted skip
        # State and action come from the messages with the same stamp (taken by joint name).
        np.testing.assert_array_equal(state[rows], np.array([state_of(k) for k in ks], dtype=np.float32))
        np.testing.assert_array_equal(action[rows], np.array([action_of(k) for k in ks], dtype=np.float32))

    # LeRobot's stored statistics agree with numpy over the recorded values.
    for key, values in (("observation.state", state), ("action", action)):
        stats = ds.meta.stats[key]
        data = values.astype(np.float64)
        np.testing.assert_allclose(stats["min"], data.min(0), rtol=1e-6)
        np.testing.assert_allclose(stats["max"], data.max(0), rtol=1e-6)
        np.testing.assert_allclose(stats["mean"], data.mean(0), rtol=1e-5)
        np.testing.assert_allclose(stats["std"], data.std(0), rtol=1e-4)
        assert int(np.asarray(stats["count"]).reshape(-1)[0]) == len(ds)

    # Decoded pixels: the right image in the right camera.
    for row in (int(episode_rows(ds, 1)[0]), int(episode_rows(ds, 1)[-1])):
        item = ds[row]
        k = feed.k_of(float(stamps[row]))
        for name in CAMERAS:
            pixels = item[f"observation.images.{name}"]
            assert tuple(pixels.shape) == (3, HEIGHT, WIDTH)
            assert abs(float(pixels.mean()) * 255 - level(name, k)) < 10  # AV1 is lossy


def test_sigkill_mid_episode_keeps_saved_episodes_and_restart_repairs(ros_node, start_nodes, feeder, tmp_path):
    root = tmp_path / "dataset"
    graph = start_nodes(recorder_spec(root))
    feeder()
    rec = Recorder(ros_node, graph)
    assert rec.start("saved before the crash").success
    rec.wait_frames(5)
    saved = rec.stop()
    assert saved.success, saved.message
    assert rec.start("killed").episode_index == 1
    rec.wait_frames(6)
    wait_for(lambda: any((root / "images").rglob("*.png")), 10, "the partial episode's frames on disk", graph)
    os.kill(graph.pids["recorder"], signal.SIGKILL)
    wait_for(lambda: not graph.alive()["recorder"], 10, "the recorder to die")

    assert load(root).num_episodes == 1  # loadable as left: the saved episode is committed

    graph2 = start_nodes(recorder_spec(root))
    rec2 = Recorder(ros_node, graph2)
    status = rec2.last()
    assert "REPAIRED" in status.message and "images" in status.message, status.message
    assert "resumed dataset" in status.message and status.episode_index == 1
    assert not (root / "images").exists()
    again = rec2.start("after the crash")
    assert again.success and again.episode_index == 1
    rec2.wait_frames(4)
    answer = rec2.stop()
    assert answer.success, answer.message

    ds = load(root)
    assert ds.num_episodes == 2
    assert [list(t) for t in ds.meta.episodes["tasks"]] == [["saved before the crash"], ["after the crash"]]
    assert list(ds.meta.episodes["length"]) == [counts(saved.message)[0], counts(answer.message)[0]]
    assert "killed" not in set(ds.meta.tasks.index)


def test_stale_camera_nan_and_wrong_size_skip_frames_never_fill_them(ros_node, start_nodes, feeder, tmp_path):
    root = tmp_path / "dataset"
    graph = start_nodes(recorder_spec(root))
    feed = feeder()
    rec = Recorder(ros_node, graph)
    assert rec.start("with a dropout").success
    rec.wait_frames(4)
    # Three consecutive grid indices cover exactly one frame time (frames are 3 indices apart).
    k = feed.k + 6
    feed.nan_state |= {k, k + 1, k + 2}
    feed.bad_size |= {k + 9, k + 10, k + 11}
    wait_for(lambda: feed.k > k + 15, 5, "the bad samples to be sent")
    rec.wait_frames(rec.last().frames_recorded + 2)

    feed.camera_on["wrist"] = False
    off = feed.k
    wait_for(lambda: "observation.images.wrist" in rec.last().stale_streams, 5, "the stale wrist camera", graph)
    frames_before, skipped_before = rec.last().frames_recorded, rec.last().frames_skipped
    wait_for(
        lambda: rec.last().frames_skipped >= skipped_before + 6, 5, "frames skipped while the camera is off", graph
    )
    assert rec.last().frames_recorded == frames_before  # no frame without the wrist camera
    assert rec.last().stale_streams == ["observation.images.wrist"] and rec.last().recording
    feed.camera_on["wrist"] = True
    on = feed.k
    wait_for(lambda: rec.last().stale_streams == [], 5, "the wrist camera back", graph)
    rec.wait_frames(frames_before + 3)
    assert "unusable samples" in rec.last().message and "NaN" in rec.last().message
    answer = rec.stop()
    assert answer.success, answer.message
    frames, skipped = counts(answer.message)

    ds = load(root)
    stamps = column(ds, "capture_stamp")
    ks = np.array([feed.k_of(s) for s in stamps])
    assert len(ds) == frames and skipped >= 2 + 6
    spanned = (ks[-1] - ks[0]) // 3 + 1
    assert spanned == frames + skipped  # every frame time is either recorded or counted as skipped
    assert not np.any((ks >= k) & (ks <= k + 2)), "the frame with a NaN state was recorded"
    assert not np.any((ks >= k + 9) & (ks <= k + 11)), "the frame with a wrong-size image was recorded"
    assert not np.any((ks > off + 1) & (ks < on - 1)), "frames were recorded while the wrist camera was off"
    assert np.isfinite(column(ds, "observation.state")).all()
    # The frames around the outage hold real images of their own time, not zeros or repeats.
    gap = int(np.argmax(np.diff(ks)))
    for row in (gap, gap + 1):
        pixels = ds[row]["observation.images.wrist"]
        assert abs(float(pixels.mean()) * 255 - level("wrist", int(ks[row]))) < 10  # AV1 is lossy; zeros are not


def test_action_free_compressed_flagged_sim_time_and_save_on_shutdown(ros_node, start_nodes, feeder, tmp_path):
    root = tmp_path / "dataset"
    cameras = {"front": "cam/front/image_raw/compressed"}
    # use_sim_time with a simulator that publishes /clock only later: the recorder must work
    # before (status, frames) and after.
    graph = start_nodes(
        recorder_spec(
            root,
            action_topic='""',
            compressed="true",
            use_videos="false",
            stale_policy="flag",
            save_on_shutdown="true",
            use_sim_time="true",
            camera_topics=f"[{cameras['front']}]",
            camera_names="[front]",
        )
    )
    feed = feeder(cameras=cameras, compressed=True, action=False, clock_from=12.0)
    rec = Recorder(ros_node, graph)
    assert rec.last().stale_streams == []
    assert rec.start("watch only").success
    rec.wait_frames(4)
    feed.camera_on["front"] = False
    off = feed.k
    wait_for(lambda: "FLAGGED" in rec.last().message, 5, "the episode to be flagged", graph)
    assert "observation.images.front" in rec.last().stale_streams
    frames_before = rec.last().frames_recorded
    rec.wait_frames(frames_before + 4)  # flag keeps recording, holding the last real image
    feed.camera_on["front"] = True
    wait_for(lambda: rec.last().stale_streams == [], 5, "the camera back", graph)
    wait_for(lambda: feed.k > 12.5 * RATE, 15, "the late /clock to start")
    rec.wait_frames(rec.last().frames_recorded + 3)
    assert rec.last().frames_skipped == 0
    frames_at_stop = rec.last().frames_recorded
    assert graph.stop()["recorder"] == 0, graph.tail_logs(30)
    logs = graph.tail_logs(30)
    assert "shutdown: saved episode 0" in logs and "FLAGGED" in logs

    ds = load(root)
    assert ds.num_episodes == 1 and len(ds) >= frames_at_stop
    assert "action" not in ds.features and "action" not in ds.hf_dataset.column_names
    assert "action" not in ds.meta.stats
    assert ds.features["observation.images.front"]["dtype"] == "image"
    assert tuple(ds.features["observation.images.front"]["shape"]) == (HEIGHT, WIDTH, 3)
    stamps = column(ds, "capture_stamp")
    state_ks = column(ds, "observation.state")[:, 0].astype(int)
    # No frame time was left out: the state stream never stopped, so its indices run 3 apart.
    assert np.all(np.diff(state_ks) == RATE / FPS)
    # Held frames carry the last real camera frame and its real (older) stamp.
    cam_ks = np.array([feed.k_of(s) for s in stamps])
    held = np.flatnonzero(cam_ks < state_ks - 1)
    assert len(held) >= 4 and np.all(cam_ks[held] <= off)
    pixels = ds[int(held[-1])]["observation.images.front"]
    assert abs(float(pixels.mean()) * 255 - level("front", int(cam_ks[held[-1]]))) < 2
    normal = np.setdiff1d(np.arange(len(ds)), held)
    assert np.all(np.abs(cam_ks[normal] - state_ks[normal]) <= 1)


def test_recorder_refuses_to_start_with_bad_parameters(start_nodes, tmp_path):
    graphs = {
        "dataset_root is required": start_nodes(recorder_spec(tmp_path / "unused", dataset_root='""')),
        "camera_names (1) must name every camera": start_nodes(recorder_spec(tmp_path / "ds", camera_names="[front]")),
        "fps must be a whole number": start_nodes(recorder_spec(tmp_path / "ds2", fps="7.5")),
    }
    for reason, graph in graphs.items():
        wait_for(lambda g=graph: not g.alive()["recorder"], 60, f"the recorder to exit ({reason})")
        assert graph.returncodes()["recorder"] != 0 and reason in graph.tail_logs(40), graph.tail_logs(40)
    assert not (tmp_path / "ds").exists() and not (tmp_path / "ds2").exists()  # nothing created
