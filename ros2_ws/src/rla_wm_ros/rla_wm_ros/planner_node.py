"""Plan to a goal image with world-model rollouts (CEM / MPPI in `rla_wm.control.planning`).

- Action `~/plan_to_goal` (rla_wm_msgs/action/PlanToGoal): goal image -> goal features with the
  node's own encoder, then a plan from the newest `features`, feedback every iteration, cancel
  honoured between iterations. With `execute`, the plan's first chunk(s) (`published_chunks`) go out on
  `planner/joint_trajectory` (routed through the safety gate by the launch file).
- MPC (`mpc_rate` > 0, goal from the action or the `goal_image` topic): replans at that rate from
  the newest feature map, warm-started with the shifted previous plan, and publishes the first
  chunk(s) stamped with the observation's stamp plus the predicted cost on `planner/predicted_cost`.
  `~/clear_goal` stops it.
- `publish_debug_image`: after each plan's chunk (or action result) is out, one more rollout of
  the chosen plan alone; the PCA picture of its predicted final features goes out on
  `~/predicted_features_pca` (sensor_msgs/Image rgb8, the observation's header, 224 px or more).

Planning runs outside the executor, which has one thread: action goals and MPC replans each on
a thread of their own (rla_wm_ros.wakeable_worker says why), so features, joint states and
cancel requests are taken while a plan runs. What is planned from what, and when nothing is,
is `rla_wm.control.planner_session`: bad input never produces a command. A feature map the world
model cannot take is refused when it arrives, and while it is the newest map no plan is made.
Every refusal is counted on /diagnostics (`rla_wm_ros.node_guard`); no exception ends the node.
"""

from __future__ import annotations

import threading

import numpy as np
import torch
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.task import Future
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from rla_wm.control.planner_session import PlannerSession, Refusal
from rla_wm.control.planner_setup import PlannerSettings
from rla_wm.control.planning import PlanningError
from rla_wm.control.settings import setting_specs
from rla_wm.evaluation.visualize import feature_pca_picture, readable_size
from rla_wm.models.encoder import FeatureEncoderError, load_encoder
from rla_wm_msgs.action import PlanToGoal
from rla_wm_msgs.msg import FeatureMap
from rla_wm_ros.conversions import (
    Chunk,
    chunk_to_msg,
    joint_positions_or_reject,
    model_features_or_reject,
    stamp_to_seconds,
)
from rla_wm_ros.image_conversion import CvBridge, CvBridgeError, image_msg_to_rgb
from rla_wm_ros.node_guard import WARN, Health, NodeGuard, Rejected
from rla_wm_ros.params import declare
from rla_wm_ros.qos import LATEST_ONLY
from rla_wm_ros.wakeable_worker import WakeableWorker


class PlannerNode(Node):
    def __init__(self) -> None:
        super().__init__("planner")
        settings = PlannerSettings(**{spec.name: declare(self, *spec) for spec in setting_specs(PlannerSettings)})
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        # A ViT, or a camera estimator of a privileged state (goal images of the SO-101's cube state).
        self.encoder = load_encoder(settings.encoder_config())
        if "random" in self.encoder.model_path:
            self.get_logger().warning(
                f"encoder {settings.model!r} has RANDOM weights: goal features are random projections"
            )
        self.encoder_id, grid = self.encoder.encoder_id, self.encoder.grid
        self.grid = (grid.height, grid.width, grid.channels)
        try:
            build = settings.build(self.encoder_id, grid.tokens, grid.channels, self.encoder.device)
        except PlanningError as err:
            raise RuntimeError(f"planner: {err}") from err
        for warning in build.warnings:
            self.get_logger().warning(warning)
        self.session: PlannerSession[FeatureMap] = build.session
        self.joint_names, self.timing, self.mpc_rate = tuple(settings.joint_names), settings.timing(), settings.mpc_rate

        self.guard = NodeGuard(self, "world-model planner", health=self.health, hardware_id=self.encoder_id)
        guard = self.guard.wrap
        self.trajectory_pub = self.create_publisher(JointTrajectory, "planner/joint_trajectory", 10)
        self.cost_pub = self.create_publisher(Float32, "planner/predicted_cost", 10)
        self.debug_pub = None  # no publisher, and no extra rollout, unless asked for
        if declare(
            self,
            "publish_debug_image",
            False,
            "Also publish the PCA picture of the features each chosen plan is predicted to reach "
            "(sensor_msgs/Image rgb8, the observation's header, square patches, at least 224 px) on "
            "~/predicted_features_pca, for RViz / Foxglove. Costs one rollout of the chosen plan per plan, "
            "after its chunk is published.",
        ):
            self.debug_pub = self.create_publisher(Image, "~/predicted_features_pca", LATEST_ONLY)
        self.create_subscription(FeatureMap, "features", guard(self.on_features), LATEST_ONLY)
        self.create_subscription(JointState, "joint_states", guard(self.on_joint_state), 10)
        self.action_server = ActionServer(
            self,
            PlanToGoal,
            "~/plan_to_goal",
            execute_callback=self.execute_goal,
            goal_callback=guard(self.on_goal_request, on_error=lambda _error, _goal: GoalResponse.REJECT),
            cancel_callback=guard(
                lambda _: CancelResponse.ACCEPT, name="cancel_goal", on_error=lambda _e, _g: CancelResponse.REJECT
            ),
            callback_group=ReentrantCallbackGroup(),
        )
        self.create_service(Trigger, "~/clear_goal", guard(self.on_clear_goal))
        self.replan_worker: WakeableWorker | None = None
        if self.mpc_rate > 0:
            self.create_subscription(Image, "goal_image", guard(self.on_goal_image), LATEST_ONLY)
            # Replans run on their own thread; the timer only wakes it (rla_wm_ros.wakeable_worker says why).
            self.replan_worker = WakeableWorker(guard(self.on_mpc_tick), name="mpc-replan")
            self.create_timer(1.0 / self.mpc_rate, self.replan_worker.wake)
        self.get_logger().info(f"planner: {build.summary}")

    # -- inputs ---------------------------------------------------------------------------------------
    def on_features(self, msg: FeatureMap) -> None:
        try:
            tokens = model_features_or_reject(msg, self.encoder_id, self.grid)  # the grid matches the world model's
        except Rejected as refusal:
            self.session.observe_features(msg, None, str(refusal))  # still the newest: no older map is used
            raise
        self.session.observe_features(msg, tokens)

    def on_joint_state(self, msg: JointState) -> None:
        self.session.observe_state(joint_positions_or_reject(msg, self.joint_names))

    def encode_goal(self, image: Image) -> torch.Tensor:
        """Goal image -> (N, C) goal features; Refusal for an image with no RGB meaning."""
        try:
            return self.encoder(image_msg_to_rgb(image)[None])[0].float()
        except (CvBridgeError, FeatureEncoderError, ValueError) as err:
            raise Refusal("bad_goal_image", f"malformed goal image: {err}") from err

    # -- action ---------------------------------------------------------------------------------------
    def on_goal_request(self, goal: PlanToGoal.Goal) -> GoalResponse:
        if self.session.begin_goal():
            return GoalResponse.ACCEPT
        self.get_logger().warning("plan_to_goal: rejected, another goal is being planned")
        return GoalResponse.REJECT

    async def execute_goal(self, goal_handle) -> PlanToGoal.Result:
        """Plan on a thread of its own while the (single-threaded) executor goes on taking
        features, joint states and the cancel request; resumed when the plan is done."""
        done: Future = Future()
        plan_goal = self.guard.wrap(self.plan_goal_blocking, on_error=self.goal_failed)

        def run() -> None:
            try:
                done.set_result(plan_goal(goal_handle))
            except BaseException as error:  # the guard converts errors; this is for what it re-raises
                done.set_exception(error)

        threading.Thread(target=run, name="plan-to-goal", daemon=True).start()
        return await done

    def plan_goal_blocking(self, goal_handle) -> PlanToGoal.Result:
        try:
            return self._execute_goal(goal_handle, goal_handle.request, PlanToGoal.Result())
        finally:
            self.session.end_goal()

    def goal_failed(self, error: Exception, goal_handle) -> PlanToGoal.Result:
        """An unexpected exception in execute_goal (counted by the guard): the goal is aborted."""
        self.session.last_error = message = f"planner error: {type(error).__name__}: {error}"
        if goal_handle.is_active:
            goal_handle.abort()
        return PlanToGoal.Result(success=False, message=message)

    def _execute_goal(self, goal_handle, goal: PlanToGoal.Goal, result: PlanToGoal.Result) -> PlanToGoal.Result:
        def on_iteration(stats) -> bool:
            goal_handle.publish_feedback(
                PlanToGoal.Feedback(iteration=stats.iteration, best_cost=stats.best_cost, elapsed=stats.elapsed)
            )
            return goal_handle.is_cancel_requested

        try:
            settings = self.session.goal_settings(goal.horizon, goal.num_samples, goal.iterations, goal.time_budget)
            goal_features = self.encode_goal(goal.goal_image)
            planned = self.session.plan_goal(goal_features, settings, goal.execute, on_iteration)
            plan, stamp = planned.plan, planned.observation.header.stamp
            positions = plan.actions.reshape(-1, plan.actions.shape[-1]).numpy()
            times = self.timing.plan_times(len(positions))
            result.plan = chunk_to_msg(Chunk(self.joint_names, positions, times, stamp))
            result.predicted_cost = float(plan.cost)
            if plan.stopped == "cancelled":
                goal_handle.canceled()
                result.success, result.message = False, f"cancelled after {len(plan.stats)} iterations"
                return result
            if goal.execute:  # now, from where the robot was when planning began (the gate checks it)
                self.session.state_for_execution()
                self.publish_chunk(self.session.published(plan.actions).numpy(), self.get_clock().now().to_msg())
            self.publish_predicted_end(planned.observation, planned.start, plan.actions)
        except Refusal as refusal:
            self.session.last_error = refusal.detail
            self.guard.reject("execute_goal", refusal.reason, f"plan_to_goal aborted: {refusal.detail}")
            goal_handle.abort()
            result.success, result.message = False, refusal.detail
            return result
        if self.mpc_rate > 0:
            self.session.set_goal(goal_features, warm_start=plan.actions)
        goal_handle.succeed()
        result.success = True
        result.message = f"{len(plan.stats)} iterations in {plan.elapsed:.2f} s (stopped: {plan.stopped})"
        result.message += "; first chunk sent" if goal.execute else ""
        return result

    # -- MPC ------------------------------------------------------------------------------------------
    def on_goal_image(self, msg: Image) -> None:
        try:
            goal = self.encode_goal(msg)
        except Refusal as refusal:
            self.session.last_error = refusal.detail
            raise Rejected(refusal.reason, refusal.detail) from refusal
        if self.session.set_goal(goal):  # a latched goal republished unchanged keeps the warm start
            self.get_logger().info("MPC goal set from goal_image")

    def on_clear_goal(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self.session.clear_goal()
        response.success, response.message = True, "MPC goal cleared: no more chunks until a new goal"
        return response

    def on_mpc_tick(self) -> None:
        try:
            replan = self.session.replan()
        except Refusal as refusal:
            raise Rejected(refusal.reason, refusal.detail) from refusal
        if replan is not None and self.publish_chunk(replan.chunk, replan.observation.header.stamp):
            self.cost_pub.publish(Float32(data=replan.cost))
            self.publish_predicted_end(replan.observation, replan.start, replan.actions)

    # -- outputs --------------------------------------------------------------------------------------
    def publish_chunk(self, positions: np.ndarray, stamp) -> bool:
        """Publish a plan's chunk stamped with its observation, started late by the planning time."""
        if not np.isfinite(positions).all():
            self.guard.reject("publish_chunk", "non_finite_plan", "plan contains NaN/inf: chunk dropped")
            return False
        now = self.get_clock().now().nanoseconds * 1e-9
        self.session.last_plan_delay, times = self.timing.late_start(len(positions), stamp_to_seconds(stamp), now)
        self.trajectory_pub.publish(chunk_to_msg(Chunk(self.joint_names, positions, times, stamp)))
        return True

    def publish_predicted_end(self, observation: FeatureMap, start: torch.Tensor, actions: torch.Tensor) -> None:
        """With publish_debug_image, the PCA picture of the features a plan is predicted to reach,
        stamped with its observation's header; else nothing (and no rollout)."""
        if self.debug_pub is None:
            return
        height, width = self.grid[0], self.grid[1]
        try:
            features = self.session.predicted_end(start, actions).float().cpu().numpy()
            picture = feature_pca_picture(features, height, width, *readable_size(height, width))
        except (PlanningError, ValueError, RuntimeError) as err:  # the plan itself went out already
            self.guard.reject("debug_image", "no_picture", f"no predicted-features picture: {err}")
            return
        self.debug_pub.publish(CvBridge().cv2_to_imgmsg(picture, "rgb8", observation.header))

    def destroy_node(self) -> None:
        if self.replan_worker is not None:
            self.replan_worker.stop()
        super().destroy_node()

    def health(self) -> Health:
        if self.session.last_error:
            return Health(f"last error: {self.session.last_error}", WARN, self.session.summary())
        return Health("ready", values=self.session.summary())


def main(args: list[str] | None = None) -> None:
    from rla_wm_ros.node_main import spin_node

    # One executor thread: plans run on threads of their own (see the module docstring).
    spin_node(PlannerNode, args, threads=1)


if __name__ == "__main__":
    main()
