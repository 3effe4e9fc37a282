"""File helpers of the journal and the repair: fsync, atomic copies, the tracked-file scan."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from rla_wm.recording.errors import DatasetRecoveryError
from rla_wm.recording.layout import TRACKED_DIRS


def fsync_file(path: Path) -> None:
    """Flush a file's data to the disk (what makes a commit survive a power loss)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems do not support fsync on folders
        fsync_file(path)


def rel_path(root: Path, path: Path) -> str:
    """`path` relative to `root`, with forward slashes (the journal's keys)."""
    return path.relative_to(root).as_posix()


def scan_tracked(root: Path) -> dict[str, int]:
    """Every file under data/, videos/ and meta/episodes/ with its size."""
    files: dict[str, int] = {}
    for sub in TRACKED_DIRS:
        base = root / sub
        if not base.is_dir():
            continue
        for path in base.rglob("*"):
            if path.is_file() or path.is_symlink():
                files[rel_path(root, path)] = path.lstat().st_size
    return files


def same_bytes(a: Path, b: Path) -> bool:
    """Both are files with identical content."""
    if not (a.is_file() and b.is_file()) or a.stat().st_size != b.stat().st_size:
        return False
    return a.read_bytes() == b.read_bytes()


def atomic_copy(src: Path, dst: Path, durable: bool) -> None:
    """Copy through a temporary file and rename: `dst` is the old or the new file, never half of one."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}.tmp")
    shutil.copyfile(src, tmp)
    if durable:
        fsync_file(tmp)
    os.replace(tmp, dst)
    if durable:
        fsync_dir(dst.parent)


def remove_path(path: Path) -> None:
    """Delete a file, link or folder tree."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file of the dataset; DatasetRecoveryError when it cannot be read."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DatasetRecoveryError(f"cannot read {path}: {err}") from err
