"""A tiny SO-101 dataset in LeRobot's SO-101 layout (degrees, gripper 0..100, `<joint>.pos` names, front and
wrist cameras), read back into radians for the models, and a world action model trained on it for a few steps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from rla_wm.data.datasets import SO101_CONVERSION, FeatureCache
from rla_wm.envs.so101.dataset import EXPERT_TASK, PLAY_TASK, record_so101_dataset, so101_features
from rla_wm.envs.so101.lerobot_units import FEATURE_NAMES, ROBOT_TYPE, default_units
from rla_wm.envs.so101.sim import HOME, urdf_limits

pytestmark = pytest.mark.timeout(600)

EPISODES, STEPS, SIZE = 3, 14, 32


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("so101")
    record_so101_dataset(root / "demos", "t/demos", episodes=EPISODES, steps_per_episode=STEPS, image_size=SIZE)
    record_so101_dataset(
        root / "play", "t/play", episodes=1, steps_per_episode=STEPS, seed=5, policy="play", with_actions=False,
        image_size=SIZE,
    )  # fmt: skip
    return root


def test_the_dataset_has_lerobots_so101_layout_and_units(datasets):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    demos = LeRobotDataset("t/demos", root=datasets / "demos")
    assert demos.meta.robot_type == ROBOT_TYPE and demos.fps == 10 and demos.num_episodes == EPISODES
    stored = {key: demos.meta.features[key] for key in so101_features(SIZE, SIZE)}
    for key, feature in so101_features(SIZE, SIZE).items():
        assert stored[key]["dtype"] == feature["dtype"] and tuple(stored[key]["shape"]) == feature["shape"], key
        assert list(stored[key]["names"]) == list(feature["names"]), key
    assert list(demos.meta.tasks.index) == [EXPERT_TASK]
    first = demos[0]
    # Every episode starts at HOME: in degrees, gripper 0 rad = 9.09 of 0..100.
    np.testing.assert_allclose(first["observation.state"].numpy(), default_units().to_lerobot(HOME), atol=1e-3)
    for camera in ("front", "wrist"):
        image = first[f"observation.images.{camera}"]
        assert tuple(image.shape) == (3, SIZE, SIZE) and float(image.std()) > 0.0
    play = LeRobotDataset("t/play", root=datasets / "play")
    assert "action" not in play.meta.features and list(play.meta.tasks.index) == [PLAY_TASK]
    assert play.meta.features["observation.state"]["names"] == list(FEATURE_NAMES)


def test_the_feature_cache_reads_the_joints_back_in_radians(datasets, tmp_path):
    from rla_wm.models.encoder import EncoderConfig, make_random_vit
    from rla_wm.training.train import build_encoder

    folder = make_random_vit(tmp_path / "encoder", hidden_size=32, layers=1, heads=2, patch_size=14, image_size=28)
    encoder = build_encoder(EncoderConfig(model=str(folder), resolution=28))
    cache = FeatureCache.build(
        datasets / "demos", "t/demos", encoder, tmp_path / "cache", image_key="observation.images.front", progress=False
    )
    assert cache.meta["joint_conversion"] == {"observation.state": SO101_CONVERSION, "action": SO101_CONVERSION}
    limits = urdf_limits()
    for episode in cache.episodes:
        states, actions = cache.states(episode), cache.actions(episode)
        np.testing.assert_allclose(states[0], HOME, atol=1e-5)  # radians again, the URDF's joint order
        assert (states >= limits.lower - 0.05).all() and (states <= limits.upper + 0.05).all()
        assert (actions >= limits.lower).all() and (actions <= limits.upper).all()
        # The expert keeps its jaws shut (0 rad) and its wrist unrolled.
        np.testing.assert_allclose(actions[:, [4, 5]], 0.0, atol=0.02)
    with pytest.raises(Exception, match="cameras"):
        FeatureCache.build(datasets / "demos", "t/demos", encoder, tmp_path / "other", progress=False)


def test_a_world_action_model_trains_on_the_so101_layout(datasets):
    from rla_wm.cli import main
    from rla_wm.models.encoder import make_random_vit
    from rla_wm.models.policy import Policy
    from rla_wm.models.rla import RLAAutoencoder, RLAConfig

    root = datasets
    make_random_vit(root / "encoder", hidden_size=32, layers=1, heads=2, patch_size=14, image_size=56)
    torch.manual_seed(0)
    RLAAutoencoder(
        RLAConfig(
            token_dim=32,
            num_tokens=16,
            latent_tokens=2,
            latent_dim=4,
            width=32,
            heads=2,
            encoder_depth=1,
            decoder_depth=1,
            encoder_id="encoder@56",
        )
    ).save(root / "rla")  # untrained: the data path, not the autoencoder's quality, is under test
    config = {
        "data": {
            "dataset_root": "demos",
            "repo_id": "t/demos",
            "cache_root": "cache",
            "image_key": "observation.images.front",
            "action_free": [{"dataset_root": "play", "repo_id": "t/play"}],
            "held_out_fraction": 0.34,
        },
        "encoder": {"model": str(root / "encoder"), "resolution": 56},
        "policy": {"chunk_length": 3, "rla_horizon": 3, "width": 32, "depth": 1, "heads": 2, "mlp_ratio": 2.0},
        "train": {"policy": {"steps": 4, "batch_size": 8, "log_every": 2, "warmup_steps": 1}},
    }
    path = root / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    main(["train-policy", f"--config_path={path}", f"--rla_checkpoint={root / 'rla'}", f"--out={root / 'policy'}"])

    meta = json.loads((root / "policy" / "checkpoint" / "config.json").read_text())
    assert meta["data"]["action_free_windows"] > 0 and len(meta["data"]["train_episodes"]) == 2
    log = [json.loads(line) for line in (root / "policy" / "metrics.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [0, 2, 3] and all(np.isfinite(entry["loss"]) for entry in log)
    # The model learnt radians (the units of the graph and the gate), not the dataset's degrees.
    limits = urdf_limits()
    policy, _ = Policy.load(root / "policy" / "checkpoint")
    low, high = np.array(meta["config"]["action_low"]), np.array(meta["config"]["action_high"])
    assert (low >= limits.lower - 1e-3).all() and (high <= limits.upper + 1e-3).all()
    state_low, state_high = np.array(meta["config"]["state_low"]), np.array(meta["config"]["state_high"])
    assert (state_low >= limits.lower - 0.05).all() and (state_high <= limits.upper + 0.05).all()
    chunk = policy(torch.randn(1, 16, 32), torch.tensor(HOME, dtype=torch.float32)[None])
    assert chunk.shape == (1, 3, 6)
