"""Per-replan time of CEM planning with RLA-WM (feature cost and latent cost) vs the regression
baseline, the largest budgets that fit a 10 Hz and a 2 Hz control loop, and how time and
memory grow with samples, horizon and feature grid.

    python benchmarks/bench_planner.py --threads 1            # the CPU figures (checkpoints in runs/ if present)
    python benchmarks/bench_planner.py --device cuda --dtype bfloat16
    python benchmarks/bench_planner.py --samples 8 --iterations 2 --growth-samples 4,8 \\
        --growth-horizons 1,2 --growth-grids 8 --growth-base 8,2,8 --batches 1,2   # smoke run

1. DINO-WM's budget (CEM, 300 samples x 30 iterations, horizon 5 chunks of 5 actions), side by
   side for RLA-WM scoring the decoded features (`cost_space=features`), RLA-WM scoring the
   predicted residual latent (`cost_space=latent`, models/rla_wm/control/latent_cost.py) and
   the regression baseline, for each --prediction-chunks (chunks per world-model call).
   Planning runs until --max-seconds have passed (at least one iteration); when that cuts it
   short, the full time is EXTRAPOLATED as (mean seconds per iteration) x iterations and
   labelled so. Iterations cost the same every time (same batch, same shapes).
2. Reduced budgets: one prediction is timed at small batch sizes, and for each control period
   the search picks the longest horizon, then the most samples x iterations (at least 2
   iterations, since one is random shooting, and at least --min-samples samples) whose
   predicted time fits 80% of the period; each pick is then run for real and its measured
   time printed.
3. Cost growth: --growth-iterations iterations are run for each row (samples, horizon, grid
   of patch tokens, varied one at a time around --growth-base); per replan = per iteration x
   --iterations + what runs once per replan. Peak memory: CUDA's peak allocation, or on a CPU the sampled peak resident
   set size, above what the process held before the plan.

Models: the trained checkpoints of runs/pusht_small_v2 (RLA + RLA-WM) and runs/pusht_small
(regression) when present, else randomly initialised models of the sizes in
models/configs/pusht_small.yaml (latency does not depend on the weights); section 3 always uses
random models, one per grid. `--scale paper` uses random models of the paper's sizes throughout
(32x32 tokens of 1024 channels, a DINOv3 ViT-L/16 at 512 px; growth grids in the same channels).
`--compile MODE` compiles every transformer block first (rla_wm.models.acceleration; warm-up
plans absorb the compilation). On a GPU every timing synchronises the device first and last;
section 1 also prints each plan's peak memory.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from measure import PeakMemory, median_seconds, sync

from rla_wm.control.planning import PlannerConfig, load_predictor, plan, predict_batch
from rla_wm.models.acceleration import COMPILE_MODES, compile_blocks
from rla_wm.models.prediction import Predictor, RegressionPredictor, RLAWMPredictor
from rla_wm.models.regression import RegressionConfig, RegressionModel
from rla_wm.models.rla import RLAAutoencoder, RLAConfig
from rla_wm.models.world_model import RLAWorldModel, WorldModelConfig

REPO = Path(__file__).resolve().parents[1]
SMALL_CONFIG = REPO / "models" / "configs" / "pusht_small.yaml"
GRID, CHANNELS = 16, 192  # builtin:dinov2-tiny-random at 224 px (DINOv2 ViT-S/14 would be 16x16 x 384)
PAPER_GRID, PAPER_CHANNELS = 32, 1024  # DINOv3 ViT-L/16 at 512 px
# (label, model, cost_space): the columns compared side by side.
VARIANTS = (
    ("rla-wm features", "rla-wm", "features"),
    ("rla-wm latent", "rla-wm", "latent"),
    ("regression", "regression", "features"),
)
BOUNDS = dict(action_low=(20.0, 20.0), action_high=(492.0, 492.0), max_delta=40.0, seed=0)


def cast(predictor: Predictor, device: str, dtype: torch.dtype) -> Predictor:
    if isinstance(predictor, RLAWMPredictor):
        predictor.world_model.to(device, dtype)
        predictor.autoencoder.to(device, dtype)
    elif isinstance(predictor, RegressionPredictor):
        predictor.model.to(device, dtype)
    return predictor


def random_predictors(
    euler_steps: int, device: str, dtype: torch.dtype, grid: int = GRID, scale: str = "small"
) -> dict[str, Predictor]:
    """Randomly initialised models on a grid x grid token map: the pusht_small.yaml sizes on 192
    channels, or the paper's (RLAConfig.paper, WorldModelConfig.paper, RegressionConfig.paper) on
    1024 channels (DINOv3 ViT-L/16; its 512 px input gives grid 32)."""
    torch.manual_seed(0)
    if scale == "paper":
        shared = dict(token_dim=PAPER_CHANNELS, num_tokens=grid * grid)
        rla, wm, reg = RLAConfig.paper(**shared), WorldModelConfig.paper(**shared), RegressionConfig.paper(**shared)
    else:
        sizes = yaml.safe_load(SMALL_CONFIG.read_text())
        shared = dict(token_dim=CHANNELS, num_tokens=grid * grid)
        rla = RLAConfig(**shared, **sizes["rla"])
        wm = WorldModelConfig(
            **shared, latent_tokens=rla.latent_tokens, latent_dim=rla.latent_dim, **sizes["world_model"]
        )
        reg = RegressionConfig(**shared, **sizes["regression"])
    predictors: dict[str, Predictor] = {
        "rla-wm": RLAWMPredictor(RLAWorldModel(wm), RLAAutoencoder(rla), steps=euler_steps),
        "regression": RegressionPredictor(RegressionModel(reg)),
    }
    return {name: cast(predictor, device, dtype) for name, predictor in predictors.items()}


def compile_predictors(predictors: dict[str, Predictor], mode: str) -> None:
    """torch.compile every transformer block of the predictors' models (rla_wm.models.acceleration)."""
    for predictor in predictors.values():
        if isinstance(predictor, RLAWMPredictor):
            compile_blocks(predictor.world_model, mode)
            compile_blocks(predictor.autoencoder, mode)
        elif isinstance(predictor, RegressionPredictor):
            compile_blocks(predictor.model, mode)


def load_predictors(args: argparse.Namespace, dtype: torch.dtype) -> tuple[dict[str, Predictor], dict[str, str]]:
    if args.scale == "paper":
        predictors = random_predictors(args.euler_steps, args.device, dtype, PAPER_GRID, "paper")
        sources = {name: "random init, paper sizes (32x32 x 1024 features)" for name in predictors}
    else:
        predictors = random_predictors(args.euler_steps, args.device, dtype)
        sources = {name: "random init, pusht_small.yaml sizes" for name in predictors}
        if Path(args.rla).is_dir() and Path(args.wm).is_dir():
            loaded = load_predictor("rla-wm", args.rla, args.wm, euler_steps=args.euler_steps, device=args.device)
            predictors["rla-wm"], sources["rla-wm"] = cast(loaded.predictor, args.device, dtype), f"{args.wm}"
        if Path(args.regression).is_dir():
            loaded = load_predictor("regression", regression_checkpoint=args.regression, device=args.device)
            predictors["regression"], sources["regression"] = (
                cast(loaded.predictor, args.device, dtype),
                args.regression,
            )
    compile_predictors(predictors, args.compile)
    return predictors, sources


def timed(fn: Callable[[], object], device: str, repeats: int) -> float:
    """Median seconds of fn() after one warm-up, the device synchronised around each run."""
    fn()
    return median_seconds(fn, device, repeats)


def run_plan(predictor: Predictor, config: PlannerConfig, args: argparse.Namespace, max_seconds: float | None = None):
    """Plan once from random features; stop after max_seconds (>= 1 iteration). Returns (result, seconds)."""
    generator = torch.Generator().manual_seed(0)
    tokens, channels = _feature_shape(predictor)
    current = torch.randn(tokens, channels, generator=generator).to(args.device, getattr(torch, args.dtype))
    goal = torch.randn(tokens, channels, generator=generator).to(args.device, getattr(torch, args.dtype))
    stop = (lambda stats: stats.elapsed > max_seconds) if max_seconds else None
    sync(args.device)
    started = time.perf_counter()
    result = plan(predictor, current, goal, config, start_action=[256.0, 256.0], callback=stop)
    sync(args.device)
    return result, time.perf_counter() - started


def replan_seconds(result, seconds: float, iterations: int) -> float:
    """A replan of `iterations` iterations from a shorter run: per-iteration time x iterations,
    plus what runs once after them (the latent cost's decode of the chosen plan)."""
    if len(result.stats) == iterations:
        return seconds
    last = result.stats[-1].elapsed  # from the start of planning: includes the goal's encoding
    return last / len(result.stats) * iterations + max(seconds - last, 0.0)


def warm_up(predictors: dict[str, Predictor], args: argparse.Namespace) -> None:
    """One tiny plan per variant, so one-off costs (CUDA kernels, allocator) stay out of the timings."""
    for _, model, cost_space in VARIANTS:
        config = PlannerConfig(
            horizon=1,
            chunk_length=args.chunk_length,
            num_samples=2,
            iterations=1,
            elites=1,
            cost_space=cost_space,
            **BOUNDS,
        )
        run_plan(predictors[model], config, args)


def _feature_shape(predictor: Predictor) -> tuple[int, int]:
    """(tokens, channels) of the feature maps the predictor takes: the checkpoints' own, e.g. one
    token of 24 numbers for the keypoint encoder's world models."""
    if isinstance(predictor, RLAWMPredictor):
        config = predictor.world_model.config
    else:
        assert isinstance(predictor, RegressionPredictor)
        config = predictor.model.config
    return config.num_tokens, config.token_dim


def full_budget_rows(predictors: dict[str, Predictor], args: argparse.Namespace) -> list[list[str]]:
    """Section 1: one row per prediction_chunks, one 's / replan' cell per variant."""
    rows = []
    warm_up(predictors, args)
    for chunks in (int(k) for k in args.prediction_chunks.split(",")):
        row = [f"CEM {args.samples}x{args.iterations}, H={args.horizon}x{args.chunk_length}, {chunks} chunk(s)/call"]
        for label, model, cost_space in VARIANTS:
            predictor = predictors[model]
            limit, longest = getattr(predictor, "max_horizon", 0), min(chunks, args.horizon) * args.chunk_length
            if longest > limit:
                row.append(f"- ({longest} actions > max_horizon {limit})")
                continue
            config = PlannerConfig(
                horizon=args.horizon,
                chunk_length=args.chunk_length,
                num_samples=args.samples,
                iterations=args.iterations,
                elites=min(30, args.samples),
                cost_space=cost_space,
                prediction_chunks=chunks,
                **BOUNDS,
            )
            with PeakMemory(args.device) as memory:
                result, seconds = run_plan(predictor, config, args, args.max_seconds)
            measured = len(result.stats)
            total = replan_seconds(result, seconds, args.iterations)
            timing = f"{total:.2f} s"
            if measured < args.iterations:
                timing = f"{total:.1f} s (EXTRAPOLATED, {measured} it.)"
            row.append(f"{timing}, {memory.mib:.0f} MiB")
            print(f"  {label}, {chunks} chunk(s)/call: {measured} iteration(s) in {seconds:.2f} s", flush=True)
        rows.append(row)
    return rows


def pick_budget(
    iteration_seconds: Callable[[int, int], float], batches: list[int], period: float, min_samples: int
) -> tuple[int, int, int, float] | None:
    """(horizon, samples, iterations, predicted seconds) fitting 80% of `period`, or None.

    iteration_seconds(horizon, samples): predicted seconds of one CEM iteration."""
    for horizon in (5, 3, 2, 1):
        best = None
        for samples in batches:
            if samples < min_samples:  # a population this small is not a search
                continue
            seconds = iteration_seconds(horizon, samples)
            iterations = min(int(0.8 * period // seconds), 30) if seconds > 0 else 0
            if iterations < 2:
                continue
            score = samples * iterations
            if best is None or score > best[1] * best[2] or (score == best[1] * best[2] and samples > best[1]):
                best = (horizon, samples, iterations, iterations * seconds)
        if best is not None:
            return best
    return None


def reduced_budget_rows(predictors: dict[str, Predictor], args: argparse.Namespace) -> list[list[str]]:
    """Section 2: per-prediction times at small batches -> the budgets that fit 10 Hz and 2 Hz."""
    batches = [int(b) for b in args.batches.split(",")]
    dtype = getattr(torch, args.dtype)
    rows = []
    for label, model, cost_space in VARIANTS:
        predictor = predictors[model]
        tokens, channels = _feature_shape(predictor)
        # Seconds per prediction: a full one, and the plan's last one (first chunk, later chunk).
        full, last_first, last_later = {}, {}, {}
        for b in batches:
            current = torch.randn(1, tokens, channels, device=args.device, dtype=dtype)
            actions = (torch.rand(b, args.chunk_length, 2, device=args.device) * 400 + 50).to(dtype)
            full[b] = last_first[b] = last_later[b] = timed(
                lambda: predict_batch(predictor, current, actions), args.device, args.repeats
            )
            if cost_space == "latent":  # z only; after the first chunk the goal is encoded per candidate
                assert isinstance(predictor, RLAWMPredictor)
                many = current.expand(b, -1, -1)
                last_first[b] = timed(lambda: predictor.predict_latent(current, actions), args.device, args.repeats)
                encode = timed(lambda: predictor.encode(many, current), args.device, args.repeats)
                last_later[b] = last_first[b] + encode
        print(
            f"  {label}: one prediction " + ", ".join(f"B={b}: {s * 1e3:.0f} ms" for b, s in full.items()), flush=True
        )

        def iteration_seconds(horizon: int, samples: int) -> float:
            last = last_first if horizon == 1 else last_later
            return (horizon - 1) * full[samples] + last[samples]

        for hz in (10.0, 2.0):
            pick = pick_budget(iteration_seconds, batches, 1.0 / hz, args.min_samples)
            if pick is None:
                rows.append([label, f"{hz:g} Hz: nothing fits", "-", "-", "2 iterations x H=1 do not fit"])
                continue
            horizon, samples, iterations, predicted = pick
            config = PlannerConfig(
                horizon=horizon,
                chunk_length=args.chunk_length,
                num_samples=samples,
                iterations=iterations,
                elites=max(1, samples // 8),
                cost_space=cost_space,
                **BOUNDS,
            )
            measured = statistics.median(run_plan(predictor, config, args)[1] for _ in range(args.repeats))
            fits = "fits" if measured <= 1.0 / hz else "OVER"
            rows.append(
                [
                    label,
                    f"{hz:g} Hz: CEM {samples}x{iterations}, H={horizon}x{args.chunk_length}",
                    f"{measured / iterations:.3f}",
                    f"{measured:.3f}",
                    f"measured (median of {args.repeats}), {fits} {1e3 / hz:.0f} ms; predicted {predicted:.3f}",
                ]
            )
    return rows


def growth_rows(args: argparse.Namespace) -> list[list[str]]:
    """Section 3: s / replan and peak memory per variant, one setting varied at a time."""
    base_samples, base_horizon, base_grid = (int(v) for v in args.growth_base.split(","))
    settings = [(s, base_horizon, base_grid) for s in map(int, args.growth_samples.split(","))]
    settings += [(base_samples, h, base_grid) for h in map(int, args.growth_horizons.split(","))]
    settings += [(base_samples, base_horizon, g) for g in map(int, args.growth_grids.split(","))]
    settings = list(dict.fromkeys(settings))  # the base row once
    dtype = getattr(torch, args.dtype)
    models: dict[int, dict[str, Predictor]] = {}
    rows = []
    for samples, horizon, grid in settings:
        if grid not in models:
            models = {grid: random_predictors(args.euler_steps, args.device, dtype, grid, args.scale)}  # one grid
            compile_predictors(models[grid], args.compile)
            warm_up(models[grid], args)
        row = [str(samples), str(horizon), f"{grid}x{grid}"]
        for _, model, cost_space in VARIANTS:
            config = PlannerConfig(
                horizon=horizon,
                chunk_length=args.chunk_length,
                num_samples=samples,
                iterations=args.growth_iterations,
                elites=max(1, min(30, samples // 4)),
                cost_space=cost_space,
                **BOUNDS,
            )
            with PeakMemory(args.device) as memory:
                result, seconds = run_plan(models[grid][model], config, args)
            row.append(f"{replan_seconds(result, seconds, args.iterations):.2f} s, {memory.mib:.0f} MiB")
        print("  growth: " + " | ".join(row), flush=True)
        rows.append(row)
    return rows


def table(header: list[str], rows: list[list[str]]) -> None:
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rla", default=str(REPO / "runs/pusht_small_v2/rla/checkpoint"))
    parser.add_argument("--wm", default=str(REPO / "runs/pusht_small_v2/wm/checkpoint"))
    parser.add_argument("--regression", default=str(REPO / "runs/pusht_small/regression/checkpoint"))
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--horizon", type=int, default=5, help="chunks per plan")
    parser.add_argument("--chunk-length", type=int, default=5, help="actions per chunk (training horizon)")
    parser.add_argument("--prediction-chunks", default="1", help="chunks per world-model call, a list (section 1)")
    parser.add_argument("--euler-steps", type=int, default=10)
    parser.add_argument(
        "--max-seconds", type=float, default=60.0, help="wall time per model for the full budget before extrapolating"
    )
    parser.add_argument("--batches", default="1,2,4,8,16,32,64", help="batch sizes timed for the reduced budgets")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-samples", type=int, default=8, help="smallest population the reduced budgets use")
    parser.add_argument("--growth-base", default="64,5,16", help="samples,horizon,grid the growth rows vary around")
    parser.add_argument("--growth-samples", default="16,64,256")
    parser.add_argument("--growth-horizons", default="1,3,5")
    parser.add_argument("--growth-grids", default="16,24,32", help="patch grids (16 = 224 px at patch 14)")
    parser.add_argument("--growth-iterations", type=int, default=1, help="iterations run per growth row")
    parser.add_argument("--skip", default="", help="sections to skip, e.g. reduced,growth")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument(
        "--scale", choices=["small", "paper"], default="small", help="paper: random paper-size models (no checkpoints)"
    )
    parser.add_argument("--compile", default="none", choices=COMPILE_MODES, help="torch.compile the models' blocks")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    predictors, sources = load_predictors(args, getattr(torch, args.dtype))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"device {args.device}, dtype {args.dtype}, torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, "
        f"load average {load:.1f} at start; RLA-WM {args.euler_steps} Euler steps; scale {args.scale}; "
        f"compile {args.compile}; torch {torch.__version__}"
    )
    for name, predictor in predictors.items():
        tokens, channels = _feature_shape(predictor)
        print(f"  {name}: features of {tokens} tokens x {channels} channels")
    for name, source in sources.items():
        print(f"  {name}: {source}")
    skip = set(args.skip.split(","))
    columns = [label for label, _, _ in VARIANTS]
    table(["budget (s / replan, peak memory)", *columns], full_budget_rows(predictors, args))
    if "reduced" not in skip:
        table(["model", "budget", "s / iteration", "s / replan", "how"], reduced_budget_rows(predictors, args))
    if "growth" not in skip:
        header = ["samples", "horizon", "grid", *(f"{label}: s / replan, peak" for label in columns)]
        table(header, growth_rows(args))


if __name__ == "__main__":
    main()
