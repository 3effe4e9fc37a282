"""Does the world model pick better chunks than the policy? Policy proposals scored by world-model rollouts.

At every replan, in process (no ROS; the sim waits, as `rla-wm rollout` does), the keypoint policy
samples --proposals chunks from the current frame (its flow head draws one mode each). Each proposal
is rolled out in the world model for --horizon chunks of 5 steps with the policy in the loop: after a
chunk's first 5 actions the world model predicts the next features, the policy reads them and
proposes the next chunk from the last target. The proposal whose rollout ends nearest the goal
image's features (l2, as the planner scores) is executed (its first --execute_steps points).
--proposals 1 is the policy alone. Success and final coverage on the unseen seeds, as the planner
and policy rows of docs/closed_loop.md report them.

    python scripts/diagnose_policy_proposals.py --world_model=rla-wm --proposals=16 --horizon=5 --episodes=50
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import torch

from rla_wm.control.planning import feature_distance, load_predictor, predict_batch
from rla_wm.envs.pusht.sim import PushTSim
from rla_wm.evaluation.rollout import run_rollouts, tokens_function
from rla_wm.models.policy_loading import ChunkPolicy, load_policy
from rla_wm.models.prediction import Predictor

WORLD_CHUNK = 5  # the keypoint world models' training chunk


class WorldModelSelection:
    """A chunk policy that samples `proposals` chunks of `policy` and returns the one whose
    policy-in-the-loop rollout in `predictor` ends nearest `goal` (1, N, C)."""

    def __init__(self, policy: ChunkPolicy, predictor: Predictor, goal: torch.Tensor, proposals: int, horizon: int):
        self.policy, self.predictor, self.goal = policy, predictor, goal
        self.proposals, self.horizon = proposals, horizon
        self.config, self.feature_grid = policy.config, policy.feature_grid

    def to(self, device: torch.device) -> WorldModelSelection:
        return self

    def eval(self) -> WorldModelSelection:
        return self

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        features, position = tokens, state.expand(self.proposals, -1)
        chunks = self.policy(tokens.expand(self.proposals, -1, -1), position)
        first = chunks
        for step in range(self.horizon):
            if step:
                chunks = self.policy(features, position)
            executed = chunks[:, :WORLD_CHUNK]
            features = predict_batch(self.predictor, features, executed)
            position = executed[:, -1]
        best = int(torch.argmin(feature_distance(features, self.goal)))
        return first[best : best + 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="builtin:sim-pusht-policy-keypoints")
    parser.add_argument("--world_model", choices=("rla-wm", "regression"), default="rla-wm")
    parser.add_argument("--rla_checkpoint", default="builtin:sim-pusht-keypoints-rla")
    parser.add_argument("--wm_checkpoint", default="builtin:sim-pusht-keypoints-rla-wm")
    parser.add_argument("--regression_checkpoint", default="builtin:sim-pusht-keypoints-regression")
    parser.add_argument("--proposals", type=int, default=16, help="1 = the policy alone")
    parser.add_argument("--horizon", type=int, default=5, help="chunks of 5 steps each rollout looks ahead")
    parser.add_argument("--execute_steps", type=int, default=3)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1001, help="first of the unseen seeds")
    args = parser.parse_args()
    if args.proposals < 1 or args.horizon < 1:
        parser.error("--proposals and --horizon must be >= 1")
    torch.set_num_threads(1)
    policy = load_policy(args.policy)
    tokens_of = tokens_function(policy.config.encoder_id, torch.device("cpu"))
    sim = PushTSim(image_size=96)  # the goal image at the size the sim node publishes
    goal = tokens_of(SimpleNamespace(image=sim.goal_image()))  # the camera path reads only the frame's image
    sim.close()
    loaded = load_predictor(args.world_model, args.rla_checkpoint, args.wm_checkpoint, args.regression_checkpoint)
    agent: ChunkPolicy = policy
    if args.proposals > 1:
        agent = WorldModelSelection(policy, loaded.predictor, goal, args.proposals, args.horizon)
    started = time.monotonic()
    seeds = range(args.seed, args.seed + args.episodes)
    summary, episodes = run_rollouts(agent, tokens_of, seeds, args.execute_steps)
    print(
        f"{args.policy}, proposals {args.proposals}, horizon {args.horizon} x {WORLD_CHUNK}, {args.world_model}: "
        f"{summary.successes}/{summary.episodes} succeeded, final coverage {summary.mean_coverage:.3f}, "
        f"{time.monotonic() - started:.0f} s; failed seeds {[e.seed for e in episodes if not e.success]}"
    )


if __name__ == "__main__":
    main()
