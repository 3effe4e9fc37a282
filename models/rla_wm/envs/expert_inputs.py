"""The one check both scripted experts (Push-T, SO-101) make on a policy call's inputs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:  # the experts import torch only when called
    import torch


class ExpertShape(Protocol):
    @property
    def num_tokens(self) -> int: ...
    @property
    def token_dim(self) -> int: ...
    @property
    def state_dim(self) -> int: ...


def single_robot_inputs(
    config: ExpertShape, tokens: torch.Tensor, state: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """tokens (1, num_tokens, token_dim) and state (1, state_dim) -> the first token and the state as float64
    arrays; ValueError for any other shape or a batch (an expert's memory belongs to one robot's episode)."""
    if tokens.ndim != 3 or tuple(tokens.shape[1:]) != (config.num_tokens, config.token_dim):
        raise ValueError(f"tokens have shape {tuple(tokens.shape)}, expected (B, 1, {config.token_dim})")
    if tuple(state.shape) != (tokens.shape[0], config.state_dim):
        raise ValueError(f"state has shape {tuple(state.shape)}, expected ({tokens.shape[0]}, {config.state_dim})")
    if tokens.shape[0] != 1:
        raise ValueError(f"the expert serves one robot: batch size must be 1, got {tokens.shape[0]}")
    return tokens[0, 0].detach().cpu().double().numpy(), state[0].detach().cpu().double().numpy()
