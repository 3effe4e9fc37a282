"""Search error or model error? The SO-101 cube-state planner's plan against the scripted expert's.

For each seed, from the episode's first frame (the sim's cube state, in process, no ROS):
- the expert's first `horizon` x 5 actions: the world model's predicted cube-to-zone distance and the
  distance the sim reaches executing them;
- the CEM plan of so101_cube_state_planner.yaml's search (or the budget given): the same two numbers.
A plan predicted far better than the expert's that the sim does not bear out is the search exploiting
the model's errors, not a weak search.

    python scripts/diagnose_arm_planner.py --world_model=regression --seeds=1001,1002,1003
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import rla_wm.envs.so101  # noqa: F401  (sets up MuJoCo's rendering before mujoco is imported)
from rla_wm.control.planning import PlannerConfig, load_predictor, plan, rollout_costs
from rla_wm.envs.so101.environment_state import cube_state_tokens
from rla_wm.envs.so101.expert import So101Expert
from rla_wm.envs.so101.sim import So101Sim

CHUNK = 5
# config/so101_cube_state_planner.yaml's action range and step limit.
ACTION_LOW = (-1.21, -1.33, -0.78, 0.32, -0.02, -0.02)
ACTION_HIGH = (1.19, 0.79, 1.33, 1.65806, 0.02, 0.02)


def predicted_distance(cost: float) -> float:
    """The l2 cost over (cube_x, cube_y) is the mean of two squared offsets: back to a distance in m."""
    return float(np.sqrt(2 * cost))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world_model", choices=("rla-wm", "regression"), default="regression")
    parser.add_argument("--rla_checkpoint", default="runs/so101_wm_rla/checkpoint")
    parser.add_argument("--wm_checkpoint", default="runs/so101_wm/checkpoint")
    parser.add_argument("--regression_checkpoint", default="runs/so101_regression/checkpoint")
    parser.add_argument("--seeds", default="1001,1002,1003")
    parser.add_argument("--horizon", type=int, default=5, help="chunks of 5 actions")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=8)
    args = parser.parse_args()

    predictor = load_predictor(
        args.world_model, args.rla_checkpoint, args.wm_checkpoint, args.regression_checkpoint
    ).predictor
    config = PlannerConfig(
        method="cem",
        horizon=args.horizon,
        chunk_length=CHUNK,
        num_samples=args.samples,
        iterations=args.iterations,
        elites=max(1, args.samples // 10),
        action_low=ACTION_LOW,
        action_high=ACTION_HIGH,
        max_delta=0.2,
        cost_channels=2,
        seed=0,
    )
    sim = So101Sim(max_steps=10 * args.horizon * CHUNK, render_images=False)
    print(f"{args.world_model}, CEM {args.samples} x {args.iterations}, horizon {args.horizon} x {CHUNK} steps")
    print("seed  start_m  expert: predicted_m reached_m  plan: predicted_m reached_m")
    for seed in (int(s) for s in args.seeds.split(",")):
        frame = sim.reset(seed)
        start = frame.distance
        current = torch.from_numpy(cube_state_tokens(frame.cube_pose, frame.zone)).float()[None]
        goal = current.clone()
        goal[0, 0, :2] = goal[0, 0, 7:9]  # the cube's centre on the zone's
        expert = So101Expert()
        actions = []
        for _ in range(args.horizon * CHUNK):
            actions.append(expert(frame))
            frame = sim.step(actions[-1])
        expert_reached = frame.distance
        chunks = torch.tensor(np.array(actions), dtype=torch.float32).view(1, args.horizon, CHUNK, -1)
        expert_predicted = predicted_distance(float(rollout_costs(predictor, current, goal, chunks, channels=2)[0]))
        frame = sim.reset(seed)
        result = plan(predictor, current[0], goal[0], config, start_action=torch.from_numpy(frame.position).float())
        for target in result.actions.reshape(-1, result.actions.shape[-1]).numpy():
            frame = sim.step(target)
        print(
            f"{seed}  {start:.3f}    {expert_predicted:.3f}     {expert_reached:.3f}"
            f"           {predicted_distance(result.cost):.3f}     {frame.distance:.3f}"
        )


if __name__ == "__main__":
    main()
