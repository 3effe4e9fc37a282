"""Chunk timing: past points dropped, seams blended so the commanded path never jumps."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rla_wm.control.chunking import ChunkScheduler


def chunk(stamp: float, start: float, slope: float, points: int = 8, period: float = 0.1):
    times = stamp + period * np.arange(1, points + 1)
    positions = np.stack([start + slope * np.arange(1, points + 1), np.full(points, start)], axis=1)
    return times, positions


def test_points_past_or_due_too_soon_are_dropped():
    scheduler = ChunkScheduler(blend_time=0.0, min_lead_time=0.05)
    times, positions = chunk(stamp=10.0, start=0.0, slope=1.0)
    out = scheduler.schedule(times, positions, now=10.17)  # 10.1 past, 10.2 due in 0.03 s
    assert out.dropped == 2
    assert np.allclose(out.times, times[2:]) and np.allclose(out.positions, positions[2:])
    assert scheduler.schedule(times, positions, now=11.0) is None


def test_first_chunk_is_sent_unchanged():
    scheduler = ChunkScheduler(blend_time=0.3, min_lead_time=0.0)
    times, positions = chunk(10.0, 0.0, 1.0)
    assert np.allclose(scheduler.schedule(times, positions, now=10.0).positions, positions)


def test_seam_starts_on_the_previous_path_and_ramps_to_the_new_chunk():
    scheduler = ChunkScheduler(blend_time=0.3, min_lead_time=0.0)
    old_times, old_positions = chunk(10.0, 0.0, 1.0)  # x = 1, 2, ... at 10.1, 10.2, ...
    scheduler.schedule(old_times, old_positions, now=10.0)
    new_times, new_positions = chunk(10.2, 50.0, 0.0)  # disagrees strongly: x = 50 everywhere
    out = scheduler.schedule(new_times, new_positions, now=10.2)
    old_at_new = np.interp(out.times, old_times, old_positions[:, 0])
    assert out.positions[0, 0] == pytest.approx(old_at_new[0])  # no jump at the seam
    assert out.positions[3, 0] == pytest.approx(50.0)  # fully the new chunk after blend_time
    assert np.allclose(out.positions[-2:, 0], 50.0)  # beyond the old chunk's end
    steps = np.abs(np.diff(out.positions[:, 0]))
    raw_jump = abs(new_positions[0, 0] - old_at_new[0])
    assert steps.max() < raw_jump / 2  # the jump is spread over the blend window


def test_reset_forgets_the_previous_chunk():
    scheduler = ChunkScheduler(blend_time=0.3, min_lead_time=0.0)
    scheduler.schedule(*chunk(10.0, 0.0, 1.0), now=10.0)
    scheduler.reset()
    times, positions = chunk(10.2, 50.0, 0.0)
    assert np.allclose(scheduler.schedule(times, positions, now=10.2).positions, positions)


def test_no_blending_into_a_chunk_the_robot_is_not_following():
    tolerance = np.array([1.0, 1.0])
    old_times, old_positions = chunk(10.0, 0.0, 1.0)  # has the robot at x = 2 at t = 10.2
    new_times, new_positions = chunk(10.2, 50.0, 0.0)
    following = ChunkScheduler(blend_time=0.3, min_lead_time=0.0)
    following.schedule(old_times, old_positions, now=10.0)
    assert following.is_followed(10.2, np.array([1.5, 0.0]), tolerance)
    blended = following.schedule(new_times, new_positions, now=10.2, measured=np.array([1.5, 0.0]), tolerance=tolerance)
    assert blended.positions[0, 0] == pytest.approx(3.0)  # on the old path: the robot follows it
    # The gate refused the old chunk: the robot held at x = 0 and the new chunk is taken as it is.
    held = ChunkScheduler(blend_time=0.3, min_lead_time=0.0)
    held.schedule(old_times, old_positions, now=10.0)
    assert not held.is_followed(10.2, np.array([0.0, 0.0]), tolerance)
    fresh = held.schedule(new_times, new_positions, now=10.2, measured=np.array([0.0, 0.0]), tolerance=tolerance)
    assert np.allclose(fresh.positions, new_positions)
    assert not held.is_followed(10.2, np.array([np.nan, 0.0]), tolerance)  # no trust in a broken state


def test_bad_chunks_are_rejected():
    scheduler = ChunkScheduler(blend_time=0.3, min_lead_time=0.0)
    times, positions = chunk(10.0, 0.0, 1.0)
    bad = positions.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        scheduler.schedule(times, bad, now=10.0)
    with pytest.raises(ValueError, match="increase"):
        scheduler.schedule(times[::-1], positions, now=10.0)
    with pytest.raises(ValueError, match="one chunk"):
        scheduler.schedule(times[:-1], positions, now=10.0)
    with pytest.raises(ValueError):
        ChunkScheduler(blend_time=-1.0, min_lead_time=0.0)


@settings(max_examples=200, deadline=None)
@given(
    old_start=st.floats(-100, 100),
    old_slope=st.floats(-20, 20),
    new_start=st.floats(-100, 100),
    new_slope=st.floats(-20, 20),
    delay=st.floats(0.0, 0.7),
    blend_time=st.floats(0.05, 1.0),
)
def test_blended_points_stay_between_the_two_chunks(old_start, old_slope, new_start, new_slope, delay, blend_time):
    scheduler = ChunkScheduler(blend_time=blend_time, min_lead_time=0.0)
    old_times, old_positions = chunk(10.0, old_start, old_slope)
    scheduler.schedule(old_times, old_positions, now=10.0)
    new_times, new_positions = chunk(10.0 + delay, new_start, new_slope)
    out = scheduler.schedule(new_times, new_positions, now=10.0 + delay)
    old_at = np.interp(out.times, old_times, old_positions[:, 0])
    low = np.minimum(old_at, new_positions[:, 0]) - 1e-9
    high = np.maximum(old_at, new_positions[:, 0]) + 1e-9
    covered = out.times <= old_times[-1]
    assert ((out.positions[:, 0] >= low) | ~covered).all() and ((out.positions[:, 0] <= high) | ~covered).all()
    assert np.allclose(out.positions[~covered], new_positions[~covered])
    if covered[0]:
        assert out.positions[0, 0] == pytest.approx(old_at[0], abs=1e-9)


def test_replan_pacer_waits_execute_steps_unless_the_robot_left_the_chunk():
    from rla_wm.control.chunking import ReplanPacer

    pacer = ReplanPacer(execute_steps=4, point_period=0.1)
    assert pacer.due(10.0)
    pacer.acted(10.0)
    assert [pacer.due(10.0 + 0.1 * k) for k in range(1, 6)] == [False, False, False, True, True]
    assert pacer.due(10.33) is False and pacer.due(10.36) is True  # half a period of slack for jitter
    assert pacer.due(10.1, followed=False)  # the gate held or refused: act now
    assert pacer.due(9.0)  # stamps went backwards: a new episode
    pacer.reset()
    assert pacer.due(10.1)
    every = ReplanPacer(execute_steps=1, point_period=0.1)
    every.acted(10.0)
    assert every.due(10.01)
    with pytest.raises(ValueError):
        ReplanPacer(execute_steps=0, point_period=0.1)
