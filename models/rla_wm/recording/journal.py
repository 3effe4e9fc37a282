"""The recording journal (``.rla_recording/``) and the writer lock.

Every saved episode is a commit: `Journal.commit` records in ``commit.json`` (atomic
replace, fsync) the committed episode and frame counts, every file under ``data/``,
``videos/`` and ``meta/episodes/`` with its size, and a snapshot of the meta files LeRobot
rewrites in place (info.json, stats.json, tasks.parquet). `rla_wm.recording.repair` uses
it to roll a dataset back to its last commit.

The lock (``writer.lock``, `flock`) keeps two writers off one dataset; the kernel releases
it when its process dies, so a crashed writer never blocks the next.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from rla_wm.recording.errors import DatasetRecoveryError, RecordingError
from rla_wm.recording.files import fsync_dir, fsync_file, rel_path, remove_path, scan_tracked
from rla_wm.recording.layout import (
    COMMIT_FILE,
    JOURNAL_DIR,
    JOURNAL_FORMAT,
    LEROBOT_VERSION,
    LOCK_FILE,
    SNAPSHOT_FILES,
)


class Journal:
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
        files = scan_tracked(self.root)
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
                    fsync_file(self.root / rel)
                for parent in {(self.root / rel).parent for rel in new}:
                    fsync_dir(parent)
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
                    fsync_file(dst)
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
            fsync_dir(self.dir)
        self.state = state
        self.drop_stale_snapshots()
        return state

    def drop_stale_snapshots(self) -> list[str]:
        keep = self.state["snapshot"] if self.state else None
        removed = []
        for entry in self.dir.iterdir():
            if entry.name in (COMMIT_FILE, LOCK_FILE, keep):
                continue
            if entry.name.startswith(("snap-", ".tmp-", f".{COMMIT_FILE}")):
                remove_path(entry)
                removed.append(rel_path(self.root, entry))
        return removed


class WriterLock:
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
