"""The recording errors (all `RecordingError`s, so callers can catch one type)."""

from __future__ import annotations


class RecordingError(RuntimeError):
    """The writer cannot do what was asked (wrong state, failed worker, unusable dataset)."""


class QueueFullError(RecordingError):
    """`add_frame` found the worker's queue full; the frame was dropped (and counted)."""


class DroppedFramesError(RecordingError):
    """`save_episode` refused an episode that lost frames to a full queue."""


class DatasetRecoveryError(RecordingError):
    """The dataset on disk is inconsistent in a way the journal cannot repair."""
