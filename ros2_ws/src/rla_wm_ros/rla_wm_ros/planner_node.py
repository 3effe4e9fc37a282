"""Plan to a goal image with world-model rollouts (CEM / MPPI in `rla_wm.control.planning`).

- Action `~/plan_to_goal` (rla_wm_msgs/action/PlanToGoal): goal image -> goal features with
  the node's own encoder, then a plan from the newest `features`, feedback every iteration,
  cancel honoured between iterations. With `execute`, the first chunk goes out on
  `planner/joint_trajectory` (routed through the safety gate by the launch file).
- MPC (`mpc_rate` > 0, goal from the action or the `goal_image` topic): replans at that rate
  from the newest feature map, warm-started with the shifted previous plan, and publishes the
  first chunk stamped with the observation's stamp plus the predicted cost on
  `planner/predicted_cost`. `~/clear_goal` stops it.

Planning runs outside the subscription callbacks (action tasks on the multi-threaded
executor's pool, the MPC timer in its own callback group), and one lock serialises the model.
Bad input (stale or mismatched features, a malformed goal image, a non-finite plan) aborts
the goal or skips the replan: it never produces a command. A feature map from another encoder
or with another grid than the world model's, or a malformed one, is refused when it arrives;
while it is the newest map, no plan is made (not from an older map either). Every refusal is
counted on /diagnostics (`rla_wm_ros.node_guard`), and no callback's exception ends the node.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import torch
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from rla_wm.control.planning import MPCController, Planner, PlannerConfig, PlanningError, PlanResult, load_predictor
from rla_wm.models.checkpoint import CheckpointError
from rla_wm.models.encoder import EncoderConfig, FeatureEncoder, FeatureEncoderError
from rla_wm_msgs.action import PlanToGoal
from rla_wm_msgs.msg import FeatureMap
from rla_wm_ros.conversions import (
    Chunk,
    GridMismatchError,
    MessageShapeError,
    chunk_to_msg,
    joint_positions,
    msg_to_features,
    stamp_to_seconds,
)
from rla_wm_ros.image_conversion import CvBridgeError, image_msg_to_rgb
from rla_wm_ros.node_guard import WARN, Health, NodeGuard, Rejected
from rla_wm_ros.params import declare
from rla_wm_ros.qos import LATEST_ONLY

# Largest per-goal overrides accepted from an action client.
MAX_HORIZON, MAX_SAMPLES, MAX_ITERATIONS = 100, 100_000, 100_000


class ObservationError(ValueError):
    """No usable observation: missing, stale, from another encoder, or malformed."""


class PlannerNode(Node):
    def __init__(self) -> None:
        super().__init__("planner")
        # -- encoder (same `model` spec as the encoder node) and world model -------------------
        model = declare(
            self,
            "model",
            "builtin:dinov2-tiny-random",
            "Encoder weights for goal images: hub id, local folder, or builtin:<name> (as the encoder node).",
        )
        resolution = declare(self, "resolution", 224, "Encoder input size; a multiple of the patch size.", (14, 2048))
        device = declare(self, "device", "cpu", "Torch device, e.g. cpu or cuda:0.")
        dtype = declare(self, "dtype", "float32", "Encoder dtype: float32, float16 or bfloat16.")
        threads = declare(self, "torch_threads", 0, "CPU threads for torch (0 = torch default).", (0, 256))
        kind = declare(self, "world_model", "rla-wm", "rla-wm (rla_checkpoint + wm_checkpoint) or regression.")
        rla_checkpoint = declare(self, "rla_checkpoint", "", "RLA autoencoder checkpoint folder (rla-wm).")
        wm_checkpoint = declare(self, "wm_checkpoint", "", "RLA-WM world-model checkpoint folder (rla-wm).")
        regression_checkpoint = declare(
            self, "regression_checkpoint", "", "Regression baseline checkpoint (regression)."
        )
        euler_steps = declare(self, "euler_steps", 10, "Euler steps per RLA-WM prediction.", (1, 1000))
        seed = declare(self, "seed", 0, "Seed of the planner's sampling and of RLA-WM's flow noise.", (0, 2**31 - 1))
        if threads:
            torch.set_num_threads(threads)
        self.encoder = FeatureEncoder(EncoderConfig(model=model, resolution=resolution, device=device, dtype=dtype))
        self.encoder_id = self.encoder.encoder_id
        try:
            self.loaded = load_predictor(
                kind, rla_checkpoint, wm_checkpoint, regression_checkpoint, euler_steps, seed, device
            )
        except (CheckpointError, PlanningError) as err:
            raise RuntimeError(f"planner: cannot load world model {kind!r}: {err}") from err
        grid = self.encoder.grid
        if (self.loaded.encoder_id, self.loaded.num_tokens, self.loaded.token_dim) != (
            self.encoder_id,
            grid.tokens,
            grid.channels,
        ):
            raise RuntimeError(
                f"world model was trained on {self.loaded.encoder_id!r} "
                f"({self.loaded.num_tokens}x{self.loaded.token_dim} tokens), the encoder is "
                f"{self.encoder_id!r} ({grid.tokens}x{grid.channels}): set model/resolution to match"
            )
        if "random" in self.encoder.model_path:
            self.get_logger().warning(f"encoder {model!r} has RANDOM weights: goal features are random projections")

        # -- robot interface ----------------------------------------------------------------
        self.joint_names = declare(
            self, "joint_names", ["agent_x", "agent_y"], "Commanded joints, in action order.", param_type=list
        )
        if len(self.joint_names) != self.loaded.action_dim:
            raise RuntimeError(
                f"joint_names {self.joint_names} do not match the world model's action_dim {self.loaded.action_dim}"
            )
        self.point_period = declare(
            self, "point_period", 0.1, "Seconds between actions (the training data's control period).", (0.001, 10.0)
        )
        self.features_timeout = declare(
            self,
            "features_timeout",
            1.0,
            "Do not plan from a feature map received longer ago than this (s).",
            (0.01, 60.0),
        )
        self.state_timeout = declare(
            self, "state_timeout", 0.5, "Ignore joint states older than this (s).", (0.01, 10.0)
        )
        self.min_lead_time = declare(
            self, "min_lead_time", 0.05, "Drop chunk points due sooner than this after publishing (s).", (0.0, 5.0)
        )

        # -- optimiser ------------------------------------------------------------------------
        low = declare(self, "action_low", [0.0, 0.0], "Lower action bound per joint.", param_type=list)
        high = declare(self, "action_high", [512.0, 512.0], "Upper action bound per joint.", param_type=list)
        max_delta = declare(
            self,
            "max_delta",
            40.0,
            "Largest target change per step, and from the measured "
            "state (0 = none); keep it under the gate's velocity limit x point_period.",
            (0.0, 1e9),
        )
        chunk_length = declare(
            self, "chunk_length", 5, "Actions per world-model prediction (the training horizon).", (1, 1000)
        )
        if chunk_length > self.loaded.max_horizon:
            raise RuntimeError(
                f"chunk_length {chunk_length} exceeds the world model's max_horizon {self.loaded.max_horizon}"
            )
        try:
            self.defaults = PlannerConfig(
                method=declare(self, "method", "cem", "cem or mppi."),
                horizon=declare(self, "horizon", 5, "Default plan length in chunks.", (1, MAX_HORIZON)),
                chunk_length=chunk_length,
                num_samples=declare(self, "num_samples", 300, "Default samples per iteration.", (1, MAX_SAMPLES)),
                iterations=declare(self, "iterations", 30, "Default optimiser iterations.", (1, MAX_ITERATIONS)),
                elites=declare(self, "elites", 30, "CEM elites.", (1, MAX_SAMPLES)),
                temperature=declare(self, "temperature", 0.5, "MPPI temperature (x cost std).", (1e-6, 1e6)),
                action_low=tuple(float(v) for v in low),
                action_high=tuple(float(v) for v in high),
                max_delta=max_delta or None,
                init_std=declare(
                    self, "init_std", 0.25, "Initial std as a fraction of the action range.", (1e-6, 10.0)
                ),
                cost=declare(self, "cost", "l2", "l2, l1 or cosine distance over patch tokens."),
                intermediate_weight=declare(
                    self,
                    "intermediate_weight",
                    0.0,
                    "Weight of the distances after intermediate chunks (0 = final only).",
                    (0.0, 1e6),
                ),
                time_budget=declare(self, "time_budget", 0.0, "Default seconds per plan (0 = none).", (0.0, 3600.0)),
                batch_size=declare(self, "batch_size", 0, "Candidates per predictor call (0 = all).", (0, MAX_SAMPLES)),
                seed=seed,
            )
        except PlanningError as err:
            raise RuntimeError(f"planner: bad optimiser parameters: {err}") from err
        if len(self.defaults.action_low) != self.loaded.action_dim:
            raise RuntimeError(f"action_low/high need {self.loaded.action_dim} values")
        if any(
            lo < tl or hi > th
            for lo, hi, tl, th in zip(
                self.defaults.action_low, self.defaults.action_high, self.loaded.action_low, self.loaded.action_high
            )
        ):
            self.get_logger().warning(
                f"action bounds {self.defaults.action_low}..{self.defaults.action_high} exceed "
                f"the world model's training range {self.loaded.action_low}.."
                f"{self.loaded.action_high}: its predictions there are extrapolation"
            )
        self.planner = Planner(self.loaded.predictor, self.defaults)

        # -- MPC ----------------------------------------------------------------------------------
        self.mpc_rate = declare(
            self, "mpc_rate", 0.0, "Replanning rate (Hz) toward the current goal; 0 = no MPC.", (0.0, 1000.0)
        )
        mpc_horizon = declare(
            self, "mpc_horizon", 0, "Plan length in chunks when replanning (0 = horizon).", (0, MAX_HORIZON)
        )
        mpc_samples = declare(self, "mpc_num_samples", 64, "Samples per iteration when replanning.", (1, MAX_SAMPLES))
        mpc_iterations = declare(self, "mpc_iterations", 3, "Iterations per replan.", (1, MAX_ITERATIONS))
        mpc_budget = declare(self, "mpc_time_budget", 0.0, "Seconds per replan (0 = 0.9 / mpc_rate).", (0.0, 3600.0))
        budget = mpc_budget or (0.9 / self.mpc_rate if self.mpc_rate > 0 else 0.0)
        self.mpc = MPCController(
            self.planner,
            self.planner.settings(
                horizon=mpc_horizon or None, num_samples=mpc_samples, iterations=mpc_iterations, time_budget=budget
            ),
        )

        # -- state ------------------------------------------------------------------------------
        self.model_lock = threading.Lock()  # one planning run at a time (action or MPC)
        self.goal_lock = threading.Lock()
        self.goal_active = False
        # (arrival, map, its tokens or None when refused, why it was refused)
        self.latest_features: tuple[float, FeatureMap, np.ndarray | None, str] | None = None
        self.latest_state: tuple[float, np.ndarray] | None = None
        self.mpc_acted_on: FeatureMap | None = None
        self.plans = 0
        self.last_plan_seconds = 0.0
        self.last_plan_delay = 0.0  # seconds a published plan started late (planning time)
        self.last_cost = float("nan")
        self.last_error = ""

        # -- ROS interfaces ---------------------------------------------------------------------
        self.guard = NodeGuard(self, "world-model planner", health=self.health, hardware_id=self.encoder_id)
        guard = self.guard.wrap
        self.trajectory_pub = self.create_publisher(JointTrajectory, "planner/joint_trajectory", 10)
        self.cost_pub = self.create_publisher(Float32, "planner/predicted_cost", 10)
        self.create_subscription(FeatureMap, "features", guard(self.on_features), LATEST_ONLY)
        self.create_subscription(JointState, "joint_states", guard(self.on_joint_state), 10)
        self.action_server = ActionServer(
            self,
            PlanToGoal,
            "~/plan_to_goal",
            execute_callback=guard(self.execute_goal, on_error=self.goal_failed),
            goal_callback=guard(self.on_goal_request, on_error=lambda _error, _goal: GoalResponse.REJECT),
            cancel_callback=guard(
                lambda _: CancelResponse.ACCEPT,
                name="cancel_goal",
                on_error=lambda _error, _goal: CancelResponse.REJECT,
            ),
            callback_group=ReentrantCallbackGroup(),
        )
        self.create_service(Trigger, "~/clear_goal", guard(self.on_clear_goal))
        if self.mpc_rate > 0:
            # Encoding a goal image and replanning each get a group so neither stalls the inputs.
            self.create_subscription(
                Image,
                "goal_image",
                guard(self.on_goal_image),
                LATEST_ONLY,
                callback_group=MutuallyExclusiveCallbackGroup(),
            )
            self.create_timer(
                1.0 / self.mpc_rate, guard(self.on_mpc_tick), callback_group=MutuallyExclusiveCallbackGroup()
            )
        self.get_logger().info(
            f"planner: {self.loaded.predictor.name} on {self.encoder_id}, {self.defaults.method} "
            f"{self.defaults.num_samples}x{self.defaults.iterations}, horizon {self.defaults.horizon}x"
            f"{chunk_length}; MPC {f'at {self.mpc_rate:.1f} Hz' if self.mpc_rate > 0 else 'off'}"
        )

    # -- inputs -------------------------------------------------------------------------------------
    def on_features(self, msg: FeatureMap) -> None:
        received = time.monotonic()
        try:
            tokens = self.tokens_of(msg)
        except Rejected as err:
            # Still the newest observation: nothing is planned from an older one in its place.
            self.latest_features = (received, msg, None, str(err))
            raise
        self.latest_features = (received, msg, tokens, "")

    def tokens_of(self, msg: FeatureMap) -> np.ndarray:
        """The map's (N, C) tokens if the world model can take them; Rejected otherwise."""
        if msg.encoder_id != self.encoder_id:
            raise Rejected(
                "encoder_mismatch",
                f"features come from encoder {msg.encoder_id!r}, the world model needs {self.encoder_id!r}",
            )
        grid = self.encoder.grid  # checked against the world model's tokens at start-up
        try:
            return msg_to_features(msg, expected=(grid.height, grid.width, grid.channels))
        except GridMismatchError as err:
            raise Rejected("grid_mismatch", str(err)) from err
        except MessageShapeError as err:
            raise Rejected("malformed_features", str(err)) from err

    def on_joint_state(self, msg: JointState) -> None:
        try:
            self.latest_state = (time.monotonic(), joint_positions(msg, self.joint_names))
        except MessageShapeError as err:
            raise Rejected("malformed_joint_state", str(err)) from err

    def fresh_state(self) -> np.ndarray | None:
        if self.latest_state is None or time.monotonic() - self.latest_state[0] > self.state_timeout:
            return None
        return self.latest_state[1]

    def observation(self) -> tuple[FeatureMap, torch.Tensor]:
        """The newest feature map as a (N, C) tensor; ObservationError when unusable."""
        if self.latest_features is None:
            raise ObservationError("no feature map received yet")
        received, msg, tokens, refusal = self.latest_features
        if tokens is None:
            raise ObservationError(f"the newest feature map was refused: {refusal}")
        if time.monotonic() - received > self.features_timeout:
            raise ObservationError(f"newest feature map is {time.monotonic() - received:.1f} s old")
        return msg, torch.from_numpy(tokens).to(self.encoder.device)

    def encode_goal(self, image: Image) -> torch.Tensor:
        """Goal image -> (N, C) goal features; ObservationError for an image with no RGB meaning."""
        try:
            rgb = image_msg_to_rgb(image)
            return self.encoder(rgb[None])[0].float()
        except (CvBridgeError, FeatureEncoderError, ValueError) as err:
            raise ObservationError(f"malformed goal image: {err}") from err

    # -- action ---------------------------------------------------------------------------------------
    def on_goal_request(self, goal: PlanToGoal.Goal) -> GoalResponse:
        with self.goal_lock:
            if self.goal_active:
                self.get_logger().warning("plan_to_goal: rejected, another goal is being planned")
                return GoalResponse.REJECT
            self.goal_active = True
        return GoalResponse.ACCEPT

    def goal_settings(self, goal: PlanToGoal.Goal) -> PlannerConfig:
        for name, value, limit in (
            ("horizon", goal.horizon, MAX_HORIZON),
            ("num_samples", goal.num_samples, MAX_SAMPLES),
            ("iterations", goal.iterations, MAX_ITERATIONS),
        ):
            if value > limit:
                raise PlanningError(f"{name} {value} exceeds {limit}")
        if not np.isfinite(goal.time_budget) or goal.time_budget < 0:
            raise PlanningError(f"time_budget must be >= 0, got {goal.time_budget}")
        # 0 means "node default" for every field.
        return self.planner.settings(
            horizon=goal.horizon or None,
            num_samples=goal.num_samples or None,
            iterations=goal.iterations or None,
            time_budget=float(goal.time_budget) or None,
        )

    def execute_goal(self, goal_handle) -> PlanToGoal.Result:
        try:
            return self._execute_goal(goal_handle)
        finally:
            with self.goal_lock:
                self.goal_active = False

    def goal_failed(self, error: Exception, goal_handle) -> PlanToGoal.Result:
        """An unexpected exception in execute_goal (counted by the guard): the goal is aborted."""
        message = f"planner error: {type(error).__name__}: {error}"
        self.last_error = message
        if goal_handle.is_active:
            goal_handle.abort()
        return PlanToGoal.Result(success=False, message=message)

    def _execute_goal(self, goal_handle) -> PlanToGoal.Result:
        goal: PlanToGoal.Goal = goal_handle.request
        result = PlanToGoal.Result()

        def abort(reason: str, message: str) -> PlanToGoal.Result:
            self.last_error = message
            self.guard.reject("execute_goal", reason, f"plan_to_goal aborted: {message}")
            goal_handle.abort()
            result.success, result.message = False, message
            return result

        try:
            settings = self.goal_settings(goal)
        except PlanningError as err:
            return abort("bad_goal", str(err))
        try:
            goal_features = self.encode_goal(goal.goal_image)
        except ObservationError as err:
            return abort("bad_goal_image", str(err))
        try:
            observation, current = self.observation()
        except ObservationError as err:
            return abort("no_observation", str(err))
        state = self.fresh_state()
        if goal.execute and state is None:
            return abort("no_fresh_state", "execute needs a fresh joint state: none received within state_timeout")

        def on_iteration(stats) -> bool:
            feedback = PlanToGoal.Feedback(iteration=stats.iteration, best_cost=stats.best_cost, elapsed=stats.elapsed)
            goal_handle.publish_feedback(feedback)
            return goal_handle.is_cancel_requested

        with self.model_lock:
            try:
                plan = self.planner.plan(
                    current, goal_features, start_action=state, callback=on_iteration, config=settings
                )
            except (PlanningError, ValueError, RuntimeError) as err:  # the models raise ValueError on bad input
                return abort("planning_failed", f"planning failed: {err}")
        self.record(plan)
        result.plan = self.plan_msg(plan, observation)
        result.predicted_cost = float(plan.cost)
        if plan.stopped == "cancelled":
            goal_handle.canceled()
            result.success, result.message = False, f"cancelled after {len(plan.stats)} iterations"
            return result
        if goal.execute:
            # A plan that took seconds has outlived its observation's chunk timing: the first chunk
            # starts now, from where the robot was when planning began (the gate checks it against
            # the measured state).
            fresh = self.fresh_state()
            if fresh is None:
                return abort("no_fresh_state", "joint state went stale while planning: not executing")
            self.publish_chunk(plan.first_chunk.numpy(), self.get_clock().now().to_msg())
        if self.mpc_rate > 0:
            with self.model_lock:
                self.mpc.set_goal(goal_features, warm_start=plan.actions)
        goal_handle.succeed()
        result.success = True
        result.message = f"{len(plan.stats)} iterations in {plan.elapsed:.2f} s (stopped: {plan.stopped})" + (
            "; first chunk sent" if goal.execute else ""
        )
        return result

    # -- MPC -----------------------------------------------------------------------------------------
    def on_goal_image(self, msg: Image) -> None:
        try:
            goal = self.encode_goal(msg)
        except ObservationError as err:
            self.last_error = str(err)
            raise Rejected("bad_goal_image", str(err)) from err
        with self.model_lock:
            changed = self.mpc.set_goal(goal)
        if changed:  # a latched goal is republished unchanged; that keeps the warm start
            self.get_logger().info("MPC goal set from goal_image")

    def on_clear_goal(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self.model_lock:
            self.mpc.clear_goal()
        response.success, response.message = True, "MPC goal cleared: no more chunks until a new goal"
        return response

    def on_mpc_tick(self) -> None:
        latest = self.latest_features
        if self.mpc.goal is None or latest is None or latest[1] is self.mpc_acted_on or latest[2] is None:
            return  # never plan twice from one observation; a refused map was counted when it came
        if not self.model_lock.acquire(blocking=False):
            return  # an action goal is planning; the next tick retries
        try:
            if self.mpc.goal is None:
                return
            try:
                observation, current = self.observation()
            except ObservationError as err:
                raise Rejected("no_observation", f"MPC: not replanning: {err}") from err
            state = self.fresh_state()
            if state is None:
                raise Rejected("no_fresh_state", "MPC: not replanning: no fresh joint state")
            self.mpc_acted_on = observation
            try:
                step = self.mpc.step(current, start_action=state)
            except (PlanningError, ValueError, RuntimeError) as err:
                raise Rejected("planning_failed", f"MPC: not replanning: {err}") from err
        except Rejected as err:
            self.last_error = err.detail
            raise
        finally:
            self.model_lock.release()
        self.record(step.result)
        if self.publish_chunk(step.chunk.numpy(), observation.header.stamp):
            self.cost_pub.publish(Float32(data=float(step.result.cost)))

    # -- outputs -------------------------------------------------------------------------------------
    def plan_msg(self, plan: PlanResult, observation: FeatureMap) -> JointTrajectory:
        positions = plan.actions.reshape(-1, plan.actions.shape[-1]).numpy()
        times = self.point_period * np.arange(1, len(positions) + 1)
        return chunk_to_msg(Chunk(tuple(self.joint_names), positions, times, observation.header.stamp))

    def publish_chunk(self, positions: np.ndarray, stamp) -> bool:
        """Publish a plan's chunk, stamped with its observation, starting one point period from now.

        A plan starts at the state measured at `stamp` and its first target is one step from
        it. When planning took longer than that step (a CPU world model), dropping the points
        already due would leave later targets that are too far for the time left, which the
        gate rightly refuses; so a late plan is started late instead: its points keep their
        spacing, shifted by the planning delay.
        """
        if not np.isfinite(positions).all():
            self.guard.reject("publish_chunk", "non_finite_plan", "plan contains NaN/inf: chunk dropped")
            return False
        now = self.get_clock().now().nanoseconds * 1e-9
        delay = max(0.0, now + self.min_lead_time - stamp_to_seconds(stamp))
        self.last_plan_delay = delay
        times = delay + self.point_period * np.arange(1, len(positions) + 1)
        self.trajectory_pub.publish(chunk_to_msg(Chunk(tuple(self.joint_names), positions, times, stamp)))
        return True

    def record(self, plan: PlanResult) -> None:
        self.plans += 1
        self.last_plan_seconds = plan.elapsed
        self.last_cost = plan.cost

    def health(self) -> Health:
        health = Health(
            "ready",
            values={
                "world_model": self.loaded.predictor.name,
                "plans": self.plans,
                "last_plan_ms": f"{self.last_plan_seconds * 1e3:.1f}",
                "last_plan_delay_ms": f"{self.last_plan_delay * 1e3:.1f}",
                "last_cost": f"{self.last_cost:.6g}",
                "mpc_goal": self.mpc.goal is not None,
            },
        )
        if self.last_error:
            health.level, health.message = WARN, f"last error: {self.last_error}"
        return health


def main(args: list[str] | None = None) -> None:
    from rla_wm_ros.node_main import spin_node

    # Action tasks run on the executor's pool: enough threads that a long plan never starves
    # the inputs, the cancel service or the MPC timer.
    spin_node(PlannerNode, args, threads=4)


if __name__ == "__main__":
    main()
