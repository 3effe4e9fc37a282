"""Latest features + joint state -> JointTrajectory action chunk.

Each chunk is anchored to the observation it was computed from: header.stamp is
the camera frame's stamp and time_from_start counts from it, so the robot side
knows exactly how old the decision is. Points already in the past when the chunk
is published are dropped, and the seam with the previous chunk is blended
(`rla_wm.control.chunking`). Inference runs in its own callback group, either on
every new feature map (rate 0) or at a fixed rate on the newest one.

A feature map the model cannot take (another encoder, another grid, a malformed or
non-finite payload), a missing or stale joint state, or a non-finite model output is a
counted rejection (`rla_wm_ros.node_guard`, reported on /diagnostics): nothing is published
for it, and the node carries on.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import JointState
from trajectory_msgs.msg import JointTrajectory

from rla_wm.control.chunking import ChunkScheduler
from rla_wm.control.freshness import LatestSample
from rla_wm.models.checkpoint import CheckpointError
from rla_wm.models.policy_loading import UNTRAINED, load_policy
from rla_wm_msgs.msg import FeatureMap
from rla_wm_ros.conversions import (
    Chunk,
    chunk_to_msg,
    joint_positions_or_reject,
    model_features_or_reject,
    stamp_to_seconds,
)
from rla_wm_ros.node_guard import Health, NodeGuard, Rejected
from rla_wm_ros.params import declare
from rla_wm_ros.qos import LATEST_ONLY


class PolicyNode(Node):
    def __init__(self) -> None:
        super().__init__("policy")
        checkpoint = declare(
            self,
            "checkpoint",
            UNTRAINED,
            f"Policy checkpoint folder or builtin:<name>; '{UNTRAINED}' = random initialisation; "
            "'expert:pusht' = the scripted Push-T expert on the sim's block state (sim/block_state).",
        )
        seed = declare(self, "seed", 0, "Initialisation seed of an untrained policy.", (0, 2**31 - 1))
        self.joint_names = declare(
            self, "joint_names", ["agent_x", "agent_y"], "Joints the policy commands, in order.", param_type=list
        )
        self.point_period = declare(self, "point_period", 0.1, "Seconds between chunk points.", (0.001, 10.0))
        self.state_timeout = declare(
            self, "state_timeout", 0.5, "Ignore joint states older than this (s).", (0.01, 10.0)
        )
        self.min_lead_time = declare(
            self,
            "min_lead_time",
            0.05,
            "Drop points due sooner than this after publishing (s): the robot "
            "could only reach them with a velocity spike.",
            (0.0, 5.0),
        )
        self.rate = declare(
            self, "rate", 0.0, "Inference rate (Hz) on the newest features; 0 = on every feature map.", (0.0, 1000.0)
        )
        blend_time = declare(
            self,
            "blend_time",
            0.2,
            "Seconds over which a new chunk fades in over the previous one (0 = no blending).",
            (0.0, 10.0),
        )
        self.scheduler = ChunkScheduler(blend_time=blend_time, min_lead_time=self.min_lead_time)
        self.follow_tolerance_steps = declare(
            self,
            "follow_tolerance_steps",
            2.0,
            "Blend only into a previous chunk the robot follows: within this many of the policy's largest "
            "per-point moves (max_delta) of where that chunk has it now; 0 = always blend.",
            (0.0, 100.0),
        )
        device = declare(self, "device", "cpu", "Torch device.")
        threads = declare(self, "torch_threads", 0, "CPU threads for torch (0 = torch default).", (0, 256))
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        try:
            self.policy = load_policy(checkpoint, seed=seed)
        except CheckpointError as err:  # missing, corrupt, mismatched or non-finite: refuse to start
            self.get_logger().fatal(f"cannot load policy checkpoint {checkpoint!r}: {err}")
            raise RuntimeError(f"policy: cannot load checkpoint {checkpoint!r}: {err}") from err
        if checkpoint == UNTRAINED:
            self.get_logger().warning(
                f"no checkpoint given: running an UNTRAINED policy (seed {seed}); "
                "its commands are arbitrary but still pass the safety gate"
            )
        else:
            self.get_logger().info(f"policy loaded from {checkpoint}")
        self.policy.to(self.device)
        if len(self.joint_names) != self.policy.config.action_dim:
            raise ValueError(
                f"joint_names {self.joint_names} do not match the policy's action_dim {self.policy.config.action_dim}"
            )
        self.latest_state: LatestSample[np.ndarray] = LatestSample(self.state_timeout)
        self.latest_features: tuple[FeatureMap, np.ndarray] | None = None  # checked, with its tokens
        self.acted_on: FeatureMap | None = None
        self.chunks_published = 0
        self.last_inference_seconds = 0.0
        self.guard = NodeGuard(
            self, "world action model", health=self.health, hardware_id=self.policy.config.encoder_id
        )
        self.trajectory_pub = self.create_publisher(JointTrajectory, "policy/joint_trajectory", 10)
        inference_group = MutuallyExclusiveCallbackGroup()
        guard = self.guard.wrap
        self.create_subscription(JointState, "joint_states", guard(self.on_joint_state), 10)
        if self.rate > 0:
            self.create_subscription(FeatureMap, "features", guard(self.on_features), LATEST_ONLY)
            self.create_timer(1.0 / self.rate, guard(self.on_inference_tick), callback_group=inference_group)
        else:
            self.create_subscription(
                FeatureMap, "features", guard(self.act), LATEST_ONLY, callback_group=inference_group
            )

    def health(self) -> Health:
        return Health(
            "acting" if self.chunks_published else "waiting for features and joint states",
            values={
                "chunks_published": self.chunks_published,
                "inference_ms": f"{self.last_inference_seconds * 1e3:.1f}",
                "feature_grid": "x".join(map(str, self.policy.feature_grid or ("?",))),
            },
        )

    def on_joint_state(self, msg: JointState) -> None:
        self.latest_state.update(joint_positions_or_reject(msg, self.joint_names))

    def tokens_of(self, msg: FeatureMap) -> np.ndarray:
        """The map's (N, C) tokens if the model can take them; Rejected otherwise (before any inference)."""
        config = self.policy.config
        tokens = model_features_or_reject(msg, config.encoder_id, expected=self.policy.feature_grid)
        if tokens.shape != (config.num_tokens, config.token_dim):  # a model whose grid is not square
            raise Rejected(
                "grid_mismatch",
                f"feature map has {tokens.shape[0]}x{tokens.shape[1]} tokens, the "
                f"model takes {config.num_tokens}x{config.token_dim}",
            )
        return tokens

    def on_features(self, msg: FeatureMap) -> None:
        self.latest_features = (msg, self.tokens_of(msg))  # a refused map never replaces a good one

    def on_inference_tick(self) -> None:
        if self.latest_features is None or self.latest_features[0] is self.acted_on:
            return  # never act twice on one observation
        msg, tokens = self.latest_features
        self.acted_on = msg
        self.act(msg, tokens)

    def act(self, msg: FeatureMap, tokens: np.ndarray | None = None) -> None:
        config = self.policy.config
        if tokens is None:
            tokens = self.tokens_of(msg)
        state = self.latest_state.fresh()
        if state is None:
            raise Rejected("no_fresh_state", f"no joint state within state_timeout {self.state_timeout} s: not acting")
        start = time.perf_counter()
        with torch.inference_mode():
            actions = (
                self.policy(
                    torch.from_numpy(tokens)[None].to(self.device),
                    torch.from_numpy(state).float()[None].to(self.device),
                )[0]
                .cpu()
                .numpy()
            )
        self.last_inference_seconds = time.perf_counter() - start
        if not np.isfinite(actions).all():
            raise Rejected("non_finite_actions", "the policy produced NaN/inf: chunk dropped")
        stamp = stamp_to_seconds(msg.header.stamp)
        times = stamp + self.point_period * np.arange(1, len(actions) + 1)
        tolerance = None
        if self.follow_tolerance_steps > 0:  # after a refused chunk or a hold the robot is not on the old path
            tolerance = self.follow_tolerance_steps * np.asarray(config.max_delta, dtype=np.float64)
        scheduled = self.scheduler.schedule(
            times, actions, now=self.get_clock().now().nanoseconds * 1e-9, measured=state, tolerance=tolerance
        )
        if scheduled is None:
            raise Rejected("chunk_too_late", "every point of the chunk is in the past")
        chunk = Chunk(tuple(self.joint_names), scheduled.positions, scheduled.times - stamp, msg.header.stamp)
        self.trajectory_pub.publish(chunk_to_msg(chunk))
        self.chunks_published += 1


def main(args: list[str] | None = None) -> None:
    from rla_wm_ros.node_main import spin_node

    spin_node(PolicyNode, args, threads=2)


if __name__ == "__main__":
    main()
