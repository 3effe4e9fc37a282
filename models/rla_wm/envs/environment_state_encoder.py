"""The feature "encoder" of a privileged rung: a dataset's `observation.environment_state` rows as tokens.

A simulator publishes its privileged state (Push-T's block pose, the SO-101 cube's pose and zone)
as a 1x1 FeatureMap whose encoder id names the layout; the recorder stores the same vector as
`observation.environment_state`. For training, this encoder turns those rows into the (B, 1, C)
tokens the policy node will receive, so the feature cache reads the column instead of a camera.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rla_wm.envs.pusht.privileged import BLOCK_STATE_CHANNELS, BLOCK_STATE_ENCODER_ID
from rla_wm.envs.so101.environment_state import CUBE_STATE_CHANNELS, CUBE_STATE_ENCODER_ID
from rla_wm.recording.environment import ENVIRONMENT_STATE_KEY

if TYPE_CHECKING:
    import torch

# Encoder id -> channels of the privileged state vector it names.
ENVIRONMENT_STATE_CHANNELS = {BLOCK_STATE_ENCODER_ID: BLOCK_STATE_CHANNELS, CUBE_STATE_ENCODER_ID: CUBE_STATE_CHANNELS}


class EnvironmentStateEncoder:
    """`observation.environment_state` rows (B, C) -> (B, 1, C) float32 tokens of the 1x1 map a sim publishes."""

    input_key = ENVIRONMENT_STATE_KEY

    def __init__(self, encoder_id: str) -> None:
        from rla_wm.models.encoder import FeatureGrid

        if encoder_id not in ENVIRONMENT_STATE_CHANNELS:
            raise ValueError(f"{encoder_id!r} is not a privileged state; known: {sorted(ENVIRONMENT_STATE_CHANNELS)}")
        self._encoder_id = encoder_id
        self.grid = FeatureGrid(1, 1, ENVIRONMENT_STATE_CHANNELS[encoder_id])

    @property
    def encoder_id(self) -> str:
        return self._encoder_id

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        channels = self.grid.channels
        if rows.ndim != 2 or rows.shape[1] != channels:
            raise ValueError(f"{self._encoder_id} rows have shape {tuple(rows.shape)}, expected (B, {channels})")
        if not bool(rows.isfinite().all()):
            raise ValueError(f"{self._encoder_id} rows are not finite")
        return rows.float().unsqueeze(1)
