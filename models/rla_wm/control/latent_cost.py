"""Scoring planner candidates in RLA-WM's latent space instead of decoding every one.

What z is. The RLA encoder reads only the residual s_T - s_t and the decoder rebuilds
s_T = Dec(z, s_t): z is the change between two feature maps, relative to the first. So the
goal can be written as a latent once per replan, z_goal = Enc(s_t, goal) (one encoder pass,
shared by every candidate), and a candidate whose predicted z is close to z_goal is predicted
to end close to the goal: Dec(z_goal, s_t) is the autoencoder's reconstruction of the goal.

How z composes over chunks. The world model predicts z from the features at the start of
the chunk and that chunk's actions (adaLN puts the actions into every conditioning block).
Chained chunks therefore need the decoded features of every chunk but the last: they are
the next prediction's input. Latents of consecutive chunks do not add up (the encoder ends
in a LayerNorm and reads residuals non-linearly), so summing them would not give the plan's z.
What this module does, per candidate:

- the plan is predicted in segments of `prediction_chunks` chunks, one world-model call each
  (the GRU action encoder reads any length up to the model's max_horizon);
- every segment but the last is decoded (the next segment is conditioned on it);
- the last segment's z is compared with the goal's latent from that segment's start. When the
  plan is one segment, that start is the current observation and the goal latent is the
  shared z_goal: no candidate is decoded at all. Otherwise it is Enc(s_start, goal) per
  candidate, an encoder pass that costs about what the decode it replaces costs.

What it saves. Per candidate and prediction the pusht_small RLA-WM spends about 0.82 GFLOPs
conditioning on the features, 0.26 integrating the flow (10 Euler steps) and 0.74 decoding
(flop counter, 256 x 192 tokens). A plan of H one-chunk segments costs H (cond + flow) +
(H - 1) decodes + one encode in latent space against H (cond + flow + decode) in feature space:
the same for H > 1, 40% less for H = 1. The large saving needs fewer calls per plan:
one segment for the whole plan costs one (cond + flow) instead of H full predictions (about
8x at H = 5). That is only as good as the model is on sequences that long: the paper trains
RLA-WM on variable chunks of up to 15 steps, the shipped checkpoints only on 5-step chunks,
hence `prediction_chunks` defaults to 1. What cannot be shared: the conditioning stage runs
per candidate (only its input projection and the flow's time embedding are common to a
batch, see `RLAWorldModel.sample`), so a replan is never "condition once".

Quality. Latent distances rank candidates like feature distances as far as the decoder is
locally an isometry up to scale; tests/models/test_planning_latent_cost.py checks the ranking
and the reached goal on a trained toy model. The chosen plan is decoded once at the end, so a
plan still reports its feature-space cost (`PlanResult.feature_cost`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rla_wm.control.planning import (
    PlannerConfig,
    PlanningError,
    feature_distance,
    finite_or_inf,
    prediction_segments,
    rollout_costs,
    segment_actions,
)
from rla_wm.models.prediction import LatentPredictor, Predictor

# (B, M, h, A) candidate plans -> (B,) costs on the CPU, +inf where not finite.
CostFunction = Callable[[torch.Tensor], torch.Tensor]


def check_prediction_length(predictor: Predictor, config: PlannerConfig) -> None:
    """PlanningError when one world-model call would get more actions than the model takes."""
    longest = config.chunk_length * min(config.prediction_chunks, config.horizon)
    max_horizon = getattr(predictor, "max_horizon", None)
    if isinstance(max_horizon, int) and longest > max_horizon:
        raise PlanningError(
            f"prediction_chunks {config.prediction_chunks} x chunk_length {config.chunk_length} = {longest} "
            f"actions per prediction exceed the world model's max_horizon {max_horizon}"
        )


def latent_predictor(predictor: Predictor) -> LatentPredictor:
    if not isinstance(predictor, LatentPredictor):
        raise PlanningError(
            f"cost_space 'latent' needs a world model with a residual latent (rla-wm); "
            f"{getattr(predictor, 'name', type(predictor).__name__)!r} has none: use cost_space 'features'"
        )
    return predictor


@torch.no_grad()
def latent_rollout_costs(
    predictor: LatentPredictor,
    current: torch.Tensor,
    goal: torch.Tensor,
    action_chunks: torch.Tensor,
    cost: str = "l2",
    batch_size: int = 0,
    prediction_chunks: int = 1,
    goal_latent: torch.Tensor | None = None,
) -> torch.Tensor:
    """Latent-space cost of B candidate plans (B, M, h, A) from one observation (1, N, C) -> (B,).

    The distance (`cost`: l2, l1 or cosine over the K latent tokens) between the last
    segment's predicted z and the goal's latent from that segment's start. goal_latent:
    Enc(current, goal), (1, K, D), if already computed. Non-finite costs come back as +inf.
    """
    if action_chunks.ndim != 4:
        raise PlanningError(f"action_chunks must be (B, M, h, A), got {tuple(action_chunks.shape)}")
    count, chunks = action_chunks.shape[:2]
    step = batch_size or count
    action_chunks = action_chunks.to(current.device, current.dtype)
    segments = prediction_segments(chunks, prediction_chunks)
    if goal_latent is None and len(segments) == 1:
        goal_latent = predictor.encode(current, goal)
    costs = []
    for begin in range(0, count, step):
        part = action_chunks[begin : begin + step]
        features = current
        for first, last in segments[:-1]:  # decoded: the next segment is conditioned on them
            features = predictor.decode(
                predictor.predict_latent(features, segment_actions(part, first, last)), features
            )
        first, last = segments[-1]
        z = predictor.predict_latent(features, segment_actions(part, first, last))
        target = goal_latent if len(segments) == 1 else predictor.encode(features, goal)
        assert target is not None  # one segment: computed above
        costs.append(feature_distance(z, target, cost).float())
    return finite_or_inf(costs)


def candidate_costs(
    predictor: Predictor, current: torch.Tensor, goal: torch.Tensor, config: PlannerConfig
) -> CostFunction:
    """The cost of the config's cost_space for one replan from `current` (1, N, C) to `goal`.

    Checks the predictor against the config (PlanningError) and, for the latent cost, encodes
    the goal once for every iteration and candidate of the replan.
    """
    check_prediction_length(predictor, config)
    if config.cost_space == "features":
        return lambda chunks: rollout_costs(
            predictor,
            current,
            goal,
            chunks,
            config.cost,
            config.intermediate_weight,
            config.batch_size,
            config.prediction_chunks,
            config.cost_channels,
        )
    latent = latent_predictor(predictor)
    one_segment = config.prediction_chunks >= config.horizon
    goal_latent = latent.encode(current, goal) if one_segment else None
    return lambda chunks: latent_rollout_costs(
        latent, current, goal, chunks, config.cost, config.batch_size, config.prediction_chunks, goal_latent
    )
