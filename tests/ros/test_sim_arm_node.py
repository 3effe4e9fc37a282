"""The sim_arm node (simulated SO-101) in its own process, over real rclpy + Fast DDS: the topics of a real
arm's driver, joint_trajectory_controller's rules, seeded resets, and the scripted expert through the graph."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import yaml
from builtin_interfaces.msg import Time
from rclpy.qos import qos_profile_sensor_data
from rosgraph_msgs.msg import Clock as ClockMsg
from sensor_msgs.msg import Image, JointState
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from rla_wm.control.limits import limits_from_urdf
from rla_wm.control.settings import setting_specs
from rla_wm.envs.so101.environment_state import CUBE_STATE_CHANNELS, CUBE_STATE_ENCODER_ID, cube_state_from_tokens
from rla_wm.envs.so101.expert import So101Expert
from rla_wm.envs.so101.layout import sample_layout
from rla_wm.envs.so101.sim import HOME, JOINT_NAMES, So101Sim
from rla_wm.envs.so101.sim_arm_settings import SimArmSettings
from rla_wm_msgs.msg import EpisodeStatus, FeatureMap
from rla_wm_ros.conversions import Chunk, chunk_to_msg, msg_to_features, stamp_to_nanoseconds
from rla_wm_ros.launch_xml import NodeSpec

from conftest import Inbox, call_service, config_file, publish_until, so101_urdf, wait_for

pytestmark = pytest.mark.timeout(120)

PAN, ROLL, GRIPPER = (JOINT_NAMES.index(name) for name in ("shoulder_pan", "wrist_roll", "gripper"))


def start_arm(start_nodes, **params: str):
    return start_nodes(
        NodeSpec("rla_wm_ros", "sim_arm", name="sim_arm", param_files=[config_file("sim_arm.yaml")], params=params)
    )


def stamps(inbox: Inbox) -> set[int]:
    return {stamp_to_nanoseconds(msg.header.stamp) for msg in inbox.snapshot()}


def position(states: Inbox) -> np.ndarray:
    return np.array(states.last().position)


def layout_of(msg: FeatureMap) -> tuple[np.ndarray, np.ndarray]:
    """(cube x, y, zone x, y) of an environment state message."""
    pose, zone = cube_state_from_tokens(msg_to_features(msg)[0])
    return pose[:2], zone[:2]


def test_the_yaml_sets_exactly_the_declared_parameters():
    with open(config_file("sim_arm.yaml")) as file:
        params = yaml.safe_load(file)["/**"]["ros__parameters"]
    assert sorted(params) == sorted(spec.name for spec in setting_specs(SimArmSettings))
    SimArmSettings(**params)  # and the values are valid


def test_joint_states_and_both_cameras_share_each_steps_stamp_and_match_the_sim(ros_node, start_nodes):
    seed = 2
    graph = start_arm(start_nodes, seed=str(seed), publish_environment_state="true")
    states, statuses, environment = Inbox(), Inbox(), Inbox()
    cameras = {"front": Inbox(), "wrist": Inbox()}
    ros_node.create_subscription(JointState, "joint_states", states, 50)
    ros_node.create_subscription(EpisodeStatus, "episode_status", statuses, 50)
    ros_node.create_subscription(FeatureMap, "sim/environment_state", environment, 50)
    for camera, inbox in cameras.items():
        ros_node.create_subscription(Image, f"{camera}/image_raw", inbox, qos_profile_sensor_data)

    def one_stamp_everywhere() -> set[int]:
        return (
            stamps(states)
            & stamps(statuses)
            & stamps(environment)
            & stamps(cameras["front"])
            & stamps(cameras["wrist"])
        )

    wait_for(lambda: len(one_stamp_everywhere()) >= 3, 60, "a step on every topic with one stamp", graph)

    # The URDF's joint names, in LeRobot's order.
    urdf_joints = limits_from_urdf(so101_urdf().read_bytes()).names  # every movable joint of the URDF
    assert list(states.last().name) == list(JOINT_NAMES) and sorted(JOINT_NAMES) == sorted(urdf_joints)
    for camera, inbox in cameras.items():
        image = inbox.last()
        assert (image.encoding, image.height, image.width) == ("rgb8", 128, 128), camera
        assert image.header.frame_id == f"{camera}_camera"
        pixels = np.frombuffer(bytes(image.data), dtype=np.uint8)
        assert pixels.size == 128 * 128 * 3 and pixels.std() > 5.0, f"{camera}: a blank image"
    feature = environment.last()
    assert feature.encoder_id == CUBE_STATE_ENCODER_ID
    assert (feature.grid_height, feature.grid_width, feature.channels) == (1, 1, CUBE_STATE_CHANNELS)

    # The joints and the cube are the simulator's: the same seed, held at the start pose for as many
    # steps, gives the same numbers in this process.
    stamp = max(one_stamp_everywhere())
    status = next(m for m in statuses.snapshot() if stamp_to_nanoseconds(m.header.stamp) == stamp)
    state = next(m for m in states.snapshot() if stamp_to_nanoseconds(m.header.stamp) == stamp)
    cube = next(m for m in environment.snapshot() if stamp_to_nanoseconds(m.header.stamp) == stamp)
    assert status.episode == 0 and not status.done and not status.success and status.step > 0
    sim = So101Sim(max_steps=1000, render_images=False)
    try:
        frame = sim.reset(seed)
        for _ in range(status.step):
            frame = sim.step(HOME)
    finally:
        sim.close()
    assert np.allclose(state.position, frame.joint_positions, atol=1e-6)
    assert np.allclose(state.velocity, frame.joint_velocities, atol=1e-4)
    pose, zone = cube_state_from_tokens(msg_to_features(cube)[0])
    assert np.allclose(pose[:3], frame.cube_pose[:3], atol=1e-6) and np.allclose(zone, frame.zone, atol=1e-6)
    assert abs(status.coverage - frame.coverage) < 1e-6


def test_trajectories_move_the_joints_by_name_and_refused_ones_do_not(ros_node, start_nodes):
    graph = start_arm(start_nodes, seed="0")
    states = Inbox()
    ros_node.create_subscription(JointState, "joint_states", states, 50)
    commands = ros_node.create_publisher(JointTrajectory, "joint_trajectory", 10)
    wait_for(lambda: len(states.snapshot()) > 10 and commands.get_subscription_count() > 0, 60, "the arm", graph)
    start = position(states)

    # An unknown joint name: refused with a log, and nothing moves.
    unknown = chunk_to_msg(
        Chunk((*JOINT_NAMES[:-1], "jaw"), (start + 0.3)[None], np.array([1.0]), ros_node.get_clock().now().to_msg())
    )
    publish_until(
        lambda: commands.publish(unknown),
        lambda: "rejected trajectory (joints" in graph.tail_logs(60),
        20,
        "the arm to refuse a trajectory with an unknown joint",
        graph,
    )
    seen = len(states.snapshot())
    wait_for(lambda: len(states.snapshot()) >= seen + 8, 20, "joint states after the refusal", graph)
    assert np.abs(position(states) - start).max() < 0.01, "a refused trajectory moved the arm"

    # A 2 s move of pan, roll and gripper (one trajectory), its joints listed in reverse order: the
    # joints follow it by name, gradually (interpolated), not in one jump.
    target = HOME.copy()
    target[[PAN, ROLL, GRIPPER]] += (0.4, 0.5, 0.6)
    order = list(reversed(range(len(JOINT_NAMES))))
    names = tuple(JOINT_NAMES[i] for i in order)
    moving = Inbox()  # (stamp, pan) of the move's joint states

    def started() -> bool:
        return abs(position(states)[PAN] - start[PAN]) > 0.02

    def send_move() -> None:
        commands.publish(chunk_to_msg(Chunk(names, target[None, order], np.array([2.0]), Time())))

    publish_until(send_move, started, 20, "the move to start", graph, every=0.5)
    begun = stamp_to_nanoseconds(states.last().header.stamp)

    def arrived() -> bool:
        msg = states.last()
        moving((stamp_to_nanoseconds(msg.header.stamp), msg.position[PAN]))
        return np.abs(np.array(msg.position) - target)[[PAN, ROLL, GRIPPER]].max() < 0.02

    wait_for(arrived, 20, lambda: f"the joints to reach {target} (at {position(states)})", graph)
    took = (moving.last()[0] - begun) * 1e-9
    assert took > 1.2, f"the 2 s move was done in {took:.2f} s: not interpolated"
    assert np.abs(position(states) - target).max() < 0.05  # the others held where they were (gravity sag aside)

    # An empty trajectory: refused like on joint_trajectory_controller; the arm holds the last point.
    def settled() -> bool:
        recent = np.array([msg.position for msg in states.snapshot()[-4:]])
        return np.ptp(recent, axis=0).max() < 1e-3

    wait_for(settled, 20, "the arm to come to rest at the end of the move", graph)
    held = position(states)
    empty = JointTrajectory(joint_names=list(JOINT_NAMES))
    publish_until(
        lambda: commands.publish(empty),
        lambda: "rejected trajectory (empty trajectory" in graph.tail_logs(60),
        20,
        "the arm to refuse the empty trajectory",
        graph,
    )
    seen = len(states.snapshot())
    wait_for(lambda: len(states.snapshot()) >= seen + 8, 20, "joint states after the empty trajectory", graph)
    assert np.abs(position(states) - held).max() < 0.005, "the arm did not hold after the empty trajectory"
    assert all(graph.alive().values())


def test_reset_reproduces_the_seeds_layout_and_the_expert_solves_through_the_topics(ros_node, start_nodes):
    seed = 3  # the episode after the reset uses seed 4, which the expert solves in ~16 steps
    graph = start_arm(
        start_nodes,
        seed=str(seed),
        publish_environment_state="true",
        publish_clock="true",
        max_episode_steps="150",
    )
    states, statuses, environment, clock = Inbox(), Inbox(), Inbox(), Inbox()
    ros_node.create_subscription(EpisodeStatus, "episode_status", statuses, 50)
    ros_node.create_subscription(ClockMsg, "/clock", clock, 50)
    commands = ros_node.create_publisher(JointTrajectory, "joint_trajectory", 10)
    expert = So101Expert()
    acting = threading.Event()
    by_stamp: dict[int, np.ndarray] = {}

    def on_environment(msg: FeatureMap) -> None:
        environment(msg)
        stamp = stamp_to_nanoseconds(msg.header.stamp)
        joints = by_stamp.get(stamp)
        if not acting.is_set() or joints is None:
            return
        pose, zone = cube_state_from_tokens(msg_to_features(msg)[0])
        command = expert.act_on_state(joints, pose, zone)
        # One point 0.1 s after receipt: the target for the next step, as the expert gives it.
        commands.publish(chunk_to_msg(Chunk(JOINT_NAMES, command[None], np.array([0.1]), Time())))

    def on_state(msg: JointState) -> None:
        states(msg)
        by_stamp[stamp_to_nanoseconds(msg.header.stamp)] = np.array(msg.position)

    ros_node.create_subscription(JointState, "joint_states", on_state, 50)
    ros_node.create_subscription(FeatureMap, "sim/environment_state", on_environment, 50)
    wait_for(lambda: len(environment.snapshot()) > 2 and len(clock.snapshot()) > 2, 60, "the arm and /clock", graph)

    # Simulated time: 0.1 s per step on /clock, and every message stamped with it.
    ticks = sorted(stamp_to_nanoseconds(msg.clock) for msg in clock.snapshot())
    assert set(np.diff(ticks)) == {100_000_000}
    assert stamps(states) & set(ticks) and all((s - ticks[0]) % 100_000_000 == 0 for s in stamps(states))

    layout = sample_layout(seed)
    cube, zone = layout_of(environment.last())
    assert np.allclose(cube, layout.cube_xy, atol=2e-3) and np.allclose(zone, layout.zone_xy, atol=1e-6)

    response = call_service(ros_node.create_client(Trigger, "sim_arm/reset"), graph=graph)
    assert response.success and f"seed {seed + 1}" in response.message
    wait_for(lambda: statuses.last().episode == 1, 10, "the next episode", graph)
    environment.clear()
    wait_for(lambda: environment.snapshot(), 10, "the environment state of the new episode", graph)
    layout = sample_layout(seed + 1)
    cube, zone = layout_of(environment.last())
    assert np.allclose(cube, layout.cube_xy, atol=2e-3) and np.allclose(zone, layout.zone_xy, atol=1e-6)
    start_distance = float(np.linalg.norm(cube - zone))

    # The scripted expert, fed from sim/environment_state + joint_states, commanding joint_trajectory.
    wait_for(lambda: commands.get_subscription_count() > 0, 20, "the arm to subscribe to commands", graph)
    acting.set()

    def describe() -> str:
        cube, zone = layout_of(environment.last())
        return f"success (step {statuses.last().step}, cube {np.linalg.norm(cube - zone):.3f} m from the zone)"

    wait_for(lambda: statuses.last().episode == 1 and statuses.last().done, 60, describe, graph)
    acting.clear()
    cube, zone = layout_of(environment.last())
    assert np.linalg.norm(cube - zone) < start_distance / 2, describe()
    assert statuses.last().success, describe()
