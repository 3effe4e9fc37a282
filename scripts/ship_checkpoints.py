"""Ship trained sim models: float16 copies under models/rla_wm/checkpoints/ with a model card each.

    python scripts/ship_checkpoints.py --run=runs/sim_pusht --config_path=models/configs/sim_pusht.yaml

Reads the standard run layout (`<run>/<model>/checkpoint`, `metrics.jsonl`, the evaluation
results of `rla-wm evaluate` / `evaluate-policy`) and writes, per model present,
`checkpoints/sim-pusht-<model>/` (model.safetensors in float16, config.json, README.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml
from safetensors.torch import load_file

from rla_wm.assets import CHECKPOINT_DIR
from rla_wm.models.checkpoint import export_checkpoint

# model folder in the run -> (shipped name, what it is, the command that trained it)
MODELS = {
    "rla": (
        "sim-pusht-rla",
        "RLA autoencoder: z = E(s_t, s_t+h), s_t+h ~ D(z, s_t)",
        "rla-wm train-rla --config_path={config} --out={run}/rla",
    ),
    "wm": (
        "sim-pusht-rla-wm",
        "RLA-WM: flow matching of z from (s_t, a_t:t+h); decode with sim-pusht-rla",
        "rla-wm train-wm --config_path={config} --rla_checkpoint={run}/rla/checkpoint --out={run}/wm",
    ),
    "regression": (
        "sim-pusht-regression",
        "Regression baseline: s_t+h = f(s_t, a_t:t+h) directly",
        "rla-wm train-regression --config_path={config} --out={run}/regression",
    ),
    "policy": (
        "sim-pusht-policy",
        "World action model (action chunk + RLA heads), labelled + action-free episodes",
        "rla-wm train-policy --config_path={config} --rla_checkpoint={run}/rla/checkpoint --out={run}/policy",
    ),
    "policy_bc": (
        "sim-pusht-policy-bc",
        "Behaviour cloning: the same network on labelled episodes only",
        "rla-wm train-policy --config_path={config} --rla_checkpoint={run}/rla/checkpoint --out={run}/policy_bc "
        "--policy_training.use_action_free=false --train.policy.batch_size=32",
    ),
    "policy_direct": (
        "sim-pusht-policy-direct",
        "World action model whose action head does not read the RLA "
        "prediction (variant), labelled + action-free episodes",
        "rla-wm train-policy --config_path={config} --rla_checkpoint={run}/rla/checkpoint --out={run}/policy_direct "
        "--policy.action_reads_rla=false",
    ),
}


def parameter_count(folder: Path) -> int:
    return sum(tensor.numel() for tensor in load_file(str(folder / "model.safetensors")).values())


def training_summary(run_folder: Path) -> dict:
    lines = [json.loads(line) for line in (run_folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    last = lines[-1]
    return {"steps": last["step"] + 1, "seconds": last.get("seconds", float("nan")), "final_loss": last["loss"]}


def dataset_summary(config_path: Path) -> list[str]:
    config = yaml.safe_load(config_path.read_text())["data"]
    rows = []
    sources = [(config["dataset_root"], config["repo_id"], "action-labelled")]
    sources += [(s["dataset_root"], s["repo_id"], "action-free") for s in config.get("action_free", [])]
    for root, repo_id, kind in sources:
        info_path = (config_path.parent / root / "meta" / "info.json").resolve()
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        rows.append(
            f"- `{repo_id}` ({kind}): {info.get('total_episodes', '?')} episodes, "
            f"{info.get('total_frames', '?')} frames at {info.get('fps', '?')} fps"
        )
    return rows


def metrics_section(model: str, run: Path) -> list[str]:
    lines = []
    results = run / "eval" / "results.json"
    if model in ("rla", "wm", "regression") and results.is_file():
        data = json.loads(results.read_text())
        name = {"wm": "rla-wm", "regression": "regression"}.get(model)
        lines.append(
            f"Held-out episodes {data['held_out_episodes']}, {data['windows']} windows "
            f"(`rla-wm evaluate`, {run}/eval/results.md):"
        )
        if model == "rla":
            rec = data["reconstruction"]
            lines.append(
                f"- reconstruction at h={data['horizon']}: L1 {rec['l1']:.4f}, cosine distance {rec['cosine']:.4f}"
            )
        for horizon, values in data["results"]["copy-last"].items():
            row = f"- h={horizon}: copy-last L1 {values['l1']:.4f}"
            if name:
                mine = data["results"][name][horizon]
                row += f", {name} L1 {mine['l1']:.4f} (cosine distance {mine['cosine']:.4f} vs {values['cosine']:.4f})"
            lines.append(row)
    policy_results = run / "policy_eval" / "results.json"
    if model.startswith("policy") and policy_results.is_file():
        data = json.loads(policy_results.read_text())
        mine = data.get("policies", {}).get(model)
        if mine is not None:
            lines.append(
                f"Offline, held-out labelled episodes {data.get('held_out_episodes', '?')} "
                f"(`rla-wm evaluate-policy`, {run}/policy_eval/results.md):"
            )
            lines += [f"- {key}: {value:.4g}" for key, value in mine.items() if isinstance(value, (int, float))]
            lines += [
                f"- hold baseline {key}: {value:.4g}"
                for key, value in data.get("hold", {}).items()
                if isinstance(value, (int, float))
            ]
    return lines or ["(no evaluation results found)"]


def write_card(folder: Path, model: str, title: str, command: str, run: Path, config: Path) -> None:
    meta = json.loads((folder / "config.json").read_text())
    training = training_summary(run / model)
    size_mb = (folder / "model.safetensors").stat().st_size / 1e6
    encoder_id = meta["config"].get("encoder_id", "?")
    card = [
        f"# {folder.name}",
        "",
        f"{title}. Kind `{meta['kind']}`; load with `{meta['kind']}` loaders as `builtin:{folder.name}`.",
        "",
        "**Encoder weights: random.** These models were trained on features of "
        f"`{encoder_id}`, a DINOv2-architecture ViT with randomly initialised weights (pretrained DINO "
        "weights cannot be downloaded where they were trained). They only work with that encoder; "
        "on a robot, retrain on real DINO features (the encoder's default `facebook/dinov2-small`).",
        "",
        "## Data",
        *dataset_summary(config),
        "",
        "Collected through the ROS graph (sim robot -> topics -> recorder) with `collect`; "
        "the commands are at the top of the config.",
        "",
        "## Training",
        f"- command: `{command.format(config=config, run=run)}`",
        f"- config: `{config}`",
        f"- {training['steps']} steps in {training['seconds'] / 60:.1f} min on a 2-core CPU, final loss "
        f"{training['final_loss']:.4f}",
        "",
        "## Metrics",
        *metrics_section(model, run),
        "",
        "## Size",
        f"- {parameter_count(folder) / 1e6:.2f} M parameters, {size_mb:.1f} MB (weights stored as float16, "
        "run in float32)",
        "",
    ]
    (folder / "README.md").write_text("\n".join(card))


def main(argv: list[str] | None = None) -> None:
    # No abbreviations: the old `--config` must not pass for `--config_path`.
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--run", type=Path, required=True)
    # The run's experiment, under the name rla-wm gives it.
    parser.add_argument("--config_path", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=CHECKPOINT_DIR)
    args = parser.parse_args(argv)
    shipped = []
    for model, (name, title, command) in MODELS.items():
        source = args.run / model / "checkpoint"
        if not source.is_dir():
            print(f"skip {model}: no {source}")
            continue
        folder = export_checkpoint(source, args.out / name)
        write_card(folder, model, title, command, args.run, args.config_path)
        shipped.append(folder)
        print(f"shipped {folder} ({(folder / 'model.safetensors').stat().st_size / 1e6:.1f} MB)")
    total = sum((f / "model.safetensors").stat().st_size for f in shipped) / 1e6
    print(f"{len(shipped)} checkpoints, {total:.1f} MB")


if __name__ == "__main__":
    main()
