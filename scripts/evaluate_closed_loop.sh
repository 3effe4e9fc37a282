#!/usr/bin/env bash
# Closed-loop evaluation of the shipped sim models through the real ROS graph, then one table and
# one figure. Seeds start at 1000: the training data used seeds 1-100 (expert) and 5001-5100 (play), so these start states
# are unseen. Policies run 300-step episodes (the Push-T limit) at 2x real time; the planners
# replan once per simulated second with a CPU-sized budget and get 150 steps at real time.
#   EPISODES=50 bash scripts/evaluate_closed_loop.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
EPISODES=${EPISODES:-50}
OUT=${1:-outputs/eval}
SEED=${SEED:-1000}
PLANNER=launch/sim_planner.launch.xml

policy() {  # name checkpoint
  python -m rla_wm_ros.demo --episodes "$EPISODES" --episode-steps 300 --output "$OUT/$1" --pictures 3 \
    policy_checkpoint:="$2" seed:="$SEED" sim_clock:=true real_time_factor:=2.0
}
planner() {  # name world_model
  python -m rla_wm_ros.demo --launch-file "$PLANNER" --model-topic /planner/joint_trajectory \
    --episodes "$EPISODES" --episode-steps 150 --output "$OUT/$1" --pictures 3 \
    world_model:="$2" seed:="$SEED" sim_clock:=true real_time_factor:=1.0 mpc_rate:=1.0
}

policy bc builtin:sim-pusht-policy-bc
policy bc_rla builtin:sim-pusht-policy
policy bc_rla_direct builtin:sim-pusht-policy-direct
planner planner_rla_wm rla-wm
planner planner_regression regression

python -m rla_wm.closed_loop_report --out "$OUT" \
  --run "BC (labelled only)=$OUT/bc" \
  --run "BC + RLA (action-free added)=$OUT/bc_rla" \
  --run "BC + RLA, action head without z=$OUT/bc_rla_direct" \
  --run "planner, RLA-WM=$OUT/planner_rla_wm" \
  --run "planner, regression=$OUT/planner_regression"
