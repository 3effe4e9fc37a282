"""The LeRobot episode writer (rla_wm.recording.writer): what it saves, on which thread, its statistics,
the inputs it refuses, action-free data, asynchronous saves and a full queue.

Everything is real: LeRobot 0.4.4's writer (PNG frames, AV1 video, parquet) and reader. Images are
32x32 and episodes a few frames long so the file stays fast. Crash safety and repair:
test_episode_writer_repair.py.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from rla_wm.recording import STAMP_KEY, DroppedFramesError, EpisodeWriter, QueueFullError, RecordingError

from episode_writer_data import ACTION, CAM, FPS, REPO, STATE, column, features, frame, image, load

os.environ.setdefault("SVT_LOG", "1")  # keep the AV1 encoder's banner out of the test output


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Two saved episodes with a discarded (longer) one between them; encoding threads noted."""
    import lerobot.datasets.lerobot_dataset as lrd

    root = tmp_path_factory.mktemp("recording") / "ds"
    threads: list[str] = []
    original = lrd.encode_video_frames

    def spy(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return original(*args, **kwargs)

    lengths = {0: 6, 1: 4}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lrd, "encode_video_frames", spy)
        writer = EpisodeWriter(root, REPO, FPS, features(), robot_type="test_bot", queue_size=64)
        assert writer.repair_report.created
        assert writer.start_episode("pick the cube") == 0
        for i in range(lengths[0]):
            writer.add_frame(frame(0, i))
        assert writer.save_episode() == 0
        assert writer.start_episode("a mistake") == 1
        for i in range(7):
            writer.add_frame(frame(9, i))
        writer.flush()  # its PNGs are on disk now
        assert writer.discard_episode() == 7
        assert writer.start_episode("place the cube") == 1
        for i in range(lengths[1]):
            writer.add_frame(frame(1, i))
        assert writer.save_episode(wait=False) == 1
        writer.close()
    return {"root": root, "threads": threads, "lengths": lengths, "status": writer.status()}


def test_writer_round_trip(recorded):
    root, lengths = recorded["root"], recorded["lengths"]
    ds = load(root, REPO)
    assert ds.num_episodes == 2 and len(ds) == sum(lengths.values())
    assert ds.fps == FPS and ds.meta.robot_type == "test_bot"
    assert set(ds.features) >= {CAM, STATE, ACTION, STAMP_KEY, "timestamp", "frame_index"}
    assert ds.features[STAMP_KEY]["dtype"] == "float64"
    assert list(ds.meta.episodes["length"]) == [lengths[0], lengths[1]]
    assert [list(t) for t in ds.meta.episodes["tasks"]] == [["pick the cube"], ["place the cube"]]
    assert "a mistake" not in set(ds.meta.tasks.index)

    episode = column(ds, "episode_index")
    index = column(ds, "frame_index")
    for e, n in lengths.items():
        sel = episode == e
        assert list(index[sel]) == list(range(n))
        # timestamps are the dataset frame times; the real stamps are kept, exactly, in float64
        np.testing.assert_allclose(column(ds, "timestamp")[sel], np.arange(n) / FPS, atol=1e-6)
        expected_stamps = [frame(e, i)[STAMP_KEY] for i in range(n)]
        stamps = column(ds, STAMP_KEY)[sel]
        assert stamps.dtype == np.float64 and stamps.tolist() == expected_stamps
        np.testing.assert_array_equal(column(ds, STATE)[sel], np.stack([frame(e, i)[STATE] for i in range(n)]))
        np.testing.assert_array_equal(column(ds, ACTION)[sel], np.stack([frame(e, i)[ACTION] for i in range(n)]))
        # the video of each episode holds exactly its frames (a discarded longer episode must not leak in)
        ep = ds.meta.episodes[e]
        duration = ep[f"videos/{CAM}/to_timestamp"] - ep[f"videos/{CAM}/from_timestamp"]
        assert duration == pytest.approx(n / FPS, abs=1e-3)
    # decoded pixels: frame i is flat grey 40 + 15 i
    start = int(np.flatnonzero(episode == 1)[0])
    for i in range(lengths[1]):
        pixels = ds[start + i][CAM]
        assert abs(float(pixels.mean()) * 255 - (40 + 15 * i)) < 6


def test_writer_encodes_on_worker_thread_and_counts(recorded):
    threads, status = recorded["threads"], recorded["status"]
    assert len(threads) == 2 and threading.main_thread().name not in threads
    assert all(t.startswith("EpisodeWriter") for t in threads)
    assert status["state"] == "closed" and status["total_episodes"] == 2
    assert status["frames_queued"] == 17 and status["frames_saved"] == 10
    assert status["frames_discarded"] == 7 and status["episodes_discarded"] == 1
    assert status["frames_dropped"] == 0 and status["error"] is None
    assert not (recorded["root"] / "images").exists()  # no PNG left behind


def test_writer_stats_match_numpy(recorded):
    ds = load(recorded["root"], REPO)
    # Per-episode stats aggregated over episodes 0 and 1 (the discarded one must not count).
    for key in (STATE, ACTION, STAMP_KEY):
        data = column(ds, key).astype(np.float64).reshape(len(ds), -1)
        stats = ds.meta.stats[key]
        np.testing.assert_allclose(stats["min"], data.min(0), rtol=1e-6)
        np.testing.assert_allclose(stats["max"], data.max(0), rtol=1e-6)
        np.testing.assert_allclose(stats["mean"], data.mean(0), rtol=1e-6)
        if key != STAMP_KEY:  # LeRobot's E[x^2] - E[x]^2 variance is meaningless at epoch magnitudes
            np.testing.assert_allclose(stats["std"], data.std(0), rtol=1e-5, atol=1e-6)
        assert int(np.asarray(stats["count"]).reshape(-1)[0]) == len(ds)
    assert float(ds.meta.stats[STAMP_KEY]["min"][0]) == column(ds, STAMP_KEY).min()  # float64 all the way


def test_writer_refuses_other_features_and_a_second_writer(recorded, tmp_path):
    root = recorded["root"]
    with pytest.raises(RecordingError, match="action"):
        EpisodeWriter(root, REPO, FPS, features(with_actions=False), robot_type="test_bot")
    with pytest.raises(RecordingError, match="fps"):
        EpisodeWriter(root, REPO, 15, features(), robot_type="test_bot")
    writer = EpisodeWriter(tmp_path / "locked", "local/locked", FPS, features())
    try:
        with pytest.raises(RecordingError, match="another EpisodeWriter"):
            EpisodeWriter(tmp_path / "locked", "local/locked", FPS, features())
        writer.start_episode("t")
        with pytest.raises(ValueError, match="shape"):
            writer.add_frame({**frame(0, 0), STATE: np.zeros(3, np.float32)})
        with pytest.raises(ValueError, match="missing"):
            writer.add_frame({CAM: image(0), STATE: np.zeros(2, np.float32)})
        with pytest.raises(RecordingError, match="no frames"):
            writer.save_episode()
    finally:
        writer.close()
    assert load(recorded["root"], REPO).num_episodes == 2  # the refused openings changed nothing


def test_action_free_dataset(tmp_path):
    root, repo = tmp_path / "video_only", "local/video_only"
    with EpisodeWriter(root, repo, FPS, features(with_actions=False)) as writer:
        writer.start_episode("watch")
        for i in range(5):
            writer.add_frame(frame(0, i, with_actions=False))
        writer.save_episode()
        writer.start_episode("watch")
        with pytest.raises(ValueError, match="unexpected"):
            writer.add_frame(frame(1, 0, with_actions=True))
    ds = load(root, repo)
    assert ds.num_episodes == 1 and len(ds) == 5
    assert ACTION not in ds.features and ACTION not in ds.hf_dataset.column_names
    assert ACTION not in ds.meta.stats
    np.testing.assert_allclose(column(ds, "timestamp"), np.arange(5) / FPS, atol=1e-6)


def test_save_episode_async_returns_a_future_of_the_commit(tmp_path):
    root, repo = tmp_path / "async", "local/async"
    with EpisodeWriter(root, repo, FPS, features()) as writer:
        with pytest.raises(RecordingError, match="no open episode"):
            writer.save_episode_async()
        writer.start_episode("first")
        for i in range(4):
            writer.add_frame(frame(0, i))
        future = writer.save_episode_async()
        assert writer.start_episode("second") == 1  # the next episode starts while the first is saved
        assert future.result(timeout=60) == 0 and writer.num_episodes == 1
        writer.add_frame(frame(1, 0))
        assert writer.save_episode_async().result(timeout=60) == 1
    assert list(load(root, repo).meta.episodes["length"]) == [4, 1]


def test_queue_full_drops_without_blocking(tmp_path):
    root, repo = tmp_path / "slow", "local/slow"
    writer = EpisodeWriter(root, repo, FPS, features(), queue_size=2)
    taken, release = threading.Event(), threading.Event()
    written: list[int] = []
    original = writer._dataset.add_frame

    def stalled_add_frame(row):  # a stalled disk: the worker sits on the first frame until released
        taken.set()
        release.wait(30)
        written.append(len(written))
        return original(row)

    writer._dataset.add_frame = stalled_add_frame
    try:
        writer.start_episode("push")
        writer.add_frame(frame(0, 0))
        assert taken.wait(30), "the worker never took frame 0"
        writer.add_frame(frame(0, 1))
        writer.add_frame(frame(0, 2))
        with pytest.raises(QueueFullError, match="full"):
            writer.add_frame(frame(0, 3))
        # Refused while the worker still sat on frame 0: add_frame did not wait for room in the queue
        # (room comes only once the test releases the worker).
        assert written == []
        status = writer.status()
        assert status["frames_dropped"] == 1 and status["episode_dropped"] == 1
        assert status["queue_depth"] == 2 and status["frames_queued"] == 3
        with pytest.raises(DroppedFramesError):
            writer.save_episode()  # its frame times would be wrong
        assert writer.status()["state"] == "recording"  # still open
        release.set()
        assert writer.save_episode(allow_dropped=True) == 0
        assert writer.status()["frames_saved"] == 3 and written == [0, 1, 2]
    finally:
        release.set()
        writer.close()
    assert load(root, repo).num_episodes == 1
