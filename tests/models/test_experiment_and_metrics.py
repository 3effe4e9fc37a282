"""Experiment YAML loading and the evaluation metrics."""

from pathlib import Path

import pytest
import torch

from rla_wm.evaluation.evaluate import feature_errors, markdown_table
from rla_wm.training.config import ConfigError, Experiment, TrainConfig, load_experiment, parse_config

CONFIGS = Path(__file__).resolve().parents[2] / "models" / "configs"


def test_shipped_configs_load():
    paths = sorted(CONFIGS.glob("*.yaml"))
    assert len(paths) >= 3
    for path in paths:
        experiment = load_experiment(path)
        assert isinstance(experiment.train.world_model, TrainConfig)
        assert Path(experiment.data.cache_root).is_absolute()
    sim = load_experiment(CONFIGS / "sim_pusht.yaml")
    # Relative data paths are relative to the config file's folder.
    assert Path(sim.data.dataset_root) == (CONFIGS / "../../data/sim_expert").resolve()
    assert Path(sim.data.action_free[0].dataset_root) == (CONFIGS / "../../data/sim_play").resolve()
    assert sim.train.world_model.steps == 300 and sim.policy.action_reads_rla is True


def test_command_line_overrides_the_file_field_by_field(tmp_path):
    experiment = parse_config(
        Experiment,
        [
            f"--config_path={CONFIGS / 'sim_pusht.yaml'}",
            "--train.world_model.steps=7",
            "--policy.action_reads_rla=false",
            "--policy_training.labelled_fraction=0.25",
            "--data.action_free=[{dataset_root: other, repo_id: t/other}]",
            "--encoder.resolution",  # the space-separated form works too
            "112",
        ],
    )
    assert experiment.train.world_model.steps == 7
    assert experiment.train.rla.steps == 400  # the file's value where nothing overrides it
    assert experiment.policy.action_reads_rla is False
    assert experiment.policy_training.labelled_fraction == 0.25
    assert experiment.encoder.resolution == 112
    assert [ref.repo_id for ref in experiment.data.action_free] == ["t/other"]
    # A path typed on the command line is relative to the current folder; the file's paths stay relative to it.
    assert experiment.data.action_free[0].dataset_root == str(Path("other").resolve())
    assert Path(experiment.data.dataset_root) == (CONFIGS / "../../data/sim_expert").resolve()
    typed = parse_config(Experiment, [f"--config_path={CONFIGS / 'sim_pusht.yaml'}", "--data.dataset_root=data/x"])
    assert typed.data.dataset_root == str(Path("data/x").resolve())
    assert Path(typed.data.cache_root) == (CONFIGS / "../../data/feature_cache").resolve()
    # Without a file, everything comes from the command line; paths are relative to the current folder.
    bare = parse_config(Experiment, ["--data.dataset_root=d", "--data.repo_id=t/d"])
    assert bare.data.dataset_root == str(Path("d").resolve()) and bare.train.policy == TrainConfig()


def test_unknown_and_missing_keys_and_bad_values_are_reported(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("data: {dataset_root: d, repo_id: r}\ntrain: {rla: {stepz: 10}}\n")
    with pytest.raises(ConfigError, match="stepz"):
        load_experiment(config)
    config.write_text("data: {repo_id: r}\n")
    with pytest.raises(ConfigError, match="dataset_root"):
        load_experiment(config)
    with pytest.raises(ConfigError, match="does not exist"):
        load_experiment(tmp_path / "missing.yaml")
    config.write_text("")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_experiment(config)
    config.write_text("data: {dataset_root: d, repo_id: r}\n")
    for override, message in (
        ("--train.rla.stepz=3", "stepz"),
        ("--rla.token_dim=3", "token_dim"),  # measured on the data, not chosen
        ("--train.rla.steps=many", "train.rla.steps"),
        ("--policy.width=1.5", "policy.width"),
        ("--policy.action_reads_rla=maybe", "policy.action_reads_rla"),
        ("--policy_training.state_dropout=1.0", "state_dropout must be in"),
        ("--train.policy.mixed_precision=fp8", "mixed_precision must be one of"),
        ("--data.held_out_fraction=0", "held_out_fraction"),
        ("--train.rla.steps", "expected one argument"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_experiment(config, [override])


def test_feature_errors():
    truth = torch.randn(4, 6, 8)
    assert feature_errors(truth, truth) == pytest.approx({"l1": 0.0, "cosine": 0.0}, abs=1e-6)
    errors = feature_errors(truth + 1.0, truth)
    assert errors["l1"] == pytest.approx(1.0)
    assert feature_errors(-truth, truth)["cosine"] == pytest.approx(2.0)


def test_markdown_table_lists_every_model_and_horizon():
    results = {
        "copy-last": {5: {"l1": 0.2, "cosine": 0.1}, 10: {"l1": 0.3, "cosine": 0.2}},
        "rla-wm": {5: {"l1": 0.1, "cosine": 0.05}, 10: {"l1": 0.15, "cosine": 0.1}},
    }
    table = markdown_table(results, {"rla-wm": {"ms": 12.0, "gflops": 1.5}}, {"l1": 0.05, "cosine": 0.01})
    assert "L1 @5" in table and "L1 @10" in table and "cos-dist @10" in table
    assert "| rla-wm | 0.1000 | 0.1500 | 0.0500 | 0.1000 | 12.0 | 1.500 |" in table
    assert "reconstruction at h=5: L1 0.0500" in table
