"""End to end: each launch file's graph (sim policy, planner, sim clock, the real-arm policy in dry run)
runs closed loop."""

import copy
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import rclpy
from ament_index_python.packages import get_package_share_directory
from rosgraph_msgs.msg import Clock as RosClock

from rla_wm.evaluation.latency import LatencyLog
from rla_wm_msgs.msg import FeatureMap
from rla_wm_ros.closed_loop import ClosedLoopRunner, camera_and_features_picture
from rla_wm_ros.launch_xml import LaunchDescription, LaunchedGraph, parse_launch_file

from conftest import wait_for

pytestmark = pytest.mark.timeout(240)


@contextmanager
def observed_graph(
    description: LaunchDescription,
    command_topic: str,
    ros_domain: int,
    tmp_path: Path,
    model_topic: str = "/policy/joint_trajectory",
) -> Iterator[tuple[LaunchedGraph, ClosedLoopRunner]]:
    """Start a launch description's nodes with a closed-loop observer on the same domain; stop both after."""
    with LaunchedGraph() as graph:
        graph.start(description, env={"ROS_DOMAIN_ID": str(ros_domain)}, log_dir=tmp_path / "logs")
        rclpy.init(domain_id=ros_domain)
        sim_clock = description.args.get("sim_clock", "false") == "true"
        runner = ClosedLoopRunner(command_topic, model_topic=model_topic, sim_clock=sim_clock)
        try:
            yield graph, runner
        finally:
            runner.close()
            rclpy.try_shutdown()


def run_launch_file(
    name: str,
    overrides: dict[str, str],
    ros_domain: int,
    tmp_path: Path,
    episodes: int,
    model_topic: str = "/policy/joint_trajectory",
    startup: float = 120.0,
    timeout: float = 60.0,
    keep_frames: bool = False,
):
    """Start a launch file's graph, run closed-loop episodes, return (results, stage latencies)."""
    launch_file = Path(get_package_share_directory("rla_wm_ros")) / "launch" / name
    description = parse_launch_file(launch_file, overrides=overrides)
    with observed_graph(description, description.args["command_topic"], ros_domain, tmp_path, model_topic) as (
        graph,
        runner,
    ):
        try:
            runner.wait_until_flowing(startup, alive=lambda: all(graph.alive().values()))
            results = [runner.run_episode(timeout=timeout, keep_frames=keep_frames) for _ in range(episodes)]
        except (TimeoutError, RuntimeError) as err:
            pytest.fail(f"{err}\n{graph.tail_logs(30)}")
        assert all(graph.alive().values()), graph.tail_logs(30)
        return results, runner.observer.latency.stage_seconds()


def test_sim_policy_graph_runs_closed_loop_episodes(ros_domain, tmp_path):
    results, latency = run_launch_file(
        "sim_policy.launch.xml",
        {"max_episode_steps": "30", "seed": "5"},
        ros_domain,
        tmp_path,
        episodes=2,
        keep_frames=True,
    )
    for result in results:
        # The episode's camera frames for its video: about one per step (a busy machine may drop a few),
        # none from the episode before (at most one frame can be in flight when the reset returns).
        assert 20 <= len(result.frames) <= 31, len(result.frames)
        assert all(frame.shape == (96, 96, 3) and frame.dtype == np.uint8 for frame in result.frames)
        assert result.steps == 30
        # How many chunks fit in 3 s depends on the machine's speed; a loop needs them to keep coming.
        assert result.commands >= 3, "the gate forwarded too few commands for a closed loop"
        # The camera frame beside the PCA image of its features, each scaled to 256 px high.
        assert result.picture.shape == (256, 256 + 8 + 256, 3)
    assert results[1].episode == results[0].episode + 1
    camera_to_command = latency["camera_to_command"]
    assert camera_to_command.size >= 5
    assert np.all(camera_to_command > 0), "a command arrived before its camera frame was taken"


def test_robot_policy_graph_in_its_default_dry_run_never_commands_the_arm(ros_domain, tmp_path):
    """robot_policy.launch.xml as a user starts it on an arm (the sim robot stands in for it):
    the policy runs on the arm's camera and joint states, and nothing reaches the controller."""
    share = Path(get_package_share_directory("rla_wm_ros"))
    limits = str(share / "config" / "pusht_limits.yaml")
    description = parse_launch_file(
        share / "launch" / "robot_policy.launch.xml",
        overrides={
            "policy_checkpoint": "builtin:sim-pusht-policy",
            "limits_file": limits,
            "encoder_model": "builtin:dinov2-tiny-random",
        },
    )
    assert description.args["dry_run"] == "true"
    arm = parse_launch_file(share / "launch" / "sim_policy.launch.xml", overrides={"seed": "4"})
    description.nodes = [node for node in arm.nodes if node.name == "sim_robot"] + description.nodes
    with observed_graph(description, description.args["controller_topic"], ros_domain, tmp_path) as (graph, runner):
        observer = runner.observer
        wait_for(lambda: len(observer.latency.chunks) >= 5, 120, "policy chunks to flow", graph)
        # The gate vetted chunks and would have sent them (it logs that), and its publisher on the
        # controller topic is matched with the observer's subscription: a command would arrive.
        wait_for(lambda: "dry run: would send" in graph.tail_logs(200), 60, "the gate's dry-run log line", graph)
        controller_topic = description.args["controller_topic"]
        wait_for(lambda: observer.count_publishers(controller_topic) >= 1, 30, "the gate's controller publisher", graph)
        # Five more chunks go through the gate after that; none of them reaches the arm either.
        chunks = len(observer.latency.chunks)
        wait_for(lambda: len(observer.latency.chunks) >= chunks + 5, 60, "five more policy chunks", graph)
        assert observer.commands == 0 and observer.holds == 0, "dry run sent commands to the arm's controller"
        assert all(graph.alive().values()), graph.tail_logs(30)


PROPOSALS = {"proposal_policy": "builtin:sim-pusht-policy-keypoints", "policy_proposals": "16"}


@pytest.mark.parametrize(
    "planner",
    [{"world_model": "rla-wm"}, {"world_model": "regression"}, {"world_model": "rla-wm", **PROPOSALS}],
    ids=["rla-wm", "regression", "rla-wm-policy-proposals"],
)
def test_sim_planner_graph_runs_closed_loop_episodes(ros_domain, tmp_path, planner):
    """The launch file's defaults: the keypoint encoder, the shipped world models on its points and the
    2 Hz MPC budget the closed-loop table was measured with; and the search started from the keypoint
    policy's sampled chunks."""
    overrides = {"max_episode_steps": "30", "seed": "2", **planner}
    (result,), latency = run_launch_file(
        "sim_planner.launch.xml",
        overrides,
        ros_domain,
        tmp_path,
        episodes=1,
        model_topic="/planner/joint_trajectory",
        startup=150.0,
        timeout=90.0,
    )
    assert result.steps == 30
    assert result.commands >= 2, "the gate forwarded too few planned chunks"
    assert latency["features_to_chunk"].size >= 2  # plans were made from the observed features
    assert np.all(latency["camera_to_command"] > 0)
    if "proposal_policy" in planner:
        # The planner that ran loaded the policy and checked it against its features (it refuses to start
        # otherwise), and says so.
        log = (tmp_path / "logs" / "planner.log").read_text()
        assert "16 proposals from builtin:sim-pusht-policy-keypoints" in log, log[-2000:]


def test_sim_policy_graph_runs_on_the_simulators_clock(ros_domain, tmp_path):
    """sim_clock: every node on /clock, faster than real time; chunks still reach the robot."""
    overrides = {"max_episode_steps": "40", "seed": "3", "sim_clock": "true", "real_time_factor": "3.0"}
    (result,), latency = run_launch_file("sim_policy.launch.xml", overrides, ros_domain, tmp_path, episodes=1)
    assert result.steps == 40
    # Sim stamps are not wall time: latency runs from each frame's arrival, so it stays a real duration
    # (sim time runs 3x ahead of the wall clock: from the stamps it would soon be negative).
    assert latency["camera_to_command"].size >= 3
    assert np.all(latency["camera_to_command"] > 0)
    assert np.all(latency["camera_to_command"] < 3600.0)  # a sanity bound no working loop comes near
    assert result.commands >= 3, "chunks did not pass the gate under simulated time"


def test_a_graph_started_after_the_simulators_first_episode_ended_still_runs_episodes(ros_domain, tmp_path):
    """On /clock a finished episode is a paused world. A policy graph that comes up after the first
    episode ended (a slow start: CI once failed so) learns the still time and runs the next episode."""
    share = Path(get_package_share_directory("rla_wm_ros"))
    overrides = {"max_episode_steps": "20", "seed": "3", "sim_clock": "true", "real_time_factor": "3.0"}
    description = parse_launch_file(share / "launch" / "sim_policy.launch.xml", overrides=overrides)
    simulator, rest = copy.copy(description), copy.copy(description)
    simulator.nodes = [node for node in description.nodes if node.name == "sim_robot"]
    rest.nodes = [node for node in description.nodes if node.name != "sim_robot"]
    env = {"ROS_DOMAIN_ID": str(ros_domain)}
    with LaunchedGraph() as simulator_graph:
        simulator_graph.start(simulator, env=env, log_dir=tmp_path / "simulator_logs")
        rclpy.init(domain_id=ros_domain)
        runner = ClosedLoopRunner(description.args["command_topic"], sim_clock=True)
        try:
            observer = runner.observer
            wait_for(lambda: observer.status is not None and observer.status.done, 60, "the first episode to end")
            # Still time goes on being published (a paused Gazebo does the same): a late node is not at 0.
            clock_times = []
            late_node = rclpy.create_node("late_clock_reader")
            late_node.create_subscription(RosClock, "/clock", lambda msg: clock_times.append(msg.clock), 10)
            deadline = time.monotonic() + 10.0
            while not clock_times and time.monotonic() < deadline:
                rclpy.spin_once(late_node, timeout_sec=0.1)
            late_node.destroy_node()
            assert clock_times, "no /clock while the episode is paused: a late node's time would be 0"
            assert clock_times[0] == observer.status.header.stamp, "the paused time is the last step's"
            with LaunchedGraph() as graph:
                graph.start(rest, env=env, log_dir=tmp_path / "logs")
                try:
                    runner.wait_until_flowing(120.0, alive=lambda: all(graph.alive().values()))
                    result = runner.run_episode(timeout=60.0)
                except (TimeoutError, RuntimeError) as err:
                    pytest.fail(f"{err}\n{graph.tail_logs(30)}")
                assert result.steps == 20 and result.commands >= 2, result
        finally:
            runner.close()
            rclpy.try_shutdown()


def test_latency_starts_at_the_stamp_on_wall_time_and_at_the_frames_arrival_on_sim_time():
    sim_stamp = 5_000_000_000  # 5 s of simulated time: meaningless against the wall clock
    wall = 1_700_000_000_000_000_000
    log = LatencyLog(
        stamps_are_wall_time=False,
        frames={sim_stamp: wall},
        features={sim_stamp: wall + 30_000_000},
        chunks={sim_stamp: wall + 40_000_000},
        commands={sim_stamp: wall + 45_000_000},
    )
    stages = log.stage_seconds()
    assert stages["camera_to_features"] == pytest.approx([0.030])
    assert stages["camera_to_command"] == pytest.approx([0.045])
    log.stamps_are_wall_time = True
    assert log.stage_seconds()["camera_to_command"][0] > 1e9  # a sim stamp read as wall time is nonsense


def test_the_demo_command_prints_its_summary_and_writes_metrics_picture_and_video(ros_domain, tmp_path):
    """`make demo`'s command line, shortened: the summary line keeps its form and every file it names exists
    (metrics.json once failed to serialise the video's frames, after the whole run)."""
    import json
    import os
    import re
    import subprocess
    import sys

    out = tmp_path / "demo"
    command = [sys.executable, "-m", "rla_wm_ros.demo", "--episodes", "1", "--episode-steps", "30"]
    command += ["--output", str(out), "seed:=5"]
    env = {**os.environ, "ROS_DOMAIN_ID": str(ros_domain)}
    result = subprocess.run(command, capture_output=True, text=True, timeout=200, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"\[demo\] [01]/1 episodes succeeded \(rate [01]\.00\), final coverage", result.stdout)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["summary"]["episodes"] == 1 and metrics["episodes"][0]["steps"] == 30
    video = re.search(r"\[demo\] video: (\S+\.gif)", result.stdout)
    assert video and os.path.getsize(video.group(1)) > 1000
    assert (out / "episode_00_camera_features.png").is_file()


def test_the_demo_picture_draws_a_keypoint_encoders_the_points_where_they_are():
    frame = np.full((96, 96, 3), 255, np.uint8)
    tokens = np.array([[[-0.5, -0.5, 0.5, 0.25]]], np.float32)  # two points: upper left, right of centre
    msg = FeatureMap(encoder_id="keypoints:sim-pusht-keypoints@0123456789", grid_height=1, grid_width=1, channels=4)
    picture = camera_and_features_picture(frame, msg, tokens)
    assert picture.shape == (256, 256 + 8 + 256, 3)
    panel = picture[:, 264:].astype(int)
    assert (picture[:, :256] == 255).all()  # the frame as it came
    for x, y in ((-0.5, -0.5), (0.5, 0.25)):
        u, v = round((x + 1) / 2 * 256), round((y + 1) / 2 * 256)
        assert (panel[v - 2 : v + 3, u - 2 : u + 3] < 250).any(axis=-1).all(), (x, y)
    assert (panel[200:, :60] == 255).all()  # nothing drawn where no point is
