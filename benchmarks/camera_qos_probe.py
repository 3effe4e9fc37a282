"""How many camera frames get through DDS, by image size and QoS: a publisher and a subscriber process.

    source scripts/env.sh
    python benchmarks/camera_qos_probe.py                          # the default matrix, 20 frames each
    python benchmarks/camera_qos_probe.py --frames 900             # 30 s streams at 30 Hz
    python benchmarks/camera_qos_probe.py --sizes 1280x720 --pub reliable --sub best_effort --depth 1
    python benchmarks/camera_qos_probe.py --no-profile             # Fast DDS defaults (no profile file)

Each trial starts a subscriber process and a publisher process on a private ROS_DOMAIN_ID
(traffic kept on this host). The publisher sends `--frames` sensor_msgs/Image (rgb8) at
`--rate` Hz once it sees the subscriber; the subscriber counts the distinct frames it got.
Publisher QoS: `best_effort` is sensor-data QoS (what most camera drivers use), `reliable`
is the rclpy default (reliable, keep last 10). The subscriber's `best_effort` depth 1 is the
project's CAMERA_QOS (encoder, safety gate). Columns: frames received of sent, frames the
subscriber's middleware reported lost on the way (DDS SAMPLE_LOST; frames lost before the
first or after the last received one are not seen as lost), and the latency from the stamp.

The processes inherit this shell's environment, so by default they use whatever Fast DDS
profile `scripts/env.sh` exported (FASTDDS_DEFAULT_PROFILES_FILE); `--no-profile` removes it
and `--profile FILE` uses another one: run both to compare. `--profile-for pub|sub` gives the
profile to one side only (it is the publisher's that matters), `--sub-delay-ms` makes the
subscriber a slow consumer (frames it then skips are not counted as lost).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time

PROFILE_VARS = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")


def qos(kind: str, depth: int):
    from rclpy.qos import QoSDurabilityPolicy, QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy

    reliability = {"best_effort": QoSReliabilityPolicy.BEST_EFFORT, "reliable": QoSReliabilityPolicy.RELIABLE}[kind]
    return QoSProfile(
        reliability=reliability,
        durability=QoSDurabilityPolicy.VOLATILE,
        history=QoSHistoryPolicy.KEEP_LAST,
        depth=depth,
    )


def run_subscriber(args) -> None:
    import rclpy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("camera_probe_sub")
    got: dict[int, float] = {}
    latencies: list[float] = []

    def on_image(msg) -> None:
        now = time.time()
        index = int(msg.header.frame_id)
        if index not in got:
            got[index] = now
            latencies.append(now - (msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9))
        if args.sub_delay_ms:
            time.sleep(args.sub_delay_ms / 1e3)  # a slow consumer (e.g. the encoder)

    lost = {"count": 0}

    def on_lost(info) -> None:  # samples the reader saw go missing (DDS SAMPLE_LOST)
        lost["count"] += info.total_count_change

    from rclpy.event_handler import SubscriptionEventCallbacks

    node.create_subscription(
        Image,
        args.topic,
        on_image,
        qos(args.sub, int(args.depth)),
        event_callbacks=SubscriptionEventCallbacks(message_lost=on_lost),
    )
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    print("READY", flush=True)
    cpu0 = time.process_time()
    while not stop.is_set():
        rclpy.spin_once(node, timeout_sec=0.05)
    lat = sorted(latencies)
    print(
        json.dumps(
            {
                "received": len(got),
                "lost": lost["count"],
                "sub_cpu_s": time.process_time() - cpu0,
                "latency_p50_ms": 1e3 * statistics.median(lat) if lat else None,
                "latency_max_ms": 1e3 * lat[-1] if lat else None,
            }
        ),
        flush=True,
    )
    node.destroy_node()
    rclpy.try_shutdown()


def run_publisher(args) -> None:
    import numpy as np
    import rclpy
    from sensor_msgs.msg import Image

    width, height = (int(v) for v in args.size.split("x"))
    rclpy.init()
    node = rclpy.create_node("camera_probe_pub")
    pub = node.create_publisher(Image, args.topic, qos(args.pub, args.pub_depth))
    created = time.monotonic()
    deadline = created + 30
    while pub.get_subscription_count() < 1:
        if time.monotonic() > deadline:
            print(json.dumps({"error": "no subscriber matched in 30 s"}), flush=True)
            return
        rclpy.spin_once(node, timeout_sec=0.05)
    match_s = time.monotonic() - created
    time.sleep(1.0)  # let the subscriber's side of the match settle too
    frame = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    msg = Image(height=height, width=width, encoding="rgb8", is_bigendian=0, step=3 * width)
    msg.data = frame.tobytes()
    period, start, late, cpu0 = 1.0 / args.rate, time.monotonic(), 0, time.process_time()
    for index in range(args.frames):
        delay = start + index * period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        elif delay < -period:
            late += 1
        now = time.time()
        msg.header.stamp.sec, msg.header.stamp.nanosec = int(now), int((now % 1) * 1e9)
        msg.header.frame_id = str(index)
        pub.publish(msg)
    print(
        json.dumps(
            {
                "sent": args.frames,
                "seconds": time.monotonic() - start,
                "late": late,
                "pub_cpu_s": time.process_time() - cpu0,
                "match_s": match_s,
            }
        ),
        flush=True,
    )
    time.sleep(0.5)  # a reliable writer may still be repairing the last samples
    node.destroy_node()
    rclpy.try_shutdown()


def trial(
    size: str,
    pub: str,
    sub: str,
    depth: int,
    frames: int,
    rate: float,
    env: dict,
    pub_depth: int = 0,
    profile_for: str = "both",
    sub_delay_ms: float = 0.0,
) -> dict:
    env = dict(env, ROS_DOMAIN_ID=str(random.randrange(150, 230)))
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    bare = {k: v for k, v in env.items() if k not in PROFILE_VARS}
    pub_env = env if profile_for in ("both", "pub") else bare
    sub_env = env if profile_for in ("both", "sub") else bare
    me = [sys.executable, os.path.abspath(__file__)]
    common = ["--frames", str(frames), "--rate", str(rate), "--size", size, "--sub-delay-ms", str(sub_delay_ms)]
    subscriber = subprocess.Popen(
        me + ["--role", "sub", "--sub", sub, "--depth", str(depth)] + common,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=sub_env,
    )
    try:
        assert subscriber.stdout.readline().strip() == "READY"
        publisher = subprocess.run(
            me + ["--role", "pub", "--pub", pub, "--pub-depth", str(pub_depth)] + common,
            capture_output=True,
            text=True,
            env=pub_env,
            timeout=60 + frames / rate,
        )
        sent = json.loads(publisher.stdout.strip().splitlines()[-1])
        time.sleep(1.0)
        out, _ = subscriber.communicate("stop\n", timeout=30)
        got = json.loads(out.strip().splitlines()[-1])
    finally:
        if subscriber.poll() is None:
            subscriber.kill()
    return {"size": size, "pub": pub, "sub": sub, "depth": depth, **sent, **got}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=("matrix", "pub", "sub"), default="matrix", help=argparse.SUPPRESS)
    parser.add_argument("--size", default="640x480", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", default="224x224,640x480,1280x720", help="WxH list")
    parser.add_argument("--pub", default="best_effort,reliable", help="publisher reliability list")
    parser.add_argument(
        "--pub-depth", type=int, default=0, help="publisher depth (default: 5 best effort, 10 reliable)"
    )
    parser.add_argument("--sub", default="best_effort,reliable", help="subscriber reliability list")
    parser.add_argument("--depth", default="1", help="subscriber depth list")
    parser.add_argument("--topic", default="probe/image_raw", help=argparse.SUPPRESS)
    parser.add_argument(
        "--sub-delay-ms", type=float, default=0.0, help="time the subscriber's callback takes (a slow consumer)"
    )
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--repeat", type=int, default=1, help="trials per combination")
    parser.add_argument(
        "--profile",
        default="",
        help="Fast DDS XML profile for both processes (sets FASTDDS_DEFAULT_PROFILES_FILE, read by "
        "Fast DDS 3 / Kilted; with Humble or Jazzy export FASTRTPS_DEFAULT_PROFILES_FILE instead)",
    )
    parser.add_argument("--no-profile", action="store_true", help="run with Fast DDS defaults (no profile file)")
    parser.add_argument(
        "--profile-for",
        choices=("both", "pub", "sub"),
        default="both",
        help="which process gets the profile (the other runs with Fast DDS defaults)",
    )
    parser.add_argument("--json", default="", help="also write the results to this file")
    args = parser.parse_args()

    if args.role == "sub":
        return run_subscriber(args)
    if args.role == "pub":
        if not args.pub_depth:
            args.pub_depth = 5 if args.pub == "best_effort" else 10
        return run_publisher(args)

    env = dict(os.environ)
    if args.no_profile:
        for var in PROFILE_VARS:
            env.pop(var, None)
    if args.profile:
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = os.path.abspath(args.profile)
    profile = next((env[v] for v in PROFILE_VARS if env.get(v)), "none (Fast DDS defaults)")
    if args.profile_for != "both":
        profile += f" (only in the {'publisher' if args.profile_for == 'pub' else 'subscriber'})"
    print(
        f"Fast DDS profile: {profile}; discovery range {env.get('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')}; "
        f"{args.frames} frames rgb8 at {args.rate:g} Hz per trial",
        flush=True,
    )
    print(
        f"{'size':>9} {'publisher':>11} {'subscriber':>11} {'depth':>5} {'received':>12} {'lost':>5} "
        f"{'p50 ms':>7} {'max ms':>7}"
    )
    results = []
    for size, pub, sub, depth, _ in itertools.product(
        args.sizes.split(","),
        args.pub.split(","),
        args.sub.split(","),
        [int(d) for d in args.depth.split(",")],
        range(args.repeat),
    ):
        if pub == "best_effort" and sub == "reliable":
            print(f"{size:>9} {pub:>11} {sub:>11} {depth:>5}   (no match: a reliable reader needs a reliable writer)")
            continue
        r = trial(
            size, pub, sub, depth, args.frames, args.rate, env, args.pub_depth, args.profile_for, args.sub_delay_ms
        )
        results.append(r)
        p50 = f"{r['latency_p50_ms']:7.1f}" if r.get("latency_p50_ms") is not None else "      -"
        mx = f"{r['latency_max_ms']:7.1f}" if r.get("latency_max_ms") is not None else "      -"
        got = f"{r['received']:>5} of {r['sent']:<5}"
        print(f"{size:>9} {pub:>11} {sub:>11} {depth:>5} {got} {r['lost']:>5} {p50} {mx}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"profile": profile, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
