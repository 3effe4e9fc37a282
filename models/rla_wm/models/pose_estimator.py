"""A small CNN that reads the Push-T block's pose (x, y, angle) from one camera frame.

The visual rung's loss is perception: the shipped block-state policy solves 49/50 with the
true pose, 25/50 with 5 px / 5 deg of noise, and about 1/50 at the ~15 px / ~20 deg that
features of the project's self-supervised encoder carry (docs/closed_loop.md). A 20 px wide
T in a 96 px image must be placed to about one image pixel, which a patch-8 ViT's frozen
tokens do not keep. This network is trained with the sim's logged block pose as labels
(`StateFrames`), at full resolution: it finds four points of the T as heat-map soft-argmaxes
(sub-pixel by construction) and fits the rigid pose through them (2-D Procrustes), so the
angle comes from ~100 px of lever arm instead of from one regressed number.

Its output is the block-state token of `rla_wm.envs.pusht.privileged` in that encoder's
feature space (`BLOCK_STATE_ENCODER_ID`), so the shipped block-state policy runs on the
camera unchanged: camera -> pose estimator -> policy. On a real robot the same recipe needs
labelled frames (fiducials or motion capture for the object pose).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from rla_wm.envs.pusht.privileged import BLOCK_STATE_CHANNELS, BLOCK_STATE_ENCODER_ID
from rla_wm.envs.pusht.sim import WORKSPACE_HIGH, WORKSPACE_LOW
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

# Points of gym-pusht's T in the block's body frame (pixels; origin at the middle of the bar's
# top edge, the stem along +y): the bar's two ends and two points down the stem. Spread out, so
# the Procrustes fit's angle has a long lever arm.
T_KEYPOINTS = np.array([[-52.5, 15.0], [52.5, 15.0], [0.0, 60.0], [0.0, 105.0]], dtype=np.float32)
CONFIG_FILE = "pose_estimator.json"
WEIGHTS_FILE = "pose_estimator.pt"


@dataclass(frozen=True)
class PoseNetConfig:
    image_size: int = 96
    width: int = 32  # channels at the heat maps' resolution (half the input's); 2x that below
    keypoints: tuple[tuple[float, float], ...] = tuple(map(tuple, T_KEYPOINTS.tolist()))

    def __post_init__(self) -> None:
        if len(self.keypoints) < 2:
            raise PoseEstimatorError(f">= 2 keypoints needed for a rigid fit, got {self.keypoints}")
        _ = self.net_config  # KeypointNetConfig checks image_size and width

    @property
    def net_config(self) -> KeypointNetConfig:
        # The camera sees the whole workspace: heat maps in workspace pixels.
        return KeypointNetConfig(self.image_size, self.width, len(self.keypoints), (WORKSPACE_LOW, WORKSPACE_HIGH))


class BlockPoseNet(KeypointNet):
    """(B, 3, S, S) images in [0, 1] -> (B, K, 2) keypoints of the T in workspace pixels."""

    def __init__(self, config: PoseNetConfig = PoseNetConfig()) -> None:
        super().__init__(config.net_config)
        self.pose_config = config


def keypoints_of_pose(pose: torch.Tensor, model_points: torch.Tensor) -> torch.Tensor:
    """(B, 4) rows [x, y, cos, sin] -> (B, K, 2) world positions of the body-frame `model_points`."""
    c, s = pose[:, 2:3], pose[:, 3:4]
    px, py = model_points[:, 0], model_points[:, 1]
    return torch.stack([pose[:, :1] + c * px - s * py, pose[:, 1:2] + s * px + c * py], dim=-1)


def pose_from_keypoints(points: torch.Tensor, model_points: torch.Tensor) -> torch.Tensor:
    """Least-squares rigid fit (2-D Procrustes): (B, K, 2) world points -> (B, 3) [x, y, angle]."""
    model_centre = model_points.mean(0)
    centre = points.mean(1)
    a = model_points - model_centre  # (K, 2)
    b = points - centre[:, None]  # (B, K, 2)
    dot = (a[None, :, 0] * b[..., 0] + a[None, :, 1] * b[..., 1]).sum(-1)
    cross = (a[None, :, 0] * b[..., 1] - a[None, :, 1] * b[..., 0]).sum(-1)
    angle = torch.atan2(cross, dot)
    c, s = torch.cos(angle), torch.sin(angle)
    origin_x = centre[:, 0] - (c * model_centre[0] - s * model_centre[1])
    origin_y = centre[:, 1] - (s * model_centre[0] + c * model_centre[1])
    return torch.stack([origin_x, origin_y, angle], dim=-1)


def fit_pose(points: torch.Tensor, model_points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, K, 2) predicted keypoints -> (B, 3) fitted pose [x, y, angle] and (B,) residual: the largest
    distance of a keypoint from where the fitted pose puts it (how well the points make a rigid T)."""
    pose = pose_from_keypoints(points, model_points)
    rows = torch.cat([pose[:, :2], torch.cos(pose[:, 2:]), torch.sin(pose[:, 2:])], dim=-1)
    return pose, (keypoints_of_pose(rows, model_points) - points).norm(dim=-1).amax(dim=-1)


# Largest distance (workspace px) of a predicted keypoint from the rigid T fitted through all four, for
# a frame to count as showing the block. On the shipped estimator's 4,992 held-out frames: frames read to
# within 5 px / 5 deg have residuals up to 5.0 px (p99 1.3), the 33 frames read worse (the block pushed
# out of view) 4.1 px once, else 11.8-72 px.
MAX_FIT_RESIDUAL = 6.0


class BlockPoseEstimator:
    """A trained `BlockPoseNet` as a token encoder: frames -> (B, 1, BLOCK_STATE_CHANNELS) block-state
    tokens, in the feature space of the privileged rung (`encoder_id` = BLOCK_STATE_ENCODER_ID).

    A frame whose four keypoints do not fit a rigid T (residual above `max_fit_residual` px: the block
    out of view, hidden or something else in its place) is refused with PoseEstimatorError rather than
    read as a confident wrong pose; the encoder node counts it as a rejected frame and publishes nothing.
    """

    grid = FeatureGrid(1, 1, BLOCK_STATE_CHANNELS)

    def __init__(
        self, net: BlockPoseNet, device: str = "cpu", model_path: str = "", max_fit_residual: float = MAX_FIT_RESIDUAL
    ) -> None:
        if not max_fit_residual > 0:
            raise PoseEstimatorError(f"max_fit_residual must be positive, got {max_fit_residual}")
        self.max_fit_residual = float(max_fit_residual)
        self.model_path = model_path
        self.device = torch.device(device)
        self.net = net.float().to(self.device).eval()
        self.model_points = torch.as_tensor(np.asarray(net.pose_config.keypoints, dtype=np.float32), device=self.device)

    @property
    def encoder_id(self) -> str:
        return BLOCK_STATE_ENCODER_ID

    @classmethod
    def load(cls, spec: str, device: str = "cpu") -> BlockPoseEstimator:
        """`spec`: builtin:<name> or a folder written by `save_pose_estimator`."""
        folder, raw, state = read_estimator_folder(spec, CONFIG_FILE, WEIGHTS_FILE, "pose estimator")
        try:
            config = PoseNetConfig(
                image_size=int(raw["image_size"]),
                width=int(raw["width"]),
                keypoints=tuple((float(x), float(y)) for x, y in raw["keypoints"]),
            )
            max_fit_residual = float(raw.get("max_fit_residual", MAX_FIT_RESIDUAL))
            net = BlockPoseNet(config)
            net.load_state_dict(state)
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise PoseEstimatorError(f"cannot load the pose estimator {spec!r}: {err}") from err
        return cls(net, device, str(folder), max_fit_residual)

    @torch.inference_mode()
    def poses_and_residuals(self, frames: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames -> (B, 3) [x, y (workspace px), angle (rad)] and (B,) fit residuals (px), unchecked."""
        images = images_to_input(frames, self.net.config.image_size, self.device)
        points = self.net(images)
        if not torch.isfinite(points).all():
            raise PoseEstimatorError("the pose estimator returned NaN or inf")
        return fit_pose(points, self.model_points)

    def poses(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Frames -> (B, 3) [x, y (workspace px), angle (rad)]; PoseEstimatorError if a frame shows no T."""
        pose, residuals = self.poses_and_residuals(frames)
        worst = float(residuals.max())
        if worst > self.max_fit_residual:
            raise PoseEstimatorError(
                f"no block pose in the frame: the T's keypoints are {worst:.1f} px from any rigid T "
                f"(more than {self.max_fit_residual:g} px: the block is out of view, hidden or not a T)"
            )
        return pose

    def __call__(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        pose = self.poses(frames)
        # The block-state token's layout (privileged.block_state_tokens): x, y scaled to [-1, 1], cos, sin.
        position = 2.0 * (pose[:, :2] - WORKSPACE_LOW) / (WORKSPACE_HIGH - WORKSPACE_LOW) - 1.0
        tokens = torch.cat([position, torch.cos(pose[:, 2:]), torch.sin(pose[:, 2:])], dim=-1)
        return tokens.view(-1, 1, BLOCK_STATE_CHANNELS)


def save_pose_estimator(
    net: BlockPoseNet, folder: str | Path, card: dict | None = None, max_fit_residual: float = MAX_FIT_RESIDUAL
) -> Path:
    """Write `net` (float16 weights, they load back as float32) and its config; `card` goes to metrics.json."""
    config = asdict(net.pose_config)
    config["keypoints"] = [list(point) for point in net.pose_config.keypoints]
    config["max_fit_residual"] = max_fit_residual
    return write_estimator_folder(folder, net, config, CONFIG_FILE, WEIGHTS_FILE, card)


def is_pose_estimator(spec: str) -> bool:
    """Whether `spec` (builtin:<name> or a path) names a pose-estimator folder."""
    return names_folder_with(spec, CONFIG_FILE)
