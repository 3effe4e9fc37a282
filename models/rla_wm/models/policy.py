"""The policy (the paper's "world action model", WAM): a visuomotor policy over patch features with an
action head and an RLA head. In this codebase it is called the policy everywhere.

    patch tokens s_t (B, N, C), merged ──┐
    state token: the measured state, or  ├─ trunk ─┬─ RLA head:    K queries -> z_hat (s_t -> s_{t+H})
    a learned "missing state" token ─────┘         ├─ action head: T queries -> increments -> chunk
                                                   └─ state head:  state token's output -> state estimate

Two action heads (`action_head`):
- "flow" (the default for new models): a flow-matching head (Lipman et al. 2023; the
  action expert of pi0). Push-T demonstrations are multimodal (go round the block left
  or right); a regression head averages the modes into a chunk that does neither, a
  flow head samples one of them. Its T queries carry the noisy increments and the flow
  time (adaptive layer norm), cross-attend to the trunk, and predict the velocity;
  `flow_steps` Euler steps from Gaussian noise give the chunk.
- "regression": one deterministic chunk, L1 + MSE to the demonstration (kept so the
  checkpoints trained with it load, and as the ablation that shows what the flow buys).

- The RLA head predicts the frozen RLA autoencoder's z between the window's first frame
  (t) and last frame (t + rla_horizon), in units of `latent_scale`. Its target needs no
  actions, so it trains on action-free video too.
- The action head predicts the chunk a_t .. a_{t+T-1} as bounded increments from an
  anchor: at most `max_delta` per point, so a chunk starts where the robot is and moves
  smoothly, then targets are clipped to the action range. With `action_reads_rla` the
  action head's queries also attend to the predicted z ("decode RLAs into commands").
- Where no state is measured (action-free training video) a learned token takes the state
  token's place, and the chunk is anchored on the state head's estimate of the state from
  the image: `forward(tokens, None)`, or `state_visible` False per sample.

`forward(tokens, state)` with a measured state is what the policy node runs: absolute joint
targets (B, T, A). The node never runs the state-free path: when its newest joint state is
older than its `state_timeout` (or there is none) it does not act at all, and publishes
nothing for that feature map. A chunk anchored on an estimate from the image could start
away from where the arm is, which the safety gate would refuse anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rla_wm.models.checkpoint import Checkpointable
from rla_wm.models.layers import Block, timestep_embedding
from rla_wm.models.rla import check_features

CHECKPOINT_KIND = "world_action_model"


@dataclass(frozen=True)
class PolicyConfig:
    token_dim: int = 192
    num_tokens: int = 256
    state_dim: int = 2
    action_dim: int = 2
    chunk_length: int = 8
    # RLA head: z of the frozen autoencoder (latent_tokens x latent_dim) between frame t and
    # t + rla_horizon, predicted as z / latent_scale (training measures the scale on the data).
    latent_tokens: int = 8
    latent_dim: int = 16
    latent_scale: float = 1.0
    rla_horizon: int = 8
    action_reads_rla: bool = True
    # s x s neighbouring patches are concatenated into one token: 4x fewer tokens for
    # attention at s = 2, without averaging away where small things (the agent) are.
    token_merge: int = 2
    # Layer-normalise the incoming tokens: right for encoder features (hundreds of channels);
    # wrong for a few-channel state vector, whose norm and mean it would erase.
    token_norm: bool = True
    # Without token_norm, each channel's range in the training data (empty: tokens as they come),
    # mapped to [-1, 1] before the projection: a privileged state in metres (the SO-101 cube moves
    # over ~0.2 m and must be placed to ~1 cm) would otherwise reach the network as tiny differences.
    token_low: tuple[float, ...] = ()
    token_high: tuple[float, ...] = ()
    width: int = 96
    depth: int = 3
    head_depth: int = 1
    heads: int = 4
    mlp_ratio: float = 2.0
    # "flow" (samples one mode of a multimodal chunk distribution) or "regression" (the mean).
    action_head: str = "regression"
    flow_steps: int = 10
    # Actions are target positions reached by increments of at most max_delta per point
    # from the anchor (the measured state); targets are then clipped to the action range.
    max_delta: tuple[float, ...] = (20.0, 20.0)
    action_low: tuple[float, ...] = (0.0, 0.0)
    action_high: tuple[float, ...] = (512.0, 512.0)
    state_low: tuple[float, ...] = (0.0, 0.0)
    state_high: tuple[float, ...] = (512.0, 512.0)
    encoder_id: str = "builtin:dinov2-tiny-random@224"
    # Scene read-out (training only): a head that estimates the simulator's scene state
    # (observation.environment_state, e.g. the block pose) from the trunk, so the trunk learns to
    # see what the task is about. 0 = no head. The policy never takes the scene as input.
    scene_dim: int = 0
    scene_low: tuple[float, ...] = ()
    scene_high: tuple[float, ...] = ()


@dataclass(frozen=True)
class PolicyLossWeights:
    action: float = 1.0
    rla: float = 1.0
    # The state head only anchors chunks when no state is measured; a small weight keeps it
    # from pulling the trunk away from the action and RLA objectives.
    state: float = 0.5
    # The scene read-out's weight (0 unless the model has a scene head and the data has scenes).
    scene: float = 0.0


ACTION_HEADS = ("regression", "flow")
# Windows of a batch whose sampled chunks give the flow head's logged action error.
METRIC_WINDOWS = 32


@dataclass
class PolicyOutput:
    """Everything one pass predicts; `actions` are not clipped (the loss needs their gradient)."""

    actions: torch.Tensor  # (B, T, A) absolute targets, anchor + cumulative increments
    increments: torch.Tensor  # (B, T, A) in [-1, 1], units of max_delta
    rla: torch.Tensor  # (B, K, D) predicted z / latent_scale
    state: torch.Tensor  # (B, S) the state head's estimate, physical units
    anchor: torch.Tensor  # (B, S) measured state where visible, else the estimate


def _to_unit_range(values: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """[low, high] -> [-1, 1], per dimension."""
    return 2 * (values - low) / (high - low) - 1


def _from_unit_range(normalised: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [low, high], per dimension."""
    return low + (normalised + 1) * (high - low) / 2


def _check_tuple(config: PolicyConfig, name: str, length: int) -> None:
    if len(getattr(config, name)) != length:
        raise ValueError(f"{name} has {len(getattr(config, name))} entries, expected {length}")


class Policy(Checkpointable[PolicyConfig]):
    """Visuomotor transformer with an action-chunk head, an RLA head and a state head."""

    checkpoint_kind = CHECKPOINT_KIND
    config_type = PolicyConfig
    # Buffers (registered in __init__), declared for type checkers.
    action_low: torch.Tensor
    action_high: torch.Tensor
    max_delta: torch.Tensor
    state_low: torch.Tensor
    state_high: torch.Tensor
    scene_low: torch.Tensor
    scene_high: torch.Tensor
    token_low: torch.Tensor
    token_high: torch.Tensor

    def __init__(self, config: PolicyConfig) -> None:
        super().__init__(config)
        if config.action_head not in ACTION_HEADS:
            raise ValueError(f"action_head must be one of {ACTION_HEADS}, got {config.action_head!r}")
        if config.flow_steps < 1:
            raise ValueError(f"flow_steps must be >= 1, got {config.flow_steps}")
        if config.state_dim != config.action_dim:
            raise ValueError("actions are increments on the state: state_dim and action_dim must agree")
        for name, length in (
            ("max_delta", config.action_dim),
            ("action_low", config.action_dim),
            ("action_high", config.action_dim),
            ("state_low", config.state_dim),
            ("state_high", config.state_dim),
            ("scene_low", config.scene_dim),
            ("scene_high", config.scene_dim),
        ):
            _check_tuple(config, name, length)
        if config.token_low or config.token_high:
            if config.token_norm:
                raise ValueError("token_low/token_high scale a state's channels; they do not go with token_norm")
            _check_tuple(config, "token_low", config.token_dim)
            _check_tuple(config, "token_high", config.token_dim)
        if min(config.chunk_length, config.rla_horizon, config.token_merge, config.depth, config.head_depth) < 1:
            raise ValueError("chunk_length, rla_horizon, token_merge, depth and head_depth must be >= 1")
        if not (math.isfinite(config.latent_scale) and config.latent_scale > 0):
            raise ValueError(f"latent_scale must be positive, got {config.latent_scale}")
        if any(d <= 0 for d in config.max_delta):
            raise ValueError(f"max_delta must be positive, got {config.max_delta}")
        grid = math.isqrt(config.num_tokens)
        if config.token_merge > 1 and (grid * grid != config.num_tokens or grid % config.token_merge):
            raise ValueError(
                f"token_merge {config.token_merge} needs a square grid whose side it divides; "
                f"num_tokens is {config.num_tokens}"
            )
        self.grid = grid
        merged_tokens = config.num_tokens // config.token_merge**2
        merged_dim = config.token_dim * config.token_merge**2
        width = config.width
        self.token_proj = nn.Sequential(
            nn.LayerNorm(merged_dim) if config.token_norm else nn.Identity(), nn.Linear(merged_dim, width)
        )
        self.token_position = nn.Parameter(torch.randn(1, merged_tokens, width) * 0.02)
        self.state_proj = nn.Sequential(nn.Linear(config.state_dim, width), nn.GELU(), nn.Linear(width, width))
        self.missing_state = nn.Parameter(torch.randn(1, width) * 0.02)
        self.state_position = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.trunk = nn.ModuleList(Block(width, config.heads, config.mlp_ratio) for _ in range(config.depth))
        self.trunk_norm = nn.LayerNorm(width)

        self.rla_queries = nn.Parameter(torch.randn(1, config.latent_tokens, width) * 0.02)
        self.rla_blocks = nn.ModuleList(
            Block(width, config.heads, config.mlp_ratio, cross_attention=True) for _ in range(config.head_depth)
        )
        self.rla_out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, config.latent_dim))

        self.action_queries = nn.Parameter(torch.randn(1, config.chunk_length, width) * 0.02)
        flow = config.action_head == "flow"
        self.action_blocks = nn.ModuleList(
            Block(width, config.heads, config.mlp_ratio, cross_attention=True, condition_dim=width if flow else None)
            for _ in range(config.head_depth)
        )
        if flow:
            self.noisy_action_in = nn.Linear(config.action_dim, width)
            self.flow_time = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        # Sampling noise of the flow head: seeded, so a run (and a test) is reproducible.
        self.generator = torch.Generator().manual_seed(0)
        self.action_out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, config.action_dim))
        if config.action_reads_rla:
            self.rla_in = nn.Linear(config.latent_dim, width)
            self.rla_in_position = nn.Parameter(torch.randn(1, config.latent_tokens, width) * 0.02)

        self.state_out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, config.state_dim))
        self.scene_out = (
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Linear(width, config.scene_dim))
            if config.scene_dim
            else None
        )

        self.register_buffer("action_low", torch.tensor(config.action_low, dtype=torch.float32))
        self.register_buffer("action_high", torch.tensor(config.action_high, dtype=torch.float32))
        self.register_buffer("max_delta", torch.tensor(config.max_delta, dtype=torch.float32))
        self.register_buffer("state_low", torch.tensor(config.state_low, dtype=torch.float32))
        self.register_buffer("state_high", torch.tensor(config.state_high, dtype=torch.float32))
        # Not saved: the config holds them, and checkpoints from before the scene head load unchanged.
        self.register_buffer("scene_low", torch.tensor(config.scene_low, dtype=torch.float32), persistent=False)
        self.register_buffer("scene_high", torch.tensor(config.scene_high, dtype=torch.float32), persistent=False)
        self.register_buffer("token_low", torch.tensor(config.token_low, dtype=torch.float32), persistent=False)
        self.register_buffer("token_high", torch.tensor(config.token_high, dtype=torch.float32), persistent=False)

    @property
    def feature_grid(self) -> tuple[int, int, int] | None:
        """(height, width, channels) of the patch grid the model takes, or None when num_tokens is not
        a square (token_merge 1 only): then any grid of num_tokens patches has the right shape.
        The encoders make square grids; a map with another layout, even with as many patches,
        does not match the model's position embeddings."""
        if self.grid * self.grid != self.config.num_tokens:
            return None
        return (self.grid, self.grid, self.config.token_dim)

    # -- normalisation

    def normalise_state(self, state: torch.Tensor) -> torch.Tensor:
        return _to_unit_range(state, self.state_low, self.state_high)

    def denormalise_state(self, normalised: torch.Tensor) -> torch.Tensor:
        return _from_unit_range(normalised, self.state_low, self.state_high)

    # -- network

    def _merge(self, tokens: torch.Tensor) -> torch.Tensor:
        s = self.config.token_merge
        if s == 1:
            return tokens
        batch, _, channels = tokens.shape
        side = self.grid // s
        # Row-major patch grid (h, w) -> (h/s, w/s) cells of s*s concatenated patches.
        x = tokens.reshape(batch, side, s, side, s, channels).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(batch, side * side, s * s * channels)

    def _check_inputs(
        self, tokens: torch.Tensor, state: torch.Tensor | None, state_visible: torch.Tensor | None
    ) -> torch.Tensor:
        """Validate; returns the (B,) bool mask of samples whose state token is the measured state."""
        check_features(tokens, self.config, "tokens")
        batch = tokens.shape[0]
        if state is None:
            if state_visible is not None and bool(state_visible.any()):
                raise ValueError("state_visible marks samples with a state, but no state was given")
            return torch.zeros(batch, dtype=torch.bool, device=tokens.device)
        if state.ndim != 2 or tuple(state.shape) != (batch, self.config.state_dim):
            raise ValueError(f"state {tuple(state.shape)} != ({batch}, {self.config.state_dim})")
        if state_visible is None:
            state_visible = torch.ones(batch, dtype=torch.bool, device=tokens.device)
        elif state_visible.shape != (batch,):
            raise ValueError(f"state_visible {tuple(state_visible.shape)} != ({batch},)")
        state_visible = state_visible.bool()
        if not torch.isfinite(state[state_visible]).all():
            raise ValueError(
                "state contains NaN or inf; pass state=None (or state_visible=False) when the state is unknown"
            )
        return state_visible

    def _encode(
        self, tokens: torch.Tensor, state: torch.Tensor | None, state_visible: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Trunk and RLA head: (action context, rla, state estimate, anchor)."""
        visible = self._check_inputs(tokens, state, state_visible)
        batch = tokens.shape[0]
        if self.config.token_low:
            tokens = _to_unit_range(tokens, self.token_low, self.token_high)
        patches = self.token_proj(self._merge(tokens)) + self.token_position
        if state is None:
            state_token = self.missing_state.expand(batch, -1)
        else:
            # Unknown states are zeroed before the projection: a NaN there would poison
            # the weight gradient even where torch.where discards the value.
            safe_state = torch.where(visible[:, None], state, torch.zeros_like(state))
            measured = self.state_proj(self.normalise_state(safe_state))
            state_token = torch.where(visible[:, None], measured, self.missing_state.expand(batch, -1))
        x = torch.cat([state_token[:, None] + self.state_position, patches], dim=1)
        for block in self.trunk:
            x = block(x)
        context = self.trunk_norm(x)

        rla = self.rla_queries.expand(batch, -1, -1)
        for block in self.rla_blocks:
            rla = block(rla, context=context)
        rla = self.rla_out(rla)

        action_context = context
        if self.config.action_reads_rla:
            action_context = torch.cat([context, self.rla_in(rla) + self.rla_in_position], dim=1)
        estimated_state = self.denormalise_state(self.state_out(context[:, 0]))
        anchor = estimated_state if state is None else torch.where(visible[:, None], state, estimated_state)
        return action_context, rla, estimated_state, anchor

    def _velocity(self, noisy: torch.Tensor, time: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Flow head: velocity (B, T, A) of the noisy normalised increments at flow time `time` (B,)."""
        condition = self.flow_time(timestep_embedding(time, self.config.width).to(noisy.dtype))
        queries = self.action_queries + self.noisy_action_in(noisy)
        for block in self.action_blocks:
            queries = block(queries, condition=condition, context=context)
        return self.action_out(queries)

    def _sample_increments(self, context: torch.Tensor) -> torch.Tensor:
        """Euler integration of the flow from Gaussian noise to increments in units of max_delta."""
        config = self.config
        shape = (context.shape[0], config.chunk_length, config.action_dim)
        # Drawn on the CPU generator (reproducible on any device), then in the model's dtype (bfloat16 on a GPU).
        x = torch.randn(shape, generator=self.generator).to(context.device, context.dtype)
        dt = 1.0 / config.flow_steps
        for step in range(config.flow_steps):
            time = torch.full((shape[0],), step * dt, device=context.device)
            x = x + dt * self._velocity(x, time, context)
        return x.clamp(-1.0, 1.0)

    def _increments(self, context: torch.Tensor) -> torch.Tensor:
        if self.config.action_head == "flow":
            return self._sample_increments(context)
        queries = self.action_queries.expand(context.shape[0], -1, -1)
        for block in self.action_blocks:
            queries = block(queries, context=context)
        return torch.tanh(self.action_out(queries))

    def reseed(self, seed: int | None = None) -> None:
        """Restart the flow head's noise (seed None: from entropy)."""
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def predict(
        self, tokens: torch.Tensor, state: torch.Tensor | None = None, state_visible: torch.Tensor | None = None
    ) -> PolicyOutput:
        """All heads. `state` None, or `state_visible` False for a sample, uses the missing-state token."""
        context, rla, estimated_state, anchor = self._encode(tokens, state, state_visible)
        increments = self._increments(context)
        actions = anchor[:, None] + torch.cumsum(increments * self.max_delta, dim=1)
        return PolicyOutput(actions=actions, increments=increments, rla=rla, state=estimated_state, anchor=anchor)

    def clip_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(actions, self.action_high), self.action_low)

    def forward(self, tokens: torch.Tensor, state: torch.Tensor | None = None) -> torch.Tensor:
        """Action chunk (B, T, A) of absolute targets; `state` None when no state is measured."""
        return self.clip_actions(self.predict(tokens, state).actions)

    def estimate_scene(self, tokens: torch.Tensor, state: torch.Tensor | None = None) -> torch.Tensor:
        """The scene head's estimate (B, E) of the scene state, in the data's units (diagnostics)."""
        if self.scene_out is None:
            raise ValueError("this policy has no scene head (scene_dim 0)")
        context = self._encode(tokens, state, None)[0]
        normalised = self.scene_out(context[:, 0])
        return _from_unit_range(normalised, self.scene_low, self.scene_high)

    def predict_rla(self, tokens: torch.Tensor, state: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted z (B, K, D) between s_t and s_{t + rla_horizon}, in the autoencoder's units."""
        return self.predict(tokens, state).rla * self.config.latent_scale

    # -- training

    def loss(
        self,
        tokens: torch.Tensor,
        z: torch.Tensor,
        state: torch.Tensor,
        actions: torch.Tensor,
        labelled: torch.Tensor,
        state_visible: torch.Tensor,
        weights: PolicyLossWeights = PolicyLossWeights(),
        measure_actions: bool = True,
        scene: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Masked multi-task loss over a batch that mixes labelled and action-free windows.

        measure_actions: compute the logged `action_l1` (NaN otherwise). With the flow head it samples
        chunks, which costs more than the loss itself: training asks for it on logged steps only.

        tokens (B, N, C): s_t.  z (B, K, D): the frozen autoencoder's z(s_t, s_{t+H}).
        state (B, S), actions (B, T, A): zeros (ignored) where `labelled` is False.
        labelled (B,): the window has actions and a state -> action and state losses.
        state_visible (B,): the state token gets the measured state (else the missing token).
        scene (B, E): the simulator's scene state, the scene head's target on labelled windows
        (needs a model with scene_dim E; None: no scene term).
        The RLA loss uses every window. Action, state and scene terms are averaged over the
        labelled windows only and multiplied by the mask, so action-free windows send no
        gradient through them (their placeholder targets never matter).
        """
        config = self.config
        expected_z = (tokens.shape[0], config.latent_tokens, config.latent_dim)
        if tuple(z.shape) != expected_z:
            raise ValueError(f"z {tuple(z.shape)} != {expected_z}")
        if tuple(actions.shape) != (tokens.shape[0], config.chunk_length, config.action_dim):
            raise ValueError(
                f"actions {tuple(actions.shape)} != ({tokens.shape[0]}, {config.chunk_length}, {config.action_dim})"
            )
        labelled = labelled.bool()
        if not torch.isfinite(z).all():
            raise ValueError("z targets contain NaN or inf")
        if not (torch.isfinite(actions[labelled]).all() and torch.isfinite(state[labelled]).all()):
            raise ValueError("labelled windows have NaN or inf actions or states")
        state_visible = state_visible.bool() & labelled
        context, rla, estimated_state, anchor = self._encode(tokens, state, state_visible)
        mask = labelled.float()
        count = mask.sum().clamp_min(1.0)

        target_z = z / config.latent_scale
        rla_error = rla - target_z
        rla_loss = rla_error.pow(2).mean() + rla_error.abs().mean()

        # Masked targets are replaced by the prediction itself (detached), so whatever the
        # placeholders hold, an action-free window's error is exactly zero.
        keep = labelled[:, None, None]
        if config.action_head == "flow":
            # Conditional flow matching on the increments (units of max_delta) from the anchor.
            steps = torch.diff(torch.cat([anchor.detach()[:, None], actions], dim=1), dim=1) / self.max_delta
            target = torch.where(keep, steps, torch.zeros_like(steps))
            noise = torch.randn_like(target)
            time = torch.rand(target.shape[0], device=target.device)
            noisy = (1 - time[:, None, None]) * noise + time[:, None, None] * target
            velocity_error = self._velocity(noisy, time, context) - (target - noise)
            per_window = velocity_error.pow(2).mean(dim=(1, 2))
            # The logged action error needs sampled chunks (flow_steps passes each): METRIC_WINDOWS of
            # them, and only when it is logged.
            predicted_actions = None
            if measure_actions:
                with torch.no_grad():
                    few = slice(0, METRIC_WINDOWS)
                    sampled = self._sample_increments(context[few]) * self.max_delta
                    predicted_actions = anchor[few, None].detach() + torch.cumsum(sampled, dim=1)
        else:
            increments = self._increments(context)
            predicted_actions = anchor[:, None] + torch.cumsum(increments * self.max_delta, dim=1)
            action_target = torch.where(keep, actions, predicted_actions.detach())
            action_error = (predicted_actions - action_target) / self.max_delta
            per_window = action_error.pow(2).mean(dim=(1, 2)) + action_error.abs().mean(dim=(1, 2))
        action_loss = (per_window * mask).sum() / count

        state_target = torch.where(labelled[:, None], state, estimated_state.detach())
        state_error = self.normalise_state(estimated_state) - self.normalise_state(state_target)
        state_loss = (state_error.pow(2).mean(dim=1) * mask).sum() / count

        total = weights.action * action_loss + weights.rla * rla_loss + weights.state * state_loss
        scene_loss = torch.zeros(())
        if scene is not None:
            if self.scene_out is None:
                raise ValueError("scene targets given, but the model has no scene head (scene_dim 0)")
            if tuple(scene.shape) != (tokens.shape[0], config.scene_dim):
                raise ValueError(f"scene {tuple(scene.shape)} != ({tokens.shape[0]}, {config.scene_dim})")
            if not torch.isfinite(scene[labelled]).all():
                raise ValueError("labelled windows have NaN or inf scene states")
            estimate = self.scene_out(context[:, 0])  # normalised to [-1, 1] over the training range
            known = torch.where(labelled[:, None], scene, self.scene_low)  # placeholders never reach the loss
            scene_target = _to_unit_range(known, self.scene_low, self.scene_high)
            scene_error = torch.where(labelled[:, None], estimate - scene_target, torch.zeros_like(estimate))
            scene_loss = (scene_error.pow(2).mean(dim=1) * mask).sum() / count
            total = total + weights.scene * scene_loss
        with torch.no_grad():
            action_l1 = torch.tensor(float("nan"))
            if predicted_actions is not None:
                measured = len(predicted_actions)
                pixel_error = torch.where(keep[:measured], predicted_actions - actions[:measured], 0.0).abs()
                action_l1 = (pixel_error.mean((1, 2)) * mask[:measured]).sum() / mask[:measured].sum().clamp_min(1.0)
            cosine = F.cosine_similarity(rla.flatten(1), target_z.flatten(1), dim=1).mean()
        return total, {
            "action_loss": float(action_loss.detach()),
            "rla_loss": float(rla_loss.detach()),
            "state_loss": float(state_loss.detach()),
            "scene_loss": float(scene_loss.detach()),
            "action_l1": float(action_l1),
            "rla_cosine": float(cosine),
            "labelled_fraction": float(mask.mean()),
        }
