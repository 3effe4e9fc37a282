"""The SO-101 arm's privileged rung, offline and in process: `rla-wm record-so101` stores the sim's cube pose
and zone as observation.environment_state (the vector /sim/environment_state carries), DART noise moves the
arm off the expert's path while the dataset keeps the expert's targets, a policy trains on it with each
state channel mapped to [-1, 1], and `rla-wm rollout --robot=so101` runs arm policies in process."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from rla_wm.cli import main
from rla_wm.data.datasets import FeatureCache, split_episodes
from rla_wm.envs.environment_state_encoder import EnvironmentStateEncoder
from rla_wm.envs.so101.environment_state import CUBE_STATE_CHANNELS, CUBE_STATE_ENCODER_ID, cube_state_tokens
from rla_wm.envs.so101.layout import sample_layout
from rla_wm.envs.so101.scene import CUBE_HALF
from rla_wm.evaluation.rollout import run_rollouts, tokens_function
from rla_wm.models.policy_loading import load_policy
from rla_wm.recording.environment import ENVIRONMENT_STATE_KEY

pytestmark = pytest.mark.timeout(600)

EPISODES, STEPS, SEED = 3, 40, 11


def record(root, noise: float) -> None:
    main(
        [
            "record-so101",
            f"--root={root}",
            "--repo_id=t/demos",
            f"--episodes={EPISODES}",
            f"--steps={STEPS}",
            f"--seed={SEED}",
            "--environment_state=true",
            f"--execution_noise={noise}",
            "--image_size=32",
        ]
    )


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    root = tmp_path_factory.mktemp("so101_state")
    record(root / "clean", 0.0)
    record(root / "dart", 0.05)
    return root


def cache_of(root, tmp_path) -> FeatureCache:
    return FeatureCache.build(
        root,
        "t/demos",
        EnvironmentStateEncoder(CUBE_STATE_ENCODER_ID),
        tmp_path,
        image_key=ENVIRONMENT_STATE_KEY,
        progress=False,
    )


def test_the_dataset_holds_the_cube_and_zone_of_every_frame(demos, tmp_path):
    cache = cache_of(demos / "clean", tmp_path)
    assert cache.encoder_id == CUBE_STATE_ENCODER_ID and cache.token_shape == (1, CUBE_STATE_CHANNELS)
    for episode in cache.episodes:
        tokens = cache.episode_features(episode)[:, 0]
        layout = sample_layout(SEED + episode)
        # Frame 0 is the seed's layout: the cube flat at its start, the zone where the seed puts it.
        expected = cube_state_tokens(
            [*layout.cube_xy, CUBE_HALF, np.cos(layout.cube_yaw / 2), 0, 0, np.sin(layout.cube_yaw / 2)],
            [*layout.zone_xy, 0.04],
        )[0]
        np.testing.assert_allclose(tokens[0], expected, atol=1e-3)
        # The zone stays put within an episode; the expert pushes the cube toward it.
        np.testing.assert_allclose(tokens[:, 7:], tokens[:1, 7:].repeat(len(tokens), 0), atol=1e-6)
        start, end = (np.linalg.norm(tokens[i, :2] - tokens[i, 7:9]) for i in (0, -1))
        assert end < 0.04 < start, (episode, start, end)


def test_dart_noise_moves_the_arm_but_the_recorded_targets_stay_the_experts(demos, tmp_path):
    clean, dart = cache_of(demos / "clean", tmp_path / "clean"), cache_of(demos / "dart", tmp_path / "dart")
    # Same seeds, same first frame and first expert target; then the executed noise makes the runs differ.
    np.testing.assert_allclose(clean.states(0)[0], dart.states(0)[0], atol=1e-6)
    np.testing.assert_allclose(clean.actions(0)[0], dart.actions(0)[0], atol=1e-5)
    length = min(clean.episode_length(0), dart.episode_length(0))
    assert np.abs(clean.states(0)[1:length] - dart.states(0)[1:length]).max() > 0.01
    # The noise is never recorded: each target is within the expert's step bound of the arm it saw
    # (white noise of 0.05 rad on the target would break that bound's smoothness between rows).
    for episode in dart.episodes:
        actions = dart.actions(episode)
        assert np.abs(np.diff(actions[:, :5], axis=0)).max() < 0.45
        np.testing.assert_allclose(actions[:, 5], 0.0, atol=0.02)  # jaws shut: the gripper gets no noise


def test_a_cube_state_policy_trains_with_each_channel_scaled_and_runs_in_process(demos, tmp_path):
    config = yaml.safe_load(open("models/configs/sim_so101_cube_state.yaml"))
    config["data"].update(dataset_root=str(demos / "dart"), repo_id="t/demos", cache_root=str(tmp_path / "cache"))
    config["data"]["held_out_fraction"] = 0.34
    config["policy"].update(width=32, depth=1, head_depth=1, flow_steps=2)
    config["train"]["policy"].update(steps=20, batch_size=8, log_every=10)
    config["train"]["rla"].update(steps=10, batch_size=8, min_gap=2, max_gap=4)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    main(["train-rla", f"--config_path={path}", f"--out={tmp_path / 'rla'}"])
    main(
        [
            "train-policy",
            f"--config_path={path}",
            f"--rla_checkpoint={tmp_path / 'rla' / 'checkpoint'}",
            f"--out={tmp_path / 'policy'}",
        ]
    )
    policy = load_policy(str(tmp_path / "policy" / "checkpoint"))
    settings = policy.config
    assert (settings.encoder_id, settings.num_tokens, settings.token_dim) == (CUBE_STATE_ENCODER_ID, 1, 10)
    assert (settings.state_dim, settings.action_dim) == (6, 6)
    # Each channel's training range -> [-1, 1]; the constant zone radius keeps a floor span, not 1e-6.
    cache = FeatureCache.load_or_build(
        demos / "dart", "t/demos", EnvironmentStateEncoder(CUBE_STATE_ENCODER_ID), tmp_path / "cache",
        image_key=ENVIRONMENT_STATE_KEY,
    )  # fmt: skip
    training, _ = split_episodes(cache.episodes, config["data"]["held_out_fraction"], config["data"]["seed"])
    tokens = np.concatenate([cache.episode_features(e)[:, 0] for e in training])
    low, high = np.array(settings.token_low), np.array(settings.token_high)
    np.testing.assert_allclose(low, tokens.min(axis=0), atol=1e-6)
    spans = tokens.max(axis=0) - tokens.min(axis=0)
    assert spans[9] == 0.0 and spans[[0, 1]].min() > 0.005  # the zone's radius is fixed; the cube moves
    # Each channel's span, but at least a tenth of the widest: the fixed radius is not divided by ~0.
    np.testing.assert_allclose(high - low, np.maximum(spans, 0.1 * spans.max()), atol=1e-5)
    # The trained policy drives the arm in process: joint targets inside the URDF's limits every step.
    summary, episodes = run_rollouts(
        policy,
        tokens_function(CUBE_STATE_ENCODER_ID, torch.device("cpu")),
        [1001],
        execute_steps=4,
        max_steps=12,
        progress=False,
        robot="so101",
    )
    assert summary.episodes == 1 and episodes[0].steps == 12 and episodes[0].replans == 3


def test_the_scripted_expert_solves_arm_episodes_through_rollout(capsys):
    main(["rollout", "--robot=so101", "--policy=expert:so101", "--episodes=2", "--seed=1001", "--max_steps=150"])
    assert "2/2 episodes succeeded" in capsys.readouterr().out
    with pytest.raises(Exception, match="robot"):
        main(["rollout", "--robot=ur5", "--policy=expert:so101", "--episodes=1"])


def test_world_models_train_on_the_extra_labelled_datasets_too(demos, tmp_path):
    """data.extra_labelled: the world models (and the autoencoder) train on every episode of those datasets
    beside the labelled training split, with the action range measured over all of them."""
    from rla_wm.models.checkpoint import read_checkpoint_meta
    from rla_wm.training.config import load_experiment
    from rla_wm.training.train import open_caches, world_model_chunks

    config = yaml.safe_load(open("models/configs/sim_so101_cube_state_world_model.yaml"))
    config["data"].update(dataset_root=str(demos / "clean"), repo_id="t/demos", cache_root=str(tmp_path / "cache"))
    config["data"]["extra_labelled"] = [{"dataset_root": str(demos / "dart"), "repo_id": "t/dart"}]
    config["data"]["held_out_fraction"] = 0.34
    config["world_model"].update(width=32, condition_depth=1, flow_depth=1)
    config["regression"].update(width=32, depth=1)
    for part in ("rla", "world_model", "regression"):
        config["train"][part].update(steps=4, batch_size=4, warmup_steps=1, log_every=2)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))

    experiment = load_experiment(path)
    clean, dart = open_caches(experiment, include_action_free=False, include_extra_labelled=True)
    assert dart.path != clean.path and dart.encoder_id == clean.encoder_id == CUBE_STATE_ENCODER_ID
    training, _ = split_episodes(clean.episodes, 0.34, config["data"]["seed"])
    horizon = config["train"]["world_model"]["horizon"]
    expected_chunks = sum(clean.episode_length(e) - horizon for e in training) + sum(
        dart.episode_length(e) - horizon for e in dart.episodes
    )

    class OneProcess:
        device = torch.device("cpu")

        @staticmethod
        def main_process_first():
            import contextlib

            return contextlib.nullcontext()

    _, dataset, actions = world_model_chunks(experiment, horizon, OneProcess())
    assert len(dataset) == expected_chunks
    every_action = np.concatenate([clean.actions(e) for e in training] + [dart.actions(e) for e in dart.episodes])
    np.testing.assert_allclose(actions["action_low"], every_action.min(0), atol=1e-6)
    np.testing.assert_allclose(actions["action_high"], every_action.max(0), atol=1e-6)
    # The extra dataset's actions count: its episodes push other cubes, so the range is not the split's alone.
    labelled_only = np.concatenate([clean.actions(e) for e in training])
    assert not np.allclose(every_action.max(0) - every_action.min(0), labelled_only.max(0) - labelled_only.min(0))

    main(["train-rla", f"--config_path={path}", f"--out={tmp_path / 'rla'}"])
    main(["train-regression", f"--config_path={path}", f"--out={tmp_path / 'regression'}"])
    main(
        [
            "train-wm",
            f"--config_path={path}",
            f"--rla_checkpoint={tmp_path / 'rla' / 'checkpoint'}",
            f"--out={tmp_path / 'wm'}",
        ]
    )
    for name, kind in (("regression", "regression_predictor"), ("wm", "rla_world_model")):
        saved = read_checkpoint_meta(tmp_path / name / "checkpoint", kind)["config"]
        np.testing.assert_allclose(saved["action_low"], actions["action_low"], atol=1e-6)
        np.testing.assert_allclose(saved["action_high"], actions["action_high"], atol=1e-6)
