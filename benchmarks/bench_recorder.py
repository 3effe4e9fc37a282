"""Throughput of the LeRobot dataset recorder node over real DDS.

    source scripts/env.sh
    python benchmarks/bench_recorder.py --seconds 10 --size 96
    python benchmarks/bench_recorder.py --seconds 10 --size 224

Starts the `recorder` node as its own process on a private ROS_DOMAIN_ID (traffic kept on
this host), publishes two RGB cameras (rgb8, size x size), a JointState and a
JointTrajectory at --rate Hz with stamps on an exact 1/rate grid, records one episode of
--seconds at --fps through the node's services, and prints: what was published, frames
recorded vs expected, skipped and dropped frames, the writer queue's high-water mark, the
save (encode + commit) time, the recorder's CPU use, and the read-back check with LeRobot.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

JOINTS = ["j1", "j2", "j3", "j4", "j5", "j6"]


def clock_ticks(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the recorded episode")
    parser.add_argument("--size", type=int, default=96, help="camera image side (e.g. 96 or 224)")
    parser.add_argument("--rate", type=float, default=30.0, help="publishing rate of every stream (Hz)")
    parser.add_argument("--fps", type=int, default=30, help="dataset frame rate")
    parser.add_argument("--vcodec", default="libsvtav1")
    parser.add_argument("--root", default="", help="dataset folder (default: a new temporary folder)")
    parser.add_argument("--domain", type=int, default=0, help="ROS_DOMAIN_ID (default: random in 150..229)")
    args = parser.parse_args()

    domain = args.domain or random.randrange(150, 230)
    os.environ["ROS_DOMAIN_ID"] = str(domain)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("SVT_LOG", "1")

    import rclpy
    from ament_index_python.packages import get_package_share_directory
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image, JointState
    from std_srvs.srv import Trigger
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    from rla_wm_msgs.msg import RecorderStatus
    from rla_wm_msgs.srv import StartEpisode
    from rla_wm_ros.image_conversion import CvBridge
    from rla_wm_ros.launch_xml import LaunchDescription, LaunchedGraph, NodeSpec

    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="bench_recorder_")) / "dataset"
    config = Path(get_package_share_directory("rla_wm_ros")) / "config" / "recorder.yaml"
    spec = NodeSpec("rla_wm_ros", "recorder", name="recorder", param_files=[str(config)], params={
        "dataset_root": str(root), "repo_id": "local/bench", "fps": f"{float(args.fps)}",
        "camera_topics": "[bench/cam0/image_raw,bench/cam1/image_raw]", "camera_names": "[cam0,cam1]",
        "image_height": str(args.size), "image_width": str(args.size),
        "state_topic": "bench/joint_states", "joint_names": "[" + ",".join(JOINTS) + "]",
        "action_topic": "bench/joint_trajectory", "vcodec": args.vcodec,
    })
    print(f"domain {domain}, dataset {root}, 2 cameras {args.size}x{args.size} rgb8 + JointState + "
          f"JointTrajectory ({len(JOINTS)} joints) at {args.rate:g} Hz, recording at {args.fps} fps "
          f"for {args.seconds:g} s, vcodec {args.vcodec}", flush=True)

    rclpy.init()
    node = rclpy.create_node("bench_recorder_probe")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    graph = LaunchedGraph()
    log_dir = Path(tempfile.mkdtemp(prefix="bench_recorder_logs_"))
    graph.start(LaunchDescription(args={}, nodes=[spec]), env={"ROS_DOMAIN_ID": str(domain)}, log_dir=log_dir)
    try:
        run(args, node, graph, root, Image, JointState, JointTrajectory, JointTrajectoryPoint, Trigger,
            RecorderStatus, StartEpisode, CvBridge, qos_profile_sensor_data)
    finally:
        codes = graph.stop()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    if codes.get("recorder") not in (0, None):
        print(f"recorder exited with {codes['recorder']}; log: {log_dir}")
        sys.exit(1)


def run(args, node, graph, root, Image, JointState, JointTrajectory, JointTrajectoryPoint, Trigger,
        RecorderStatus, StartEpisode, CvBridge, sensor_qos) -> None:
    bridge = CvBridge()
    cams = [node.create_publisher(Image, f"bench/cam{i}/image_raw", sensor_qos) for i in range(2)]
    state_pub = node.create_publisher(JointState, "bench/joint_states", 10)
    action_pub = node.create_publisher(JointTrajectory, "bench/joint_trajectory", 10)
    statuses: list = []
    node.create_subscription(RecorderStatus, "recorder/status", statuses.append, 10)

    # A few distinct frames (a moving gradient), prepared up front so publishing stays cheap.
    y, x = np.mgrid[0:args.size, 0:args.size]
    frames = [np.stack([(x + 8 * i) % 256, (y + 5 * i) % 256, np.full_like(x, 40 * i % 256)], -1).astype(np.uint8)
              for i in range(16)]
    images = [[bridge.cv2_to_imgmsg(f if c == 0 else f[:, ::-1].copy(), encoding="rgb8") for f in frames]
              for c in range(2)]

    stop = threading.Event()
    published = {"images": 0, "state": 0, "action": 0, "late": 0}
    t0 = math.floor(node.get_clock().now().nanoseconds * 1e-9) + 1.0
    grid = {"k": 0}

    def feed() -> None:
        start, wall0 = time.monotonic(), node.get_clock().now().nanoseconds * 1e-9
        while not stop.is_set():
            k = grid["k"]
            stamp_s = t0 + k / args.rate
            delay = (stamp_s - wall0) - (time.monotonic() - start)
            if delay > 0:
                time.sleep(delay)
            elif delay < -0.05:
                published["late"] += 1
            sec = int(stamp_s)
            stamp = node.get_clock().now().to_msg()
            stamp.sec, stamp.nanosec = sec, min(int(round((stamp_s - sec) * 1e9)), 999_999_999)
            for c, pub in enumerate(cams):
                msg = images[c][k % len(frames)]
                msg.header.stamp = stamp
                pub.publish(msg)
                published["images"] += 1
            position = [math.sin(0.1 * k + j) for j in range(len(JOINTS))]
            state = JointState(name=JOINTS, position=position)
            state.header.stamp = stamp
            state_pub.publish(state)
            traj = JointTrajectory(joint_names=JOINTS, points=[JointTrajectoryPoint(positions=position)])
            traj.header.stamp = stamp
            action_pub.publish(traj)
            published["state"] += 1
            published["action"] += 1
            grid["k"] = k + 1

    def call(client, request, timeout: float = 300.0):
        future = client.call_async(request)
        deadline = time.monotonic() + timeout
        while not future.done():
            if time.monotonic() > deadline or not all(graph.alive().values()):
                raise RuntimeError(f"{client.srv_name} did not answer:\n{graph.tail_logs(30)}")
            time.sleep(0.005)
        return future.result()

    def wait(predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline or not all(graph.alive().values()):
                raise RuntimeError(f"timed out waiting for {what}:\n{graph.tail_logs(30)}")
            time.sleep(0.05)

    started = time.monotonic()
    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    start_client = node.create_client(StartEpisode, "recorder/start_episode")
    stop_client = node.create_client(Trigger, "recorder/stop_episode")
    wait(lambda: start_client.service_is_ready() and stop_client.service_is_ready(), 120, "the recorder's services")
    wait(lambda: statuses and statuses[-1].stale_streams == [], 30, "every stream to reach the recorder")
    print(f"recorder up and receiving after {time.monotonic() - started:.1f} s", flush=True)

    pid = graph.pids["recorder"]
    answer = call(start_client, StartEpisode.Request(task="benchmark"))
    assert answer.success, answer.message
    k_start, cpu_start, wall_start = grid["k"], clock_ticks(pid), time.monotonic()
    time.sleep(args.seconds)
    k_stop, cpu_rec, wall_rec = grid["k"], clock_ticks(pid), time.monotonic()
    stop_started = time.monotonic()
    answer = call(stop_client, Trigger.Request())
    stop_s = time.monotonic() - stop_started
    cpu_end = clock_ticks(pid)
    stop.set()
    feeder.join(timeout=2)
    if not answer.success:
        raise RuntimeError(f"stop_episode failed: {answer.message}")

    recorded_s = wall_rec - wall_start
    expected = (k_stop - k_start) / args.rate * args.fps
    frames, skipped = (int(v) for v in re.search(r"(\d+) frames, (\d+) skipped", answer.message).groups())
    dropped = re.search(r"\((\d+) by a full writer queue\)", answer.message)
    high_water = re.search(r"queue high-water (\d+)/(\d+)", answer.message)
    save = re.search(r"save ([\d.]+) s \(encode\+write ([\d.]+), finalize ([\d.]+), commit ([\d.]+)\)", answer.message)
    mb_in = 2 * args.size * args.size * 3 * (k_stop - k_start) / 1e6

    print(f"published during the episode: {k_stop - k_start} grid steps = {2 * (k_stop - k_start)} images, "
          f"{k_stop - k_start} joint states, {k_stop - k_start} trajectories in {recorded_s:.2f} s "
          f"({(k_stop - k_start) / recorded_s:.1f} Hz; {published['late']} steps sent >50 ms late)")
    print(f"frames recorded: {frames} of ~{expected:.0f} expected ({frames / max(expected, 1):.1%}); "
          f"skipped {skipped}, dropped by a full queue {int(dropped.group(1)) if dropped else 0}")
    print(f"throughput: {frames / recorded_s:.1f} frames/s recorded, {mb_in / recorded_s:.1f} MB/s of raw images in")
    print(f"writer queue high-water: {high_water.group(1)}/{high_water.group(2)} frames")
    print(f"save: stop_episode answered in {stop_s:.2f} s; writer save {save.group(1)} s (encode+write "
          f"{save.group(2)}, finalize {save.group(3)}, commit {save.group(4)})")
    print(f"recorder CPU: {(cpu_rec - cpu_start) / recorded_s:.0%} of a core while recording, "
          f"{cpu_end - cpu_rec:.2f} CPU s for the save")

    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("local/bench", root=root)
    size_mb = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 1e6
    print(f"read back with LeRobot: {ds.num_episodes} episode, {len(ds)} frames, fps {ds.fps}; "
          f"{size_mb:.1f} MB on disk")
    print(f"stop_episode message: {answer.message}")


if __name__ == "__main__":
    main()
