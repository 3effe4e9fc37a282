"""Chunk policy: shapes, chunks start at the state and stay bounded, checkpoint round trip and errors."""
import json

import pytest
import torch

from rla_wm.checkpoint import CheckpointError
from rla_wm.policy import ChunkPolicy, PolicyConfig

CONFIG = PolicyConfig(token_dim=16, num_tokens=9, width=32, heads=2, chunk_length=5)


def test_chunk_shape_and_increment_bound():
    torch.manual_seed(0)
    policy = ChunkPolicy(CONFIG).eval()
    state = torch.tensor([[100.0, 200.0], [5.0, 500.0]])
    chunk = policy(torch.randn(2, 9, 16), state)
    assert chunk.shape == (2, 5, 2)
    steps = torch.diff(torch.cat([state[:, None], chunk], dim=1), dim=1).abs()
    assert (steps <= torch.tensor(CONFIG.max_delta) + 1e-4).all()
    assert (chunk >= 0).all() and (chunk <= 512).all()


def test_wrong_shapes_raise():
    policy = ChunkPolicy(CONFIG)
    with pytest.raises(ValueError, match="tokens"):
        policy(torch.randn(1, 10, 16), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="state"):
        policy(torch.randn(1, 9, 16), torch.zeros(1, 3))


def test_checkpoint_round_trip(tmp_path):
    policy = ChunkPolicy(CONFIG).eval()
    policy.save(tmp_path / "ckpt")
    loaded, meta = ChunkPolicy.load(tmp_path / "ckpt")
    tokens, state = torch.randn(1, 9, 16), torch.tensor([[10.0, 20.0]])
    torch.testing.assert_close(loaded(tokens, state), policy(tokens, state))
    assert meta["kind"] == "chunk_policy"


def test_missing_corrupt_and_mismatched_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        ChunkPolicy.load(tmp_path / "nothing")
    ChunkPolicy(CONFIG).save(tmp_path / "ok")
    (tmp_path / "ok" / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="unreadable"):
        ChunkPolicy.load(tmp_path / "ok")
    ChunkPolicy(CONFIG).save(tmp_path / "mismatch")
    meta = json.loads((tmp_path / "mismatch" / "config.json").read_text())
    meta["config"]["width"] = 64
    (tmp_path / "mismatch" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not fit"):
        ChunkPolicy.load(tmp_path / "mismatch")
    meta["kind"] = "rla_autoencoder"
    (tmp_path / "mismatch" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="expected 'chunk_policy'"):
        ChunkPolicy.load(tmp_path / "mismatch")
