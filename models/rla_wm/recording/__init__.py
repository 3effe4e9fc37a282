"""Recording teleoperation into LeRobot v3 datasets. ROS-free: a recorder node feeds header
stamps and decoded values in, this package does the rest.

Modules, one job each:

* `sync`: `StreamSynchronizer` turns asynchronous stamped streams into dataset frames at a
  fixed fps (nearest sample within tolerance; incomplete ticks are reported, never filled);
* `writer`: `EpisodeWriter`, a LeRobot v3 dataset writer with a worker thread, a bounded
  queue and one commit per saved episode;
* `journal`: the commit journal (``.rla_recording/``) and the writer lock;
* `repair`: rolling a dataset back to its last commit (`repair_dataset`, `RepairReport`);
* `session`: `RecordingSession`, the recorder's logic (feature schema, episode counters,
  stale streams, the clock model, start/stop/discard) over the two, fed plain stamped values;
* `environment`: the `observation.environment_state` vector (a flattened grid of values);
* `features`, `files`, `layout`, `errors`: feature specs, file helpers, names, errors.
"""

from rla_wm.recording.environment import ENVIRONMENT_STATE_KEY
from rla_wm.recording.errors import DatasetRecoveryError, DroppedFramesError, QueueFullError, RecordingError
from rla_wm.recording.layout import STAMP_KEY
from rla_wm.recording.repair import RepairReport, repair_dataset
from rla_wm.recording.session import Answer, Invalid, PendingSave, RecorderConfig, RecordingSession, SessionStatus
from rla_wm.recording.sync import STREAM_KINDS, StreamSpec, StreamSynchronizer, SyncResult, iter_complete_frames
from rla_wm.recording.writer import EpisodeWriter

__all__ = [
    "ENVIRONMENT_STATE_KEY",
    "STAMP_KEY",
    "STREAM_KINDS",
    "Answer",
    "DatasetRecoveryError",
    "DroppedFramesError",
    "EpisodeWriter",
    "Invalid",
    "PendingSave",
    "QueueFullError",
    "RecorderConfig",
    "RecordingError",
    "RecordingSession",
    "RepairReport",
    "SessionStatus",
    "StreamSpec",
    "StreamSynchronizer",
    "SyncResult",
    "iter_complete_frames",
    "repair_dataset",
]
