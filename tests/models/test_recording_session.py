"""The recorder's logic without ROS (rla_wm.recording.session): settings, joint vectors, the
session's frames, stale streams, unusable samples, clock model and start/stop/discard/close.

Samples are fed as plain values with float stamps on an exact 1/30 s grid, and every value
encodes its grid index k, as in tests/ros/recorder_harness.py; the writer is a real EpisodeWriter
on tmp_path (PNG images, no video, so saves are fast).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from rla_wm.recording import STAMP_KEY, Answer, Invalid, PendingSave, RecorderConfig, RecordingSession
from rla_wm.recording.session import ACTION_KEY, STATE_KEY, joint_vector, trajectory_action

os.environ.setdefault("SVT_LOG", "1")

FPS = 10
RATE = 30.0  # camera and state samples per second: 3 per frame
HEIGHT, WIDTH = 12, 16
JOINTS = ["shoulder", "elbow"]
CAM = "observation.images.front"
EPOCH = 1_700_000_000.0
REPO = "local/session_test"


def settings(root: Path | str = "/unused", **overrides) -> RecorderConfig:
    values = dict(
        dataset_root=str(root),
        repo_id=REPO,
        fps=FPS,
        robot_type="",
        camera_topics=["cam/image_raw"],
        camera_names=["front"],
        compressed=False,
        image_height=HEIGHT,
        image_width=WIDTH,
        state_topic="joint_states",
        joint_names=list(JOINTS),
        action_topic="joint_trajectory",
        action_type="joint_trajectory",
        tolerance=0.0,
        action_tolerance=0.05,
        latency_budget=0.25,
        stale_policy="skip",
        use_videos=False,
        vcodec="libsvtav1",
        image_writer_threads=0,
        queue_size=64,
        buffer_size=256,
        save_on_shutdown=False,
        status_rate=5.0,
    )
    values.update(overrides)
    return RecorderConfig(**values)


class FakeClock:
    """The node clock: set by the test (seconds; 0 = no clock yet)."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def info(self, message: str) -> None:
        self.lines.append(("info", message))

    def warning(self, message: str) -> None:
        self.lines.append(("warning", message))

    def error(self, message: str) -> None:
        self.lines.append(("error", message))

    def text(self, level: str | None = None) -> str:
        return "\n".join(m for lv, m in self.lines if level is None or lv == level)


def image(k: int, height: int = HEIGHT) -> np.ndarray:
    return np.full((height, WIDTH, 3), (20 + 3 * k) % 200, dtype=np.uint8)


def state_of(k: int) -> list[float]:
    return [float(k), 0.5 * k + 100.0]


def action_of(k: int) -> list[float]:
    return [k + 0.25, -float(k)]


class Feed:
    """A session fed on the 30 Hz grid; the node clock runs `offset` seconds from the stamps."""

    def __init__(self, root: Path, offset: float = 0.0, **overrides) -> None:
        self.clock = FakeClock()
        self.log = Log()
        self.changes = 0
        self.invalid: list[tuple[str, str]] = []
        self.offset = offset
        self.session = RecordingSession(
            settings(root, **overrides),
            clock=self.clock,
            log=self.log,
            on_change=self._changed,
            on_invalid=lambda key, reason: self.invalid.append((key, reason)),
        )
        self.k = 0
        self.camera_on = True
        self.nan_state: set[int] = set()
        self.bad_size: set[int] = set()

    def _changed(self) -> None:
        self.changes += 1

    @staticmethod
    def stamp(k: int) -> float:
        return EPOCH + k / RATE

    @staticmethod
    def k_of(stamp: float) -> int:
        return int(round((stamp - EPOCH) * RATE))

    def run(self, n: int) -> None:
        """n grid steps: samples pushed in stamp order, the pump every third step."""
        s = self.session
        for _ in range(n):
            k, stamp = self.k, self.stamp(self.k)
            self.clock.t = stamp + self.offset
            if self.camera_on:
                s.push_image(CAM, stamp, image(k, HEIGHT + 2 if k in self.bad_size else HEIGHT))
            state = [float("nan")] * 2 if k in self.nan_state else state_of(k)
            s.push_state(stamp, list(reversed(JOINTS)), list(reversed(state)))  # taken by name
            if k % 3 == 0 and s.config.has_actions:
                s.push_trajectory(stamp, JOINTS, action_of(k))
            if k % 3 == 2:
                s.pump()
            self.k += 1

    def idle(self, seconds: float) -> None:
        """Time passes on the node clock with no samples."""
        self.clock.t += seconds
        self.session.pump()

    def stop(self) -> Answer:
        outcome = self.session.stop()
        if isinstance(outcome, PendingSave):
            outcome.future.result(timeout=60)
            outcome = self.session.finish_save(outcome)
        return outcome


def load(root: Path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset(REPO, root=root)


def column(dataset, key: str) -> np.ndarray:
    import pyarrow as pa

    col = dataset.hf_dataset.with_format("arrow", columns=[key])[:][key].combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        return col.flatten().to_numpy().reshape(len(col), col.type.list_size)
    return col.to_numpy()


# ---------------------------------------------------------------------- pure helpers


def test_joint_vector_takes_joints_by_name_as_float32_and_refuses_bad_values():
    values = joint_vector(["elbow", "shoulder"], [2.0, 1.0], JOINTS)
    assert values.dtype == np.float32 and values.tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="missing"):
        joint_vector(["elbow"], [2.0], JOINTS)
    with pytest.raises(ValueError, match="NaN"):
        joint_vector(JOINTS, [float("nan"), 1.0], JOINTS)
    with pytest.raises(ValueError, match="float32 range"), np.errstate(over="ignore"):
        joint_vector(JOINTS, [1e300, 1.0], JOINTS)
    assert trajectory_action(JOINTS, [3.0, 4.0], JOINTS).tolist() == [3.0, 4.0]
    with pytest.raises(ValueError, match="no points"):
        trajectory_action(JOINTS, None, JOINTS)


def test_config_checks_parameters_and_builds_the_feature_schema():
    config = settings()
    assert config.camera_keys == [CAM] and config.has_actions
    features = config.features()
    assert list(features) == [CAM, STATE_KEY, ACTION_KEY]
    assert features[CAM] == {"dtype": "image", "shape": (HEIGHT, WIDTH, 3), "names": ["height", "width", "channels"]}
    assert features[STATE_KEY] == {"dtype": "float32", "shape": (2,), "names": JOINTS} == features[ACTION_KEY]
    assert settings(use_videos=True).features()[CAM]["dtype"] == "video"
    assert ACTION_KEY not in settings(action_topic="").features()
    assert "action-free" in settings(action_topic="").describe() and f"{CAM} <- cam/image_raw" in config.describe()
    for overrides, reason in (
        ({"dataset_root": " "}, "dataset_root is required"),
        ({"repo_id": ""}, "repo_id"),
        ({"camera_names": ["a", "b"]}, "camera_names (2) must name every camera"),
        ({"camera_names": ["front view"]}, "letters, digits"),
        ({"joint_names": ["a", "a"]}, "joint_names must be unique"),
        ({"action_type": "twist"}, "action_type"),
        ({"stale_policy": "fill"}, "stale_policy"),
    ):
        with pytest.raises(ValueError, match=reason.replace("(", r"\(").replace(")", r"\)")):
            settings(**overrides)


# ---------------------------------------------------------------------- sessions


def test_session_records_saves_and_discards_episodes(tmp_path):
    root = tmp_path / "ds"
    feed = Feed(root)
    s = feed.session
    assert "created dataset" in s.note and s.status().stale_streams == [CAM, STATE_KEY, ACTION_KEY]
    for answer, reason in ((s.stop(), "not recording"), (s.discard(), "not recording"), (s.start(" "), "non-empty")):
        assert isinstance(answer, Answer) and not answer.success and answer.refused and reason in answer.message
    feed.run(6)
    assert s.status().stale_streams == [] and "streams back" in feed.log.text("info")

    started = s.start("pick the cube")
    assert started.success and started.episode_index == 0 and not started.refused
    again = s.start("another")
    assert not again.success and again.refused and "already recording" in again.message and again.episode_index == 0
    feed.run(40)
    status = s.status()
    assert status.recording and status.task == "pick the cube" and status.frames_recorded >= 11
    assert "recording episode 0" in status.message
    pending = s.stop()
    assert isinstance(pending, PendingSave) and "saving episode(s) [0]" in s.status().message
    saved = s.finish_save(pending)
    assert saved.success and "saved episode 0 ('pick the cube')" in saved.message, saved.message
    assert not s.status().recording and s.status().episode_index == 1 and "saved episode 0" in s.status().message

    assert s.start("a mistake").episode_index == 1
    feed.run(15)
    discarded = s.discard()
    assert discarded.success and "discarded episode 1" in discarded.message and not discarded.refused
    s.close()
    assert s.closed and s.start("late").message == "the recorder is shutting down"
    assert "closed: 1 episodes" in feed.log.text("info")

    ds = load(root)
    assert ds.num_episodes == 1 and tuple(ds.features[CAM]["shape"]) == (HEIGHT, WIDTH, 3)
    ks = [Feed.k_of(t) for t in column(ds, STAMP_KEY)]
    assert f"{len(ks)} frames, 0 skipped" in saved.message and len(ks) >= status.frames_recorded
    assert np.all(np.diff(ks) == 3)  # one frame per tick, none skipped
    np.testing.assert_array_equal(column(ds, STATE_KEY), np.array([state_of(k) for k in ks], np.float32))
    np.testing.assert_array_equal(column(ds, ACTION_KEY), np.array([action_of(k) for k in ks], np.float32))


def test_unusable_samples_skip_their_frame_and_are_reported(tmp_path):
    feed = Feed(tmp_path / "ds")
    s = feed.session
    feed.run(6)
    assert s.start("with bad samples").success
    feed.run(9)
    k = feed.k + 6
    feed.nan_state |= {k, k + 1, k + 2}
    feed.bad_size |= {k + 9, k + 10, k + 11}
    feed.run(30)
    message = s.status().message
    assert "unusable samples" in message and "NaN" in message and "expected 16x12" in message
    # Before the first tick (decided long ago): counted, but no frame is affected.
    s.push_state(0.0, JOINTS, state_of(0))  # unstamped: dropped
    s.push_trajectory(Feed.stamp(1), JOINTS, None)  # no points: an Invalid in the stream
    s.push_image(CAM, Feed.stamp(1), Invalid("cannot convert the image: corrupt"))  # the node's conversion failed
    assert s.check_stamp(CAM, 0.0) is False and s.check_stamp(CAM, Feed.stamp(1)) is True
    assert Counter(key for key, _ in feed.invalid) == {STATE_KEY: 3 + 1, CAM: 3 + 2, ACTION_KEY: 1}
    assert "unstamped message dropped" in s.status().message
    answer = feed.stop()
    assert answer.success and "observation.state invalid: 1" in answer.message, answer.message
    assert "observation.images.front invalid: 1" in answer.message
    s.close()


def test_stale_stream_skips_frames_under_skip_and_is_held_and_flagged_under_flag(tmp_path):
    feed = Feed(tmp_path / "skip")
    s = feed.session
    feed.run(6)
    assert s.start("camera dropout").success
    feed.run(12)
    feed.camera_on = False
    changes = feed.changes
    feed.run(30)
    assert s.status().stale_streams == [CAM] and feed.changes > changes
    assert "stale or missing streams" in feed.log.text("warning")
    frames, skipped = s.status().frames_recorded, s.status().frames_skipped
    assert skipped >= 6
    feed.camera_on = True
    feed.run(15)
    assert s.status().stale_streams == [] and s.status().frames_recorded > frames
    answer = feed.stop()
    assert answer.success and f"{CAM} stale" in answer.message and "FLAGGED" not in answer.message
    s.close()

    feed = Feed(tmp_path / "flag", stale_policy="flag", action_topic="")
    s = feed.session
    feed.run(6)
    assert s.start("held").success
    feed.run(12)
    feed.camera_on = False
    feed.run(15)
    assert "FLAGGED" in s.status().message and s.status().frames_skipped == 0
    assert "FLAGGED" in feed.log.text("warning")
    feed.camera_on = True
    feed.run(9)
    answer = feed.stop()
    assert answer.success and "FLAGGED (held stale observation.images.front)" in answer.message
    s.close()
    ds = load(tmp_path / "flag")
    assert ACTION_KEY not in ds.features
    cam_ks = np.array([Feed.k_of(t) for t in column(ds, STAMP_KEY)])
    state_ks = column(ds, STATE_KEY)[:, 0].astype(int)
    assert np.all(np.diff(state_ks) == 3)  # no frame time left out
    assert np.sum(cam_ks < state_ks - 1) >= 4  # held frames carry the last real image and its stamp


def test_clock_model_offset_clock_silence_and_zero_stamped_trajectories(tmp_path):
    # The node clock is an hour off the stamps: only its differences count.
    feed = Feed(tmp_path / "ds", offset=3600.0)
    s = feed.session
    assert s.sync_now() is None
    feed.run(6)
    assert s.sync_now() == pytest.approx(Feed.stamp(5))
    feed.clock.t += 0.5
    assert s.sync_now() == pytest.approx(Feed.stamp(5) + 0.5)
    assert s.start("silence").success
    feed.run(12)
    frames = s.status().frames_recorded
    feed.idle(1.0)  # every stream silent: pending frames are decided (as missing), all streams stale
    assert s.status().stale_streams == [CAM, STATE_KEY, ACTION_KEY] and s.status().frames_recorded >= frames
    assert s.discard().success

    # A zero-stamped trajectory means "now": its arrival time on the node clock, warned once.
    s.push_trajectory(0.0, JOINTS, action_of(1))
    s.push_trajectory(0.0, JOINTS, action_of(2))
    assert feed.log.text("warning").count("zero stamps") == 1
    assert s.sync.stats()["streams"][ACTION_KEY]["newest"] == pytest.approx(feed.clock.t)
    feed.clock.t = 0.0  # no node clock yet (sim time before /clock): dropped, reported
    s.push_trajectory(0.0, JOINTS, action_of(3))
    assert feed.invalid[-1] == (ACTION_KEY, "zero-stamped trajectory and no node clock yet; dropped")
    s.close()


def test_empty_episode_is_discarded_and_shutdown_saves_or_discards(tmp_path):
    root = tmp_path / "ds"
    feed = Feed(root, save_on_shutdown=True)
    s = feed.session
    assert s.start("no data").success  # no stream has delivered: no frame
    answer = feed.stop()
    assert not answer.success and not answer.refused and "has no frames" in answer.message
    feed.run(6)
    assert s.start("cut off").success
    feed.run(15)
    s.close()
    s.close()  # once only
    assert "shutdown: saved episode 0" in feed.log.text("warning")

    feed = Feed(root)  # resumed; default discards the unfinished episode
    s = feed.session
    assert "resumed dataset" in s.note and s.status().episode_index == 1
    feed.run(6)
    assert s.start("cut off too").success
    feed.run(15)
    s.close()
    assert "shutdown: discarded unfinished episode 1" in feed.log.text("warning")
    assert load(root).num_episodes == 1


def test_a_failed_writer_is_reopened_at_the_next_start(tmp_path):
    feed = Feed(tmp_path / "ds")
    s = feed.session
    real = s.writer

    class Failed:
        """The real writer, reporting a failure (as after an exception on its worker thread)."""

        root = real.root

        def status(self):
            return {**real.status(), "state": "failed", "error": "OSError: disk full"}

        def close(self):
            real.close()

    s.writer = Failed()
    assert "WRITER FAILED: OSError: disk full" in s.status().message
    feed.run(6)
    started = s.start("after the failure")
    assert started.success, started.message
    assert s.writer is not real and s.note.startswith("writer failed (OSError: disk full); ")
    assert "reopening the dataset" in feed.log.text("error")
    s.close()
