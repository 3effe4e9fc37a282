"""FeatureMap / LatentAction / JointTrajectory conversions: round trips and shape checks."""

import array
import math

import numpy as np
import pytest
from builtin_interfaces.msg import Duration, Time
from std_msgs.msg import Header
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from rla_wm_ros.conversions import (
    Chunk,
    MessageShapeError,
    chunk_to_msg,
    duration_to_seconds,
    features_to_msg,
    latent_to_msg,
    msg_to_chunk,
    msg_to_features,
    msg_to_latent,
    msg_to_trajectory,
    seconds_to_duration,
    trajectory_to_msg,
)

HEADER = Header(stamp=Time(sec=12, nanosec=345), frame_id="cam")


def test_feature_map_round_trip_keeps_layout_and_header():
    tokens = np.arange(4 * 3 * 5, dtype=np.float32).reshape(12, 5)
    msg = features_to_msg(tokens, 4, 3, "enc@224", HEADER)
    assert (msg.grid_height, msg.grid_width, msg.channels) == (4, 3, 5)
    assert msg.header.stamp == HEADER.stamp and msg.encoder_id == "enc@224"
    assert isinstance(msg.data, array.array) and len(msg.data) == 60
    np.testing.assert_array_equal(msg_to_features(msg), tokens)


def test_feature_map_rejects_length_mismatch_and_nan():
    msg = features_to_msg(np.zeros((6, 2), np.float32), 2, 3, "e", HEADER)
    msg.channels = 3
    with pytest.raises(MessageShapeError, match="12 values, shape says 18"):
        msg_to_features(msg)
    msg = features_to_msg(np.zeros((6, 2), np.float32), 2, 3, "e", HEADER)
    msg.data[4] = float("nan")
    with pytest.raises(MessageShapeError, match="NaN"):
        msg_to_features(msg)
    msg.grid_height = 0
    with pytest.raises(MessageShapeError, match="empty"):
        msg_to_features(msg)
    with pytest.raises(MessageShapeError, match="grid"):
        features_to_msg(np.zeros((5, 2)), 2, 3, "e", HEADER)


def test_latent_action_round_trip_and_checks():
    z = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    msg = latent_to_msg(z, 5, "rla", HEADER, Time(sec=11))
    assert (msg.tokens, msg.dim, msg.horizon) == (8, 4, 5) and msg.start_stamp.sec == 11
    np.testing.assert_array_equal(msg_to_latent(msg), z)
    msg.dim = 5
    with pytest.raises(MessageShapeError):
        msg_to_latent(msg)
    with pytest.raises(MessageShapeError, match="tokens, dim"):
        latent_to_msg(np.zeros(3), 5, "rla", HEADER, Time())


def test_chunk_round_trip_and_durations():
    chunk = Chunk(("a", "b"), np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([0.1, 1.25]), Time(sec=3, nanosec=5))
    back = msg_to_chunk(chunk_to_msg(chunk))
    assert back.joint_names == ("a", "b") and back.stamp == chunk.stamp
    np.testing.assert_allclose(back.positions, chunk.positions)
    np.testing.assert_allclose(back.times_from_start, chunk.times_from_start)
    assert duration_to_seconds(seconds_to_duration(2.999999999)) == pytest.approx(2.999999999)


def test_trajectory_with_ragged_point_is_rejected():
    msg = JointTrajectory(joint_names=["a", "b"])
    msg.points = [JointTrajectoryPoint(positions=[1.0, 2.0]), JointTrajectoryPoint(positions=[1.0])]
    with pytest.raises(MessageShapeError, match="point 1 has 1 positions for 2 joints"):
        msg_to_chunk(msg)


def test_trajectory_message_round_trip_keeps_every_field_and_refuses_impossible_times():
    msg = JointTrajectory(joint_names=["a", "b"])
    msg.header.stamp = Time(sec=-1, nanosec=5)
    msg.points = [
        JointTrajectoryPoint(
            positions=[1.0, 2.0],
            velocities=[float("nan"), 0.0],
            effort=[3.0],
            time_from_start=Duration(sec=-2, nanosec=7),
        ),
        JointTrajectoryPoint(positions=[1.5], accelerations=[1.0, 2.0], time_from_start=Duration(sec=1)),
    ]
    trajectory = msg_to_trajectory(msg)
    assert trajectory.stamp_ns == -1_000_000_000 + 5
    assert trajectory.points[0].time_from_start_ns == -2_000_000_000 + 7
    assert math.isnan(trajectory.points[0].velocities[0]) and trajectory.points[0].effort == (3.0,)
    assert trajectory.points[1].positions == (1.5,) and trajectory.points[1].accelerations == (1.0, 2.0)
    back = trajectory_to_msg(trajectory)
    assert back.header.stamp.sec == -1 and back.header.stamp.nanosec == 5
    assert back.points[0].time_from_start.sec == -2 and back.points[0].time_from_start.nanosec == 7
    assert list(back.points[1].accelerations) == [1.0, 2.0] and list(back.points[0].effort) == [3.0]
    msg.points[1].time_from_start.nanosec = 1_500_000_000
    with pytest.raises(MessageShapeError, match="nanosec"):
        msg_to_trajectory(msg)


def test_joint_positions_by_name_and_refusals():
    from sensor_msgs.msg import JointState

    from rla_wm_ros.conversions import joint_positions

    msg = JointState(name=["b", "a", "c"], position=[2.0, 1.0, 3.0])
    assert joint_positions(msg, ["a", "b"]).tolist() == [1.0, 2.0]
    with pytest.raises(MessageShapeError, match=r"joints \['d'\] missing"):
        joint_positions(msg, ["a", "d"])
    with pytest.raises(MessageShapeError, match="2 joint names but 1 values"):
        joint_positions(JointState(name=["a", "b"], position=[1.0]), ["a", "b"])  # fewer positions than names
    with pytest.raises(MessageShapeError, match="repeat"):
        joint_positions(JointState(name=["a", "a"], position=[1.0, 2.0]), ["a"])
    with pytest.raises(MessageShapeError, match="NaN or inf"):
        joint_positions(JointState(name=["a"], position=[float("nan")]), ["a"])


def test_feature_map_of_another_grid_is_refused_even_with_the_right_token_count():
    from rla_wm_ros.conversions import GridMismatchError

    tokens = np.zeros((256, 192), np.float32)
    assert msg_to_features(features_to_msg(tokens, 16, 16, "enc", HEADER), expected=(16, 16, 192)).shape == (256, 192)
    for height, width, channels in ((8, 32, 192), (8, 8, 192), (16, 16, 384), (1, 1, 1)):
        msg = features_to_msg(np.zeros((height * width, channels), np.float32), height, width, "enc", HEADER)
        msg_to_features(msg)  # consistent in itself
        with pytest.raises(GridMismatchError, match=f"{height}x{width}x{channels}, the model takes 16x16x192"):
            msg_to_features(msg, expected=(16, 16, 192))
    assert issubclass(GridMismatchError, MessageShapeError)


def test_model_features_checks_the_encoder_before_the_grid_and_the_payload():
    from rla_wm_ros.conversions import EncoderMismatchError, GridMismatchError, model_features

    tokens = np.arange(4 * 6, dtype=np.float32).reshape(4, 6)
    good = features_to_msg(tokens, 2, 2, "enc@224", HEADER)
    np.testing.assert_array_equal(model_features(good, "enc@224", expected=(2, 2, 6)), tokens)
    np.testing.assert_array_equal(model_features(good, "enc@224"), tokens)  # no grid expected: any grid

    # Another encoder is named as such even when its grid and payload are wrong too.
    foreign = features_to_msg(np.zeros((9, 3), np.float32), 3, 3, "other@518", HEADER)
    foreign.data[0] = float("nan")
    with pytest.raises(EncoderMismatchError, match=r"'other@518', the model was trained on 'enc@224'"):
        model_features(foreign, "enc@224", expected=(2, 2, 6))
    # The right encoder on another grid: a grid mismatch, before the payload is read.
    foreign.encoder_id = "enc@224"
    with pytest.raises(GridMismatchError, match="3x3x3, the model takes 2x2x6"):
        model_features(foreign, "enc@224", expected=(2, 2, 6))
    # The right encoder and grid with a NaN: malformed, neither of the mismatches.
    good.data[5] = float("nan")
    with pytest.raises(MessageShapeError, match="NaN") as caught:
        model_features(good, "enc@224", expected=(2, 2, 6))
    assert not isinstance(caught.value, (EncoderMismatchError, GridMismatchError))


def test_feature_refusal_gives_each_kind_of_refused_map_its_own_reason():
    from rla_wm_ros.conversions import EncoderMismatchError, GridMismatchError, feature_refusal

    assert feature_refusal(EncoderMismatchError("x")) == "encoder_mismatch"
    assert feature_refusal(GridMismatchError("x")) == "grid_mismatch"
    assert feature_refusal(MessageShapeError("x")) == "malformed_features"


def test_or_reject_readers_refuse_with_the_reason_nodes_count():
    from sensor_msgs.msg import JointState

    from rla_wm_ros.conversions import joint_positions_or_reject, model_features_or_reject
    from rla_wm_ros.node_guard import Rejected

    assert joint_positions_or_reject(JointState(name=["b", "a"], position=[2.0, 1.0]), ["a"]).tolist() == [1.0]
    with pytest.raises(Rejected) as caught:
        joint_positions_or_reject(JointState(name=["a"], position=[1.0]), ["a", "d"])
    assert caught.value.reason == "malformed_joint_state" and "['d'] missing" in caught.value.detail

    msg = features_to_msg(np.ones((4, 2), np.float32), 2, 2, "enc", HEADER)
    assert model_features_or_reject(msg, "enc", (2, 2, 2)).shape == (4, 2)
    for encoder, grid, reason in (
        ("other", (2, 2, 2), "encoder_mismatch"),
        ("enc", (4, 4, 2), "grid_mismatch"),
    ):
        with pytest.raises(Rejected) as caught:
            model_features_or_reject(msg, encoder, grid)
        assert caught.value.reason == reason and caught.value.detail
    msg.data[0] = float("inf")
    with pytest.raises(Rejected, match="malformed_features: FeatureMap: data contains NaN or inf"):
        model_features_or_reject(msg, "enc", (2, 2, 2))
