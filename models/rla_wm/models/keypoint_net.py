"""A small CNN that finds K points in a camera frame as heat-map soft-argmaxes (sub-pixel by construction).

Shared by the camera estimators of the privileged rungs: Push-T's block pose
(`rla_wm.models.pose_estimator`: four points of the T in workspace pixels) and the SO-101's cube
and zone (`rla_wm.models.cube_estimator`: two points in image coordinates, turned into metres on
the table by the camera's model). A stride-2 feature map for detail and a stride-4 one with
dilated convolutions for context are fused back at stride 2 into one heat map per point.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rla_wm.assets import resolve_model_path
from rla_wm.models.encoder import FeatureEncoderError, unit_images


class PoseEstimatorError(FeatureEncoderError):
    """A frame a camera estimator cannot read (wrong shape or type, NaN, nothing to find) or a bad checkpoint."""


@dataclass(frozen=True)
class KeypointNetConfig:
    image_size: int = 96  # frames are resized to image_size x image_size
    width: int = 32  # channels at the heat maps' resolution (half the input's); 2x that below
    num_keypoints: int = 4
    # The heat maps' coordinates: the frame's left/top edge is coordinate_range[0], its right/bottom
    # edge coordinate_range[1] (Push-T: workspace pixels; the arm: fractions of the image).
    coordinate_range: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        if self.image_size % 4 or self.image_size < 32:
            raise PoseEstimatorError(f"image_size must be a multiple of 4 and >= 32, got {self.image_size}")
        if self.width < 4 or self.num_keypoints < 1:
            raise PoseEstimatorError(f"width >= 4 and >= 1 keypoint needed, got {self.width}, {self.num_keypoints}")
        low, high = self.coordinate_range
        if not high > low:
            raise PoseEstimatorError(f"coordinate_range must increase, got {self.coordinate_range}")


def _conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.GroupNorm(min(8, cout // 4), cout),
        nn.ReLU(inplace=True),
    )


class KeypointNet(nn.Module):
    """(B, 3, S, S) images in [0, 1] -> (B, K, 2) points (x right, y down) in `coordinate_range` units."""

    def __init__(self, config: KeypointNetConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.fine = nn.Sequential(_conv(3, w // 2), _conv(w // 2, w, stride=2), _conv(w, w))
        self.coarse = nn.Sequential(
            _conv(w, 2 * w, stride=2),
            _conv(2 * w, 2 * w),
            _conv(2 * w, 2 * w, dilation=2),
            _conv(2 * w, 2 * w, dilation=4),
        )
        self.fuse = nn.Sequential(_conv(3 * w, w), nn.Conv2d(w, config.num_keypoints, 1))
        side = config.image_size // 2
        low, high = config.coordinate_range
        centres = (torch.arange(side, dtype=torch.float32) + 0.5) * ((high - low) / side) + low
        self.register_buffer("centres", centres, persistent=False)

    def locate(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K, 2) points and (B, K) spreads: each heat map's RMS distance from its point (a peaked,
        confident map has a spread of about a cell; a frame without the thing, a diffuse one)."""
        fine = self.fine(images)
        coarse = F.interpolate(self.coarse(fine), size=fine.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.fuse(torch.cat([fine, coarse], dim=1)).float()  # (B, K, s, s)
        b, k, h, w = logits.shape
        weights = logits.flatten(2).softmax(-1).view(b, k, h, w)
        column, row = weights.sum(2), weights.sum(3)  # (B, K, s) marginals over x and over y
        x = (column * self.centres).sum(-1)
        y = (row * self.centres).sum(-1)
        variance = (column * (self.centres - x[..., None]) ** 2).sum(-1) + (
            row * (self.centres - y[..., None]) ** 2
        ).sum(-1)
        return torch.stack([x, y], dim=-1), variance.clamp_min(0).sqrt()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.locate(images)[0]


def images_to_input(frames: np.ndarray | torch.Tensor, image_size: int, device: torch.device) -> torch.Tensor:
    """Frames (uint8 (B, H, W, 3) RGB or float (B, 3, H, W) in [0, 1], `unit_images`) -> (B, 3, S, S)
    float in [0, 1] on `device`, resized to `image_size`."""
    images = unit_images(frames, PoseEstimatorError).to(device)
    if tuple(images.shape[-2:]) != (image_size, image_size):
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", antialias=True)
    return images


def write_estimator_folder(
    folder: str | Path, net: nn.Module, config: dict, config_file: str, weights_file: str, card: dict | None
) -> Path:
    """A camera estimator's folder: `config` as JSON, the weights in float16 (they load back as float32),
    and `card` as metrics.json when given."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / config_file).write_text(json.dumps(config, indent=2) + "\n")
    torch.save({name: value.half() for name, value in net.state_dict().items()}, folder / weights_file)
    if card is not None:
        (folder / "metrics.json").write_text(json.dumps(card, indent=2) + "\n")
    return folder


def read_estimator_folder(
    spec: str, config_file: str, weights_file: str, kind: str
) -> tuple[Path, dict, dict[str, torch.Tensor]]:
    """What `write_estimator_folder` wrote: the folder `spec` (builtin:<name> or a path) names, its JSON
    config and its weights as float32. `kind` names the model in errors ("pose estimator")."""
    folder = Path(resolve_model_path(spec))
    config_path, weights_path = folder / config_file, folder / weights_file
    if not config_path.is_file() or not weights_path.is_file():
        label = kind.replace(" ", "-")
        raise FileNotFoundError(f"{spec!r} is not a {label} folder (needs {config_file} and {weights_file})")
    try:
        config = json.loads(config_path.read_text())
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        return folder, config, {name: value.float() for name, value in state.items()}
    except (RuntimeError, ValueError, AttributeError, json.JSONDecodeError) as err:
        raise PoseEstimatorError(f"cannot load the {kind} {spec!r}: {err}") from err


def names_folder_with(spec: str, config_file: str) -> bool:
    """Whether `spec` (builtin:<name> or a path) names a folder holding `config_file`."""
    try:
        return (Path(resolve_model_path(spec)) / config_file).is_file()
    except FileNotFoundError:
        return False
