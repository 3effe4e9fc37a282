"""Push-T recording to LeRobot v3, the feature cache and the training datasets built on it.

Everything is real: the simulator, LeRobot's parquet + AV1 video writer and reader, and a
(tiny, randomly initialised) DINOv2 encoder. Datasets are kept tiny so the file runs fast.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rla_wm.data.datasets import (
    ChunkDataset,
    DataError,
    FeatureCache,
    FramePairDataset,
    encoder_key,
    split_episodes,
)
from rla_wm.envs.pusht.dataset import record_pusht_dataset
from rla_wm.models.encoder import EncoderConfig, FeatureEncoder, make_random_vit
from rla_wm.recording.thread_scheduling import keep_thread_scheduling

os.environ.setdefault("SVT_LOG", "1")  # keep the AV1 encoder's banner out of the test output

EPISODES = 3
STEPS = 12
REPO = "local/pusht_test"
VIDEO_REPO = "local/pusht_video_only"


def _lerobot(root: Path, repo_id: str):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset(repo_id, root=root)


def _column(dataset, key: str) -> np.ndarray:
    return np.asarray(dataset.hf_dataset.with_format("numpy", columns=[key])[:][key])


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def recorded(work) -> Path:
    return record_pusht_dataset(
        work / "pusht", repo_id=REPO, episodes=EPISODES, steps_per_episode=STEPS, seed=0, progress=False
    )


@pytest.fixture(scope="module")
def video_only(work) -> Path:
    return record_pusht_dataset(
        work / "pusht_video",
        repo_id=VIDEO_REPO,
        episodes=2,
        steps_per_episode=10,
        seed=1,
        with_actions=False,
        progress=False,
    )


@pytest.fixture(scope="module")
def encoder(work) -> FeatureEncoder:
    folder = make_random_vit(work / "enc", hidden_size=32, layers=1, heads=2, patch_size=14, image_size=56)
    return FeatureEncoder(EncoderConfig(model=str(folder), resolution=56))


@pytest.fixture(scope="module")
def cache(recorded, encoder, work) -> FeatureCache:
    return FeatureCache.build(recorded, REPO, encoder, work / "cache", batch_size=5, progress=False)


@pytest.fixture(scope="module")
def video_cache(video_only, encoder, work) -> FeatureCache:
    return FeatureCache.load_or_build(video_only, VIDEO_REPO, encoder, work / "cache", progress=False)


class CountingEncoder:
    """Wraps an encoder and counts the frames it encodes."""

    def __init__(self, inner: FeatureEncoder) -> None:
        self.inner = inner
        self.config = inner.config
        self.grid = inner.grid
        self.encoder_id = inner.encoder_id
        self.frames = 0

    def __call__(self, frames):
        self.frames += len(frames)
        return self.inner(frames)


def _write_varied_dataset(root: Path, repo_id: str, lengths: list[int]) -> Path:
    """A small LeRobot dataset with episodes of the given lengths (random pixels, ramp actions)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    features = {
        "observation.image": {"dtype": "video", "shape": (32, 32, 3), "names": ["height", "width", "channel"]},
        "action": {"dtype": "float32", "shape": (2,), "names": ["x", "y"]},
    }
    dataset = LeRobotDataset.create(repo_id, fps=10, features=features, root=root, use_videos=True)
    rng = np.random.default_rng(0)
    for episode, length in enumerate(lengths):
        for t in range(length):
            dataset.add_frame(
                {
                    "observation.image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
                    "action": np.array([episode, t], dtype=np.float32),
                    "task": "noise",
                }
            )
        with keep_thread_scheduling():  # SVT-AV1 as root
            dataset.save_episode()
    dataset.finalize()
    return root


# --------------------------------------------------------------------------- recording


def test_recorded_dataset_is_lerobot_v3(recorded, video_only):
    dataset = _lerobot(recorded, REPO)
    assert dataset.meta.total_episodes == EPISODES
    assert dataset.meta.total_frames == EPISODES * STEPS
    assert dataset.meta.fps == 10
    assert dataset.meta.info["codebase_version"] == "v3.0"
    assert dataset.meta.video_keys == ["observation.image"]
    assert set(dataset.features) >= {"observation.image", "observation.state", "action"}
    frame_index = _column(dataset, "frame_index")
    np.testing.assert_allclose(_column(dataset, "timestamp"), frame_index / 10.0, atol=1e-6)
    item = dataset[STEPS + 3]
    assert item["observation.image"].shape == (3, 96, 96)
    assert int(item["episode_index"]) == 1 and int(item["frame_index"]) == 3
    assert "action" not in _lerobot(video_only, VIDEO_REPO).features


def test_random_policy_moves_smoothly_within_limits(recorded):
    dataset = _lerobot(recorded, REPO)
    actions = _column(dataset, "action").reshape(EPISODES, STEPS, 2)
    states = _column(dataset, "observation.state").reshape(EPISODES, STEPS, 2)
    assert actions.min() >= 20.0 and actions.max() <= 492.0
    steps = np.linalg.norm(np.diff(actions, axis=1), axis=-1)
    assert steps.max() <= 30.0 + 1e-3
    assert steps.mean() > 5.0  # it wanders, it does not jitter in place
    assert np.linalg.norm(states[:, -1] - states[:, 0], axis=-1).max() > 20.0  # the agent follows


def test_recording_is_reproducible(recorded, work):
    again = record_pusht_dataset(
        work / "pusht_again", repo_id=REPO, episodes=2, steps_per_episode=STEPS, seed=0, progress=False
    )
    other = record_pusht_dataset(
        work / "pusht_other", repo_id=REPO, episodes=1, steps_per_episode=STEPS, seed=7, progress=False
    )
    original = _column(_lerobot(recorded, REPO), "action")
    np.testing.assert_array_equal(_column(_lerobot(again, REPO), "action"), original[: 2 * STEPS])
    np.testing.assert_array_equal(
        _column(_lerobot(again, REPO), "observation.state"),
        _column(_lerobot(recorded, REPO), "observation.state")[: 2 * STEPS],
    )
    assert not np.array_equal(_column(_lerobot(other, REPO), "action"), original[:STEPS])
    with pytest.raises(FileExistsError):
        record_pusht_dataset(again, repo_id=REPO, episodes=1, steps_per_episode=2, progress=False)


def test_execution_noise_moves_the_agent_but_keeps_the_recorded_action(work):
    """DART recording: the sim executes action + noise, the dataset keeps the commanded action."""

    def toward_centre(frame, rng):
        return np.array([256.0, 256.0], dtype=np.float32)

    def record(name: str, noise: float) -> tuple[np.ndarray, np.ndarray]:
        root = record_pusht_dataset(
            work / name, repo_id=REPO, episodes=1, steps_per_episode=STEPS, seed=3, policy=toward_centre,
            execution_noise_px=noise, progress=False,
        )  # fmt: skip
        dataset = _lerobot(root, REPO)
        return _column(dataset, "action"), _column(dataset, "observation.state")

    clean_actions, clean_states = record("noise_free", 0.0)
    noisy_actions, noisy_states = record("noisy", 15.0)
    np.testing.assert_array_equal(noisy_actions, clean_actions)
    assert np.allclose(noisy_actions, 256.0)
    np.testing.assert_array_equal(noisy_states[0], clean_states[0])  # same start, then the noise acts
    assert np.abs(noisy_states[2:] - clean_states[2:]).max() > 2.0
    with pytest.raises(ValueError, match="execution_noise_px"):
        record_pusht_dataset(work / "bad", repo_id=REPO, episodes=1, steps_per_episode=2, execution_noise_px=-1.0)


# --------------------------------------------------------------------------- feature cache


def test_cache_layout_and_shapes(cache, encoder, recorded, work):
    tokens = (56 // 14) ** 2
    assert cache.path == work / "cache" / encoder_key(encoder).replace("/", "_") / "local_pusht_test"
    assert cache.encoder_id == encoder.encoder_id == "enc@56"
    assert cache.array.shape == (EPISODES * STEPS, tokens, 32) and cache.array.dtype == np.float16
    assert isinstance(cache.array, np.memmap)
    assert cache.token_shape == (tokens, 32)
    assert (cache.grid.height, cache.grid.width, cache.grid.channels) == (4, 4, 32)
    assert cache.episodes == [0, 1, 2]
    assert [cache.episode_length(e) for e in cache.episodes] == [STEPS] * EPISODES
    assert cache.has_actions and cache.action_dim == 2
    assert cache.actions(1).shape == (STEPS, 2) and cache.actions(1).dtype == np.float32
    assert cache.states(2).shape == (STEPS, 2)
    assert cache.features(2, STEPS - 1).shape == (tokens, 32) and cache.features(0, 0).dtype == np.float32
    assert cache.episode_features(1).shape == (STEPS, tokens, 32)
    assert cache.fps == 10 and cache.total_frames == EPISODES * STEPS
    meta = cache.meta
    assert meta["repo_id"] == REPO and meta["resolution"] == 56 and meta["has_actions"]
    assert meta["fingerprint"]["episode_lengths"] == [STEPS] * EPISODES
    with pytest.raises(IndexError):
        cache.features(0, STEPS)
    with pytest.raises(DataError, match="episode 9"):
        cache.features(9, 0)


def test_feature_cache_reproduces_direct_encoding(cache, encoder, recorded):
    dataset = _lerobot(recorded, REPO)
    for index in (0, 5, STEPS + 7, 3 * STEPS - 1):  # first, middle, across episodes, last
        item = dataset[index]
        direct = encoder(item["observation.image"][None]).float().numpy()[0]
        cached = cache.features(int(item["episode_index"]), int(item["frame_index"]))
        np.testing.assert_allclose(cached, direct, rtol=2e-3, atol=2e-3)
    np.testing.assert_array_equal(
        np.concatenate([cache.actions(e) for e in cache.episodes]), _column(dataset, "action")
    )


def test_load_or_build_reuses_the_cache(cache, encoder, recorded, work):
    features = cache.path / "features.npy"
    before = features.stat().st_mtime_ns
    counting = CountingEncoder(encoder)
    again = FeatureCache.load_or_build(recorded, REPO, counting, work / "cache", progress=False)
    assert counting.frames == 0
    assert again.path == cache.path and features.stat().st_mtime_ns == before
    np.testing.assert_array_equal(again.features(1, 4), cache.features(1, 4))
    reopened = FeatureCache.open(cache.path, expected_encoder_id=encoder.encoder_id)
    np.testing.assert_array_equal(reopened.array, cache.array)


def test_cache_of_another_encoder_is_refused(cache):
    with pytest.raises(DataError, match="built with encoder 'enc@56', not 'dinov2-small@224'"):
        FeatureCache.open(cache.path, expected_encoder_id="dinov2-small@224")


def test_broken_caches_are_detected_and_rebuilt(cache, encoder, recorded, work):
    root = work / "broken_cache"
    shutil.copytree(work / "cache", root)
    path = root / cache.path.relative_to(work / "cache")
    features = path / "features.npy"
    with open(features, "r+b") as f:
        f.truncate(features.stat().st_size - 100)
    with pytest.raises(DataError, match="truncated"):
        FeatureCache.open(path)
    with pytest.warns(UserWarning, match="rebuilding"):
        rebuilt = FeatureCache.load_or_build(recorded, REPO, encoder, root, progress=False)
    np.testing.assert_array_equal(rebuilt.array, cache.array)

    (path / "meta.json").unlink()
    with pytest.raises(DataError, match="incomplete"):
        FeatureCache.open(path)
    with pytest.raises(DataError, match="no feature cache"):
        FeatureCache.open(root / "nothing")


def test_changed_dataset_is_re_encoded(encoder, work):
    root, caches = work / "changing", work / "changing_cache"
    record_pusht_dataset(root, repo_id="local/changing", episodes=1, steps_per_episode=6, seed=3, progress=False)
    first = FeatureCache.load_or_build(root, "local/changing", encoder, caches, progress=False)
    old_actions = first.actions(0)
    record_pusht_dataset(
        root, repo_id="local/changing", episodes=1, steps_per_episode=6, seed=4, overwrite=True, progress=False
    )
    with pytest.warns(UserWarning, match="changed"):
        second = FeatureCache.load_or_build(root, "local/changing", encoder, caches, progress=False)
    assert not np.array_equal(second.actions(0), old_actions)
    assert not np.array_equal(second.features(0, 5), first.features(0, 5))


def test_cache_pickles_without_its_data(cache):
    blob = pickle.dumps(cache)
    assert len(blob) < cache.array.nbytes
    copy = pickle.loads(blob)
    np.testing.assert_array_equal(copy.features(2, 3), cache.features(2, 3))


def test_corrupt_dataset_gives_data_error(recorded, encoder, work):
    broken = work / "pusht_broken"
    shutil.copytree(recorded, broken)
    parquet = next((broken / "data").glob("*/*.parquet"))
    parquet.unlink()
    with pytest.raises(DataError, match=re.escape(str(parquet))):
        FeatureCache.build(broken, REPO, encoder, work / "broken_ds_cache", progress=False)

    parquet.write_bytes(b"this is not parquet")
    with pytest.raises(DataError, match=re.escape(f"unreadable parquet file {parquet}")):
        FeatureCache.load_or_build(broken, REPO, encoder, work / "broken_ds_cache", progress=False)

    missing = work / "no_such_dataset"
    with pytest.raises(DataError, match=re.escape(str(missing))):
        FeatureCache.build(missing, REPO, encoder, work / "broken_ds_cache", progress=False)
    assert not missing.exists()  # LeRobot would have created it while trying to download


# --------------------------------------------------------------------------- datasets


def test_action_free_cache_serves_frame_pairs_only(video_cache):
    assert not video_cache.has_actions and video_cache.episodes == [0, 1]
    pairs = FramePairDataset(video_cache, video_cache.episodes, min_gap=2, max_gap=6, seed=5)
    assert len(pairs) == 2 * (10 - 2)
    for index in range(len(pairs)):
        episode, t, h = pairs.sample(index)
        assert 2 <= h <= 6 and 0 <= t and t + h <= 9
        s_t, s_th, gap = pairs[index]
        assert gap == h and s_t.dtype == torch.float32 and s_t.shape == (16, 32)
        np.testing.assert_array_equal(s_t.numpy(), video_cache.features(episode, t))
        np.testing.assert_array_equal(s_th.numpy(), video_cache.features(episode, t + h))
    with pytest.raises(DataError, match="no 'action' feature"):
        ChunkDataset(video_cache, video_cache.episodes, horizon=2)
    with pytest.raises(DataError, match="action-free"):
        video_cache.actions(0)


def test_frame_pairs_are_reproducible(cache):
    a = FramePairDataset(cache, cache.episodes, min_gap=2, max_gap=100, seed=0)
    b = FramePairDataset(cache, cache.episodes, min_gap=2, max_gap=100, seed=0)
    samples = [a.sample(i) for i in range(len(a))]
    assert samples == [b.sample(i) for i in range(len(b))]
    assert {h for _, _, h in samples} >= {2, STEPS - 1}  # gaps span [min_gap, len - 1]
    a.set_epoch(1)
    assert [a.sample(i) for i in range(len(a))] != samples
    assert [FramePairDataset(cache, cache.episodes, seed=1).sample(i) for i in range(len(a))] != samples
    s_t, s_th, h = next(iter(torch.utils.data.DataLoader(b, batch_size=4)))
    assert s_t.shape == (4, 16, 32) and s_th.shape == (4, 16, 32) and h.shape == (4,)


def test_chunks_align_actions_with_frames(cache, recorded):
    horizon = 3
    chunks = ChunkDataset(cache, cache.episodes, horizon=horizon)
    assert len(chunks) == EPISODES * (STEPS - horizon)
    recorded_actions = _column(_lerobot(recorded, REPO), "action").reshape(EPISODES, STEPS, 2)
    seen = set()
    for index in range(len(chunks)):
        episode, t = chunks.sample(index)
        seen.add((episode, t))
        s_t, actions, target = chunks[index]
        assert actions.shape == (horizon, 2) and actions.dtype == torch.float32
        np.testing.assert_array_equal(actions.numpy(), recorded_actions[episode, t : t + horizon])
        np.testing.assert_array_equal(s_t.numpy(), cache.features(episode, t))
        np.testing.assert_array_equal(target.numpy(), cache.features(episode, t + horizon))
    assert seen == {(e, t) for e in range(EPISODES) for t in range(STEPS - horizon)}
    # The last chunk ends on the last frame; its actions stop one short of the last row.
    assert max(t for e, t in seen if e == 0) + horizon == STEPS - 1


def test_short_episodes_error_or_are_skipped(encoder, work):
    root = _write_varied_dataset(work / "varied", "local/varied", lengths=[4, 9])
    varied = FeatureCache.build(root, "local/varied", encoder, work / "varied_cache", progress=False)
    assert [varied.episode_length(e) for e in varied.episodes] == [4, 9]
    np.testing.assert_array_equal(varied.actions(1)[:, 1], np.arange(9))

    with pytest.raises(DataError, match=r"episode 0 \(4 frames\)"):
        ChunkDataset(varied, [0, 1], horizon=5)
    with pytest.warns(UserWarning, match=r"episode 0 \(4 frames\)"):
        chunks = ChunkDataset(varied, [0, 1], horizon=5, skip_short=True)
    assert chunks.episodes == [1] and len(chunks) == 9 - 5
    np.testing.assert_array_equal(chunks[3][1].numpy()[:, 1], [3, 4, 5, 6, 7])

    with pytest.raises(DataError, match=r"episode 0 \(4 frames\)"):
        FramePairDataset(varied, [0, 1], min_gap=4)
    with pytest.warns(UserWarning):
        pairs = FramePairDataset(varied, [0, 1], min_gap=4, skip_short=True)
    assert pairs.episodes == [1]
    with pytest.raises(DataError, match="none of the episodes"), pytest.warns(UserWarning):
        ChunkDataset(varied, [0, 1], horizon=9, skip_short=True)


def test_split_episodes_is_deterministic():
    episodes = list(range(10))
    train, held_out = split_episodes(episodes, 0.2, seed=0)
    assert (train, held_out) == split_episodes(list(reversed(episodes)), 0.2, seed=0)
    assert len(held_out) == 2 and sorted(train + held_out) == episodes and not set(train) & set(held_out)
    assert any(split_episodes(episodes, 0.2, seed=s)[1] != held_out for s in range(1, 5))
    for n in range(2, 8):
        train, held_out = split_episodes(range(n), 0.2, seed=3)
        assert train and held_out and len(train) + len(held_out) == n
    assert split_episodes([4], 0.5) == ([4], [])
    with pytest.raises(ValueError):
        split_episodes(episodes, 1.0)
