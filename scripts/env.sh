# Source me: the project's environment (venv + built ROS 2 workspace), as `make` uses it.
_rla_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$_rla_root/.venv/bin/activate"
export AMENT_PREFIX_PATH="${AMENT_PREFIX_PATH:-$VIRTUAL_ENV}"
export CMAKE_PREFIX_PATH="${CMAKE_PREFIX_PATH:-$VIRTUAL_ENV}"
# shellcheck disable=SC1091
source "$_rla_root/ros2_ws/install/setup.bash"
# The package's executables (collect, demo, the nodes) are installed where `ros2 run` looks,
# not on PATH; put them there so the README's commands work as written.
_rla_bin="$_rla_root/ros2_ws/install/rla_wm_ros/lib/rla_wm_ros"
case ":$PATH:" in *":$_rla_bin:"*) ;; *) export PATH="$_rla_bin:$PATH" ;; esac
unset _rla_bin
export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
# Keep DDS traffic on this host unless told otherwise.
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
# Fast DDS transports sized for camera frames (see the file): without it a best-effort
# subscriber gets almost none of the 640x480 or larger frames, since the publisher's shared-memory
# segment is too small. Every process started from this shell (nodes, tests, benchmarks) inherits
# it; a profile the user already set is kept. Fast DDS 3 (the Kilted wheels here) reads this name;
# Fast DDS 2 (Humble, Jazzy) reads FASTRTPS_DEFAULT_PROFILES_FILE instead, which Kilted's
# rmw_fastrtps still honours but warns about at every node start, so it is not set here.
export FASTDDS_DEFAULT_PROFILES_FILE="${FASTDDS_DEFAULT_PROFILES_FILE:-$_rla_root/ros2_ws/src/rla_wm_ros/config/fastdds.xml}"
# Nothing is downloaded at run time: models and datasets come from local folders.
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export PYTHONUNBUFFERED=1
# MuJoCo renders the SO-101 sim's cameras offscreen with OSMesa (no display, no GPU needed).
export MUJOCO_GL="${MUJOCO_GL:-osmesa}"
if [ "$MUJOCO_GL" = osmesa ]; then export PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-osmesa}"; fi
unset _rla_root
