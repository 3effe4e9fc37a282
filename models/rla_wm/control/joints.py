"""Picking named joints out of a (names, values) pair, such as sensor_msgs/JointState's name/position.

The one way every node and the gate read joint values: by name, in the order asked for, and refusing
a message that is ragged, repeats a name, lacks a joint, or carries NaN/inf for one.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np


def select_joints(names: Sequence[str], values: Sequence[float], wanted: Sequence[str]) -> np.ndarray:
    """Values of the `wanted` joints in that order (float64); ValueError naming what is wrong."""
    names = list(names)
    if len(values) != len(names):
        raise ValueError(f"{len(names)} joint names but {len(values)} values")
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        raise ValueError(f"joint names repeat: {repeated}")
    index = {name: i for i, name in enumerate(names)}
    missing = [name for name in wanted if name not in index]
    if missing:
        raise ValueError(f"joints {missing} missing (message has {names})")
    selected = np.array([values[index[name]] for name in wanted], dtype=np.float64)
    bad = [name for name, value in zip(wanted, selected) if not math.isfinite(float(value))]
    if bad:
        raise ValueError(f"NaN or inf value for joints {bad}")
    return selected
