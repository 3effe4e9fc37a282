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
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.action import ActionClient
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32, Header
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from rla_wm.models.regression import RegressionConfig, RegressionModel
from rla_wm.models.rla import RLAAutoencoder, RLAConfig
from rla_wm.models.world_model import RLAWorldModel, WorldModelConfig
from rla_wm_msgs.action import PlanToGoal
from rla_wm_msgs.msg import FeatureMap
from rla_wm_ros.conversions import features_to_msg, msg_to_chunk, stamp_to_nanoseconds
from rla_wm_ros.launch_xml import NodeSpec
from rla_wm_ros.node_guard import rejection_counts

from conftest import Inbox, config_file, wait_for
from test_nodes import image_msg

pytestmark = pytest.mark.timeout(150)

RESOLUTION, SIDE, CHANNELS = 112, 8, 192
ENCODER_ID = f"builtin:dinov2-tiny-random@{RESOLUTION}"
LOW, HIGH, MAX_DELTA, CHUNK = 20.0, 492.0, 40.0, 3
STATE = [250.0, 260.0]


def make_checkpoints(
    folder,
    encoder_id: str = ENCODER_ID,
    action_low: tuple[float, ...] = (LOW, LOW),
    action_high: tuple[float, ...] = (HIGH, HIGH),
    tokens: int = SIDE * SIDE,
    channels: int = CHANNELS,
) -> dict[str, str]:
    """Tiny random RLA autoencoder, RLA-WM and regression checkpoints for `tokens` x `channels` features
    (the 8x8 grid by default), for actions within [action_low, action_high] (Push-T's two joints by default)."""
    torch.manual_seed(0)
    shared = dict(token_dim=channels, num_tokens=tokens, encoder_id=encoder_id)
    actions = dict(
        action_dim=len(action_low), action_low=tuple(action_low), action_high=tuple(action_high), max_horizon=6
    )
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
            self.stop.wait(0.1)  # a 10 Hz camera

    def start(self, graph) -> Observations:
        wait_for(
            lambda: self.features.get_subscription_count() > 0 and self.states.get_subscription_count() > 0,
            60,
            "the planner to subscribe",
            graph,
        )
        self.thread.start()
        # Reliable and matched: what is sent now arrives, so a few fresh observations precede the first goal.
        wait_for(lambda: len(self.sent) >= 3, 30, "observations to be sent", graph)
        return self

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        assert not self.thread.is_alive(), "the observation publisher did not stop"  # before the node goes


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


def plan_when_ready(client, goal: PlanToGoal.Goal, graph, refused_for: str):
    """Send `goal` until it is not aborted for `refused_for`: the planner plans from the newest map
    it received, and after the test switched back to good maps one may still be in flight."""
    deadline = time.monotonic() + 60
    while True:
        response = wait_future(send_goal(client, goal, graph).get_result_async(), 60, "the plan", graph)
        if response.status != GoalStatus.STATUS_ABORTED or refused_for not in response.result.message:
            return response
        assert time.monotonic() < deadline, f"still refused: {response.result.message}\n{graph.tail_logs(30)}"


def assert_only_chunk_is_the_plans(chunks: Inbox, plan: JointTrajectory, graph) -> None:
    """Wait for the first chunk of `plan`, then check that no other chunk came: the chunk topic is
    in order, so one from an earlier goal would have arrived first."""
    first = msg_to_chunk(plan).positions[:CHUNK]
    wait_for(
        lambda: any(np.allclose(msg_to_chunk(m).positions, first) for m in chunks.snapshot()),
        10,
        "the executed first chunk",
        graph,
    )
    assert len(chunks.snapshot()) == 1, [msg_to_chunk(m).positions for m in chunks.snapshot()]


class PlannerReports:
    """The planner's /diagnostics statuses, in arrival order (one a second, on a steady clock)."""

    def __init__(self, node) -> None:
        self.inbox = Inbox()
        node.create_subscription(DiagnosticArray, "/diagnostics", self.inbox, 10)

    def statuses(self) -> list[DiagnosticStatus]:
        return [s for array in self.inbox.snapshot() for s in array.status if s.name.startswith("planner:")]

    def values(self, index: int) -> dict[str, str]:
        return {kv.key: kv.value for kv in self.statuses()[index].values}

    def rejections(self, key: str) -> int:
        statuses = self.statuses()
        return rejection_counts(statuses[-1]).get(key, 0) if statuses else 0


def goal_msg(**fields) -> PlanToGoal.Goal:
    goal = PlanToGoal.Goal(goal_image=image_msg(120, Header().stamp))
    for key, value in fields.items():
        setattr(goal, key, value)
    return goal


def test_plan_to_goal_gives_feedback_and_a_bounded_plan_and_executes_it(ros_node, start_nodes, tmp_path):
    graph = start_nodes(planner_spec(make_checkpoints(tmp_path), world_model="rla-wm"))
    chunks = Inbox()
    ros_node.create_subscription(JointTrajectory, "planner/joint_trajectory", chunks, 10)
    reports = PlannerReports(ros_node)
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
        assert_only_chunk_is_the_plans(chunks, result.plan, graph)

        # Malformed goal image: aborted with the reason, and no command (checked after the next plan).
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

        # Feature maps from another encoder: refused when they come, and no plan while they are the newest.
        observations.encoder_id = "facebook/dinov2-small@224"
        wait_for(lambda: reports.rejections("on_features/encoder_mismatch") >= 1, 30, "refused maps", graph)
        response = wait_future(
            send_goal(client, goal_msg(execute=True), graph).get_result_async(), 30, "the abort", graph
        )
        assert response.status == GoalStatus.STATUS_ABORTED and "encoder" in response.result.message
        # Good maps again: the next executing goal sends its first chunk, and it is the only chunk
        # since the aborted goals (one topic, in order: any chunk of theirs would have come first).
        observations.encoder_id = ENCODER_ID
        response = plan_when_ready(client, goal_msg(execute=True), graph, refused_for="encoder")
        assert response.status == GoalStatus.STATUS_SUCCEEDED, response.result.message
        assert_only_chunk_is_the_plans(chunks, response.result.plan, graph)
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
        # The node takes the next goal, and its first chunk is the only one: a cancelled plan is
        # never executed (one topic, in order: a chunk of the cancelled goal would have come first).
        response = wait_future(
            send_goal(client, goal_msg(execute=True), graph).get_result_async(), 30, "the next plan", graph
        )
        assert response.status == GoalStatus.STATUS_SUCCEEDED, response.result.message
        assert_only_chunk_is_the_plans(chunks, response.result.plan, graph)
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
    reports = PlannerReports(ros_node)
    goal_pub = ros_node.create_publisher(Image, "goal_image", 10)
    observations = Observations(ros_node).start(graph)
    try:
        # No goal, no commands: two status reports (a second or more of 5 Hz ticks on flowing
        # observations) and not one plan.
        first = len(reports.statuses())
        wait_for(lambda: len(reports.statuses()) >= first + 2, 30, "two planner status reports", graph)
        assert reports.values(-1)["plans"] == "0" and reports.values(-1)["mpc_goal"] == "False"
        assert chunks.snapshot() == []
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
        # Clearing the goal stops the commands: over the two status reports after the first one
        # that says so (a replan running during the clear may still finish before that), the
        # plan count and the chunks stand still while observations keep coming.
        clear = ros_node.create_client(Trigger, "/planner/clear_goal")
        assert clear.wait_for_service(timeout_sec=30)
        assert wait_future(clear.call_async(Trigger.Request()), 30, "clear_goal", graph).success
        wait_for(lambda: reports.values(-1)["mpc_goal"] == "False", 30, "a report without a goal", graph)
        cleared = len(reports.statuses()) - 1
        wait_for(lambda: len(reports.statuses()) > cleared + 1, 30, "a status report", graph)
        plans, count, sent = reports.values(cleared + 1)["plans"], len(chunks.snapshot()), len(observations.sent)
        wait_for(lambda: len(reports.statuses()) > cleared + 2, 30, "a status report", graph)
        assert reports.values(cleared + 2)["plans"] == plans and len(chunks.snapshot()) == count
        assert len(observations.sent) > sent
    finally:
        observations.close()
    assert graph.alive() == {"planner": True}


def test_published_chunks_puts_that_many_chunks_of_each_plan_in_the_message(ros_node, start_nodes, tmp_path):
    """`published_chunks` 2: each MPC message carries the plan's first two chunks, evenly spaced."""
    graph = start_nodes(
        planner_spec(
            make_checkpoints(tmp_path),
            world_model="regression",
            mpc_rate="5.0",
            mpc_num_samples="8",
            mpc_iterations="1",
            published_chunks="2",
        )
    )
    chunks = Inbox()
    ros_node.create_subscription(JointTrajectory, "planner/joint_trajectory", chunks, 10)
    goal_pub = ros_node.create_publisher(Image, "goal_image", 10)
    observations = Observations(ros_node).start(graph)
    try:
        wait_for(lambda: goal_pub.get_subscription_count() > 0, 30, "the goal_image subscription", graph)
        goal_pub.publish(image_msg(90, Header().stamp))
        wait_for(lambda: len(chunks.snapshot()) >= 2, 60, "MPC chunks", graph)
        for msg in chunks.snapshot():
            chunk = msg_to_chunk(msg)
            assert len(chunk.positions) == 2 * CHUNK and np.isfinite(chunk.positions).all()
            assert chunk.times_from_start[0] >= 0.1 - 1e-6  # a late plan starts late, keeping its spacing
            np.testing.assert_allclose(np.diff(chunk.times_from_start), 0.1, atol=1e-6)
    finally:
        observations.close()
    assert graph.alive() == {"planner": True}


def test_refuses_a_world_model_from_another_feature_space(start_nodes, tmp_path):
    checkpoints = make_checkpoints(tmp_path, encoder_id="builtin:dinov2-tiny-random@224")
    graph = start_nodes(planner_spec(checkpoints, world_model="regression"))
    wait_for(lambda: not graph.alive()["planner"], 60, "the planner to refuse to start")
    assert "trained on 'builtin:dinov2-tiny-random@224'" in graph.tail_logs(40)


def test_feature_maps_of_another_grid_are_refused_counted_and_never_planned_from(ros_node, start_nodes, tmp_path):
    graph = start_nodes(planner_spec(make_checkpoints(tmp_path), world_model="regression"))
    chunks = Inbox()
    ros_node.create_subscription(JointTrajectory, "planner/joint_trajectory", chunks, 10)
    reports = PlannerReports(ros_node)
    client = ActionClient(ros_node, PlanToGoal, "/planner/plan_to_goal")
    observations = Observations(ros_node)
    observations.grid = (4, 16, CHANNELS)  # as many tokens as 8x8, but not the world model's grid
    observations.start(graph)
    try:
        wait_for(
            lambda: reports.rejections("on_features/grid_mismatch") >= 3,
            30,
            "the planner to count refused feature maps",
            graph,
        )
        response = wait_future(
            send_goal(client, goal_msg(execute=True), graph).get_result_async(), 30, "the abort", graph
        )
        assert response.status == GoalStatus.STATUS_ABORTED and "grid" in response.result.message
        observations.grid = (SIDE, SIDE, CHANNELS)
        response = plan_when_ready(client, goal_msg(execute=True), graph, refused_for="grid")
        assert response.status == GoalStatus.STATUS_SUCCEEDED, response.result.message
        assert_only_chunk_is_the_plans(chunks, response.result.plan, graph)
    finally:
        observations.close()
    assert graph.alive() == {"planner": True}
