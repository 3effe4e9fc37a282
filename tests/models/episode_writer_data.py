"""Frames, features and readers shared by the episode writer tests and their crash-test child process
(which imports this module by path, so it holds no test and no fixture)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rla_wm.recording import STAMP_KEY

FPS = 10
SIZE = 32
CAM = "observation.image"
STATE = "observation.state"
ACTION = "action"
EPOCH = 1_700_000_000.0  # header stamps look like ROS wall-clock stamps


def features(with_actions: bool = True) -> dict:
    feats = {
        CAM: {"dtype": "video", "shape": (SIZE, SIZE, 3), "names": ["height", "width", "channel"]},
        STATE: {"dtype": "float32", "shape": (2,), "names": ["x", "y"]},
    }
    if with_actions:
        feats[ACTION] = {"dtype": "float32", "shape": (2,), "names": ["x", "y"]}
    return feats


def image(level: int) -> np.ndarray:
    return np.full((SIZE, SIZE, 3), level, dtype=np.uint8)


def frame(episode: int, i: int, with_actions: bool = True, stamp: float | None = None) -> dict:
    row = {
        CAM: image(40 + 15 * i),
        STATE: np.array([episode + 0.25 * i, np.sin(i + episode)], dtype=np.float32),
        STAMP_KEY: EPOCH + 100 * episode + 0.1 * i + 0.0123 if stamp is None else stamp,
    }
    if with_actions:
        row[ACTION] = np.array([i * 1.5 - episode, 2.0 * episode - 0.5 * i], dtype=np.float32)
    return row


def load(root: Path, repo_id: str):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset(repo_id, root=root)


def column(dataset, key: str) -> np.ndarray:
    """A column in its stored dtype (datasets' numpy formatter would turn float64 into float32)."""
    import pyarrow as pa

    col = dataset.hf_dataset.with_format("arrow", columns=[key])[:][key].combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        return col.flatten().to_numpy().reshape(len(col), col.type.list_size)
    return col.to_numpy()


REPO = "local/recording_test"
