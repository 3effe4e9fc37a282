"""Debug image topics over real DDS: with `publish_debug_image` the encoder publishes each feature
map's PCA picture on /encoder/features_pca and the planner the picture of each chosen plan's
predicted final features on /planner/predicted_features_pca; by default neither publisher exists.

The planner is the tiny random one of test_planner_node (8x8 feature grid at 112 px).
"""

from __future__ import annotations

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from rclpy.action import ActionClient
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
from trajectory_msgs.msg import JointTrajectory

from rla_wm.evaluation.visualize import feature_pca_picture
from rla_wm_msgs.action import PlanToGoal
from rla_wm_msgs.msg import FeatureMap
from rla_wm_ros.conversions import msg_to_features, stamp_to_nanoseconds
from rla_wm_ros.image_conversion import CvBridge
from rla_wm_ros.launch_xml import NodeSpec

from conftest import Inbox, config_file, publish_until, wait_for
from test_planner_node import SIDE, Observations, goal_msg, make_checkpoints, planner_spec, send_goal, wait_future

pytestmark = pytest.mark.timeout(150)

ENCODER_TOPIC, PLANNER_TOPIC = "/encoder/features_pca", "/planner/predicted_features_pca"


def camera_frame(width: int, height: int, stamp: Time) -> Image:
    """An rgb8 frame with a dark left half, a bright right half and a vertical gradient, as a driver sends it."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, width // 2 :] = 200
    pixels[..., 1] = (np.arange(height) * 255 // height).astype(np.uint8)[:, None]
    msg = CvBridge().cv2_to_imgmsg(pixels, encoding="rgb8")
    msg.header.stamp, msg.header.frame_id = stamp, "camera_optical_frame"
    return msg


def publishers_of(node, name: str) -> dict[str, list[str]]:
    """The topics node `name` publishes, as the test's node sees the graph; {} before it is discovered."""
    try:
        return dict(node.get_publisher_names_and_types_by_node(name, "/"))
    except Exception:  # rclpy's NodeNameNonExistentError: not discovered yet
        return {}


# A publisher each node creates after its debug image publisher would be: DDS announces a
# participant's publishers in order on one reliable channel, so once it is in the graph, a debug
# image publisher would be too.
LATER = {"encoder": "/diagnostics", "planner": "/planner/plan_to_goal/_action/status"}


def resolved(node, name: str) -> bool:
    return LATER[name] in publishers_of(node, name)


def by_stamp(inbox: Inbox, stamp: Time):
    return next(
        (m for m in inbox.snapshot() if stamp_to_nanoseconds(m.header.stamp) == stamp_to_nanoseconds(stamp)), None
    )


def test_encoder_publishes_the_pca_picture_of_each_feature_map_at_the_cameras_size(ros_node, start_nodes):
    graph = start_nodes(
        NodeSpec(
            "rla_wm_ros",
            "encoder",
            name="encoder",
            param_files=[config_file("encoder.yaml")],
            params={"publish_debug_image": "true"},
        )
    )
    features, pictures = Inbox(), Inbox()
    ros_node.create_subscription(FeatureMap, "features", features, 10)
    ros_node.create_subscription(Image, ENCODER_TOPIC, pictures, 10)
    camera = ros_node.create_publisher(Image, "camera/image_raw", qos_profile_sensor_data)
    wait_for(lambda: camera.get_subscription_count() > 0, 60, "the encoder to subscribe to the camera", graph)
    wait_for(lambda: resolved(ros_node, "encoder"), 30, "the encoder's publishers in the graph", graph)
    assert publishers_of(ros_node, "encoder")[ENCODER_TOPIC] == ["sensor_msgs/msg/Image"]

    for (width, height), expected in (((640, 480), (480, 640)), ((96, 96), (288, 288))):
        stamp = Time(sec=1000 + width, nanosec=123)
        frame = camera_frame(width, height, stamp)
        publish_until(
            lambda frame=frame: camera.publish(frame),
            lambda stamp=stamp: by_stamp(pictures, stamp) is not None and by_stamp(features, stamp) is not None,
            60,
            f"the {width}x{height} frame's feature map and picture",
            graph,
            every=3.0,
        )
        msg = by_stamp(pictures, stamp)
        assert msg.encoding == "rgb8" and (msg.height, msg.width) == expected and msg.step == 3 * msg.width
        assert msg.header.frame_id == "camera_optical_frame"  # the camera's header, not the node's clock
        picture = CvBridge().imgmsg_to_cv2(msg)
        assert len(np.unique(picture.reshape(-1, 3), axis=0)) > 8  # a picture, not a constant
        # Exactly the PCA picture of the feature map published for that frame: 16x16 patches, each over
        # the camera pixels it came from (40x30 of a 640x480 frame, 18x18 of a 96x96 one tripled).
        tokens = msg_to_features(by_stamp(features, stamp))
        np.testing.assert_array_equal(picture, feature_pca_picture(tokens, 16, 16, *expected))
    assert graph.alive() == {"encoder": True}


def test_planner_publishes_the_predicted_end_of_each_chosen_plan_stamped_with_its_observation(
    ros_node, start_nodes, tmp_path
):
    # RLA-WM with the latent cost (the mode that decodes the least) and MPC after the action goal.
    spec = planner_spec(
        make_checkpoints(tmp_path),
        world_model="rla-wm",
        cost_space="latent",
        mpc_rate="2.0",
        mpc_num_samples="8",
        mpc_iterations="1",
        publish_debug_image="true",
    )
    graph = start_nodes(spec)
    chunks, pictures = Inbox(), Inbox()
    ros_node.create_subscription(JointTrajectory, "planner/joint_trajectory", chunks, 10)
    ros_node.create_subscription(Image, PLANNER_TOPIC, pictures, 10)
    client = ActionClient(ros_node, PlanToGoal, "/planner/plan_to_goal")
    observations = Observations(ros_node).start(graph)
    try:
        wait_for(lambda: resolved(ros_node, "planner"), 30, "the planner's publishers in the graph", graph)
        assert publishers_of(ros_node, "planner")[PLANNER_TOPIC] == ["sensor_msgs/msg/Image"]
        response = wait_future(send_goal(client, goal_msg(), graph).get_result_async(), 60, "the plan", graph)
        assert response.result.success, (response.result.message, graph.tail_logs(30))
        planned_from = response.result.plan.header.stamp
        wait_for(lambda: by_stamp(pictures, planned_from) is not None, 30, "the action plan's picture", graph)
        # The goal now drives MPC: every replan's chunk is followed by the picture of that plan.
        wait_for(lambda: len(chunks.snapshot()) >= 2, 60, "two MPC chunks", graph)
        for chunk in chunks.snapshot()[:2]:
            wait_for(lambda c=chunk: by_stamp(pictures, c.header.stamp) is not None, 30, "a replan's picture", graph)
        received = pictures.snapshot()
        assert {stamp_to_nanoseconds(m.header.stamp) for m in received} <= set(observations.sent)
        patch = 224 // SIDE  # 8x8 grid: square 28 px patches, 224 px in all
        for msg in received:
            assert msg.encoding == "rgb8" and (msg.height, msg.width) == (224, 224)
            picture = CvBridge().imgmsg_to_cv2(msg)
            assert len(np.unique(picture.reshape(-1, 3), axis=0)) > 8
            blocks = picture.reshape(SIDE, patch, SIDE, patch, 3)
            assert (blocks == blocks[:, :1, :, :1]).all()  # one colour per patch
    finally:
        observations.close()
    assert graph.alive() == {"planner": True}


def test_no_debug_image_publisher_exists_by_default(ros_node, start_nodes, tmp_path):
    graph = start_nodes(
        NodeSpec("rla_wm_ros", "encoder", name="encoder", param_files=[config_file("encoder.yaml")]),
        planner_spec(make_checkpoints(tmp_path), world_model="regression"),
    )
    # Both nodes' publishers resolved in the graph ...
    wait_for(
        lambda: resolved(ros_node, "encoder") and resolved(ros_node, "planner"),
        60,
        "the encoder's and the planner's publishers in the graph",
        graph,
    )
    assert "/features" in publishers_of(ros_node, "encoder")
    assert "/planner/joint_trajectory" in publishers_of(ros_node, "planner")
    # ... and neither has a debug image publisher, nor does anyone else.
    assert ENCODER_TOPIC not in publishers_of(ros_node, "encoder")
    assert PLANNER_TOPIC not in publishers_of(ros_node, "planner")
    topics = dict(ros_node.get_topic_names_and_types())
    assert ENCODER_TOPIC not in topics and PLANNER_TOPIC not in topics
    assert graph.alive() == {"encoder": True, "planner": True}
