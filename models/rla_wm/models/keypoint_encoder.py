"""A self-supervised camera encoder whose features are K image points: a keypoint-bottleneck autoencoder.

Push-T needs the block to about 5 px and 5 degrees, one pixel of the 96 px camera image; the
patch tokens of a ViT trained by masked autoencoding here carry it to about 12 px and no angle
(docs/encoder.md). This encoder is trained without labels, as in "Deep Spatial Autoencoders for
Visuomotor Learning" (Finn et al., ICRA 2016) and "Unsupervised Learning of Object Landmarks
through Conditional Image Generation" (Jakab et al., NeurIPS 2018): a CNN finds K points as
heat-map soft-argmaxes (`KeypointNet`, sub-pixel by construction), each point is drawn as a
Gaussian blob, and a decoder must repaint the frame from those blobs alone. Everything the decoder
needs about what moves (the agent, the block and its turn) has to pass through K (x, y) pairs, so
the points settle on the moving parts; a rigid object's points give its position and, from their
differences, the cosine and sine of its angle as linear functions (what the probe measures).

The scene's fixed parts (background, the target outline) are the same in every frame, so the
decoder paints them from its own weights and needs no appearance input. The features are one token
of 2K channels (the points' x, y in [-1, 1] image units, left/top = -1), the layout of the other
one-token state encoders, so the world action model trains on them unchanged. A frame the decoder
cannot repaint (a dead camera, something else in view) is refused: its reconstruction error is
checked against a bound fitted on held-out frames when the encoder is saved.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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

CONFIG_FILE = "keypoint_encoder.json"
WEIGHTS_FILE = "keypoint_encoder.pt"
ENCODER_ID_PREFIX = "keypoints:"


@dataclass(frozen=True)
class KeypointAutoencoderConfig:
    image_size: int = 96  # input frames are resized to this
    width: int = 32  # the keypoint CNN's channels at half the input's resolution
    num_keypoints: int = 8
    render_size: int = 24  # side of the Gaussian maps the decoder starts from
    target_size: int = 48  # side of the repainted frame (the loss compares the frame resized to it)
    sigma: float = 0.05  # the blobs' standard deviation in [-1, 1] image units (2.4 px of 96)
    decoder_width: int = 64

    def __post_init__(self) -> None:
        _ = self.net_config  # KeypointNetConfig checks image_size, width and the point count
        if self.render_size < 4 or self.target_size % self.render_size:
            raise PoseEstimatorError(
                f"target_size must be a multiple of render_size >= 4, got {self.target_size}, {self.render_size}"
            )
        if not 0 < self.sigma < 1 or self.decoder_width < 4:
            raise PoseEstimatorError(
                f"sigma in (0, 1) and decoder_width >= 4 needed, got {self.sigma}, {self.decoder_width}"
            )

    @property
    def net_config(self) -> KeypointNetConfig:
        return KeypointNetConfig(self.image_size, self.width, self.num_keypoints, (-1.0, 1.0))

    @property
    def channels(self) -> int:
        return 2 * self.num_keypoints


def _conv(cin: int, cout: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation),
        nn.GroupNorm(min(8, cout // 4), cout),
        nn.ReLU(inplace=True),
    )


def gaussian_maps(points: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """(B, K, 2) points in [-1, 1] (x right, y down) -> (B, K, size, size) blobs of peak 1."""
    centres = (torch.arange(size, dtype=points.dtype, device=points.device) + 0.5) * (2.0 / size) - 1.0
    x = torch.exp(-((centres - points[..., 0:1]) ** 2) / (2 * sigma**2))  # (B, K, size)
    y = torch.exp(-((centres - points[..., 1:2]) ** 2) / (2 * sigma**2))
    return y[..., :, None] * x[..., None, :]


class KeypointDecoder(nn.Module):
    """(B, K, 2) points -> (B, 3, T, T) frame in [0, 1], painted from the points' Gaussian blobs and a
    fixed coordinate grid (where the scene's static parts are)."""

    grid: torch.Tensor  # (2, R, R) x and y of each cell centre, a buffer

    def __init__(self, config: KeypointAutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        w = config.decoder_width
        self.body = nn.Sequential(
            _conv(config.num_keypoints + 2, w),
            _conv(w, w, dilation=2),
            _conv(w, w, dilation=4),
            _conv(w, w),
        )
        self.head = nn.Sequential(_conv(w, w // 2), _conv(w // 2, w // 2), nn.Conv2d(w // 2, 3, 1))
        side = config.render_size
        centres = (torch.arange(side, dtype=torch.float32) + 0.5) * (2.0 / side) - 1.0
        grid = torch.stack([centres[None, :].expand(side, side), centres[:, None].expand(side, side)])
        self.register_buffer("grid", grid, persistent=False)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        maps = gaussian_maps(points, self.config.render_size, self.config.sigma)
        x = torch.cat([maps, self.grid.expand(len(points), -1, -1, -1)], dim=1)
        x = F.interpolate(self.body(x), size=self.config.target_size, mode="bilinear", align_corners=False)
        return torch.sigmoid(self.head(x))


class KeypointAutoencoder(nn.Module):
    """Keypoint CNN + decoder; `forward` returns the points and the repainted frame."""

    def __init__(self, config: KeypointAutoencoderConfig = KeypointAutoencoderConfig()) -> None:
        super().__init__()
        self.config = config
        self.keypoints = KeypointNet(config.net_config)
        self.decoder = KeypointDecoder(config)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        points = self.keypoints(images)
        return points, self.decoder(points)

    def target(self, images: torch.Tensor) -> torch.Tensor:
        """The frame the decoder must repaint: the input resized to target_size."""
        size = self.config.target_size
        if images.shape[-1] == size:
            return images
        return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)

    def reconstruction_errors(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) -> (B, K, 2) points and (B,) per-frame mean squared reconstruction error."""
        points, painted = self(images)
        return points, (painted - self.target(images)).pow(2).mean(dim=(1, 2, 3))


class KeypointEncoder:
    """A trained `KeypointAutoencoder` as a token encoder: frames -> (B, 1, 2K) points.

    A frame the decoder repaints worse than `max_reconstruction_error` (mean squared error in [0, 1]
    pixel units; fitted on held-out frames when saved) is refused with PoseEstimatorError: its points
    are not the scene's, and the encoder node publishes nothing for it.
    """

    def __init__(
        self,
        model: KeypointAutoencoder,
        device: str = "cpu",
        model_path: str = "",
        max_reconstruction_error: float = float("inf"),
        weights_digest: str = "",
    ) -> None:
        if not max_reconstruction_error > 0:
            raise PoseEstimatorError(f"max_reconstruction_error must be positive, got {max_reconstruction_error}")
        self.max_reconstruction_error = float(max_reconstruction_error)
        self.model_path = model_path
        self.weights_digest = weights_digest
        self.device = torch.device(device)
        self.model = model.float().to(self.device).eval()
        self.grid = FeatureGrid(1, 1, model.config.channels)

    @property
    def encoder_id(self) -> str:
        """The feature space: "keypoints:<folder name>@<weights digest>". Another training gives other
        points, so the digest of the weights file is part of it: a policy or a feature cache made with
        one training refuses another's points, even under the same folder name."""
        if not self.model_path:
            return ENCODER_ID_PREFIX + "unsaved"
        return f"{ENCODER_ID_PREFIX}{Path(self.model_path).name}@{self.weights_digest}"

    @classmethod
    def load(cls, spec: str, device: str = "cpu") -> KeypointEncoder:
        """`spec`: builtin:<name> or a folder written by `save_keypoint_encoder`."""
        folder, raw, state = read_estimator_folder(spec, CONFIG_FILE, WEIGHTS_FILE, "keypoint encoder")
        try:
            bound = float(raw.pop("max_reconstruction_error"))
            model = KeypointAutoencoder(KeypointAutoencoderConfig(**raw))
            model.load_state_dict(state)
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise PoseEstimatorError(f"cannot load the keypoint encoder {spec!r}: {err}") from err
        digest = hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest()[:10]
        return cls(model, device, str(folder), bound, digest)

    @torch.inference_mode()
    def points_and_errors(self, frames: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames (`images_to_input`'s layouts) -> (B, K, 2) points and (B,) reconstruction errors, unchecked."""
        images = images_to_input(frames, self.model.config.image_size, self.device)
        points, errors = self.model.reconstruction_errors(images)
        if not torch.isfinite(points).all():
            raise PoseEstimatorError("the keypoint encoder returned NaN or inf")
        return points, errors

    def __call__(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        points, errors = self.points_and_errors(frames)
        worst = float(errors.max())
        if worst > self.max_reconstruction_error:
            raise PoseEstimatorError(
                f"the frame does not look like the scene the keypoint encoder was trained on: reconstruction "
                f"error {worst:.4f} > {self.max_reconstruction_error:.4f} (a dead or covered camera, or another scene)"
            )
        return points.reshape(len(points), 1, self.model.config.channels)


def shipped_spec(encoder_id: str) -> str:
    """The `builtin:<name>` spec of a keypoint feature space's folder (the inverse of `encoder_id`'s naming)."""
    if not encoder_id.startswith(ENCODER_ID_PREFIX):
        raise ValueError(f"{encoder_id!r} is not a keypoint encoder's feature space")
    return "builtin:" + encoder_id.removeprefix(ENCODER_ID_PREFIX).rpartition("@")[0]


def save_keypoint_encoder(
    model: KeypointAutoencoder, folder: str | Path, max_reconstruction_error: float, card: dict | None = None
) -> Path:
    """Write `model` (float16 weights, they load back as float32), its config and the refusal bound."""
    config = asdict(model.config) | {"max_reconstruction_error": float(max_reconstruction_error)}
    return write_estimator_folder(folder, model, config, CONFIG_FILE, WEIGHTS_FILE, card)


def is_keypoint_encoder(spec: str) -> bool:
    """Whether `spec` (builtin:<name> or a path) names a keypoint-encoder folder."""
    return names_folder_with(spec, CONFIG_FILE)
