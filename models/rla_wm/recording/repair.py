"""Bringing a dataset folder back to its last commit (after a crash, a kill or a failed save).

Opening an `EpisodeWriter` on an existing folder runs `recover`; `repair_dataset(root)` does
the same without opening a writer. Files not in the commit are deleted, the meta files are
restored from the snapshot, ``images/`` and LeRobot's ``tmp*`` folders are removed
(`RepairReport` lists what was done). A dataset written by something else (no journal) is
adopted only if it is consistent.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rla_wm.recording.errors import DatasetRecoveryError
from rla_wm.recording.files import atomic_copy, read_json, rel_path, remove_path, same_bytes, scan_tracked
from rla_wm.recording.journal import Journal, WriterLock
from rla_wm.recording.layout import KNOWN_ROOT_ENTRIES, SNAPSHOT_FILES, TEMP_DIR_PATTERN, TRACKED_DIRS

log = logging.getLogger(__name__)


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


def _remove_scratch(root: Path, report: RepairReport) -> None:
    """LeRobot's leftovers of an unsaved episode: images/ (PNG frames) and tmp* encoding folders."""
    for entry in sorted(root.iterdir()):
        if entry.name == "images" or (entry.is_dir() and TEMP_DIR_PATTERN.fullmatch(entry.name)):
            leftovers = entry.is_file() or any(p.is_file() for p in entry.rglob("*"))
            remove_path(entry)
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

    info = read_json(root / "meta" / "info.json")
    total_episodes, total_frames = int(info.get("total_episodes", -1)), int(info.get("total_frames", -1))
    problems = []
    meta_files = sorted((root / "meta" / "episodes").glob("*/*.parquet"))
    rows: list[dict[str, Any]] = []
    for path in meta_files:
        try:
            rows += (
                pq.read_table(path)
                .select([c for c in pq.read_schema(path).names if not c.startswith("stats/")])
                .to_pylist()
            )
        except Exception as err:  # noqa: BLE001 — footer-less or truncated parquet
            problems.append(f"unreadable {rel_path(root, path)} ({type(err).__name__})")
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
        if {rel_path(root, p) for p in data_files} != referenced:
            found = [rel_path(root, p) for p in data_files]
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
        info = read_json(info_path)
        return int(info.get("total_episodes", -1)) == 0 and not scan_tracked(root)
    return False


def recover(root: Path, durable: bool = True) -> tuple[RepairReport, Journal]:
    """Bring an existing dataset folder back to its last commit (see the module doc).

    The caller holds the writer lock. Returns the report; `report.committed_episodes == 0`
    with nothing else at the root means the folder may be re-created from scratch.
    """
    report = RepairReport()
    journal = Journal(root, durable)
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
    present = scan_tracked(root)
    damaged = sorted(rel for rel, size in committed.items() if present.get(rel) != size)
    if damaged:
        raise DatasetRecoveryError(
            f"committed files of {root} are missing or changed: {damaged[:5]}; the dataset was modified "
            f"outside EpisodeWriter and cannot be repaired automatically"
        )
    for rel in sorted(set(present) - set(committed)):
        remove_path(root / rel)
        report.removed.append(rel)
    _remove_empty_dirs(root)
    for rel in SNAPSHOT_FILES:
        target = root / rel
        if rel in state["snapshot_files"]:
            source = snapshot_dir / Path(rel).name
            if not same_bytes(source, target):
                atomic_copy(source, target, durable)
                report.restored.append(rel)
        elif target.exists():
            remove_path(target)
            report.removed.append(rel)
    _remove_scratch(root, report)
    report.removed += journal.drop_stale_snapshots()
    report.committed_episodes = int(state["total_episodes"])
    report.committed_frames = int(state["total_frames"])
    if unknown:
        log.warning("dataset %s has entries EpisodeWriter does not know, left alone: %s", root, unknown)
    if report.repaired:
        log.warning(
            "repaired dataset %s back to its last commit (%d episodes): removed %s, restored %s",
            root,
            report.committed_episodes,
            report.removed,
            report.restored,
        )
    return report, journal


def repair_dataset(root: str | Path) -> RepairReport:
    """Repair a dataset left by a crashed `EpisodeWriter` back to its last commit, without
    opening a writer (takes the writer lock for the duration)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetRecoveryError(f"no dataset at {root}")
    lock = WriterLock(root)
    try:
        report, _ = recover(root)
    finally:
        lock.release()
    return report
