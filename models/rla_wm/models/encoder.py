"""Frozen DINO-family ViT feature encoder: camera frames -> patch tokens (B, N, C).

Loads DINOv2 / DINOv2-with-registers / DINOv3 through Hugging Face `transformers`
from a hub id or a local folder. Class and register tokens are dropped so the
output is exactly the patch grid the world model works on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from rla_wm.assets import resolve_model_path

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# model_type values of transformers configs this encoder understands.
SUPPORTED_MODEL_TYPES = ("dinov2", "dinov2_with_registers", "dinov3_vit")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class FeatureEncoderError(ValueError):
    """Bad encoder configuration or input frames."""


@dataclass(frozen=True)
class EncoderConfig:
    """How to build a FeatureEncoder.

    model: hub id (e.g. "facebook/dinov2-small"), local folder, or "builtin:<name>"
        for a checkpoint shipped under rla_wm/checkpoints.
    resolution: square input size in pixels; must be a multiple of the patch size.
    """

    model: str = "builtin:dinov2-tiny-random"
    resolution: int = 224
    device: str = "cpu"
    dtype: str = "float32"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass(frozen=True)
class FeatureGrid:
    height: int
    width: int
    channels: int

    @property
    def tokens(self) -> int:
        return self.height * self.width


class TokenEncoder(Protocol):
    """What the feature cache needs of an encoder: the ViT below, or a privileged sim-state encoder
    (`rla_wm.envs.environment_state_encoder.EnvironmentStateEncoder`, which also names the dataset column it reads)."""

    grid: FeatureGrid

    @property
    def encoder_id(self) -> str: ...

    def __call__(self, frames: torch.Tensor, /) -> torch.Tensor: ...


def unit_images(
    frames: np.ndarray | torch.Tensor, error: type[FeatureEncoderError] = FeatureEncoderError
) -> torch.Tensor:
    """Camera frames in either layout an encoder is given -> (B, 3, H, W) float32 in [0, 1].

    uint8 (B, H, W, 3) RGB (a camera message, a simulator) or float (B, 3, H, W) in [0, 1] (LeRobot's
    decoded video frames); one frame without a batch axis is a batch of one. Anything else, an empty
    frame or NaN raises `error`.
    """
    images = torch.as_tensor(frames)
    if images.ndim == 3:
        images = images.unsqueeze(0)
    uint8_rgb = images.dtype == torch.uint8 and images.ndim == 4 and images.shape[-1] == 3
    float_planes = images.is_floating_point() and images.ndim == 4 and images.shape[1] == 3
    if not (uint8_rgb or float_planes):
        raise error(
            "frames must be uint8 RGB of shape (B, H, W, 3) or float of shape (B, 3, H, W) in [0, 1], "
            f"got {tuple(images.shape)} {images.dtype}"
        )
    if 0 in images.shape:
        raise error(f"empty frames {tuple(images.shape)}")
    images = images.permute(0, 3, 1, 2).float().div_(255.0) if uint8_rgb else images.float()
    if not torch.isfinite(images).all():
        raise error("frames contain NaN or inf")
    return images


class FeatureEncoder:
    """Frozen ViT that maps RGB frames to patch tokens.

    Call with uint8 frames (B, H, W, 3) as numpy or torch, or float tensors
    (B, 3, H, W) in [0, 1]; returns float tensors (B, N, C) on the encoder's device,
    where N = grid.height * grid.width.
    """

    def __init__(self, config: EncoderConfig) -> None:
        from transformers import AutoConfig, AutoModel

        if config.dtype not in DTYPES:
            raise FeatureEncoderError(f"dtype must be one of {sorted(DTYPES)}, got {config.dtype!r}")
        self.config = config
        self.model_path = resolve_model_path(config.model)
        try:
            hf_config = AutoConfig.from_pretrained(self.model_path)
        except OSError as err:
            raise FeatureEncoderError(
                f"cannot load encoder config from {config.model!r} ({self.model_path}): {err}. "
                "Give a local folder with config.json + model.safetensors, or a hub id on a machine "
                "that can reach the hub."
            ) from err
        if hf_config.model_type not in SUPPORTED_MODEL_TYPES:
            raise FeatureEncoderError(
                f"{config.model!r} is a {hf_config.model_type!r} model; supported: {SUPPORTED_MODEL_TYPES}"
            )
        self.patch_size = int(hf_config.patch_size)
        if config.resolution <= 0 or config.resolution % self.patch_size:
            raise FeatureEncoderError(
                f"resolution {config.resolution} is not a positive multiple of the patch size {self.patch_size}"
            )
        # DINOv2 has a class token only; the register variants and DINOv3 add registers.
        self.prefix_tokens = 1 + int(getattr(hf_config, "num_register_tokens", 0) or 0)
        self.device = torch.device(config.device)
        self.dtype = DTYPES[config.dtype]
        self.model = AutoModel.from_pretrained(self.model_path, dtype=self.dtype)
        self.model.to(self.device).eval().requires_grad_(False)
        side = config.resolution // self.patch_size
        self.grid = FeatureGrid(side, side, int(hf_config.hidden_size))
        self._mean = torch.tensor(config.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(config.std, device=self.device).view(1, 3, 1, 1)

    @property
    def encoder_id(self) -> str:
        """Identifies the feature space: features with different ids must not be mixed."""
        name = self.config.model
        if not name.startswith("builtin:") and Path(name).exists():
            name = Path(name).resolve().name
        return f"{name}@{self.config.resolution}"

    def preprocess(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Frames -> normalised (B, 3, R, R) float tensor on the encoder's device."""
        images = unit_images(frames).to(self.device)
        size = (self.config.resolution, self.config.resolution)
        if tuple(images.shape[-2:]) != size:
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
        return ((images - self._mean) / self._std).to(self.dtype)

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        pixels = self.preprocess(frames)
        hidden = self.model(pixel_values=pixels).last_hidden_state
        tokens = hidden[:, self.prefix_tokens :]
        if tokens.shape[1] != self.grid.tokens:
            raise FeatureEncoderError(
                f"model returned {tokens.shape[1]} patch tokens, expected {self.grid.tokens}; "
                "check num_register_tokens in the model config"
            )
        return tokens


def make_random_vit(
    folder: str | Path,
    family: str = "dinov2",
    hidden_size: int = 192,
    layers: int = 4,
    heads: int = 3,
    patch_size: int = 14,
    image_size: int = 224,
    seed: int = 0,
) -> Path:
    """Write a randomly initialised DINOv2 or DINOv3 ViT as a local transformers folder.

    Pretrained DINO weights cannot be downloaded on offline machines; this makes a
    real, loadable model of the same architecture so every code path runs (DINOv3 with its
    4 register tokens and rotary positions, as ViT-L/16 ships). Its features are random
    projections, not DINO features: say so wherever it is used.
    """
    from transformers import PreTrainedModel

    torch.manual_seed(seed)
    sizes: dict[str, Any] = dict(
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden_size,
        patch_size=patch_size,
        image_size=image_size,
    )
    if family == "dinov2":
        from transformers import Dinov2Config, Dinov2Model

        model: PreTrainedModel = Dinov2Model(Dinov2Config(**sizes))
    elif family == "dinov3":
        from transformers import DINOv3ViTConfig, DINOv3ViTModel

        model = DINOv3ViTModel(DINOv3ViTConfig(**sizes, num_register_tokens=4))
    else:
        raise FeatureEncoderError(f"family must be 'dinov2' or 'dinov3', got {family!r}")
    folder = Path(folder)
    model.eval().save_pretrained(folder, safe_serialization=True)
    return folder


def load_encoder(config: EncoderConfig) -> TokenEncoder:
    """The encoder `config.model` names: a camera estimator of a privileged state (Push-T's block pose,
    `rla_wm.models.pose_estimator`; the SO-101's cube and zone, `rla_wm.models.cube_estimator`: their
    tokens are the sim's privileged feature space), the self-supervised keypoint encoder
    (`rla_wm.models.keypoint_encoder`; for these `resolution` and `dtype` do not apply, each has its own
    input size) or a ViT (`FeatureEncoder`)."""
    from rla_wm.models.cube_estimator import CubeStateEstimator, is_cube_estimator
    from rla_wm.models.keypoint_encoder import KeypointEncoder, is_keypoint_encoder
    from rla_wm.models.pose_estimator import BlockPoseEstimator, is_pose_estimator

    if is_pose_estimator(config.model):
        return BlockPoseEstimator.load(config.model, config.device)
    if is_keypoint_encoder(config.model):
        return KeypointEncoder.load(config.model, config.device)
    if is_cube_estimator(config.model):
        return CubeStateEstimator.load(config.model, config.device)
    return FeatureEncoder(config)
