"""Planning to a goal image in feature space: CEM and MPPI over action sequences.

A candidate plan is `horizon` chunks of `chunk_length` absolute actions (Push-T: agent
target (x, y) in pixels, one per 1 / CONTROL_HZ s). Each candidate is scored by an
autoregressive rollout of any `Predictor` (RLA-WM, the regression baseline, ...) from the
current features: cost = distance between the features predicted after the last chunk and
the goal features (optionally plus the distances after intermediate chunks).

Sequences are sampled around a Gaussian mean (the shifted previous plan on a warm start,
else "hold the current position") and projected onto the feasible set: inside the action
bounds and, with `max_delta`, at most that far from the previous target (and from the
measured start), so every candidate is a command the safety gate would pass. The sampling
distribution is refitted to the proposals before that projection: a proposal beyond the step
limit then means "move at full speed" rather than collapsing the spread.
CEM refits mean and std to the `elites` cheapest candidates; MPPI to all candidates weighted
by softmax(-cost / (temperature * cost std)).

The returned plan is the lowest-cost candidate of the last iteration; the population of
every iteration includes the current mean, so a converged mean is always considered.

`cost_space="latent"` (RLA-WM only) scores candidates in the RLA latent space instead of
decoding the plan's end for every candidate; `prediction_chunks` > 1 predicts several chunks
per world-model call. Why that is sound, and what it saves, is in `latent_cost`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from rla_wm.models.prediction import Predictor, Reseedable, SharedPredictor

METHODS = ("cem", "mppi")
COSTS = ("l2", "l1", "cosine")
COST_SPACES = ("features", "latent")


class PlanningError(ValueError):
    """Bad planner input (shapes, NaN, bounds) or no candidate with a finite cost."""


@dataclass(frozen=True)
class PlannerConfig:
    """Optimiser settings. DINO-WM's Push-T planner: CEM, horizon 5, 300 samples, 30 iterations."""

    method: str = "cem"
    horizon: int = 5  # chunks per plan
    chunk_length: int = 5  # actions per chunk (one world-model prediction each)
    num_samples: int = 300
    iterations: int = 30
    elites: int = 30  # CEM: samples the next distribution is fitted to (at most num_samples)
    # MPPI: softmax temperature in units of the iteration's cost standard deviation, so one
    # setting works for any feature space and cost scale.
    temperature: float = 0.5
    action_low: tuple[float, ...] = (0.0, 0.0)
    action_high: tuple[float, ...] = (512.0, 512.0)
    # Largest change of the target between consecutive steps (and from the measured start);
    # None = unconstrained. Keeps every sampled sequence executable.
    max_delta: float | None = None
    init_std: float = 0.25  # initial sampling std as a fraction of (action_high - action_low)
    min_std: float = 1e-3  # fraction of the range; stops the distribution from collapsing to a point
    momentum: float = 0.0  # new mean = momentum * old + (1 - momentum) * fitted
    cost: str = "l2"  # l2 (mean squared error over patch tokens), l1, or cosine (1 - cos per token)
    # Weight of the mean distance after chunks 1..H-1, added to the final distance (0 = goal only).
    intermediate_weight: float = 0.0
    # Compare only the first K feature channels (0 = all). For a privileged state space whose leading
    # channels are the task's quantities (the SO-101 cube state: cube_x, cube_y): the world model still
    # reads and predicts every channel, the cost ignores those the goal does not fix (orientation).
    cost_channels: int = 0
    time_budget: float = 0.0  # seconds; 0 = none. At least one iteration always runs.
    batch_size: int = 0  # candidates per predictor call (0 = all at once); bounds peak memory
    seed: int | None = 0
    shift: int = 1  # chunks dropped from the previous plan for a warm start (one chunk is executed)
    # features: distance of the decoded final features to the goal's (every candidate decoded);
    # latent: distance of the predicted z to the goal's residual latent (RLA-WM; see latent_cost).
    cost_space: str = "features"
    # Chunks per world-model call (its actions concatenated); 1 = the chunk the models were
    # trained on. More cuts the calls per candidate, within the model's max_horizon.
    prediction_chunks: int = 1

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise PlanningError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.cost not in COSTS:
            raise PlanningError(f"cost must be one of {COSTS}, got {self.cost!r}")
        if self.cost_space not in COST_SPACES:
            raise PlanningError(f"cost_space must be one of {COST_SPACES}, got {self.cost_space!r}")
        if self.cost_space == "latent" and self.intermediate_weight > 0:
            raise PlanningError(
                "intermediate_weight needs cost_space 'features': the latent cost scores the plan's end"
            )
        if self.cost_space == "latent" and self.cost_channels > 0:
            raise PlanningError("cost_channels needs cost_space 'features': latent tokens have no named channels")
        for name in ("horizon", "chunk_length", "num_samples", "iterations", "prediction_chunks"):
            if getattr(self, name) < 1:
                raise PlanningError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.elites < 1:
            raise PlanningError(f"elites must be >= 1, got {self.elites}")
        if len(self.action_low) != len(self.action_high) or not self.action_low:
            raise PlanningError(f"action_low {self.action_low} and action_high {self.action_high} differ in length")
        if not all(
            math.isfinite(lo) and math.isfinite(hi) and lo < hi for lo, hi in zip(self.action_low, self.action_high)
        ):
            raise PlanningError(f"action bounds must be finite with low < high: {self.action_low}, {self.action_high}")
        if self.max_delta is not None and not (math.isfinite(self.max_delta) and self.max_delta > 0):
            raise PlanningError(f"max_delta must be positive or None, got {self.max_delta}")
        checks = {
            "temperature": self.temperature > 0,
            "init_std": self.init_std > 0,
            "min_std": self.min_std >= 0,
            "momentum": 0 <= self.momentum < 1,
            "intermediate_weight": self.intermediate_weight >= 0,
            "cost_channels": self.cost_channels >= 0,
            "time_budget": self.time_budget >= 0 and math.isfinite(self.time_budget),
            "batch_size": self.batch_size >= 0,
            "shift": self.shift >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise PlanningError(f"{name} out of range: {getattr(self, name)}")

    @property
    def action_dim(self) -> int:
        return len(self.action_low)

    @property
    def steps(self) -> int:
        return self.horizon * self.chunk_length


@dataclass(frozen=True)
class IterationStats:
    iteration: int  # 1-based
    best_cost: float  # lowest cost in this iteration's population
    mean_cost: float  # mean finite cost of the population
    std: float  # mean sampling std after the update, in action units
    elapsed: float  # seconds since planning started


@dataclass
class PlanResult:
    actions: torch.Tensor  # (horizon, chunk_length, action_dim), CPU float32
    cost: float  # predicted cost of `actions`
    stats: list[IterationStats] = field(default_factory=list)
    stopped: str = "iterations"  # "iterations", "time_budget" or "cancelled"
    elapsed: float = 0.0
    # `cost` is in the config's cost_space; this is the feature-space cost of `actions` (with
    # cost_space latent: one rollout of the returned plan, decoded; None if not computed).
    feature_cost: float | None = None

    @property
    def first_chunk(self) -> torch.Tensor:
        return self.actions[0]


# Called after every iteration; returning True stops planning (cancel / feedback hook).
IterationCallback = Callable[[IterationStats], "bool | None"]


def feature_distance(predicted: torch.Tensor, goal: torch.Tensor, kind: str = "l2", channels: int = 0) -> torch.Tensor:
    """(B, N, C) predictions vs (1 or B, N, C) goal -> (B,) distance averaged over patch tokens;
    channels > 0: over the first `channels` channels only."""
    if channels > 0:
        if channels > predicted.shape[-1]:
            raise PlanningError(f"cost_channels {channels} exceeds the features' {predicted.shape[-1]} channels")
        predicted, goal = predicted[..., :channels], goal[..., :channels]
    if kind == "l2":
        return (predicted - goal).pow(2).mean(dim=(1, 2))
    if kind == "l1":
        return (predicted - goal).abs().mean(dim=(1, 2))
    if kind == "cosine":
        return 1 - F.cosine_similarity(predicted, goal.expand_as(predicted), dim=-1).mean(dim=1)
    raise PlanningError(f"cost must be one of {COSTS}, got {kind!r}")


def prediction_segments(chunks: int, per_prediction: int = 1) -> list[tuple[int, int]]:
    """[begin, end) chunk ranges predicted by one world-model call each, in order."""
    return [(begin, min(begin + per_prediction, chunks)) for begin in range(0, chunks, per_prediction)]


def segment_actions(part: torch.Tensor, begin: int, end: int) -> torch.Tensor:
    """The actions of chunks [begin, end) of (B, M, h, A) candidates as one (B, (end - begin) h, A) sequence."""
    return part[:, begin:end].reshape(part.shape[0], -1, part.shape[-1])


def predict_batch(predictor: Predictor, features: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """One prediction for B candidates from (1 or B, N, C) features; a SharedPredictor reads a
    single map once instead of B copies."""
    if isinstance(predictor, SharedPredictor):
        return predictor.predict_shared(features, actions)
    return predictor.predict(features.expand(actions.shape[0], -1, -1), actions)


def finite_or_inf(costs: list[torch.Tensor]) -> torch.Tensor:
    result = torch.cat(costs).cpu()
    return torch.where(torch.isfinite(result), result, torch.full_like(result, math.inf))


@torch.no_grad()
def rollout_costs(
    predictor: Predictor,
    current: torch.Tensor,
    goal: torch.Tensor,
    action_chunks: torch.Tensor,
    cost: str = "l2",
    intermediate_weight: float = 0.0,
    batch_size: int = 0,
    prediction_chunks: int = 1,
    channels: int = 0,
) -> torch.Tensor:
    """Cost of each of B candidate plans (B, M, h, A) from one observation (1, N, C) -> (B,).

    Chunks are rolled out autoregressively on the predicted features, as `prediction.rollout`
    does, `prediction_chunks` chunks per prediction, but only distances are kept: (B, M, N, C)
    predictions do not fit in memory for a planning population at paper scale. Intermediate
    distances are taken after every prediction but the last. Non-finite costs come back as +inf.
    """
    if action_chunks.ndim != 4:
        raise PlanningError(f"action_chunks must be (B, M, h, A), got {tuple(action_chunks.shape)}")
    count, chunks = action_chunks.shape[:2]
    step = batch_size or count
    action_chunks = action_chunks.to(current.device, current.dtype)
    segments = prediction_segments(chunks, prediction_chunks)
    costs = []
    for begin in range(0, count, step):
        part = action_chunks[begin : begin + step]
        features = current  # one map for the whole batch until the first prediction
        intermediate = torch.zeros(part.shape[0], device=current.device, dtype=torch.float32)
        for index, (first, last) in enumerate(segments):
            features = predict_batch(predictor, features, segment_actions(part, first, last))
            if index < len(segments) - 1 and intermediate_weight > 0:
                intermediate += feature_distance(features, goal, cost, channels).float()
        total = feature_distance(features, goal, cost, channels).float()
        if len(segments) > 1 and intermediate_weight > 0:
            total = total + intermediate_weight * intermediate / (len(segments) - 1)
        costs.append(total)
    return finite_or_inf(costs)


@torch.no_grad()
def predict_plan_end(
    predictor: Predictor, current: torch.Tensor, actions: torch.Tensor, prediction_chunks: int = 1
) -> torch.Tensor:
    """The (N, C) features one plan's actions (M, h, A) are predicted to reach from `current` (N, C):
    one rollout of that plan alone, `prediction_chunks` chunks per prediction as `rollout_costs`
    scores it (a picture of where the chosen plan leads; no cost mode keeps these features)."""
    if actions.ndim != 3:
        raise PlanningError(f"actions must be (M, h, A), got {tuple(actions.shape)}")
    current = _check_features(current, "current features")
    chunks = actions[None].to(current.device, current.dtype)
    features = current
    for first, last in prediction_segments(chunks.shape[1], prediction_chunks):
        features = predict_batch(predictor, features, segment_actions(chunks, first, last))
    return features[0]


def project_actions(
    actions: torch.Tensor,
    low: torch.Tensor,
    high: torch.Tensor,
    start: torch.Tensor | None = None,
    max_delta: float | None = None,
) -> torch.Tensor:
    """Clamp (B, T, A) action sequences into [low, high] and, with max_delta, into steps of at
    most max_delta from the previous target (the first step from `start`).

    Bounds win over the step limit when both cannot hold (a start outside the bounds).
    """
    if max_delta is None:
        return torch.maximum(torch.minimum(actions, high), low)
    out = torch.empty_like(actions)
    previous = start.expand(actions.shape[0], -1) if start is not None else None
    for step in range(actions.shape[1]):
        target = actions[:, step]
        if previous is not None:
            target = torch.maximum(torch.minimum(target, previous + max_delta), previous - max_delta)
        target = torch.maximum(torch.minimum(target, high), low)
        out[:, step] = target
        previous = target
    return out


def shift_plan(plan: torch.Tensor, chunks: int = 1, horizon: int | None = None) -> torch.Tensor:
    """Warm start for the next replan: drop the `chunks` executed chunks of a (H, h, A) plan and
    pad the end by holding the last target (repeating the last chunk would jump back)."""
    if plan.ndim != 3:
        raise PlanningError(f"plan must be (H, h, A), got {tuple(plan.shape)}")
    horizon = plan.shape[0] if horizon is None else horizon
    kept = plan[chunks:]
    last = plan[-1, -1]
    missing = horizon - kept.shape[0]
    if missing > 0:
        kept = torch.cat([kept, last.expand(missing, plan.shape[1], -1)])
    return kept[:horizon].clone()


def _check_features(tensor: torch.Tensor, name: str) -> torch.Tensor:
    if tensor.ndim == 2:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 3 or tensor.shape[0] != 1:
        raise PlanningError(f"{name} must be (N, C) or (1, N, C), got {tuple(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        raise PlanningError(f"{name} contains NaN or inf")
    return tensor


def _as_vector(value: torch.Tensor | Sequence[float] | None, dim: int, name: str) -> torch.Tensor | None:
    if value is None:
        return None
    vector = torch.as_tensor(value, dtype=torch.float32).flatten().cpu()
    if vector.shape != (dim,) or not torch.isfinite(vector).all():
        raise PlanningError(f"{name} must be {dim} finite numbers, got {value}")
    return vector


def _check_proposals(proposals: torch.Tensor | None, config: PlannerConfig) -> torch.Tensor | None:
    """Outside proposals as (P, steps, A) float32 on the CPU; PlanningError when they do not fit."""
    if proposals is None:
        return None
    expected = (config.steps, config.action_dim)
    if proposals.ndim != 3 or tuple(proposals.shape[1:]) != expected:
        raise PlanningError(f"proposals must be (P, {expected[0]}, {expected[1]}), got {tuple(proposals.shape)}")
    if len(proposals) > config.num_samples:
        raise PlanningError(f"{len(proposals)} proposals do not fit in num_samples {config.num_samples}")
    if not torch.isfinite(proposals).all():
        raise PlanningError("proposals contain NaN or inf")
    return proposals.detach().float().cpu()


def plan(
    predictor: Predictor,
    current: torch.Tensor,
    goal: torch.Tensor,
    config: PlannerConfig,
    start_action: torch.Tensor | Sequence[float] | None = None,
    warm_start: torch.Tensor | None = None,
    callback: IterationCallback | None = None,
    clock: Callable[[], float] = time.perf_counter,
    proposals: torch.Tensor | None = None,
) -> PlanResult:
    """Optimise an action plan that drives `current` features (N, C) to `goal` features (N, C).

    start_action: the measured robot state (A,); the first target stays within max_delta of
    it, and with no warm start the search starts from holding it. warm_start: a previous plan
    (H', h, A), e.g. `shift_plan(previous)`; it is padded/truncated to the horizon. clock: the
    seconds the time budget and the stats are measured in. proposals: (P, H * h, A) candidate
    plans from elsewhere (a policy's sampled chunks, `policy_proposals`), scored in the first
    iteration in place of P of its samples (at most num_samples; the mean does not compete then),
    so the search starts from them as TD-MPC's planner starts from its policy's samples.
    """
    started = clock()
    current = _check_features(current, "current features")
    goal = _check_features(goal, "goal features").to(current.device, current.dtype)
    if goal.shape != current.shape:
        raise PlanningError(f"goal features {tuple(goal.shape)} do not match current {tuple(current.shape)}")
    dim = config.action_dim
    low = torch.tensor(config.action_low, dtype=torch.float32)
    high = torch.tensor(config.action_high, dtype=torch.float32)
    start = _as_vector(start_action, dim, "start_action")
    steps, span = config.steps, high - low
    generator = torch.Generator().manual_seed(config.seed) if config.seed is not None else None
    if config.seed is not None and isinstance(predictor, Reseedable):
        predictor.reseed(config.seed)  # RLA-WM's flow noise: the same inputs give the same plan
    from rla_wm.control.latent_cost import candidate_costs  # imports this module

    score = candidate_costs(predictor, current, goal, config)  # the goal's latent: once per replan

    if warm_start is not None:
        if warm_start.ndim != 3 or tuple(warm_start.shape[1:]) != (config.chunk_length, dim):
            raise PlanningError(f"warm_start must be (H, {config.chunk_length}, {dim}), got {tuple(warm_start.shape)}")
        mean = shift_plan(warm_start.float().cpu(), 0, config.horizon).reshape(steps, dim)
        if not torch.isfinite(mean).all():
            raise PlanningError("warm_start contains NaN or inf")
    elif start is not None:
        mean = start.expand(steps, dim).clone()
    else:
        mean = ((low + high) / 2).expand(steps, dim).clone()
    mean = project_actions(mean[None], low, high)[0]
    proposals = _check_proposals(proposals, config)
    std = (config.init_std * span).expand(steps, dim).clone()
    min_std = config.min_std * span

    stats: list[IterationStats] = []
    best_actions, best_cost = mean, math.inf
    stopped = "iterations"
    for iteration in range(1, config.iterations + 1):
        iteration_started = clock()
        noise = torch.randn((config.num_samples, steps, dim), generator=generator)
        candidates = mean + std * noise
        if iteration == 1 and proposals is not None:
            # The proposals take the mean's place too: a warm start is the plan made from an older
            # observation, and the world model rated it (and holding still) above the policy's fresh
            # chunks often enough that a planner choosing among them pushed 1 of 5 tuning seeds home,
            # against 4 of 5 without it (in process, RLA-WM on the keypoints).
            candidates[: len(proposals)] = proposals
        else:
            candidates[0] = mean  # the current mean always competes
        candidates = project_actions(candidates, low, high)
        # Costs come from the feasible projections, the refit uses the candidates: fitting to the
        # (already clamped) projections would shrink the std every iteration and stall the
        # search at max_delta per step.
        samples = project_actions(candidates, low, high, start, config.max_delta)
        costs = score(samples.view(config.num_samples, config.horizon, config.chunk_length, dim))
        finite = torch.isfinite(costs)
        if not finite.any():
            raise PlanningError("every candidate's predicted cost is NaN/inf: the world model output is not finite")
        index = int(torch.argmin(costs))
        best_actions, best_cost = samples[index], float(costs[index])
        if config.method == "cem":
            order = torch.argsort(costs)[: min(config.elites, config.num_samples)]
            order = order[torch.isfinite(costs[order])]
            elites = candidates[order]
            fitted_mean = elites.mean(dim=0)
            fitted_std = elites.std(dim=0, unbiased=False) if len(order) > 1 else std
        else:
            finite_costs = costs[finite]
            scale = float(finite_costs.std(unbiased=False)) if finite_costs.numel() > 1 else 0.0
            scale = scale if scale > 1e-12 else 1.0  # all costs equal: uniform weights
            weights = torch.softmax(-(costs - best_cost) / (config.temperature * scale), dim=0)
            weights = torch.where(finite, weights, torch.zeros_like(weights))
            weights = weights / weights.sum()
            fitted_mean = torch.einsum("b,bta->ta", weights, candidates)
            fitted_std = torch.einsum("b,bta->ta", weights, (candidates - fitted_mean).pow(2)).sqrt()
        mean = config.momentum * mean + (1 - config.momentum) * fitted_mean
        std = torch.maximum(fitted_std, min_std)
        now = clock()
        record = IterationStats(
            iteration=iteration,
            best_cost=best_cost,
            mean_cost=float(costs[finite].mean()),
            std=float(std.mean()),
            elapsed=now - started,
        )
        stats.append(record)
        if callback is not None and callback(record):
            stopped = "cancelled"
            break
        if config.time_budget > 0 and iteration < config.iterations:
            # Stop when the next iteration (about as long as this one) would overrun the budget.
            if now - started + (now - iteration_started) > config.time_budget:
                stopped = "time_budget"
                break
    actions = best_actions.reshape(config.horizon, config.chunk_length, dim).clone()
    if not torch.isfinite(actions).all() or not math.isfinite(best_cost):
        raise PlanningError("planner produced a non-finite plan")
    feature_cost = best_cost
    if config.cost_space != "features":  # decode the chosen plan only, for a feature-space figure
        chunks = actions[None].to(current.device, current.dtype)
        feature_cost = float(
            rollout_costs(predictor, current, goal, chunks, config.cost, 0.0, 0, config.prediction_chunks)
        )
    return PlanResult(
        actions=actions,
        cost=best_cost,
        stats=stats,
        stopped=stopped,
        elapsed=clock() - started,
        feature_cost=feature_cost,
    )


class Planner:
    """A predictor plus default settings; per-call overrides (e.g. from an action goal) by keyword."""

    def __init__(self, predictor: Predictor, config: PlannerConfig) -> None:
        self.predictor = predictor
        self.config = config

    def settings(self, **overrides) -> PlannerConfig:
        """The default config with overrides applied; None values keep the default."""
        values = {key: value for key, value in overrides.items() if value is not None}
        return replace(self.config, **values) if values else self.config

    def plan(
        self,
        current: torch.Tensor,
        goal: torch.Tensor,
        start_action: torch.Tensor | Sequence[float] | None = None,
        warm_start: torch.Tensor | None = None,
        callback: IterationCallback | None = None,
        config: PlannerConfig | None = None,
        proposals: torch.Tensor | None = None,
    ) -> PlanResult:
        return plan(
            self.predictor,
            current,
            goal,
            config or self.config,
            start_action,
            warm_start,
            callback,
            proposals=proposals,
        )


@dataclass
class MPCStep:
    chunk: torch.Tensor  # (chunk_length, action_dim): the actions to execute now
    result: PlanResult


class MPCController:
    """Receding horizon: replan from the newest observation, execute the first chunk, warm-start
    the next replan with the rest of the plan."""

    def __init__(self, planner: Planner, config: PlannerConfig | None = None) -> None:
        self.planner = planner
        self.config = config or planner.config
        self.goal: torch.Tensor | None = None
        self.previous: torch.Tensor | None = None

    def set_goal(self, goal: torch.Tensor, warm_start: torch.Tensor | None = None) -> bool:
        """New goal features (N, C); a plan made for it (e.g. by a one-shot plan) may seed the warm start.

        The same goal again (a latched goal image is republished) keeps the current warm start;
        returns whether the goal changed.
        """
        goal = _check_features(goal, "goal features")[0]
        if warm_start is None and self.goal is not None and torch.equal(goal.to(self.goal), self.goal):
            return False
        self.goal = goal.clone()
        self.previous = None if warm_start is None else warm_start.detach().float().cpu().clone()
        return True

    def clear_goal(self) -> None:
        self.goal = None
        self.previous = None

    def step(
        self,
        current: torch.Tensor,
        start_action: torch.Tensor | Sequence[float] | None = None,
        callback: IterationCallback | None = None,
        proposals: torch.Tensor | None = None,
    ) -> MPCStep:
        if self.goal is None:
            raise PlanningError("no goal set")
        warm = None
        if self.previous is not None and self.previous.shape[1:] == (self.config.chunk_length, self.config.action_dim):
            warm = shift_plan(self.previous, self.config.shift, self.config.horizon)
        result = self.planner.plan(current, self.goal, start_action, warm, callback, self.config, proposals)
        self.previous = result.actions
        return MPCStep(chunk=result.first_chunk.clone(), result=result)


PREDICTOR_KINDS = ("rla-wm", "regression")


@dataclass
class LoadedPredictor:
    """A world model ready for planning, with what a caller must check its inputs against."""

    predictor: Predictor
    encoder_id: str  # feature space the model was trained on
    num_tokens: int
    token_dim: int
    action_dim: int
    max_horizon: int  # longest chunk one prediction takes
    action_low: tuple[float, ...]  # the action range of the training data
    action_high: tuple[float, ...]


def load_predictor(
    kind: str,
    rla_checkpoint: str = "",
    wm_checkpoint: str = "",
    regression_checkpoint: str = "",
    euler_steps: int = 10,
    seed: int | None = 0,
    device: str = "cpu",
) -> LoadedPredictor:
    """Load "rla-wm" (RLA autoencoder + world model checkpoints) or "regression" for planning.

    Raises CheckpointError for a missing or mismatched checkpoint and PlanningError when the
    autoencoder and world model do not belong together.
    """
    from rla_wm.models.prediction import RegressionPredictor, RLAWMPredictor
    from rla_wm.models.regression import RegressionConfig, RegressionModel
    from rla_wm.models.rla import RLAAutoencoder
    from rla_wm.models.world_model import RLAWorldModel, WorldModelConfig

    if kind == "rla-wm":
        if not rla_checkpoint or not wm_checkpoint:
            raise PlanningError("world model 'rla-wm' needs both an RLA autoencoder and a world-model checkpoint")
        autoencoder, _ = RLAAutoencoder.load(rla_checkpoint)
        world_model, _ = RLAWorldModel.load(wm_checkpoint)
        a, w = autoencoder.config, world_model.config
        if (a.latent_tokens, a.latent_dim) != (w.latent_tokens, w.latent_dim):
            raise PlanningError(
                f"world model predicts {w.latent_tokens}x{w.latent_dim} latents, the autoencoder "
                f"decodes {a.latent_tokens}x{a.latent_dim}: they were not trained together"
            )
        if (a.num_tokens, a.token_dim, a.encoder_id) != (w.num_tokens, w.token_dim, w.encoder_id):
            raise PlanningError(
                f"autoencoder features {a.encoder_id} {a.num_tokens}x{a.token_dim} differ from the "
                f"world model's {w.encoder_id} {w.num_tokens}x{w.token_dim}"
            )
        autoencoder.to(device)
        world_model.to(device)
        predictor: Predictor = RLAWMPredictor(world_model, autoencoder, steps=euler_steps, seed=seed)
        config: WorldModelConfig | RegressionConfig = w
    elif kind == "regression":
        if not regression_checkpoint:
            raise PlanningError("world model 'regression' needs a regression checkpoint")
        model, _ = RegressionModel.load(regression_checkpoint)
        predictor = RegressionPredictor(model.to(device))
        config = model.config
    else:
        raise PlanningError(f"world model must be one of {PREDICTOR_KINDS}, got {kind!r}")
    return LoadedPredictor(
        predictor=predictor,
        encoder_id=config.encoder_id,
        num_tokens=config.num_tokens,
        token_dim=config.token_dim,
        action_dim=config.action_dim,
        max_horizon=config.max_horizon,
        action_low=tuple(config.action_low),
        action_high=tuple(config.action_high),
    )
