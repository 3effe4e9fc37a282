"""A recording session: the dataset recorder's logic, without ROS.

`RecordingSession` is what the recorder node (`rla_wm_ros.recorder_node`) runs: the node
converts messages into plain values with float header stamps (seconds) and calls in; the
session drives a `StreamSynchronizer` (one frame per tick at the dataset fps) and an
`EpisodeWriter` (worker thread, crash-safe commits), and keeps the episode's counters:

    session = RecordingSession(RecorderConfig(...), clock=node_clock_seconds, log=logger,
                               on_change=publish_status, on_invalid=report_rejection)
    session.push_image("observation.images.front", stamp, rgb)      # in the callbacks
    session.push_state(stamp, msg.name, msg.position)
    session.push_trajectory(stamp, msg.joint_names, first_point_positions)
    session.push_environment_state(stamp, feature_map_values)       # with environment_state_topic
    session.pump()                                                  # in a timer (~10 Hz)
    session.start("pick the cube"); session.stop(); session.discard()   # the services
    session.status()                                                # for ~/status
    session.close()                                                 # at shutdown

Rules it owns:

* frames are matched by header stamp; a zero stamp is unusable (the sample is dropped and
  reported), except on a joint trajectory, where it means "start now": its arrival time on
  the node clock is used;
* an unusable sample (`Invalid`: NaN, a missing joint, a wrong image size, an environment
  state of another size) still takes its place in its stream, so the frame it is nearest to is skipped, never filled;
* a frame with a stream missing or stale is skipped (`stale_policy` "skip"), or, under
  "flag", completed with the stream's last real sample and the episode flagged;
* "now" is the newest stamp plus the node-clock time since it arrived (`sync_now`), so
  stamps on another clock (or sim time) work and silent streams are still decided;
* a failed writer is reopened (which repairs the dataset to its last commit) at the next start.

Not thread-safe: call it from one thread (the node's single executor thread). `stop()` does
not wait for the video encoding: it returns a `PendingSave` whose future completes on the
writer's thread, and `finish_save()` turns it into the answer.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from rla_wm.control.joints import select_joints
from rla_wm.recording.environment import (
    ENVIRONMENT_STATE_KEY,
    check_environment_state_names,
    environment_state_vector,
)
from rla_wm.recording.errors import QueueFullError, RecordingError
from rla_wm.recording.sync import StreamSynchronizer, SyncResult
from rla_wm.recording.writer import EpisodeWriter

CAMERA_PREFIX = "observation.images."
STATE_KEY = "observation.state"
ACTION_KEY = "action"
ACTION_TYPES = ("joint_trajectory", "joint_state")
# How joint vectors are stored: "ros" as received (the JointState's names and units, radians on an arm);
# "so101_lerobot" in LeRobot's SO-101 layout (`rla_wm.envs.so101.lerobot_units`: `<joint>.pos` names,
# body joints in degrees, the gripper 0..100), so a dataset looks like one `lerobot-record` writes.
JOINT_LAYOUTS = ("ros", "so101_lerobot")
STALE_POLICIES = ("skip", "flag")
LOG_THROTTLE_S = 1.0  # repeated per-frame warnings: at most one a second per kind


class Log(Protocol):
    """What the session logs through: a `logging.Logger` or rclpy's node logger."""

    def info(self, message: str) -> Any: ...

    def warning(self, message: str) -> Any: ...

    def error(self, message: str) -> Any: ...


@dataclass(frozen=True)
class Invalid:
    """A received sample that cannot be recorded. It still takes its place in the stream (so
    the frame it is nearest to is skipped rather than filled from a neighbour)."""

    reason: str


def joint_vector(names: Sequence[str], positions: Sequence[float], wanted: Sequence[str]) -> np.ndarray:
    """Positions of `wanted` joints, in that order, as float32 (`select_joints`); ValueError also if a
    value is not finite after the cast to float32."""
    values = select_joints(names, positions, wanted).astype(np.float32)
    if not np.isfinite(values).all():
        bad = [name for name, v in zip(wanted, values) if not math.isfinite(float(v))]
        raise ValueError(f"value out of float32 range for joints {bad}")
    return values


def trajectory_action(names: Sequence[str], positions: Sequence[float] | None, wanted: Sequence[str]) -> np.ndarray:
    """A joint trajectory's first point's `positions` (None: it has no points), by joint name
    (see `joint_vector`)."""
    if positions is None:
        raise ValueError("trajectory has no points")
    return joint_vector(names, positions, wanted)


@dataclass
class RecorderConfig:
    """The recorder's settings, checked (ValueError with the parameter's name otherwise)."""

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
    # Recorded as observation.environment_state when the topic is set; one name per value.
    environment_state_topic: str = ""
    environment_state_names: list[str] = field(default_factory=list)
    joint_layout: str = "ros"

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
        if self.joint_layout not in JOINT_LAYOUTS:
            raise ValueError(f"joint_layout must be one of {JOINT_LAYOUTS}, got {self.joint_layout!r}")
        if self.joint_layout == "so101_lerobot":
            from rla_wm.envs.so101.lerobot_units import JOINT_NAMES as SO101_JOINTS

            if list(self.joint_names) != list(SO101_JOINTS):
                raise ValueError(
                    f"joint_layout so101_lerobot needs joint_names {list(SO101_JOINTS)} (LeRobot's SO-101 order), "
                    f"got {self.joint_names}"
                )
        if self.has_environment_state:
            # LeRobot fixes a feature's shape when the dataset is created, before any message
            # arrives, so the names (their count) fix the vector's size.
            check_environment_state_names(self.environment_state_names)

    @property
    def camera_keys(self) -> list[str]:
        return [CAMERA_PREFIX + name for name in self.camera_names]

    @property
    def has_actions(self) -> bool:
        return bool(self.action_topic)

    @property
    def has_environment_state(self) -> bool:
        return bool(self.environment_state_topic)

    @property
    def dataset_joint_names(self) -> list[str]:
        """The names of the state and action entries in the dataset (`joint_layout`)."""
        if self.joint_layout == "so101_lerobot":
            from rla_wm.envs.so101.lerobot_units import FEATURE_NAMES

            return list(FEATURE_NAMES)
        return list(self.joint_names)

    def joint_converter(self) -> Callable[[np.ndarray], np.ndarray] | None:
        """What turns a received joint vector (`joint_names` order) into the stored one; None: stored as is."""
        if self.joint_layout != "so101_lerobot":
            return None
        from rla_wm.envs.so101.lerobot_units import default_units

        units = default_units()
        return lambda radians: units.to_lerobot(radians).astype(np.float32)

    def describe(self) -> str:
        """The streams and policies in one line (for the start-up log)."""
        streams = ", ".join(
            [f"{k} <- {t}" for k, t in zip(self.camera_keys, self.camera_topics)]
            + [f"{STATE_KEY} <- {self.state_topic}"]
            + ([f"{ACTION_KEY} <- {self.action_topic} ({self.action_type})"] if self.has_actions else [])
            + (
                [f"{ENVIRONMENT_STATE_KEY} <- {self.environment_state_topic} {list(self.environment_state_names)}"]
                if self.has_environment_state
                else []
            )
        )
        stored = f" stored as {self.dataset_joint_names} (LeRobot units)" if self.joint_layout != "ros" else ""
        return (
            f"{self.fps} fps, {streams}; joints {self.joint_names}{stored}; "
            f"{'action-free; ' if not self.has_actions else ''}stale_policy {self.stale_policy}; "
            f"save_on_shutdown {self.save_on_shutdown}"
        )

    def features(self) -> dict[str, dict[str, Any]]:
        """The dataset features (LeRobot's defaults and the capture stamp are added by the writer)."""
        image = {
            "dtype": "video" if self.use_videos else "image",
            "shape": (self.image_height, self.image_width, 3),
            "names": ["height", "width", "channels"],
        }
        features: dict[str, dict[str, Any]] = {key: dict(image) for key in self.camera_keys}
        names = self.dataset_joint_names
        joints = {"dtype": "float32", "shape": (len(names),), "names": names}
        features[STATE_KEY] = dict(joints)
        if self.has_actions:
            features[ACTION_KEY] = dict(joints)
        if self.has_environment_state:
            names = list(self.environment_state_names)
            features[ENVIRONMENT_STATE_KEY] = {"dtype": "float32", "shape": (len(names),), "names": names}
        return features


@dataclass
class Episode:
    """The open episode, as the session counts it (the writer counts frames too)."""

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


@dataclass(frozen=True)
class Answer:
    """The outcome of start / stop / discard. `refused`: the request was refused as asked (wrong
    state, bad task, unusable writer) and changed nothing; otherwise an episode was ended and the
    outcome logged. `episode_index`: the episode concerned (for start: the one started, the one
    being recorded, or the next index)."""

    success: bool
    message: str
    episode_index: int | None = None
    refused: bool = False


@dataclass(frozen=True)
class PendingSave:
    """A save queued by `stop()`: `future` completes on the writer's thread; then `finish_save`."""

    episode: Episode
    future: concurrent.futures.Future


@dataclass(frozen=True)
class SessionStatus:
    """What ~/status and the diagnostics report."""

    dataset_root: str
    recording: bool
    task: str  # "" when idle
    episode_index: int  # the open episode, else the next one
    frames_recorded: int
    frames_skipped: int
    stale_streams: list[str]
    writer_state: str
    message: str


class RecordingSession:
    """The recorder's logic (see the module doc).

    config: the checked settings; the dataset is opened (created, or resumed and repaired) here,
        and a mismatch with a stored dataset raises.
    clock: the node clock in seconds (0 while there is none yet, e.g. sim time before /clock).
    log: where decisions are logged; on_change(): called when the status changed (publish it);
    on_invalid(key, reason): called for every unusable sample (counted in the status too).
    """

    def __init__(
        self,
        config: RecorderConfig,
        *,
        clock: Callable[[], float] = time.time,
        log: Log | None = None,
        on_change: Callable[[], None] | None = None,
        on_invalid: Callable[[str, str], None] | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.log: Log = log if log is not None else logging.getLogger(__name__)
        self.on_change = on_change or (lambda: None)
        self.on_invalid = on_invalid or (lambda key, reason: None)
        self._to_dataset = config.joint_converter()  # None: joint vectors are stored as received
        # Tolerance 0 means the synchronizer's default, half a frame period.
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
        if config.has_environment_state:
            # Required, with the joint state's tolerance: a frame without a fresh environment state
            # is skipped (or held and flagged) exactly like one without a fresh joint state.
            self.sync.add_stream(ENVIRONMENT_STATE_KEY, "state")

        self.startup_note = ""
        self.writer = self._open_writer()  # resumes and repairs an existing dataset; fails fast on a mismatch
        self.episode: Episode | None = None
        self.saving: list[int] = []  # episodes whose save is queued or running
        self.note = self.startup_note  # the last outcome, shown while idle
        self.stale: tuple[str, ...] = tuple(self.sync.streams)  # no data yet
        self.queue_high_water = 0
        self.invalid_samples: Counter = Counter()
        self.invalid_last: dict[str, str] = {}
        self.closed = False
        self._newest_stamp: float | None = None  # newest stamp of any stream, and when (node clock) it came
        self._newest_arrival = 0.0
        self._zero_stamp_warned = False
        self._logged_at: dict[str, float] = {}

    # ------------------------------------------------------------------ set-up

    def _open_writer(self) -> EpisodeWriter:
        config = self.config
        root = Path(os.path.expanduser(config.dataset_root)).absolute()
        writer = EpisodeWriter(
            root,
            config.repo_id,
            config.fps,
            config.features(),
            robot_type=config.robot_type or None,
            queue_size=config.queue_size,
            vcodec=config.vcodec,
            image_writer_threads=config.image_writer_threads,
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
            self.log.warning(note)
        self.startup_note = note
        return writer

    def _throttled(self, site: str, level: str, message: str) -> None:
        """Log at most once per LOG_THROTTLE_S for each `site` (a per-frame message)."""
        now = time.monotonic()
        last = self._logged_at.get(site)
        if last is not None and now - last < LOG_THROTTLE_S:
            return
        self._logged_at[site] = now
        getattr(self.log, level)(message)

    # ------------------------------------------------------------------ inputs

    def _count_invalid(self, key: str, reason: str) -> None:
        self.invalid_samples[key] += 1
        self.invalid_last[key] = reason
        self.on_invalid(key, reason)

    def check_stamp(self, key: str, stamp: float) -> bool:
        """False (reported as an unusable sample: drop the message) for a zero header stamp."""
        if stamp > 0:
            return True
        self._count_invalid(key, "unstamped message dropped (frames are matched by header stamps)")
        return False

    def push(self, key: str, stamp: float, value: Any) -> None:
        """Push a sample (an `Invalid` is counted, and still pushed) and note when it came."""
        if isinstance(value, Invalid):
            self._count_invalid(key, value.reason)
        self.sync.push(key, stamp, value)
        if self._newest_stamp is None or stamp >= self._newest_stamp:
            self._newest_stamp, self._newest_arrival = stamp, self.clock()

    def push_image(self, key: str, stamp: float, image: np.ndarray | Invalid) -> None:
        """An RGB (height, width, 3) camera frame of camera `key`, or why it could not be converted."""
        if not self.check_stamp(key, stamp):
            return
        config = self.config
        value: Any = image
        if not isinstance(image, Invalid) and image.shape[:2] != (config.image_height, config.image_width):
            value = Invalid(
                f"image is {image.shape[1]}x{image.shape[0]} (WxH), expected {config.image_width}x{config.image_height}"
            )
        self.push(key, stamp, value)

    def _push_joints(self, key: str, stamp: float, names: Sequence[str], positions: Sequence[float]) -> None:
        if not self.check_stamp(key, stamp):
            return
        try:
            value: Any = self._stored_joints(joint_vector(names, positions, self.config.joint_names))
        except ValueError as err:
            value = Invalid(str(err))
        self.push(key, stamp, value)

    def _stored_joints(self, vector: np.ndarray) -> np.ndarray:
        """A received joint vector in the dataset's layout (`joint_layout`)."""
        return vector if self._to_dataset is None else self._to_dataset(vector)

    def push_state(self, stamp: float, names: Sequence[str], positions: Sequence[float]) -> None:
        """A joint state (e.g. sensor_msgs/JointState's name and position)."""
        self._push_joints(STATE_KEY, stamp, names, positions)

    def push_action(self, stamp: float, names: Sequence[str], positions: Sequence[float]) -> None:
        """A command as a joint state (e.g. a leader arm)."""
        self._push_joints(ACTION_KEY, stamp, names, positions)

    def push_environment_state(self, stamp: float, values: Any) -> None:
        """An environment state (e.g. a FeatureMap's data, flattened), or `Invalid` saying why the
        message could not be read. Another size than environment_state_names, or a value that is not
        finite, is an unusable sample: reported, and the frame it is nearest to is not written."""
        if not self.config.has_environment_state or not self.check_stamp(ENVIRONMENT_STATE_KEY, stamp):
            return
        value: Any = values
        if not isinstance(values, Invalid):
            try:
                value = environment_state_vector(values, len(self.config.environment_state_names))
            except ValueError as err:
                value = Invalid(str(err))
        self.push(ENVIRONMENT_STATE_KEY, stamp, value)

    def push_trajectory(self, stamp: float, names: Sequence[str], positions: Sequence[float] | None) -> None:
        """A command as a joint trajectory: its first point's positions (None: no points)."""
        if stamp <= 0:
            # A zero stamp means "start now" (joint_trajectory_controller), so the command
            # took effect when it arrived: its arrival time on the node clock is its stamp.
            stamp = self.clock()
            if not self._zero_stamp_warned:
                self._zero_stamp_warned = True
                self.log.warning("action trajectories have zero stamps: using their arrival time")
            if stamp <= 0:  # no clock yet (use_sim_time before /clock)
                self._count_invalid(ACTION_KEY, "zero-stamped trajectory and no node clock yet; dropped")
                return
        try:
            value: Any = self._stored_joints(trajectory_action(names, positions, self.config.joint_names))
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
        now = self.clock()
        return newest + (max(0.0, now - arrival) if arrival > 0 and now > 0 else 0.0)

    def pump(self) -> None:
        """Decide the frames that can be decided, hand the complete ones to the writer, and
        update the stale streams."""
        if self.closed:
            return
        now = self.sync_now()
        if now is not None:
            for result in self.sync.poll(now):
                self.record(result)
        self.update_stale(now)

    def record(self, result: SyncResult) -> None:
        """One decided tick: a frame for the writer, or a counted skip."""
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
            self._throttled("queue_full", "error", str(err))
            return
        except (RecordingError, ValueError) as err:
            self.skip(episode, result.t, "writer error")
            self._throttled("writer_error", "error", f"frame at {result.t:.3f} not recorded: {err}")
            return
        episode.frames += 1
        self.queue_high_water = max(self.queue_high_water, self.writer.status()["queue_depth"])
        if result.held:
            episode.held += 1
            if episode.flag(f"held stale {', '.join(result.held)}"):
                self.log.warning(
                    f"episode {episode.index} FLAGGED: frame at {result.t:.3f} holds the last sample of "
                    f"{list(result.held)} (stale); stale_policy is flag"
                )
                self.on_change()

    def skip(self, episode: Episode, t: float, reason: str) -> None:
        episode.skipped += 1
        episode.reasons[reason] += 1
        self._throttled("skip", "warning", f"episode {episode.index}: frame at {t:.3f} skipped ({reason})")

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
                self.log.warning(f"stale or missing streams: {sorted(gone)} (now stale: {list(stale_t)})")
            if back:
                self.log.info(f"streams back: {sorted(back)}")
            self.on_change()

    # ------------------------------------------------------------------ episodes

    def _writer_usable(self) -> str | None:
        """Reopen a failed writer (which repairs the dataset to its last commit); an error text or None."""
        if self.writer.status()["state"] != "failed":
            return None
        error = self.writer.status()["error"]
        self.log.error(f"the writer failed ({error}); reopening the dataset")
        try:
            self.writer.close()
            self.writer = self._open_writer()
        except (RecordingError, OSError, ValueError) as err:
            return f"the writer failed ({error}) and the dataset could not be reopened: {err}"
        self.note = f"writer failed ({error}); {self.startup_note}"
        return None

    def start(self, task: str) -> Answer:
        """Open an episode of `task`; frames start once every stream has delivered a sample after this."""
        index = self.writer.status()["next_episode_index"]
        if self.closed:
            return Answer(False, "the recorder is shutting down", index, refused=True)
        if self.episode is not None:
            message = (
                f"already recording episode {self.episode.index} ({self.episode.task!r}); stop or discard it first"
            )
            return Answer(False, message, self.episode.index, refused=True)
        if not task.strip():
            return Answer(False, "task must be a non-empty description of the episode", index, refused=True)
        problem = self._writer_usable()
        if problem:
            return Answer(False, problem, index, refused=True)
        try:
            index = self.writer.start_episode(task)
        except (RecordingError, ValueError) as err:
            return Answer(False, f"cannot start an episode: {err}", index, refused=True)
        self.sync.start()
        self.episode = Episode(index, task)
        self.queue_high_water = 0
        waiting = f"; no recent data yet from {list(self.stale)}" if self.stale else ""
        message = f"recording episode {index} ({task!r}){waiting}"
        self.log.info(message)
        self.on_change()
        return Answer(True, message, index)

    def stop(self) -> Answer | PendingSave:
        """End the episode and queue its save (the frames up to now that can be decided are
        recorded first). An `Answer` when it ends here (not recording, no frames, the writer
        refused); otherwise a `PendingSave`: wait for its future, then call `finish_save`.
        The next episode may be started meanwhile."""
        episode = self.episode
        if episode is None:
            return Answer(False, "not recording: nothing to save (call start_episode first)", refused=True)
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
                return self._finish(episode, False, message, warn=True)
            # Frames lost to a full queue are skipped frames like any other (capture_stamp keeps
            # the real times); they are reported, and flag the episode.
            if episode.dropped:
                episode.flag(f"{episode.dropped} frames dropped by a full writer queue")
            saved = self.writer.save_episode_async(allow_dropped=True)
        except RecordingError as err:
            return self._finish(episode, False, f"saving episode {episode.index} failed: {err}", warn=True)
        self.saving.append(episode.index)
        self.on_change()
        return PendingSave(episode, saved)

    def finish_save(self, pending: PendingSave) -> Answer:
        """The answer to a `stop()` whose save has completed (waits for it if it has not)."""
        episode = pending.episode
        try:
            pending.future.result()
        except Exception as err:  # noqa: BLE001 — whatever the encoder or the disk raised, reported
            return self._finish(
                episode,
                False,
                f"saving episode {episode.index} failed: {type(err).__name__}: {err}; the dataset "
                "stays at its last saved episode (the next start repairs it)",
                warn=True,
                saved=True,
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
        return self._finish(episode, True, message, warn=bool(episode.flags), saved=True)

    def discard(self) -> Answer:
        """Drop the open episode (fast: queued frames are dropped, written PNGs deleted)."""
        episode = self.episode
        if episode is None:
            return Answer(False, "not recording: nothing to discard", refused=True)
        self.sync.stop()
        self.episode = None
        try:
            self.writer.discard_episode()
        except RecordingError as err:
            return self._finish(episode, False, f"discarding episode {episode.index} failed: {err}", warn=True)
        return self._finish(episode, True, f"discarded episode {episode.index} ({episode.task!r}): {episode.summary()}")

    def _finish(self, episode: Episode, success: bool, message: str, warn: bool = False, saved: bool = False) -> Answer:
        """End of an episode: log, remember as the note, report the change, answer."""
        if warn:
            self.log.warning(message)
        else:
            self.log.info(message)
        self.note = message
        if saved and episode.index in self.saving:
            self.saving.remove(episode.index)
        self.on_change()
        return Answer(success, message, episode.index)

    # ------------------------------------------------------------------ status

    def status(self) -> SessionStatus:
        episode = self.episode
        writer = self.writer.status()
        if episode is not None:
            waiting = " (waiting for every stream's first sample)" if self.sync.t0 is None else ""
            message = f"recording episode {episode.index} ({episode.task!r}){waiting}: {episode.summary()}"
        else:
            message = f"idle; {self.note}"
        if self.saving:
            message += f"; saving episode(s) {self.saving}"
        if self.invalid_samples:
            message += "; unusable samples: " + ", ".join(
                f"{key} {n} (last: {self.invalid_last[key]})" for key, n in sorted(self.invalid_samples.items())
            )
        if writer["error"]:
            message += f"; WRITER FAILED: {writer['error']}"
        return SessionStatus(
            dataset_root=str(self.writer.root),
            recording=episode is not None,
            task=episode.task if episode is not None else "",
            episode_index=episode.index if episode is not None else writer["next_episode_index"],
            frames_recorded=episode.frames if episode is not None else 0,
            frames_skipped=episode.skipped if episode is not None else 0,
            stale_streams=list(self.stale),
            writer_state=writer["state"],
            message=message,
        )

    # ------------------------------------------------------------------ shutdown

    def close(self, log: Log | None = None) -> None:
        """Close the dataset: the open episode is saved (save_on_shutdown, if it has frames) or
        discarded; saves already queued by `stop()` are completed. Committed episodes are never
        touched. `log`: where to log instead (e.g. a logger that works after ROS shut down)."""
        if self.closed:
            return
        self.closed = True
        log = log if log is not None else self.log
        episode, self.episode = self.episode, None
        try:
            if episode is not None:
                try:
                    if self.config.save_on_shutdown and episode.frames > 0:
                        self.writer.save_episode(allow_dropped=True)
                        log.warning(f"shutdown: saved episode {episode.index} ({episode.task!r}): {episode.summary()}")
                    else:
                        self.writer.discard_episode()
                        log.warning(
                            f"shutdown: discarded unfinished episode {episode.index} ({episode.task!r}): "
                            f"{episode.summary()}"
                        )
                except RecordingError as err:
                    log.error(
                        f"shutdown: episode {episode.index} could not be closed cleanly: {err}; the dataset "
                        "stays at its last saved episode"
                    )
        finally:
            self.writer.close()  # waits for queued saves
        status = self.writer.status()
        log.info(
            f"dataset {self.writer.root} closed: {status['total_episodes']} episodes, {status['total_frames']} frames"
        )
