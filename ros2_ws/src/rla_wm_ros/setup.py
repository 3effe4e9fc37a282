import os
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "rla_wm_ros"
HERE = os.path.dirname(os.path.abspath(__file__))

# The launch files live in this package (the repository's top-level launch/ is a link to this
# folder). A package without them would install and build fine and then fail only at
# `ros2 launch`, so refuse to build it.
LAUNCH_FILES = sorted(glob("launch/*.launch.xml", root_dir=HERE))
if not LAUNCH_FILES:
    raise SystemExit(
        f"{PACKAGE}: no launch files in {os.path.join(HERE, 'launch')} (expected *.launch.xml); "
        "the package would install without them"
    )

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        # Node parameters and the Fast DDS profile (config/fastdds.xml) for camera-sized messages.
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
        (f"share/{PACKAGE}/launch", LAUNCH_FILES),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="rla-wm-ros maintainers",
    maintainer_email="maintainers@rla-wm-ros.org",
    description="ROS 2 nodes for the RLA-WM visual-feature world model.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            f"sim_robot = {PACKAGE}.sim_robot_node:main",
            f"sim_arm = {PACKAGE}.sim_arm_node:main",
            f"encoder = {PACKAGE}.encoder_node:main",
            f"policy = {PACKAGE}.policy_node:main",
            f"safety_gate = {PACKAGE}.safety_gate_node:main",
            f"recorder = {PACKAGE}.recorder_node:main",
            f"teleop = {PACKAGE}.teleop_node:main",
            f"planner = {PACKAGE}.planner_node:main",
            f"collect = {PACKAGE}.collect:main",
            f"demo = {PACKAGE}.demo:main",
        ],
    },
)
