"""The planner node over real DDS: plan_to_goal (feedback, bounds, execute, bad input), cancel,
MPC chunks stamped with the observation, and refusal of a world model from another feature space.

Models are tiny and randomly initialised (created in the test's tmp dir); the encoder runs at
112 px (8x8 tokens) so each test takes seconds.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from action_msgs.msg import GoalStatus
from rclpy.action import ActionClient
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32, Header
from trajectory_msgs.msg import JointTrajectory

from rla_wm.models.regression import RegressionConfig, RegressionModel
from rla_wm.models.rla import RLAAutoencoder, RLAConfig
from rla_wm.models.world_model import RLAWorldModel, WorldModelConfig
from rla_wm_msgs.action import PlanToGoal
from rla_wm_msgs.msg import FeatureMap
from rla_wm_ros.conversions import features_to_msg, msg_to_chunk, stamp_to_nanoseconds
from rla_wm_ros.launch_xml import NodeSpec

from conftest import Inbox, config_file, wait_for
from test_nodes import image_msg

pytestmark = pytest.mark.timeout(150)

RESOLUTION, SIDE, CHANNELS = 112, 8, 192
ENCODER_ID = f"builtin:dinov2-tiny-random@{RESOLUTION}"
LOW, HIGH, MAX_DELTA, CHUNK = 20.0, 492.0, 40.0, 3
STATE = [250.0, 260.0]


def make_checkpoints(folder, encoder_id: str = ENCODER_ID) -> dict[str, str]:
    """Tiny random RLA autoencoder, RLA-WM and regression checkpoints for the 8x8 feature grid."""
    torch.manual_seed(0)
    shared = dict(token_dim=CHANNELS, num_tokens=SIDE * SIDE, encoder_id=encoder_id)
    actions = dict(action_low=(LOW, LOW), action_high=(HIGH, HIGH), max_horizon=6)
    autoencoder = RLAAutoencoder(
        RLAConfig(latent_tokens=2, latent_dim=4, width=32, encoder_depth=1, decoder_depth=1, heads=2, **shared)
    )
    world_model = RLAWorldModel(
        WorldModelConfig(
            latent_tokens=2,
            latent_dim=4,
            width=32,
            condition_depth=1,
            flow_depth=1,
            heads=2,
            latent_scale=1.0,
            **shared,
            **actions,
        )
    )
    regression = RegressionModel(RegressionConfig(width=32, depth=1, heads=2, **shared, **actions))
    with torch.no_grad():  # zero-initialised outputs would make every plan cost the same
        for layer in (autoencoder.decoder.output, world_model.velocity, regression.output):
            layer.weight.normal_(0, 0.05)
    paths = {"rla_checkpoint": folder / "rla", "wm_checkpoint": folder / "wm", "regression_checkpoint": folder / "reg"}
    autoencoder.save(paths["rla_checkpoint"])
    world_model.save(paths["wm_checkpoint"])
    regression.save(paths["regression_checkpoint"])
    return {key: str(path) for key, path in paths.items()}


def planner_spec(checkpoints: dict[str, str], **params: str) -> NodeSpec:
    values = {
        "resolution": str(RESOLUTION),
        "chunk_length": str(CHUNK),
        "horizon": "2",
        "num_samples": "8",
        "iterations": "2",
        "elites": "4",
        "euler_steps": "2",
        "time_budget": "0.0",
        "max_delta": str(MAX_DELTA),
        **checkpoints,
        **params,
    }
    return NodeSpec("rla_wm_ros", "planner", name="planner", param_files=[config_file("planner.yaml")], params=values)


class Observations:
    """Feature maps and joint states from the test, as the encoder and the robot would send them."""

    def __init__(self, node, encoder_id: str = ENCODER_ID) -> None:
        self.node = node
        self.encoder_id = encoder_id
        self.features = node.create_publisher(FeatureMap, "features", 10)
        self.states = node.create_publisher(JointState, "joint_states", 10)
        self.sent: list[int] = []
        self.grid = (SIDE, SIDE, CHANNELS)  # what the feature maps declare (and hold)
        self.stop = threading.Event()
        self.rng = np.random.default_rng(0)
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            now = self.node.get_clock().now().to_msg()
            self.states.publish(JointState(name=["agent_x", "agent_y"], position=STATE))
            height, width, channels = self.grid
            tokens = self.rng.normal(size=(height * width, channels)).astype(np.float32)
            self.features.publish(features_to_msg(tokens, height, width, self.encoder_id, Header(stamp=now)))
            self.sent.append(stamp_to_nanoseconds(now))
            time.sleep(0.1)

    def start(self, graph) -> Observations:
        wait_for(
            lambda: self.features.get_subscription_count() > 0 and self.states.get_subscription_count() > 0,
            60,
            "the planner to subscribe",
            graph,
        )
        self.thread.start()
        time.sleep(0.5)  # a few fresh observations before the first goal
        return self

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


def wait_future(future, timeout: float, what: str, graph):
    wait_for(future.done, timeout, what, graph)
    return future.result()


def send_goal(client, goal: PlanToGoal.Goal, graph, feedback: list | None = None):
    assert client.wait_for_server(timeout_sec=60), graph.tail_logs(30)
    handle = wait_future(
        client.send_goal_async(goal, feedback_callback=feedback.append if feedback is not None else None),
        30,
        "the goal to be accepted",
        graph,
    )
    assert handle.accepted, graph.tail_logs(30)
    return handle


def goal_msg(**fields) -> PlanToGoal.Goal:
    goal = PlanToGoal.Goal(goal_image=image_msg(120, Header().stamp))
    for key, value in fields.items():
        setattr(goal, key, value)
    return goal


def test_plan_to_goal_gives_feedback_and_a_bounded_plan_and_executes_it(ros_node, start_nodes, tmp_path):
    graph = start_nodes(planner_spec(make_checkpoints(tmp_path), world_model="rla-wm"))
    chunks = Inbox()
    ros_node.create_subscription(JointTrajectory, "planner/joint_trajectory", chunks, 10)
    client = ActionClient(ros_node, PlanToGoal, "/planner/plan_to_goal")
    observations = Observations(ros_node).start(graph)
    try:
        feedback: list = []
        handle = send_goal(client, goal_msg(horizon=3, num_samples=12, iterations=3, execute=True), graph, feedback)
        response = wait_future(handle.get_result_async(), 60, "the plan", graph)
        result = response.result
        assert response.status == GoalStatus.STATUS_SUCCEEDED and result.success, (result.message, graph.tail_logs(30))
        assert [f.feedback.iteration for f in feedback] == [1, 2, 3]
        assert all(np.isfinite(f.feedback.best_cost) for f in feedback)
        plan = msg_to_chunk(result.plan)
        assert plan.joint_names == ("agent_x", "agent_y") and plan.positions.shape == (3 * CHUNK, 2)
        assert np.isfinite(plan.positions).all() and ((plan.positions >= LOW) & (plan.positions <= HIGH)).all()
        path = np.vstack([STATE, plan.positions])
        assert np.abs(np.diff(path, axis=0)).max() <= MAX_DELTA + 1e-3  # executable from the measured state
        assert np.allclose(plan.times_from_start, 0.1 * np.arange(1, 3 * CHUNK + 1))
        assert stamp_to_nanoseconds(plan.stamp) in observations.sent  # planned from a real observation
        assert np.isfinite(result.predicted_cost) and result.predicted_cost >= 0
        wait_for(lambda: chunks.snapshot(), 10, "the executed first chunk", graph)
        executed = msg_to_chunk(chunks.snapshot()[0])
        assert np.allclose(executed.positions, plan.positions[:CHUNK])

        # Malformed goal image: aborted with the reason, and no command.
        chunks.clear()
        bad = goal_msg(execute=True)
        bad.goal_image.data = bytes(bad.goal_image.data)[:-7]
        response = wait_future(send_goal(client, bad, graph).get_result_async(), 30, "the abort", graph)
        assert response.status == GoalStatus.STATUS_ABORTED and not response.result.success
        assert "goal image" in response.result.message
        bad = goal_msg(execute=True)
        bad.goal_image.encoding = "32FC1"
        response = wait_future(send_goal(client, bad, graph).get_result_async(), 30, "the abort", graph)
        assert response.status == GoalStatus.STATUS_ABORTED and "goal image" in response.result.message
        response = wait_future(
            send_goal(client, goal_msg(iterations=10**6), graph).get_result_async(), 30, "the abort", graph
        )
        assert response.status == GoalStatus.STATUS_ABORTED and "iterations" in response.result.message

        # Feature maps from another encoder: refused.
        observations.encoder_id = "facebook/dinov2-small@224"
        time.sleep(0.5)
        response = wait_future(
            send_goal(client, goal_msg(execute=True), graph).get_result_async(), 30, "the abort", graph
        )
        assert response.status == GoalStatus.STATUS_ABORTED and "encoder" in response.result.message
        time.sleep(0.3)
        assert chunks.snapshot() == []
    finally:
        observations.close()
    assert graph.alive() == {"planner": True}


def test_cancel_stops_planning_between_iterations(ros_node, start_nodes, tmp_path):
    graph = start_nodes(planner_spec(make_checkpoints(tmp_path), world_model="regression"))
    chunks = Inbox()
    ros_node.create_subscription(JointTrajectory, "planner/joint_trajectory", chunks, 10)
    client = ActionClient(ros_node, PlanToGoal, "/planner/plan_to_goal")
    observations = Observations(ros_node).start(graph)
    try:
        feedback: list = []
        iterations = 100_000
        handle = send_goal(client, goal_msg(num_samples=32, iterations=iterations, execute=True), graph, feedback)
        wait_for(lambda: len(feedback) >= 2, 60, "feedback", graph)
        # A second goal while one is planning is rejected, not queued.
        second = wait_future(client.send_goal_async(goal_msg()), 30, "the second goal's answer", graph)
        assert not second.accepted
        wait_future(handle.cancel_goal_async(), 30, "the cancel to be accepted", graph)
        response = wait_future(handle.get_result_async(), 30, "the cancelled result", graph)
        assert response.status == GoalStatus.STATUS_CANCELED, response.result.message
        assert not response.result.success and "cancelled" in response.result.message
        assert len(feedback) < iterations
        assert chunks.snapshot() == []  # a cancelled plan is never executed
        # The node takes the next goal.
        response = wait_future(send_goal(client, goal_msg(), graph).get_result_async(), 30, "the next plan", graph)
        assert response.status == GoalStatus.STATUS_SUCCEEDED, response.result.message
    finally:
        observations.close()
    assert graph.alive() == {"planner": True}


def test_mpc_publishes_chunks_stamped_with_the_observation(ros_node, start_nodes, tmp_path):
    graph = start_nodes(
        planner_spec(
            make_checkpoints(tmp_path),
            world_model="regression",
            mpc_rate="5.0",
            mpc_num_samples="8",
            mpc_iterations="2",
        )
    )
    chunks, costs = Inbox(), Inbox()
    ros_node.create_subscription(JointTrajectory, "planner/joint_trajectory", chunks, 10)
    ros_node.create_subscription(Float32, "planner/predicted_cost", costs, 10)
    goal_pub = ros_node.create_publisher(Image, "goal_image", 10)
    observations = Observations(ros_node).start(graph)
    try:
        time.sleep(1.0)
        assert chunks.snapshot() == []  # no goal, no commands
        wait_for(lambda: goal_pub.get_subscription_count() > 0, 30, "the goal_image subscription", graph)
        goal_pub.publish(image_msg(90, Header().stamp))
        wait_for(lambda: len(chunks.snapshot()) >= 4 and len(costs.snapshot()) >= 4, 60, "MPC chunks", graph)
        received = chunks.snapshot()
        stamps = [stamp_to_nanoseconds(msg.header.stamp) for msg in received]
        assert set(stamps) <= set(observations.sent)  # the observation's stamp, never "now"
        assert len(stamps) == len(set(stamps))  # one replan per observation
        for msg in received:
            chunk = msg_to_chunk(msg)
            assert len(chunk.positions) == CHUNK and np.isfinite(chunk.positions).all()
            assert ((chunk.positions >= LOW) & (chunk.positions <= HIGH)).all()
            # A late plan starts late, never with its first target due before one step has passed.
            assert chunk.times_from_start[0] >= 0.1 - 1e-6
            np.testing.assert_allclose(np.diff(chunk.times_from_start), 0.1, atol=1e-6)
        assert all(np.isfinite(c.data) for c in costs.snapshot())
        # Clearing the goal stops the commands.
        from std_srvs.srv import Trigger

        clear = ros_node.create_client(Trigger, "/planner/clear_goal")
        assert clear.wait_for_service(timeout_sec=30)
        assert wait_future(clear.call_async(Trigger.Request()), 30, "clear_goal", graph).success
        time.sleep(0.5)
        count = len(chunks.snapshot())
        time.sleep(1.0)
        assert len(chunks.snapshot()) == count
    finally:
        observations.close()
    assert graph.alive() == {"planner": True}


def test_refuses_a_world_model_from_another_feature_space(start_nodes, tmp_path):
    checkpoints = make_checkpoints(tmp_path, encoder_id="builtin:dinov2-tiny-random@224")
    graph = start_nodes(planner_spec(checkpoints, world_model="regression"))
    wait_for(lambda: not graph.alive()["planner"], 60, "the planner to refuse to start")
    assert "trained on 'builtin:dinov2-tiny-random@224'" in graph.tail_logs(40)


def test_feature_maps_of_another_grid_are_refused_counted_and_never_planned_from(ros_node, start_nodes, tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray

    from rla_wm_ros.node_guard import rejection_counts

    graph = start_nodes(planner_spec(make_checkpoints(tmp_path), world_model="regression"))
    chunks, diagnostics = Inbox(), Inbox()
    ros_node.create_subscription(JointTrajectory, "planner/joint_trajectory", chunks, 10)
    ros_node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics, 10)
    client = ActionClient(ros_node, PlanToGoal, "/planner/plan_to_goal")

    def grid_rejections() -> int:
        for array in reversed(diagnostics.snapshot()):
            for status in array.status:
                if status.name.startswith("planner:"):
                    return rejection_counts(status).get("on_features/grid_mismatch", 0)
        return 0

    observations = Observations(ros_node)
    observations.grid = (4, 16, CHANNELS)  # as many tokens as 8x8, but not the world model's grid
    observations.start(graph)
    try:
        wait_for(lambda: grid_rejections() >= 3, 30, "the planner to count refused feature maps", graph)
        response = wait_future(
            send_goal(client, goal_msg(execute=True), graph).get_result_async(), 30, "the abort", graph
        )
        assert response.status == GoalStatus.STATUS_ABORTED and "grid" in response.result.message
        assert chunks.snapshot() == []
        observations.grid = (SIDE, SIDE, CHANNELS)
        time.sleep(0.5)
        response = wait_future(send_goal(client, goal_msg(), graph).get_result_async(), 60, "the plan", graph)
        assert response.status == GoalStatus.STATUS_SUCCEEDED, response.result.message
    finally:
        observations.close()
    assert graph.alive() == {"planner": True}
