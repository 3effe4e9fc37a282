"""Training data: a frozen-encoder feature cache over a LeRobot dataset, and torch Datasets on it.

The encoder is frozen, so every frame is encoded exactly once (`FeatureCache.build`) and
training reads patch tokens from a memory-mapped float16 array instead of decoding video
and running the ViT on every step. The cache lives in
`cache_root/<encoder id>/<repo id>/` (the encoder id includes the input resolution), so
features of different encoders — different feature spaces — can never be mixed up.

    features.npy  float16 (total_frames, N, C), rows grouped by episode, in frame order
    index.npz     episode_index, frame_index, timestamps, states and (if any) actions per row
    meta.json     encoder id, grid, dataset identity + fingerprint; written last, so a cache
                  without it is an interrupted build

Joint units: the models work in the units of the ROS graph (radians on an arm). A dataset in
LeRobot's SO-101 layout (state and action entries named `shoulder_pan.pos` ... `gripper.pos`,
degrees and gripper 0..100, as `lerobot-record` and the recorder's `joint_layout: so101_lerobot`
write them) is read back into radians in the URDF's joint order (`rla_wm.envs.so101.lerobot_units`);
the cache's meta.json says so under "joint_conversion".

Action convention (LeRobot's): row t holds the observation at frame t and the action
commanded at frame t, which moves the scene from frame t to frame t+1. So the actions
that take frame t to frame t+h are rows t .. t+h-1.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
import torch
from torch.utils.data import Dataset

from rla_wm.models.encoder import FeatureGrid

if TYPE_CHECKING:  # the encoder pulls in transformers; only needed for type hints here
    from rla_wm.models.encoder import TokenEncoder

CACHE_FORMAT_VERSION = 1
FEATURES_FILE = "features.npy"
INDEX_FILE = "index.npz"
META_FILE = "meta.json"
ACTION_KEY = "action"
STATE_KEY = "observation.state"
# The simulator's scene (e.g. Push-T's block pose), recorded next to the camera: never a model
# input on a robot, but a training-time read-out target that teaches a policy to see it.
SCENE_KEY = "observation.environment_state"
DEFAULT_IMAGE_KEY = "observation.image"


class _IndexRows(TypedDict):
    """Per-row arrays of INDEX_FILE that every cache has."""

    episode_index: np.ndarray
    frame_index: np.ndarray
    timestamps: np.ndarray


class _IndexArrays(_IndexRows, total=False):
    """Everything INDEX_FILE holds: states and actions only where the dataset records them."""

    states: np.ndarray
    actions: np.ndarray
    scenes: np.ndarray


class DataError(ValueError):
    """A dataset or feature cache is missing, corrupt, inconsistent or unsuitable for the request."""


def safe_name(text: str) -> str:
    """A string usable as one path component ("local/pusht" -> "local_pusht")."""
    cleaned = re.sub(r"[^A-Za-z0-9._@+=-]+", "_", text).strip("._")
    return cleaned or "_"


def encoder_key(encoder: TokenEncoder) -> str:
    """The id that names an encoder's feature space, resolution included.

    A ViT's encoder_id already ends in "@<resolution>"; the suffix is added for
    encoders whose id does not, because the same ViT at another resolution gives other
    features.
    """
    encoder_id = str(encoder.encoder_id)
    resolution = getattr(getattr(encoder, "config", None), "resolution", None)
    if resolution is not None and not encoder_id.endswith(f"@{resolution}"):
        encoder_id = f"{encoder_id}@{resolution}"
    return encoder_id


# --------------------------------------------------------------------------- dataset reading


@dataclass
class _Source:
    """A LeRobot dataset opened for caching: its rows in (episode, frame) order."""

    dataset: Any  # LeRobotDataset
    root: Path
    repo_id: str
    image_key: str
    episodes: list[int]
    lengths: list[int]
    rows: np.ndarray  # position in dataset.hf_dataset of each sorted row
    episode_index: np.ndarray
    frame_index: np.ndarray
    timestamps: np.ndarray
    states: np.ndarray | None
    actions: np.ndarray | None
    fps: int
    fingerprint: dict[str, Any]
    # The rows of a non-camera input (image_key names a float feature such as
    # observation.environment_state): encoded instead of decoded frames.
    vectors: np.ndarray | None = None
    # observation.environment_state rows when the dataset records them and they are not the input.
    scenes: np.ndarray | None = None
    # Feature key -> how its values were converted on reading (LeRobot SO-101 units -> radians).
    joint_conversion: dict[str, str] | None = None


SO101_CONVERSION = "LeRobot SO-101 units (degrees, gripper 0..100) -> radians, URDF joint order"


def _feature_names(feature: Any) -> list[str]:
    """A feature's entry names as a flat list (LeRobot v2 stored some as {"motors": [...]})."""
    names = feature.get("names") if isinstance(feature, dict) else None
    if isinstance(names, dict):
        names = next(iter(names.values()), None)
    return [str(name) for name in names] if isinstance(names, (list, tuple)) else []


def _model_joint_units(values: np.ndarray | None, feature: Any) -> tuple[np.ndarray | None, bool]:
    """A state or action column in the models' units: LeRobot SO-101 vectors become radians in
    `JOINT_NAMES` order (True), anything else is returned as it is (False)."""
    names = _feature_names(feature)
    if values is None or not any(name.endswith(".pos") for name in names):
        return values, False
    from rla_wm.envs.so101.lerobot_units import default_units, lerobot_feature_order

    if lerobot_feature_order(names) is None:
        return values, False
    return default_units().radians_from_features(values, names).astype(np.float32), True


def _describe(err: BaseException) -> str:
    """`Type: message` of an exception and its causes (`datasets` wraps the useful parquet error)."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen and len(parts) < 4:
        seen.add(id(current))
        parts.append(f"{type(current).__name__}: {current}")
        current = current.__cause__ or current.__context__
    return " <- ".join(parts)


def _open_source(dataset_root: str | Path, repo_id: str, image_key: str | None = None) -> _Source:
    """Open a local LeRobot dataset, turning every failure into a DataError naming the path.

    LeRobot answers a missing file by trying to download the dataset from the Hub (and
    creates folders on the way), which offline ends in a deep, unrelated traceback; so the
    files the metadata refers to are checked here first.
    """
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata

    root = Path(dataset_root)
    info = root / "meta" / "info.json"
    if not root.is_dir():
        raise DataError(f"no LeRobot dataset at {root}: the folder does not exist")
    if not info.is_file():
        raise DataError(f"no LeRobot dataset at {root}: {info} is missing")
    episodes_dir = root / "meta" / "episodes"
    if not any(episodes_dir.glob("*/*.parquet")):
        raise DataError(f"corrupt LeRobot dataset at {root}: no episode metadata under {episodes_dir}")
    try:
        meta = LeRobotDatasetMetadata(repo_id, root=root)
    except Exception as err:  # noqa: BLE001 — any parse failure means a corrupt dataset
        raise DataError(f"cannot read the metadata of LeRobot dataset {root}: {_describe(err)}") from err

    try:
        meta_episodes = meta.episodes
        total_episodes = int(meta.total_episodes)
        video_keys = list(meta.video_keys)
        needed: set[Path] = set()
        for e in range(total_episodes):
            needed.add(root / meta.get_data_file_path(e))
            for key in video_keys:
                needed.add(root / meta.get_video_file_path(e, key))
        missing = sorted(str(p) for p in needed if not p.is_file())
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001
        raise DataError(f"corrupt episode metadata in LeRobot dataset {root}: {_describe(err)}") from err
    if missing:
        raise DataError(f"LeRobot dataset {root} is incomplete; missing files: {', '.join(missing)}")
    # Reading the parquet footers is cheap and lets the error name the broken file, which
    # the `datasets` loader's own error does not.
    import pyarrow.parquet as pq

    for path in sorted(p for p in needed if p.suffix == ".parquet"):
        try:
            pq.read_metadata(path)
        except Exception as err:  # noqa: BLE001
            raise DataError(
                f"LeRobot dataset {root} is corrupt: unreadable parquet file {path}: {_describe(err)}"
            ) from err

    if image_key is None:
        cameras = list(meta.camera_keys)
        if DEFAULT_IMAGE_KEY in cameras:
            image_key = DEFAULT_IMAGE_KEY
        elif len(cameras) == 1:
            image_key = cameras[0]
        else:
            raise DataError(f"LeRobot dataset {root} has cameras {cameras}; pass image_key to choose one")
    elif image_key not in meta.camera_keys and meta.features.get(image_key, {}).get("dtype") != "float32":
        raise DataError(
            f"LeRobot dataset {root} has no camera or float32 feature {image_key!r}; cameras: {list(meta.camera_keys)}"
        )
    vector_input = image_key not in meta.camera_keys

    try:
        dataset = LeRobotDataset(repo_id, root=root)
        has_actions = ACTION_KEY in dataset.features
        has_states = STATE_KEY in dataset.features
        has_scenes = SCENE_KEY in dataset.features and image_key != SCENE_KEY
        columns = ["episode_index", "frame_index", "timestamp"]
        columns += [STATE_KEY] if has_states else []
        columns += [SCENE_KEY] if has_scenes else []
        columns += [ACTION_KEY] if has_actions else []
        columns += [image_key] if vector_input else []
        table = dataset.hf_dataset.with_format("numpy", columns=columns)[:]
    except Exception as err:  # noqa: BLE001 — unreadable parquet, schema mismatch, ...
        raise DataError(f"cannot read LeRobot dataset {root}: {_describe(err)}") from err

    episode_index = np.asarray(table["episode_index"], dtype=np.int64)
    frame_index = np.asarray(table["frame_index"], dtype=np.int64)
    # Sort rows by (episode, frame): the cache's row order, whatever the parquet order.
    rows = np.lexsort((frame_index, episode_index))
    episode_index, frame_index = episode_index[rows], frame_index[rows]
    timestamps = np.asarray(table["timestamp"], dtype=np.float32)[rows]
    states = np.asarray(table[STATE_KEY], dtype=np.float32)[rows] if has_states else None
    actions = np.asarray(table[ACTION_KEY], dtype=np.float32)[rows] if has_actions else None
    vectors = np.asarray(table[image_key], dtype=np.float32)[rows].reshape(len(rows), -1) if vector_input else None
    scenes = np.asarray(table[SCENE_KEY], dtype=np.float32)[rows].reshape(len(rows), -1) if has_scenes else None
    if actions is not None and actions.ndim == 1:
        actions = actions[:, None]
    if states is not None and states.ndim == 1:
        states = states[:, None]
    conversion: dict[str, str] = {}
    try:
        states, converted = _model_joint_units(states, meta.features.get(STATE_KEY))
        if converted:
            conversion[STATE_KEY] = SO101_CONVERSION
        actions, converted = _model_joint_units(actions, meta.features.get(ACTION_KEY))
        if converted:
            conversion[ACTION_KEY] = SO101_CONVERSION
    except ValueError as err:  # e.g. a NaN in a stored vector
        raise DataError(f"LeRobot dataset {root}: cannot convert its joint vectors to radians: {err}") from err

    episodes, counts = np.unique(episode_index, return_counts=True)
    expected = {int(meta_episodes[i]["episode_index"]): int(meta_episodes[i]["length"]) for i in range(total_episodes)}
    found = {int(e): int(n) for e, n in zip(episodes, counts)}
    if found != expected:
        raise DataError(
            f"LeRobot dataset {root} is inconsistent: episode lengths in the data {found} "
            f"differ from the metadata {expected}"
        )
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for e, start, n in zip(episodes, starts, counts):
        if not np.array_equal(frame_index[start : start + n], np.arange(n)):
            raise DataError(f"LeRobot dataset {root}: episode {int(e)} does not have frames 0..{n - 1}")

    fingerprint = _fingerprint(root, meta, image_key, episode_index, frame_index, timestamps, states, actions, vectors)
    if scenes is not None:
        # A cache built before scenes were read lacks them: this key makes it out of date.
        fingerprint["scene_sha256"] = hashlib.sha256(np.ascontiguousarray(scenes).tobytes()).hexdigest()
    return _Source(
        dataset=dataset,
        root=root,
        repo_id=repo_id,
        image_key=image_key,
        episodes=[int(e) for e in episodes],
        lengths=[int(n) for n in counts],
        rows=rows,
        episode_index=episode_index,
        frame_index=frame_index,
        timestamps=timestamps,
        states=states,
        actions=actions,
        fps=int(meta.fps),
        fingerprint=fingerprint,
        vectors=vectors,
        scenes=scenes,
        joint_conversion=conversion or None,
    )


def _fingerprint(
    root: Path,
    meta: Any,
    image_key: str,
    episode_index: np.ndarray,
    frame_index: np.ndarray,
    timestamps: np.ndarray,
    states: np.ndarray | None,
    actions: np.ndarray | None,
    vectors: np.ndarray | None = None,
) -> dict[str, Any]:
    """What identifies the dataset's content, cheaply (no video decoding).

    Episode lengths alone would not notice a re-recording with another seed, so the
    tabular data (states, actions, timestamps) is hashed, and the video files' sizes
    stand in for the pixels. JSON-normal, so it compares equal after a round trip.
    """
    digest = hashlib.sha256()
    for array in (episode_index, frame_index, timestamps, states, actions, vectors):
        if array is not None:
            digest.update(np.ascontiguousarray(array).tobytes())
        digest.update(b"|")
    video_bytes = 0
    if image_key in meta.video_keys:
        paths = {root / meta.get_video_file_path(e, image_key) for e in range(int(meta.total_episodes))}
        video_bytes = sum(p.stat().st_size for p in paths)
    _, counts = np.unique(episode_index, return_counts=True)
    return {
        "total_frames": int(len(episode_index)),
        "episode_lengths": [int(n) for n in counts],
        "fps": int(meta.fps),
        "image_key": image_key,
        "has_actions": actions is not None,
        "table_sha256": digest.hexdigest(),
        "video_bytes": int(video_bytes),
    }


def _episode_frames(
    source: _Source, episode: int, offset: int, start: int, stop: int, decoder_cache: Any
) -> torch.Tensor:
    """Frames start..stop-1 of an episode as (B, 3, H, W) float in [0, 1], as LeRobotDataset[i] gives them.

    `offset` is the episode's first row in the source's sorted rows.

    Decoding a batch of timestamps at once replicates what `LeRobotDataset.__getitem__`
    does for one frame (same timestamps, same decoder, same tolerance) without reopening
    and seeking the video for every frame.
    """
    from lerobot.datasets.video_utils import decode_video_frames, decode_video_frames_torchcodec

    if source.vectors is not None:
        return torch.from_numpy(source.vectors[offset + start : offset + stop])
    dataset = source.dataset
    key = source.image_key
    if key not in dataset.meta.video_keys:
        # Image (not video) features live in the parquet files: read them row by row.
        return torch.stack([dataset[int(source.rows[offset + t])][key] for t in range(start, stop)])
    ep_meta = dataset.meta.episodes[episode]
    from_timestamp = ep_meta[f"videos/{key}/from_timestamp"]
    query = [from_timestamp + float(ts) for ts in source.timestamps[offset + start : offset + stop]]
    video_path = source.root / dataset.meta.get_video_file_path(episode, key)
    try:
        if dataset.video_backend == "torchcodec":
            return decode_video_frames_torchcodec(video_path, query, dataset.tolerance_s, decoder_cache=decoder_cache)
        return decode_video_frames(video_path, query, dataset.tolerance_s, dataset.video_backend)
    except Exception as err:  # noqa: BLE001
        raise DataError(
            f"cannot decode frames {start}..{stop - 1} of episode {episode} from {video_path}: {_describe(err)}"
        ) from err


# --------------------------------------------------------------------------- feature cache


def _read_npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and data offset of a .npy file, without reading the data."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
        if fortran:
            raise ValueError("Fortran-ordered array")
        return tuple(shape), np.dtype(dtype), f.tell()


class FeatureCache:
    """Frozen-encoder patch tokens of every frame of a LeRobot dataset, memory-mapped.

    Make one with `build`, `open` or `load_or_build`. Reading a frame touches only
    its rows of `features.npy`, so caches larger than RAM work, and the object pickles
    without its data (DataLoader workers re-map the file).
    """

    def __init__(self, path: Path, meta: dict[str, Any], index: dict[str, np.ndarray]) -> None:
        self.path = Path(path)
        self.meta = meta
        self._episode_index = index["episode_index"]
        self._frame_index = index["frame_index"]
        self._timestamps = index.get("timestamps")
        self._states = index.get("states")
        self._actions = index.get("actions")
        self._scenes = index.get("scenes")
        self._episodes: list[int] = [int(e) for e in meta["episodes"]]
        self._lengths = {e: int(n) for e, n in zip(self._episodes, meta["episode_lengths"])}
        starts = np.concatenate([[0], np.cumsum(meta["episode_lengths"])[:-1]]).astype(np.int64)
        self._starts = {e: int(s) for e, s in zip(self._episodes, starts)}
        self._features: np.ndarray | None = None
        self._map()

    # -- construction

    @staticmethod
    def cache_dir(cache_root: str | Path, encoder_id: str, repo_id: str) -> Path:
        """Where the cache of `repo_id` encoded by `encoder_id` (resolution included) lives."""
        return Path(cache_root) / safe_name(encoder_id) / safe_name(repo_id)

    @classmethod
    def build(
        cls,
        dataset_root: str | Path,
        repo_id: str,
        encoder: TokenEncoder,
        cache_root: str | Path,
        batch_size: int = 32,
        *,
        image_key: str | None = None,
        progress: bool = True,
    ) -> FeatureCache:
        """Encode every frame of every episode once and write the cache; replaces an old one."""
        source = _open_source(dataset_root, repo_id, image_key)
        return cls._build(source, encoder, cache_root, batch_size, progress)

    @classmethod
    def load_or_build(
        cls,
        dataset_root: str | Path,
        repo_id: str,
        encoder: TokenEncoder,
        cache_root: str | Path,
        batch_size: int = 32,
        *,
        image_key: str | None = None,
        progress: bool = True,
    ) -> FeatureCache:
        """Reuse the cache for this encoder and dataset if it is intact and up to date, else build it.

        "Up to date" means the dataset's fingerprint (frame counts, tabular data hash,
        video sizes, camera) equals the one recorded at build time: a re-recorded dataset
        at the same path is re-encoded instead of silently served stale features.
        """
        source = _open_source(dataset_root, repo_id, image_key)
        encoder_id = encoder_key(encoder)
        path = cls.cache_dir(cache_root, encoder_id, repo_id)
        if (path / META_FILE).exists():
            try:
                cache = cls.open(path, expected_encoder_id=encoder_id)
            except DataError as err:
                warnings.warn(f"rebuilding the feature cache: {err}", stacklevel=2)
            else:
                if cache.meta.get("fingerprint") == source.fingerprint:
                    return cache
                warnings.warn(
                    f"the dataset at {source.root} changed since the feature cache {path} was built; rebuilding it",
                    stacklevel=2,
                )
        return cls._build(source, encoder, cache_root, batch_size, progress)

    @classmethod
    def _build(
        cls, source: _Source, encoder: TokenEncoder, cache_root: str | Path, batch_size: int, progress: bool
    ) -> FeatureCache:
        from lerobot.datasets.video_utils import VideoDecoderCache
        from tqdm.auto import tqdm

        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        encoder_id = encoder_key(encoder)
        grid: FeatureGrid = encoder.grid
        tokens, channels = grid.height * grid.width, grid.channels
        total = int(sum(source.lengths))
        path = cls.cache_dir(cache_root, encoder_id, source.repo_id)
        # Write next to the destination and rename at the end: an interrupted build never
        # leaves something that `open` would take for a complete cache.
        tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        # A private decoder cache: LeRobot's module-level one keeps file handles open forever
        # and would serve a stale decoder if a video is rewritten at the same path.
        decoders = VideoDecoderCache()
        try:
            features = np.lib.format.open_memmap(
                tmp / FEATURES_FILE, mode="w+", dtype=np.float16, shape=(total, tokens, channels)
            )
            row = 0  # also the current episode's first row: episodes are written in order
            with tqdm(total=total, desc=f"encoding {source.repo_id}", unit="frame", disable=not progress) as bar:
                for episode, length in zip(source.episodes, source.lengths):
                    offset = row
                    for start in range(0, length, batch_size):
                        stop = min(start + batch_size, length)
                        frames = _episode_frames(source, episode, offset, start, stop, decoders)
                        encoded = encoder(frames).float().cpu().numpy()
                        if encoded.shape != (stop - start, tokens, channels):
                            raise DataError(
                                f"encoder {encoder_id} returned {encoded.shape}, expected "
                                f"{(stop - start, tokens, channels)}"
                            )
                        half = encoded.astype(np.float16)
                        # float16 overflows above 65504: better to fail now than train on inf.
                        if not np.isfinite(half).all():
                            raise DataError(
                                f"encoder {encoder_id} produced values outside float16 range "
                                f"(max |x| = {np.abs(encoded).max():.3g}) in episode {episode}"
                            )
                        features[row : row + len(half)] = half
                        row += len(half)
                        bar.update(len(half))
            features.flush()
            del features  # close the memmap before renaming the file

            index: _IndexArrays = {
                "episode_index": source.episode_index,
                "frame_index": source.frame_index,
                "timestamps": source.timestamps,
            }
            if source.states is not None:
                index["states"] = source.states
            if source.actions is not None:
                index["actions"] = source.actions
            if source.scenes is not None:
                index["scenes"] = source.scenes
            np.savez(tmp / INDEX_FILE, **index)

            meta = {
                "format_version": CACHE_FORMAT_VERSION,
                "encoder_id": encoder_id,
                "resolution": getattr(getattr(encoder, "config", None), "resolution", None),
                "grid": {"height": grid.height, "width": grid.width, "channels": grid.channels},
                "tokens": tokens,
                "channels": channels,
                "dtype": "float16",
                "repo_id": source.repo_id,
                "root": str(source.root.resolve()),
                "image_key": source.image_key,
                "fps": source.fps,
                "total_frames": total,
                "episodes": source.episodes,
                "episode_lengths": source.lengths,
                "has_actions": source.actions is not None,
                "action_dim": int(source.actions.shape[1]) if source.actions is not None else None,
                "fingerprint": source.fingerprint,
                "joint_conversion": source.joint_conversion,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            # meta.json last: its presence marks a complete cache.
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
            if path.exists():
                shutil.rmtree(path)
            tmp.rename(path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            decoders.clear()
        return cls.open(path, expected_encoder_id=encoder_id)

    @classmethod
    def open(cls, path: str | Path, expected_encoder_id: str | None = None) -> FeatureCache:
        """Memory-map an existing cache, checking that it is complete and (optionally) whose it is."""
        path = Path(path)
        meta_path = path / META_FILE
        if not path.is_dir():
            raise DataError(f"no feature cache at {path}")
        if not meta_path.is_file():
            raise DataError(f"feature cache {path} is incomplete: {META_FILE} is missing (interrupted build?)")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DataError(f"feature cache {path}: unreadable {META_FILE}: {err}") from err
        required = (
            "format_version",
            "encoder_id",
            "total_frames",
            "tokens",
            "channels",
            "episodes",
            "episode_lengths",
            "has_actions",
            "fps",
            "repo_id",
        )
        if not isinstance(meta, dict) or any(k not in meta for k in required):
            raise DataError(f"feature cache {path}: {META_FILE} lacks some of {required}")
        if meta["format_version"] != CACHE_FORMAT_VERSION:
            raise DataError(
                f"feature cache {path} has format {meta['format_version']}, "
                f"this code reads {CACHE_FORMAT_VERSION}; rebuild it"
            )
        if expected_encoder_id is not None and meta["encoder_id"] != expected_encoder_id:
            raise DataError(
                f"feature cache {path} was built with encoder {meta['encoder_id']!r}, not {expected_encoder_id!r}; "
                "features of different encoders are different spaces and must not be mixed — build a cache for "
                "this encoder"
            )
        total = int(meta["total_frames"])
        if len(meta["episodes"]) != len(meta["episode_lengths"]) or sum(meta["episode_lengths"]) != total:
            raise DataError(f"feature cache {path}: episode lengths in {META_FILE} do not add up to {total} frames")

        features_path = path / FEATURES_FILE
        if not features_path.is_file():
            raise DataError(f"feature cache {path} is corrupt: {FEATURES_FILE} is missing")
        expected_shape = (total, int(meta["tokens"]), int(meta["channels"]))
        try:
            shape, dtype, offset = _read_npy_header(features_path)
        except (OSError, ValueError) as err:
            raise DataError(f"feature cache {path} is corrupt: bad header in {features_path}: {err}") from err
        if shape != expected_shape or dtype != np.float16:
            raise DataError(
                f"feature cache {path} is corrupt: {FEATURES_FILE} holds {dtype} {shape}, "
                f"expected float16 {expected_shape}"
            )
        expected_size = offset + math.prod(shape) * dtype.itemsize
        actual_size = features_path.stat().st_size
        if actual_size != expected_size:
            raise DataError(
                f"feature cache {path} is corrupt: {features_path} is {actual_size} bytes, expected {expected_size} "
                "(truncated or partly written); rebuild it"
            )

        index_path = path / INDEX_FILE
        if not index_path.is_file():
            raise DataError(f"feature cache {path} is corrupt: {INDEX_FILE} is missing")
        try:
            with np.load(index_path) as npz:
                index = {k: np.asarray(npz[k]) for k in npz.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise DataError(f"feature cache {path} is corrupt: unreadable {index_path}: {err}") from err
        for key in ("episode_index", "frame_index"):
            if key not in index or len(index[key]) != total:
                raise DataError(f"feature cache {path} is corrupt: {INDEX_FILE} lacks {key} for {total} frames")
        if bool(meta["has_actions"]) != ("actions" in index) or ("actions" in index and len(index["actions"]) != total):
            raise DataError(f"feature cache {path} is corrupt: actions in {INDEX_FILE} disagree with {META_FILE}")
        if "scenes" in index and len(index["scenes"]) != total:
            raise DataError(f"feature cache {path} is corrupt: {INDEX_FILE} has scenes for {len(index['scenes'])} rows")
        expected_episode_index = np.repeat(np.asarray(meta["episodes"], dtype=np.int64), meta["episode_lengths"])
        if not np.array_equal(index["episode_index"], expected_episode_index):
            raise DataError(f"feature cache {path} is corrupt: row order in {INDEX_FILE} disagrees with {META_FILE}")
        return cls(path, meta, index)

    # -- pickling: DataLoader workers get the metadata and re-map the file, not a copy of the data

    def _map(self) -> None:
        try:
            self._features = np.load(self.path / FEATURES_FILE, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise DataError(f"feature cache {self.path}: cannot memory-map {FEATURES_FILE}: {err}") from err

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_features"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._map()

    # -- accessors

    @property
    def encoder_id(self) -> str:
        return str(self.meta["encoder_id"])

    @property
    def grid(self) -> FeatureGrid:
        g = self.meta["grid"]
        return FeatureGrid(int(g["height"]), int(g["width"]), int(g["channels"]))

    @property
    def token_shape(self) -> tuple[int, int]:
        """(N, C) of one frame's features."""
        return int(self.meta["tokens"]), int(self.meta["channels"])

    @property
    def fps(self) -> int:
        return int(self.meta["fps"])

    @property
    def total_frames(self) -> int:
        return int(self.meta["total_frames"])

    @property
    def episodes(self) -> list[int]:
        return list(self._episodes)

    @property
    def has_actions(self) -> bool:
        return self._actions is not None

    @property
    def action_dim(self) -> int:
        if self._actions is None:
            raise DataError(self._no_actions_message())
        return int(self._actions.shape[1])

    @property
    def array(self) -> np.ndarray:
        """The whole (total_frames, N, C) float16 memory map."""
        assert self._features is not None
        return self._features

    def episode_length(self, episode: int) -> int:
        return self._lengths[self._check_episode(episode)]

    def row(self, episode: int, frame: int) -> int:
        """Row of (episode, frame) in the cache arrays."""
        length = self.episode_length(episode)
        if not 0 <= frame < length:
            raise IndexError(f"frame {frame} is outside episode {episode} (length {length})")
        return self._starts[int(episode)] + int(frame)

    def features(self, episode: int, frame: int) -> np.ndarray:
        """Patch tokens (N, C) float32 of one frame."""
        return np.asarray(self.array[self.row(episode, frame)], dtype=np.float32)

    def episode_features(self, episode: int) -> np.ndarray:
        """Patch tokens (T, N, C) float32 of a whole episode."""
        start = self._starts[self._check_episode(episode)]
        return np.asarray(self.array[start : start + self._lengths[int(episode)]], dtype=np.float32)

    def actions(self, episode: int) -> np.ndarray:
        """Actions (T, A) float32 of an episode; row t is the action commanded at frame t."""
        if self._actions is None:
            raise DataError(self._no_actions_message())
        start = self._starts[self._check_episode(episode)]
        return np.array(self._actions[start : start + self._lengths[int(episode)]], dtype=np.float32)

    def states(self, episode: int) -> np.ndarray:
        """Proprioceptive states (T, S) float32 of an episode."""
        if self._states is None:
            raise DataError(f"the dataset of feature cache {self.path} has no {STATE_KEY}")
        start = self._starts[self._check_episode(episode)]
        return np.array(self._states[start : start + self._lengths[int(episode)]], dtype=np.float32)

    @property
    def has_scenes(self) -> bool:
        return self._scenes is not None

    def scenes(self, episode: int) -> np.ndarray:
        """The simulator's scene state (T, E) float32 of an episode (observation.environment_state)."""
        if self._scenes is None:
            raise DataError(
                f"the dataset of feature cache {self.path} has no {SCENE_KEY} (or the cache predates reading it; "
                "rebuild it)"
            )
        start = self._starts[self._check_episode(episode)]
        return np.array(self._scenes[start : start + self._lengths[int(episode)]], dtype=np.float32)

    def _check_episode(self, episode: int) -> int:
        episode = int(episode)
        if episode not in self._lengths:
            raise DataError(f"episode {episode} is not in feature cache {self.path} (episodes {self._episodes})")
        return episode

    def _no_actions_message(self) -> str:
        return (
            f"the dataset {self.meta['repo_id']!r} of feature cache {self.path} has no '{ACTION_KEY}' feature "
            "(action-free video); use FramePairDataset, or record the dataset with actions"
        )

    def __repr__(self) -> str:
        return (
            f"FeatureCache({self.path}, encoder={self.encoder_id!r}, episodes={len(self._episodes)}, "
            f"frames={self.total_frames}, tokens={self.token_shape}, actions={self.has_actions})"
        )


# --------------------------------------------------------------------------- splits and datasets


def split_episodes(
    episodes: Sequence[int], held_out_fraction: float = 0.2, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Split episodes into (train, held_out), deterministically for a given seed.

    Whole episodes are held out (not frames) so evaluation never sees a trajectory it was
    trained on. The result depends only on the set of episodes, not their order. With two
    or more episodes both parts are non-empty; a single episode goes to train.
    """
    if not 0.0 < held_out_fraction < 1.0:
        raise ValueError(f"held_out_fraction must be in (0, 1), got {held_out_fraction}")
    unique = sorted({int(e) for e in episodes})
    if not unique:
        raise DataError("no episodes to split")
    if len(unique) == 1:
        return unique, []
    n_held = min(max(round(len(unique) * held_out_fraction), 1), len(unique) - 1)
    order = np.random.default_rng(seed).permutation(len(unique))
    held_out = sorted(unique[i] for i in order[:n_held])
    train = sorted(unique[i] for i in order[n_held:])
    return train, held_out


def _usable_episodes(
    cache: FeatureCache, episodes: Sequence[int], needed: int, what: str, skip_short: bool
) -> list[int]:
    """Episodes longer than `needed` frames; short ones raise DataError, or are skipped with a warning."""
    chosen = [int(e) for e in episodes]
    if not chosen:
        raise DataError(f"{what}: no episodes given")
    lengths = {e: cache.episode_length(e) for e in chosen}  # DataError for unknown episodes
    short = {e: n for e, n in lengths.items() if n <= needed}
    if short:
        listing = ", ".join(f"episode {e} ({n} frames)" for e, n in sorted(short.items()))
        message = f"{what} needs episodes longer than {needed} frames; too short: {listing}"
        if not skip_short:
            raise DataError(message + " (pass skip_short=True to leave them out)")
        warnings.warn(message + "; leaving them out", stacklevel=3)
    usable = [e for e in chosen if e not in short]
    if not usable:
        raise DataError(f"{what}: none of the episodes {chosen} is longer than {needed} frames")
    return usable


class FramePairDataset(Dataset[tuple[torch.Tensor, torch.Tensor, int]]):
    """Pairs (s_t, s_{t+h}, h) of cached features from one episode; needs no actions.

    There is one item per start frame that admits the smallest gap (t + min_gap < len),
    so longer episodes are sampled proportionally more. Each item draws, from a generator
    seeded by (seed, epoch, index), a gap h uniformly in [min_gap, min(max_gap, len - 1)]
    and then a start t uniformly among those that fit (t + h <= len - 1). Drawing h first
    keeps the gap distribution uniform; drawing t first would favour short gaps near the
    end of episodes. Item i is the same every time for a fixed seed and epoch, so
    evaluation is reproducible; call `set_epoch` during training for fresh pairs.

    Items: (s_t (N, C) float32 tensor, s_{t+h} (N, C) float32 tensor, h int).
    """

    def __init__(
        self,
        cache: FeatureCache,
        episodes: Sequence[int],
        min_gap: int = 2,
        max_gap: int = 100,
        seed: int = 0,
        skip_short: bool = False,
    ) -> None:
        if min_gap < 1 or max_gap < min_gap:
            raise ValueError(f"need 1 <= min_gap <= max_gap, got min_gap={min_gap}, max_gap={max_gap}")
        self.cache = cache
        self.min_gap = int(min_gap)
        self.max_gap = int(max_gap)
        self.seed = int(seed)
        self.epoch = 0
        self.episodes = _usable_episodes(cache, episodes, self.min_gap, "FramePairDataset", skip_short)
        self._lengths = np.array([cache.episode_length(e) for e in self.episodes], dtype=np.int64)
        counts = self._lengths - self.min_gap
        self._ends = np.cumsum(counts)

    def set_epoch(self, epoch: int) -> None:
        """Change the pairs drawn (same index, new epoch -> new draw)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return int(self._ends[-1])

    def sample(self, index: int) -> tuple[int, int, int]:
        """(episode, t, h) of item `index`."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} pairs")
        slot = int(np.searchsorted(self._ends, index, side="right"))
        length = int(self._lengths[slot])
        rng = np.random.default_rng([self.seed, self.epoch, index])
        h = int(rng.integers(self.min_gap, min(self.max_gap, length - 1) + 1))
        t = int(rng.integers(0, length - h))
        return self.episodes[slot], t, h

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        episode, t, h = self.sample(index)
        return (
            torch.from_numpy(self.cache.features(episode, t)),
            torch.from_numpy(self.cache.features(episode, t + h)),
            h,
        )


class ChunkDataset(Dataset[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
    """Action chunks (s_t, a_{t:t+h}, s_{t+h}) for every valid start t of every episode.

    a_{t:t+h} are the h actions commanded at frames t .. t+h-1 — the ones that move the
    scene from frame t to frame t+h — as an (h, A) float32 tensor. Requires a dataset
    with actions.
    """

    def __init__(
        self,
        cache: FeatureCache,
        episodes: Sequence[int],
        horizon: int,
        skip_short: bool = False,
        stride: int = 1,
    ) -> None:
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        if not cache.has_actions:
            raise DataError("ChunkDataset needs actions: " + cache._no_actions_message())
        self.cache = cache
        self.horizon = int(horizon)
        self.stride = int(stride)
        self.episodes = _usable_episodes(cache, episodes, self.horizon, "ChunkDataset", skip_short)
        # Actions are small: keep them in RAM instead of slicing the index on every item.
        self._actions = {e: torch.from_numpy(cache.actions(e)) for e in self.episodes}
        starts = [(e, t) for e in self.episodes for t in range(0, cache.episode_length(e) - self.horizon, self.stride)]
        self._starts = np.array(starts, dtype=np.int64).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self._starts)

    def sample(self, index: int) -> tuple[int, int]:
        """(episode, t) of item `index`."""
        episode, t = self._starts[index]
        return int(episode), int(t)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        episode, t = self.sample(index)
        return (
            torch.from_numpy(self.cache.features(episode, t)),
            self._actions[episode][t : t + self.horizon].clone(),
            torch.from_numpy(self.cache.features(episode, t + self.horizon)),
        )
