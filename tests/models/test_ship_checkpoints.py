"""scripts/ship_checkpoints.py: float16 copies of a run's models with model cards that tell the truth."""

import importlib.util
import json
import re
import shlex
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rla_wm import cli
from rla_wm.models.rla import RLAAutoencoder, RLAConfig
from rla_wm.training.config import ConfigError, parse_config

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "ship_checkpoints.py"
SHIPPED_CARDS = sorted((REPO / "models" / "rla_wm" / "checkpoints").glob("sim-pusht-*/README.md"))


def load_script():
    spec = importlib.util.spec_from_file_location("ship_checkpoints", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_run(tmp_path: Path) -> tuple[Path, Path]:
    run = tmp_path / "run"
    model = RLAAutoencoder(
        RLAConfig(
            token_dim=16,
            num_tokens=9,
            latent_tokens=2,
            latent_dim=4,
            width=32,
            encoder_depth=1,
            decoder_depth=1,
            heads=2,
            encoder_id="builtin:dinov2-tiny-random@224",
        )
    )
    model.save(run / "rla" / "checkpoint")
    lines = [{"step": 0, "loss": 2.0, "seconds": 3.0}, {"step": 399, "loss": 0.98, "seconds": 1309.5}]
    (run / "rla" / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    (run / "eval").mkdir()
    (run / "eval" / "results.json").write_text(
        json.dumps(
            {
                "held_out_episodes": [3, 7],
                "windows": 64,
                "horizon": 5,
                "reconstruction": {"l1": 0.0178, "cosine": 0.01},
                "results": {"copy-last": {"5": {"l1": 0.0194, "cosine": 0.02}}},
            }
        )
    )
    data = tmp_path / "data" / "expert" / "meta"
    data.mkdir(parents=True)
    (data / "info.json").write_text(json.dumps({"total_episodes": 100, "total_frames": 11037, "fps": 10}))
    config = tmp_path / "configs" / "sim.yaml"
    config.parent.mkdir()
    config.write_text("data:\n  dataset_root: ../data/expert\n  repo_id: local/sim_expert\n")
    return run, config


def test_ships_present_models_as_float16_with_a_card(tmp_path, capsys):
    run, config = make_run(tmp_path)
    out = tmp_path / "shipped"
    load_script().main([f"--run={run}", f"--config_path={config}", f"--out={out}"])
    printed = capsys.readouterr().out
    assert "skip policy: no" in printed  # models the run lacks are reported, not invented
    assert sorted(p.name for p in out.iterdir()) == ["sim-pusht-rla"]
    folder = out / "sim-pusht-rla"
    weights = load_file(str(folder / "model.safetensors"))
    assert all(v.dtype == torch.float16 for v in weights.values() if v.is_floating_point())
    loaded, _ = RLAAutoencoder.load(folder)
    assert loaded.config.latent_tokens == 2

    card = (folder / "README.md").read_text()
    assert "Encoder weights: random" in card and "builtin:dinov2-tiny-random@224" in card
    assert "`local/sim_expert` (action-labelled): 100 episodes, 11037 frames at 10 fps" in card
    assert "400 steps in 21.8 min" in card and "final loss 0.9800" in card
    assert "reconstruction at h=5: L1 0.0178" in card and "copy-last L1 0.0194" in card
    assert f"- command: `rla-wm train-rla --config_path={config} --out={run}/rla`" in card


def parse_rla_wm(line: str) -> object:
    """The configuration `rla-wm` builds from a command line, with its real parser (nothing runs)."""
    program, name, *args = shlex.split(line)
    assert program == "rla-wm", line
    return parse_config(cli.COMMANDS[name].config, args, prog=f"rla-wm {name}")


def test_the_old_config_flag_is_refused(tmp_path):
    run, config = make_run(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        load_script().main([f"--run={run}", f"--config={config}", f"--out={tmp_path / 'shipped'}"])
    assert exit_info.value.code == 2
    assert not (tmp_path / "shipped").exists()


def test_every_card_command_is_one_rla_wm_accepts(tmp_path):
    run, config = make_run(tmp_path)
    for model, (_, _, command) in load_script().MODELS.items():
        parsed = parse_rla_wm(command.format(config=config, run=run))
        assert parsed.out == f"{run}/{model}"
        assert parsed.data.repo_id == "local/sim_expert"  # read from the config file
    bc = parse_rla_wm(load_script().MODELS["policy_bc"][2].format(config=config, run=run))
    assert (bc.policy_training.use_action_free, bc.train.policy.batch_size) == (False, 32)
    with pytest.raises(ConfigError, match="unrecognized arguments"):
        parse_rla_wm(f"rla-wm train-rla --config_path={config} --out={run}/rla --train.rla.stepz=3")


@pytest.mark.parametrize("card", SHIPPED_CARDS, ids=[c.parent.name for c in SHIPPED_CARDS])
def test_shipped_cards_name_commands_rla_wm_accepts(card, monkeypatch):
    (line,) = re.findall(r"^- command: `(.*)`$", card.read_text(), flags=re.MULTILINE)
    monkeypatch.chdir(REPO)  # the card's paths are relative to the repository root
    parsed = parse_rla_wm(line)
    # The command trains on the data the card names: a dataset, or for the encoder its frames file.
    named = f"`{parsed.data.repo_id}`" if hasattr(parsed, "data") else f"--out={parsed.frames}"
    assert named in card.read_text()
