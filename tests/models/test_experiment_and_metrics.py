"""Experiment YAML loading and the evaluation metrics."""

import pytest
import torch

from rla_wm.evaluation.evaluate import feature_errors, markdown_table
from rla_wm.training.config import ConfigError, TrainConfig, load_experiment


def test_shipped_configs_load():
    from pathlib import Path

    for path in (Path(__file__).resolve().parents[2] / "models" / "configs").glob("*.yaml"):
        experiment = load_experiment(path)
        assert isinstance(experiment.train["world_model"], TrainConfig)
        assert experiment.resolve(experiment.cache_root).is_absolute()


def test_unknown_and_missing_keys_are_reported(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("data: {dataset_root: d, repo_id: r}\ntrain: {rla: {stepz: 10}}\n")
    with pytest.raises(ConfigError, match="stepz"):
        load_experiment(config)
    config.write_text("data: {repo_id: r}\n")
    with pytest.raises(ConfigError, match="dataset_root"):
        load_experiment(config)
    with pytest.raises(ConfigError, match="does not exist"):
        load_experiment(tmp_path / "missing.yaml")


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
