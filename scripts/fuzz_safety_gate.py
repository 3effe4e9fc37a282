"""Fuzz the real safety_gate node over DDS and check every message that reaches the controller topic.

    source scripts/env.sh
    python scripts/fuzz_safety_gate.py --messages 10000 --seed 1

Starts the gate (config/safety_gate.yaml, the Push-T limits unless --limits-file) on a private ROS
domain, plays a still robot, sends seeded fuzz trajectories (valid chunks, near misses, non-finite
fields, past points, unordered or negative times, bad stamps, ragged sizes, wrong joints), and runs
each controller message through the joint_trajectory_controller model, chained as a controller
executes them. Exits 1 on any violation.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=float, default=150.0, help="fuzz messages per second")
    parser.add_argument("--limits-file", default="", help="limits YAML (default: the package's pusht_limits.yaml)")
    parser.add_argument(
        "--delivery-margin",
        type=float,
        default=0.1,
        help="the gate's delivery_margin; the chained controller model assumes delivery within it",
    )
    parser.add_argument("--domain", type=int, default=77, help="ROS_DOMAIN_ID to run on")
    args = parser.parse_args()

    os.environ["ROS_DOMAIN_ID"] = str(args.domain)
    import rclpy
    from ament_index_python.packages import get_package_share_directory
    from rclpy.executors import SingleThreadedExecutor

    from rla_wm.control.limits import load_limits
    from rla_wm_ros.gate_fuzz import run_gate_fuzz
    from rla_wm_ros.launch_xml import LaunchDescription, LaunchedGraph, NodeSpec

    config = Path(get_package_share_directory("rla_wm_ros")) / "config"
    limits_file = args.limits_file or str(config / "pusht_limits.yaml")
    limits, max_step = load_limits(limits_file)
    position = (limits.lower + limits.upper) / 2
    gate = NodeSpec(
        "rla_wm_ros",
        "safety_gate",
        name="safety_gate",
        param_files=[str(config / "safety_gate.yaml")],
        params={"limits_file": limits_file, "delivery_margin": str(args.delivery_margin)},
    )
    graph = LaunchedGraph()
    graph.start(
        LaunchDescription(args={}, nodes=[gate]),
        env={"ROS_DOMAIN_ID": str(args.domain)},
        log_dir=Path(tempfile.mkdtemp(prefix="gate_fuzz_")),
    )
    rclpy.init(domain_id=args.domain)
    node = rclpy.create_node("gate_fuzzer")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    started = time.monotonic()
    try:
        report = run_gate_fuzz(node, limits, max_step, position, args.messages, args.seed, rate_hz=args.rate)
        alive = all(graph.alive().values())
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
        graph.stop()
    print(f"{report.summary()} in {time.monotonic() - started:.0f} s; gate alive: {alive}")
    for violation in report.violations[:20]:
        print(f"  VIOLATION: {violation}")
    return 0 if alive and not report.violations else 1


if __name__ == "__main__":
    sys.exit(main())
