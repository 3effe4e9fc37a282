"""`rla-wm`: record sim data, cache features, train, evaluate.

    rla-wm record-pusht      --root=data/pusht_random --episodes=40 --steps=100
    rla-wm record-so101      --root=data/so101_expert --episodes=50 --policy=expert --environment_state=true
    rla-wm cache-features    --config_path=models/configs/pusht_small.yaml
    rla-wm train-rla         --config_path=... --out=runs/rla
    rla-wm train-wm          --config_path=... --rla_checkpoint=runs/rla/checkpoint --out=runs/wm
    rla-wm train-regression  --config_path=... --out=runs/regression
    rla-wm evaluate          --config_path=... --rla_checkpoint=runs/rla/checkpoint \\
                             --wm_checkpoint=runs/wm/checkpoint --regression_checkpoint=runs/regression/checkpoint \\
                             --out=runs/eval
    rla-wm train-policy      --config_path=... --rla_checkpoint=runs/rla/checkpoint --out=runs/policy \\
                             [--policy.action_reads_rla=false --policy_training.use_action_free=false]
    rla-wm evaluate-policy   --config_path=... --policy_checkpoints='[runs/policy/checkpoint, runs/bc/checkpoint]' \\
                             --out=runs/policy_eval
    rla-wm collect-frames    --out=runs/frames.npz --episodes=300      (sim frames + logged state)
    rla-wm pretrain-encoder  --frames=runs/frames.npz --out=runs/encoder --steps=5000
    rla-wm probe             --encoder=builtin:NAME [--frames=runs/probe_frames.npz]
    rla-wm pretrain-keypoints --frames=runs/frames.npz --eval_frames=runs/probe_frames.npz --out=runs/keypoints
    rla-wm train-pose-estimator --frames=runs/frames.npz --eval_frames=runs/probe_frames.npz --out=runs/pose
    rla-wm evaluate-pose-estimator --estimator=builtin:sim-pusht-pose-cnn --frames=runs/probe_frames.npz
    rla-wm train-cube-estimator --out=runs/cube_estimator    (SO-101: collects its labelled frames, then trains)
    rla-wm rollout           --policy=runs/policy/checkpoint --episodes=50 --execute_steps=4

Every command takes draccus-style `--field=value` arguments; those that read an experiment
take `--config_path=FILE.yaml` and override any of its fields, e.g. `--train.world_model.steps=300`
(see rla_wm.training.config). `rla-wm COMMAND --help` lists a command's fields.

Several processes: `accelerate launch -m rla_wm.cli train-wm ...` (or
`torchrun --nproc-per-node N -m rla_wm.cli ...`) trains with DDP; batch_size stays the global
batch, split across the processes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rla_wm.envs.pusht.frames import FRAMES_SEED_BASE, StateFrames, collect_state_frames
from rla_wm.training.config import ConfigError, Experiment, parse_config
from rla_wm.training.pretrain_encoder import PretrainConfig
from rla_wm.training.train_cube_estimator import CubeTrainConfig
from rla_wm.training.train_keypoint_encoder import KeypointTrainConfig
from rla_wm.training.train_pose_estimator import PoseTrainConfig


@dataclass(frozen=True, kw_only=True)
class RecordPushT:
    """Record a Push-T LeRobot dataset in process (no ROS): random play or the scripted expert."""

    # Folder of the new dataset.
    root: str
    repo_id: str = "local/pusht_random"
    episodes: int = 20
    steps: int = 100
    seed: int = 0
    # "random" (momentum random walk) or "expert" (the scripted expert's demonstrations).
    policy: str = "random"
    # Store video and state only, no actions.
    action_free: bool = False
    # Also store the block pose as observation.environment_state (the ladder's privileged rung).
    environment_state: bool = False
    # Std (px) of noise added to each executed action, the recorded action kept clean (DART).
    execution_noise: float = 0.0


@dataclass(frozen=True)
class RecordSo101:
    """Record the simulated SO-101 push-cube task in process (no ROS), in LeRobot's SO-101 layout."""

    # Folder of the new dataset.
    root: str
    repo_id: str = "local/so101_sim"
    episodes: int = 20
    steps: int = 150
    seed: int = 0
    # "expert" (the scripted push-cube expert; an episode ends on success) or "play" (joint random walk).
    policy: str = "expert"
    # Store the cube's pose and the zone as observation.environment_state (the cube-state rung).
    environment_state: bool = False
    # Std (rad) of noise added to each executed joint target, the recorded target kept clean (DART).
    execution_noise: float = 0.0
    # Camera images are image_size x image_size.
    image_size: int = 128


@dataclass(frozen=True, kw_only=True)
class TrainRun(Experiment):
    """A training command: the experiment and where the run goes."""

    # Run folder: checkpoint/, metrics.jsonl, loss.png.
    out: str


@dataclass(frozen=True, kw_only=True)
class TrainOnAutoencoderRun(TrainRun):
    """A training command that reads a frozen RLA autoencoder (train-wm, train-policy)."""

    # RLA autoencoder checkpoint folder.
    rla_checkpoint: str


@dataclass(frozen=True, kw_only=True)
class EvaluateRun(Experiment):
    """`rla-wm evaluate`: world models on held-out episodes."""

    rla_checkpoint: str
    wm_checkpoint: str
    regression_checkpoint: str | None = None
    # Frames per chunk (default: the world model's training horizon).
    horizon: int | None = None
    # Report folder.
    out: str


@dataclass(frozen=True, kw_only=True)
class EvaluatePolicyRun(Experiment):
    """`rla-wm evaluate-policy`: policies on held-out labelled episodes."""

    # Policy checkpoint folders, a YAML list: '[runs/policy/checkpoint, runs/bc/checkpoint]'.
    policy_checkpoints: tuple[str, ...]
    # RLA autoencoder (default: the one each policy trained with).
    rla_checkpoint: str | None = None
    # Report folder.
    out: str


def command_record_pusht(config: RecordPushT) -> None:
    from rla_wm.envs.pusht.dataset import ActionSource, record_pusht_dataset
    from rla_wm.envs.pusht.expert import PushTExpert

    sources: dict[str, Callable[[], str | ActionSource]] = {"random": lambda: "random", "expert": PushTExpert}
    if config.policy not in sources:
        raise ConfigError(f"policy must be one of {sorted(sources)}, got {config.policy!r}")
    path = record_pusht_dataset(
        config.root,
        repo_id=config.repo_id,
        episodes=config.episodes,
        steps_per_episode=config.steps,
        seed=config.seed,
        policy=sources[config.policy](),
        with_actions=not config.action_free,
        with_environment_state=config.environment_state,
        execution_noise_px=config.execution_noise,
    )
    print(f"dataset written to {path}")


def command_record_so101(config: RecordSo101) -> None:
    from rla_wm.envs.so101.dataset import POLICIES, record_so101_dataset

    if config.policy not in POLICIES:
        raise ConfigError(f"policy must be one of {list(POLICIES)}, got {config.policy!r}")
    path = record_so101_dataset(
        config.root,
        repo_id=config.repo_id,
        episodes=config.episodes,
        steps_per_episode=config.steps,
        seed=config.seed,
        policy=config.policy,
        image_size=config.image_size,
        with_environment_state=config.environment_state,
        execution_noise=config.execution_noise,
        progress=True,
    )
    print(f"dataset written to {path}")


def command_cache_features(experiment: Experiment) -> None:
    from rla_wm.training.train import open_caches

    for cache in open_caches(experiment, include_action_free=True):
        print(f"{cache.path}: {len(cache.episodes)} episodes, encoder {cache.encoder_id}")


def _report_run(checkpoint: Path, out: Path) -> None:
    print(f"checkpoint: {checkpoint}\nmetrics: {out / 'metrics.jsonl'}\nloss curve: {out / 'loss.png'}")


def command_train_rla(config: TrainRun) -> None:
    from rla_wm.training.train import train_autoencoder

    _report_run(train_autoencoder(config, Path(config.out)), Path(config.out))


def command_train_wm(config: TrainOnAutoencoderRun) -> None:
    from rla_wm.training.train import train_world_model

    _report_run(train_world_model(config, config.rla_checkpoint, Path(config.out)), Path(config.out))


def command_train_regression(config: TrainRun) -> None:
    from rla_wm.training.train import train_regression

    _report_run(train_regression(config, Path(config.out)), Path(config.out))


def command_evaluate(config: EvaluateRun) -> None:
    import draccus

    from rla_wm.evaluation import evaluate as evaluate
    from rla_wm.evaluation.visualize import plot_error_vs_horizon
    from rla_wm.models.prediction import CopyLastPredictor, Predictor, RegressionPredictor, RLAWMPredictor
    from rla_wm.models.regression import RegressionModel
    from rla_wm.models.rla import RLAAutoencoder
    from rla_wm.models.world_model import RLAWorldModel
    from rla_wm.training.train import open_caches, train_split

    settings = config.evaluate
    cache = open_caches(config, include_action_free=False)[0]
    held_out = train_split(config, cache)[1]
    autoencoder, _ = RLAAutoencoder.load(config.rla_checkpoint)
    world_model, wm_meta = RLAWorldModel.load(config.wm_checkpoint)
    horizon = config.horizon or int(wm_meta.get("train", {}).get("horizon", 5))
    predictors: list[Predictor] = [
        CopyLastPredictor(),
        RLAWMPredictor(world_model, autoencoder, steps=settings.euler_steps, seed=settings.seed),
    ]
    if config.regression_checkpoint:
        predictors.append(RegressionPredictor(RegressionModel.load(config.regression_checkpoint)[0]))
    for model in (autoencoder, world_model):
        if model.config.encoder_id != cache.encoder_id:
            raise SystemExit(
                f"{type(model).__name__} was trained on {model.config.encoder_id!r}, the data is {cache.encoder_id!r}"
            )
    windows = evaluate.collect_windows(cache, held_out, horizon, settings.chunks, settings.max_windows, settings.seed)
    results = evaluate.evaluate_predictors(predictors, windows, samples=settings.samples)
    costs = {p.name: evaluate.cost_per_prediction(p, windows) for p in predictors}
    reconstruction = evaluate.reconstruction_errors(autoencoder, windows)
    out = Path(config.out)
    table = evaluate.save_report(
        out,
        results,
        costs,
        reconstruction,
        {
            "config": draccus.encode(config),
            "held_out_episodes": held_out,
            "windows": len(windows.start),
            "horizon": horizon,
            "euler_steps": settings.euler_steps,
            "device": "cpu",
            "torch_threads": torch.get_num_threads(),
        },
    )
    for metric in ("l1", "cosine"):
        plot_error_vs_horizon(
            {name: {h: v[metric] for h, v in by_h.items()} for name, by_h in results.items()},
            metric,
            out / f"error_vs_horizon_{metric}.png",
        )
    evaluate.plot_predictions(out, predictors, windows, (cache.grid.height, cache.grid.width))
    print(table)
    print(f"\nreport, plots and results.json in {out}/")


def command_train_policy(config: TrainOnAutoencoderRun) -> None:
    from rla_wm.training.train import train_policy

    _report_run(train_policy(config, config.rla_checkpoint, Path(config.out)), Path(config.out))


def _policy_name(path: str, taken: set[str]) -> str:
    """runs/bc/checkpoint -> "bc" (the run folder), made unique."""
    folder = Path(path)
    name = folder.parent.name if folder.name == "checkpoint" else folder.name
    unique, n = name or "policy", 2
    while unique in taken:
        unique, n = f"{name}_{n}", n + 1
    return unique


def command_evaluate_policy(config: EvaluatePolicyRun) -> None:
    import json

    import draccus

    from rla_wm.data.policy_data import checkpoint_digest, rla_targets
    from rla_wm.evaluation import evaluate as evaluate
    from rla_wm.models.policy import Policy
    from rla_wm.training.train import load_frozen_autoencoder, open_caches, train_split

    if not config.policy_checkpoints:
        raise ConfigError("policy_checkpoints is empty: name at least one policy checkpoint folder")
    settings = config.evaluate
    cache = open_caches(config, include_action_free=False)[0]
    held_out = train_split(config, cache)[1]
    if not held_out:
        raise SystemExit(f"{config.data.dataset_root}: the labelled dataset has no held-out episodes to evaluate on")
    results: dict[str, evaluate.PolicyMetrics] = {}
    chunks: dict[str, torch.Tensor] = {}
    windows_by_shape: dict[tuple[int, int, str], evaluate.PolicyWindows] = {}
    window_of: dict[str, evaluate.PolicyWindows] = {}
    hold: evaluate.ChunkErrors | None = None
    for path in config.policy_checkpoints:
        policy, meta = Policy.load(path)
        if policy.config.encoder_id != cache.encoder_id:
            raise SystemExit(
                f"policy {path} was trained on {policy.config.encoder_id!r}, the data is {cache.encoder_id!r}"
            )
        rla_path = config.rla_checkpoint or meta.get("rla_checkpoint")
        if not rla_path:
            raise SystemExit(f"policy {path} does not name its RLA autoencoder: pass --rla_checkpoint")
        autoencoder, _ = load_frozen_autoencoder(rla_path, cache.encoder_id)
        digest = checkpoint_digest(rla_path)
        if meta.get("rla_digest", digest) != digest:
            raise SystemExit(f"policy {path} was trained against another RLA autoencoder than {rla_path}")
        key = (policy.config.chunk_length, policy.config.rla_horizon, digest)
        if key not in windows_by_shape:
            targets = rla_targets(cache, autoencoder, digest, policy.config.rla_horizon)
            windows_by_shape[key] = evaluate.collect_policy_windows(
                cache, held_out, key[0], key[1], targets, settings.policy_max_windows, settings.seed
            )
        windows = windows_by_shape[key]
        name = _policy_name(path, set(results))
        results[name], chunks[name] = evaluate.evaluate_policy(policy, windows)
        results[name]["checkpoint"] = str(path)
        window_of[name] = windows
        hold = hold or evaluate.hold_baseline(windows)
    if hold is None:  # unreachable: policy_checkpoints is not empty
        raise SystemExit("no policy to evaluate: pass --policy_checkpoints")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    table = evaluate.policy_table(results, hold)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(
        json.dumps(
            {"policies": results, "hold": hold, "config": draccus.encode(config), "held_out_episodes": held_out},
            indent=2,
        )
    )
    # One figure per set of windows; usually every policy shares one.
    for index, windows in enumerate(windows_by_shape.values()):
        same = {n: c for n, c in chunks.items() if window_of[n] is windows}
        evaluate.plot_policy_chunks(
            out / ("policy_chunks.png" if index == 0 else f"policy_chunks_{index}.png"), windows, same
        )
    print(table)
    for name, metrics in results.items():
        if "scene_l1" in metrics:  # the scene read-out: does the trunk see what the task is about?
            errors = ", ".join(
                f"{a:.3f} (mean {b:.3f})" for a, b in zip(metrics["scene_l1"], metrics["scene_l1_constant"])
            )
            print(f"{name}: scene read-out L1 per variable (observation.environment_state units): {errors}")
    print(f"\nreport, policy_chunks.png and results.json in {out}/")


@dataclass(frozen=True, kw_only=True)
class CollectFrames:
    """Push-T frames with the sim state logged next to each (for encoder pretraining and probes)."""

    # The .npz to write.
    out: str
    episodes: int = 300
    steps: int = 150
    # Episode k uses seed + k; the default keeps clear of evaluation seeds.
    seed: int = FRAMES_SEED_BASE
    # Share of episodes driven by the scripted expert (the rest: random-walk play).
    expert_fraction: float = 0.5
    # Keep every n-th frame.
    every: int = 2
    image_size: int = 96


@dataclass(frozen=True, kw_only=True)
class PretrainEncoderRun(PretrainConfig):
    """Masked-autoencoder pretraining of a DINOv2-architecture ViT on collected frames."""

    # State-frames .npz from collect-frames.
    frames: str
    # Run folder: encoder/ (a transformers folder, float16), log.jsonl, loss.png, config.json.
    out: str
    # torch CPU threads (0: torch's default).
    threads: int = 0


@dataclass(frozen=True, kw_only=True)
class ProbeRun:
    """A probe from an encoder's features to the Push-T sim state."""

    # Hub id, local folder or builtin:NAME (a ViT, or the keypoint encoder of pretrain-keypoints).
    encoder: str = "builtin:dinov2-tiny-random"
    # "linear" (ridge on the flattened grid) or "attentive" (a learned query over the patches, then an MLP).
    kind: str = "linear"
    # Encoder input size (0: the model's own image_size).
    resolution: int = 0
    # State-frames .npz; empty: collect `episodes` episodes first.
    frames: str = ""
    episodes: int = 40
    seed: int = FRAMES_SEED_BASE + 50_000
    # Also write the result here (JSON).
    json: str = ""


def command_collect_frames(config: CollectFrames) -> None:
    frames = collect_state_frames(
        config.episodes, config.steps, config.seed, config.expert_fraction, config.image_size, config.every
    )
    print(f"{len(frames)} frames from {config.episodes} episodes -> {frames.save(config.out)}")


def command_pretrain_encoder(config: PretrainEncoderRun) -> None:
    import dataclasses
    import json

    from rla_wm.evaluation.visualize import plot_loss_curves
    from rla_wm.training.pretrain_encoder import pretrain

    if config.threads:
        torch.set_num_threads(config.threads)
    frames = StateFrames.load(config.frames)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {field.name: getattr(config, field.name) for field in dataclasses.fields(PretrainConfig)}
    (out / "config.json").write_text(
        json.dumps({**settings, "frames": config.frames, "n_frames": len(frames)}, indent=2)
    )
    _, log = pretrain(frames, PretrainConfig(**settings), out)
    plot_loss_curves({"masked-autoencoder reconstruction": log}, out / "loss.png")
    print(f"final loss {log[-1]['loss']:.4f} after {log[-1]['step'] + 1} steps; encoder in {out / 'encoder'}")


@dataclass(frozen=True, kw_only=True)
class PretrainKeypointsRun(KeypointTrainConfig):
    """Self-supervised keypoint-bottleneck encoder (rla_wm.models.keypoint_encoder): no labels."""

    # State-frames .npz from collect-frames: training frames (their state is not used), and held-out
    # frames (other seeds) whose state only scores the linear probe logged during training.
    frames: str
    eval_frames: str
    # Run folder: keypoint_encoder/ (float16 weights + config + metrics.json), log.jsonl, loss.png, examples.png.
    out: str
    # Held-out frames used for the evaluations during training (a seeded sample of whole episodes; 0: all).
    eval_limit: int = 3000
    num_keypoints: int = 8
    width: int = 32
    # torch CPU threads (0: torch's default).
    threads: int = 0


def command_pretrain_keypoints(config: PretrainKeypointsRun) -> None:
    import dataclasses
    import json

    from rla_wm.evaluation.visualize import plot_loss_curves
    from rla_wm.models.keypoint_encoder import KeypointAutoencoderConfig
    from rla_wm.training.train_keypoint_encoder import train_keypoint_encoder, write_keypoint_examples

    if config.threads:
        torch.set_num_threads(config.threads)
    frames = StateFrames.load(config.frames)
    held_out = whole_episodes_up_to(StateFrames.load(config.eval_frames), config.eval_limit)
    out = Path(config.out)
    train_config = KeypointTrainConfig(
        **{f.name: getattr(config, f.name) for f in dataclasses.fields(KeypointTrainConfig)}
    )
    model_config = KeypointAutoencoderConfig(num_keypoints=config.num_keypoints, width=config.width)
    model, log = train_keypoint_encoder(frames, held_out, out, model_config, train_config)
    plot_loss_curves({"keypoint autoencoder reconstruction (MSE)": log}, out / "loss.png")
    write_keypoint_examples(model, held_out, out / "examples.png")
    print(f"held-out linear probe after {log[-1]['step'] + 1} steps: {json.dumps(log[-1]['held_out_probe'])}")
    print(f"keypoint encoder in {out / 'keypoint_encoder'}")


def whole_episodes_up_to(frames: StateFrames, limit: int) -> StateFrames:
    """The frames of whole episodes, spread over the file, up to about `limit` frames (0: all)."""
    import numpy as np

    from rla_wm.evaluation.probe import spread_subset

    episodes = np.unique(frames.episode)
    if not limit or len(frames) <= limit:
        return frames
    count = max(3, round(len(episodes) * limit / len(frames)))
    return frames.select(spread_subset(episodes, count))


@dataclass(frozen=True, kw_only=True)
class TrainPoseEstimatorRun(PoseTrainConfig):
    """Supervised CNN that reads the block pose from the camera (rla_wm.models.pose_estimator)."""

    # State-frames .npz from collect-frames: training frames, and held-out frames (other seeds).
    frames: str
    eval_frames: str
    # Run folder: pose_estimator/ (float16 weights + config + metrics.json), log.jsonl, loss.png.
    out: str
    # Held-out frames used for the evaluations during training (a seeded sample; 0: all).
    eval_limit: int = 1500
    image_size: int = 96
    width: int = 32
    # torch CPU threads (0: torch's default).
    threads: int = 0


def command_train_pose_estimator(config: TrainPoseEstimatorRun) -> None:
    import dataclasses
    import json

    import numpy as np

    from rla_wm.evaluation.visualize import plot_loss_curves
    from rla_wm.models.pose_estimator import PoseNetConfig
    from rla_wm.training.train_pose_estimator import train_pose_estimator, write_pose_examples

    if config.threads:
        torch.set_num_threads(config.threads)
    frames = StateFrames.load(config.frames)
    held_out = StateFrames.load(config.eval_frames)
    if config.eval_limit and len(held_out) > config.eval_limit:
        keep = np.sort(np.random.default_rng(config.seed).permutation(len(held_out))[: config.eval_limit])
        held_out = StateFrames(held_out.images[keep], held_out.state[keep], held_out.episode[keep])
    out = Path(config.out)
    train_config = PoseTrainConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(PoseTrainConfig)})
    net, log = train_pose_estimator(
        frames, held_out, out, PoseNetConfig(image_size=config.image_size, width=config.width), train_config
    )
    curve = [{"step": entry["step"], "loss": entry["loss_px"]} for entry in log]
    plot_loss_curves({"keypoint L1 (workspace px)": curve}, out / "loss.png")
    write_pose_examples(net, held_out, out / "examples.png")
    final = log[-1]["held_out"]
    print(f"held-out block pose error after {log[-1]['step'] + 1} steps: {json.dumps(final)}")
    print(f"pose estimator in {out / 'pose_estimator'}")


@dataclass(frozen=True, kw_only=True)
class TrainCubeEstimatorRun(CubeTrainConfig):
    """Supervised CNN that reads the SO-101 cube's and zone's positions from the front camera
    (rla_wm.models.cube_estimator); collects its labelled frames in process first."""

    # Run folder: cube_estimator/ (float16 weights, camera model, metrics.json), log.jsonl, loss.png, examples.png.
    out: str
    # Training episodes (seeds seed, seed + 1, ...; every 4th a joint random walk, the rest the noisy expert)
    # and held-out episodes (seeds eval_seed, ...).
    episodes: int = 600
    frame_seed: int = 40000
    eval_episodes: int = 60
    eval_seed: int = 41000
    # Std (rad) of the noise executed on the expert's joint targets.
    execution_noise: float = 0.05
    # The network's input size (frames are resized) and width.
    image_size: int = 96
    width: int = 32
    threads: int = 0


def command_train_cube_estimator(config: TrainCubeEstimatorRun) -> None:
    import dataclasses
    import json

    from rla_wm.evaluation.visualize import plot_loss_curves
    from rla_wm.training.train_cube_estimator import collect_cube_frames, train_cube_estimator, write_cube_examples

    if config.threads:
        torch.set_num_threads(config.threads)
    frames, camera = collect_cube_frames(config.episodes, config.frame_seed, execution_noise=config.execution_noise)
    held_out, _ = collect_cube_frames(config.eval_episodes, config.eval_seed, execution_noise=config.execution_noise)
    print(f"{len(frames)} training frames, {len(held_out)} held-out frames")
    out = Path(config.out)
    train_config = CubeTrainConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(CubeTrainConfig)})
    estimator, log = train_cube_estimator(frames, held_out, camera, out, config.image_size, config.width, train_config)
    curve = [{"step": entry["step"], "loss": entry["loss_px"]} for entry in log]
    plot_loss_curves({"keypoint L1 (camera px)": curve}, out / "loss.png")
    write_cube_examples(estimator, held_out, out / "examples.png")
    print(f"held-out error after {log[-1]['step'] + 1} steps: {json.dumps(log[-1]['held_out'])}")
    print(f"cube estimator in {out / 'cube_estimator'}")


@dataclass(frozen=True, kw_only=True)
class EvaluatePoseEstimatorRun:
    """Held-out pose error of a block-pose estimator, per group of frames (the numbers of its card)."""

    # builtin:NAME or a pose_estimator folder.
    estimator: str = "builtin:sim-pusht-pose-cnn"
    # State-frames .npz never trained on (collect-frames with other seeds).
    frames: str
    json: str = ""
    threads: int = 0


def command_evaluate_pose_estimator(config: EvaluatePoseEstimatorRun) -> None:
    import json

    from rla_wm.models.pose_estimator import BlockPoseEstimator
    from rla_wm.training.train_pose_estimator import EDGE_MARGIN, held_out_report

    if config.threads:
        torch.set_num_threads(config.threads)
    estimator = BlockPoseEstimator.load(config.estimator)
    report = held_out_report(estimator, StateFrames.load(config.frames))
    labels = {"all": "all", "inner": f"block centre >= {EDGE_MARGIN:g} px inside the edge", "edge": "near the edge"}
    print(f"{config.estimator} on {config.frames} (refused: fit residual > {estimator.max_fit_residual:g} px)")
    print("| frames | n | refused | position median / p90 / p99 / max (px) | angle median / p90 / p99 / max (deg) |")
    print("|---|---|---|---|---|")
    for name, row in report.items():
        position = " / ".join(f"{row[f'position_px_{q}']:.2f}" for q in ("median", "p90", "p99", "max"))
        angle = " / ".join(f"{row[f'angle_deg_{q}']:.2f}" for q in ("median", "p90", "p99", "max"))
        print(f"| {labels[name]} | {row['frames']} | {row['refused']} | {position} | {angle} |")
    if config.json:
        Path(config.json).write_text(json.dumps(report, indent=2) + "\n")


def command_probe(config: ProbeRun) -> None:
    import json

    from rla_wm.evaluation.probe import model_image_size, probe_encoder
    from rla_wm.models.encoder import EncoderConfig, load_encoder
    from rla_wm.models.keypoint_encoder import is_keypoint_encoder

    frames = (
        StateFrames.load(config.frames)
        if config.frames
        else collect_state_frames(config.episodes, steps=150, seed=config.seed, every=1)
    )
    settings = EncoderConfig(model=config.encoder)
    if not is_keypoint_encoder(config.encoder):  # it has its own input size; a ViT's is its natural one
        settings = EncoderConfig(model=config.encoder, resolution=config.resolution or model_image_size(config.encoder))
    encoder = load_encoder(settings)
    result = probe_encoder(encoder, frames, kind=config.kind)
    grid = encoder.grid
    print(f"encoder {encoder.encoder_id}, grid {grid.height}x{grid.width}x{grid.channels}, {config.kind} probe")
    print(result.table())
    if config.json:
        Path(config.json).write_text(
            json.dumps({"encoder": encoder.encoder_id, "kind": config.kind, **result.as_dict()}, indent=2)
        )


@dataclass(frozen=True, kw_only=True)
class RolloutRun:
    """Closed-loop episodes in process (no ROS, the sim waits for the policy): Push-T or the SO-101 arm."""

    # A policy checkpoint, builtin:NAME, expert:pusht or expert:so101 (what the policy node's policy_checkpoint takes).
    policy: str = "builtin:sim-pusht-policy"
    # "pusht" or "so101" (the simulated arm's push-cube task; max_steps 150 is its evaluation length).
    robot: str = "pusht"
    episodes: int = 50
    # Episode k uses seed + k; 1001.. are the ladder's unseen seeds.
    seed: int = 1001
    # Chunk points executed before the next inference (1: replan every 10 Hz step).
    execute_steps: int = 1
    max_steps: int = 300
    # The graph's chunk delivery, emulated (seconds; all 0: the sim waits for the policy). The
    # policy node's defaults are min_lead_time 0.02 and blend_time 0 (config/policy.yaml).
    latency: float = 0.0
    min_lead_time: float = 0.0
    blend_time: float = 0.0
    # Perception error for a block-state policy: Gaussian std of the block position it sees (pixels
    # of the 512 px workspace) and of its angle (degrees), fresh each observation.
    block_position_noise: float = 0.0
    block_angle_noise: float = 0.0
    # A camera encoder that makes the policy's observation instead of the one its checkpoint names, e.g.
    # builtin:sim-pusht-pose-cnn (block pose read from the camera) for a block-state policy.
    camera_encoder: str = ""
    # Torch threads (0: torch's default). One thread is faster on a loaded 2-core machine.
    threads: int = 0
    # Also write rollouts.json here.
    out: str = ""


def command_rollout(config: RolloutRun) -> None:
    import dataclasses
    import json

    from rla_wm.evaluation.rollout import (
        ROBOTS,
        BlockPoseNoise,
        GraphTiming,
        run_rollouts,
        save_rollouts,
        tokens_function,
    )
    from rla_wm.models.policy_loading import load_policy

    if config.robot not in ROBOTS:
        raise ConfigError(f"robot must be one of {list(ROBOTS)}, got {config.robot!r}")
    if config.threads:
        torch.set_num_threads(config.threads)
    policy = load_policy(config.policy)
    noise = BlockPoseNoise(config.block_position_noise, config.block_angle_noise, seed=config.seed)
    tokens_of = tokens_function(
        policy.config.encoder_id, torch.device("cpu"), block_noise=noise, camera_encoder=config.camera_encoder
    )
    seeds = range(config.seed, config.seed + config.episodes)
    timing = GraphTiming(config.latency, config.min_lead_time, config.blend_time)
    summary, episodes = run_rollouts(
        policy, tokens_of, seeds, config.execute_steps, config.max_steps, timing=timing, robot=config.robot
    )
    low, high = summary.success_interval
    print(
        f"{summary.successes}/{summary.episodes} episodes succeeded (rate {summary.success_rate:.2f}, "
        f"95% CI {low:.2f}-{high:.2f}), mean final coverage {summary.mean_coverage:.3f}, "
        f"execute_steps {summary.execute_steps}, latency {timing.latency:g} s, min_lead_time "
        f"{timing.min_lead_time:g} s, blend_time {timing.blend_time:g} s, block pose noise "
        f"{noise.position:g} px / {noise.angle_degrees:g} deg, features {policy.config.encoder_id}"
        f"{f' read by {config.camera_encoder}' if config.camera_encoder else ''}, "
        f"{summary.wall_seconds:.0f} s"
    )
    if config.out:
        path = save_rollouts(Path(config.out), summary, episodes, dataclasses.asdict(config))
        print(f"episodes -> {path}")
    else:
        print(json.dumps([dataclasses.asdict(e) for e in episodes if not e.success][:10]))


@dataclass(frozen=True)
class Command:
    config: type
    run: Callable[[Any], None]
    help: str


COMMANDS: dict[str, Command] = {
    "record-pusht": Command(RecordPushT, command_record_pusht, "record a Push-T LeRobot dataset with random play"),
    "record-so101": Command(RecordSo101, command_record_so101, "record a simulated SO-101 LeRobot dataset (push-cube)"),
    "cache-features": Command(Experiment, command_cache_features, "encode every frame once into the feature cache"),
    "train-rla": Command(TrainRun, command_train_rla, "train the RLA autoencoder"),
    "train-wm": Command(TrainOnAutoencoderRun, command_train_wm, "train RLA-WM (flow matching over z)"),
    "train-regression": Command(TrainRun, command_train_regression, "train the DINO-WM-style regression baseline"),
    "evaluate": Command(EvaluateRun, command_evaluate, "held-out L1 / cosine at several horizons, cost per prediction"),
    "train-policy": Command(
        TrainOnAutoencoderRun,
        command_train_policy,
        "train the world action model (action + RLA heads) on labelled and action-free episodes",
    ),
    "evaluate-policy": Command(
        EvaluatePolicyRun,
        command_evaluate_policy,
        "offline action error and RLA-head cosine of policies on held-out labelled episodes",
    ),
    "collect-frames": Command(
        CollectFrames, command_collect_frames, "Push-T frames with the sim state logged (pretraining, probes)"
    ),
    "pretrain-encoder": Command(
        PretrainEncoderRun, command_pretrain_encoder, "self-supervised (masked autoencoder) ViT encoder pretraining"
    ),
    "pretrain-keypoints": Command(
        PretrainKeypointsRun, command_pretrain_keypoints, "self-supervised keypoint-bottleneck encoder (no labels)"
    ),
    "train-pose-estimator": Command(
        TrainPoseEstimatorRun, command_train_pose_estimator, "CNN reading the block pose from the camera (supervised)"
    ),
    "train-cube-estimator": Command(
        TrainCubeEstimatorRun,
        command_train_cube_estimator,
        "CNN reading the SO-101 cube and zone from the front camera (supervised)",
    ),
    "evaluate-pose-estimator": Command(
        EvaluatePoseEstimatorRun, command_evaluate_pose_estimator, "held-out pose error of a pose estimator"
    ),
    "probe": Command(ProbeRun, command_probe, "linear probe from encoder features to the sim state, per variable"),
    "rollout": Command(RolloutRun, command_rollout, "closed-loop Push-T or SO-101 episodes in process, no ROS"),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"  {name:<{width}}  {command.help}" for name, command in COMMANDS.items()]
    return "usage: rla-wm COMMAND [--field=value ...]\n\ncommands:\n" + "\n".join(lines) + "\n\n" + (__doc__ or "")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a bad configuration raises ConfigError naming the key."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    command = COMMANDS.get(name)
    if command is None:
        print(f"rla-wm: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    command.run(parse_config(command.config, rest, prog=f"rla-wm {name}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
