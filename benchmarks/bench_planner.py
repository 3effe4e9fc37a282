"""Per-replan time of CEM planning with RLA-WM vs the regression baseline, and the largest
budgets that fit a 10 Hz and a 2 Hz control loop.

    python benchmarks/bench_planner.py                       # checkpoints in runs/ if present
    python benchmarks/bench_planner.py --threads 1 --max-seconds 60
    python benchmarks/bench_planner.py --device cuda

1. DINO-WM's budget (CEM, 300 samples x 30 iterations, horizon 5 chunks of 5 actions): planning
   runs until --max-seconds have passed (at least one iteration); when that cuts it short, the
   full time is EXTRAPOLATED as (mean seconds per iteration) x iterations and labelled so.
   Iterations cost the same every time (same batch, same shapes), so this is a fair estimate.
2. Reduced budgets: one prediction is timed at small batch sizes, and for each control period
   the search picks the longest horizon, then the most samples x iterations (at least 2
   iterations, since one is random shooting, and at least --min-samples samples) whose
   predicted time fits 80% of the period; each pick is then run for real and its measured
   time printed.

Models: the trained checkpoints of runs/pusht_small_v2 (RLA + RLA-WM) and runs/pusht_small
(regression) when present, else randomly initialised models of the sizes in
models/configs/pusht_small.yaml (latency does not depend on the weights).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
import yaml

from rla_wm.control.planning import LoadedPredictor, PlannerConfig, load_predictor, plan
from rla_wm.models.prediction import Predictor, RegressionPredictor, RLAWMPredictor
from rla_wm.models.regression import RegressionConfig, RegressionModel
from rla_wm.models.rla import RLAAutoencoder, RLAConfig
from rla_wm.models.world_model import RLAWorldModel, WorldModelConfig

REPO = Path(__file__).resolve().parents[1]
SMALL_CONFIG = REPO / "models" / "configs" / "pusht_small.yaml"
TOKENS, CHANNELS = 256, 192  # builtin:dinov2-tiny-random at 224 px (DINOv2 ViT-S/14 would be 256 x 384)


def random_predictors(euler_steps: int, device: str) -> dict[str, Predictor]:
    """Randomly initialised models of the pusht_small.yaml sizes."""
    sizes = yaml.safe_load(SMALL_CONFIG.read_text())
    shared = dict(token_dim=CHANNELS, num_tokens=TOKENS)
    rla = RLAConfig(**shared, **sizes["rla"])
    wm = WorldModelConfig(**shared, latent_tokens=rla.latent_tokens, latent_dim=rla.latent_dim, **sizes["world_model"])
    reg = RegressionConfig(**shared, **sizes["regression"])
    torch.manual_seed(0)
    return {
        "rla-wm": RLAWMPredictor(RLAWorldModel(wm).to(device), RLAAutoencoder(rla).to(device), steps=euler_steps),
        "regression": RegressionPredictor(RegressionModel(reg).to(device)),
    }


def load_predictors(args: argparse.Namespace) -> tuple[dict[str, Predictor], dict[str, str]]:
    predictors, sources = random_predictors(args.euler_steps, args.device), {}
    sources = {name: "random init, pusht_small.yaml sizes" for name in predictors}
    if Path(args.rla).is_dir() and Path(args.wm).is_dir():
        loaded: LoadedPredictor = load_predictor(
            "rla-wm", args.rla, args.wm, euler_steps=args.euler_steps, device=args.device
        )
        predictors["rla-wm"], sources["rla-wm"] = loaded.predictor, f"{args.wm}"
    if Path(args.regression).is_dir():
        loaded = load_predictor("regression", regression_checkpoint=args.regression, device=args.device)
        predictors["regression"], sources["regression"] = loaded.predictor, f"{args.regression}"
    return predictors, sources


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def prediction_seconds(predictor: Predictor, batch: int, chunk_length: int, device: str, repeats: int) -> float:
    """Median seconds of one prediction for `batch` candidates."""
    current = torch.randn(batch, TOKENS, CHANNELS, device=device)
    actions = torch.rand(batch, chunk_length, 2, device=device) * 400 + 50
    predictor.predict(current, actions)  # warm-up
    samples = []
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        predictor.predict(current, actions)
        sync(device)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def run_plan(predictor: Predictor, config: PlannerConfig, device: str, max_seconds: float | None = None):
    """Plan once from random features; stop after max_seconds (>= 1 iteration). Returns the result."""
    generator = torch.Generator().manual_seed(0)
    current = torch.randn(TOKENS, CHANNELS, generator=generator).to(device)
    goal = torch.randn(TOKENS, CHANNELS, generator=generator).to(device)
    stop = (lambda stats: stats.elapsed > max_seconds) if max_seconds else None
    return plan(predictor, current, goal, config, start_action=[256.0, 256.0], callback=stop)


def pick_budget(
    per_prediction: dict[int, float], period: float, min_samples: int
) -> tuple[int, int, int, float] | None:
    """(horizon, samples, iterations, predicted seconds) fitting 80% of `period`, or None."""
    for horizon in (5, 3, 2, 1):
        best = None
        for samples, seconds in per_prediction.items():
            if samples < min_samples:  # a population this small is not a search
                continue
            iterations = int(0.8 * period // (horizon * seconds)) if seconds > 0 else 0
            iterations = min(iterations, 30)
            if iterations < 2:
                continue
            score = samples * iterations
            if best is None or score > best[1] * best[2] or (score == best[1] * best[2] and samples > best[1]):
                best = (horizon, samples, iterations, horizon * iterations * seconds)
        if best is not None:
            return best
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rla", default=str(REPO / "runs/pusht_small_v2/rla/checkpoint"))
    parser.add_argument("--wm", default=str(REPO / "runs/pusht_small_v2/wm/checkpoint"))
    parser.add_argument("--regression", default=str(REPO / "runs/pusht_small/regression/checkpoint"))
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--horizon", type=int, default=5, help="chunks per plan")
    parser.add_argument("--chunk-length", type=int, default=5, help="actions per chunk (training horizon)")
    parser.add_argument("--euler-steps", type=int, default=10)
    parser.add_argument(
        "--max-seconds", type=float, default=60.0, help="wall time per model for the full budget before extrapolating"
    )
    parser.add_argument("--batches", default="1,2,4,8,16,32,64", help="batch sizes timed for the reduced budgets")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-samples", type=int, default=8, help="smallest population the reduced budgets use")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    predictors, sources = load_predictors(args)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"device {args.device}, torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, "
        f"load average {load:.1f} at start; {TOKENS}x{CHANNELS} tokens; RLA-WM {args.euler_steps} Euler steps"
    )
    for name, source in sources.items():
        print(f"  {name}: {source}")

    full = PlannerConfig(
        horizon=args.horizon,
        chunk_length=args.chunk_length,
        num_samples=args.samples,
        iterations=args.iterations,
        elites=30,
        action_low=(20.0, 20.0),
        action_high=(492.0, 492.0),
        max_delta=40.0,
        seed=0,
    )
    rows = []
    for name, predictor in predictors.items():
        result = run_plan(predictor, full, args.device, args.max_seconds)
        elapsed = [s.elapsed for s in result.stats]
        per_iteration = [b - a for a, b in zip([0.0] + elapsed[:-1], elapsed)]
        measured = len(result.stats)
        mean_iteration = statistics.mean(per_iteration)
        if measured == args.iterations:
            total, label = result.elapsed, "measured"
        else:
            total, label = mean_iteration * args.iterations, f"EXTRAPOLATED from {measured} iteration(s)"
        rows.append(
            (
                name,
                f"CEM {args.samples}x{args.iterations}, H={args.horizon}x{args.chunk_length}",
                f"{mean_iteration:.2f}",
                f"{total:.1f}",
                label,
            )
        )
        print(f"  {name}: {measured} iteration(s) of the full budget in {result.elapsed:.1f} s", flush=True)

    batches = [int(b) for b in args.batches.split(",")]
    for name, predictor in predictors.items():
        per_prediction = {
            b: prediction_seconds(predictor, b, args.chunk_length, args.device, args.repeats) for b in batches
        }
        print(
            f"  {name}: one prediction " + ", ".join(f"B={b}: {s * 1e3:.0f} ms" for b, s in per_prediction.items()),
            flush=True,
        )
        for hz in (10.0, 2.0):
            pick = pick_budget(per_prediction, 1.0 / hz, args.min_samples)
            if pick is None:
                smallest = min(b for b in batches if b >= args.min_samples)
                rows.append(
                    (
                        name,
                        f"{hz:g} Hz: nothing fits",
                        "-",
                        "-",
                        f"2 iterations x H=1 at B={smallest} take {2 * per_prediction[smallest] * 1e3:.0f} ms",
                    )
                )
                continue
            horizon, samples, iterations, predicted = pick
            config = PlannerConfig(
                horizon=horizon,
                chunk_length=args.chunk_length,
                num_samples=samples,
                iterations=iterations,
                elites=max(1, samples // 8),
                action_low=(20.0, 20.0),
                action_high=(492.0, 492.0),
                max_delta=40.0,
                seed=0,
            )
            times = [run_plan(predictor, config, args.device).elapsed for _ in range(args.repeats)]
            measured = statistics.median(times)
            fits = "fits" if measured <= 1.0 / hz else "OVER"
            rows.append(
                (
                    name,
                    f"{hz:g} Hz: CEM {samples}x{iterations}, H={horizon}x{args.chunk_length}",
                    f"{measured / iterations:.3f}",
                    f"{measured:.3f}",
                    f"measured (median of {args.repeats}), {fits} {1e3 / hz:.0f} ms; predicted {predicted:.3f}",
                )
            )

    header = ("model", "budget", "s / iteration", "s / replan", "how")
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
