"""The world-model planner's work between messages, without ROS.

`PlannerSession` holds what a planner node knows (the newest feature map, whether the world model
could take it, the newest joint state) and makes the plans:

- an action goal: one goal at a time, planned from the newest usable observation; with
  `execute`, only from a fresh joint state;
- MPC: a replan toward the current goal from each new observation, never twice from the same
  one, skipped while an action goal holds the model;
- the bookkeeping the node reports (plans made, their time, delay and cost, the last error).

Input the planner must not act on is a `Refusal` with a short fixed reason (the node counts it
under that reason) and a detail. The observation is whatever the caller passes in (a FeatureMap
message in the node); the session only hands it back with the plan made from it, so a chunk can
be stamped with its observation.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import torch

from rla_wm.control.freshness import LatestSample
from rla_wm.control.planning import (
    IterationCallback,
    MPCController,
    Planner,
    PlannerConfig,
    PlanningError,
    PlanResult,
    predict_plan_end,
)
from rla_wm.control.policy_proposals import PolicyProposals

Observation = TypeVar("Observation")

# Largest per-goal overrides accepted from an action client (also the node parameters' ranges).
MAX_HORIZON, MAX_SAMPLES, MAX_ITERATIONS = 100, 100_000, 100_000


class ObservationError(ValueError):
    """No usable observation: missing, stale, refused when it came, or malformed."""


class Refusal(Exception):
    """Input the planner does not act on: `reason` is a short fixed key (e.g. "no_fresh_state"),
    `detail` says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def goal_settings(
    planner: Planner, horizon: int, num_samples: int, iterations: int, time_budget: float
) -> PlannerConfig:
    """Settings of one action goal: 0 keeps the planner's default for every field.

    PlanningError for a value above the MAX_* limits, a negative or non-finite budget, or an
    invalid result (PlannerConfig's own checks).
    """
    for name, value, limit in (
        ("horizon", horizon, MAX_HORIZON),
        ("num_samples", num_samples, MAX_SAMPLES),
        ("iterations", iterations, MAX_ITERATIONS),
    ):
        if value > limit:
            raise PlanningError(f"{name} {value} exceeds {limit}")
    if not math.isfinite(time_budget) or time_budget < 0:
        raise PlanningError(f"time_budget must be >= 0, got {time_budget}")
    return planner.settings(
        horizon=horizon or None,
        num_samples=num_samples or None,
        iterations=iterations or None,
        time_budget=float(time_budget) or None,
    )


@dataclass(frozen=True)
class ChunkTiming:
    """When the points of a plan are due, in seconds after the stamp of its observation."""

    point_period: float  # seconds between actions (the training data's control period)
    min_lead_time: float  # no point falls due sooner than this after publishing

    def plan_times(self, points: int) -> np.ndarray:
        return self.point_period * np.arange(1, points + 1)

    def late_start(self, points: int, stamp: float, now: float) -> tuple[float, np.ndarray]:
        """(delay, times) for a chunk published at `now` for the observation at `stamp` (seconds).

        A plan starts at the state measured at `stamp` and its first target is one step from it.
        When planning took longer than that step, dropping the points already due would leave
        later targets too far for the time left (the safety gate rightly refuses them); so a late
        plan starts late instead: its points keep their spacing, shifted by the delay.
        """
        delay = max(0.0, now + self.min_lead_time - stamp)
        return delay, delay + self.plan_times(points)


@dataclass(frozen=True)
class GoalPlan(Generic[Observation]):
    observation: Observation  # what the plan was made from
    plan: PlanResult
    start: torch.Tensor  # (N, C): the observation's features, where the plan starts


@dataclass(frozen=True)
class Replan(Generic[Observation]):
    observation: Observation
    chunk: np.ndarray  # (published_chunks x chunk_length, action_dim): the actions to execute now
    cost: float  # the plan's predicted cost
    start: torch.Tensor  # (N, C): the observation's features, where the plan starts
    actions: torch.Tensor  # (horizon, chunk_length, action_dim): the whole plan


@dataclass(frozen=True)
class _Features(Generic[Observation]):
    received: float  # steady clock
    observation: Observation
    tokens: np.ndarray | None  # None when the map was refused
    refusal: str


class PlannerSession(Generic[Observation]):
    def __init__(
        self,
        planner: Planner,
        mpc: MPCController,
        features_timeout: float,
        state_timeout: float,
        device: torch.device | str = "cpu",
        clock: Callable[[], float] = time.monotonic,
        proposals: PolicyProposals | None = None,
        published_chunks: int = 1,
    ) -> None:
        if published_chunks < 1:
            raise PlanningError(f"published_chunks must be >= 1, got {published_chunks}")
        self.planner = planner
        # Chunks of each plan sent to the robot: more than the first keeps it moving when the next plan is late.
        self.published_chunks = published_chunks
        self.proposals = proposals  # a policy's sampled chunks, the first candidates of every plan
        self.mpc = mpc
        self.features_timeout = features_timeout
        self.device = device
        self.clock = clock
        self.model_lock = threading.Lock()  # one planning run at a time (action goal or MPC)
        self._goal_lock = threading.Lock()
        self._goal_active = False
        self._features: _Features[Observation] | None = None
        self._state: LatestSample[np.ndarray] = LatestSample(state_timeout, clock)
        self._mpc_acted_on: Observation | None = None
        self.plans = 0
        self.last_plan_seconds = 0.0
        self.last_plan_delay = 0.0  # seconds a published plan started late (planning time)
        self.last_cost = math.nan
        self.last_error = ""

    # -- inputs -------------------------------------------------------------------------------------
    def observe_features(self, observation: Observation, tokens: np.ndarray | None, refusal: str = "") -> None:
        """The newest feature map with its (N, C) tokens, or with None and why it was refused.

        A refused map is still the newest observation: nothing is planned from an older one in
        its place.
        """
        self._features = _Features(self.clock(), observation, tokens, refusal)

    def observe_state(self, position: np.ndarray) -> None:
        self._state.update(position)

    def fresh_state(self) -> np.ndarray | None:
        return self._state.fresh()

    def observation(self) -> tuple[Observation, torch.Tensor]:
        """The newest feature map and its tokens as an (N, C) tensor; ObservationError when unusable."""
        latest = self._features
        if latest is None:
            raise ObservationError("no feature map received yet")
        if latest.tokens is None:
            raise ObservationError(f"the newest feature map was refused: {latest.refusal}")
        age = self.clock() - latest.received
        if age > self.features_timeout:
            raise ObservationError(f"newest feature map is {age:.1f} s old")
        return latest.observation, torch.from_numpy(latest.tokens).to(self.device)

    # -- action goals -------------------------------------------------------------------------------
    def begin_goal(self) -> bool:
        """Claim the goal slot; False while another goal is being planned (it is not queued)."""
        with self._goal_lock:
            if self._goal_active:
                return False
            self._goal_active = True
            return True

    def end_goal(self) -> None:
        with self._goal_lock:
            self._goal_active = False

    def goal_settings(self, horizon: int, num_samples: int, iterations: int, time_budget: float) -> PlannerConfig:
        """An action goal's settings (0 keeps the default); Refusal for values out of range."""
        try:
            return goal_settings(self.planner, horizon, num_samples, iterations, time_budget)
        except PlanningError as err:
            raise Refusal("bad_goal", str(err)) from err

    def plan_goal(
        self,
        goal: torch.Tensor,
        settings: PlannerConfig,
        execute: bool,
        callback: IterationCallback | None = None,
    ) -> GoalPlan[Observation]:
        """Plan toward goal features (N, C) from the newest observation (and the fresh joint state
        as the start, when there is one); Refusal when there is nothing to plan from or planning fails.

        `callback` gets every iteration's stats and stops planning by returning True (a cancel).
        """
        try:
            observation, current = self.observation()
        except ObservationError as err:
            raise Refusal("no_observation", str(err)) from err
        state = self.fresh_state()
        if execute and state is None:
            raise Refusal("no_fresh_state", "execute needs a fresh joint state: none received within state_timeout")
        with self.model_lock:
            try:
                start = None if state is None else torch.from_numpy(state)
                proposals = self.propose(current, start, settings)
                plan = self.planner.plan(
                    current, goal, start_action=start, callback=callback, config=settings, proposals=proposals
                )
            except (PlanningError, ValueError, RuntimeError) as err:  # the models raise ValueError on bad input
                raise Refusal("planning_failed", f"planning failed: {err}") from err
        self.record(plan)
        return GoalPlan(observation, plan, current)

    def state_for_execution(self) -> np.ndarray:
        """The fresh joint state a plan about to be executed needs; Refusal when it went stale."""
        state = self.fresh_state()
        if state is None:
            raise Refusal("no_fresh_state", "joint state went stale while planning: not executing")
        return state

    # -- MPC ----------------------------------------------------------------------------------------
    def set_goal(self, goal: torch.Tensor, warm_start: torch.Tensor | None = None) -> bool:
        """The MPC goal; whether it changed (a latched goal image republished keeps the warm start)."""
        with self.model_lock:
            return self.mpc.set_goal(goal, warm_start=warm_start)

    def clear_goal(self) -> None:
        with self.model_lock:
            self.mpc.clear_goal()

    @property
    def has_goal(self) -> bool:
        return self.mpc.goal is not None

    def replan(self) -> Replan[Observation] | None:
        """One MPC replan from the newest observation; None when there is nothing new to do (no
        goal, no new usable map, or an action goal is planning: the next call retries).

        Refusal (also kept as `last_error`) when the newest map is unusable or the state is stale.
        """
        latest = self._features
        if self.mpc.goal is None or latest is None or latest.observation is self._mpc_acted_on:
            return None  # never plan twice from one observation
        if latest.tokens is None:
            return None  # a refused map was counted when it came
        if not self.model_lock.acquire(blocking=False):
            return None
        try:
            if self.mpc.goal is None:
                return None
            try:
                observation, current = self.observation()
            except ObservationError as err:
                raise Refusal("no_observation", f"MPC: not replanning: {err}") from err
            state = self.fresh_state()
            if state is None:
                raise Refusal("no_fresh_state", "MPC: not replanning: no fresh joint state")
            self._mpc_acted_on = observation
            try:
                start = torch.from_numpy(state)
                step = self.mpc.step(
                    current, start_action=start, proposals=self.propose(current, start, self.mpc.config)
                )
            except (PlanningError, ValueError, RuntimeError) as err:
                raise Refusal("planning_failed", f"MPC: not replanning: {err}") from err
        except Refusal as err:
            self.last_error = err.detail
            raise
        finally:
            self.model_lock.release()
        self.record(step.result)
        chunk = self.published(step.result.actions).numpy()
        return Replan(observation, chunk, float(step.result.cost), current, step.result.actions)

    def published(self, actions: torch.Tensor) -> torch.Tensor:
        """The part of a plan (H, h, A) that goes to the robot: its first published_chunks chunks, as (T, A)."""
        return actions[: self.published_chunks].reshape(-1, actions.shape[-1]).clone()

    def propose(self, current: torch.Tensor, state: torch.Tensor | None, config: PlannerConfig) -> torch.Tensor | None:
        """The proposal policy's plans for this observation (None without a policy, or without a
        joint state to start its chunks from); PlanningError when they do not fit `config`."""
        if self.proposals is None or state is None:
            return None
        count = min(self.proposals.count, config.num_samples)  # an action goal may ask for fewer samples
        return self.proposals(current, state, config.steps)[:count]

    def predicted_end(self, start: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The (N, C) features a plan (H, h, A) made from `start` (N, C) is predicted to reach: one
        more rollout of that plan alone (for a picture), waiting for the model if a plan holds it.

        PlanningError (or the model's ValueError / RuntimeError) when it cannot be predicted.
        """
        with self.model_lock:
            return predict_plan_end(self.planner.predictor, start, actions, self.planner.config.prediction_chunks)

    # -- bookkeeping --------------------------------------------------------------------------------
    def record(self, plan: PlanResult) -> None:
        self.plans += 1
        self.last_plan_seconds = plan.elapsed
        self.last_cost = plan.cost

    def summary(self) -> dict[str, object]:
        """What the node reports on /diagnostics."""
        return {
            "world_model": self.planner.predictor.name,
            "plans": self.plans,
            "last_plan_ms": f"{self.last_plan_seconds * 1e3:.1f}",
            "last_plan_delay_ms": f"{self.last_plan_delay * 1e3:.1f}",
            "last_cost": f"{self.last_cost:.6g}",
            "mpc_goal": self.has_goal,
        }
