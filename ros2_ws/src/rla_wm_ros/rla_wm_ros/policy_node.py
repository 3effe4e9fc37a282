"""Latest features (or camera image) + joint state -> JointTrajectory action chunk.

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

With a LeRobot pretrained-policy folder as `checkpoint` (`rla_wm.models.lerobot_policy`) the node
subscribes to the camera (camera/image_raw, sensor_msgs/Image; or CompressedImage with
compressed_input) instead of features, and acts on each image the same way. `~/reset` (Trigger)
then starts a new observation history, e.g. at an episode start.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

import numpy as np
import torch
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from rla_wm.control.chunking import ChunkScheduler, ReplanPacer
from rla_wm.control.freshness import LatestSample
from rla_wm.models.checkpoint import CheckpointError
from rla_wm.models.lerobot_policy import LeRobotChunkPolicy
from rla_wm.models.policy_loading import UNTRAINED, load_any_policy
from rla_wm_msgs.msg import FeatureMap
from rla_wm_ros.conversions import (
    Chunk,
    chunk_to_msg,
    joint_positions_or_reject,
    model_features_or_reject,
    stamp_to_seconds,
)
from rla_wm_ros.image_conversion import CvBridgeError, image_msg_to_rgb
from rla_wm_ros.node_guard import Health, NodeGuard, Rejected
from rla_wm_ros.params import declare
from rla_wm_ros.qos import CAMERA_QOS, LATEST_ONLY

if TYPE_CHECKING:
    from rla_wm.envs.so101.lerobot_units import So101LeRobotUnits

Observation = FeatureMap | Image | CompressedImage


class PolicyNode(Node):
    def __init__(self) -> None:
        super().__init__("policy")
        checkpoint = declare(
            self,
            "checkpoint",
            UNTRAINED,
            f"Policy checkpoint folder or builtin:<name>; '{UNTRAINED}' = random initialisation; "
            "'expert:pusht' = the scripted Push-T expert on the sim's block state (sim/block_state); "
            "'expert:so101' = the scripted SO-101 push-cube expert on the arm sim's state (sim/environment_state); "
            "a LeRobot pretrained_model folder (or lerobot:<folder>) = that policy on the camera image.",
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
            self,
            "rate",
            0.0,
            "Inference rate (Hz) on the newest observation (features or camera image); 0 = on every one.",
            (0.0, 1000.0),
        )
        blend_time = declare(
            self,
            "blend_time",
            0.2,
            "Seconds over which a new chunk fades in over the previous one (0 = no blending).",
            (0.0, 10.0),
        )
        self.scheduler = ChunkScheduler(blend_time=blend_time, min_lead_time=self.min_lead_time)
        execute_steps = declare(
            self,
            "execute_steps",
            1,
            "Chunk points the robot executes before the policy acts again (Diffusion Policy's action horizon): "
            "observations in between are skipped unless the robot left the last chunk; 1 = act on every one.",
            (1, 1000),
        )
        self.pacer = ReplanPacer(execute_steps, self.point_period)
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
        compressed = declare(
            self,
            "compressed_input",
            False,
            "LeRobot policies: subscribe to sensor_msgs/CompressedImage (camera/image_raw/compressed) "
            "instead of Image (camera/image_raw).",
        )
        history_timeout = declare(
            self,
            "lerobot_history_timeout",
            1.0,
            "LeRobot policies: start a new observation history when camera stamps go backwards or are "
            "further apart than this (s): a new episode or a gap in the stream; 0 = only on ~/reset.",
            (0.0, 3600.0),
        )
        lerobot_max_delta = declare(
            self,
            "lerobot_max_delta",
            0.0,
            "LeRobot policies: the largest move between consecutive chunk points (joint units), in place of a "
            "project policy's max_delta for follow_tolerance_steps; 0 = no follow check (always blend).",
            (0.0, 1e6),
        )
        joint_units_name = declare(
            self,
            "lerobot_joint_units",
            "dataset",
            "LeRobot policies: 'dataset' = the policy's joints are in the node's units (radians, e.g. trained on "
            "this stack's recordings with joint_layout ros); 'so101_lerobot' = LeRobot's SO-101 units (degrees, "
            "gripper 0..100, as lerobot-record and community SO-101 datasets store them), converted both ways; "
            "needs joint_names in LeRobot's SO-101 order.",
        )
        gripper_urdf = declare(
            self,
            "lerobot_gripper_urdf",
            "",
            "so101_lerobot: the URDF (path or package://) whose gripper limits map to LeRobot's 0..100; "
            "'' = the pinned so101_new_calib URDF, LeRobot's own calibration.",
        )
        joint_units = lerobot_joint_units(joint_units_name, gripper_urdf, self.joint_names)
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        try:
            self.policy = load_any_policy(
                checkpoint,
                seed=seed,
                device=device,
                history_timeout=history_timeout or None,
                lerobot_joint_units=joint_units,
            )
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
        config = self.policy.config
        if execute_steps > config.chunk_length:
            raise ValueError(f"execute_steps {execute_steps} exceeds the policy's {config.chunk_length}-point chunks")
        if len(self.joint_names) != config.action_dim:
            raise ValueError(f"joint_names {self.joint_names} do not match the policy's action_dim {config.action_dim}")
        # The largest move per chunk point, which scales follow_tolerance_steps (None: no follow check).
        self.max_delta: np.ndarray | None
        if isinstance(self.policy, LeRobotChunkPolicy):
            if self.policy.config.state_dim not in (0, len(self.joint_names)):
                raise ValueError(
                    f"the LeRobot policy takes a state of {self.policy.config.state_dim} values, but joint_names "
                    f"{self.joint_names} give {len(self.joint_names)}"
                )
            self.max_delta = np.full(config.action_dim, lerobot_max_delta) if lerobot_max_delta > 0 else None
            self.get_logger().info(
                f"LeRobot {self.policy.config.policy_type} policy: acting on camera images resized to "
                f"{self.policy.config.image_shape[2]}x{self.policy.config.image_shape[1]}, "
                f"{self.policy.config.n_obs_steps} observation(s) of history, {config.chunk_length} points a chunk"
            )
        else:
            self.policy.to(self.device)
            self.max_delta = np.asarray(config.max_delta, dtype=np.float64)
        self.latest_state: LatestSample[np.ndarray] = LatestSample(self.state_timeout)
        self.latest_observation: tuple[Observation, np.ndarray] | None = None  # checked, with its model input
        self.acted_on: Observation | None = None
        self.chunks_published = 0
        self.observations_skipped = 0  # paced out by execute_steps
        self.last_inference_seconds = 0.0
        self.guard = NodeGuard(self, "world action model", health=self.health, hardware_id=config.encoder_id)
        self.trajectory_pub = self.create_publisher(JointTrajectory, "policy/joint_trajectory", 10)
        inference_group = MutuallyExclusiveCallbackGroup()
        self.policy_lock = threading.Lock()  # the policy's history and the scheduler: one writer at a time
        guard = self.guard.wrap
        self.create_subscription(JointState, "joint_states", guard(self.on_joint_state), 10)
        # One executor thread: inference blocks it for a prediction's time and the inputs wait in their
        # queues (see node_main.spin_node). A LeRobot folder keeps three for its ~/reset (below).
        self.executor_threads = 1
        if isinstance(self.policy, LeRobotChunkPolicy):
            self.executor_threads = 3  # inference, inputs, ~/reset
            # Newest frame only (as the encoder): a frame that waits for a busy policy is stale anyway.
            observation_type: type = CompressedImage if compressed else Image
            topic, qos = ("camera/image_raw/compressed" if compressed else "camera/image_raw"), CAMERA_QOS
            # Its own group, so a busy inference timer cannot starve it (the executor offers the overdue timer
            # first); the lock still keeps a reset out of the middle of a prediction.
            self.create_service(
                Trigger, "~/reset", guard(self.on_reset), callback_group=MutuallyExclusiveCallbackGroup()
            )
        else:
            observation_type, topic, qos = FeatureMap, "features", LATEST_ONLY
        if self.rate > 0:
            name = "on_features" if observation_type is FeatureMap else "on_image"  # rejection keys
            self.create_subscription(observation_type, topic, guard(self.on_observation, name), qos)
            self.create_timer(1.0 / self.rate, guard(self.on_inference_tick), callback_group=inference_group)
        else:
            self.create_subscription(observation_type, topic, guard(self.act), qos, callback_group=inference_group)

    def health(self) -> Health:
        values: dict[str, object] = {
            "chunks_published": self.chunks_published,
            "observations_skipped": self.observations_skipped,
            "inference_ms": f"{self.last_inference_seconds * 1e3:.1f}",
        }
        if isinstance(self.policy, LeRobotChunkPolicy):
            values["image_input"] = "x".join(map(str, self.policy.config.image_shape))
            waiting = "waiting for camera images and joint states"
        else:
            values["feature_grid"] = "x".join(map(str, self.policy.feature_grid or ("?",)))
            waiting = "waiting for features and joint states"
        return Health("acting" if self.chunks_published else waiting, values=values)

    def on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        assert isinstance(self.policy, LeRobotChunkPolicy)  # the service exists only for one
        with self.policy_lock:  # waits for at most the prediction in progress
            self.policy.reset()
            self.scheduler.reset()
            self.pacer.reset()
        response.success = True
        response.message = "observation history and previous chunk cleared"
        return response

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

    def rgb_of(self, msg: Image | CompressedImage) -> np.ndarray:
        """The frame as (H, W, 3) uint8 RGB; Rejected if it has no RGB meaning (the policy resizes it)."""
        try:
            return image_msg_to_rgb(msg)
        except CvBridgeError as err:
            raise Rejected("bad_image", str(err)) from err

    def model_input(self, msg: Observation) -> np.ndarray:
        if isinstance(msg, FeatureMap):
            return self.tokens_of(msg)
        return self.rgb_of(msg)

    def on_observation(self, msg: Observation) -> None:
        self.latest_observation = (msg, self.model_input(msg))  # a refused one never replaces a good one

    def on_inference_tick(self) -> None:
        if self.latest_observation is None or self.latest_observation[0] is self.acted_on:
            return  # never act twice on one observation
        msg, model_input = self.latest_observation
        self.acted_on = msg
        self.act(msg, model_input)

    def infer(self, msg: Observation, model_input: np.ndarray, state: np.ndarray) -> np.ndarray:
        """(T, A) absolute targets from the checked model input (tokens or RGB frame) and the joint state."""
        if isinstance(self.policy, LeRobotChunkPolicy):
            # The stamp orders the policy's observation history (and resets it after a gap).
            stamp = stamp_to_seconds(msg.header.stamp)
            return self.policy(model_input[None], state[None], stamp=stamp)[0].numpy()
        with torch.inference_mode():
            return (
                self.policy(
                    torch.from_numpy(model_input)[None].to(self.device),
                    torch.from_numpy(state).float()[None].to(self.device),
                )[0]
                .cpu()
                .numpy()
            )

    def act(self, msg: Observation, model_input: np.ndarray | None = None) -> None:
        with self.policy_lock:
            self.act_locked(msg, model_input)

    def act_locked(self, msg: Observation, model_input: np.ndarray | None) -> None:
        if model_input is None:
            model_input = self.model_input(msg)
        state = self.latest_state.fresh()
        if state is None:
            raise Rejected("no_fresh_state", f"no joint state within state_timeout {self.state_timeout} s: not acting")
        stamp = stamp_to_seconds(msg.header.stamp)
        tolerance = None
        # After a refused chunk or a hold the robot is not on the old path.
        if self.follow_tolerance_steps > 0 and self.max_delta is not None:
            tolerance = self.follow_tolerance_steps * self.max_delta
        now = self.get_clock().now().nanoseconds * 1e-9
        followed = tolerance is None or self.scheduler.is_followed(now, state, tolerance)
        if not self.pacer.due(stamp, followed):
            self.observations_skipped += 1
            return
        start = time.perf_counter()
        actions = self.infer(msg, model_input, state)
        self.last_inference_seconds = time.perf_counter() - start
        if not np.isfinite(actions).all():
            raise Rejected("non_finite_actions", "the policy produced NaN/inf: chunk dropped")
        times = stamp + self.point_period * np.arange(1, len(actions) + 1)
        scheduled = self.scheduler.schedule(
            times, actions, now=self.get_clock().now().nanoseconds * 1e-9, measured=state, tolerance=tolerance
        )
        if scheduled is None:
            raise Rejected("chunk_too_late", "every point of the chunk is in the past")
        chunk = Chunk(tuple(self.joint_names), scheduled.positions, scheduled.times - stamp, msg.header.stamp)
        self.trajectory_pub.publish(chunk_to_msg(chunk))
        self.chunks_published += 1
        self.pacer.acted(stamp)


def lerobot_joint_units(name: str, gripper_urdf: str, joint_names: list[str]) -> So101LeRobotUnits | None:
    """The `lerobot_joint_units` parameter as a conversion (None: the policy's units are the node's)."""
    if name == "dataset":
        return None
    # Imported here: the SO-101 package sets up MuJoCo's rendering, which other robots never need.
    from rla_wm.control.urdf_file import resolve_urdf_file
    from rla_wm.envs.so101.lerobot_units import JOINT_NAMES as SO101_JOINT_NAMES
    from rla_wm.envs.so101.lerobot_units import So101LeRobotUnits, default_units

    if name != "so101_lerobot":
        raise ValueError(f"lerobot_joint_units must be 'dataset' or 'so101_lerobot', got {name!r}")
    if tuple(joint_names) != SO101_JOINT_NAMES:
        raise ValueError(
            f"lerobot_joint_units so101_lerobot needs joint_names {list(SO101_JOINT_NAMES)} (LeRobot's SO-101 "
            f"order), got {joint_names}"
        )
    if not gripper_urdf:
        return default_units()
    return So101LeRobotUnits.from_urdf(resolve_urdf_file(gripper_urdf))


def main(args: list[str] | None = None) -> None:
    from rla_wm_ros.node_main import spin_node

    spin_node(PolicyNode, args)  # the node sets executor_threads


if __name__ == "__main__":
    main()
