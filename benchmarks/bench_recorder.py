"""Throughput of the LeRobot dataset recorder node over real DDS, at real camera sizes.

    source scripts/env.sh
    python benchmarks/bench_recorder.py --size 640x480 --seconds 30         # quick check
    python benchmarks/bench_recorder.py --size 1280x720 --minutes 10        # the long run
    python benchmarks/bench_recorder.py --size 224 --seconds 10             # square 224x224
    python benchmarks/bench_recorder.py --size 640x480 --seconds 30 --no-profile   # Fast DDS defaults

Starts the `recorder` node as its own process on a private ROS_DOMAIN_ID (traffic kept on
this host), publishes two RGB cameras (rgb8, WxH, sensor-data QoS as camera drivers do), a
JointState and a JointTrajectory at --rate Hz with stamps on an exact 1/rate grid, records one
episode of --seconds (or --minutes) at --fps through the node's services, and prints: what was
published, frames kept vs expected (%) with the reasons for skipped frames, the writer queue's
high-water mark, the save (encode + commit) time in total and per minute recorded, the
recorder's peak memory (RSS, with its child processes) and CPU share, and the read-back check
with LeRobot.

Both this process (the cameras) and the recorder inherit the shell's Fast DDS profile
(FASTDDS_DEFAULT_PROFILES_FILE, exported by scripts/env.sh); `--no-profile` runs both with
Fast DDS defaults, under which best-effort subscribers lose most frames of 640x480 and up.
"""

from __future__ import annotations

import argparse
import json
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


PROFILE_VARS = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")


def _stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (field 3 onwards)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_tree(pid: int) -> list[int]:
    """`pid` and its live descendants (e.g. encoder subprocesses)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children.setdefault(int(_stat(int(entry.name))[1]), []).append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def clock_ticks(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process, its live descendants and its
    reaped children."""
    total = 0.0
    for p in process_tree(pid):
        try:
            fields = _stat(p)
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if p == pid else 0)
    return total / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """Resident memory (MB) of a process and its live descendants."""
    total = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def peak_rss_mb(pid: int) -> float:
    """The process's own high-water resident memory (VmHWM, MB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def parse_size(text: str) -> tuple[int, int]:
    """ "640x480" -> (640, 480); "224" -> (224, 224)."""
    parts = text.lower().split("x")
    if len(parts) == 1:
        return int(parts[0]), int(parts[0])
    if len(parts) == 2:
        return int(parts[0]), int(parts[1])
    raise argparse.ArgumentTypeError(f"size {text!r}: expected WxH (e.g. 1280x720) or N (N x N)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the recorded episode")
    parser.add_argument(
        "--minutes", type=float, default=0.0, help="length of the episode in minutes (overrides --seconds)"
    )
    parser.add_argument(
        "--size", type=parse_size, default=(96, 96), help="camera image size WxH, or N for NxN (default 96)"
    )
    parser.add_argument("--width", type=int, default=0, help="camera image width (overrides --size)")
    parser.add_argument("--height", type=int, default=0, help="camera image height (overrides --size)")
    parser.add_argument("--rate", type=float, default=30.0, help="publishing rate of every stream (Hz)")
    parser.add_argument("--fps", type=int, default=30, help="dataset frame rate")
    parser.add_argument("--vcodec", default="libsvtav1")
    parser.add_argument("--root", default="", help="dataset folder (default: a new temporary folder)")
    parser.add_argument("--domain", type=int, default=0, help="ROS_DOMAIN_ID (default: random in 150..229)")
    parser.add_argument(
        "--no-profile",
        action="store_true",
        help="run the cameras and the recorder with Fast DDS defaults (no profile file)",
    )
    parser.add_argument("--json", default="", help="also write the results to this file")
    args = parser.parse_args()
    args.width = args.width or args.size[0]
    args.height = args.height or args.size[1]
    if args.minutes:
        args.seconds = 60.0 * args.minutes
    if args.no_profile:
        for var in PROFILE_VARS:
            os.environ.pop(var, None)
    profile = next((os.environ[v] for v in PROFILE_VARS if os.environ.get(v)), "none (Fast DDS defaults)")

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
    spec = NodeSpec(
        "rla_wm_ros",
        "recorder",
        name="recorder",
        param_files=[str(config)],
        params={
            "dataset_root": str(root),
            "repo_id": "local/bench",
            "fps": f"{float(args.fps)}",
            "camera_topics": "[bench/cam0/image_raw,bench/cam1/image_raw]",
            "camera_names": "[cam0,cam1]",
            "image_height": str(args.height),
            "image_width": str(args.width),
            "state_topic": "bench/joint_states",
            "joint_names": "[" + ",".join(JOINTS) + "]",
            "action_topic": "bench/joint_trajectory",
            "vcodec": args.vcodec,
        },
    )
    print(
        f"domain {domain}, dataset {root}, 2 cameras {args.width}x{args.height} rgb8 + JointState + "
        f"JointTrajectory ({len(JOINTS)} joints) at {args.rate:g} Hz, recording at {args.fps} fps "
        f"for {args.seconds:g} s, vcodec {args.vcodec}",
        flush=True,
    )
    print(
        f"Fast DDS profile: {profile}; discovery range {os.environ.get('ROS_AUTOMATIC_DISCOVERY_RANGE')}; "
        f"{os.cpu_count()} CPUs, load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}",
        flush=True,
    )

    rclpy.init()
    node = rclpy.create_node("bench_recorder_probe")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    graph = LaunchedGraph()
    log_dir = Path(tempfile.mkdtemp(prefix="bench_recorder_logs_"))
    graph.start(LaunchDescription(args={}, nodes=[spec]), env={"ROS_DOMAIN_ID": str(domain)}, log_dir=log_dir)
    try:
        run(
            args,
            node,
            graph,
            root,
            Image,
            JointState,
            JointTrajectory,
            JointTrajectoryPoint,
            Trigger,
            RecorderStatus,
            StartEpisode,
            CvBridge,
            qos_profile_sensor_data,
        )
    finally:
        codes = graph.stop()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    if codes.get("recorder") not in (0, None):
        print(f"recorder exited with {codes['recorder']}; log: {log_dir}")
        sys.exit(1)


def run(
    args,
    node,
    graph,
    root,
    Image,
    JointState,
    JointTrajectory,
    JointTrajectoryPoint,
    Trigger,
    RecorderStatus,
    StartEpisode,
    CvBridge,
    sensor_qos,
) -> None:
    bridge = CvBridge()
    cams = [node.create_publisher(Image, f"bench/cam{i}/image_raw", sensor_qos) for i in range(2)]
    state_pub = node.create_publisher(JointState, "bench/joint_states", 10)
    action_pub = node.create_publisher(JointTrajectory, "bench/joint_trajectory", 10)
    statuses: list = []
    node.create_subscription(RecorderStatus, "recorder/status", statuses.append, 10)

    # A few distinct frames (a moving gradient), prepared up front so publishing stays cheap.
    y, x = np.mgrid[0 : args.height, 0 : args.width]
    frames = [
        np.stack([(x + 8 * i) % 256, (y + 5 * i) % 256, np.full_like(x, 40 * i % 256)], -1).astype(np.uint8)
        for i in range(16)
    ]
    images = [
        [bridge.cv2_to_imgmsg(f if c == 0 else f[:, ::-1].copy(), encoding="rgb8") for f in frames] for c in range(2)
    ]

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
    try:
        wait(lambda: statuses and statuses[-1].stale_streams == [], 30, "every stream to reach the recorder")
        print(f"recorder up and receiving after {time.monotonic() - started:.1f} s", flush=True)
    except RuntimeError:
        if not all(graph.alive().values()):
            raise
        # Frames that do not get through are what this benchmark measures: record anyway.
        stale = list(statuses[-1].stale_streams) if statuses else "?"
        print(f"recorder up, but streams still stale after 30 s: {stale}; recording anyway", flush=True)

    pid = graph.pids["recorder"]
    rss_before = rss_mb(pid)
    monitor = {"phase": "recording", "recording": 0.0, "saving": 0.0}
    monitor_stop = threading.Event()

    def sample_memory() -> None:
        while not monitor_stop.wait(0.5):
            try:
                monitor[monitor["phase"]] = max(monitor[monitor["phase"]], rss_mb(pid))
            except OSError:
                return

    sampler = threading.Thread(target=sample_memory, daemon=True)
    answer = call(start_client, StartEpisode.Request(task="benchmark"))
    assert answer.success, answer.message
    sampler.start()
    load_start = os.getloadavg()
    k_start, cpu_start, wall_start, own_start = grid["k"], clock_ticks(pid), time.monotonic(), time.process_time()
    next_report = wall_start + 60.0
    while time.monotonic() < wall_start + args.seconds:
        time.sleep(max(0.0, min(next_report, wall_start + args.seconds) - time.monotonic()))
        if time.monotonic() >= next_report and time.monotonic() < wall_start + args.seconds:
            status = statuses[-1] if statuses else None
            print(
                f"  {time.monotonic() - wall_start:5.0f} s: {status.frames_recorded if status else '?'} frames "
                f"recorded, {status.frames_skipped if status else '?'} skipped, recorder RSS "
                f"{rss_mb(pid):.0f} MB, load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
            next_report += 60.0
    k_stop, cpu_rec, wall_rec, own_rec = grid["k"], clock_ticks(pid), time.monotonic(), time.process_time()
    load_rec = os.getloadavg()
    monitor["phase"] = "saving"
    stop_started = time.monotonic()
    answer = call(stop_client, Trigger.Request(), timeout=max(300.0, 3.0 * args.seconds))
    stop_s = time.monotonic() - stop_started
    cpu_end = clock_ticks(pid)
    monitor_stop.set()
    sampler.join(timeout=2)
    hwm = peak_rss_mb(pid)
    stop.set()
    feeder.join(timeout=2)
    if not answer.success:
        raise RuntimeError(f"stop_episode failed: {answer.message}")

    recorded_s = wall_rec - wall_start
    steps = k_stop - k_start
    expected = steps / args.rate * args.fps
    frames, skipped = (int(v) for v in re.search(r"(\d+) frames, (\d+) skipped", answer.message).groups())
    dropped = re.search(r"\((\d+) by a full writer queue\)", answer.message)
    reasons = re.search(r"skipped(?: \(\d+ by a full writer queue\))? \[([^\]]*)\]", answer.message)
    high_water = re.search(r"queue high-water (\d+)/(\d+)", answer.message)
    save = re.search(r"save ([\d.]+) s \(encode\+write ([\d.]+), finalize ([\d.]+), commit ([\d.]+)\)", answer.message)
    mb_in = 2 * args.width * args.height * 3 * steps / 1e6
    cores = os.cpu_count() or 1
    cpu_share = (cpu_rec - cpu_start) / recorded_s
    save_s = float(save.group(1))

    print(
        f"published during the episode: {steps} grid steps = {2 * steps} images, "
        f"{steps} joint states, {steps} trajectories in {recorded_s:.2f} s "
        f"({steps / recorded_s:.1f} Hz; {published['late']} steps sent >50 ms late)"
    )
    print(
        f"frames kept: {frames} of ~{expected:.0f} expected ({frames / max(expected, 1):.1%}); "
        f"skipped {skipped}, dropped by a full queue {int(dropped.group(1)) if dropped else 0}"
        + (f"; skip reasons: {reasons.group(1)}" if reasons else "")
    )
    print(f"throughput: {frames / recorded_s:.1f} frames/s recorded, {mb_in / recorded_s:.1f} MB/s of raw images in")
    print(f"writer queue high-water: {high_water.group(1)}/{high_water.group(2)} frames")
    print(
        f"save: stop_episode answered in {stop_s:.2f} s; writer save {save_s:.2f} s (encode+write "
        f"{save.group(2)}, finalize {save.group(3)}, commit {save.group(4)}) = "
        f"{save_s / (recorded_s / 60.0):.2f} s per minute recorded"
    )
    print(
        f"recorder memory: RSS {rss_before:.0f} MB before the episode, peak {monitor['recording']:.0f} MB while "
        f"recording, {monitor['saving']:.0f} MB while saving (sampled every 0.5 s, with child processes); "
        f"VmHWM {hwm:.0f} MB"
    )
    print(
        f"recorder CPU: {cpu_share:.0%} of one core while recording ({cpu_share / cores:.0%} of the machine's "
        f"{cores} cores), {cpu_end - cpu_rec:.2f} CPU s for the save; camera publisher (this process): "
        f"{(own_rec - own_start) / recorded_s:.0%} of one core; load average {load_start[0]:.1f} at the start, "
        f"{load_rec[0]:.1f} at the end of the recording"
    )

    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("local/bench", root=root)
    size_mb = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 1e6
    print(
        f"read back with LeRobot: {ds.num_episodes} episode, {len(ds)} frames, fps {ds.fps}; {size_mb:.1f} MB on disk"
    )
    print(f"stop_episode message: {answer.message}")
    if args.json:
        result = {
            "width": args.width,
            "height": args.height,
            "cameras": 2,
            "rate_hz": args.rate,
            "fps": args.fps,
            "profile": next((os.environ[v] for v in PROFILE_VARS if os.environ.get(v)), None),
            "recorded_s": recorded_s,
            "grid_steps": steps,
            "late_steps": published["late"],
            "frames": frames,
            "expected": expected,
            "kept": frames / max(expected, 1),
            "skipped": skipped,
            "dropped": int(dropped.group(1)) if dropped else 0,
            "skip_reasons": reasons.group(1) if reasons else "",
            "queue_high_water": int(high_water.group(1)),
            "save_s": save_s,
            "save_s_per_minute": save_s / (recorded_s / 60.0),
            "stop_answer_s": stop_s,
            "rss_mb_before": rss_before,
            "rss_mb_peak_recording": monitor["recording"],
            "rss_mb_peak_saving": monitor["saving"],
            "vmhwm_mb": hwm,
            "cpu_core_share_recording": cpu_share,
            "cpu_s_save": cpu_end - cpu_rec,
            "publisher_core_share": (own_rec - own_start) / recorded_s,
            "load_average": [load_start[0], load_rec[0]],
            "dataset_mb": size_mb,
            "message": answer.message,
        }
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
