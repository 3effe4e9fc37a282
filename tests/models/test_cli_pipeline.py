"""The `rla-wm` command line end to end on a tiny Push-T dataset: record, cache, train x3, evaluate."""

import json

import pytest
import yaml

from rla_wm.cli import main
from rla_wm.models.encoder import make_random_vit

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    main(["record-pusht", f"--root={root / 'labelled'}", "--repo_id=t/labelled", "--episodes=5", "--steps=24"])
    main(
        [
            "record-pusht",
            f"--root={root / 'video'}",
            "--repo_id=t/video",
            "--episodes=2",
            "--steps=24",
            "--seed=100",
            "--action_free=true",
        ]
    )
    encoder = make_random_vit(root / "encoder", hidden_size=32, layers=1, heads=2, patch_size=14, image_size=56)
    small = {"steps": 12, "batch_size": 8, "log_every": 4, "warmup_steps": 2}
    config = {
        "data": {
            "dataset_root": "labelled",
            "repo_id": "t/labelled",
            "cache_root": "cache",
            "action_free": [{"dataset_root": "video", "repo_id": "t/video"}],
            "held_out_fraction": 0.4,
        },
        "encoder": {"model": str(encoder), "resolution": 56},
        "rla": {"latent_tokens": 2, "latent_dim": 4, "width": 32, "encoder_depth": 1, "decoder_depth": 1, "heads": 2},
        "world_model": {"max_horizon": 6, "width": 32, "condition_depth": 1, "flow_depth": 1, "heads": 2},
        "regression": {"max_horizon": 6, "width": 32, "depth": 1, "heads": 2},
        "train": {
            "rla": {**small, "max_gap": 6},
            "world_model": {**small, "horizon": 3},
            "regression": {**small, "horizon": 3},
        },
        "evaluate": {"chunks": 2, "max_windows": 6, "euler_steps": 3},
    }
    path = root / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_pipeline_trains_and_evaluates_every_model(experiment, capsys):
    root = experiment.parent
    config = f"--config_path={experiment}"
    main(["cache-features", config])
    assert "2 episodes" in capsys.readouterr().out  # the action-free cache is built too
    main(["train-rla", config, f"--out={root / 'rla'}"])
    main(["train-wm", config, f"--rla_checkpoint={root / 'rla' / 'checkpoint'}", f"--out={root / 'wm'}"])
    # A command-line override wins over the file: 9 steps instead of 12.
    main(["train-regression", config, f"--out={root / 'reg'}", "--train.regression.steps=9"])
    for run in ("rla", "wm", "reg"):
        assert (root / run / "checkpoint" / "model.safetensors").is_file()
        assert (root / run / "loss.png").stat().st_size > 1000
        log = [json.loads(line) for line in (root / run / "metrics.jsonl").read_text().splitlines()]
        assert log[0]["step"] == 0 and log[-1]["step"] == (8 if run == "reg" else 11)
    rla_meta = json.loads((root / "rla" / "checkpoint" / "config.json").read_text())
    assert 0 < rla_meta["config"]["residual_scale"] != 1.0  # measured on the training pairs
    wm_meta = json.loads((root / "wm" / "checkpoint" / "config.json").read_text())
    assert wm_meta["config"]["latent_scale"] > 0 and wm_meta["train"]["horizon"] == 3
    assert wm_meta["config"]["action_high"][0] > wm_meta["config"]["action_low"][0]

    capsys.readouterr()
    main(
        [
            "evaluate",
            config,
            f"--rla_checkpoint={root / 'rla' / 'checkpoint'}",
            f"--wm_checkpoint={root / 'wm' / 'checkpoint'}",
            f"--regression_checkpoint={root / 'reg' / 'checkpoint'}",
            f"--out={root / 'eval'}",
            "--evaluate.samples=3",
        ]
    )
    table = capsys.readouterr().out
    for row in ("| copy-last |", "| rla-wm |", "| rla-wm mean of 3 |", "| regression |", "L1 @3", "L1 @6"):
        assert row in table
    assert "reconstruction" in table
    results = json.loads((root / "eval" / "results.json").read_text())
    assert set(results["results"]) == {"copy-last", "rla-wm", "rla-wm mean of 3", "regression"}
    # The mean of three flow samples is another prediction than the first sample alone.
    assert results["results"]["rla-wm mean of 3"] != results["results"]["rla-wm"]
    assert results["costs"]["rla-wm"]["gflops"] > results["costs"]["copy-last"]["gflops"] == 0
    for picture in ("error_vs_horizon_l1.png", "error_vs_horizon_cosine.png", "predictions_pca.png"):
        assert (root / "eval" / picture).stat().st_size > 1000


def test_world_model_refuses_an_autoencoder_of_another_encoder(experiment, tmp_path):
    from rla_wm.models.rla import RLAAutoencoder, RLAConfig

    RLAAutoencoder(
        RLAConfig(
            token_dim=32, num_tokens=16, encoder_id="other@56", width=32, heads=2, encoder_depth=1, decoder_depth=1
        )
    ).save(tmp_path / "foreign")
    with pytest.raises(ValueError, match="other@56"):
        main(
            [
                "train-wm",
                f"--config_path={experiment}",
                f"--rla_checkpoint={tmp_path / 'foreign'}",
                f"--out={tmp_path / 'x'}",
            ]
        )


def test_commands_refuse_unknown_fields_and_missing_arguments(experiment, tmp_path, capsys):
    from rla_wm.training.config import ConfigError

    with pytest.raises(ConfigError, match="--rla is the `rla:` section"):  # the flag is --rla_checkpoint
        main(["train-wm", f"--config_path={experiment}", "--rla=x", f"--out={tmp_path}"])
    with pytest.raises(ConfigError, match="rla_checkpoint"):
        main(["train-wm", f"--config_path={experiment}", f"--out={tmp_path}"])
    with pytest.raises(ConfigError, match="root"):
        main(["record-pusht", "--episodes=2"])
    assert main(["no-such-command"]) == 2
    assert "train-policy" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing ran
