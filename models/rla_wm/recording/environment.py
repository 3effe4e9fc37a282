"""The environment state a recorder stores as `observation.environment_state`.

LeRobot's name for privileged, non-proprioceptive state (e.g. an object's pose from a
simulator): a float32 vector per frame, which its policies read as an environment input. The
recorder receives it as a grid of values (e.g. a 1x1 `rla_wm_msgs/FeatureMap`); the grid is
flattened row-major, channels last, so one message is one vector.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

ENVIRONMENT_STATE_KEY = "observation.environment_state"


def environment_state_vector(values: npt.ArrayLike, size: int) -> np.ndarray:
    """`values` flattened to a float32 vector of exactly `size` finite numbers; ValueError saying
    why otherwise (another size, or a value that is NaN, infinite or out of float32 range)."""
    vector = np.asarray(values, dtype=np.float64).reshape(-1)
    if vector.size != size:
        raise ValueError(f"environment state has {vector.size} values, the dataset stores {size}")
    # Checked after the cast: a finite double beyond float32's range becomes inf (refused below).
    with np.errstate(over="ignore"):
        out = vector.astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(out))
    if bad.size:
        raise ValueError(f"environment state value(s) {bad.tolist()} not finite: {vector[bad].tolist()}")
    return out


def check_environment_state_names(names: Sequence[str]) -> None:
    """ValueError unless `names` are at least one unique, non-empty name (one per value)."""
    if not names or any(not name for name in names):
        raise ValueError("environment_state_names needs at least one (non-empty) name, one per value")
    if len(set(names)) != len(names):
        raise ValueError(f"environment_state_names must be unique, got {list(names)}")
