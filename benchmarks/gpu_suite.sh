#!/usr/bin/env bash
# Every GPU benchmark at the paper's scale in one short run (issue 13, item 3), for a machine lent
# for a few minutes: each step has its own time limit and writes its log as it goes, so a step
# that runs out of time loses only itself.
#
#   bash benchmarks/gpu_suite.sh OUT_DIR        # on a CUDA machine with torch + transformers
#
# Needs no ROS and no project install: the ROS-free library is put on PYTHONPATH.
set -u
out=${1:?usage: gpu_suite.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)  # absolute: the steps run from this folder
cd "$(dirname "$0")"
export PYTHONPATH="$PWD/../models${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
paper=(--scale paper --device cuda --dtype bfloat16)

step() {  # step NAME SECONDS COMMAND...: run, log to OUT_DIR/NAME.log, report the exit status
  local name=$1 seconds=$2
  shift 2
  echo "=== $name (limit ${seconds} s): $*"
  local started=$SECONDS
  timeout "$seconds" "$@" 2>&1 | grep -v -E "Loading weights|Writing model shards" | tee "$out/$name.log"
  echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - started)) s"
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$python" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  nproc
} 2>&1 | tee "$out/machine.log"

step models_eager 120 "$python" bench_models.py "${paper[@]}"
step planner_eager 200 "$python" bench_planner.py "${paper[@]}" --max-seconds 6 --prediction-chunks 1,3 \
  --batches 1,4,16,64,128,300 --min-samples 16 --growth-base 300,5,32 --growth-samples 64,300 \
  --growth-horizons 1,5 --growth-grids 16,32
step models_cudagraphs 150 "$python" bench_models.py "${paper[@]}" --compile reduce-overhead --skip prediction
step planner_compiled 150 "$python" bench_planner.py "${paper[@]}" --compile default --max-seconds 6 \
  --skip reduced,growth
