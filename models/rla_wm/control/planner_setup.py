"""The world-model planner's settings, and setting it up from them.

`PlannerSettings.build` loads the world model, checks that it, the encoder of the goal images,
the commanded joints and the optimiser settings belong together, and returns a ready
`PlannerSession`. A mismatch is a PlanningError with the reason, raised before anything is
planned. `mpc_settings` derives the settings of an MPC replan from the defaults.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rla_wm.control.latent_cost import check_prediction_length, latent_predictor
from rla_wm.control.planner_session import MAX_HORIZON, MAX_ITERATIONS, MAX_SAMPLES, ChunkTiming, PlannerSession
from rla_wm.control.planning import (
    LoadedPredictor,
    MPCController,
    Planner,
    PlannerConfig,
    PlanningError,
    load_predictor,
)
from rla_wm.control.policy_proposals import PolicyProposals
from rla_wm.control.settings import setting
from rla_wm.models.checkpoint import CheckpointError
from rla_wm.models.encoder import EncoderConfig
from rla_wm.models.policy_loading import load_policy

# An MPC replan without its own budget gets this share of the replanning period.
MPC_BUDGET_SHARE = 0.9


def check_models_fit(
    loaded: LoadedPredictor,
    encoder_id: str,
    tokens: int,
    channels: int,
    joint_names: Sequence[str],
    chunk_length: int,
) -> None:
    """The world model must read the encoder's feature space, command every joint, and take
    chunks of `chunk_length`; PlanningError otherwise."""
    if (loaded.encoder_id, loaded.num_tokens, loaded.token_dim) != (encoder_id, tokens, channels):
        raise PlanningError(
            f"world model was trained on {loaded.encoder_id!r} "
            f"({loaded.num_tokens}x{loaded.token_dim} tokens), the encoder is "
            f"{encoder_id!r} ({tokens}x{channels}): set model/resolution to match"
        )
    if len(joint_names) != loaded.action_dim:
        raise PlanningError(
            f"joint_names {list(joint_names)} do not match the world model's action_dim {loaded.action_dim}"
        )
    if chunk_length > loaded.max_horizon:
        raise PlanningError(f"chunk_length {chunk_length} exceeds the world model's max_horizon {loaded.max_horizon}")


def check_action_bounds(config: PlannerConfig, loaded: LoadedPredictor) -> str | None:
    """PlanningError if the bounds do not cover every action dimension; a warning (text) when they
    reach beyond the training data's range, where the model's predictions are extrapolation."""
    if config.action_dim != loaded.action_dim:
        raise PlanningError(f"action_low/high need {loaded.action_dim} values")
    beyond = any(
        low < trained_low or high > trained_high
        for low, high, trained_low, trained_high in zip(
            config.action_low, config.action_high, loaded.action_low, loaded.action_high
        )
    )
    if not beyond:
        return None
    return (
        f"action bounds {config.action_low}..{config.action_high} exceed "
        f"the world model's training range {loaded.action_low}..{loaded.action_high}: "
        "its predictions there are extrapolation"
    )


def check_cost_space(config: PlannerConfig, loaded: LoadedPredictor) -> None:
    """PlanningError, before anything is planned, when the world model cannot give the config's
    cost (a latent cost without a latent) or one prediction would get more actions than it takes."""
    check_prediction_length(loaded.predictor, config)
    if config.cost_space == "latent":
        latent_predictor(loaded.predictor)


def mpc_settings(
    planner: Planner, rate: float, horizon: int, num_samples: int, iterations: int, time_budget: float
) -> PlannerConfig:
    """Settings of one MPC replan; horizon 0 keeps the default, time_budget 0 means a share of
    the replanning period (no budget when MPC is off, rate 0)."""
    budget = time_budget or (MPC_BUDGET_SHARE / rate if rate > 0 else 0.0)
    return planner.settings(horizon=horizon or None, num_samples=num_samples, iterations=iterations, time_budget=budget)


@dataclass(frozen=True)
class PlannerSettings:
    """Everything a planner is configured with: the planner node declares one parameter per field."""

    # -- encoder of goal images (the encoder node's model and resolution) and the world model --------
    model: str = setting(
        "builtin:dinov2-tiny-random",
        "Encoder weights for goal images: hub id, local folder, or builtin:<name> (as the encoder node).",
    )
    resolution: int = setting(224, "Encoder input size; a multiple of the patch size.", (14, 2048))
    device: str = setting("cpu", "Torch device, e.g. cpu or cuda:0.")
    dtype: str = setting("float32", "Encoder dtype: float32, float16 or bfloat16.")
    torch_threads: int = setting(0, "CPU threads for torch (0 = torch default).", (0, 256))
    world_model: str = setting("rla-wm", "rla-wm (rla_checkpoint + wm_checkpoint) or regression.")
    rla_checkpoint: str = setting("", "RLA autoencoder checkpoint folder (rla-wm).")
    wm_checkpoint: str = setting("", "RLA-WM world-model checkpoint folder (rla-wm).")
    regression_checkpoint: str = setting("", "Regression baseline checkpoint (regression).")
    euler_steps: int = setting(10, "Euler steps per RLA-WM prediction.", (1, 1000))
    seed: int = setting(0, "Seed of the planner's sampling and of RLA-WM's flow noise.", (0, 2**31 - 1))
    # -- robot interface -------------------------------------------------------------------------------
    joint_names: Sequence[str] = setting(("agent_x", "agent_y"), "Commanded joints, in action order.")
    point_period: float = setting(0.1, "Seconds between actions (the training data's control period).", (0.001, 10.0))
    features_timeout: float = setting(
        1.0, "Do not plan from a feature map received longer ago than this (s).", (0.01, 60.0)
    )
    state_timeout: float = setting(0.5, "Ignore joint states older than this (s).", (0.01, 10.0))
    min_lead_time: float = setting(0.05, "Drop chunk points due sooner than this after publishing (s).", (0.0, 5.0))
    # -- optimiser defaults (PlannerConfig's fields) ---------------------------------------------------
    action_low: Sequence[float] = setting((0.0, 0.0), "Lower action bound per joint.")
    action_high: Sequence[float] = setting((512.0, 512.0), "Upper action bound per joint.")
    max_delta: float = setting(
        40.0,
        "Largest target change per step, and from the measured "
        "state (0 = none); keep it under the gate's velocity limit x point_period.",
        (0.0, 1e9),
    )
    chunk_length: int = setting(5, "Actions per world-model prediction (the training horizon).", (1, 1000))
    method: str = setting("cem", "cem or mppi.")
    horizon: int = setting(5, "Default plan length in chunks.", (1, MAX_HORIZON))
    num_samples: int = setting(300, "Default samples per iteration.", (1, MAX_SAMPLES))
    iterations: int = setting(30, "Default optimiser iterations.", (1, MAX_ITERATIONS))
    elites: int = setting(30, "CEM elites.", (1, MAX_SAMPLES))
    temperature: float = setting(0.5, "MPPI temperature (x cost std).", (1e-6, 1e6))
    init_std: float = setting(0.25, "Initial std as a fraction of the action range.", (1e-6, 10.0))
    cost: str = setting("l2", "l2, l1 or cosine distance over patch tokens.")
    intermediate_weight: float = setting(
        0.0, "Weight of the distances after intermediate chunks (0 = final only).", (0.0, 1e6)
    )
    cost_channels: int = setting(
        0,
        "Compare only the first K feature channels (0 = all): a state space whose leading channels are "
        "the task's (the SO-101 cube state: 2 = the cube's x and y).",
        (0, 1_000_000),
    )
    time_budget: float = setting(0.0, "Default seconds per plan (0 = none).", (0.0, 3600.0))
    batch_size: int = setting(0, "Candidates per predictor call (0 = all).", (0, MAX_SAMPLES))
    cost_space: str = setting(
        "features",
        "features (decode every candidate's final features) or latent (rla-wm: compare the "
        "predicted residual latent with the goal's; decodes only what later predictions read).",
    )
    prediction_chunks: int = setting(
        1,
        "Chunks per world-model call while planning (1 = the training chunk; more needs a model "
        "trained on that many actions, within its max_horizon).",
        (1, MAX_HORIZON),
    )
    # -- policy proposals -------------------------------------------------------------------------------
    proposal_policy: str = setting(
        "",
        "A chunk policy on the same features (checkpoint folder or builtin:<name>) whose sampled chunks join "
        "each plan's first iteration as candidates ('' = random samples only).",
    )
    policy_proposals: int = setting(
        16, "Chunks sampled from proposal_policy per plan (at most the samples per iteration).", (1, MAX_SAMPLES)
    )
    published_chunks: int = setting(
        1,
        "Chunks of each plan sent to the robot (the first ones). More than 1 gives the robot targets to follow "
        "while the next plan is late (a plan that takes longer than a chunk would otherwise arrive with its "
        "points already past).",
        (1, MAX_HORIZON),
    )
    # -- MPC ---------------------------------------------------------------------------------------------
    mpc_rate: float = setting(0.0, "Replanning rate (Hz) toward the current goal; 0 = no MPC.", (0.0, 1000.0))
    mpc_horizon: int = setting(0, "Plan length in chunks when replanning (0 = horizon).", (0, MAX_HORIZON))
    mpc_num_samples: int = setting(64, "Samples per iteration when replanning.", (1, MAX_SAMPLES))
    mpc_iterations: int = setting(3, "Iterations per replan.", (1, MAX_ITERATIONS))
    mpc_time_budget: float = setting(0.0, "Seconds per replan (0 = 0.9 / mpc_rate).", (0.0, 3600.0))

    def encoder_config(self) -> EncoderConfig:
        return EncoderConfig(model=self.model, resolution=self.resolution, device=self.device, dtype=self.dtype)

    def timing(self) -> ChunkTiming:
        return ChunkTiming(self.point_period, self.min_lead_time)

    def optimiser(self) -> PlannerConfig:
        """The default optimiser settings; PlanningError when they are inconsistent."""
        return PlannerConfig(
            method=self.method,
            horizon=self.horizon,
            chunk_length=self.chunk_length,
            num_samples=self.num_samples,
            iterations=self.iterations,
            elites=self.elites,
            temperature=self.temperature,
            action_low=tuple(float(v) for v in self.action_low),
            action_high=tuple(float(v) for v in self.action_high),
            max_delta=self.max_delta or None,
            init_std=self.init_std,
            cost=self.cost,
            intermediate_weight=self.intermediate_weight,
            cost_channels=self.cost_channels,
            time_budget=self.time_budget,
            batch_size=self.batch_size,
            seed=self.seed,
            cost_space=self.cost_space,
            prediction_chunks=self.prediction_chunks,
        )

    def load_world_model(self) -> LoadedPredictor:
        try:
            return load_predictor(
                self.world_model,
                self.rla_checkpoint,
                self.wm_checkpoint,
                self.regression_checkpoint,
                self.euler_steps,
                self.seed,
                self.device,
            )
        except (CheckpointError, PlanningError) as err:
            raise PlanningError(f"cannot load world model {self.world_model!r}: {err}") from err

    def load_proposals(
        self, encoder_id: str, tokens: int, channels: int, action_dim: int, device: torch.device | str
    ) -> PolicyProposals | None:
        """The proposal policy, checked against the planner's features and joints (None without one)."""
        if not self.proposal_policy:
            return None
        try:
            policy = load_policy(self.proposal_policy, self.seed).to(torch.device(device)).eval()
        except CheckpointError as err:
            raise PlanningError(f"cannot load proposal_policy {self.proposal_policy!r}: {err}") from err
        proposals = PolicyProposals(policy, self.policy_proposals, device)
        proposals.check_fits(encoder_id, tokens, channels, action_dim)
        return proposals

    def build(self, encoder_id: str, tokens: int, channels: int, device: torch.device | str = "cpu") -> PlannerBuild:
        """Load the world model, check it against the encoder's feature space (`encoder_id`,
        tokens x channels) and the joints, and make the session; PlanningError on any mismatch."""
        loaded = self.load_world_model()
        check_models_fit(loaded, encoder_id, tokens, channels, self.joint_names, self.chunk_length)
        try:
            defaults = self.optimiser()
            warning = check_action_bounds(defaults, loaded)
            check_cost_space(defaults, loaded)
            if defaults.cost_channels > channels:  # at start-up, not at every plan's first cost
                raise PlanningError(f"cost_channels {defaults.cost_channels} exceeds the features' {channels} channels")
        except PlanningError as err:
            raise PlanningError(f"bad optimiser parameters: {err}") from err
        planner = Planner(loaded.predictor, defaults)
        mpc = mpc_settings(
            planner, self.mpc_rate, self.mpc_horizon, self.mpc_num_samples, self.mpc_iterations, self.mpc_time_budget
        )
        proposals = self.load_proposals(encoder_id, tokens, channels, loaded.action_dim, device)
        # An action goal's plan takes as many proposals as its samples allow (it may ask for few).
        if proposals is not None and self.mpc_rate > 0 and proposals.count > mpc.num_samples:
            raise PlanningError(f"policy_proposals {proposals.count} do not fit in mpc_num_samples {mpc.num_samples}")
        if self.published_chunks > min(defaults.horizon, mpc.horizon):
            raise PlanningError(
                f"published_chunks {self.published_chunks} exceeds the plans' horizon "
                f"({min(defaults.horizon, mpc.horizon)} chunks)"
            )
        session: PlannerSession = PlannerSession(
            planner,
            MPCController(planner, mpc),
            self.features_timeout,
            self.state_timeout,
            device,
            proposals=proposals,
            published_chunks=self.published_chunks,
        )
        summary = (
            f"{loaded.predictor.name} on {encoder_id}; action goals {defaults.method} {defaults.num_samples}x"
            f"{defaults.iterations}, horizon {defaults.horizon}x{defaults.chunk_length}; "
            + (f"MPC {mpc.num_samples}x{mpc.iterations} at {self.mpc_rate:.1f} Hz" if self.mpc_rate > 0 else "MPC off")
            + (f"; {proposals.count} proposals from {self.proposal_policy}" if proposals is not None else "")
        )
        return PlannerBuild(session, [warning] if warning else [], summary)


@dataclass(frozen=True)
class PlannerBuild:
    session: PlannerSession
    warnings: list[str]  # to log: the planner works, but maybe not as meant
    summary: str  # one line for the start-up log
