"""The push-cube task's privileged state as a 1x1 "feature map": the cube's pose and the zone.

The `sim_arm` node publishes it (rla_wm_msgs/FeatureMap, like Push-T's block state in
`rla_wm.envs.pusht.privileged`) so that a scripted expert can run through the ROS graph and the
recorder can store it as LeRobot's ``observation.environment_state``. One token of
`CUBE_STATE_CHANNELS` channels, in SI units of the world frame (the arm's base on the table top):
the cube's centre (m) and orientation quaternion (w, x, y, z; sign fixed to w >= 0, so a pose has
one encoding), then the zone's centre and radius (m). Unscaled: every value is already within
about +-0.4, so a policy with token_norm=False reads it as is.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

CUBE_STATE_ENCODER_ID = "sim:so101-cube-state"
CUBE_STATE_NAMES = (
    "cube_x",
    "cube_y",
    "cube_z",
    "cube_qw",
    "cube_qx",
    "cube_qy",
    "cube_qz",
    "zone_x",
    "zone_y",
    "zone_radius",
)
CUBE_STATE_CHANNELS = len(CUBE_STATE_NAMES)


def cube_state_tokens(cube_pose: npt.ArrayLike, zone: npt.ArrayLike) -> np.ndarray:
    """Cube pose (x, y, z, qw, qx, qy, qz) and zone (x, y, radius) -> (1, CUBE_STATE_CHANNELS) float32."""
    pose = np.asarray(cube_pose, dtype=np.float64)
    zone = np.asarray(zone, dtype=np.float64)
    if pose.shape != (7,) or zone.shape != (3,) or not (np.isfinite(pose).all() and np.isfinite(zone).all()):
        raise ValueError(f"need a finite cube pose (7,) and zone (3,), got {pose} and {zone}")
    quaternion = pose[3:]
    norm = float(np.linalg.norm(quaternion))
    if norm < 1e-9:
        raise ValueError(f"the cube's orientation {quaternion} is not a rotation")
    # q and -q are one rotation: w >= 0 keeps the encoding (and a model's input) continuous.
    quaternion = quaternion / norm * (1.0 if quaternion[0] >= 0.0 else -1.0)
    return np.array([[*pose[:3], *quaternion, *zone]], dtype=np.float32)


def cube_state_from_tokens(tokens: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `cube_state_tokens` on (..., CUBE_STATE_CHANNELS): (cube pose (..., 7), zone (..., 3))."""
    values = np.asarray(tokens, dtype=np.float64)
    if values.shape[-1] != CUBE_STATE_CHANNELS:
        raise ValueError(f"cube state tokens have {values.shape[-1]} channels, expected {CUBE_STATE_CHANNELS}")
    if not np.isfinite(values).all():
        raise ValueError("cube state tokens are not finite")
    return values[..., :7], values[..., 7:]
