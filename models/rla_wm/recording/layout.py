"""Names shared by the recording modules: the capture-stamp column and the journal's files.

ROS-free, dependency-free: the synchronizer, the journal and the writer all import it.
"""

from __future__ import annotations

import re

# The real capture time of each frame (float64, shape (1,)). Deliberately not "observation.*":
# LeRobot's `dataset_to_policy_features` turns every observation.* feature into a policy input
# (and normalises it); other keys, like "timestamp", are left out.
STAMP_KEY = "capture_stamp"
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
