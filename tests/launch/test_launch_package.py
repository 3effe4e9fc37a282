"""The rla_wm_ros package as a ROS 2 package: its launch files, its install, its manifest."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from ament_index_python.packages import get_package_share_directory

REPO = Path(__file__).resolve().parents[2]
PACKAGE_DIR = REPO / "ros2_ws" / "src" / "rla_wm_ros"
SOURCE_LAUNCH_DIR = PACKAGE_DIR / "launch"


def test_launch_files_live_in_the_package_and_the_top_level_launch_is_a_relative_link():
    # The package holds the real files, so a copied package (or one checked out alone) keeps them.
    assert SOURCE_LAUNCH_DIR.is_dir() and not SOURCE_LAUNCH_DIR.is_symlink()
    files = sorted(p.name for p in SOURCE_LAUNCH_DIR.glob("*.launch.xml"))
    assert files, f"no launch files in {SOURCE_LAUNCH_DIR}"
    assert not any(p.is_symlink() for p in SOURCE_LAUNCH_DIR.iterdir())
    # launch/ at the top keeps working for users and scripts, and survives moving the checkout.
    top = REPO / "launch"
    assert top.is_symlink()
    target = os.readlink(top)
    assert not os.path.isabs(target), target
    assert top.resolve() == SOURCE_LAUNCH_DIR.resolve()
    assert sorted(p.name for p in top.glob("*.launch.xml")) == files


def test_installed_share_holds_every_launch_file_of_the_source_package():
    installed = Path(get_package_share_directory("rla_wm_ros")) / "launch"
    source = {p.name: p.read_bytes() for p in SOURCE_LAUNCH_DIR.glob("*.launch.xml")}
    assert source
    missing = sorted(set(source) - {p.name for p in installed.glob("*.launch.xml")})
    assert not missing, f"not installed in {installed}: {missing} (rebuild: bash scripts/setup_env.sh)"
    for name, content in source.items():
        assert (installed / name).read_bytes() == content, f"installed {name} differs from the source (rebuild)"


def _setup_py_name(package_copy: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "setup.py", "--name"], cwd=package_copy, capture_output=True, text=True, timeout=120
    )


def test_setup_py_refuses_a_package_without_launch_files(tmp_path):
    copy = tmp_path / "rla_wm_ros"
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("launch", "__pycache__", "*.egg-info"))
    result = _setup_py_name(copy)
    assert result.returncode != 0
    assert "no launch files" in result.stdout + result.stderr
    # A plain copy of the package (cp -r, no link to follow) has them, and builds.
    shutil.copytree(SOURCE_LAUNCH_DIR, copy / "launch")
    result = _setup_py_name(copy)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "rla_wm_ros"


def test_setup_env_rebuild_hash_sees_launch_file_changes_through_the_link(tmp_path):
    """Run setup_env.sh's own src_hash command on a copy of the layout; editing a launch file
    (through the top-level link) must change the hash, i.e. trigger a colcon rebuild."""
    script = (REPO / "scripts" / "setup_env.sh").read_text()
    match = re.search(r'^src_hash="\$\((.*?)\)"$', script, flags=re.MULTILINE | re.DOTALL)
    assert match, "src_hash=... not found in scripts/setup_env.sh"
    hash_command = match.group(1)
    root = tmp_path / "root"
    shutil.copytree(PACKAGE_DIR / "launch", root / "ros2_ws" / "src" / "rla_wm_ros" / "launch")
    (root / "launch").symlink_to(Path("ros2_ws") / "src" / "rla_wm_ros" / "launch")

    def src_hash() -> str:
        return subprocess.run(
            ["bash", "-c", f"set -euo pipefail; {hash_command}"],
            env={**os.environ, "ROOT": str(root)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    def listed() -> str:  # the file list the hash is made of
        find = hash_command.split("| sort -z", 1)[0]
        return subprocess.run(
            ["bash", "-c", f"{find} | tr '\\0' '\\n'"],
            env={**os.environ, "ROOT": str(root)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    names = sorted(p.name for p in SOURCE_LAUNCH_DIR.glob("*.launch.xml"))
    assert all(f"{root}/launch/" in listed() and name in listed() for name in names)
    before = src_hash()
    with open(root / "launch" / names[0], "a") as f:
        f.write("<!-- edited -->\n")
    assert src_hash() != before


def test_package_xml_declares_runtime_dependencies():
    from catkin_pkg.package import parse_package

    package = parse_package(str(PACKAGE_DIR / "package.xml"))  # validates strictly
    exec_depends = {d.name for d in package.exec_depends}
    needed = {
        "rclpy",
        "rcl_interfaces",
        "launch_ros",
        "launch_xml",
        "ros2launch",
        "python3-numpy",
        "python3-yaml",
        "python3-pil",
        "python3-tqdm",
        "python3-torch",
    }
    assert needed <= exec_depends, sorted(needed - exec_depends)
