"""Typed-tensor and trajectory messages <-> numpy, with strict shape checks.

The `*_or_reject` readers are for guarded node callbacks (`rla_wm_ros.node_guard`): they raise
`Rejected` with the reason every node counts that refusal under.
"""

from __future__ import annotations

import array
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from builtin_interfaces.msg import Duration, Time
from std_msgs.msg import Header
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from rla_wm.control.joints import select_joints
from rla_wm.control.jtc import Trajectory, TrajectoryPoint
from rla_wm_msgs.msg import FeatureMap, LatentAction
from rla_wm_ros.node_guard import Rejected


class MessageShapeError(ValueError):
    """A message's data disagrees with the shape it declares, or holds non-finite values."""


class GridMismatchError(MessageShapeError):
    """A feature map is consistent in itself, but its grid is not the one the model takes."""


class EncoderMismatchError(MessageShapeError):
    """A feature map from another encoder than the one the model was trained on."""


def _float32_payload(values: np.ndarray) -> array.array:
    # array('f', bytes) copies the buffer in one go; a list conversion of 50k floats is ~100x slower.
    return array.array("f", np.ascontiguousarray(values, dtype=np.float32).tobytes())


def _checked_payload(data, expected: int, what: str) -> np.ndarray:
    values = np.asarray(data, dtype=np.float32)
    if values.size != expected:
        raise MessageShapeError(f"{what}: data has {values.size} values, shape says {expected}")
    if not np.isfinite(values).all():
        raise MessageShapeError(f"{what}: data contains NaN or inf")
    return values


def features_to_msg(
    tokens: np.ndarray, grid_height: int, grid_width: int, encoder_id: str, header: Header
) -> FeatureMap:
    """(N, C) patch tokens, N = grid_height * grid_width, row-major -> FeatureMap."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[0] != grid_height * grid_width:
        raise MessageShapeError(f"tokens {tokens.shape} do not fit a {grid_height}x{grid_width} grid")
    msg = FeatureMap()
    msg.header = header
    msg.encoder_id = encoder_id
    msg.grid_height = grid_height
    msg.grid_width = grid_width
    msg.channels = tokens.shape[1]
    msg.data = _float32_payload(tokens)
    return msg


def msg_to_features(msg: FeatureMap, expected: tuple[int, int, int] | None = None) -> np.ndarray:
    """FeatureMap -> (N, C) float32 tokens; raises MessageShapeError on any inconsistency.

    With `expected` (height, width, channels), a map with any other grid raises GridMismatchError
    before its payload is read, even one with the right token count (8x32 is not 16x16: the
    model's position embeddings are laid out on its own grid).
    """
    if msg.grid_height == 0 or msg.grid_width == 0 or msg.channels == 0:
        raise MessageShapeError(f"feature map has an empty shape {msg.grid_height}x{msg.grid_width}x{msg.channels}")
    if expected is not None and (msg.grid_height, msg.grid_width, msg.channels) != tuple(expected):
        raise GridMismatchError(
            f"feature map grid is {msg.grid_height}x{msg.grid_width}x{msg.channels}, the model "
            f"takes {'x'.join(str(v) for v in expected)} (height x width x channels)"
        )
    tokens = msg.grid_height * msg.grid_width
    values = _checked_payload(msg.data, tokens * msg.channels, "FeatureMap")
    return values.reshape(tokens, msg.channels)


def model_features(msg: FeatureMap, encoder_id: str, expected: tuple[int, int, int] | None = None) -> np.ndarray:
    """`msg_to_features` for a model trained on features of `encoder_id`: a map of another encoder
    raises EncoderMismatchError before its grid or payload is looked at."""
    if msg.encoder_id != encoder_id:
        raise EncoderMismatchError(
            f"features come from encoder {msg.encoder_id!r}, the model was trained on {encoder_id!r}"
        )
    return msg_to_features(msg, expected)


def feature_refusal(error: MessageShapeError) -> str:
    """The short reason a node counts a refused feature map under (see `model_features`)."""
    if isinstance(error, EncoderMismatchError):
        return "encoder_mismatch"
    return "grid_mismatch" if isinstance(error, GridMismatchError) else "malformed_features"


def model_features_or_reject(
    msg: FeatureMap, encoder_id: str, expected: tuple[int, int, int] | None = None
) -> np.ndarray:
    """`model_features`, refusing a map the model cannot take as Rejected(`feature_refusal`)."""
    try:
        return model_features(msg, encoder_id, expected)
    except MessageShapeError as err:
        raise Rejected(feature_refusal(err), str(err)) from err


def latent_to_msg(z: np.ndarray, horizon: int, model_id: str, header: Header, start_stamp: Time) -> LatentAction:
    """(K, D) latent action between frame t-h (start_stamp) and frame t (header.stamp)."""
    z = np.asarray(z)
    if z.ndim != 2:
        raise MessageShapeError(f"latent action must be (tokens, dim), got {z.shape}")
    msg = LatentAction()
    msg.header = header
    msg.start_stamp = start_stamp
    msg.model_id = model_id
    msg.horizon = horizon
    msg.tokens, msg.dim = z.shape
    msg.data = _float32_payload(z)
    return msg


def msg_to_latent(msg: LatentAction) -> np.ndarray:
    if msg.tokens == 0 or msg.dim == 0:
        raise MessageShapeError(f"latent action has an empty shape {msg.tokens}x{msg.dim}")
    return _checked_payload(msg.data, msg.tokens * msg.dim, "LatentAction").reshape(msg.tokens, msg.dim)


def seconds_to_duration(seconds: float) -> Duration:
    nanoseconds = int(round(seconds * 1e9))
    return Duration(sec=nanoseconds // 1_000_000_000, nanosec=nanoseconds % 1_000_000_000)


def duration_to_seconds(duration: Duration) -> float:
    return duration.sec + duration.nanosec * 1e-9


def stamp_to_seconds(stamp: Time) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def nanoseconds_to_stamp(nanoseconds: int) -> Time:
    return Time(sec=nanoseconds // 1_000_000_000, nanosec=nanoseconds % 1_000_000_000)


def stamp_to_nanoseconds(stamp: Time) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


@dataclass(frozen=True)
class Chunk:
    """A joint-space trajectory chunk as arrays: positions (T, J) at times (T,) after `stamp`."""

    joint_names: tuple[str, ...]
    positions: np.ndarray
    times_from_start: np.ndarray
    stamp: Time


def chunk_to_msg(chunk: Chunk) -> JointTrajectory:
    msg = JointTrajectory()
    msg.header.stamp = chunk.stamp
    msg.joint_names = list(chunk.joint_names)
    for position, t in zip(np.asarray(chunk.positions, dtype=np.float64), chunk.times_from_start):
        point = JointTrajectoryPoint()
        point.positions = position.tolist()
        point.time_from_start = seconds_to_duration(float(t))
        msg.points.append(point)
    return msg


def msg_to_chunk(msg: JointTrajectory) -> Chunk:
    """JointTrajectory -> Chunk; raises MessageShapeError if a point has the wrong number of positions."""
    joints = len(msg.joint_names)
    positions = np.empty((len(msg.points), joints), dtype=np.float64)
    for index, point in enumerate(msg.points):
        if len(point.positions) != joints:
            raise MessageShapeError(f"point {index} has {len(point.positions)} positions for {joints} joints")
        positions[index] = point.positions
    times = np.array([duration_to_seconds(p.time_from_start) for p in msg.points], dtype=np.float64)
    return Chunk(tuple(msg.joint_names), positions, times, msg.header.stamp)


def _nanoseconds(sec: int, nanosec: int, what: str) -> int:
    if not 0 <= nanosec < 1_000_000_000:
        raise MessageShapeError(f"{what} has nanosec {nanosec} outside [0, 1e9)")
    return sec * 1_000_000_000 + nanosec


def msg_to_trajectory(msg: JointTrajectory) -> Trajectory:
    """JointTrajectory -> the library's Trajectory, every field kept as sent (ragged sizes included),
    so the gate vets exactly what a controller would read. MessageShapeError on an impossible time."""
    points = tuple(
        TrajectoryPoint(
            positions=tuple(point.positions),
            velocities=tuple(point.velocities),
            accelerations=tuple(point.accelerations),
            effort=tuple(point.effort),
            time_from_start_ns=_nanoseconds(
                point.time_from_start.sec, point.time_from_start.nanosec, f"point {index} time_from_start"
            ),
        )
        for index, point in enumerate(msg.points)
    )
    stamp = _nanoseconds(msg.header.stamp.sec, msg.header.stamp.nanosec, "header.stamp")
    return Trajectory(tuple(msg.joint_names), points, stamp)


def trajectory_to_msg(trajectory: Trajectory, frame_id: str = "") -> JointTrajectory:
    """The library's Trajectory -> JointTrajectory, field by field (nothing added)."""
    msg = JointTrajectory()
    msg.header.frame_id = frame_id
    msg.header.stamp = nanoseconds_to_stamp(trajectory.stamp_ns)
    msg.joint_names = list(trajectory.joint_names)
    for point in trajectory.points:
        out = JointTrajectoryPoint()
        out.positions = [float(v) for v in point.positions]
        out.velocities = [float(v) for v in point.velocities]
        out.accelerations = [float(v) for v in point.accelerations]
        out.effort = [float(v) for v in point.effort]
        t = point.time_from_start_ns
        out.time_from_start = Duration(sec=t // 1_000_000_000, nanosec=t % 1_000_000_000)
        msg.points.append(out)
    return msg


def joint_positions(msg, joint_names: Sequence[str]) -> np.ndarray:
    """JointState -> positions of `joint_names` in that order (`rla_wm.control.joints.select_joints`);
    MessageShapeError if the message is ragged, repeats or lacks a joint, or holds NaN/inf."""
    try:
        return select_joints(msg.name, msg.position, joint_names)
    except ValueError as err:
        raise MessageShapeError(f"joint state: {err}") from None


def joint_positions_or_reject(msg, joint_names: Sequence[str]) -> np.ndarray:
    """`joint_positions`, refusing a malformed joint state as Rejected("malformed_joint_state")."""
    try:
        return joint_positions(msg, joint_names)
    except MessageShapeError as err:
        raise Rejected("malformed_joint_state", str(err)) from err
