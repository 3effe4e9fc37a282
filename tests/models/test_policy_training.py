"""World action model data and commands: windows, cached RLA targets, mixed batches, train/evaluate CLI."""

import json

import numpy as np
import pytest
import torch
import yaml

from rla_wm.data.datasets import DataError, FeatureCache
from rla_wm.data.policy_data import MixedBatchSampler, MixedWindows, PolicyWindowDataset, policy_statistics, rla_targets
from rla_wm.recording.thread_scheduling import keep_thread_scheduling

LENGTHS = [12, 9]


def fake_cache(folder, labelled: bool, lengths=LENGTHS) -> FeatureCache:
    """A feature cache written directly: token 0, channel 0 of frame t holds t; channel 1 the episode."""
    folder.mkdir(parents=True)
    total = sum(lengths)
    episode_index = np.repeat(np.arange(len(lengths)), lengths)
    frame_index = np.concatenate([np.arange(n) for n in lengths])
    features = np.zeros((total, 4, 3), dtype=np.float16)
    features[:, 0, 0] = frame_index
    features[:, 0, 1] = episode_index
    np.save(folder / "features.npy", features)
    index = {"episode_index": episode_index, "frame_index": frame_index}
    if labelled:
        index["states"] = np.stack([episode_index * 100 + frame_index, frame_index], axis=1).astype(np.float32)
        index["actions"] = index["states"] + np.float32(0.5)
    meta = {
        "episodes": list(range(len(lengths))),
        "episode_lengths": lengths,
        "encoder_id": "fake@8",
        "repo_id": f"t/{folder.name}",
        "tokens": 4,
        "channels": 3,
        "total_frames": total,
        "fps": 10,
        "has_actions": labelled,
        "grid": {"height": 2, "width": 2, "channels": 3},
        "created": "now",
    }
    return FeatureCache(folder, meta, index)


class StubAutoencoder:
    """z = (frame of s_t, frame of s_{t+h}); counts the pairs it encodes."""

    class config:
        encoder_id = "fake@8"
        latent_tokens = 1
        latent_dim = 2

    def __init__(self) -> None:
        self.pairs = 0

    def encode(self, current, future):
        self.pairs += len(current)
        return torch.stack([current[:, 0, 0], future[:, 0, 0]], dim=-1)[:, None]


def test_windows_pair_state_actions_and_rla_targets(tmp_path):
    cache = fake_cache(tmp_path / "labelled", labelled=True)
    stub = StubAutoencoder()
    targets = rla_targets(cache, stub, "d" * 64, horizon=4, progress=False)
    assert stub.pairs == (12 - 4) + (9 - 4)
    assert np.isnan(targets[cache.row(0, 8)]).all() and np.isfinite(targets[cache.row(0, 7)]).all()
    dataset = PolicyWindowDataset(cache, [0, 1], chunk_length=3, rla_horizon=4, labelled=True, targets=targets)
    # A window needs its RLA frame (t + 4) and its last action (t + 2) inside the episode.
    assert len(dataset) == (12 - 4) + (9 - 4)
    for index in (0, 7, len(dataset) - 1):
        episode, t = dataset.sample(index)
        current, z, state, actions, labelled, scene = dataset[index]
        assert current[0, 0] == t and current[0, 1] == episode
        assert z.tolist() == [[t, t + 4]]  # z between the window's first and last frame
        assert state.tolist() == [episode * 100 + t, t]
        assert actions[:, 1].tolist() == [t + 0.5, t + 1.5, t + 2.5]
        assert labelled.item() is True and scene.shape == (0,)  # no scenes asked for

    video = fake_cache(tmp_path / "video", labelled=False)
    free = PolicyWindowDataset(
        video, [0, 1], 3, 4, labelled=False, targets=rla_targets(video, stub, "d" * 64, 4, progress=False)
    )
    mixed = MixedWindows(dataset, [free])
    assert (mixed.labelled_count, mixed.action_free_count) == (13, 13)
    current, z, state, actions, labelled, scene = mixed[13]
    assert labelled.item() is False and state.abs().sum() == 0 and actions.shape == (3, 2)
    with pytest.raises(TypeError):
        free[0]  # action-free windows have no label sizes of their own
    with pytest.raises(DataError, match="actions"):
        PolicyWindowDataset(video, [0], 3, 4, labelled=True, targets=targets)
    with pytest.raises(DataError, match="another horizon"):
        PolicyWindowDataset(cache, [0], 3, 3, labelled=True, targets=targets)[8]  # t + 4 is past the end


def test_padded_windows_start_at_every_frame_and_hold_the_last_action_and_frame(tmp_path):
    cache = fake_cache(tmp_path / "labelled", labelled=True)
    stub = StubAutoencoder()
    targets = rla_targets(cache, stub, "d" * 64, horizon=4, progress=False, pad_end=True)
    assert stub.pairs == 12 + 9 and np.isfinite(targets).all()
    # Unpadded targets of the same weights and horizon are another file: NaN past the end again.
    assert np.isnan(rla_targets(cache, stub, "d" * 64, horizon=4, progress=False)[cache.row(0, 11)]).all()
    dataset = PolicyWindowDataset(cache, [0, 1], 3, 4, labelled=True, targets=targets, pad_end=True)
    assert len(dataset) == 12 + 9
    last = {(episode, t): index for index in range(len(dataset)) for episode, t in [dataset.sample(index)]}
    _, z, state, actions, _, _ = dataset[last[(0, 10)]]
    assert z.tolist() == [[10, 11]]  # the RLA frame t + 4 is past the end: the last frame instead
    assert actions[:, 1].tolist() == [10.5, 11.5, 11.5]  # the last action held for the missing point
    _, z, state, actions, _, _ = dataset[last[(1, 8)]]
    assert z.tolist() == [[8, 8]] and actions[:, 1].tolist() == [8.5, 8.5, 8.5] and state.tolist() == [108, 8]
    _, z, _, actions, _, _ = dataset[last[(0, 2)]]
    assert z.tolist() == [[2, 6]] and actions[:, 1].tolist() == [2.5, 3.5, 4.5]  # inside: as unpadded


def test_rla_targets_are_computed_once_per_autoencoder_and_horizon(tmp_path):
    cache = fake_cache(tmp_path / "labelled", labelled=True)
    stub = StubAutoencoder()
    first = np.array(rla_targets(cache, stub, "a" * 64, 2, progress=False))
    encoded = stub.pairs
    again = rla_targets(cache, stub, "a" * 64, 2, progress=False)
    assert stub.pairs == encoded  # reused from the cache folder
    np.testing.assert_array_equal(np.array(again), first)
    rla_targets(cache, stub, "b" * 64, 2, progress=False)  # other weights
    rla_targets(cache, stub, "a" * 64, 3, progress=False)  # other horizon
    assert stub.pairs == 3 * encoded - len(LENGTHS)
    stub.config.encoder_id = "other@8"
    try:
        with pytest.raises(ValueError, match="other@8"):
            rla_targets(cache, stub, "a" * 64, 2, progress=False)
    finally:
        stub.config.encoder_id = "fake@8"


def test_mixed_batches_hold_the_configured_share_of_labelled_windows():
    sampler = MixedBatchSampler(labelled_count=40, action_free_count=100, batch_size=8, labelled_fraction=0.25, seed=3)
    passes = [list(sampler), list(sampler)]
    assert len(passes[0]) == len(sampler) == 20
    for batch in passes[0]:
        assert len(batch) == 8 and sum(i < 40 for i in batch) == 2 and all(0 <= i < 140 for i in batch)
    assert sorted(i for b in passes[0] for i in b if i < 40) == list(range(40))  # every labelled window once
    assert passes[0] != passes[1]  # a new shuffle every pass
    assert list(MixedBatchSampler(40, 100, 8, 0.25, seed=3)) == passes[0]  # reproducible
    only = MixedBatchSampler(labelled_count=10, action_free_count=0, batch_size=4, labelled_fraction=0.5)
    assert all(len(b) == 4 and max(b) < 10 for b in only)
    with pytest.raises(DataError):
        MixedBatchSampler(0, 10, 4, 0.5)
    with pytest.raises(ValueError, match="labelled_fraction"):
        MixedBatchSampler(10, 10, 4, 0.0)


def test_statistics_bound_every_recorded_step(tmp_path):
    cache = fake_cache(tmp_path / "labelled", labelled=True)
    stats = policy_statistics(cache, [0, 1])
    # Steps: 0.5 from state to the first target, then 1.0 per frame.
    assert stats["max_delta"][1] == pytest.approx(1.1, abs=0.01)
    assert stats["state_low"] == (0.0, 0.0) and stats["state_high"] == (108.0, 11.0)
    assert stats["action_low"] == (0.5, 0.5)


# --------------------------------------------------------------------------- the commands end to end


def _write_dataset(
    root, repo_id: str, episodes: int, steps: int, with_actions: bool, seed: int, with_scene: bool = False
):
    """A LeRobot dataset of a bright square moving along a random walk (state = its position);
    `with_scene` adds observation.environment_state (the square's position scaled to [-1, 1])."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    features = {
        "observation.image": {"dtype": "video", "shape": (32, 32, 3), "names": ["height", "width", "channel"]},
        "observation.state": {"dtype": "float32", "shape": (2,), "names": ["x", "y"]},
    }
    if with_scene:
        features["observation.environment_state"] = {"dtype": "float32", "shape": (2,), "names": ["u", "v"]}
    if with_actions:
        features["action"] = {"dtype": "float32", "shape": (2,), "names": ["x", "y"]}
    dataset = LeRobotDataset.create(repo_id, fps=10, features=features, root=root, use_videos=True)
    rng = np.random.default_rng(seed)
    for _ in range(episodes):
        position = rng.uniform(6, 26, 2)
        for _ in range(steps):
            target = np.clip(position + rng.normal(0, 2, 2), 4, 28)
            image = np.zeros((32, 32, 3), dtype=np.uint8)
            x, y = position.round().astype(int)
            image[y - 3 : y + 3, x - 3 : x + 3] = 255
            frame = {"observation.image": image, "observation.state": position.astype(np.float32), "task": "move"}
            if with_scene:
                frame["observation.environment_state"] = (position / 16 - 1).astype(np.float32)
            if with_actions:
                frame["action"] = target.astype(np.float32)
            dataset.add_frame(frame)
            position = target
        with keep_thread_scheduling():  # SVT-AV1 as root
            dataset.save_episode()
    dataset.finalize()


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    from rla_wm.models.encoder import make_random_vit
    from rla_wm.models.rla import RLAAutoencoder, RLAConfig

    root = tmp_path_factory.mktemp("wam")
    _write_dataset(root / "labelled", "t/labelled", episodes=5, steps=16, with_actions=True, seed=0)
    _write_dataset(root / "video", "t/video", episodes=3, steps=16, with_actions=False, seed=1)
    encoder = make_random_vit(root / "encoder", hidden_size=32, layers=1, heads=2, patch_size=14, image_size=56)
    # An untrained autoencoder gives z just as well: the commands, not its quality, are under test.
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
    ).save(root / "rla")
    config = {
        "data": {
            "dataset_root": "labelled",
            "repo_id": "t/labelled",
            "cache_root": "cache",
            "action_free": [{"dataset_root": "video", "repo_id": "t/video"}],
            "held_out_fraction": 0.4,
        },
        "encoder": {"model": str(encoder), "resolution": 56},
        "policy": {"chunk_length": 4, "rla_horizon": 5, "width": 32, "depth": 1, "heads": 2, "mlp_ratio": 2.0},
        "policy_training": {"labelled_fraction": 0.5, "state_dropout": 0.25},
        "train": {"policy": {"steps": 10, "batch_size": 8, "log_every": 3, "warmup_steps": 2, "lr": 1e-3}},
        "evaluate": {"policy_max_windows": 20},
    }
    path = root / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_train_policy_and_evaluate_policy_commands(experiment, capsys):
    from rla_wm.cli import main
    from rla_wm.models.policy import Policy

    root = experiment.parent
    rla = str(root / "rla")
    config = f"--config_path={experiment}"
    main(["train-policy", config, f"--rla_checkpoint={rla}", f"--out={root / 'wam'}"])
    targets = sorted((root / "cache").glob("*/*/rla_targets/*_h5.npy"))
    assert len(targets) == 2  # labelled and action-free caches
    stamps = [p.stat().st_mtime_ns for p in targets]
    main(
        [
            "train-policy",
            config,
            f"--rla_checkpoint={rla}",
            f"--out={root / 'bc'}",
            "--policy_training.use_action_free=false",
            "--policy.action_reads_rla=false",
            "--policy_training.max_labelled_episodes=2",
        ]
    )
    assert [p.stat().st_mtime_ns for p in targets] == stamps  # targets reused, not recomputed

    for run, free, reads in (("wam", True, True), ("bc", False, False)):
        meta = json.loads((root / run / "checkpoint" / "config.json").read_text())
        assert meta["kind"] == "world_action_model" and meta["config"]["action_reads_rla"] is reads
        assert (meta["data"]["action_free_windows"] > 0) is free
        assert meta["data"]["labelled_per_batch"] == (4 if free else 8)
        # 3 training episodes of 16 frames, 11 windows each; the BC run keeps 2 of them.
        assert len(meta["data"]["train_episodes"]) == (3 if free else 2)
        assert meta["data"]["labelled_windows"] == 11 * len(meta["data"]["train_episodes"])
        assert meta["config"]["latent_scale"] > 0 and meta["config"]["encoder_id"] == "encoder@56"
        assert meta["config"]["state_high"][0] > meta["config"]["state_low"][0] and min(meta["config"]["max_delta"]) > 0
        log = [json.loads(line) for line in (root / run / "metrics.jsonl").read_text().splitlines()]
        assert [e["step"] for e in log] == [0, 3, 6, 9]
        assert all(e["labelled_fraction"] == (0.5 if free else 1.0) for e in log)
        assert (root / run / "loss.png").stat().st_size > 1000
        policy, _ = Policy.load(root / run / "checkpoint")
        assert policy(torch.randn(1, 16, 32), torch.tensor([[16.0, 16.0]])).shape == (1, 4, 2)

    capsys.readouterr()
    main(
        [
            "evaluate-policy",
            config,
            f"--policy_checkpoints=[{root / 'wam' / 'checkpoint'}, {root / 'bc' / 'checkpoint'}]",
            f"--out={root / 'eval'}",
        ]
    )
    table = capsys.readouterr().out
    for row in ("| wam |", "| bc |", "| hold (state repeated) |", "RLA cos centred"):
        assert row in table
    results = json.loads((root / "eval" / "results.json").read_text())
    assert set(results["policies"]) == {"wam", "bc"}
    for metrics in results["policies"].values():
        assert metrics["windows"] == 20 and len(metrics["action_l1_per_step"]) == 4
        assert np.isfinite(
            [
                metrics["action_mse"],
                metrics["no_state_action_l1"],
                metrics["rla_cosine"],
                metrics["rla_cosine_centred"],
                metrics["rla_mse_mean_z"],
            ]
        ).all()
    assert len({line.count("|") for line in table.splitlines()[:5]}) == 1  # header, rule, 2 policies, hold
    assert (root / "eval" / "policy_chunks.png").stat().st_size > 1000


def test_scene_readout_trains_from_the_recorded_environment_state(experiment, tmp_path, capsys):
    """policy_training.scene_weight: the labelled dataset's observation.environment_state becomes the scene
    head's target; a dataset without it is refused with the reason."""
    from rla_wm.cli import main
    from rla_wm.models.policy import Policy
    from rla_wm.training.config import ConfigError

    root = experiment.parent
    _write_dataset(tmp_path / "scene", "t/scene", episodes=3, steps=16, with_actions=True, seed=3, with_scene=True)
    args = [
        "train-policy",
        f"--config_path={experiment}",
        f"--rla_checkpoint={root / 'rla'}",
        "--policy_training.use_action_free=false",
        "--policy_training.scene_weight=1.0",
    ]
    with pytest.raises(ConfigError, match="environment_state"):
        main([*args, f"--out={tmp_path / 'refused'}"])  # the fixture's dataset records no scene
    main(
        [
            *args,
            f"--out={tmp_path / 'run'}",
            f"--data.dataset_root={tmp_path / 'scene'}",
            "--data.repo_id=t/scene",
            f"--data.cache_root={tmp_path / 'cache'}",
            "--data.held_out_fraction=0.3",
        ]
    )
    meta = json.loads((tmp_path / "run" / "checkpoint" / "config.json").read_text())
    assert meta["config"]["scene_dim"] == 2
    assert all(low < high for low, high in zip(meta["config"]["scene_low"], meta["config"]["scene_high"]))
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(entry["scene_loss"] > 0 for entry in log)
    policy, _ = Policy.load(tmp_path / "run" / "checkpoint")
    tokens = torch.randn(2, 16, 32)
    assert policy.estimate_scene(tokens).shape == (2, 2)
    assert policy(tokens, torch.tensor([[16.0, 16.0], [8.0, 8.0]])).shape == (2, 4, 2)  # acts without a scene

    capsys.readouterr()
    main(
        [
            "evaluate-policy",
            f"--config_path={experiment}",
            f"--policy_checkpoints=[{tmp_path / 'run' / 'checkpoint'}]",
            f"--data.dataset_root={tmp_path / 'scene'}",
            "--data.repo_id=t/scene",
            f"--data.cache_root={tmp_path / 'cache'}",
            "--data.held_out_fraction=0.3",
            f"--out={tmp_path / 'eval'}",
        ]
    )
    assert "scene read-out L1 per variable" in capsys.readouterr().out
    (metrics,) = json.loads((tmp_path / "eval" / "results.json").read_text())["policies"].values()
    assert len(metrics["scene_l1"]) == len(metrics["scene_l1_constant"]) == 2
    assert all(np.isfinite(metrics["scene_l1"])) and min(metrics["scene_l1_constant"]) > 0


def test_policy_commands_refuse_bad_input(experiment, tmp_path):
    from rla_wm.cli import main
    from rla_wm.models.rla import RLAAutoencoder, RLAConfig
    from rla_wm.training.config import ConfigError

    RLAAutoencoder(
        RLAConfig(
            token_dim=32, num_tokens=16, encoder_id="other@56", width=32, heads=2, encoder_depth=1, decoder_depth=1
        )
    ).save(tmp_path / "foreign")
    config, foreign, out = (
        f"--config_path={experiment}",
        f"--rla_checkpoint={tmp_path / 'foreign'}",
        f"--out={tmp_path}",
    )
    with pytest.raises(ValueError, match="other@56"):
        main(["train-policy", config, foreign, out])
    with pytest.raises(ConfigError, match="width=3"):  # a field needs its section
        main(["train-policy", config, foreign, out, "--width=3"])
    with pytest.raises(ConfigError, match="ratio"):
        main(["train-policy", config, foreign, out, "--policy_training.ratio=3"])
    with pytest.raises(ConfigError, match="labelled_fraction must be in"):
        main(["train-policy", config, foreign, out, "--policy_training.labelled_fraction=1.5"])
    with pytest.raises(ConfigError, match="policy_checkpoints is empty"):
        main(["evaluate-policy", config, "--policy_checkpoints=[]", f"--out={tmp_path / 'eval'}"])
    from rla_wm.models.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="not a checkpoint"):
        main(["evaluate-policy", config, f"--policy_checkpoints=[{tmp_path / 'none'}]", f"--out={tmp_path / 'eval'}"])
