"""Stream synchronisation (rla_wm.recording.sync): stamped streams -> dataset frames at a fixed fps."""

from __future__ import annotations

import numpy as np
import pytest

from rla_wm.recording import STAMP_KEY, StreamSynchronizer

FPS = 10


def three_streams(**kwargs) -> StreamSynchronizer:
    sync = StreamSynchronizer(FPS, **kwargs)
    sync.add_stream("cam", "camera")
    sync.add_stream("state", "state")
    sync.add_stream("action", "action")
    return sync


def test_sync_complete_frames_pick_nearest_samples_and_real_stamps():
    sync = three_streams()
    sync.start()
    # Camera at 10 Hz with jitter, state at 50 Hz, actions at 20 Hz, from t = 100.
    cam = [100.0 + 0.1 * k + 0.004 * (-1) ** k for k in range(6)]
    for s in cam:
        sync.push("cam", s, f"img@{s:.3f}")
    for k in range(30):
        sync.push("state", 100.0 + 0.02 * k + 0.001, np.array([k, k], dtype=np.float32))
    for k in range(12):
        sync.push("action", 100.0 + 0.05 * k - 0.003, k)

    assert sync.t0 == pytest.approx(cam[0])  # the last stream to deliver (cam, at 100.004) fixes t0
    results = sync.poll()
    assert [r.tick for r in results] == list(range(len(results))) and len(results) >= 4
    for r in results:
        assert r.complete and not r.missing
        for stamp in r.stamps.values():
            assert abs(stamp - r.t) <= sync.tolerance
        # nearest state sample: 50 Hz grid offset by 1 ms
        k = round((r.t - 100.001) / 0.02)
        assert r.stamps["state"] == pytest.approx(100.0 + 0.02 * k + 0.001)
        assert r.values["cam"] == f"img@{r.stamps['cam']:.3f}"
    frame0 = results[1].to_frame()
    assert set(frame0) == {"cam", "state", "action", STAMP_KEY}
    assert frame0[STAMP_KEY].dtype == np.float64 and frame0[STAMP_KEY][0] == results[1].stamps["cam"]
    # Every tick is decided once: polling again yields nothing new without new data.
    assert sync.poll() == []
    assert sync.stats()["complete"] == len(results)


def test_sync_tolerance_edge_is_inclusive():
    sync = StreamSynchronizer(FPS, tolerance=0.25)  # binary-exact numbers: no float fuzz in the edge
    sync.add_stream("cam", "camera")
    sync.add_stream("state", "state", tolerance=0.125)
    sync.push("cam", 1.25, "c")
    sync.push("state", 1.125, "s")
    r = sync.frame_at(1.0)
    assert r.complete and r.stamps == {"cam": 1.25, "state": 1.125}
    r = sync.frame_at(0.999)  # cam now 0.251 away, state 0.126 away: both beyond their tolerance
    assert not r.complete and set(r.missing) == {"cam", "state"}
    assert r.reasons == {"cam": "ahead", "state": "ahead"}
    assert r.values == {} and r.stamps == {}


def test_sync_stale_stream_is_reported_and_its_ticks_skipped():
    sync = three_streams(latency_budget=0.3)
    sync.start(t0=10.0)
    for k in range(6):  # all streams until 10.5
        t = 10.0 + 0.1 * k
        for name in ("cam", "state", "action"):
            sync.push(name, t + 0.001, k)
    assert [r.complete for r in sync.poll()] == [True] * 6
    # The state stream stops; cameras and actions go on. Ticks wait for the state stream...
    for k in range(6, 9):
        sync.push("cam", 10.0 + 0.1 * k + 0.001, k)
        sync.push("action", 10.0 + 0.1 * k + 0.001, k)
    assert sync.poll(now=10.0 + 0.6 + 0.25) == []  # tick 10.6 is within the latency budget
    # ... until they are older than now - latency_budget: then they are decided as incomplete.
    results = sync.poll(now=10.95)
    assert [round(r.t, 6) for r in results] == [10.6]
    (r,) = results
    assert not r.complete and r.missing == ("state",) and r.reasons == {"state": "stale"}
    assert r.values == {} and r.stamps == {}  # nothing zero-filled, nothing repeated
    with pytest.raises(ValueError, match="incomplete"):
        r.to_frame()
    # Without a clock, "now" is the newest stamp (10.801): 10.6 is decided, 10.7 waits.
    sync.push("state", 10.0 + 0.7 + 0.002, 7)  # the state stream comes back
    sync.push("state", 10.0 + 0.8 + 0.002, 8)
    results = sync.poll()
    assert [(round(r.t, 6), r.complete) for r in results] == [(10.7, True), (10.8, True)]
    stats = sync.stats()
    assert stats["skipped"] == 1 and stats["streams"]["state"]["missed_ticks"] == 1


def test_sync_out_of_order_pushes_match_in_order_ones():
    rng = np.random.default_rng(0)
    samples = [("cam", 5.0 + 0.1 * k + rng.uniform(-0.01, 0.01), ("cam", k)) for k in range(10)]
    samples += [("state", 5.0 + 0.025 * k, ("state", k)) for k in range(40)]

    def run(order):
        sync = StreamSynchronizer(FPS)
        sync.add_stream("cam", "camera")
        sync.add_stream("state", "state")
        sync.start(t0=5.0)
        for i in order:
            sync.push(*samples[i])
        return sync, [(r.t, dict(r.values), dict(r.stamps)) for r in sync.poll()]

    in_order_sync, in_order = run(sorted(range(len(samples)), key=lambda i: samples[i][1]))
    shuffled_sync, shuffled = run(rng.permutation(len(samples)))
    assert len(in_order) >= 8 and shuffled == in_order
    assert shuffled_sync.stats()["streams"]["state"]["out_of_order"] > 0
    assert in_order_sync.stats()["streams"]["state"]["out_of_order"] == 0


def test_sync_gap_is_not_filled_and_optional_streams_do_not_block():
    sync = StreamSynchronizer(FPS, latency_budget=0.0)
    sync.add_stream("cam", "camera")
    sync.add_stream("state", "state")
    sync.add_stream("wrench", "other", required=False)
    sync.start()
    for k in range(8):
        sync.push("cam", 2.0 + 0.1 * k, k)
        if k not in (3, 4):  # the state stream loses two messages
            sync.push("state", 2.0 + 0.1 * k, np.full(2, k, dtype=np.float32))
    sync.push("wrench", 2.2, "w")
    results = sync.poll()
    assert [round(r.t, 6) for r in results] == [round(2.0 + 0.1 * k, 6) for k in range(8)]
    assert [r.complete for r in results] == [True, True, True, False, False, True, True, True]
    for r in results[3:5]:
        assert r.reasons == {"state": "gap"} and r.values == {}
    for r in results[:3] + results[5:]:
        assert int(r.values["state"][0]) == int(round((r.t - 2.0) * 10))  # real samples only
    assert "wrench" in results[2].values and "wrench" not in results[0].values
    assert results[0].missing_optional == ("wrench",)


def test_sync_hold_missing_holds_the_last_real_sample_never_a_made_up_one():
    sync = StreamSynchronizer(FPS, latency_budget=0.0)
    sync.add_stream("cam", "camera")
    sync.add_stream("state", "state")
    sync.start(t0=1.0)
    for k in range(6):
        sync.push("cam", 1.0 + 0.1 * k, f"cam{k}")
        if k < 2:  # the state stream stops after 1.1
            sync.push("state", 1.0 + 0.1 * k, f"state{k}")
    results = sync.poll(now=1.55)
    assert [r.complete for r in results] == [True, True, False, False, False, False]
    held = sync.hold_missing(results[4])
    assert held is not None and held.complete and held.held == ("state",)
    assert held.values == {"cam": "cam4", "state": "state1"}  # the newest real state sample, not zeros
    assert held.stamps["state"] == 1.1 and held.to_frame()[STAMP_KEY][0] == held.stamps["cam"]
    assert results[0].held == () and sync.hold_missing(results[0]) is results[0]
    # Nothing at or before the tick to hold: no frame rather than an invented one.
    late = StreamSynchronizer(FPS, latency_budget=0.0)
    late.add_stream("cam", "camera")
    late.add_stream("state", "state")
    late.push("cam", 2.0, "c")
    late.push("state", 2.5, "s")
    assert late.hold_missing(late.frame_at(2.0)) is None
