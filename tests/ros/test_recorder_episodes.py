"""The LeRobot dataset recorder node, in its own process, fed over real rclpy + Fast DDS: episodes recorded
through its services and read back with LeRobot, a SIGKILL mid-episode repaired on restart, and bad
parameters refused at start-up. The live robot and the helpers: recorder_harness.py."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from conftest import wait_for
from recorder_harness import *  # noqa: F403  (the feeder fixture)
from recorder_harness import (
    CAMERAS,
    FPS,
    HEIGHT,
    JOINTS,
    RATE,
    WIDTH,
    Recorder,
    action_of,
    column,
    counts,
    episode_rows,
    load,
    recorder_spec,
    shows_frame,
    state_of,
)

pytestmark = pytest.mark.timeout(150)


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
            assert shows_frame(pixels, name, k, spread=0 if name == "front" else 1), (row, name, k)


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
