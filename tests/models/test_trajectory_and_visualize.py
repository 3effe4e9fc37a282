"""Trajectory following (as joint_trajectory_controller) and feature PCA pictures."""

import numpy as np
import pytest

from rla_wm.control.jtc import Trajectory
from rla_wm.control.trajectory import TrajectoryFollower
from rla_wm.evaluation.visualize import feature_pca_rgb, side_by_side

S = 1_000_000_000  # nanoseconds per second


def traj(names, positions, times_s, stamp_s=0.0) -> Trajectory:
    return Trajectory.from_arrays(
        names, np.array(positions, dtype=float), [round(t * S) for t in times_s], round(stamp_s * S)
    )


def test_follower_interpolates_from_current_state_and_stops_at_last_point():
    follower = TrajectoryFollower(("x", "y"))
    current = np.array([0.0, 0.0])
    assert np.allclose(follower.target(5 * S, current), current)
    assert follower.command(traj(("x", "y"), [[1.0, 2.0], [3.0, 4.0]], [1.0, 2.0], 10.0), 10 * S, current) == ""
    assert np.allclose(follower.target(round(10.5 * S), current), [0.5, 1.0])
    assert np.allclose(follower.target(round(11.5 * S), current), [2.0, 3.0])
    assert np.allclose(follower.target(99 * S, current), [3.0, 4.0])


def test_follower_interpolates_through_past_points_as_jtc_does_and_maps_joint_order():
    follower = TrajectoryFollower(("x", "y"))
    current = np.array([1.0, 1.0])
    # Stamped t=10, arriving at t=11.5: the first point (t=11) is past, so JTC's command jumps to the
    # interpolation between the two points at t=11.5 (halfway), not to a path from the current state.
    message = traj(("y", "x"), [[9.0, 9.0], [5.0, 3.0]], [1.0, 2.0], 10.0)
    assert follower.command(message, round(11.5 * S), current) == ""
    assert np.allclose(follower.target(round(11.5 * S) + 1, current), [6.0, 7.0], atol=1e-6)
    assert np.allclose(follower.target(13 * S, current), [3.0, 5.0])


def test_refused_trajectories_leave_the_previous_one_running():
    follower = TrajectoryFollower(("x", "y"))
    assert follower.command(traj(("x", "y"), [[5.0, 5.0]], [1.0]), 0, np.zeros(2)) == ""
    # An empty trajectory is refused by JTC (it is not a hold), as are other joints and unordered times.
    assert "empty trajectory" in follower.command(Trajectory(("x", "y"), ()), S // 2, np.array([2.0, 2.0]))
    assert "do not match" in follower.command(traj(("x", "z"), [[0.0, 0.0]], [1.0]), S // 2, np.zeros(2))
    assert "strictly increasing" in follower.command(
        traj(("x", "y"), [[0, 0], [1, 1]], [1.0, 0.5]), S // 2, np.zeros(2)
    )
    assert np.allclose(follower.target(10 * S, np.array([7.0, 7.0])), [5.0, 5.0])


def test_feature_pca_separates_regions():
    tokens = np.zeros((16, 8))
    tokens[:8, 0] = 5.0  # top half differs from bottom half along one direction
    tokens += np.random.default_rng(0).normal(0, 0.01, tokens.shape)
    image = feature_pca_rgb(tokens, 4, 4)
    assert image.shape == (4, 4, 3) and image.dtype == np.uint8
    assert abs(int(image[0, 0, 0]) - int(image[3, 0, 0])) > 200
    with pytest.raises(ValueError, match="grid"):
        feature_pca_rgb(tokens, 3, 4)


def test_side_by_side_height_and_layout():
    picture = side_by_side(np.zeros((96, 96, 3), np.uint8), np.full((16, 16, 3), 255, np.uint8), height=128)
    assert picture.shape == (128, 128 + 8 + 128, 3)
    assert picture[:, :128].max() == 0 and picture[:, -128:].min() == 255


def test_is_tail_of_matches_exactly_the_last_points():
    from rla_wm.control.jtc import is_tail_of

    chunk = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    assert is_tail_of(chunk[1:], chunk) and is_tail_of(chunk, chunk)
    assert not is_tail_of(chunk[:2], chunk)  # the head, not the tail
    assert not is_tail_of(np.empty((0, 2)), chunk) and not is_tail_of(np.vstack([chunk, chunk]), chunk)


def test_save_gif_writes_every_frame_scaled_at_the_given_rate(tmp_path):
    from PIL import Image

    from rla_wm.evaluation.visualize import save_gif

    frames = [np.full((96, 96, 3), value, dtype=np.uint8) for value in (0, 120, 255)]
    path = save_gif(frames, tmp_path / "episode.gif", fps=10.0, height=192)
    with Image.open(path) as gif:
        assert gif.n_frames == 3 and gif.size == (192, 192)
        assert gif.info["duration"] == 100 and gif.info["loop"] == 0
        gif.seek(2)
        assert np.asarray(gif.convert("RGB"))[0, 0].tolist() == [255, 255, 255]
    with pytest.raises(ValueError, match="no frames"):
        save_gif([], tmp_path / "empty.gif")
