"""Recording teleoperation into LeRobot v3 datasets: stream synchronisation and a crash-safe episode writer.

ROS-free: a recorder node feeds header stamps and decoded values in, this module does the rest.

Synchronisation (`StreamSynchronizer`)
--------------------------------------
Cameras, joint states and commands arrive asynchronously, each with its own header stamp
(float seconds, one clock for all streams). The synchronizer keeps the recent samples of
every registered stream and assembles one dataset frame per *tick*, ticks being
``t0 + k / fps``. For tick t every stream contributes the sample whose stamp is nearest to
t, provided it lies within the stream's tolerance (default: half a frame period). A
required stream without such a sample makes the tick *incomplete*: the result names the
missing streams and why, and carries no values — nothing is ever zero-filled or repeated.

When is tick t decided? As soon as the newest sample of every required stream is at or
after t (samples of one stream arrive in stamp order, so no later sample can be nearer),
or, if some stream lags or stopped, once t is older than ``now - latency_budget``; then
whatever is within tolerance is used and the rest is reported missing ("stale" when the
stream's newest sample is too old). Each tick is decided exactly once, in order, by
`poll()`; `frame_at(t)` answers the same question for an arbitrary time without
touching the tick state.

Typical use::

    sync = StreamSynchronizer(fps=10)
    sync.add_stream("observation.images.front", "camera")
    sync.add_stream("observation.state", "state")
    sync.add_stream("action", "action")
    sync.start()                                # t0 = first instant every stream has data
    ...                                         # in the callbacks:
    sync.push("observation.state", msg_stamp, np.asarray(msg.position, np.float32))
    ...                                         # in a timer:
    for result in sync.poll():
        if result.complete:
            writer.add_frame(result.to_frame())     # adds "capture_stamp"
        else:
            log.warn(f"skipped tick {result.tick}: {result.reasons}")

Writing (`EpisodeWriter`)
-------------------------
`EpisodeWriter` owns a LeRobot v3 dataset (parquet + mp4): it creates it if the folder is
absent and resumes it otherwise. `add_frame` only validates, copies and enqueues; a
worker thread does all LeRobot work (PNG writing, AV1 encoding, parquet writing), so
the caller never waits on disk or the encoder. The queue is bounded: when it is full
`add_frame` raises `QueueFullError` and counts the frame as dropped, and an episode
with dropped frames is not saved unless asked to (its frame times would be wrong).

Time stamps. LeRobot's ``timestamp`` column holds the dataset frame times
``frame_index / fps`` (what the videos are indexed by). The real capture time is not
lost: every frame also stores ``capture_stamp`` (`STAMP_KEY`; float64, shape (1,)), the
header stamp of the synchronizer's reference camera for that frame (`SyncResult.to_frame`).
It deliberately does not start with "observation.": LeRobot's `dataset_to_policy_features`
turns every ``observation.*`` feature into a policy state input (and normalises it), while
other keys (like ``timestamp``) are left out. Two more caveats:

* the parquet column is float64 (exact for epoch stamps), but two common read paths round
  it to float32 (~2 minutes at epoch magnitudes): `LeRobotDataset[i]` (every number
  becomes a default-dtype tensor) and `hf_dataset.with_format("numpy")` (datasets' numpy
  formatter downcasts float64). Read it through arrow for real times, e.g.
  ``ds.hf_dataset.with_format("arrow", columns=[STAMP_KEY])[:][STAMP_KEY]``;
* LeRobot's statistics of it are right for min/max/mean but its std is numerically
  meaningless (computed as E[x^2] - E[x]^2, which cancels at epoch magnitudes).

Crash safety. What LeRobot 0.4.4 does on its own (read from its source, checked on disk):

* data rows go through one `pyarrow.ParquetWriter` kept open across episodes until
  `finalize()` (or until the file reaches ``data_files_size_in_mb``); a parquet file gets
  its footer only on close, so before that it is unreadable;
* per-episode metadata (``meta/episodes``) is buffered in memory (10 episodes) and
  written through another open ParquetWriter, closed only by `finalize()`;
* ``meta/info.json``, ``meta/stats.json`` and ``meta/tasks.parquet`` are rewritten in
  place (not atomically) at every `save_episode()`, so between saves info.json already
  counts episodes whose metadata is not on disk;
* videos of later episodes are concatenated into the same mp4, rewritten in place;
* frames of the episode being recorded are PNGs under ``images/``; encoding happens in
  ``tmpXXXXXXXX/`` folders at the dataset root.

So a SIGKILL before `finalize()` leaves *no* episode of the session loadable. This
writer instead makes every saved episode a commit:

1. after LeRobot's `save_episode()` it calls `finalize()` (closes both parquet writers)
   and rewinds LeRobot's "latest episode" state, as LeRobot's own resume does, so the
   next episode goes to *new* data / meta / video files: committed files are never
   written again (checked at every commit: a changed committed file is an error);
2. it then records the commit in ``.rla_recording/commit.json`` (atomic replace, fsync):
   the committed episode and frame counts, every file under ``data/``, ``videos/`` and
   ``meta/episodes/`` with its size, and a snapshot of info.json, stats.json and
   tasks.parquet.

Between saves the on-disk dataset is therefore always a complete, loadable LeRobot
dataset (killed mid-episode: only ``images/`` is extra, which LeRobot ignores). A kill
*during* a save can leave a footer-less parquet file and an info.json ahead of the
metadata; opening an `EpisodeWriter` on the folder repairs both cases back to the last
commit: files not in the commit are deleted, the meta files are restored from the
snapshot, ``images/`` and LeRobot's ``tmp*`` folders are removed (`RepairReport`).
`repair_dataset(root)` does the same without opening a writer. A dataset written by
something else (no journal) is adopted only if it is consistent. A new dataset is built in
a hidden sibling folder (``.<name>.creating-*``) and renamed into place once its empty
commit exists, so ``root`` never exists without a journal (a crash during creation can
leave such a sibling behind; it is safe to delete).

The price is one data parquet file, one ``meta/episodes`` file and one mp4 per camera per
episode (what LeRobot produces anyway when a recording is resumed) instead of files
shared by many episodes. Closing and committing costs a few milliseconds per episode
(`status()["last_save"]` breaks a save down); the video encoding dominates.

A lock (``.rla_recording/writer.lock``, `flock`) keeps two writers off one dataset; the
kernel releases it when its process dies, so a crashed writer never blocks the next.
"""
from __future__ import annotations

import bisect
import collections
import concurrent.futures
import contextlib
import json
import logging
import math
import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

log = logging.getLogger(__name__)

STAMP_KEY = "capture_stamp"  # not "observation.*": see the module doc
STREAM_KINDS = ("camera", "state", "action", "other")
JOURNAL_DIR = ".rla_recording"
COMMIT_FILE = "commit.json"
LOCK_FILE = "writer.lock"
JOURNAL_FORMAT = 1
# Files LeRobot keeps under these folders; the journal lists all of them.
TRACKED_DIRS = ("data", "videos", "meta/episodes")
# Meta files LeRobot rewrites in place at every save; the journal snapshots them.
SNAPSHOT_FILES = ("meta/info.json", "meta/stats.json", "meta/tasks.parquet")
# What LeRobot may leave at the root of a dataset: folders it owns, scratch folders.
KNOWN_ROOT_ENTRIES = {"data", "videos", "meta", "images", JOURNAL_DIR}
TEMP_DIR_PATTERN = re.compile(r"tmp[a-z0-9_]{8}")  # tempfile.mkdtemp(dir=root), used for encoding
LEROBOT_VERSION = "0.4.4"
_EPS = 1e-9


# =========================================================================== synchronisation


@dataclass(frozen=True)
class StreamSpec:
    """A registered stream. `tolerance` (seconds) overrides the synchronizer's default."""

    name: str
    kind: str
    required: bool = True
    tolerance: float | None = None


@dataclass(frozen=True)
class SyncResult:
    """The outcome of synchronising the streams at time `t`.

    complete: every required stream had a sample within tolerance of `t`. Then `values`
        maps stream name -> value (optional streams only when they matched) and `stamps`
        the real header stamps of the samples used. Otherwise `values` and `stamps` are
        empty and `missing` / `reasons` say which required streams failed and why:
        "no_data" (nothing buffered), "stale" (newest sample older than t - tolerance),
        "ahead" (oldest buffered sample newer than t + tolerance) or "gap" (samples on
        both sides of t, none within tolerance).
    tick: the tick number since `start()`, None for `frame_at()` queries.
    reference: the stream whose stamp `to_frame` stores (the reference camera).
    """

    t: float
    tick: int | None
    values: Mapping[str, Any]
    stamps: Mapping[str, float]
    missing: tuple[str, ...]
    reasons: Mapping[str, str]
    reference: str | None
    missing_optional: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return not self.missing

    @property
    def reference_stamp(self) -> float | None:
        return self.stamps.get(self.reference) if self.reference is not None else None

    def to_frame(self, stamp_key: str | None = STAMP_KEY) -> dict[str, Any]:
        """The frame for `EpisodeWriter.add_frame`: the values plus the reference stamp as float64 (1,)."""
        if not self.complete:
            raise ValueError(f"tick at t={self.t:.6f} is incomplete (missing {list(self.missing)}); it has no frame")
        frame = dict(self.values)
        if stamp_key is not None:
            if self.reference is None or self.reference not in self.stamps:
                raise ValueError("no reference stream to take the frame stamp from")
            frame[stamp_key] = np.array([self.stamps[self.reference]], dtype=np.float64)
        return frame


class _Buffer:
    """Recent samples of one stream, sorted by stamp, at most `capacity` of them."""

    __slots__ = ("stamps", "values", "seqs", "capacity", "pushed", "out_of_order", "evicted", "late")

    def __init__(self, capacity: int) -> None:
        self.stamps: list[float] = []
        self.values: list[Any] = []
        self.seqs: list[int] = []
        self.capacity = capacity
        self.pushed = 0
        self.out_of_order = 0
        self.evicted = 0
        self.late = 0

    def insert(self, stamp: float, value: Any, seq: int) -> None:
        self.pushed += 1
        if self.stamps and stamp < self.stamps[-1]:
            self.out_of_order += 1
        i = bisect.bisect_left(self.stamps, stamp)
        if i < len(self.stamps) and self.stamps[i] == stamp:  # re-sent sample: the newer value wins
            self.values[i] = value
            self.seqs[i] = seq
            return
        if len(self.stamps) >= self.capacity and i == 0:
            self.evicted += 1  # older than everything kept in a full buffer
            return
        self.stamps.insert(i, stamp)
        self.values.insert(i, value)
        self.seqs.insert(i, seq)
        if len(self.stamps) > self.capacity:
            del self.stamps[0], self.values[0], self.seqs[0]
            self.evicted += 1

    def nearest(self, t: float) -> int | None:
        """Index of the sample nearest to t (the earlier one on a tie)."""
        if not self.stamps:
            return None
        i = bisect.bisect_left(self.stamps, t)
        if i == 0:
            return 0
        if i == len(self.stamps):
            return i - 1
        return i - 1 if t - self.stamps[i - 1] <= self.stamps[i] - t else i

    @property
    def newest(self) -> float | None:
        return self.stamps[-1] if self.stamps else None


class StreamSynchronizer:
    """Assemble dataset frames at `fps` from asynchronous, stamped streams (see the module doc).

    fps: the dataset frame rate; ticks are t0 + k / fps.
    tolerance: the largest |sample stamp - tick| accepted (seconds); default half a period.
    latency_budget: how long (seconds, in stamp time) a tick waits for lagging streams
        before it is decided with what is there; "now" is the newest stamp pushed to any
        stream unless `poll(now)` is given a clock.
    buffer_size: samples kept per stream; must cover rate x (latency_budget + tolerance).
    reference: the stream whose stamp frames record; default the first camera (else the
        first required stream). It must be a required stream.

    Thread-safe: `push` may be called from several callback threads.
    """

    def __init__(
        self,
        fps: float,
        *,
        tolerance: float | None = None,
        latency_budget: float = 0.25,
        buffer_size: int = 256,
        reference: str | None = None,
    ) -> None:
        if not (fps > 0 and math.isfinite(fps)):
            raise ValueError(f"fps must be positive, got {fps}")
        self.fps = float(fps)
        self.period = 1.0 / self.fps
        self.tolerance = 0.5 * self.period if tolerance is None else float(tolerance)
        if not self.tolerance >= 0:
            raise ValueError(f"tolerance must be >= 0, got {tolerance}")
        if not latency_budget >= 0:
            raise ValueError(f"latency_budget must be >= 0, got {latency_budget}")
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        self.latency_budget = float(latency_budget)
        self.buffer_size = int(buffer_size)
        self._reference = reference
        self._specs: dict[str, StreamSpec] = {}
        self._buffers: dict[str, _Buffer] = {}
        self._lock = threading.RLock()
        self._seq = 0
        self._newest_any: float | None = None
        self._started = False
        self._start_seq = 0
        self._t0: float | None = None
        self._next_k = 0
        self._counts: collections.Counter[str] = collections.Counter()
        self._missing_counts: collections.Counter[str] = collections.Counter()

    # -- configuration

    def add_stream(self, name: str, kind: str, *, required: bool = True, tolerance: float | None = None) -> StreamSpec:
        """Register a stream. kind: "camera", "state", "action" or "other" (metadata; cameras
        are candidates for the reference). Optional streams never hold back or spoil a tick:
        they are in `values` when they have a sample within tolerance, else listed in
        `missing_optional`."""
        if kind not in STREAM_KINDS:
            raise ValueError(f"unknown stream kind {kind!r}; use one of {STREAM_KINDS}")
        if tolerance is not None and not tolerance >= 0:
            raise ValueError(f"tolerance must be >= 0, got {tolerance}")
        with self._lock:
            if name in self._specs:
                raise ValueError(f"stream {name!r} is already registered")
            spec = StreamSpec(name, kind, bool(required), None if tolerance is None else float(tolerance))
            self._specs[name] = spec
            self._buffers[name] = _Buffer(self.buffer_size)
            return spec

    @property
    def streams(self) -> dict[str, StreamSpec]:
        with self._lock:
            return dict(self._specs)

    @property
    def reference(self) -> str | None:
        """The stream whose stamp frames record."""
        with self._lock:
            if self._reference is not None:
                return self._reference
            cameras = [s.name for s in self._specs.values() if s.kind == "camera" and s.required]
            if cameras:
                return cameras[0]
            required = [s.name for s in self._specs.values() if s.required]
            return required[0] if required else None

    def _check_config(self) -> None:
        if not any(s.required for s in self._specs.values()):
            raise RuntimeError("register at least one required stream before synchronising")
        ref = self.reference
        if ref is not None and (ref not in self._specs or not self._specs[ref].required):
            raise RuntimeError(f"the reference stream {ref!r} must be a registered, required stream")

    # -- input

    def push(self, name: str, stamp: float, value: Any) -> None:
        """Store one sample of stream `name` taken at `stamp` (seconds). Out-of-order samples
        are inserted in place; the oldest sample goes when the buffer is full."""
        stamp = float(stamp)
        if not math.isfinite(stamp):
            raise ValueError(f"stamp of {name!r} must be finite, got {stamp}")
        with self._lock:
            buffer = self._buffers.get(name)
            if buffer is None:
                raise KeyError(f"unknown stream {name!r}; registered: {list(self._specs)}")
            self._seq += 1
            if self._started and self._t0 is not None and self._next_k > 0:
                if stamp < self._t0 + (self._next_k - 1) * self.period:
                    buffer.late += 1  # its tick is already decided
            buffer.insert(stamp, value, self._seq)
            if self._newest_any is None or stamp > self._newest_any:
                self._newest_any = stamp

    # -- queries

    def _tolerance(self, spec: StreamSpec) -> float:
        return self.tolerance if spec.tolerance is None else spec.tolerance

    def _decide(self, t: float, tick: int | None) -> SyncResult:
        values: dict[str, Any] = {}
        stamps: dict[str, float] = {}
        missing: list[str] = []
        reasons: dict[str, str] = {}
        missing_optional: list[str] = []
        for name, spec in self._specs.items():
            buffer = self._buffers[name]
            tol = self._tolerance(spec)
            i = buffer.nearest(t)
            if i is not None and abs(buffer.stamps[i] - t) <= tol + _EPS:
                values[name] = buffer.values[i]
                stamps[name] = buffer.stamps[i]
                continue
            if not spec.required:
                missing_optional.append(name)
                continue
            missing.append(name)
            if i is None:
                reasons[name] = "no_data"
            elif buffer.stamps[-1] < t:
                reasons[name] = "stale"
            elif buffer.stamps[0] > t:
                reasons[name] = "ahead"
            else:
                reasons[name] = "gap"
        if missing:
            values, stamps = {}, {}
        return SyncResult(
            t=t,
            tick=tick,
            values=values,
            stamps=stamps,
            missing=tuple(missing),
            reasons=reasons,
            reference=self.reference,
            missing_optional=tuple(missing_optional),
        )

    def frame_at(self, t: float) -> SyncResult:
        """Synchronise at an arbitrary time `t` with what is buffered now (no tick state changes)."""
        with self._lock:
            self._check_config()
            return self._decide(float(t), None)

    # -- ticks

    def start(self, t0: float | None = None) -> None:
        """Begin producing ticks t0 + k / fps (k = 0, 1, ...).

        With t0=None the first tick is the first instant at which every required stream
        has delivered a sample pushed after this call: the max over required streams of
        their first new stamp. Samples already buffered stay usable for matching.
        """
        with self._lock:
            self._check_config()
            self._started = True
            self._start_seq = self._seq
            self._t0 = None if t0 is None else float(t0)
            self._next_k = 0

    def stop(self) -> None:
        """Stop producing ticks (buffers are kept)."""
        with self._lock:
            self._started = False
            self._t0 = None
            self._next_k = 0

    @property
    def t0(self) -> float | None:
        """The first tick's time; None before `start()` or until every required stream delivered."""
        with self._lock:
            return self._resolve_t0() if self._started else None

    def _resolve_t0(self) -> float | None:
        if self._t0 is not None:
            return self._t0
        firsts = []
        for name, spec in self._specs.items():
            if not spec.required:
                continue
            buffer = self._buffers[name]
            fresh = [s for s, q in zip(buffer.stamps, buffer.seqs) if q > self._start_seq]
            if not fresh:
                return None
            firsts.append(min(fresh))
        self._t0 = max(firsts)
        return self._t0

    def next_tick(self) -> float | None:
        """Time of the next undecided tick; None before `start()` or while t0 is not known yet."""
        with self._lock:
            if not self._started:
                return None
            t0 = self._resolve_t0()
            return None if t0 is None else t0 + self._next_k * self.period

    def _ready(self, t: float, now: float | None) -> bool:
        if all(
            self._buffers[name].newest is not None and self._buffers[name].newest >= t - _EPS
            for name, spec in self._specs.items()
            if spec.required
        ):
            return True
        return now is not None and t < now - self.latency_budget

    def poll(self, now: float | None = None) -> list[SyncResult]:
        """Decide every tick that can be decided now, in order, each exactly once.

        now: the current time in stamp time (e.g. the node clock); default the newest
            stamp pushed to any stream, which keeps replays and tests deterministic.
        Returns complete and incomplete results alike; skip the incomplete ones.
        """
        with self._lock:
            if not self._started:
                return []
            self._check_config()
            t0 = self._resolve_t0()
            if t0 is None:
                return []
            clock = self._newest_any if now is None else float(now)
            results = []
            while True:
                t = t0 + self._next_k * self.period
                if not self._ready(t, clock):
                    break
                result = self._decide(t, self._next_k)
                self._next_k += 1
                self._counts["ticks"] += 1
                self._counts["complete" if result.complete else "skipped"] += 1
                for name in result.missing:
                    self._missing_counts[name] += 1
                results.append(result)
            return results

    def stats(self) -> dict[str, Any]:
        """Counters: ticks decided / complete / skipped, and per stream samples pushed,
        out-of-order, late (its tick was already decided), evicted and ticks missed."""
        with self._lock:
            return {
                "ticks": self._counts["ticks"],
                "complete": self._counts["complete"],
                "skipped": self._counts["skipped"],
                "t0": self._t0,
                "next_tick": None if self._t0 is None or not self._started else self._t0 + self._next_k * self.period,
                "streams": {
                    name: {
                        "kind": spec.kind,
                        "required": spec.required,
                        "pushed": self._buffers[name].pushed,
                        "buffered": len(self._buffers[name].stamps),
                        "newest": self._buffers[name].newest,
                        "out_of_order": self._buffers[name].out_of_order,
                        "late": self._buffers[name].late,
                        "evicted": self._buffers[name].evicted,
                        "missed_ticks": self._missing_counts[name],
                    }
                    for name, spec in self._specs.items()
                },
            }


# =========================================================================== errors and reports


class RecordingError(RuntimeError):
    """The writer cannot do what was asked (wrong state, failed worker, unusable dataset)."""


class QueueFullError(RecordingError):
    """`add_frame` found the worker's queue full; the frame was dropped (and counted)."""


class DroppedFramesError(RecordingError):
    """`save_episode` refused an episode that lost frames to a full queue."""


class DatasetRecoveryError(RecordingError):
    """The dataset on disk is inconsistent in a way the journal cannot repair."""


@dataclass
class RepairReport:
    """What opening a dataset found and did. Paths are relative to the dataset root."""

    committed_episodes: int = 0
    committed_frames: int = 0
    removed: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    created: bool = False
    adopted: bool = False

    @property
    def repaired(self) -> bool:
        return bool(self.removed or self.restored)


# =========================================================================== journal


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems do not support fsync on folders
        _fsync_file(path)


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _scan_tracked(root: Path) -> dict[str, int]:
    """Every file under data/, videos/ and meta/episodes/ with its size."""
    files: dict[str, int] = {}
    for sub in TRACKED_DIRS:
        base = root / sub
        if not base.is_dir():
            continue
        for path in base.rglob("*"):
            if path.is_file() or path.is_symlink():
                files[_rel(root, path)] = path.lstat().st_size
    return files


def _same_bytes(a: Path, b: Path) -> bool:
    if not (a.is_file() and b.is_file()) or a.stat().st_size != b.stat().st_size:
        return False
    return a.read_bytes() == b.read_bytes()


def _atomic_copy(src: Path, dst: Path, durable: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}.tmp")
    shutil.copyfile(src, tmp)
    if durable:
        _fsync_file(tmp)
    os.replace(tmp, dst)
    if durable:
        _fsync_dir(dst.parent)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


class _Journal:
    """`.rla_recording/`: the last commit (commit.json) and its meta snapshot."""

    def __init__(self, root: Path, durable: bool = True) -> None:
        self.root = Path(root)
        self.dir = self.root / JOURNAL_DIR
        self.durable = durable
        self.state: dict[str, Any] | None = None

    def load(self) -> dict[str, Any] | None:
        path = self.dir / COMMIT_FILE
        if not path.is_file():
            return None
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError) as err:  # atomic replace makes this "cannot happen"
            raise DatasetRecoveryError(f"unreadable recording journal {path}: {err}") from err
        if state.get("format") != JOURNAL_FORMAT:
            raise DatasetRecoveryError(f"recording journal {path} has unknown format {state.get('format')!r}")
        self.state = state
        return state

    def commit(self, total_episodes: int, total_frames: int, expected_new: int | None = None) -> dict[str, Any]:
        """Record the dataset's current files and meta as the last good state.

        expected_new: how many tracked files the new episode must have added; every file
        of the previous commit must be unchanged (committed files are immutable).
        """
        files = _scan_tracked(self.root)
        if self.state is not None and expected_new is not None:
            previous = self.state["files"]
            changed = sorted(rel for rel, size in previous.items() if files.get(rel) != size)
            if changed:
                raise RecordingError(
                    f"LeRobot modified files of already committed episodes: {changed}; "
                    f"this writer expects lerobot {LEROBOT_VERSION}'s write path"
                )
            new = sorted(set(files) - set(previous))
            if len(new) != expected_new:
                raise RecordingError(
                    f"expected {expected_new} new dataset files for the saved episode, found {new}; "
                    f"this writer expects lerobot {LEROBOT_VERSION}'s write path"
                )
            if self.durable:
                for rel in new:
                    _fsync_file(self.root / rel)
                for parent in {(self.root / rel).parent for rel in new}:
                    _fsync_dir(parent)
        self.dir.mkdir(exist_ok=True)
        snapshot = f"snap-{total_episodes:06d}-{uuid.uuid4().hex[:8]}"
        tmp = self.dir / f".tmp-{snapshot}"
        tmp.mkdir()
        snapshotted = []
        for rel in SNAPSHOT_FILES:
            src = self.root / rel
            if src.is_file():
                dst = tmp / Path(rel).name
                shutil.copyfile(src, dst)
                if self.durable:
                    _fsync_file(dst)
                snapshotted.append(rel)
        os.rename(tmp, self.dir / snapshot)
        state = {
            "format": JOURNAL_FORMAT,
            "total_episodes": int(total_episodes),
            "total_frames": int(total_frames),
            "files": files,
            "snapshot": snapshot,
            "snapshot_files": snapshotted,
            "time": time.time(),
        }
        tmp_commit = self.dir / f".{COMMIT_FILE}.tmp"
        with open(tmp_commit, "w") as f:
            json.dump(state, f, indent=1, sort_keys=True)
            if self.durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp_commit, self.dir / COMMIT_FILE)
        if self.durable:
            _fsync_dir(self.dir)
        self.state = state
        self._drop_stale_snapshots()
        return state

    def _drop_stale_snapshots(self) -> list[str]:
        keep = self.state["snapshot"] if self.state else None
        removed = []
        for entry in self.dir.iterdir():
            if entry.name in (COMMIT_FILE, LOCK_FILE, keep):
                continue
            if entry.name.startswith(("snap-", ".tmp-", f".{COMMIT_FILE}")):
                _remove(entry)
                removed.append(_rel(self.root, entry))
        return removed


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DatasetRecoveryError(f"cannot read {path}: {err}") from err


def _remove_scratch(root: Path, report: RepairReport) -> None:
    """LeRobot's leftovers of an unsaved episode: images/ (PNG frames) and tmp* encoding folders."""
    for entry in sorted(root.iterdir()):
        if entry.name == "images" or (entry.is_dir() and TEMP_DIR_PATTERN.fullmatch(entry.name)):
            leftovers = entry.is_file() or any(p.is_file() for p in entry.rglob("*"))
            _remove(entry)
            if leftovers:  # empty folders are what a clean close leaves, not damage
                report.removed.append(entry.name)


def _remove_empty_dirs(root: Path) -> None:
    for sub in TRACKED_DIRS:
        base = root / sub
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()


def _validate_untracked(root: Path) -> tuple[int, int]:
    """Check a dataset without a journal (written by something else) is complete and consistent."""
    import pyarrow.parquet as pq

    info = _read_json(root / "meta" / "info.json")
    total_episodes, total_frames = int(info.get("total_episodes", -1)), int(info.get("total_frames", -1))
    problems = []
    meta_files = sorted((root / "meta" / "episodes").glob("*/*.parquet"))
    rows: list[dict[str, Any]] = []
    for path in meta_files:
        try:
            rows += pq.read_table(path).select(
                [c for c in pq.read_schema(path).names if not c.startswith("stats/")]
            ).to_pylist()
        except Exception as err:  # noqa: BLE001 — footer-less or truncated parquet
            problems.append(f"unreadable {_rel(root, path)} ({type(err).__name__})")
    if not problems:
        indices = sorted(int(r["episode_index"]) for r in rows)
        if indices != list(range(total_episodes)):
            problems.append(f"info.json counts {total_episodes} episodes, meta/episodes has {indices}")
        if sum(int(r["length"]) for r in rows) != total_frames:
            problems.append(f"info.json counts {total_frames} frames, the episodes sum to another number")
        data_files = sorted((root / "data").glob("*/*.parquet"))
        referenced = {
            info["data_path"].format(chunk_index=r["data/chunk_index"], file_index=r["data/file_index"]) for r in rows
        }
        if {_rel(root, p) for p in data_files} != referenced:
            found = [_rel(root, p) for p in data_files]
            problems.append(f"data files {found} differ from the referenced {sorted(referenced)}")
        else:
            try:
                n = sum(pq.read_metadata(p).num_rows for p in data_files)
            except Exception as err:  # noqa: BLE001
                problems.append(f"unreadable data parquet ({type(err).__name__}: {err})")
            else:
                if n != total_frames:
                    problems.append(f"data files hold {n} rows, info.json counts {total_frames}")
        video_keys = [k for k, ft in info.get("features", {}).items() if ft.get("dtype") == "video"]
        for r in rows:
            for key in video_keys:
                rel = info["video_path"].format(
                    video_key=key, chunk_index=r[f"videos/{key}/chunk_index"], file_index=r[f"videos/{key}/file_index"]
                )
                if not (root / rel).is_file():
                    problems.append(f"missing video {rel}")
    if problems:
        raise DatasetRecoveryError(
            f"the dataset at {root} has no recording journal (not written by EpisodeWriter) and is "
            f"inconsistent, so it cannot be resumed safely: {'; '.join(problems[:5])}"
        )
    return total_episodes, total_frames


def _is_empty_untracked(root: Path) -> bool:
    """A dataset LeRobot created but never saved an episode in (no journal)."""
    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        return False
    with contextlib.suppress(DatasetRecoveryError, ValueError, TypeError):
        info = _read_json(info_path)
        return int(info.get("total_episodes", -1)) == 0 and not _scan_tracked(root)
    return False


def _recover(root: Path, durable: bool = True) -> tuple[RepairReport, _Journal]:
    """Bring an existing dataset folder back to its last commit (see the module doc).

    The caller holds the writer lock. Returns the report; `report.committed_episodes == 0`
    with nothing else at the root means the folder may be re-created from scratch.
    """
    report = RepairReport()
    journal = _Journal(root, durable)
    unknown = sorted(
        e.name for e in root.iterdir() if e.name not in KNOWN_ROOT_ENTRIES and not TEMP_DIR_PATTERN.fullmatch(e.name)
    )
    state = journal.load()
    if state is None:
        if not (root / "meta" / "info.json").is_file():
            raise DatasetRecoveryError(
                f"{root} exists but is not a LeRobot dataset (no meta/info.json); pass an absent or empty folder"
            )
        if _is_empty_untracked(root):
            _remove_scratch(root, report)
            report.committed_episodes = 0
            return report, journal
        episodes, frames = _validate_untracked(root)
        _remove_scratch(root, report)
        journal.commit(episodes, frames)
        report.adopted = True
        report.committed_episodes, report.committed_frames = episodes, frames
        log.info("adopted dataset %s (%d episodes) into the recording journal", root, episodes)
        return report, journal

    snapshot_dir = journal.dir / state["snapshot"]
    for rel in state["snapshot_files"]:
        if not (snapshot_dir / Path(rel).name).is_file():
            raise DatasetRecoveryError(f"the recording journal of {root} lacks its snapshot of {rel}")
    committed: dict[str, int] = state["files"]
    present = _scan_tracked(root)
    damaged = sorted(rel for rel, size in committed.items() if present.get(rel) != size)
    if damaged:
        raise DatasetRecoveryError(
            f"committed files of {root} are missing or changed: {damaged[:5]}; the dataset was modified "
            f"outside EpisodeWriter and cannot be repaired automatically"
        )
    for rel in sorted(set(present) - set(committed)):
        _remove(root / rel)
        report.removed.append(rel)
    _remove_empty_dirs(root)
    for rel in SNAPSHOT_FILES:
        target = root / rel
        if rel in state["snapshot_files"]:
            source = snapshot_dir / Path(rel).name
            if not _same_bytes(source, target):
                _atomic_copy(source, target, durable)
                report.restored.append(rel)
        elif target.exists():
            _remove(target)
            report.removed.append(rel)
    _remove_scratch(root, report)
    report.removed += journal._drop_stale_snapshots()
    report.committed_episodes = int(state["total_episodes"])
    report.committed_frames = int(state["total_frames"])
    if unknown:
        log.warning("dataset %s has entries EpisodeWriter does not know, left alone: %s", root, unknown)
    if report.repaired:
        log.warning(
            "repaired dataset %s back to its last commit (%d episodes): removed %s, restored %s",
            root, report.committed_episodes, report.removed, report.restored,
        )
    return report, journal


class _Lock:
    """An exclusive flock on `.rla_recording/writer.lock`; released by the kernel if the process dies."""

    def __init__(self, root: Path) -> None:
        import fcntl

        path = root / JOURNAL_DIR / LOCK_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(self._fd)
            self._fd = None
            raise RecordingError(f"another EpisodeWriter is writing the dataset at {root}") from err
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def repair_dataset(root: str | Path) -> RepairReport:
    """Repair a dataset left by a crashed `EpisodeWriter` back to its last commit, without
    opening a writer (takes the writer lock for the duration)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetRecoveryError(f"no dataset at {root}")
    lock = _Lock(root)
    try:
        report, _ = _recover(root)
    finally:
        lock.release()
    return report


# =========================================================================== writer


def _normalise_features(features: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for key, ft in features.items():
        if "dtype" not in ft or "shape" not in ft:
            raise ValueError(f"feature {key!r} needs 'dtype' and 'shape', got {dict(ft)}")
        out[key] = {"dtype": str(ft["dtype"]), "shape": tuple(int(s) for s in ft["shape"]), "names": ft.get("names")}
    return out


def _features_differ(requested: Mapping[str, dict], stored: Mapping[str, dict]) -> list[str]:
    from lerobot.datasets.utils import DEFAULT_FEATURES

    problems = []
    wanted = {**requested, **_normalise_features(DEFAULT_FEATURES)}
    for key in sorted(set(wanted) | set(stored)):
        if key not in stored:
            problems.append(f"{key!r} is not in the dataset")
        elif key not in wanted:
            problems.append(f"the dataset has {key!r}, which was not requested")
        else:
            a, b = wanted[key], stored[key]
            if a["dtype"] != b.get("dtype") or tuple(a["shape"]) != tuple(b.get("shape", ())):
                problems.append(
                    f"{key!r}: requested {a['dtype']}{tuple(a['shape'])}, "
                    f"dataset has {b.get('dtype')}{tuple(b.get('shape', ()))}"
                )
            elif a.get("names") is not None and b.get("names") is not None and list(a["names"]) != list(b["names"]):
                problems.append(f"{key!r}: requested names {a['names']}, dataset has {b['names']}")
    return problems


@dataclass
class _OpenEpisode:
    index: int
    task: str
    frames: int = 0  # accepted into the queue
    dropped: int = 0  # refused by a full queue


_FRAME, _SAVE, _DISCARD, _BARRIER, _STOP = "frame", "save", "discard", "barrier", "stop"


class EpisodeWriter:
    """A LeRobot v3 dataset recorder with a worker thread and per-episode commits (see the module doc).

    root / repo_id: the dataset folder (created if absent or empty, else resumed and
        repaired to its last commit) and its repo id.
    fps, features, robot_type: as for `LeRobotDataset.create`; `features` without the
        LeRobot defaults. A resumed dataset must have exactly these features and fps.
    stamp_key: a float64 (1,) feature added for the real capture stamp (None: none).
    queue_size: frames the worker queue holds before `add_frame` raises QueueFullError.
    vcodec, encoder_threads: LeRobot's video encoder settings.
    durable: fsync committed files, so commits also survive a power loss.

    Not thread-safe: call it from one thread (or serialise the calls).
    """

    def __init__(
        self,
        root: str | Path,
        repo_id: str,
        fps: int,
        features: Mapping[str, Mapping[str, Any]],
        robot_type: str | None = None,
        *,
        stamp_key: str | None = STAMP_KEY,
        queue_size: int = 256,
        vcodec: str = "libsvtav1",
        encoder_threads: int | None = None,
        durable: bool = True,
    ) -> None:
        import lerobot

        if lerobot.__version__ != LEROBOT_VERSION:
            log.warning("EpisodeWriter was written against lerobot %s, found %s", LEROBOT_VERSION, lerobot.__version__)
        if int(fps) != fps or fps <= 0:
            raise ValueError(f"fps must be a positive integer, got {fps}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.root = Path(root)
        self.repo_id = repo_id
        self.fps = int(fps)
        self.robot_type = robot_type
        self.stamp_key = stamp_key
        self.durable = durable
        feats = _normalise_features(features)
        if stamp_key is not None and stamp_key not in feats:
            feats[stamp_key] = {"dtype": "float64", "shape": (1,), "names": None}
        if stamp_key is not None and (feats[stamp_key]["dtype"] != "float64" or feats[stamp_key]["shape"] != (1,)):
            raise ValueError(f"the stamp feature {stamp_key!r} must be float64 of shape (1,)")
        self.features = feats
        self._queue_size = int(queue_size)
        self._vcodec = vcodec
        self._encoder_threads = encoder_threads
        # SVT-AV1 prints its whole configuration to stderr for every episode unless told not to.
        os.environ.setdefault("SVT_LOG", "1")

        self._lock: _Lock | None = None
        self._dataset, self._journal, self.repair_report = self._open()

        self._cond = threading.Condition()
        self._items: collections.deque = collections.deque()
        self._frames_in_queue = 0
        self._episode: _OpenEpisode | None = None
        self._next_index = self.repair_report.committed_episodes
        self._error: BaseException | None = None
        self._closed = False
        self._counters = collections.Counter()
        self._last_save: dict[str, float] = {}
        self._committed = (self.repair_report.committed_episodes, self.repair_report.committed_frames)
        self._worker = threading.Thread(target=self._run, name=f"EpisodeWriter[{self.root.name}]", daemon=True)
        self._worker.start()

    # -- opening

    def _open(self):
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        root = self.root
        if root.exists() and not root.is_dir():
            raise RecordingError(f"{root} is not a folder")
        if root.is_dir() and any(root.iterdir()):
            lock = _Lock(root)
            try:
                report, journal = _recover(root, self.durable)
                if report.committed_episodes == 0:
                    # Nothing saved yet: start afresh, unless the folder holds things we do not own.
                    unknown = [e.name for e in root.iterdir() if e.name not in KNOWN_ROOT_ENTRIES]
                    if unknown:
                        raise DatasetRecoveryError(f"{root} holds an empty dataset and unknown entries {unknown}")
                    for entry in list(root.iterdir()):
                        if entry.name != JOURNAL_DIR:
                            _remove(entry)
                    lock.release()
                    shutil.rmtree(root / JOURNAL_DIR, ignore_errors=True)
                    with contextlib.suppress(OSError):
                        root.rmdir()
                    created = self._create()
                    created[2].removed = report.removed + created[2].removed
                    return created
                info = _read_json(root / "meta" / "info.json")
                problems = _features_differ(self.features, info.get("features", {}))
                if int(info.get("fps", -1)) != self.fps:
                    problems.insert(0, f"fps: requested {self.fps}, dataset has {info.get('fps')}")
                if self.robot_type is not None and info.get("robot_type") != self.robot_type:
                    problems.insert(
                        0, f"robot_type: requested {self.robot_type!r}, dataset has {info.get('robot_type')!r}"
                    )
                if problems:
                    raise RecordingError(f"cannot resume {root}: " + "; ".join(problems))
                dataset = LeRobotDataset(
                    self.repo_id, root=root, vcodec=self._vcodec, encoder_threads=self._encoder_threads
                )
                # Resume mode: the next episode goes to new files. Keep the episode rows as a
                # list, to which every saved episode is appended (see _rewind).
                dataset.meta.episodes = [dict(row) for row in dataset.meta.episodes]
            except BaseException:
                lock.release()
                raise
            self._lock = lock
            return dataset, journal, report
        return self._create()

    def _create(self):
        """Create the dataset in a staging folder, commit it empty, then move it into place:
        `root` never exists without a journal."""
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        root = self.root
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = root.parent / f".{root.name}.creating-{uuid.uuid4().hex[:8]}"
        user_features = {k: {**v, "shape": tuple(v["shape"])} for k, v in self.features.items()}
        dataset = LeRobotDataset.create(
            self.repo_id,
            fps=self.fps,
            features=user_features,
            root=staging,
            robot_type=self.robot_type,
            use_videos=True,
            vcodec=self._vcodec,
            encoder_threads=self._encoder_threads,
        )
        try:
            _Journal(staging, self.durable).commit(0, 0)
            if root.is_dir():
                root.rmdir()  # empty (checked by the caller); a non-empty one makes this fail
            os.rename(staging, root)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if self.durable:
            _fsync_dir(root.parent)
        dataset.root = root
        dataset.meta.root = root
        self._lock = _Lock(root)
        journal = _Journal(root, self.durable)
        journal.load()
        return dataset, journal, RepairReport(created=True)

    # -- caller side

    def _check_usable(self) -> None:
        if self._closed:
            raise RecordingError("the writer is closed")
        if self._error is not None:
            raise RecordingError(
                f"the writer's worker failed ({type(self._error).__name__}: {self._error}); close it and open a "
                f"new EpisodeWriter, which repairs the dataset to its last saved episode"
            ) from self._error

    def _convert(self, frame: Mapping[str, Any], task: str) -> dict[str, Any]:
        """Validate and copy a frame on the caller's thread (cheap; errors are immediate)."""
        from lerobot.datasets.utils import DEFAULT_FEATURES, validate_frame

        expected = [k for k in self.features if k not in DEFAULT_FEATURES]
        missing = [k for k in expected if k not in frame]
        extra = [k for k in frame if k not in self.features or k in DEFAULT_FEATURES]
        if missing or extra:
            raise ValueError(f"frame does not match the dataset features: missing {missing}, unexpected {extra}")
        row: dict[str, Any] = {}
        for key in expected:
            ft, value = self.features[key], frame[key]
            if hasattr(value, "detach"):  # torch tensor
                value = value.detach().cpu().numpy()
            if ft["dtype"] in ("video", "image"):
                array = np.array(value, copy=True)  # the caller may reuse its buffer
                if array.dtype != np.uint8:
                    raise ValueError(f"{key!r}: images must be uint8, got {array.dtype}")
            else:
                array = np.asarray(value)
                dtype = np.dtype(ft["dtype"])
                if array.shape == () and ft["shape"] == (1,):
                    array = array.reshape(1)
                if array.shape != ft["shape"]:
                    raise ValueError(f"{key!r}: expected shape {ft['shape']}, got {array.shape}")
                if not np.can_cast(array.dtype, dtype, casting="same_kind"):
                    raise ValueError(f"{key!r}: cannot store {array.dtype} values as {dtype}")
                array = array.astype(dtype, copy=True)
            row[key] = array
        row["task"] = task
        validate_frame(row, self.features)
        return row

    def _enqueue(self, item: tuple) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify()

    def start_episode(self, task: str) -> int:
        """Open a new episode for `task` (a natural-language string); returns its episode index."""
        self._check_usable()
        if self._episode is not None:
            raise RecordingError(f"episode {self._episode.index} is still open; save or discard it first")
        if not isinstance(task, str) or not task.strip():
            raise ValueError("task must be a non-empty string")
        self._episode = _OpenEpisode(self._next_index, task)
        return self._episode.index

    def add_frame(self, frame: Mapping[str, Any]) -> None:
        """Queue one frame (feature key -> value, without "task") of the open episode.

        Validates and copies the values, then appends to the worker's queue: it never
        waits for the disk or the encoder. Raises QueueFullError (frame dropped, counted)
        when `queue_size` frames are waiting, ValueError for a frame that does not match
        the features.
        """
        self._check_usable()
        episode = self._episode
        if episode is None:
            raise RecordingError("no open episode; call start_episode(task) first")
        row = self._convert(frame, episode.task)
        with self._cond:
            if self._frames_in_queue >= self._queue_size:
                position = episode.frames + episode.dropped
                episode.dropped += 1
                self._counters["frames_dropped"] += 1
                raise QueueFullError(
                    f"the recording queue is full ({self._queue_size} frames); frame "
                    f"{position} of episode {episode.index} dropped "
                    f"({self._counters['frames_dropped']} dropped in total). "
                    f"The disk or encoder is too slow for this frame rate."
                )
            self._items.append((_FRAME, episode.index, row))
            self._frames_in_queue += 1
            self._counters["frames_queued"] += 1
            episode.frames += 1
            self._cond.notify()

    def save_episode(self, *, wait: bool = True, timeout: float | None = None, allow_dropped: bool = False) -> int:
        """Save and commit the open episode; returns its episode index.

        The worker encodes and commits it after the frames queued before. wait=False returns
        at once (the next episode may start meanwhile); a failure then shows on the next
        call. An episode that lost frames to a full queue raises DroppedFramesError and
        stays open unless allow_dropped=True (its frame times then skip the lost frames).
        """
        self._check_usable()
        episode = self._episode
        if episode is None:
            raise RecordingError("no open episode to save")
        if episode.frames == 0:
            raise RecordingError(f"episode {episode.index} has no frames; discard it instead")
        if episode.dropped and not allow_dropped:
            raise DroppedFramesError(
                f"episode {episode.index} lost {episode.dropped} of {episode.frames + episode.dropped} frames to a "
                f"full queue; discard it, or save it with allow_dropped=True"
            )
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._enqueue((_SAVE, episode.index, (episode.frames, future)))
        self._episode = None
        self._next_index += 1
        if wait:
            self._wait(future, timeout)
        return episode.index

    def discard_episode(self, *, wait: bool = True, timeout: float | None = None) -> int:
        """Drop the open episode (queued frames and images written so far); returns its frame count."""
        self._check_usable()
        episode = self._episode
        if episode is None:
            raise RecordingError("no open episode to discard")
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            # Frames still queued need not reach the disk at all.
            while self._items and self._items[-1][0] == _FRAME and self._items[-1][1] == episode.index:
                self._items.pop()
                self._frames_in_queue -= 1
                self._counters["frames_discarded"] += 1
            self._items.append((_DISCARD, episode.index, future))
            self._cond.notify()
        self._episode = None
        if wait:
            self._wait(future, timeout)
        return episode.frames

    def flush(self, timeout: float | None = None) -> None:
        """Wait until the worker has processed everything queued so far."""
        self._check_usable()
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._enqueue((_BARRIER, None, future))
        self._wait(future, timeout)

    def _wait(self, future: concurrent.futures.Future, timeout: float | None) -> Any:
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError as err:
            raise RecordingError(f"the recording worker did not finish within {timeout} s") from err
        except RecordingError:
            raise
        except BaseException as err:
            raise RecordingError(f"recording failed: {type(err).__name__}: {err}") from err

    def close(self, timeout: float | None = None) -> None:
        """Finish the queued work and release the dataset. An open (unsaved) episode is
        discarded. Idempotent."""
        if self._closed:
            return
        if self._episode is not None and self._error is None:
            log.warning("closing with episode %d unsaved; discarding it", self._episode.index)
            with contextlib.suppress(RecordingError):
                self.discard_episode(wait=False)
        self._episode = None
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._enqueue((_STOP, None, future))
        self._closed = True
        try:
            with contextlib.suppress(RecordingError):
                self._wait(future, timeout)
            self._worker.join(timeout)
        finally:
            if not self._worker.is_alive() and self._lock is not None:
                self._lock.release()
                self._lock = None

    def __enter__(self) -> "EpisodeWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def num_episodes(self) -> int:
        """Committed (saved) episodes on disk."""
        return self._committed[0]

    def status(self) -> dict[str, Any]:
        """Counters and state, cheap to call (e.g. from a diagnostics timer).

        frames_queued: accepted by add_frame; frames_written: handed to LeRobot by the
        worker (images on disk); frames_saved: in committed episodes; frames_dropped:
        refused by a full queue; frames_discarded: of discarded episodes.
        """
        with self._cond:
            episode = self._episode
            state = "closed" if self._closed else "failed" if self._error is not None else (
                "recording" if episode is not None else "idle"
            )
            return {
                "root": str(self.root),
                "repo_id": self.repo_id,
                "state": state,
                "episode_index": episode.index if episode else None,
                "episode_frames": episode.frames if episode else 0,
                "episode_dropped": episode.dropped if episode else 0,
                "next_episode_index": self._next_index,
                "total_episodes": self._committed[0],
                "total_frames": self._committed[1],
                "episodes_saved": self._counters["episodes_saved"],
                "episodes_discarded": self._counters["episodes_discarded"],
                "frames_queued": self._counters["frames_queued"],
                "frames_written": self._counters["frames_written"],
                "frames_saved": self._counters["frames_saved"],
                "frames_dropped": self._counters["frames_dropped"],
                "frames_discarded": self._counters["frames_discarded"],
                "queue_depth": self._frames_in_queue,
                "queue_capacity": self._queue_size,
                "last_save": dict(self._last_save),
                "error": None if self._error is None else f"{type(self._error).__name__}: {self._error}",
                "repaired": self.repair_report.repaired,
            }

    # -- worker side

    def _count(self, **increments: int) -> None:
        with self._cond:
            self._counters.update(increments)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items:
                    self._cond.wait()
                item = self._items.popleft()
                if item[0] == _FRAME:
                    self._frames_in_queue -= 1
            kind, episode_index, payload = item
            future = payload if kind in (_DISCARD, _BARRIER, _STOP) else payload[1] if kind == _SAVE else None
            if kind == _STOP:
                self._shutdown(future)
                return
            if self._error is not None:
                # After a failure nothing more is written: the dataset stays at its last commit.
                if future is not None:
                    future.set_exception(RecordingError(f"the writer failed earlier: {self._error}"))
                continue
            try:
                if kind == _FRAME:
                    self._dataset.add_frame(payload)
                    self._count(frames_written=1)
                elif kind == _SAVE:
                    future.set_result(self._save(episode_index, payload[0]))
                elif kind == _DISCARD:
                    future.set_result(self._discard(episode_index))
                elif kind == _BARRIER:
                    future.set_result(None)
            except BaseException as err:  # noqa: BLE001 — kept and re-raised on the caller's side
                log.error("recording worker failed on %s of episode %s: %s", kind, episode_index, err)
                self._error = err
                if future is not None and not future.done():
                    future.set_exception(err)

    def _save(self, episode_index: int, frames: int) -> int:
        from lerobot.utils.utils import SuppressProgressBars

        dataset = self._dataset
        if dataset.meta.total_episodes != episode_index:
            raise RecordingError(
                f"episode index mismatch: saving {episode_index}, dataset has {dataset.meta.total_episodes}"
            )
        buffered = 0 if dataset.episode_buffer is None else dataset.episode_buffer["size"]
        if buffered != frames:
            raise RecordingError(f"episode {episode_index}: {frames} frames queued but {buffered} reached LeRobot")
        t0 = time.perf_counter()
        # save_episode runs a `datasets` map with its own progress bar.
        with SuppressProgressBars():
            dataset.save_episode(parallel_encoding=False)
        t1 = time.perf_counter()
        dataset.finalize()  # close the data and meta/episodes parquet writers: footers on disk
        self._rewind(dataset)
        t2 = time.perf_counter()
        info = dataset.meta.info
        self._journal.commit(
            info["total_episodes"], info["total_frames"], expected_new=2 + len(dataset.meta.video_keys)
        )
        t3 = time.perf_counter()
        self._committed = (int(info["total_episodes"]), int(info["total_frames"]))
        self._count(episodes_saved=1, frames_saved=frames)
        self._last_save = {
            "episode_index": episode_index,
            "frames": frames,
            "save_episode_s": t1 - t0,
            "finalize_s": t2 - t1,
            "commit_s": t3 - t2,
        }
        return episode_index

    @staticmethod
    def _rewind(dataset: Any) -> None:
        """Put LeRobot in the state it has after reopening the dataset (its resume mode), so
        that the next episode goes to new data, meta and video files instead of the
        (closed) files of this one. Mirrors what `LeRobotDataset(repo_id, root)` sets up."""
        meta = dataset.meta
        latest = meta.latest_episode
        row = {k: (v[0] if isinstance(v, list) else v) for k, v in latest.items() if not k.startswith("stats/")}
        if meta.episodes is None:
            meta.episodes = []
        elif not isinstance(meta.episodes, list):
            meta.episodes = [dict(r) for r in meta.episodes]
        meta.episodes.append(row)
        meta.latest_episode = None
        dataset.latest_episode = None
        dataset._current_file_start_frame = None
        dataset._writer_closed_for_reading = False

    def _discard(self, episode_index: int) -> int:
        from lerobot.datasets.utils import DEFAULT_IMAGE_PATH

        dataset = self._dataset
        frames = 0
        if dataset.episode_buffer is not None:
            frames = dataset.episode_buffer["size"]
            dataset.clear_episode_buffer(delete_images=True)  # removes image-dtype frames only
        # Video frames wait as PNGs too; a shorter next episode would otherwise encode stale ones.
        for key in dataset.meta.video_keys:
            first = DEFAULT_IMAGE_PATH.format(image_key=key, episode_index=episode_index, frame_index=0)
            img_dir = (dataset.root / first).parent
            shutil.rmtree(img_dir, ignore_errors=True)
        self._count(episodes_discarded=1, frames_discarded=frames)
        return frames

    def _shutdown(self, future: concurrent.futures.Future) -> None:
        try:
            if self._error is not None:
                # Leave the disk as the failure left it: the next writer repairs it to the last commit.
                self._dataset = None
                future.set_result(None)
                return
            buffer = self._dataset.episode_buffer
            if buffer is not None and buffer["size"]:
                self._discard(self._dataset.meta.total_episodes)
            self._dataset.finalize()
            self._dataset.stop_image_writer()
            self._dataset = None
            images = self.root / "images"
            if images.is_dir() and not any(p.is_file() for p in images.rglob("*")):
                shutil.rmtree(images, ignore_errors=True)  # the empty per-camera folders LeRobot leaves
            future.set_result(None)
        except BaseException as err:  # noqa: BLE001
            self._error = self._error or err
            future.set_exception(err)


def iter_complete_frames(results: Iterable[SyncResult], stamp_key: str | None = STAMP_KEY) -> Iterable[dict[str, Any]]:
    """The frames of the complete results (incomplete ticks skipped)."""
    for result in results:
        if result.complete:
            yield result.to_frame(stamp_key)
