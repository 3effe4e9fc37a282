# Source me: the project's environment (venv + built ROS 2 workspace), as `make` uses it.
_rla_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$_rla_root/.venv/bin/activate"
export AMENT_PREFIX_PATH="${AMENT_PREFIX_PATH:-$VIRTUAL_ENV}"
export CMAKE_PREFIX_PATH="${CMAKE_PREFIX_PATH:-$VIRTUAL_ENV}"
# shellcheck disable=SC1091
source "$_rla_root/ros2_ws/install/setup.bash"
export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
# Keep DDS traffic on this host unless told otherwise.
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
# Nothing is downloaded at run time: models and datasets come from local folders.
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export PYTHONUNBUFFERED=1
unset _rla_root
