"""Closed-loop episodes in process (Push-T or the SO-101 arm), without ROS: what a chunk policy does once
timing is taken out.

The ladder (docs/closed_loop.md) runs every policy through the ROS graph, where inference
latency, dropped points, blending and the safety gate all act. Here the simulator waits for the
policy: at every replan the policy sees the current frame, and the first `execute_steps` points
of its chunk are the next targets, one per 10 Hz step. Same policy, same seeds: the gap between
this and the graph's success rate is what the graph costs; a low rate here is the recipe's.

`execute_steps` is Diffusion Policy's action horizon: 1 replans every step (what the policy node
does at the camera rate); larger values commit to a chunk, which keeps a multimodal policy from
switching modes between consecutive chunks.

`GraphTiming` puts the graph's chunk handling back one piece at a time, without ROS and without
wall-clock noise: a fixed observation-to-command latency, the policy node's `ChunkScheduler`
(points due within `min_lead_time` of publishing are dropped, the seam is cross-faded over
`blend_time`) and joint_trajectory_controller's execution (`rla_wm.control.jtc`: a new trajectory
starts from the state at receipt, the previous one runs until then). All zero (the default) is the
simulator waiting for the policy: each chunk's first point is the next step's target.

    rla-wm rollout --policy=builtin:sim-pusht-policy-block-state --episodes=50 --seed=1001 --execute_steps=4
    rla-wm rollout ... --latency=0.06 --min_lead_time=0.05 --blend_time=0.2   # the policy node's defaults

`BlockPoseNoise` puts perception error into the privileged rung: the block pose the policy sees is
the sim's plus Gaussian noise (pixels, degrees), drawn fresh for every observation from a seeded
generator. It answers "how well must the visual rung see the block?" with the same policy and seeds.

    rla-wm rollout --policy=builtin:sim-pusht-policy-block-state ... --block_position_noise=15 --block_angle_noise=20

`robot="so101"` runs the simulated SO-101 push-cube task instead (`So101Sim`, the policy's joint
targets in radians; a cube-state policy reads the sim's cube pose and zone, a visual one the front
camera):

    rla-wm rollout --robot=so101 --policy=builtin:sim-so101-policy-cube-state --episodes=50 --max_steps=150
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from rla_wm.control.chunking import ChunkScheduler
from rla_wm.control.jtc import NANOSECONDS, JtcExecution, Trajectory
from rla_wm.envs.pusht.privileged import BLOCK_STATE_ENCODER_ID, block_state_tokens
from rla_wm.envs.pusht.sim import CONTROL_HZ, PushTSim, SimFrame
from rla_wm.envs.so101.environment_state import CUBE_STATE_ENCODER_ID, cube_state_tokens
from rla_wm.envs.so101.sim import CONTROL_HZ as SO101_CONTROL_HZ
from rla_wm.envs.so101.sim import So101Frame, So101Sim
from rla_wm.models.policy_loading import ChunkPolicy

Frame = SimFrame | So101Frame
TokensOf = Callable[[Frame], torch.Tensor]
CPU = torch.device("cpu")
ROBOTS = ("pusht", "so101")
assert SO101_CONTROL_HZ == CONTROL_HZ  # one step length for both simulators


STEP_NANOSECONDS = NANOSECONDS // CONTROL_HZ


@dataclass(frozen=True)
class GraphTiming:
    """How the graph delivers a chunk (seconds). All zero: the simulator waits for the policy."""

    latency: float = 0.0  # observation stamp -> the command reaching the controller
    min_lead_time: float = 0.0  # the policy node drops points due sooner than this after publishing
    blend_time: float = 0.0  # the policy node's cross-fade into the previous chunk

    def __post_init__(self) -> None:
        if min(self.latency, self.min_lead_time, self.blend_time) < 0:
            raise ValueError(f"graph timing values must be >= 0, got {self}")


@dataclass(frozen=True)
class RolloutEpisode:
    seed: int
    success: bool
    steps: int
    coverage: float
    replans: int
    # Observations the camera estimator refused (no cube / block in view): no chunk was made from them,
    # as the encoder node publishes nothing for such a frame and the controller keeps its trajectory.
    refused: int = 0


@dataclass(frozen=True)
class RolloutSummary:
    episodes: int
    successes: int
    success_rate: float
    # Wilson 95 % interval of the success rate: 50 episodes leave about +-0.13 around 0.5.
    success_interval: tuple[float, float]
    mean_coverage: float
    execute_steps: int
    max_steps: int
    wall_seconds: float
    timing: GraphTiming = GraphTiming()


@dataclass(frozen=True)
class BlockPoseNoise:
    """Gaussian error on the block pose the privileged policy sees: std in pixels and in degrees."""

    position: float = 0.0
    angle_degrees: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if (
            not (np.isfinite(self.position) and np.isfinite(self.angle_degrees))
            or min(self.position, self.angle_degrees) < 0
        ):
            raise ValueError(f"block pose noise must be finite and >= 0, got {self}")

    @property
    def active(self) -> bool:
        return self.position > 0 or self.angle_degrees > 0


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a success rate (sensible at 0 and at `trials` successes too)."""
    if trials <= 0:
        return (0.0, 1.0)
    rate = successes / trials
    denominator = 1 + z * z / trials
    centre = (rate + z * z / (2 * trials)) / denominator
    half = z * np.sqrt(rate * (1 - rate) / trials + z * z / (4 * trials * trials)) / denominator
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))


def tokens_function(
    encoder_id: str,
    device: torch.device,
    dtype: str = "float32",
    block_noise: BlockPoseNoise = BlockPoseNoise(),
    camera_encoder: str = "",
) -> TokensOf:
    """Frame -> (1, N, C) tokens in the feature space `encoder_id` names ("<model>@<resolution>", or the
    block-state encoder's id), the same the policy node receives on its feature topic. `block_noise`
    (block-state encoder only) perturbs the pose before it is tokenised. `camera_encoder` (a model spec,
    e.g. a block-pose estimator for a block-state policy) makes the tokens from the camera image instead;
    it must produce `encoder_id`'s feature space; a keypoint encoder's space is read by the shipped
    encoder of that name unless `camera_encoder` names another folder."""
    from rla_wm.models.keypoint_encoder import ENCODER_ID_PREFIX, shipped_spec

    if encoder_id.startswith(ENCODER_ID_PREFIX) and not camera_encoder:
        camera_encoder = shipped_spec(encoder_id)
    if camera_encoder:
        from rla_wm.models.encoder import EncoderConfig, load_encoder

        if block_noise.active:
            raise ValueError("block pose noise applies to the sim's block pose, not to a camera encoder's")
        camera = load_encoder(EncoderConfig(model=camera_encoder, device=str(device), dtype=dtype))
        if camera.encoder_id != encoder_id:
            raise ValueError(
                f"{camera_encoder!r} produces {camera.encoder_id!r} features, the policy takes {encoder_id!r}"
            )

        def camera_tokens(frame: Frame) -> torch.Tensor:
            return camera(torch.from_numpy(frame.image[None])).float()

        return camera_tokens
    if encoder_id == BLOCK_STATE_ENCODER_ID:
        rng = np.random.default_rng(block_noise.seed)
        scale = np.array([block_noise.position, block_noise.position, np.radians(block_noise.angle_degrees)])

        def block_tokens(frame: Frame) -> torch.Tensor:
            assert isinstance(frame, SimFrame)
            pose = np.asarray(frame.block_pose, dtype=np.float64)
            if block_noise.active:
                pose = pose + rng.normal(size=3) * scale
            return torch.from_numpy(block_state_tokens(pose)).float()[None].to(device)

        return block_tokens
    if block_noise.active:
        raise ValueError(f"block pose noise applies to the block-state encoder only, not {encoder_id!r}")
    if encoder_id == CUBE_STATE_ENCODER_ID:

        def cube_tokens(frame: Frame) -> torch.Tensor:
            assert isinstance(frame, So101Frame)
            return torch.from_numpy(cube_state_tokens(frame.cube_pose, frame.zone)).float()[None].to(device)

        return cube_tokens
    from rla_wm.models.encoder import EncoderConfig, FeatureEncoder

    model, _, resolution = encoder_id.rpartition("@")
    if not model or not resolution.isdigit():
        raise ValueError(f"encoder id {encoder_id!r} is neither a privileged sim state nor '<model>@<resolution>'")
    encoder = FeatureEncoder(EncoderConfig(model=model, resolution=int(resolution), device=str(device), dtype=dtype))

    def tokens(frame: Frame) -> torch.Tensor:
        return encoder(frame.image[None]).float()

    return tokens


def run_episode(
    sim: PushTSim | So101Sim,
    policy: ChunkPolicy,
    tokens_of: TokensOf,
    seed: int,
    execute_steps: int,
    device: torch.device,
    timing: GraphTiming = GraphTiming(),
) -> RolloutEpisode:
    """One episode: replan, execute `execute_steps` steps of the chunk (as `timing` delivers it, or
    until it arrives when its latency is longer), repeat until the sim says done. A frame the camera
    encoder refuses makes no chunk: the running trajectory goes on for one step and the next frame
    is tried."""
    from rla_wm.models.encoder import FeatureEncoderError

    joint_names = sim.joint_names
    if execute_steps < 1:
        raise ValueError(f"execute_steps must be >= 1, got {execute_steps}")
    frame = sim.reset(seed)
    reset = getattr(policy, "reset", None)
    if callable(reset):
        reset()  # the scripted expert's memory of the contact it pushes belongs to one episode
    scheduler = ChunkScheduler(blend_time=timing.blend_time, min_lead_time=timing.min_lead_time)
    latency_ns = round(timing.latency * NANOSECONDS)
    running: JtcExecution | None = None  # what the controller executes now
    replans = refused = 0
    while not frame.done:
        # The observation's stamp on the sim clock (from 1 s: a zero stamp means "on receipt" to JTC).
        observed_ns = NANOSECONDS + frame.step * STEP_NANOSECONDS
        position = np.asarray(frame.position, dtype=np.float64)
        state = torch.as_tensor(position, dtype=torch.float32)[None].to(device)
        receipt_ns = observed_ns + latency_ns
        arriving = None  # None: no new chunk; the controller keeps the old one
        steps = 1  # a refused frame: one step of the running trajectory, then the next frame
        try:
            tokens = tokens_of(frame)
        except FeatureEncoderError:
            refused += 1
        else:
            with torch.no_grad():
                chunk = policy(tokens, state)[0].cpu().numpy().astype(np.float64)
            replans += 1
            # A node makes one chunk at a time: a chunk later than `execute_steps` steps is still
            # received, and the next observation it can use is the first after that.
            steps = max(execute_steps, -(-latency_ns // STEP_NANOSECONDS))
            times_ns = observed_ns + STEP_NANOSECONDS * np.arange(1, len(chunk) + 1)
            scheduled = scheduler.schedule(times_ns / NANOSECONDS, chunk, now=receipt_ns / NANOSECONDS)
            if scheduled is not None:  # None: every point was due too soon
                offsets_ns = np.round(scheduled.times * NANOSECONDS).astype(np.int64) - observed_ns
                arriving = Trajectory.from_arrays(joint_names, scheduled.positions, offsets_ns, stamp_ns=observed_ns)
        for step in range(1, steps + 1):
            now_ns = observed_ns + step * STEP_NANOSECONDS
            if arriving is not None and receipt_ns <= now_ns:
                # JTC starts a new trajectory from the state measured at receipt.
                running = JtcExecution(arriving, joint_names, receipt_ns, np.asarray(frame.position, np.float64))
                arriving = None
            target = frame.position if running is None else running.sample(now_ns)
            frame = sim.step(target)
            if frame.done:
                break
    return RolloutEpisode(seed, bool(frame.success), int(frame.step), float(frame.coverage), replans, refused)


def run_rollouts(
    policy: ChunkPolicy,
    tokens_of: TokensOf,
    seeds: Sequence[int],
    execute_steps: int,
    max_steps: int = 300,
    device: torch.device = CPU,
    progress: bool = True,
    timing: GraphTiming = GraphTiming(),
    robot: str = "pusht",
) -> tuple[RolloutSummary, list[RolloutEpisode]]:
    """Episodes on `seeds` with one simulator of `robot` (ROBOTS); returns the summary and every episode."""
    from tqdm.auto import tqdm

    if robot not in ROBOTS:
        raise ValueError(f"robot must be one of {ROBOTS}, got {robot!r}")
    # Each at the size its sim node publishes by default (sim_robot.yaml, sim_arm.yaml).
    sim = PushTSim(max_steps=max_steps, image_size=96) if robot == "pusht" else So101Sim(max_steps=max_steps)
    started = time.monotonic()
    episodes: list[RolloutEpisode] = []
    try:
        bar = tqdm(seeds, desc="rollouts", unit="episode", disable=not progress)
        for seed in bar:
            episodes.append(run_episode(sim, policy, tokens_of, int(seed), execute_steps, device, timing))
            bar.set_postfix(success=f"{sum(e.success for e in episodes)}/{len(episodes)}")
    finally:
        sim.close()
    successes = sum(e.success for e in episodes)
    summary = RolloutSummary(
        episodes=len(episodes),
        successes=successes,
        success_rate=successes / max(1, len(episodes)),
        success_interval=wilson_interval(successes, len(episodes)),
        mean_coverage=float(np.mean([e.coverage for e in episodes])) if episodes else 0.0,
        execute_steps=execute_steps,
        max_steps=max_steps,
        wall_seconds=time.monotonic() - started,
        timing=timing,
    )
    return summary, episodes


def save_rollouts(out: Path, summary: RolloutSummary, episodes: list[RolloutEpisode], meta: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "rollouts.json"
    payload = {"summary": asdict(summary), "meta": meta, "episodes": [asdict(e) for e in episodes]}
    path.write_text(json.dumps(payload, indent=2))
    return path
