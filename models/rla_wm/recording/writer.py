"""A crash-safe LeRobot v3 episode writer with a worker thread (`EpisodeWriter`).

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


See `rla_wm.recording.journal` (commits, lock) and `rla_wm.recording.repair` (rollback).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rla_wm.recording.errors import DatasetRecoveryError, DroppedFramesError, QueueFullError, RecordingError
from rla_wm.recording.features import features_differ, normalise_features
from rla_wm.recording.files import fsync_dir, read_json, remove_path
from rla_wm.recording.journal import Journal, WriterLock
from rla_wm.recording.layout import JOURNAL_DIR, KNOWN_ROOT_ENTRIES, LEROBOT_VERSION, STAMP_KEY
from rla_wm.recording.repair import RepairReport, recover
from rla_wm.recording.thread_scheduling import keep_thread_scheduling

log = logging.getLogger(__name__)


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
    image_writer_threads: threads that write each frame's PNGs (LeRobot's AsyncImageWriter); zlib
        releases the GIL, so several threads use several cores. 0 writes them in the worker thread,
        which cannot keep up with two 1280x720 cameras at 30 Hz on a 2-core computer.
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
        image_writer_threads: int = 2,
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
        feats = normalise_features(features)
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

        if image_writer_threads < 0:
            raise ValueError(f"image_writer_threads must be >= 0, got {image_writer_threads}")
        self._lock: WriterLock | None = None
        self._dataset, self._journal, self.repair_report = self._open()
        if image_writer_threads:
            self._dataset.start_image_writer(num_processes=0, num_threads=int(image_writer_threads))

        self._cond = threading.Condition()
        self._items: collections.deque = collections.deque()
        self._frames_in_queue = 0
        self._episode: _OpenEpisode | None = None
        self._next_index = self.repair_report.committed_episodes
        self._error: BaseException | None = None
        self._closed = False
        self._counters: collections.Counter[str] = collections.Counter()
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
            lock = WriterLock(root)
            try:
                report, journal = recover(root, self.durable)
                if report.committed_episodes == 0:
                    # Nothing saved yet: start afresh, unless the folder holds things we do not own.
                    unknown = [e.name for e in root.iterdir() if e.name not in KNOWN_ROOT_ENTRIES]
                    if unknown:
                        raise DatasetRecoveryError(f"{root} holds an empty dataset and unknown entries {unknown}")
                    for entry in list(root.iterdir()):
                        if entry.name != JOURNAL_DIR:
                            remove_path(entry)
                    lock.release()
                    shutil.rmtree(root / JOURNAL_DIR, ignore_errors=True)
                    with contextlib.suppress(OSError):
                        root.rmdir()
                    created = self._create()
                    created[2].removed = report.removed + created[2].removed
                    return created
                info = read_json(root / "meta" / "info.json")
                problems = features_differ(self.features, info.get("features", {}))
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
            Journal(staging, self.durable).commit(0, 0)
            if root.is_dir():
                root.rmdir()  # empty (checked by the caller); a non-empty one makes this fail
            os.rename(staging, root)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if self.durable:
            fsync_dir(root.parent)
        dataset.root = root
        dataset.meta.root = root
        self._lock = WriterLock(root)
        journal = Journal(root, self.durable)
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
        index, future = self._queue_save(allow_dropped)
        if wait:
            self._wait(future, timeout)
        return index

    def save_episode_async(self, *, allow_dropped: bool = False) -> concurrent.futures.Future:
        """Queue the save of the open episode, as `save_episode(wait=False)`, and return a future
        that resolves to its episode index once it is committed, or raises the save's error.

        For callers that must not block but want the outcome (an event loop, a ROS service).
        The checks (no open episode, no frames, dropped frames) raise at once, as in
        `save_episode`; the next episode may start before the future is done.
        """
        return self._queue_save(allow_dropped)[1]

    def _queue_save(self, allow_dropped: bool) -> tuple[int, concurrent.futures.Future]:
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
        return episode.index, future

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

    def __enter__(self) -> EpisodeWriter:
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
            state = (
                "closed"
                if self._closed
                else "failed"
                if self._error is not None
                else ("recording" if episode is not None else "idle")
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
            if kind == _STOP:
                self._shutdown(payload)  # a stop item's payload is its future
                return
            future = payload if kind in (_DISCARD, _BARRIER) else payload[1] if kind == _SAVE else None
            if self._error is not None:
                # After a failure nothing more is written: the dataset stays at its last commit.
                if future is not None:
                    future.set_exception(RecordingError(f"the writer failed earlier: {self._error}"))
                continue
            try:
                if kind == _FRAME:
                    self._dataset.add_frame(payload)
                    self._count(frames_written=1)
                elif future is not None:  # every other kind carries a future
                    if kind == _SAVE:
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
        with SuppressProgressBars(), keep_thread_scheduling():
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
        if dataset.image_writer is not None:
            dataset.image_writer.wait_until_done()  # no PNG of this episode may land after the clean-up
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
