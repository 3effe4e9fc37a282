"""LeRobot dataset recorder: cameras, joint state and (optionally) commands -> LeRobot v3 episodes.

Thin: messages are converted here and pushed, with their header stamps, into
`rla_wm.recording.StreamSynchronizer`, which assembles one frame per tick at the dataset
fps; `rla_wm.recording.EpisodeWriter` writes them on its worker thread (encoding, parquet,
crash-safe commits, repair of a dataset left by a killed recorder).

Interface (fixed; a collection script depends on it):
  services  ~/start_episode (rla_wm_msgs/StartEpisode), ~/stop_episode (Trigger: saves),
            ~/discard_episode (Trigger)
  topic     ~/status (rla_wm_msgs/RecorderStatus), at `status_rate` and on every state change
  inputs    `camera_topics` (Image, or CompressedImage with `compressed`), `state_topic`
            (JointState), `action_topic` (JointTrajectory or JointState; empty = action-free)

Threads: one executor thread runs every callback, and none of them blocks: subscriptions
only convert and push into the synchronizer, a 10 Hz pump hands complete frames to the
writer's queue, and `~/stop_episode` is a coroutine that awaits the writer's commit while
frames and status keep flowing. (rclpy's MultiThreadedExecutor cost 3x the CPU here, and
starved of CPU it delivered samples late, which costs frames.)

Every callback is guarded (`rla_wm_ros.node_guard`): an unusable sample, or an exception in any
callback, is a logged, counted rejection on /diagnostics, never a dead recorder; a failing
service answers success=false.
"""
from __future__ import annotations

import concurrent.futures
import math
import os
import signal
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import rclpy.logging
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.qos import QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy, qos_profile_sensor_data
from rclpy.task import Future
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from rla_wm.recording import EpisodeWriter, QueueFullError, RecordingError, StreamSynchronizer, SyncResult
from rla_wm_msgs.msg import RecorderStatus
from rla_wm_msgs.srv import StartEpisode
from rla_wm_ros.conversions import stamp_to_seconds
from rla_wm_ros.image_conversion import CvBridgeError, image_msg_to_rgb
from rla_wm_ros.node_guard import Health, NodeGuard
from rla_wm_ros.params import declare

CAMERA_PREFIX = "observation.images."
STATE_KEY = "observation.state"
ACTION_KEY = "action"
ACTION_TYPES = ("joint_trajectory", "joint_state")
STALE_POLICIES = ("skip", "flag")

# Subscription queues hold about a third of a second at 30 Hz: enough to absorb a burst from
# a publisher catching up, not more, because a backlog is latency: a sample later than
# `latency_budget` is as lost as a dropped one, and a deep queue, once behind, stays behind.
# Cameras: best effort (matches reliable and best-effort drivers alike).
CAMERA_INPUT_QOS = QoSProfile(
    reliability=qos_profile_sensor_data.reliability,
    durability=qos_profile_sensor_data.durability,
    history=QoSHistoryPolicy.KEEP_LAST,
    depth=10,
)
# Joint states and commands: best effort too (it matches reliable publishers). A reliable
# reader that misses one sample holds every later one back until the writer repairs it (up
# to Fast DDS's 3 s heartbeat period): for a recorder a late sample is as bad as a lost one,
# and a lost one only costs the frame it was nearest to. Deeper, for fast state streams.
JOINT_INPUT_QOS = QoSProfile(
    reliability=QoSReliabilityPolicy.BEST_EFFORT,
    durability=qos_profile_sensor_data.durability,
    history=QoSHistoryPolicy.KEEP_LAST,
    depth=20,
)


@dataclass(frozen=True)
class Invalid:
    """A received sample that cannot be recorded. It still takes its place in the stream (so
    the frame it is nearest to is skipped rather than filled from a neighbour)."""

    reason: str


def joint_vector(names: Sequence[str], positions: Sequence[float], wanted: Sequence[str]) -> np.ndarray:
    """Positions of `wanted` joints, in that order, as float32; ValueError if one is missing,
    the message is ragged, or a value is NaN/inf (also after the cast to float32)."""
    if len(positions) != len(names):
        raise ValueError(f"{len(names)} joint names but {len(positions)} positions")
    index = {name: i for i, name in enumerate(names)}
    missing = [name for name in wanted if name not in index]
    if missing:
        raise ValueError(f"joints {missing} missing (message has {list(names)})")
    values = np.array([positions[index[name]] for name in wanted], dtype=np.float64).astype(np.float32)
    if not np.isfinite(values).all():
        bad = [name for name, v in zip(wanted, values) if not math.isfinite(float(v))]
        raise ValueError(f"NaN or inf position for joints {bad}")
    return values


def trajectory_action(msg: JointTrajectory, wanted: Sequence[str]) -> np.ndarray:
    """The first point's positions of a JointTrajectory, by joint name (see `joint_vector`)."""
    if not msg.points:
        raise ValueError("trajectory has no points")
    return joint_vector(msg.joint_names, msg.points[0].positions, wanted)


@dataclass
class RecorderConfig:
    """The node's parameters, checked (ValueError with the parameter's name otherwise)."""

    dataset_root: str
    repo_id: str
    fps: int
    robot_type: str
    camera_topics: list[str]
    camera_names: list[str]
    compressed: bool
    image_height: int
    image_width: int
    state_topic: str
    joint_names: list[str]
    action_topic: str
    action_type: str
    tolerance: float
    action_tolerance: float
    latency_budget: float
    stale_policy: str
    use_videos: bool
    vcodec: str
    image_writer_threads: int
    queue_size: int
    buffer_size: int
    save_on_shutdown: bool
    status_rate: float

    def __post_init__(self) -> None:
        if not self.dataset_root.strip():
            raise ValueError("dataset_root is required: the folder of the LeRobot dataset to create or resume")
        if not self.repo_id.strip():
            raise ValueError("repo_id must not be empty (e.g. local/teleop)")
        if not self.camera_topics:
            raise ValueError("camera_topics needs at least one camera topic")
        if len(self.camera_names) != len(self.camera_topics):
            raise ValueError(
                f"camera_names ({len(self.camera_names)}) must name every camera of camera_topics "
                f"({len(self.camera_topics)}), in the same order"
            )
        for name in self.camera_names:
            if not name or not all(c.isalnum() or c == "_" for c in name):
                raise ValueError(f"camera name {name!r} must be non-empty letters, digits and '_' (a feature key part)")
        if len(set(self.camera_names)) != len(self.camera_names):
            raise ValueError(f"camera_names must be unique, got {self.camera_names}")
        if any(not topic for topic in self.camera_topics) or not self.state_topic:
            raise ValueError("camera_topics and state_topic must not be empty")
        if not self.joint_names or any(not name for name in self.joint_names):
            raise ValueError("joint_names needs at least one (non-empty) joint name")
        if len(set(self.joint_names)) != len(self.joint_names):
            raise ValueError(f"joint_names must be unique, got {self.joint_names}")
        if self.action_type not in ACTION_TYPES:
            raise ValueError(f"action_type must be one of {ACTION_TYPES}, got {self.action_type!r}")
        if self.stale_policy not in STALE_POLICIES:
            raise ValueError(f"stale_policy must be one of {STALE_POLICIES}, got {self.stale_policy!r}")

    @property
    def camera_keys(self) -> list[str]:
        return [CAMERA_PREFIX + name for name in self.camera_names]

    @property
    def has_actions(self) -> bool:
        return bool(self.action_topic)

    def features(self) -> dict[str, dict[str, Any]]:
        """The dataset features (LeRobot's defaults and the capture stamp are added by the writer)."""
        image = {
            "dtype": "video" if self.use_videos else "image",
            "shape": (self.image_height, self.image_width, 3),
            "names": ["height", "width", "channels"],
        }
        features: dict[str, dict[str, Any]] = {key: dict(image) for key in self.camera_keys}
        joints = {"dtype": "float32", "shape": (len(self.joint_names),), "names": list(self.joint_names)}
        features[STATE_KEY] = dict(joints)
        if self.has_actions:
            features[ACTION_KEY] = dict(joints)
        return features


@dataclass
class Episode:
    """The open episode, as the node counts it (the writer counts frames too)."""

    index: int
    task: str
    frames: int = 0  # accepted by the writer
    skipped: int = 0  # ticks without a frame: a stream missing/stale, an invalid sample, a full queue
    dropped: int = 0  # of `skipped`: refused by a full writer queue
    held: int = 0  # frames written with a held (stale) sample under stale_policy "flag"
    reasons: Counter = field(default_factory=Counter)
    flags: list[str] = field(default_factory=list)  # why the episode is flagged (stale_policy "flag")

    def flag(self, reason: str) -> bool:
        """Note a reason to flag the episode; True if it is new."""
        if reason in self.flags:
            return False
        self.flags.append(reason)
        return True

    def summary(self) -> str:
        text = f"{self.frames} frames, {self.skipped} skipped"
        if self.dropped:
            text += f" ({self.dropped} by a full writer queue)"
        if self.reasons:
            text += " [" + ", ".join(f"{reason}: {n}" for reason, n in self.reasons.most_common(4)) + "]"
        if self.flags:
            text += f"; FLAGGED ({'; '.join(self.flags)})"
        return text


class RecorderNode(Node):
    # Set when the dataset was closed after the context had shut down (SIGINT / SIGTERM), see main().
    closed_after_shutdown = False

    def __init__(self) -> None:
        super().__init__("recorder")
        self.config = self._declare_parameters()
        config = self.config
        self.steady = Clock(clock_type=ClockType.STEADY_TIME)

        self.sync = StreamSynchronizer(
            config.fps,
            tolerance=config.tolerance or None,
            latency_budget=config.latency_budget,
            buffer_size=config.buffer_size,
        )
        for key in config.camera_keys:
            self.sync.add_stream(key, "camera")
        self.sync.add_stream(STATE_KEY, "state")
        if config.has_actions:
            self.sync.add_stream(ACTION_KEY, "action", tolerance=config.action_tolerance or None)

        self.writer = self._open_writer()  # resumes and repairs an existing dataset; fails fast on a mismatch

        # All callbacks run on the executor thread, and shutdown after it stopped: no locks.
        self.episode: Episode | None = None
        self.saving: list[int] = []  # episodes whose save is queued or running
        self.note = self._startup_note
        self.stale: tuple[str, ...] = tuple(self.sync.streams)  # no data yet
        self.queue_high_water = 0
        self.invalid_samples: Counter = Counter()
        self._invalid_last: dict[str, str] = {}
        self._newest_stamp: float | None = None  # newest stamp of any stream, and when (node clock) it came
        self._newest_arrival = 0.0
        self._zero_stamp_warned = False
        self._shut_down = False

        # ~/stop_episode awaits the commit; in the node's default (mutually exclusive) group it
        # would hold back every subscription and timer until then, so it gets its own group,
        # as does the guard condition that wakes it when a save completes on the writer's thread.
        saving_group = ReentrantCallbackGroup()
        self.guard = NodeGuard(self, "dataset recorder", health=self.health)  # /diagnostics at 1 Hz (steady)
        guard = self.guard.wrap
        self._wake = self.create_guard_condition(guard(lambda: None, name="wake"), callback_group=saving_group)
        image_type = CompressedImage if config.compressed else Image
        for key, topic in zip(config.camera_keys, config.camera_topics):
            self.create_subscription(
                image_type, topic, guard(lambda msg, key=key: self.on_image(key, msg), name="on_image"),
                CAMERA_INPUT_QOS,
            )
        self.create_subscription(JointState, config.state_topic, guard(self.on_state), JOINT_INPUT_QOS)
        if config.has_actions:
            action_type = JointTrajectory if config.action_type == "joint_trajectory" else JointState
            self.create_subscription(action_type, config.action_topic, guard(self.on_action), JOINT_INPUT_QOS)
        self.status_pub = self.create_publisher(RecorderStatus, "~/status", 10)
        self.create_service(StartEpisode, "~/start_episode", guard(self.on_start))
        self.create_service(Trigger, "~/stop_episode", guard(self.on_stop), callback_group=saving_group)
        self.create_service(Trigger, "~/discard_episode", guard(self.on_discard))
        # Steady-clock timers: with use_sim_time the ROS clock stands still until /clock is
        # published, and the recorder must still report status and record stamped frames then.
        # Frame decisions themselves run on stamps and the node clock (see sync_now).
        # The pump only moves decided frames to the writer's queue; 10 Hz keeps the executor light.
        self.create_timer(0.1, guard(self.pump), clock=self.steady)
        self.create_timer(1.0 / config.status_rate, guard(self.publish_status), clock=self.steady)

        streams = ", ".join(
            [f"{k} <- {t}" for k, t in zip(config.camera_keys, config.camera_topics)]
            + [f"{STATE_KEY} <- {config.state_topic}"]
            + ([f"{ACTION_KEY} <- {config.action_topic} ({config.action_type})"] if config.has_actions else [])
        )
        self.get_logger().info(
            f"recorder: {config.fps} fps, {streams}; joints {config.joint_names}; "
            f"{'action-free; ' if not config.has_actions else ''}stale_policy {config.stale_policy}; "
            f"save_on_shutdown {config.save_on_shutdown}"
        )
        self.get_logger().info(self.note)
        self.publish_status()

    # ------------------------------------------------------------------ set-up

    def _declare_parameters(self) -> RecorderConfig:
        fps = declare(self, "fps", 10.0, "Dataset frame rate (frames per second, a whole number).", (1.0, 1000.0))
        if float(fps) != int(fps):
            raise ValueError(f"fps must be a whole number (LeRobot stores an integer fps), got {fps}")
        return RecorderConfig(
            dataset_root=declare(self, "dataset_root", "", "LeRobot dataset folder: created if absent, else resumed."),
            repo_id=declare(self, "repo_id", "local/teleop", "Repo id stored in the dataset."),
            fps=int(fps),
            robot_type=declare(self, "robot_type", "", "Robot type stored in the dataset (empty = none/any)."),
            camera_topics=declare(self, "camera_topics", ["camera/image_raw"], "Camera topics, one or more.",
                                  param_type=list),
            camera_names=declare(self, "camera_names", ["front"],
                                 "One name per camera topic; feature key observation.images.<name>.", param_type=list),
            compressed=declare(self, "compressed", False, "Cameras are sensor_msgs/CompressedImage, not Image."),
            image_height=declare(self, "image_height", 96, "Camera image height; other sizes are rejected.", (1, 8192)),
            image_width=declare(self, "image_width", 96, "Camera image width; other sizes are rejected.", (1, 8192)),
            state_topic=declare(self, "state_topic", "joint_states", "sensor_msgs/JointState of the robot."),
            joint_names=declare(self, "joint_names", ["agent_x", "agent_y"],
                                "Joints of the state and action vectors, in this order.", param_type=list),
            action_topic=declare(self, "action_topic", "joint_trajectory",
                                 "Command topic; empty = action-free recording (no action feature)."),
            action_type=declare(self, "action_type", "joint_trajectory",
                                "joint_trajectory (first point's positions) or joint_state (e.g. a leader arm)."),
            tolerance=declare(self, "tolerance", 0.0,
                              "Largest |sample stamp - frame time| in s; 0 = half a frame period.", (0.0, 10.0)),
            action_tolerance=declare(self, "action_tolerance", 0.0,
                                     "Tolerance of the action stream in s; 0 = same as tolerance.", (0.0, 10.0)),
            latency_budget=declare(self, "latency_budget", 0.25,
                                   "How long a frame waits for a lagging stream before it is decided (s).",
                                   (0.0, 10.0)),
            stale_policy=declare(self, "stale_policy", "skip",
                                 "skip: skip frames with a stale stream; flag: hold its last sample, flag the episode."),
            use_videos=declare(self, "use_videos", True, "Store cameras as video (true) or as PNG images in parquet."),
            vcodec=declare(self, "vcodec", "libsvtav1", "Video codec of LeRobot's encoder (libsvtav1, h264, hevc)."),
            image_writer_threads=declare(self, "image_writer_threads", 2,
                                         "Threads writing frame PNGs (0: in the writer thread).", (0, 64)),
            queue_size=declare(self, "queue_size", 256, "Frames the writer queue holds before frames are dropped.",
                               (1, 1_000_000)),
            buffer_size=declare(self, "buffer_size", 256, "Samples kept per stream for synchronisation.", (8, 100_000)),
            save_on_shutdown=declare(self, "save_on_shutdown", False,
                                     "On SIGINT/SIGTERM while recording: save (true) or discard (false) the episode."),
            status_rate=declare(self, "status_rate", 5.0, "Status messages per second.", (0.1, 100.0)),
        )

    def _open_writer(self) -> EpisodeWriter:
        config = self.config
        root = Path(os.path.expanduser(config.dataset_root)).absolute()
        writer = EpisodeWriter(
            root, config.repo_id, config.fps, config.features(), robot_type=config.robot_type or None,
            queue_size=config.queue_size, vcodec=config.vcodec, image_writer_threads=config.image_writer_threads,
        )
        report = writer.repair_report
        if report.created:
            note = f"created dataset {root} ({config.repo_id})"
        else:
            how = "adopted" if report.adopted else "resumed"
            note = f"{how} dataset {root}: {report.committed_episodes} episodes, {report.committed_frames} frames"
        if report.repaired:
            # A recorder was killed mid-episode or mid-save: the partial episode is gone.
            note += (
                f"; REPAIRED to the last saved episode (a previous recorder was killed): removed {report.removed}"
                + (f", restored {report.restored}" if report.restored else "")
            )
            self.get_logger().warning(note)
        self._startup_note = note
        return writer

    # ------------------------------------------------------------------ inputs (never block)

    def now_seconds(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def count_invalid(self, key: str, reason: str) -> None:
        self.invalid_samples[key] += 1
        self._invalid_last[key] = reason
        self.guard.reject(key, "unusable_sample", reason)  # logged (throttled), on /diagnostics

    def push(self, key: str, stamp: float, value: Any) -> None:
        if isinstance(value, Invalid):
            self.count_invalid(key, value.reason)
        self.sync.push(key, stamp, value)
        if self._newest_stamp is None or stamp >= self._newest_stamp:
            self._newest_stamp, self._newest_arrival = stamp, self.now_seconds()

    def header_stamp(self, key: str, msg: Any) -> float | None:
        """The header stamp in seconds; None (reported, message dropped) for a zero stamp."""
        stamp = stamp_to_seconds(msg.header.stamp)
        if stamp > 0:
            return stamp
        self.count_invalid(key, "unstamped message dropped (frames are matched by header stamps)")
        return None

    def on_image(self, key: str, msg: Image | CompressedImage) -> None:
        stamp = self.header_stamp(key, msg)
        if stamp is None:
            return
        config = self.config
        try:
            rgb = image_msg_to_rgb(msg)
        except CvBridgeError as err:
            value: Any = Invalid(f"cannot convert the image: {err}")
        else:
            if rgb.shape[:2] != (config.image_height, config.image_width):
                value = Invalid(
                    f"image is {rgb.shape[1]}x{rgb.shape[0]} (WxH), expected {config.image_width}x{config.image_height}"
                )
            else:
                value = rgb
        self.push(key, stamp, value)

    def on_state(self, msg: JointState) -> None:
        stamp = self.header_stamp(STATE_KEY, msg)
        if stamp is None:
            return
        try:
            value: Any = joint_vector(msg.name, msg.position, self.config.joint_names)
        except ValueError as err:
            value = Invalid(str(err))
        self.push(STATE_KEY, stamp, value)

    def on_action(self, msg: JointTrajectory | JointState) -> None:
        if isinstance(msg, JointTrajectory):
            stamp = stamp_to_seconds(msg.header.stamp)
            if stamp <= 0:
                # A zero stamp means "start now" (joint_trajectory_controller), so the command
                # took effect when it arrived: its arrival time on the node clock is its stamp.
                stamp = self.now_seconds()
                if not self._zero_stamp_warned:
                    self._zero_stamp_warned = True
                    self.get_logger().warning("action trajectories have zero stamps: using their arrival time")
                if stamp <= 0:  # no clock yet (use_sim_time before /clock)
                    self.count_invalid(ACTION_KEY, "zero-stamped trajectory and no node clock yet; dropped")
                    return
            try:
                value: Any = trajectory_action(msg, self.config.joint_names)
            except ValueError as err:
                value = Invalid(str(err))
        else:
            stamp = self.header_stamp(ACTION_KEY, msg)
            if stamp is None:
                return
            try:
                value = joint_vector(msg.name, msg.position, self.config.joint_names)
            except ValueError as err:
                value = Invalid(str(err))
        self.push(ACTION_KEY, stamp, value)

    # ------------------------------------------------------------------ frames

    def sync_now(self) -> float | None:
        """The current time in stamp time: the newest stamp plus the node-clock time since it came.

        Only node-clock differences are used, so stamps from a clock that is offset from ours
        (or sim time) are fine; while every stream is silent it still advances, so pending
        frames are decided (as missing) and stale streams are reported.
        """
        newest, arrival = self._newest_stamp, self._newest_arrival
        if newest is None:
            return None
        now = self.now_seconds()
        return newest + (max(0.0, now - arrival) if arrival > 0 and now > 0 else 0.0)

    def pump(self) -> None:
        """Decide the frames that can be decided and hand the complete ones to the writer."""
        if self._shut_down:
            return
        now = self.sync_now()
        if now is not None:
            for result in self.sync.poll(now):
                self.record(result)
        self.update_stale(now)

    def record(self, result: SyncResult) -> None:
        episode = self.episode
        if episode is None:
            return
        if not result.complete and self.config.stale_policy == "flag":
            held = self.sync.hold_missing(result)
            if held is not None:
                result = held
        if not result.complete:
            self.skip(episode, result.t, ", ".join(f"{name} {result.reasons[name]}" for name in result.missing))
            return
        invalid = [f"{name} invalid" for name, value in result.values.items() if isinstance(value, Invalid)]
        if invalid:
            self.skip(episode, result.t, ", ".join(invalid))
            return
        try:
            self.writer.add_frame(result.to_frame())
        except QueueFullError as err:
            episode.dropped += 1
            self.skip(episode, result.t, "writer queue full")
            self.get_logger().error(str(err), throttle_duration_sec=1.0)
            return
        except (RecordingError, ValueError) as err:
            self.skip(episode, result.t, "writer error")
            self.get_logger().error(f"frame at {result.t:.3f} not recorded: {err}", throttle_duration_sec=1.0)
            return
        episode.frames += 1
        self.queue_high_water = max(self.queue_high_water, self.writer.status()["queue_depth"])
        if result.held:
            episode.held += 1
            new_flag = episode.flag(f"held stale {', '.join(result.held)}")
        else:
            new_flag = False
        if new_flag:
            self.get_logger().warning(
                f"episode {episode.index} FLAGGED: frame at {result.t:.3f} holds the last sample of "
                f"{list(result.held)} (stale); stale_policy is flag"
            )
            self.publish_status()

    def skip(self, episode: Episode, t: float, reason: str) -> None:
        episode.skipped += 1
        episode.reasons[reason] += 1
        self.get_logger().warning(f"episode {episode.index}: frame at {t:.3f} skipped ({reason})",
                               throttle_duration_sec=1.0)

    def update_stale(self, now: float | None) -> None:
        """Streams with no sample, or none within their tolerance plus the latency budget of now."""
        stale = []
        specs = self.sync.streams
        for name, stream in self.sync.stats()["streams"].items():
            spec = specs[name]
            limit = (self.sync.tolerance if spec.tolerance is None else spec.tolerance) + self.sync.latency_budget
            if stream["newest"] is None or now is None or now - stream["newest"] > limit:
                stale.append(name)
        stale_t = tuple(stale)
        if stale_t != self.stale:
            gone, back = set(stale_t) - set(self.stale), set(self.stale) - set(stale_t)
            self.stale = stale_t
            if gone:
                self.get_logger().warning(f"stale or missing streams: {sorted(gone)} (now stale: {list(stale_t)})")
            if back:
                self.get_logger().info(f"streams back: {sorted(back)}")
            self.publish_status()

    # ------------------------------------------------------------------ services

    def _writer_usable(self) -> str | None:
        """Reopen a failed writer (which repairs the dataset to its last commit); an error text or None."""
        if self.writer.status()["state"] != "failed":
            return None
        error = self.writer.status()["error"]
        self.get_logger().error(f"the writer failed ({error}); reopening the dataset")
        try:
            self.writer.close()
            self.writer = self._open_writer()
        except (RecordingError, OSError, ValueError) as err:
            return f"the writer failed ({error}) and the dataset could not be reopened: {err}"
        self.note = f"writer failed ({error}); {self._startup_note}"
        return None

    def on_start(self, request: StartEpisode.Request, response: StartEpisode.Response) -> StartEpisode.Response:
        task = request.task
        response.episode_index = self.writer.status()["next_episode_index"]
        if self._shut_down:
            return self._answer(response, False, "the recorder is shutting down")
        if self.episode is not None:
            return self._answer(
                response, False, f"already recording episode {self.episode.index} ({self.episode.task!r}); "
                "stop or discard it first", self.episode.index,
            )
        if not task.strip():
            return self._answer(response, False, "task must be a non-empty description of the episode")
        problem = self._writer_usable()
        if problem:
            return self._answer(response, False, problem)
        try:
            index = self.writer.start_episode(task)
        except (RecordingError, ValueError) as err:
            return self._answer(response, False, f"cannot start an episode: {err}")
        self.sync.start()  # frames start once every stream has delivered a sample after this
        self.episode = Episode(index, task)
        self.queue_high_water = 0
        waiting = f"; no recent data yet from {list(self.stale)}" if self.stale else ""
        message = f"recording episode {index} ({task!r}){waiting}"
        self.get_logger().info(message)
        self.publish_status()
        return self._answer(response, True, message, index)

    async def on_stop(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        """Save the episode. A coroutine: it awaits the writer's commit (the video encoding) while
        the executor goes on receiving, so the answer says whether the episode is on disk. The
        next episode may be started before this answer comes."""
        episode = self.episode
        if episode is None:
            return self._answer(response, False, "not recording: nothing to save (call start_episode first)",
                                service="on_stop")
        now = self.sync_now()
        if now is not None:
            for result in self.sync.poll(now):  # the frames up to now that can be decided
                self.record(result)
        self.sync.stop()
        self.episode = None
        try:
            if episode.frames == 0:
                self.writer.discard_episode()
                message = (
                    f"episode {episode.index} has no frames, nothing to save; discarded "
                    f"({episode.summary()}; stale streams: {list(self.stale)})"
                )
                return self._finish(response, False, message, warn=True)
            # Frames lost to a full queue are skipped frames like any other (capture_stamp keeps
            # the real times); they are reported, and flag the episode.
            if episode.dropped:
                episode.flag(f"{episode.dropped} frames dropped by a full writer queue")
            saved = self.writer.save_episode_async(allow_dropped=True)
        except RecordingError as err:
            return self._finish(response, False, f"saving episode {episode.index} failed: {err}", warn=True)
        self.saving.append(episode.index)
        self.publish_status()
        try:
            await self._completion(saved)
            saved.result()
        except Exception as err:  # noqa: BLE001 — whatever the encoder or the disk raised, reported
            return self._finish(
                response, False, f"saving episode {episode.index} failed: {type(err).__name__}: {err}; the dataset "
                "stays at its last saved episode (the next start repairs it)", warn=True, saved=episode.index,
            )
        status = self.writer.status()
        timing = status["last_save"]
        save_s = sum(timing.get(k, 0.0) for k in ("save_episode_s", "finalize_s", "commit_s"))
        message = (
            f"saved episode {episode.index} ({episode.task!r}): {episode.summary()}; "
            f"queue high-water {self.queue_high_water}/{status['queue_capacity']}; "
            f"save {save_s:.2f} s (encode+write {timing.get('save_episode_s', 0.0):.2f}, "
            f"finalize {timing.get('finalize_s', 0.0):.3f}, commit {timing.get('commit_s', 0.0):.3f}); "
            f"dataset: {status['total_episodes']} episodes, {status['total_frames']} frames"
        )
        return self._finish(response, True, message, warn=bool(episode.flags), saved=episode.index)

    async def _completion(self, done: concurrent.futures.Future) -> None:
        """Await a future completed on another thread without blocking the executor."""
        future: Future = Future()

        def complete(_: concurrent.futures.Future) -> None:  # on the writer's thread
            future.set_result(None)
            self._wake.trigger()  # resume the waiting coroutine now, not at the next message

        done.add_done_callback(complete)
        await future

    def on_discard(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        episode = self.episode
        if episode is None:
            return self._answer(response, False, "not recording: nothing to discard", service="on_discard")
        self.sync.stop()
        self.episode = None
        try:
            self.writer.discard_episode()  # fast: queued frames are dropped, written PNGs deleted
        except RecordingError as err:
            return self._finish(response, False, f"discarding episode {episode.index} failed: {err}", warn=True)
        return self._finish(response, True, f"discarded episode {episode.index} ({episode.task!r}): "
                            f"{episode.summary()}")

    def _answer(self, response: Any, success: bool, message: str, index: int | None = None,
                service: str = "on_start") -> Any:
        response.success = success
        response.message = message
        if index is not None:
            response.episode_index = index
        if not success:
            self.guard.reject(service, "refused_request", message)
        return response

    def _finish(self, response: Any, success: bool, message: str, warn: bool = False,
                saved: int | None = None) -> Any:
        """End of an episode: log, remember as the status note, publish, answer."""
        if warn:
            self.get_logger().warning(message)
        else:
            self.get_logger().info(message)
        self.note = message
        if saved in self.saving:
            self.saving.remove(saved)
        self.publish_status()
        response.success = success
        response.message = message
        return response

    # ------------------------------------------------------------------ status

    def publish_status(self) -> None:
        if self._shut_down:
            return
        msg = RecorderStatus()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.dataset_root = str(self.writer.root)
        episode = self.episode
        msg.recording = episode is not None
        msg.stale_streams = list(self.stale)
        if episode is not None:
            msg.task = episode.task
            msg.episode_index = episode.index
            msg.frames_recorded = episode.frames
            msg.frames_skipped = episode.skipped
            waiting = " (waiting for every stream's first sample)" if self.sync.t0 is None else ""
            message = f"recording episode {episode.index} ({episode.task!r}){waiting}: {episode.summary()}"
        else:
            msg.episode_index = self.writer.status()["next_episode_index"]
            message = f"idle; {self.note}"
        if self.saving:
            message += f"; saving episode(s) {self.saving}"
        if self.invalid_samples:
            message += "; unusable samples: " + ", ".join(
                f"{key} {n} (last: {self._invalid_last[key]})" for key, n in sorted(self.invalid_samples.items())
            )
        error = self.writer.status()["error"]
        if error:
            message += f"; WRITER FAILED: {error}"
        msg.message = message
        self.status_pub.publish(msg)

    def health(self) -> Health:
        episode = self.episode
        values: dict[str, Any] = {
            "dataset_root": str(self.writer.root),
            "recording": episode is not None,
            "stale_streams": ", ".join(self.stale),
            "writer_state": self.writer.status()["state"],
        }
        if episode is not None:
            values.update(episode=episode.index, frames_recorded=episode.frames, frames_skipped=episode.skipped)
        message = f"recording episode {episode.index}" if episode is not None else "idle"
        return Health(message, values=values)

    # ------------------------------------------------------------------ shutdown

    def shutdown_recording(self) -> None:
        """Close the dataset: the open episode is saved or discarded per save_on_shutdown.

        Runs after the executor stopped (destroy_node). Default discard: an episode cut off by a
        shutdown was not ended by the operator, so it is an unfinished demonstration that should
        not enter training data unreviewed; and a discard is instant, while a save encodes video
        and can outlast a launcher's SIGINT -> SIGTERM -> SIGKILL escalation (a kill mid-save is
        rolled back at the next start, so the episode is lost either way). Saves already queued
        by stop_episode are completed. Committed episodes are never touched.
        """
        if self._shut_down:
            return
        self._shut_down = True
        RecorderNode.closed_after_shutdown = not self.context.ok()
        if threading.current_thread() is threading.main_thread():
            # A second Ctrl-C / SIGTERM must not interrupt the save or close; SIGKILL still can
            # (the dataset then rolls back to its last commit when the recorder next starts).
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_IGN)
        episode, self.episode = self.episode, None
        # The context is already shut down: the node's own logger would also try (and fail,
        # noisily) to publish on /rosout; a child logger only prints.
        log = rclpy.logging.get_logger(f"{self.get_logger().name}.shutdown")
        try:
            if episode is not None:
                if self.config.save_on_shutdown and episode.frames > 0:
                    self.writer.save_episode(allow_dropped=True)
                    log.warning(f"shutdown: saved episode {episode.index} ({episode.task!r}): {episode.summary()}")
                else:
                    self.writer.discard_episode()
                    log.warning(f"shutdown: discarded unfinished episode {episode.index} ({episode.task!r}): "
                                f"{episode.summary()}")
        except RecordingError as err:
            log.error(f"shutdown: episode {episode.index} could not be closed cleanly: {err}; the dataset "
                      "stays at its last saved episode")
        finally:
            self.writer.close()  # waits for queued saves
        status = self.writer.status()
        log.info(f"dataset {self.writer.root} closed: {status['total_episodes']} episodes, "
                 f"{status['total_frames']} frames")

    def destroy_node(self) -> None:
        self.shutdown_recording()
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    from rla_wm_ros.node_main import spin_node

    try:
        spin_node(RecorderNode, args, threads=1)  # one thread: see the module doc
    except RuntimeError as err:
        # rclpy can fail to take a message that arrives while a signal shuts the context down
        # (the wheels raise "Unable to convert call argument"); by then the dataset was closed
        # cleanly, so that is a normal exit. Any other failure is re-raised.
        if not RecorderNode.closed_after_shutdown:
            raise
        rclpy.logging.get_logger("recorder.shutdown").info(f"ignored an executor error during shutdown: {err}")


if __name__ == "__main__":
    main()
