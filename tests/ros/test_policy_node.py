"""The policy node over real DDS: chunks anchored to the observation stamp, no seam jumps, one act per
observation; feature maps it cannot take refused and counted, never fatal; a NaN checkpoint refused at start-up."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from sensor_msgs.msg import JointState
from std_msgs.msg import Header
from trajectory_msgs.msg import JointTrajectory

from rla_wm_msgs.msg import FeatureMap
from rla_wm_ros.conversions import (
    features_to_msg,
    msg_to_chunk,
    nanoseconds_to_stamp,
    stamp_to_nanoseconds,
    stamp_to_seconds,
)
from rla_wm_ros.launch_xml import NodeSpec

from conftest import Inbox, config_file, publish_until, wait_for, wait_until

pytestmark = pytest.mark.timeout(120)

ENCODER_ID = "builtin:dinov2-tiny-random@224"


def test_policy_chunks_are_stamped_blended_and_one_per_observation(ros_node, start_nodes):
    blend_time = 0.3
    graph = start_nodes(
        NodeSpec(
            "rla_wm_ros",
            "policy",
            name="policy",
            param_files=[config_file("policy.yaml")],
            # The still robot follows no chunk; blending into unfollowed chunks is switched off here (it is
            # tested in test_chunking), so every seam must blend.
            params={
                "rate": "20.0",
                "blend_time": str(blend_time),
                "min_lead_time": "0.05",
                "follow_tolerance_steps": "0.0",
            },
        )
    )
    chunks = Inbox()
    ros_node.create_subscription(JointTrajectory, "policy/joint_trajectory", chunks, 10)
    features_pub = ros_node.create_publisher(FeatureMap, "features", 10)
    state_pub = ros_node.create_publisher(JointState, "joint_states", 10)
    wait_for(
        lambda: features_pub.get_subscription_count() > 0 and state_pub.get_subscription_count() > 0,
        60,
        "the policy to subscribe",
        graph,
    )

    def check_seams(messages: list[JointTrajectory]) -> int:
        """Assert every seam is continuous; return how many seams there were (a new chunk starting
        inside the previous one's span; a slow machine may leave gaps between chunks)."""
        previous, seams = None, 0
        for msg in messages:
            chunk = msg_to_chunk(msg)
            times = stamp_to_seconds(chunk.stamp) + chunk.times_from_start
            assert (np.diff(times) > 0).all()
            assert chunk.times_from_start[0] > 0.05  # past and too-soon points were dropped
            if previous is not None and previous[0][0] <= times[0] <= previous[0][-1]:
                for joint in range(2):
                    expected = np.interp(times[0], previous[0], previous[1][:, joint])
                    assert chunk.positions[0, joint] == pytest.approx(expected, abs=1e-3)  # no jump at the seam
                seams += 1
            previous = (times, chunk.positions)
        return seams

    rng = np.random.default_rng(0)
    sent_stamps: set[int] = set()

    def chunk_stamps() -> set[int]:
        return {stamp_to_nanoseconds(msg.header.stamp) for msg in chunks.snapshot()}

    deadline = time.monotonic() + 90
    while (len(chunks.snapshot()) < 6 or check_seams(chunks.snapshot()) < 3) and time.monotonic() < deadline:
        now = ros_node.get_clock().now().to_msg()
        state = JointState(name=["agent_x", "agent_y"], position=[250.0, 260.0])
        state.header.stamp = now
        state_pub.publish(state)
        header = Header(stamp=now, frame_id="camera")
        features_pub.publish(
            features_to_msg(rng.normal(size=(256, 192)).astype(np.float32), 16, 16, ENCODER_ID, header)
        )
        sent_stamps.add(stamp_to_nanoseconds(now))
        # Acted on: its chunk is here (a map the node refused, e.g. one that beat its joint state, is
        # simply followed by the next). Then the node's 20 Hz timer runs a few times with nothing new:
        # each observation must still be acted on once. This pause is the behaviour under test.
        wait_until(lambda now=now: stamp_to_nanoseconds(now) in chunk_stamps(), 10)
        time.sleep(0.25)
    received = chunks.snapshot()
    assert len(received) >= 6, graph.tail_logs(30)

    # One chunk per observation at most, each anchored to the observation's own stamp.
    stamps = [stamp_to_nanoseconds(msg.header.stamp) for msg in received]
    assert set(stamps) <= sent_stamps
    assert len(stamps) == len(set(stamps))
    seams_checked = check_seams(received)
    spans = [(round(stamp_to_seconds(m.header.stamp) % 100, 3), len(m.points)) for m in received]
    assert seams_checked >= 3, spans
    assert graph.alive() == {"policy": True}


def policy_status(diagnostics: Inbox):
    """The policy's newest DiagnosticStatus, or None."""
    for array in reversed(diagnostics.snapshot()):
        for status in array.status:
            if status.name.startswith("policy:"):
                return status
    return None


def rejections_by_reason(diagnostics: Inbox) -> Counter:
    """The policy's rejection counts from its newest /diagnostics, summed over callbacks."""
    from rla_wm_ros.node_guard import rejection_counts

    status = policy_status(diagnostics)
    counts: Counter = Counter()
    for key, count in (rejection_counts(status) if status is not None else {}).items():
        counts[key.split("/", 1)[1]] += count
    return counts


def test_policy_refuses_feature_maps_it_cannot_take_counts_them_and_keeps_acting(ros_node, start_nodes):
    """Grids the model does not take (even 8x32 with the right token count) and a NaN payload: no command,
    no dead node, counted on /diagnostics; a valid map afterwards is acted on."""
    graph = start_nodes(
        NodeSpec(
            "rla_wm_ros",
            "policy",
            name="policy",
            param_files=[config_file("policy.yaml")],
            params={"checkpoint": "builtin:sim-pusht-policy"},
        )
    )
    chunks, diagnostics = Inbox(), Inbox()
    ros_node.create_subscription(JointTrajectory, "policy/joint_trajectory", chunks, 10)
    ros_node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics, 10)
    features_pub = ros_node.create_publisher(FeatureMap, "features", 10)
    state_pub = ros_node.create_publisher(JointState, "joint_states", 10)
    wait_for(
        lambda: features_pub.get_subscription_count() > 0 and state_pub.get_subscription_count() > 0,
        60,
        "the policy to subscribe",
        graph,
    )
    rng = np.random.default_rng(0)

    def feature_map(height: int, width: int, channels: int, sec: int) -> FeatureMap:
        tokens = rng.normal(size=(height * width, channels)).astype(np.float32)
        return features_to_msg(tokens, height, width, ENCODER_ID, Header(stamp=Time(sec=sec), frame_id="camera"))

    # The link is up once a map is counted: with no joint state yet, a valid map is refused for that.
    publish_until(
        lambda: features_pub.publish(feature_map(16, 16, 192, 1)),
        lambda: rejections_by_reason(diagnostics)["no_fresh_state"] > 0,
        30,
        "the policy to count a map without a joint state",
        graph,
        every=0.5,
    )

    def stream_state() -> None:  # a live robot at 20 Hz
        state = JointState(name=["agent_x", "agent_y"], position=[250.0, 260.0])
        state.header.stamp = ros_node.get_clock().now().to_msg()
        state_pub.publish(state)

    streamer = ros_node.create_timer(0.05, stream_state)
    try:
        with_nan = feature_map(16, 16, 192, 104)
        with_nan.data[1000] = float("nan")
        bad = [
            (feature_map(8, 8, 192, 100), "grid_mismatch"),
            (feature_map(16, 16, 384, 101), "grid_mismatch"),
            (feature_map(1, 1, 1, 102), "grid_mismatch"),
            (feature_map(8, 32, 192, 103), "grid_mismatch"),
            (with_nan, "malformed_features"),
        ]
        expected: Counter = Counter()
        for msg, reason in bad:
            expected[reason] += 1
            features_pub.publish(msg)  # one at a time: the subscription keeps only the newest map
            wait_for(
                lambda: rejections_by_reason(diagnostics)[reason] >= expected[reason],
                15,
                f"the policy to count a {msg.grid_height}x{msg.grid_width}x{msg.channels} map as {reason}",
                graph,
            )
        counts = rejections_by_reason(diagnostics)
        assert counts["grid_mismatch"] == 4 and counts["malformed_features"] == 1, counts
        status = policy_status(diagnostics)
        values = {kv.key: kv.value for kv in status.values}
        assert status.level == DiagnosticStatus.WARN and values["chunks_published"] == "0"
        assert "act: malformed_features" in values["last_rejected_input"]
        assert chunks.snapshot() == [], "a refused feature map produced a command"
        assert graph.alive() == {"policy": True}

        # A valid map is still acted on, with its own stamp. Chunks arrive in the order the maps were
        # handled, so a chunk from a refused map (sec < 200) would be here before this one.
        publish_until(
            lambda: features_pub.publish(
                features_to_msg(
                    rng.normal(size=(256, 192)).astype(np.float32),
                    16,
                    16,
                    ENCODER_ID,
                    Header(stamp=ros_node.get_clock().now().to_msg()),
                )
            ),
            chunks.snapshot,
            30,
            "a chunk from a valid map",
            graph,
            every=0.5,
        )
        assert all(msg.header.stamp.sec >= 1000 for msg in chunks.snapshot())  # none from a refused map
        assert rejections_by_reason(diagnostics)["grid_mismatch"] == 4
    finally:
        streamer.cancel()
    assert graph.alive() == {"policy": True}


def test_policy_refuses_to_start_with_non_finite_weights(start_nodes, tmp_path):
    import math

    import torch
    from safetensors.torch import load_file, save_file

    from rla_wm.models.policy import Policy, PolicyConfig

    Policy(PolicyConfig(width=32, depth=1, heads=2)).save(tmp_path / "nan_policy")
    weights = tmp_path / "nan_policy" / "model.safetensors"
    state = load_file(str(weights))
    state["action_out.1.weight"] = torch.full_like(state["action_out.1.weight"], math.nan)
    save_file(state, str(weights))
    graph = start_nodes(
        NodeSpec(
            "rla_wm_ros",
            "policy",
            name="policy",
            param_files=[config_file("policy.yaml")],
            params={"checkpoint": str(tmp_path / "nan_policy")},
        )
    )
    wait_for(lambda: not graph.alive()["policy"], 60, "the policy to refuse to start")
    assert graph.returncodes()["policy"] != 0
    logs = graph.tail_logs(40)
    assert "non-finite weights" in logs and "'action_out.1.weight'" in logs and str(weights) in logs, logs


def test_execute_steps_paces_inference_and_a_backwards_stamp_acts_at_once(ros_node, start_nodes):
    """execute_steps 4 at 10 Hz: of maps stamped base + 0.0 .. 0.8 s only 0.0, 0.4 and 0.8 are acted on;
    the others are skipped (counted on /diagnostics), each while the node was idle, so without the
    pacing it would have acted on it. A stamp before the last one (a new episode) is acted on at once."""
    graph = start_nodes(
        NodeSpec(
            "rla_wm_ros",
            "policy",
            name="policy",
            param_files=[config_file("policy.yaml")],
            params={"execute_steps": "4", "follow_tolerance_steps": "0.0", "min_lead_time": "0.0"},
        )
    )
    chunks, diagnostics = Inbox(), Inbox()
    ros_node.create_subscription(JointTrajectory, "policy/joint_trajectory", chunks, 10)
    ros_node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics, 10)
    features_pub = ros_node.create_publisher(FeatureMap, "features", 10)
    state_pub = ros_node.create_publisher(JointState, "joint_states", 10)
    wait_for(
        lambda: features_pub.get_subscription_count() > 0 and state_pub.get_subscription_count() > 0,
        60,
        "the policy to subscribe",
        graph,
    )
    rng = np.random.default_rng(0)
    # Stamps in the near future, so no chunk point is already past when it is scheduled.
    base_ns = ros_node.get_clock().now().nanoseconds + 60_000_000_000

    def publish_state() -> None:
        state = JointState(name=["agent_x", "agent_y"], position=[250.0, 260.0])
        state.header.stamp = ros_node.get_clock().now().to_msg()
        state_pub.publish(state)

    # The joint state streams at 20 Hz, as a robot's does: a map is never refused for a stale state
    # (published once beside each map, a map handled before its state met a state older than
    # state_timeout after the waits below, and was neither acted on nor counted as skipped).
    state_timer = ros_node.create_timer(0.05, publish_state)

    def send(offset_ns: int) -> None:
        stamp = base_ns + offset_ns
        header = Header(stamp=nanoseconds_to_stamp(stamp), frame_id="camera")
        tokens = rng.normal(size=(256, 192)).astype(np.float32)
        features_pub.publish(features_to_msg(tokens, 16, 16, ENCODER_ID, header))

    def acted_offsets() -> set[int]:
        return {stamp_to_nanoseconds(m.header.stamp) - base_ns for m in chunks.snapshot()}

    def skipped() -> int:
        status = policy_status(diagnostics)
        values = {v.key: v.value for v in status.values} if status is not None else {}
        return int(values.get("observations_skipped", -1))

    step = 100_000_000  # 0.1 s
    publish_until(lambda: send(0), lambda: 0 in acted_offsets(), 30, "a chunk for the first map", graph)
    expected_skips = 0
    for k in range(1, 9):
        send(k * step)
        if k % 4 == 0:
            wait_for(lambda k=k: k * step in acted_offsets(), 20, f"a chunk for the map at {k / 10:.1f} s", graph)
        else:
            expected_skips += 1
            wait_for(lambda n=expected_skips: skipped() == n, 20, lambda: f"{skipped()} skips", graph)
    assert acted_offsets() == {0, 4 * step, 8 * step}
    send(-10 * step)  # stamps went backwards: a new episode, so the pacing restarts
    wait_for(lambda: -10 * step in acted_offsets(), 20, "a chunk for the earlier stamp", graph)
    assert skipped() == 6 and graph.alive() == {"policy": True}
    ros_node.destroy_timer(state_timer)


def test_lerobot_joint_units_parameter_picks_the_conversion_or_refuses():
    from rla_wm.envs.so101.lerobot_units import JOINT_NAMES, So101LeRobotUnits, default_units
    from rla_wm_ros.policy_node import lerobot_joint_units

    assert lerobot_joint_units("dataset", "", ["agent_x", "agent_y"]) is None
    units = lerobot_joint_units("so101_lerobot", "", list(JOINT_NAMES))
    assert isinstance(units, So101LeRobotUnits) and units == default_units()
    with pytest.raises(ValueError, match="SO-101 order"):
        lerobot_joint_units("so101_lerobot", "", list(reversed(JOINT_NAMES)))
    with pytest.raises(ValueError, match="'dataset' or 'so101_lerobot'"):
        lerobot_joint_units("degrees", "", list(JOINT_NAMES))
