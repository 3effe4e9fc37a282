#!/usr/bin/env bash
# Builds everything the demo and the tests need, from scratch or incrementally:
#   apt packages -> .venv (ROS 2 wheels + ML stack, pinned) -> rla_wm (editable) -> colcon build.
# Idempotent: each stage is skipped when its inputs have not changed since it last succeeded.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON_BIN="${PYTHON_BIN:-python3.11}"
STAMPS="$VENV/.stamps"
log() { printf '[setup] %s\n' "$*"; }

# --- 1. system packages (ffmpeg decodes LeRobot videos; cmake/g++ build the interfaces) -------
apt_needed=()
command -v ffmpeg >/dev/null || apt_needed+=(ffmpeg)
command -v cmake >/dev/null || apt_needed+=(cmake)
command -v g++ >/dev/null || apt_needed+=(g++)
# Headless OpenGL for MuJoCo's renderer (the simulated SO-101's cameras).
ldconfig -p 2>/dev/null | grep -q libOSMesa.so || apt_needed+=(libosmesa6)
if [ ${#apt_needed[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    log "missing system packages: ${apt_needed[*]} (run: sudo apt-get install ${apt_needed[*]})"; exit 1
  fi
  log "apt-get install ${apt_needed[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_needed[@]}" >/dev/null
fi

# --- 2. virtual environment with pinned wheels ------------------------------------------------
if ! command -v "$PYTHON_BIN" >/dev/null; then PYTHON_BIN=python3; fi
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV with $($PYTHON_BIN --version)"
  "$PYTHON_BIN" -m venv "$VENV"
fi
mkdir -p "$STAMPS"
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check -q)
PYVER="$("$PY" -c 'import sys; print(f"{sys.version_info.major}.{sys.version_info.minor}")')"

req_hash="$(cat "$ROOT"/requirements/*.txt "$ROOT/scripts/setup_env.sh" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMPS/requirements" 2>/dev/null)" != "$req_hash" ]; then
  start=$SECONDS
  log "installing pinned Python packages (ROS 2 wheels, PyTorch, LeRobot; several GB on first run)"
  "${PIP[@]}" install pip==24.3.1 setuptools==79.0.1 wheel==0.48.0 2>&1 | grep -v '^WARNING: Location' || true
  "${PIP[@]}" install -r "$ROOT/requirements/ros.txt" -r "$ROOT/requirements/ml.txt" -r "$ROOT/requirements/dev.txt" \
    -c "$ROOT/requirements/constraints.txt" 2>&1 | grep -v '^WARNING: Location' || true
  "${PIP[@]}" install --no-deps -r "$ROOT/requirements/no-deps.txt" 2>&1 | grep -v '^WARNING: Location' || true
  "$PY" -c "import rclpy, torch, torchvision, lerobot, transformers, gym_pusht" \
    || { log "package install is incomplete"; exit 1; }
  "$PY" "$ROOT/scripts/fix_ros_cmake_paths.py" "$VENV"
  echo "$req_hash" > "$STAMPS/requirements"
  log "packages installed in $((SECONDS - start)) s"
fi

if [ "$(cat "$STAMPS/models" 2>/dev/null)" != "$ROOT/models" ]; then
  "${PIP[@]}" install --no-deps --no-build-isolation -e "$ROOT/models" 2>&1 | grep -v '^WARNING: Location' || true
  echo "$ROOT/models" > "$STAMPS/models"
fi

# --- 3. colcon build of the ROS 2 workspace (incremental) ------------------------------------
# One build at a time: two concurrent `make` calls would write the same build folders.
exec 9>"$ROOT/ros2_ws/.colcon.lock"
flock 9
# launch/ is a link to ros2_ws/src/rla_wm_ros/launch: the trailing slash makes find follow it.
src_hash="$(cd "$ROOT/ros2_ws/src" && find . "$ROOT/launch/" -type f -not -name '*.pyc' -print0 | sort -z \
  | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMPS/colcon" 2>/dev/null)" != "$src_hash" ] || [ ! -f "$ROOT/ros2_ws/install/setup.bash" ]; then
  start=$SECONDS
  log "colcon build ros2_ws"
  (
    cd "$ROOT/ros2_ws"
    # shellcheck disable=SC1091
    source "$VENV/bin/activate"
    export CMAKE_PREFIX_PATH="$VENV" AMENT_PREFIX_PATH="$VENV"
    # A renamed or deleted source file leaves a dangling link in build/ that breaks the next build.
    [ -d build ] && find build -xtype l -delete
    colcon --log-base log build --symlink-install --event-handlers console_direct- \
      --cmake-args -DPYTHON_INSTALL_DIR="lib/python$PYVER/site-packages" -DPython3_EXECUTABLE="$PY" \
      -DBUILD_TESTING=OFF
  ) > "$ROOT/ros2_ws/colcon_build.log" 2>&1 || { tail -40 "$ROOT/ros2_ws/colcon_build.log"; log "colcon build failed"; exit 1; }
  echo "$src_hash" > "$STAMPS/colcon"
  log "workspace built in $((SECONDS - start)) s"
fi
log "ready: source scripts/env.sh"
