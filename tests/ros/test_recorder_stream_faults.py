"""The recorder node when its streams misbehave: a stale camera, NaN joint states and wrong-size images skip
frames (never filled in), or, with stale_policy flag, the episode is flagged and the last real frame is
held; action-free, compressed and sim-time recording, and saving on shutdown. The live robot and the
helpers: recorder_harness.py."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import wait_for
from recorder_harness import *  # noqa: F403  (the feeder fixture)
from recorder_harness import FPS, HEIGHT, RATE, WIDTH, Recorder, column, counts, level, load, recorder_spec, shows_frame

pytestmark = pytest.mark.timeout(150)


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
    # The frames around the outage hold real wrist images of their own time, not zeros or repeats from
    # before it (the wrist camera is not the reference: its frame may be one grid index off).
    gap = int(np.argmax(np.diff(ks)))
    assert ks[gap] <= off + 1 and ks[gap + 1] >= on - 1, (ks, off, on)  # the largest gap is the outage
    for row in (gap, gap + 1):
        assert shows_frame(ds[row]["observation.images.wrist"], "wrist", int(ks[row]), spread=1), (row, ks[row])


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
