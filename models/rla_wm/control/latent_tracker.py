"""Online residual latent actions: z between the frame h steps ago and the newest frame."""

from __future__ import annotations

from collections import deque

import numpy as np
import torch

from rla_wm.models.rla import RLAAutoencoder


class LatentTracker:
    """Keeps recent feature maps by timestamp and encodes z(s_{t-h}, s_t) for each new frame.

    h is counted in frames at `fps` (the rate the autoencoder was trained at), so the
    earlier frame is looked up by time: the stored frame closest to t - h / fps, if
    one lies within half a frame period (a dropped frame skips that latent rather
    than pairing the wrong frames).
    """

    def __init__(
        self, autoencoder: RLAAutoencoder, model_id: str, horizon: int, fps: float, device: str = "cpu"
    ) -> None:
        if horizon < 1 or fps <= 0:
            raise ValueError(f"horizon must be >= 1 and fps > 0, got {horizon}, {fps}")
        self.autoencoder = autoencoder.to(device).eval()
        self.model_id = model_id
        self.horizon = horizon
        self.gap = horizon / fps
        self.tolerance = 0.5 / fps
        self.device = torch.device(device)
        self._frames: deque[tuple[float, np.ndarray]] = deque()

    @classmethod
    def from_checkpoint(
        cls, spec: str, encoder_id: str, horizon: int, fps: float, device: str = "cpu"
    ) -> LatentTracker:
        autoencoder, _ = RLAAutoencoder.load(spec)
        if autoencoder.config.encoder_id != encoder_id:
            raise ValueError(
                f"RLA checkpoint {spec} was trained on features of {autoencoder.config.encoder_id!r}, "
                f"the encoder produces {encoder_id!r}"
            )
        return cls(autoencoder, spec, horizon, fps, device)

    def push(self, stamp: float, tokens: np.ndarray) -> tuple[float, np.ndarray] | None:
        """Add frame t; return (stamp of frame t-h, z as (K, D)) or None if no frame fits t-h."""
        if self._frames and stamp <= self._frames[-1][0]:
            self._frames.clear()  # time went backwards (sim reset, bag loop): start over
        self._frames.append((stamp, tokens))
        while self._frames and self._frames[0][0] < stamp - self.gap - self.tolerance:
            self._frames.popleft()
        target = stamp - self.gap
        earlier_stamp, earlier = min(self._frames, key=lambda frame: abs(frame[0] - target))
        if abs(earlier_stamp - target) > self.tolerance:
            return None
        with torch.inference_mode():
            current = torch.from_numpy(earlier)[None].to(self.device)
            future = torch.from_numpy(tokens)[None].to(self.device)
            z = self.autoencoder.encode(current, future)[0].float().cpu().numpy()
        return earlier_stamp, z
