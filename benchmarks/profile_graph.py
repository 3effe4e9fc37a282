"""Where the closed loop's CPU goes: run the embedded demo and sample every node process with py-spy.

Runs `python -m rla_wm_ros.demo` (the `make demo` graph and policy unless launch arguments are
given), waits for its node processes, and records each with `py-spy record --nonblocking` for
`--profile-seconds` while episodes run. Prints the demo's own summary (camera→command latency per
stage, control rate) and, per node, the CPU seconds sampled and the functions where they were
spent: by own time (the frame on top of the stack) and by inclusive time within the project's code.

    python benchmarks/profile_graph.py --episodes 10 --episode-steps 300 --profile-seconds 120
    python benchmarks/profile_graph.py ... policy_checkpoint:=builtin:sim-pusht-policy-visual \\
        encoder_model:=builtin:sim-pusht-vit-mae encoder_resolution:=96 execute_steps:=3

    python benchmarks/profile_graph.py --launch-file launch/sim_planner.launch.xml \
        --model-topic /planner/joint_trajectory --episodes 3 --episode-steps 100 --profile-seconds 60 \
        world_model:=rla-wm sim_clock:=true real_time_factor:=0.5 mpc_rate:=2.0 mpc_horizon:=1

Raw stacks (py-spy's collapsed format) are kept in --output for flame graphs.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

NODES = ("sim_robot", "sim_arm", "encoder", "policy", "planner", "safety_gate")
# The `make demo` policy (Makefile DEMO_POLICY).
DEMO_POLICY = [
    "policy_checkpoint:=builtin:sim-pusht-policy-block-state",
    "encoder_model:=builtin:sim-pusht-pose-cnn",
    "execute_steps:=3",
]
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def node_processes(demo: psutil.Process) -> dict[str, psutil.Process]:
    """The demo's node processes by executable name (…/lib/rla_wm_ros/<node>)."""
    found = {}
    for child in demo.children(recursive=True):
        try:
            command = child.cmdline()
        except psutil.Error:
            continue
        for word in command[:3]:
            name = Path(word).name
            if "/lib/rla_wm_ros/" in word and name in NODES:
                found[name] = child
    return found


def short(frame: str) -> str:
    """'function (path/to/file.py:12)' -> 'function (file.py)'."""
    match = FRAME.match(frame)
    if not match:
        return frame
    return f"{match['function']} ({Path(match['file']).name})"


def summarise(raw: Path, rate: int, top: int) -> list[str]:
    """Lines of a node's profile: CPU seconds, top own-time frames, top project frames inclusive."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        frames = stack.split(";")[1:]  # the first entry names the process/thread
        if not frames:
            continue
        total += samples
        own[short(frames[-1])] += samples
        for frame in {short(f) for f in frames if "rla_wm" in f}:
            inclusive[frame] += samples
    if not total:
        return ["  (no samples: the process was idle or exited)"]
    lines = [f"  {total / rate:.1f} CPU s sampled ({total} samples at {rate} Hz)", "  own time:"]
    lines += [f"    {100 * n / total:5.1f} %  {frame}" for frame, n in own.most_common(top)]
    lines.append("  inclusive, project code:")
    lines += [f"    {100 * n / total:5.1f} %  {frame}" for frame, n in inclusive.most_common(top)]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--episode-steps", type=int, default=300)
    parser.add_argument("--profile-seconds", type=int, default=120, help="py-spy recording length per node")
    parser.add_argument("--warmup-seconds", type=float, default=20.0, help="wait after the nodes appear")
    parser.add_argument("--rate", type=int, default=50, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--output", type=Path, default=Path("outputs/profile_graph"))
    parser.add_argument("--launch-file", type=Path, default=None, help="another sim launch file (the demo's)")
    parser.add_argument("--model-topic", default=None, help="the model's chunk topic (the demo's --model-topic)")
    parser.add_argument("launch_args", nargs="*", metavar="NAME:=VALUE")
    args = parser.parse_args(argv)
    if shutil.which("py-spy") is None:
        raise SystemExit("py-spy is not installed: run scripts/setup_env.sh (requirements/dev.txt pins it)")
    args.output.mkdir(parents=True, exist_ok=True)
    demo_command = [
        sys.executable,
        "-m",
        "rla_wm_ros.demo",
        "--episodes",
        str(args.episodes),
        "--episode-steps",
        str(args.episode_steps),
        "--output",
        str(args.output / "demo"),
        *(["--launch-file", str(args.launch_file)] if args.launch_file else []),
        *(["--model-topic", args.model_topic] if args.model_topic else []),
        *(args.launch_args or ([] if args.launch_file else DEMO_POLICY)),
    ]
    print("[profile] " + " ".join(demo_command[1:]), flush=True)
    demo_log = open(args.output / "demo.log", "w")
    demo = subprocess.Popen(demo_command, stdout=demo_log, stderr=subprocess.STDOUT)
    try:
        parent = psutil.Process(demo.pid)
        deadline = time.monotonic() + 120
        nodes: dict[str, psutil.Process] = {}
        while time.monotonic() < deadline and demo.poll() is None:
            nodes = node_processes(parent)
            if nodes and "graph flowing" in (args.output / "demo.log").read_text():
                break
            time.sleep(1.0)
        if not nodes:
            raise SystemExit(f"no node processes appeared; see {args.output / 'demo.log'}")
        time.sleep(args.warmup_seconds)
        nodes = node_processes(parent)
        print(f"[profile] recording {sorted(nodes)} for {args.profile_seconds} s at {args.rate} Hz", flush=True)
        spies = {
            name: subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "--pid",
                    str(process.pid),
                    "--duration",
                    str(args.profile_seconds),
                    "--rate",
                    str(args.rate),
                    "--format",
                    "raw",
                    "--nonblocking",
                    "--output",
                    str(args.output / f"{name}.txt"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for name, process in nodes.items()
        }
        for name, spy in spies.items():
            _, error = spy.communicate()
            if spy.returncode:
                print(f"[profile] py-spy on {name} failed: {error.decode()[-300:]}", flush=True)
        demo.wait()
    finally:
        if demo.poll() is None:
            demo.terminate()
            demo.wait(timeout=30)
        demo_log.close()
    text = (args.output / "demo.log").read_text()
    print("\n".join(line for line in text.splitlines() if "episodes succeeded" in line or line.startswith("  ")))
    for name in sorted(spies):
        raw = args.output / f"{name}.txt"
        print(f"\n== {name}")
        print("\n".join(summarise(raw, args.rate, args.top) if raw.is_file() else ["  (no profile written)"]))
    return demo.returncode or 0


if __name__ == "__main__":
    raise SystemExit(main())
