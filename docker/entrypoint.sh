#!/usr/bin/env bash
set -e
source /opt/ros/jazzy/setup.bash
source /opt/rla_wm_ros/ros2_ws/install/setup.bash
exec "$@"
