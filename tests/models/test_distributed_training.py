"""Training under several processes: the same steps on the same data as one process.

Two CPU processes (torchrun, gloo) with a global batch of 8 (4 each) against one process
with 8: the batches, the losses and the learning rates match; the feature cache is built
once, by rank 0; one checkpoint is written, by rank 0.
"""

import json
import os
import socket
import subprocess
import sys

import pytest
import yaml

from rla_wm.training.config import ConfigError
from rla_wm.training.distributed import ShardedBatches, ShuffledBatches

pytestmark = pytest.mark.timeout(300)

RUN_TIMEOUT = 150  # seconds per launch; a hang in a collective must fail the test, not stall it

# Runs rla-wm commands in this process and records, per process, the feature caches it
# built, the checkpoints it wrote and the items of every batch it trained on.
DRIVER = """
import json, os, sys

from rla_wm.cli import main
from rla_wm.data.datasets import FeatureCache
from rla_wm.models.checkpoint import Checkpointable
from rla_wm.training import distributed

events_path, commands = sys.argv[1], json.loads(sys.argv[2])
rank = int(os.environ.get("RANK", "0"))
current = {"command": None}


def record(event, **values):
    with open(events_path, "a") as events:
        events.write(json.dumps({"event": event, "rank": rank, "command": current["command"], **values}) + "\\n")


build = FeatureCache._build.__func__


def counted_build(cls, source, *args, **kwargs):
    record("cache_built", repo_id=source.repo_id)
    return build(cls, source, *args, **kwargs)


FeatureCache._build = classmethod(counted_build)
save = Checkpointable.save


def counted_save(self, folder, extra=None):
    record("checkpoint_written", folder=str(folder))
    return save(self, folder, extra)


Checkpointable.save = counted_save
shards = distributed.ShardedBatches.__iter__


def recorded_shards(self):
    for batch in shards(self):
        record("batch", items=batch)
        yield batch


distributed.ShardedBatches.__iter__ = recorded_shards
for command in commands:
    current["command"] = command[0]
    main(command)
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """A tiny Push-T experiment: 4 labelled and 2 action-free episodes, a tiny encoder and autoencoder."""
    import torch

    from rla_wm.cli import main
    from rla_wm.models.encoder import make_random_vit
    from rla_wm.models.rla import RLAAutoencoder, RLAConfig

    root = tmp_path_factory.mktemp("distributed")
    main(["record-pusht", f"--root={root / 'labelled'}", "--repo_id=t/labelled", "--episodes=4", "--steps=20"])
    main(
        [
            "record-pusht",
            f"--root={root / 'video'}",
            "--repo_id=t/video",
            "--episodes=2",
            "--steps=20",
            "--seed=100",
            "--action_free=true",
        ]
    )
    encoder = make_random_vit(root / "encoder", hidden_size=32, layers=1, heads=2, patch_size=14, image_size=56)
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
    small = {"steps": 6, "batch_size": 8, "log_every": 1, "warmup_steps": 2, "lr": 1e-3}
    config = {
        "data": {
            "dataset_root": "labelled",
            "repo_id": "t/labelled",
            "action_free": [{"dataset_root": "video", "repo_id": "t/video"}],
            "held_out_fraction": 0.25,
        },
        "encoder": {"model": str(encoder), "resolution": 56},
        "regression": {"max_horizon": 4, "width": 32, "depth": 1, "heads": 2},
        "policy": {"chunk_length": 4, "rla_horizon": 4, "width": 32, "depth": 1, "heads": 2},
        # No state dropout: its draws are each process's own, so they would differ from one process's.
        "policy_training": {"labelled_fraction": 0.5, "state_dropout": 0.0},
        "train": {"regression": {**small, "horizon": 3}, "policy": small},
    }
    path = root / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def launch(experiment, processes: int) -> tuple[list[dict], dict]:
    """Train the regression baseline and the policy with `processes` processes; (events, run folders)."""
    root = experiment.parent
    name = f"n{processes}"
    runs = {"train-regression": root / name / "regression", "train-policy": root / name / "policy"}
    # Each launch gets its own feature cache, so each has one to build.
    common = [f"--config_path={experiment}", f"--data.cache_root={root / f'cache_{name}'}"]
    commands = [
        ["train-regression", *common, f"--out={runs['train-regression']}"],
        ["train-policy", *common, f"--rla_checkpoint={root / 'rla'}", f"--out={runs['train-policy']}"],
    ]
    driver, events = root / "driver.py", root / f"events_{name}.jsonl"
    driver.write_text(DRIVER)
    if processes == 1:
        launcher = [sys.executable, str(driver)]
    else:
        launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={processes}"]
        launcher += [f"--master-port={free_port()}", str(driver)]
    # One thread per process in both launches: the same arithmetic, and no oversubscribed cores.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [*launcher, str(events), json.dumps(commands)],
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert result.returncode == 0, f"{processes}-process run failed:\n{result.stderr[-6000:]}"
    return [json.loads(line) for line in events.read_text().splitlines()], runs


@pytest.fixture(scope="module")
def launches(experiment):
    return {processes: launch(experiment, processes) for processes in (1, 2)}


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_train_on_the_same_batches_with_the_same_losses(launches):
    (single, single_runs), (double, double_runs) = launches[1], launches[2]
    for command in ("train-regression", "train-policy"):
        one = [e["items"] for e in single if e["event"] == "batch" and e["command"] == command]
        shards = {
            rank: [
                e["items"] for e in double if e["event"] == "batch" and e["command"] == command and e["rank"] == rank
            ]
            for rank in (0, 1)
        }
        assert len(one) >= 6 and len(shards[0]) == len(shards[1]) == len(one)
        for batch, first, second in zip(one, shards[0], shards[1]):
            assert len(first) == len(second) == len(batch) // 2 == 4
            assert sorted(first + second) == sorted(batch)  # the global batch, split without overlap

        one_log, two_log = metrics(single_runs[command]), metrics(double_runs[command])
        assert [e["step"] for e in one_log] == [e["step"] for e in two_log] == list(range(6))
        # The schedule advances once per step, not once per process.
        assert [e["lr"] for e in one_log] == pytest.approx([e["lr"] for e in two_log], rel=1e-9)
        losses = [e["loss"] for e in one_log]
        # Rounding of the split sums moves the losses by about 1e-7 (relative); gradients that
        # are not averaged across the processes move them by 1e-3 to 1e-1 within these 6 steps.
        assert max(losses) - min(losses) > 0.02 * max(losses)
        assert [e["loss"] for e in two_log] == pytest.approx(losses, rel=1e-4)

    policy = json.loads((double_runs["train-policy"] / "checkpoint" / "config.json").read_text())
    labelled_count = policy["data"]["labelled_windows"]
    # Every process gets half of the batch's labelled windows and half of its action-free ones.
    for items in (e["items"] for e in double if e["event"] == "batch" and e["command"] == "train-policy"):
        assert sum(i < labelled_count for i in items) == 2


def test_two_processes_build_the_cache_once_and_write_one_checkpoint_from_rank_0(launches):
    events, runs = launches[2]
    built = [(e["rank"], e["repo_id"]) for e in events if e["event"] == "cache_built"]
    assert sorted(built) == [(0, "t/labelled"), (0, "t/video")]
    written = [(e["rank"], e["command"]) for e in events if e["event"] == "checkpoint_written"]
    assert sorted(written) == [(0, "train-policy"), (0, "train-regression")]
    for run in runs.values():
        assert (run / "checkpoint" / "model.safetensors").is_file() and (run / "loss.png").is_file()
    # The single process builds and writes the same, so the counts above are not an artefact of the launcher.
    single = launches[1][0]
    assert len([e for e in single if e["event"] == "cache_built"]) == 2
    assert len([e for e in single if e["event"] == "checkpoint_written"]) == 2


def test_sharding_deals_each_global_batch_round_robin():
    batches = ShuffledBatches(item_count=20, batch_size=6, seed=3)
    first_pass, second_pass = list(batches), list(batches)
    assert len(first_pass) == len(batches) == 3 and all(len(b) == 6 for b in first_pass)
    assert len({i for b in first_pass for i in b}) == 18  # distinct items; the short last batch is dropped
    assert first_pass != second_pass  # a new shuffle every pass
    assert list(ShuffledBatches(20, 6, seed=3)) == first_pass  # the same in every process
    shards = [list(ShardedBatches(ShuffledBatches(20, 6, seed=3), rank, 3)) for rank in range(3)]
    for step, batch in enumerate(first_pass):
        assert [shard[step] for shard in shards] == [batch[0::3], batch[1::3], batch[2::3]]
    with pytest.raises(ValueError, match="does not split"):
        list(ShardedBatches(ShuffledBatches(20, 6), 0, 4))
    with pytest.raises(ConfigError, match="fewer than the batch_size"):
        ShuffledBatches(item_count=5, batch_size=6)
