"""A pinhole model of a MuJoCo camera: table points to pixels and pixels back onto a horizontal plane.

The cube estimator (`rla_wm.models.cube_estimator`) finds the cube and the zone in the front camera
as pixels; this turns them into the metres of the arm's base frame that the cube-state token holds,
by intersecting each pixel's ray with the plane the point lies on (the cube's centre is CUBE_HALF
above the table, the zone's on it). On a real arm the same numbers come from the camera's
calibration (`sensor_msgs/CameraInfo` for the intrinsics, the camera's TF frame for the pose).

Pixel coordinates: u to the right, v down, (0, 0) the top-left corner of the top-left pixel, so a
pixel's centre is at (i + 0.5, j + 0.5). MuJoCo cameras look along their -z axis with +y up.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import mujoco
import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class PinholeCamera:
    position: np.ndarray  # (3,) m, world frame
    rotation: np.ndarray  # (3, 3) columns: the camera's x (right), y (up), z (backward) axes in the world
    focal: float  # pixels
    width: int
    height: int

    @classmethod
    def from_mujoco(cls, model: mujoco.MjModel, camera: str, width: int, height: int) -> PinholeCamera:
        """The fixed camera `camera` of `model` as rendered at width x height (MuJoCo's fovy is vertical)."""
        data = mujoco.MjData(model)
        mujoco.mj_kinematics(model, data)
        mujoco.mj_camlight(model, data)
        index = model.camera(camera).id
        fovy = np.radians(float(model.cam_fovy[index]))
        return cls(
            position=data.cam_xpos[index].copy(),
            rotation=data.cam_xmat[index].reshape(3, 3).copy(),
            focal=0.5 * height / np.tan(0.5 * fovy),
            width=width,
            height=height,
        )

    def project(self, points: npt.ArrayLike) -> np.ndarray:
        """(..., 3) world points in front of the camera -> (..., 2) pixel coordinates (u, v)."""
        local = (np.asarray(points, dtype=np.float64) - self.position) @ self.rotation
        depth = -local[..., 2]
        if (depth <= 0).any():
            raise ValueError("a point lies behind the camera")
        u = 0.5 * self.width + self.focal * local[..., 0] / depth
        v = 0.5 * self.height - self.focal * local[..., 1] / depth
        return np.stack([u, v], axis=-1)

    def unproject_to_plane(self, pixels: npt.ArrayLike, height: float) -> np.ndarray:
        """(..., 2) pixel coordinates -> (..., 3) world points where their rays meet the plane z = `height`."""
        pixels = np.asarray(pixels, dtype=np.float64)
        local = np.stack(
            [
                (pixels[..., 0] - 0.5 * self.width) / self.focal,
                -(pixels[..., 1] - 0.5 * self.height) / self.focal,
                -np.ones(pixels.shape[:-1]),
            ],
            axis=-1,
        )
        rays = local @ self.rotation.T
        scale = (height - self.position[2]) / rays[..., 2]
        if (scale <= 0).any():
            raise ValueError(f"a pixel's ray does not reach the plane z = {height} in front of the camera")
        return self.position + rays * scale[..., None]


@lru_cache(maxsize=4)
def front_camera(width: int, height: int) -> PinholeCamera:
    """The sim's front camera (the scene's SCENE_CAMERA, what the encoder and the gate watch) at width x height."""
    from rla_wm.envs.so101.scene import SCENE_CAMERA, build_model

    return PinholeCamera.from_mujoco(build_model(), SCENE_CAMERA, width, height)
