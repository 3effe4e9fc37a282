"""The policy node over real DDS: chunks anchored to the observation stamp, no seam jumps, one act per observation."""
from __future__ import annotations

import time

import numpy as np
import pytest
from sensor_msgs.msg import JointState
from std_msgs.msg import Header
from trajectory_msgs.msg import JointTrajectory

from conftest import Inbox, config_file, wait_for
from rla_wm_msgs.msg import FeatureMap
from rla_wm_ros.conversions import features_to_msg, msg_to_chunk, stamp_to_nanoseconds, stamp_to_seconds
from rla_wm_ros.launch_xml import NodeSpec

pytestmark = pytest.mark.timeout(120)

ENCODER_ID = "builtin:dinov2-tiny-random@224"


def test_policy_chunks_are_stamped_blended_and_one_per_observation(ros_node, start_nodes):
    blend_time = 0.3
    graph = start_nodes(NodeSpec(
        "rla_wm_ros", "policy", name="policy", param_files=[config_file("policy.yaml")],
        params={"rate": "20.0", "blend_time": str(blend_time), "min_lead_time": "0.05"},
    ))
    chunks = Inbox()
    ros_node.create_subscription(JointTrajectory, "policy/joint_trajectory", chunks, 10)
    features_pub = ros_node.create_publisher(FeatureMap, "features", 10)
    state_pub = ros_node.create_publisher(JointState, "joint_states", 10)
    wait_for(lambda: features_pub.get_subscription_count() > 0 and state_pub.get_subscription_count() > 0,
             60, "the policy to subscribe", graph)

    rng = np.random.default_rng(0)
    sent_stamps: set[int] = set()
    deadline = time.monotonic() + 60
    while len(chunks.snapshot()) < 6 and time.monotonic() < deadline:
        now = ros_node.get_clock().now().to_msg()
        state = JointState(name=["agent_x", "agent_y"], position=[250.0, 260.0])
        state.header.stamp = now
        state_pub.publish(state)
        header = Header(stamp=now, frame_id="camera")
        features_pub.publish(features_to_msg(rng.normal(size=(256, 192)).astype(np.float32), 16, 16, ENCODER_ID, header))
        sent_stamps.add(stamp_to_nanoseconds(now))
        time.sleep(0.25)  # slower than the node's 20 Hz: each observation must be acted on once
    received = chunks.snapshot()
    assert len(received) >= 6, graph.tail_logs(30)

    # One chunk per observation at most, each anchored to the observation's own stamp.
    stamps = [stamp_to_nanoseconds(msg.header.stamp) for msg in received]
    assert set(stamps) <= sent_stamps
    assert len(stamps) == len(set(stamps))

    previous = None
    seams_checked = 0
    for msg in received:
        chunk = msg_to_chunk(msg)
        times = stamp_to_seconds(chunk.stamp) + chunk.times_from_start
        assert (np.diff(times) > 0).all()
        assert chunk.times_from_start[0] > 0.05  # past and too-soon points were dropped
        if previous is not None and previous[0][0] <= times[0] <= previous[0][-1]:
            for joint in range(2):
                expected = np.interp(times[0], previous[0], previous[1][:, joint])
                assert chunk.positions[0, joint] == pytest.approx(expected, abs=1e-3)  # no jump at the seam
            seams_checked += 1
        previous = (times, chunk.positions)
    assert seams_checked >= 3
    assert graph.alive() == {"policy": True}
