"""A small CNN that reads the SO-101 cube's and the target zone's positions from the front camera.

The arm's counterpart of Push-T's block-pose estimator (`rla_wm.models.pose_estimator`): a
`KeypointNet` finds two points in the frame, the cube's centre and the zone's centre (heat-map
soft-argmaxes, in fractions of the image), and the camera's pinhole model
(`rla_wm.envs.so101.camera.PinholeCamera`, stored with the weights) puts each on the plane it lies
on: the cube's centre CUBE_HALF above the table, the zone on it. Trained supervised on frames
whose labels are the sim's cube and zone positions projected into the camera.

Its output is the cube-state token of `rla_wm.envs.so101.environment_state` (the feature space
`CUBE_STATE_ENCODER_ID` that the sim publishes on /sim/environment_state), so a policy trained on
the sim's cube state runs on the camera unchanged: camera -> cube estimator -> policy. The token's
orientation is the identity and its height and zone radius are the task's constants: the
scripted expert pushes by the cube's and the zone's centres only, and the shipped cube-state
policy solves as many episodes with the orientation blinded (docs/arms.md).

A frame where a point's heat map is diffuse (spread above `max_spread` of the image: the cube or
the zone out of view, hidden, or a frame of something else) is refused with PoseEstimatorError;
the encoder node counts it as rejected and publishes nothing, so the gate holds the arm.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from rla_wm.envs.so101.camera import PinholeCamera
from rla_wm.envs.so101.environment_state import CUBE_STATE_CHANNELS, CUBE_STATE_ENCODER_ID
from rla_wm.envs.so101.scene import CUBE_HALF, ZONE_RADIUS, ZONE_THICKNESS
from rla_wm.models.encoder import FeatureGrid
from rla_wm.models.keypoint_net import (
    KeypointNet,
    KeypointNetConfig,
    PoseEstimatorError,
    images_to_input,
    names_folder_with,
    read_estimator_folder,
    write_estimator_folder,
)

CONFIG_FILE = "cube_estimator.json"
WEIGHTS_FILE = "cube_estimator.pt"
KEYPOINTS = ("cube", "zone")
# Heights (m) of the planes the two points lie on.
POINT_HEIGHTS = (CUBE_HALF, ZONE_THICKNESS)
# Largest heat-map spread (RMS radius, fraction of the image) of a point the estimator trusts; the
# shipped model's card says what it is on held-out frames.
MAX_SPREAD = 0.05


def net_config(image_size: int = 96, width: int = 32) -> KeypointNetConfig:
    return KeypointNetConfig(image_size, width, len(KEYPOINTS), (0.0, 1.0))


def image_points(camera: PinholeCamera, cube_position: npt.ArrayLike, zone_xy: npt.ArrayLike) -> np.ndarray:
    """Where the cube's centre (..., 3) and the zone's centre (..., 2) appear: (..., 2, 2) fractions of the image."""
    zone = np.asarray(zone_xy, dtype=np.float64)
    points = np.stack(
        [
            np.asarray(cube_position, dtype=np.float64),
            np.concatenate([zone, np.full((*zone.shape[:-1], 1), POINT_HEIGHTS[1])], -1),
        ],
        axis=-2,
    )
    return camera.project(points) / np.array([camera.width, camera.height])


def table_points(camera: PinholeCamera, fractions: npt.ArrayLike) -> np.ndarray:
    """(..., 2, 2) image fractions of the cube and zone -> (..., 2, 2) their x, y (m) on their planes."""
    pixels = np.asarray(fractions, dtype=np.float64) * np.array([camera.width, camera.height])
    return np.stack(
        [camera.unproject_to_plane(pixels[..., k, :], height)[..., :2] for k, height in enumerate(POINT_HEIGHTS)],
        axis=-2,
    )


class CubeStateEstimator:
    """A trained `KeypointNet` and the camera's model as a token encoder: frames -> (B, 1, CUBE_STATE_CHANNELS)."""

    grid = FeatureGrid(1, 1, CUBE_STATE_CHANNELS)

    def __init__(
        self,
        net: KeypointNet,
        camera: PinholeCamera,
        device: str = "cpu",
        model_path: str = "",
        max_spread: float = MAX_SPREAD,
    ) -> None:
        if net.config.num_keypoints != len(KEYPOINTS) or net.config.coordinate_range != (0.0, 1.0):
            raise PoseEstimatorError(f"a cube estimator finds {KEYPOINTS} in image fractions, not {net.config}")
        if not max_spread > 0:
            raise PoseEstimatorError(f"max_spread must be positive, got {max_spread}")
        self.camera = camera
        self.max_spread = float(max_spread)
        self.model_path = model_path
        self.device = torch.device(device)
        self.net = net.float().to(self.device).eval()

    @property
    def encoder_id(self) -> str:
        return CUBE_STATE_ENCODER_ID

    @classmethod
    def load(cls, spec: str, device: str = "cpu") -> CubeStateEstimator:
        """`spec`: builtin:<name> or a folder written by `save_cube_estimator`."""
        folder, raw, state = read_estimator_folder(spec, CONFIG_FILE, WEIGHTS_FILE, "cube estimator")
        try:
            config = net_config(int(raw["image_size"]), int(raw["width"]))
            lens = raw["camera"]
            camera = PinholeCamera(
                position=np.array(lens["position"], dtype=np.float64).reshape(3),
                rotation=np.array(lens["rotation"], dtype=np.float64).reshape(3, 3),
                focal=float(lens["focal"]),
                width=int(lens["width"]),
                height=int(lens["height"]),
            )
            net = KeypointNet(config)
            net.load_state_dict(state)
            max_spread = float(raw.get("max_spread", MAX_SPREAD))
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise PoseEstimatorError(f"cannot load the cube estimator {spec!r}: {err}") from err
        return cls(net, camera, device, str(folder), max_spread)

    @torch.inference_mode()
    def locate(self, frames: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Frames -> (B, 2, 2) cube and zone centres (x, y in m, unchecked) and (B, 2) heat-map spreads."""
        shape = tuple(np.shape(frames))
        if len(shape) >= 3 and shape[-3] * self.camera.width != shape[-2] * self.camera.height:
            # Image fractions map to the table only through the camera the net was trained on: another
            # aspect ratio is another field of view (any size of the same view is fine).
            raise PoseEstimatorError(
                f"frames of {shape[-2]}x{shape[-3]} do not have the aspect ratio of the camera the estimator "
                f"models ({self.camera.width}x{self.camera.height})"
            )
        images = images_to_input(frames, self.net.config.image_size, self.device)
        fractions, spreads = self.net.locate(images)
        if not (torch.isfinite(fractions).all() and torch.isfinite(spreads).all()):
            raise PoseEstimatorError("the cube estimator returned NaN or inf")
        try:
            return table_points(self.camera, fractions.cpu().numpy()), spreads.cpu().numpy()
        except ValueError as err:  # a point above the horizon: not a view of the table
            raise PoseEstimatorError(f"no cube and zone on the table in the frame: {err}") from err

    def positions(self, frames: np.ndarray | torch.Tensor) -> np.ndarray:
        """Frames -> (B, 2, 2) cube and zone centres (m); PoseEstimatorError if a frame does not show both."""
        points, spreads = self.locate(frames)
        worst = np.unravel_index(int(np.argmax(spreads)), spreads.shape)
        if spreads[worst] > self.max_spread:
            raise PoseEstimatorError(
                f"no {KEYPOINTS[worst[1]]} in the frame: its heat map spreads over {spreads[worst]:.3f} of the image "
                f"(more than {self.max_spread:g}: out of view, hidden, or not the task's scene)"
            )
        return points

    def __call__(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        points = self.positions(frames)
        batch = len(points)
        tokens = np.zeros((batch, CUBE_STATE_CHANNELS), dtype=np.float32)
        # The layout of environment_state.cube_state_tokens: cube x y z, quaternion w x y z, zone x y radius.
        tokens[:, 0:2] = points[:, 0]
        tokens[:, 2] = CUBE_HALF
        tokens[:, 3] = 1.0
        tokens[:, 7:9] = points[:, 1]
        tokens[:, 9] = ZONE_RADIUS
        return torch.from_numpy(tokens).view(batch, 1, CUBE_STATE_CHANNELS).to(self.device)


def save_cube_estimator(
    net: KeypointNet,
    camera: PinholeCamera,
    folder: str | Path,
    card: dict | None = None,
    max_spread: float = MAX_SPREAD,
) -> Path:
    """Write `net` (float16 weights, they load back as float32), the camera's model and `max_spread`;
    `card` goes to metrics.json."""
    config = {key: value for key, value in asdict(net.config).items() if key in ("image_size", "width")}
    config["keypoints"] = list(KEYPOINTS)
    config["camera"] = {
        "position": camera.position.tolist(),
        "rotation": camera.rotation.tolist(),
        "focal": camera.focal,
        "width": camera.width,
        "height": camera.height,
    }
    config["max_spread"] = max_spread
    return write_estimator_folder(folder, net, config, CONFIG_FILE, WEIGHTS_FILE, card)


def is_cube_estimator(spec: str) -> bool:
    """Whether `spec` (builtin:<name> or a path) names a cube-estimator folder."""
    return names_folder_with(spec, CONFIG_FILE)
