"""`rla-wm`: record sim data, cache features, train, evaluate.

    rla-wm record-pusht  --root data/pusht_random --episodes 40 --steps 100
    rla-wm cache-features   --config models/configs/pusht_small.yaml
    rla-wm train-rla        --config ... --out runs/rla
    rla-wm train-wm         --config ... --rla runs/rla/checkpoint --out runs/wm
    rla-wm train-regression --config ... --out runs/regression
    rla-wm evaluate         --config ... --rla runs/rla/checkpoint --wm runs/wm/checkpoint \\
                            --regression runs/regression/checkpoint --out runs/eval
    rla-wm train-policy     --config ... --rla runs/rla/checkpoint --out runs/policy \\
                            [--set policy.action_reads_rla=false --set policy_training.use_action_free=false]
    rla-wm evaluate-policy  --config ... --policy runs/policy/checkpoint [--policy ...] --out runs/policy_eval

Multi-GPU: `accelerate launch -m rla_wm.cli train-wm ...` (or torchrun) runs the same
training with DDP.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


def command_record_pusht(args: argparse.Namespace) -> None:
    from rla_wm.envs.pusht.dataset import record_pusht_dataset

    path = record_pusht_dataset(
        args.root,
        repo_id=args.repo_id,
        episodes=args.episodes,
        steps_per_episode=args.steps,
        seed=args.seed,
        with_actions=not args.action_free,
    )
    print(f"dataset written to {path}")


def command_cache_features(args: argparse.Namespace) -> None:
    from rla_wm.training.config import load_experiment
    from rla_wm.training.train import open_caches

    for cache in open_caches(load_experiment(args.config), include_action_free=True):
        print(f"{cache.path}: {len(cache.episodes)} episodes, encoder {cache.encoder_id}")


def command_train(args: argparse.Namespace) -> None:
    from rla_wm.training import train as train
    from rla_wm.training.config import load_experiment

    experiment = load_experiment(args.config)
    out = Path(args.out)
    if args.command == "train-rla":
        checkpoint = train.train_autoencoder(experiment, out)
    elif args.command == "train-wm":
        checkpoint = train.train_world_model(experiment, args.rla, out)
    else:
        checkpoint = train.train_regression(experiment, out)
    print(f"checkpoint: {checkpoint}\nmetrics: {out / 'metrics.jsonl'}\nloss curve: {out / 'loss.png'}")


def command_evaluate(args: argparse.Namespace) -> None:
    from rla_wm.evaluation import evaluate as evaluate
    from rla_wm.evaluation.visualize import plot_error_vs_horizon
    from rla_wm.models.prediction import CopyLastPredictor, Predictor, RegressionPredictor, RLAWMPredictor
    from rla_wm.models.regression import RegressionModel
    from rla_wm.models.rla import RLAAutoencoder
    from rla_wm.models.world_model import RLAWorldModel
    from rla_wm.training.config import load_experiment
    from rla_wm.training.train import open_caches, train_split

    experiment = load_experiment(args.config)
    settings = {"chunks": 3, "max_windows": 64, "euler_steps": 30, "seed": 0, **experiment.evaluate}
    cache = open_caches(experiment, include_action_free=False)[0]
    held_out = train_split(experiment, cache)[1]
    autoencoder, _ = RLAAutoencoder.load(args.rla)
    world_model, wm_meta = RLAWorldModel.load(args.wm)
    horizon = args.horizon or int(wm_meta.get("train", {}).get("horizon", 5))
    predictors: list[Predictor] = [
        CopyLastPredictor(),
        RLAWMPredictor(world_model, autoencoder, steps=settings["euler_steps"], seed=settings["seed"]),
    ]
    if args.regression:
        predictors.append(RegressionPredictor(RegressionModel.load(args.regression)[0]))
    for model in (autoencoder, world_model):
        if model.config.encoder_id != cache.encoder_id:
            raise SystemExit(
                f"{type(model).__name__} was trained on {model.config.encoder_id!r}, the data is {cache.encoder_id!r}"
            )
    windows = evaluate.collect_windows(
        cache, held_out, horizon, settings["chunks"], settings["max_windows"], settings["seed"]
    )
    results = evaluate.evaluate_predictors(predictors, windows)
    costs = {p.name: evaluate.cost_per_prediction(p, windows) for p in predictors}
    reconstruction = evaluate.reconstruction_errors(autoencoder, windows)
    out = Path(args.out)
    table = evaluate.save_report(
        out,
        results,
        costs,
        reconstruction,
        {
            "config": str(experiment.path),
            "held_out_episodes": held_out,
            "windows": len(windows.start),
            "horizon": horizon,
            "euler_steps": settings["euler_steps"],
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


def command_train_policy(args: argparse.Namespace) -> None:
    from rla_wm.training import train as train
    from rla_wm.training.config import load_experiment

    out = Path(args.out)
    checkpoint = train.train_policy(load_experiment(args.config), args.rla, out, args.overrides)
    print(f"checkpoint: {checkpoint}\nmetrics: {out / 'metrics.jsonl'}\nloss curve: {out / 'loss.png'}")


def _policy_name(path: str, taken: set[str]) -> str:
    """runs/bc/checkpoint -> "bc" (the run folder), made unique."""
    folder = Path(path)
    name = folder.parent.name if folder.name == "checkpoint" else folder.name
    unique, n = name or "policy", 2
    while unique in taken:
        unique, n = f"{name}_{n}", n + 1
    return unique


def command_evaluate_policy(args: argparse.Namespace) -> None:
    import json

    from rla_wm.data.policy_data import checkpoint_digest, rla_targets
    from rla_wm.evaluation import evaluate as evaluate
    from rla_wm.models.policy import Policy
    from rla_wm.training.config import load_experiment
    from rla_wm.training.train import load_frozen_autoencoder, open_caches, train_split

    experiment = load_experiment(args.config)
    settings = {"policy_max_windows": 512, "seed": 0, **experiment.evaluate}
    cache = open_caches(experiment, include_action_free=False)[0]
    held_out = train_split(experiment, cache)[1]
    if not held_out:
        raise SystemExit(f"{experiment.path}: the labelled dataset has no held-out episodes to evaluate on")
    results: dict[str, evaluate.PolicyMetrics] = {}
    chunks: dict[str, torch.Tensor] = {}
    windows_by_shape: dict[tuple[int, int, str], evaluate.PolicyWindows] = {}
    window_of: dict[str, evaluate.PolicyWindows] = {}
    hold: evaluate.ChunkErrors | None = None
    for path in args.policy:
        policy, meta = Policy.load(path)
        if policy.config.encoder_id != cache.encoder_id:
            raise SystemExit(
                f"policy {path} was trained on {policy.config.encoder_id!r}, the data is {cache.encoder_id!r}"
            )
        rla_path = args.rla or meta.get("rla_checkpoint")
        if not rla_path:
            raise SystemExit(f"policy {path} does not name its RLA autoencoder: pass --rla")
        autoencoder, _ = load_frozen_autoencoder(rla_path, cache.encoder_id)
        digest = checkpoint_digest(rla_path)
        if meta.get("rla_digest", digest) != digest:
            raise SystemExit(f"policy {path} was trained against another RLA autoencoder than {rla_path}")
        key = (policy.config.chunk_length, policy.config.rla_horizon, digest)
        if key not in windows_by_shape:
            targets = rla_targets(cache, autoencoder, digest, policy.config.rla_horizon)
            windows_by_shape[key] = evaluate.collect_policy_windows(
                cache, held_out, key[0], key[1], targets, settings["policy_max_windows"], settings["seed"]
            )
        windows = windows_by_shape[key]
        name = _policy_name(path, set(results))
        results[name], chunks[name] = evaluate.evaluate_policy(policy, windows)
        results[name]["checkpoint"] = str(path)
        window_of[name] = windows
        hold = hold or evaluate.hold_baseline(windows)
    if hold is None:  # argparse requires at least one --policy
        raise SystemExit("no policy to evaluate: pass --policy")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = evaluate.policy_table(results, hold)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(
        json.dumps(
            {"policies": results, "hold": hold, "config": str(experiment.path), "held_out_episodes": held_out}, indent=2
        )
    )
    # One figure per set of windows; usually every policy shares one.
    for index, windows in enumerate(windows_by_shape.values()):
        same = {n: c for n, c in chunks.items() if window_of[n] is windows}
        evaluate.plot_policy_chunks(
            out / ("policy_chunks.png" if index == 0 else f"policy_chunks_{index}.png"), windows, same
        )
    print(table)
    print(f"\nreport, policy_chunks.png and results.json in {out}/")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rla-wm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    record = commands.add_parser("record-pusht", help="record a Push-T LeRobot dataset with random play")
    record.add_argument("--root", required=True)
    record.add_argument("--repo-id", default="local/pusht_random")
    record.add_argument("--episodes", type=int, default=20)
    record.add_argument("--steps", type=int, default=100)
    record.add_argument("--seed", type=int, default=0)
    record.add_argument("--action-free", action="store_true", help="store video and state only, no actions")
    record.set_defaults(run=command_record_pusht)

    cache = commands.add_parser("cache-features", help="encode every frame once into the feature cache")
    cache.add_argument("--config", required=True)
    cache.set_defaults(run=command_cache_features)

    for name, help_text in (
        ("train-rla", "train the RLA autoencoder"),
        ("train-wm", "train RLA-WM (flow matching over z)"),
        ("train-regression", "train the DINO-WM-style regression baseline"),
    ):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--config", required=True)
        sub.add_argument("--out", required=True)
        if name == "train-wm":
            sub.add_argument("--rla", required=True, help="RLA autoencoder checkpoint folder")
        sub.set_defaults(run=command_train)

    evaluation = commands.add_parser("evaluate", help="held-out L1 / cosine at several horizons, cost per prediction")
    evaluation.add_argument("--config", required=True)
    evaluation.add_argument("--rla", required=True)
    evaluation.add_argument("--wm", required=True)
    evaluation.add_argument("--regression", default=None)
    evaluation.add_argument(
        "--horizon", type=int, default=None, help="frames per chunk (default: the WM's training horizon)"
    )
    evaluation.add_argument("--out", required=True)
    evaluation.set_defaults(run=command_evaluate)

    policy = commands.add_parser(
        "train-policy", help="train the world action model (action + RLA heads) on labelled and action-free episodes"
    )
    policy.add_argument("--config", required=True)
    policy.add_argument("--rla", required=True, help="frozen RLA autoencoder checkpoint (gives the RLA head's target)")
    policy.add_argument("--out", required=True)
    policy.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override policy.*, policy_training.* or train.policy.* (repeatable), e.g. policy.action_reads_rla=false",
    )
    policy.set_defaults(run=command_train_policy)

    policy_eval = commands.add_parser(
        "evaluate-policy", help="offline action error and RLA-head cosine of policies on held-out labelled episodes"
    )
    policy_eval.add_argument("--config", required=True)
    policy_eval.add_argument("--policy", required=True, action="append", help="policy checkpoint (repeatable)")
    policy_eval.add_argument("--rla", default=None, help="RLA autoencoder (default: the one each policy trained with)")
    policy_eval.add_argument("--out", required=True)
    policy_eval.set_defaults(run=command_evaluate_policy)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
