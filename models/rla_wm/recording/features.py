"""Dataset feature specs: normalising them and comparing requested with stored ones."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def normalise_features(features: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Feature specs as {key: {"dtype": str, "shape": tuple, "names": ...}}; ValueError if incomplete."""
    out = {}
    for key, ft in features.items():
        if "dtype" not in ft or "shape" not in ft:
            raise ValueError(f"feature {key!r} needs 'dtype' and 'shape', got {dict(ft)}")
        out[key] = {"dtype": str(ft["dtype"]), "shape": tuple(int(s) for s in ft["shape"]), "names": ft.get("names")}
    return out


def features_differ(requested: Mapping[str, dict], stored: Mapping[str, dict]) -> list[str]:
    """How the stored features (info.json) differ from the requested ones plus LeRobot's defaults;
    empty when a dataset can be resumed with them."""
    from lerobot.datasets.utils import DEFAULT_FEATURES

    problems = []
    wanted = {**requested, **normalise_features(DEFAULT_FEATURES)}
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
