"""Trajectory following (as joint_trajectory_controller) and feature PCA pictures."""
import numpy as np
import pytest

from rla_wm.control.trajectory import TrajectoryFollower
from rla_wm.visualize import feature_pca_rgb, side_by_side


def test_follower_interpolates_from_current_state_and_stops_at_last_point():
    follower = TrajectoryFollower(("x", "y"))
    current = np.array([0.0, 0.0])
    assert np.allclose(follower.target(5.0, current), current)
    follower.set_trajectory(("x", "y"), np.array([[1.0, 2.0], [3.0, 4.0]]), 10.0, np.array([1.0, 2.0]), 10.0, current)
    assert np.allclose(follower.target(10.5, current), [0.5, 1.0])
    assert np.allclose(follower.target(11.5, current), [2.0, 3.0])
    assert np.allclose(follower.target(99.0, current), [3.0, 4.0])


def test_follower_drops_past_points_and_maps_joint_order():
    follower = TrajectoryFollower(("x", "y"))
    current = np.array([1.0, 1.0])
    # Chunk stamped at t=10, arriving at t=11.5: the first point (t=11) is already past.
    follower.set_trajectory(("y", "x"), np.array([[9.0, 9.0], [5.0, 3.0]]), 10.0, np.array([1.0, 2.5]), 11.5, current)
    assert np.allclose(follower.target(11.5, current), [1.0, 1.0])  # no jump toward the dropped point
    assert np.allclose(follower.target(12.5, current), [3.0, 5.0])


def test_empty_trajectory_holds_position():
    follower = TrajectoryFollower(("x", "y"))
    follower.set_trajectory(("x", "y"), np.array([[5.0, 5.0]]), 0.0, np.array([1.0]), 0.0, np.zeros(2))
    follower.set_trajectory(("x", "y"), np.empty((0, 2)), 0.0, np.empty(0), 0.5, np.array([2.0, 2.0]))
    assert np.allclose(follower.target(10.0, np.array([7.0, 7.0])), [2.0, 2.0])


def test_follower_rejects_other_joints():
    with pytest.raises(ValueError, match="robot joints"):
        TrajectoryFollower(("x", "y")).set_trajectory(("x", "z"), np.zeros((1, 2)), 0, np.ones(1), 0, np.zeros(2))


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
