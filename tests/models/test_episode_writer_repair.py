"""Crash safety of the episode writer (rla_wm.recording.writer, .journal, .repair): a failing worker, datasets
written by plain LeRobot, and child processes killed with SIGKILL mid-episode and inside a save."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rla_wm.recording import STAMP_KEY, DatasetRecoveryError, EpisodeWriter, RecordingError, repair_dataset
from rla_wm.recording.thread_scheduling import keep_thread_scheduling

from conftest import wait_for
from episode_writer_data import CAM, FPS, STATE, column, features, frame, load

os.environ.setdefault("SVT_LOG", "1")  # keep the AV1 encoder's banner out of the test output


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
        with keep_thread_scheduling():  # SVT-AV1 as root
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
import json, os, signal, sys
from pathlib import Path
sys.path.insert(0, os.environ["RECORDING_TEST_DIR"])
from episode_writer_data import features, frame, FPS
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
    signal.pause()  # not reached: the save kills the process
writer.flush()  # its frames are PNGs on disk...
for i in range(5, 8):
    writer.add_frame(frame(2, i))  # ... and more are in flight
partial = marker.with_suffix(".partial")
partial.write_text(json.dumps(writer.status()))
partial.replace(marker)  # whole or absent: the test reads it as soon as it appears
signal.pause()  # until the test kills it
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
        wait_for(lambda: marker.exists() or proc.poll() is not None, 120, "the child to reach the crash point")
        if not marker.exists():
            out = proc.stdout.read().decode(errors="replace")
            pytest.fail(f"the child exited before the crash point (rc={proc.returncode}):\n{out[-3000:]}")
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
