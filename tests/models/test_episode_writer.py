"""The crash-safe LeRobot episode writer (rla_wm.recording.writer, .journal, .repair).

Everything is real: LeRobot 0.4.4's writer (PNG frames, AV1 video, parquet) and reader,
and, for crash safety, child processes killed with SIGKILL. Images are 32x32 and episodes
a few frames long so the file stays fast.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from rla_wm.recording import (
    STAMP_KEY,
    DatasetRecoveryError,
    DroppedFramesError,
    EpisodeWriter,
    QueueFullError,
    RecordingError,
    repair_dataset,
)

os.environ.setdefault("SVT_LOG", "1")  # keep the AV1 encoder's banner out of the test output

FPS = 10
SIZE = 32
CAM = "observation.image"
STATE = "observation.state"
ACTION = "action"
EPOCH = 1_700_000_000.0  # header stamps look like ROS wall-clock stamps


def features(with_actions: bool = True) -> dict:
    feats = {
        CAM: {"dtype": "video", "shape": (SIZE, SIZE, 3), "names": ["height", "width", "channel"]},
        STATE: {"dtype": "float32", "shape": (2,), "names": ["x", "y"]},
    }
    if with_actions:
        feats[ACTION] = {"dtype": "float32", "shape": (2,), "names": ["x", "y"]}
    return feats


def image(level: int) -> np.ndarray:
    return np.full((SIZE, SIZE, 3), level, dtype=np.uint8)


def frame(episode: int, i: int, with_actions: bool = True, stamp: float | None = None) -> dict:
    row = {
        CAM: image(40 + 15 * i),
        STATE: np.array([episode + 0.25 * i, np.sin(i + episode)], dtype=np.float32),
        STAMP_KEY: EPOCH + 100 * episode + 0.1 * i + 0.0123 if stamp is None else stamp,
    }
    if with_actions:
        row[ACTION] = np.array([i * 1.5 - episode, 2.0 * episode - 0.5 * i], dtype=np.float32)
    return row


def load(root: Path, repo_id: str):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset(repo_id, root=root)


def column(dataset, key: str) -> np.ndarray:
    """A column in its stored dtype (datasets' numpy formatter would turn float64 into float32)."""
    import pyarrow as pa

    col = dataset.hf_dataset.with_format("arrow", columns=[key])[:][key].combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        return col.flatten().to_numpy().reshape(len(col), col.type.list_size)
    return col.to_numpy()


REPO = "local/recording_test"


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
    release = threading.Event()
    original = writer._dataset.add_frame

    def slow_add_frame(row):  # a stalled disk: the worker sits on the first frame
        release.wait(30)
        return original(row)

    writer._dataset.add_frame = slow_add_frame
    try:
        writer.start_episode("push")
        writer.add_frame(frame(0, 0))
        deadline = time.monotonic() + 10
        while writer.status()["queue_depth"] and time.monotonic() < deadline:
            time.sleep(0.01)  # the worker took frame 0 and blocks on it
        writer.add_frame(frame(0, 1))
        writer.add_frame(frame(0, 2))
        started = time.perf_counter()
        with pytest.raises(QueueFullError, match="full"):
            writer.add_frame(frame(0, 3))
        assert time.perf_counter() - started < 0.5  # refused at once, not blocked on the stalled worker
        status = writer.status()
        assert status["frames_dropped"] == 1 and status["episode_dropped"] == 1
        assert status["queue_depth"] == 2 and status["frames_queued"] == 3
        with pytest.raises(DroppedFramesError):
            writer.save_episode()  # its frame times would be wrong
        assert writer.status()["state"] == "recording"  # still open
        release.set()
        assert writer.save_episode(allow_dropped=True) == 0
        assert writer.status()["frames_saved"] == 3
    finally:
        release.set()
        writer.close()
    assert load(root, repo).num_episodes == 1


def test_worker_failure_stops_writing_and_reopening_repairs(tmp_path):
    import lerobot.datasets.lerobot_dataset as lrd

    root, repo = tmp_path / "failing", "local/failing"
    writer = EpisodeWriter(root, repo, FPS, features())
    writer.start_episode("fine")
    for i in range(3):
        writer.add_frame(frame(0, i))
    writer.save_episode()

    def broken_encoder(*args, **kwargs):
        raise RuntimeError("encoder died")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lrd, "encode_video_frames", broken_encoder)
        writer.start_episode("doomed")
        for i in range(3):
            writer.add_frame(frame(1, i))
        with pytest.raises(RecordingError, match="encoder died"):
            writer.save_episode()
    assert writer.status()["state"] == "failed" and "encoder died" in writer.status()["error"]
    with pytest.raises(RecordingError, match="failed"):
        writer.start_episode("more")
    writer.close()
    assert (root / "data" / "chunk-000" / "file-001.parquet").exists()  # the failed save's rows

    with EpisodeWriter(root, repo, FPS, features()) as writer:
        report = writer.repair_report
        assert report.committed_episodes == 1 and "data/chunk-000/file-001.parquet" in report.removed
        writer.start_episode("fine again")
        for i in range(2):
            writer.add_frame(frame(2, i))
        assert writer.save_episode() == 1
    ds = load(root, repo)
    assert list(ds.meta.episodes["length"]) == [3, 2]
    assert set(ds.meta.tasks.index) == {"fine", "fine again"}


def test_foreign_datasets_are_adopted_only_when_consistent(tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    feats = {**features(), STAMP_KEY: {"dtype": "float64", "shape": (1,), "names": None}}

    def vanilla(root: Path, repo: str, finalize: bool):
        ds = LeRobotDataset.create(repo, fps=FPS, features=feats, root=root, use_videos=True)
        for i in range(3):
            ds.add_frame({**frame(0, i), STAMP_KEY: np.array([frame(0, i)[STAMP_KEY]]), "task": "vanilla"})
        ds.save_episode()
        if finalize:
            ds.finalize()
        return ds

    vanilla(tmp_path / "good", "local/good", finalize=True)
    with EpisodeWriter(tmp_path / "good", "local/good", FPS, features()) as writer:
        assert writer.repair_report.adopted and writer.repair_report.committed_episodes == 1
        writer.start_episode("ours")
        for i in range(2):
            writer.add_frame(frame(1, i))
        writer.save_episode()
    assert list(load(tmp_path / "good", "local/good").meta.episodes["length"]) == [3, 2]

    # Recorded with plain LeRobot and never finalized (what a crash leaves): no metadata, a
    # footer-less parquet file. Nothing says which episodes are good, so it is refused.
    unfinished = vanilla(tmp_path / "bad", "local/bad", finalize=False)
    try:
        with pytest.raises(DatasetRecoveryError, match="no recording journal"):
            EpisodeWriter(tmp_path / "bad", "local/bad", FPS, features())
    finally:
        unfinished.finalize()


# =========================================================================== crash safety

CHILD = r"""
import json, os, signal, sys, time
from pathlib import Path
import numpy as np
sys.path.insert(0, os.environ["RECORDING_TEST_DIR"])
from test_episode_writer import features, frame, FPS
from rla_wm.recording import EpisodeWriter

root, repo, marker, mode = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4]
if mode == "in_save":
    # Die inside LeRobot's save of episode 2: after the data parquet (no footer yet), the
    # video and info.json/stats.json are written, before the episode metadata is.
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata
    original = LeRobotDatasetMetadata.save_episode
    def save_and_die(self, episode_index, *args, **kwargs):
        original(self, episode_index, *args, **kwargs)
        if episode_index == 2:
            marker.write_text("dying")
            os.kill(os.getpid(), signal.SIGKILL)
    LeRobotDatasetMetadata.save_episode = save_and_die

writer = EpisodeWriter(root, repo, FPS, features())
for e, n in ((0, 3), (1, 4)):
    writer.start_episode(f"task {e}")
    for i in range(n):
        writer.add_frame(frame(e, i))
    writer.save_episode()
writer.start_episode("the unlucky one")
for i in range(5):
    writer.add_frame(frame(2, i))
if mode == "in_save":
    writer.save_episode()
    time.sleep(60)
writer.flush()  # its frames are PNGs on disk...
for i in range(5, 8):
    writer.add_frame(frame(2, i))  # ... and more are in flight
marker.write_text(json.dumps(writer.status()))
time.sleep(60)
"""


def run_child(root: Path, repo: str, marker: Path, mode: str, kill: bool) -> None:
    env = {**os.environ, "RECORDING_TEST_DIR": str(Path(__file__).parent), "SVT_LOG": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root), repo, str(marker), mode],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read().decode(errors="replace") if proc.poll() is not None else ""
                pytest.fail(f"the child did not reach the crash point (rc={proc.returncode}):\n{out[-3000:]}")
            time.sleep(0.05)
        if kill:
            os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def check_first_two_episodes(ds) -> None:
    assert ds.num_episodes == 2 and len(ds) == 7
    assert list(ds.meta.episodes["length"]) == [3, 4]
    episode = column(ds, "episode_index")
    for e, n in ((0, 3), (1, 4)):
        np.testing.assert_array_equal(column(ds, STATE)[episode == e], np.stack([frame(e, i)[STATE] for i in range(n)]))


def test_sigkill_mid_episode_keeps_saved_episodes_and_next_writer_repairs(tmp_path):
    root, repo, marker = tmp_path / "crash", "local/crash", tmp_path / "mid_episode"
    run_child(root, repo, marker, "mid_episode", kill=True)
    status = json.loads(marker.read_text())
    assert status["total_episodes"] == 2 and status["episode_index"] == 2 and status["frames_written"] >= 12
    assert any((root / "images").rglob("*.png"))  # the partial episode's frames were on disk

    # Loadable as is, by LeRobot itself: 2 episodes with the right frames.
    check_first_two_episodes(load(root, repo))

    writer = EpisodeWriter(root, repo, FPS, features())
    try:
        report = writer.repair_report
        assert report.committed_episodes == 2 and report.committed_frames == 7
        assert "images" in report.removed and not (root / "images").exists()
        assert writer.start_episode("after the crash") == 2
        for i in range(6):
            writer.add_frame(frame(3, i))
        assert writer.save_episode() == 2
    finally:
        writer.close()
    ds = load(root, repo)
    assert ds.num_episodes == 3 and list(ds.meta.episodes["length"]) == [3, 4, 6]
    episode = column(ds, "episode_index")
    np.testing.assert_array_equal(column(ds, STATE)[episode == 2], np.stack([frame(3, i)[STATE] for i in range(6)]))
    assert list(ds.meta.episodes[2]["tasks"]) == ["after the crash"]


def test_sigkill_inside_save_is_rolled_back_to_the_last_commit(tmp_path):
    import pyarrow.parquet as pq

    root, repo, marker = tmp_path / "crash_save", "local/crash_save", tmp_path / "in_save"
    run_child(root, repo, marker, "in_save", kill=False)  # it kills itself inside save_episode
    # The damage: info.json counts the half-saved episode, its data parquet has no footer.
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["total_episodes"] == 3
    partial = root / "data" / "chunk-000" / "file-002.parquet"
    with pytest.raises(Exception):  # noqa: B017  pyarrow's error type for a truncated file varies by version
        pq.read_metadata(partial)

    report = repair_dataset(root)
    assert report.committed_episodes == 2
    assert "data/chunk-000/file-002.parquet" in report.removed
    assert f"videos/{CAM}/chunk-000/file-002.mp4" in report.removed
    assert {"meta/info.json", "meta/stats.json", "meta/tasks.parquet"} <= set(report.restored)
    ds = load(root, repo)
    check_first_two_episodes(ds)
    assert "the unlucky one" not in set(ds.meta.tasks.index)
    state = column(ds, STATE).astype(np.float64)
    np.testing.assert_allclose(ds.meta.stats[STATE]["max"], state.max(0), rtol=1e-6)  # stats rolled back too
    assert repair_dataset(root).repaired is False  # idempotent

    with EpisodeWriter(root, repo, FPS, features()) as writer:
        writer.start_episode("retry")
        for i in range(2):
            writer.add_frame(frame(4, i))
        writer.save_episode()
    assert list(load(root, repo).meta.episodes["length"]) == [3, 4, 2]
