"""Compare closed-loop evaluations: a Markdown table and a figure from several demo runs.

    python -m rla_wm.evaluation.closed_loop_report --run "BC=outputs/eval/bc" --run "BC + RLA=outputs/eval/bc_rla" \
        --out outputs/eval

Each run folder holds the `metrics.json` that `python -m rla_wm_ros.demo` writes (summary,
per-episode results, per-stage latency). The table goes to stdout and `<out>/results.md`; the
figure (success rate, final-coverage distribution, control rate, camera-to-command latency) to
`<out>/closed_loop.png`.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Evaluation:
    name: str
    episodes: int
    successes: int
    coverage: np.ndarray
    episode_seconds: float
    command_rate_hz: float
    latency_p50_ms: float
    latency_p99_ms: float
    launch_args: dict


def load_evaluation(name: str, folder: Path) -> Evaluation:
    """Read one demo run; a folder without a complete metrics.json is an error, not a zero row."""
    path = Path(folder) / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics.json (run `python -m rla_wm_ros.demo --output {folder}` first)")
    metrics = json.loads(path.read_text())
    try:
        summary = metrics["summary"]
        episodes = metrics["episodes"]
    except KeyError as err:
        raise ValueError(f"{path}: missing {err}; written by an older demo?") from err
    if not episodes:
        raise ValueError(f"{path}: no episodes")
    latency = metrics.get("latency", {}).get("camera_to_command", {})
    return Evaluation(
        name=name,
        episodes=len(episodes),
        successes=int(sum(bool(e["success"]) for e in episodes)),
        coverage=np.array([float(e["coverage"]) for e in episodes]),
        episode_seconds=float(summary["episode_seconds_mean"]),
        command_rate_hz=float(summary["command_rate_hz"]),
        latency_p50_ms=float(latency.get("p50_ms", math.nan)),
        latency_p99_ms=float(latency.get("p99_ms", math.nan)),
        launch_args=dict(metrics.get("launch_args", {})),
    )


def markdown_table(evaluations: list[Evaluation]) -> str:
    header = (
        "| method | episodes | success rate | final coverage (mean ± std) | episode time (s) "
        "| control rate (Hz) | camera→command p50 / p99 (ms) |"
    )
    rows = [header, "|" + "---|" * 7]
    for ev in evaluations:
        rows.append(
            f"| {ev.name} | {ev.episodes} | {ev.successes / ev.episodes:.2f} ({ev.successes}/{ev.episodes}) "
            f"| {ev.coverage.mean():.3f} ± {ev.coverage.std():.3f} | {ev.episode_seconds:.1f} "
            f"| {ev.command_rate_hz:.1f} | {ev.latency_p50_ms:.0f} / {ev.latency_p99_ms:.0f} |"
        )
    return "\n".join(rows) + "\n"


def plot(evaluations: list[Evaluation], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [ev.name for ev in evaluations]
    positions = np.arange(len(evaluations))
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    axes[0].bar(positions, [ev.successes / ev.episodes for ev in evaluations], color="tab:green")
    axes[0].set_ylim(0, 1)
    axes[0].set_title("success rate")
    axes[1].boxplot([ev.coverage for ev in evaluations], positions=positions, widths=0.5)
    axes[1].set_ylim(0, 1)
    axes[1].set_title("final coverage")
    axes[2].bar(positions, [ev.command_rate_hz for ev in evaluations], color="tab:blue")
    axes[2].set_title("control rate (Hz, gated chunks)")
    width = 0.38
    axes[3].bar(positions - width / 2, [ev.latency_p50_ms for ev in evaluations], width, label="p50")
    axes[3].bar(positions + width / 2, [ev.latency_p99_ms for ev in evaluations], width, label="p99")
    axes[3].set_title("camera→command latency (ms)")
    axes[3].legend()
    for axis in axes:
        axis.set_xticks(positions)
        axis.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parse_run(text: str) -> tuple[str, Path]:
    name, separator, folder = text.partition("=")
    if not separator or not name or not folder:
        raise argparse.ArgumentTypeError(f"--run wants NAME=FOLDER, got {text!r}")
    return name, Path(folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=parse_run, action="append", required=True, help="NAME=FOLDER, repeatable")
    parser.add_argument("--out", type=Path, required=True, help="folder for results.md and closed_loop.png")
    args = parser.parse_args(argv)
    evaluations = [load_evaluation(name, folder) for name, folder in args.run]
    table = markdown_table(evaluations)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(table)
    figure = plot(evaluations, args.out / "closed_loop.png")
    print(table)
    print(f"table: {args.out / 'results.md'}\nfigure: {figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
