"""`make demo` and closed-loop evaluation: bring up a sim launch file, run seeded episodes, report.

Starts exactly the nodes, parameters and remaps the launch file names (the same
file `ros2 launch rla_wm_ros sim_policy.launch.xml` reads on a ROS 2 install),
then resets the simulated robot for each episode (episode k uses seed + k) and
reports success rate, final coverage, episode time, the control rate achieved
and per-stage latency; pictures and metrics.json go to the output folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import rclpy
from ament_index_python.packages import get_package_share_directory
from tqdm import tqdm

from rla_wm.evaluation.latency import STAGES, percentiles_ms
from rla_wm_ros.closed_loop import ClosedLoopRunner
from rla_wm_ros.launch_xml import LaunchDescription, LaunchedGraph, parse_launch_file

SIMULATORS = ("sim_robot", "sim_arm")  # executables whose node has the ~/reset that starts an episode


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=2, help="closed-loop episodes to run")
    parser.add_argument("--episode-steps", type=int, default=100, help="steps per episode (10 Hz)")
    parser.add_argument("--output", type=Path, default=Path("outputs/demo"), help="folder for pictures, metrics, logs")
    parser.add_argument("--launch-file", type=Path, default=None, help="default: the package's sim_policy.launch.xml")
    parser.add_argument("--startup-timeout", type=float, default=90.0, help="seconds for the graph to start flowing")
    parser.add_argument(
        "--model-topic",
        default="/policy/joint_trajectory",
        help="topic of the model's chunks (before the gate), for latency",
    )
    parser.add_argument(
        "--pictures", type=int, default=10, help="save the camera/feature picture of this many episodes"
    )
    parser.add_argument(
        "--video",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write episode_NN.gif of the camera: the first successful episode (or the first one, if none is)",
    )
    parser.add_argument("launch_args", nargs="*", metavar="NAME:=VALUE", help="launch arguments, as for ros2 launch")
    args = parser.parse_args(argv)
    if args.episodes < 1 or args.episode_steps < 1:
        parser.error("--episodes and --episode-steps must be positive")
    return args


def parse_overrides(items: list[str]) -> dict[str, str]:
    overrides = {}
    for item in items:
        name, sep, value = item.partition(":=")
        if not sep or not name:
            raise SystemExit(f"launch arguments are NAME:=VALUE, got {item!r}")
        overrides[name] = value
    return overrides


def write_video(result, output: Path, index: int) -> Path:
    """The episode's camera frames as a GIF at the sim's 10 Hz; replaces an earlier episode's."""
    from rla_wm.evaluation.visualize import save_gif

    for old in output.glob("episode_*.gif"):
        old.unlink()
    outcome = "success" if result.success else "failure"
    return save_gif(result.frames, output / f"episode_{index:02d}_{outcome}.gif", fps=10.0)


def summarise(results: list) -> dict[str, float]:
    """Success rate, final coverage, episode length and the achieved rate of gated commands."""
    import numpy as np

    coverage = np.array([r.coverage for r in results])
    sim_seconds = np.array([r.steps / 10.0 for r in results])
    commands = np.array([r.commands for r in results])
    return {
        "episodes": len(results),
        "successes": int(sum(r.success for r in results)),
        "success_rate": float(np.mean([r.success for r in results])),
        "coverage_mean": float(coverage.mean()),
        "coverage_std": float(coverage.std()),
        "episode_seconds_mean": float(sim_seconds.mean()),
        "wall_seconds_mean": float(np.mean([r.wall_seconds for r in results])),
        # commands the gate passed per simulated second: the control rate the loop achieved
        "command_rate_hz": float(commands.sum() / max(sim_seconds.sum(), 1e-9)),
        "holds": int(sum(r.holds for r in results)),
    }


def reset_service_of(description: LaunchDescription) -> str:
    """The ~/reset service of the launch file's simulator node (sim_robot for Push-T, sim_arm for the SO-101)."""
    for node in description.nodes:
        if node.executable in SIMULATORS:
            return f"{node.fully_qualified_name}/reset"
    raise SystemExit(f"{description.source}: no simulator node ({', '.join(SIMULATORS)}) to reset between episodes")


def wrist_features(description: LaunchDescription) -> dict[str, str]:
    """{wrist camera topic: its features topic} when the launch file runs a wrist encoder, else {}."""
    args = description.args
    if args.get("run_wrist_encoder", "false").lower() != "true" or not args.get("wrist_camera_topic"):
        return {}
    return {args["wrist_camera_topic"]: args.get("wrist_features_topic", "/wrist/features")}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    launch_file = (
        args.launch_file or Path(get_package_share_directory("rla_wm_ros")) / "launch" / "sim_policy.launch.xml"
    )
    overrides = {"max_episode_steps": str(args.episode_steps), **parse_overrides(args.launch_args)}
    description = parse_launch_file(launch_file, overrides=overrides)
    command_topic = description.args.get("command_topic", "/arm_controller/joint_trajectory")
    output = args.output
    output.mkdir(parents=True, exist_ok=True)
    print(f"[demo] {launch_file.name}: nodes {[node.name for node in description.nodes]}")
    if description.args.get("policy_checkpoint") == "untrained":
        print(
            "[demo] NOTE: the policy is UNTRAINED (random weights) and the encoder has random weights: "
            "the loop, the timing and the safety gate are real, task success is not expected."
        )

    results = []
    video = None  # (path, success) of the episode whose camera frames were written
    with LaunchedGraph() as graph:
        graph.start(description, env=dict(os.environ), log_dir=output / "logs")
        # Not the command line: rcl would read the launch arguments (NAME:=VALUE) as deprecated remap rules.
        rclpy.init(args=[])
        sim_clock = description.args.get("sim_clock", "false").lower() == "true"
        runner = ClosedLoopRunner(
            command_topic,
            model_topic=args.model_topic,
            sim_clock=sim_clock,
            camera_topic=description.args.get("camera_topic", "/camera/image_raw"),
            # A launch file with a second camera (the arm's wrist camera) declares it: the picture shows it too,
            # beside its feature map when the launch file encodes it.
            extra_camera_topics=(wrist,) if (wrist := description.args.get("wrist_camera_topic")) else (),
            extra_feature_topics=wrist_features(description),
            reset_service=reset_service_of(description),
        )
        try:
            started = time.monotonic()
            runner.wait_until_flowing(args.startup_timeout, alive=lambda: all(graph.alive().values()))
            print(
                f"[demo] graph flowing after {time.monotonic() - started:.1f} s; "
                f"the model acts on {runner.observer.model_input_topic}"
            )
            real_time_factor = float(description.args.get("real_time_factor", "1.0"))
            episode_timeout = args.episode_steps / 10.0 / real_time_factor * 3 + 30.0
            progress = tqdm(range(args.episodes), desc="episodes", unit="ep", disable=args.episodes < 5)
            for index in progress:
                keep_frames = args.video and (video is None or not video[1])
                result = runner.run_episode(timeout=episode_timeout, keep_frames=keep_frames)
                results.append(result)
                if keep_frames and result.frames and (video is None or result.success):
                    video = (write_video(result, output, index), result.success)
                progress.set_postfix(success=f"{sum(r.success for r in results)}/{len(results)}")
                picture = ""
                if result.picture is not None and index < args.pictures:
                    from rla_wm.evaluation.visualize import save_png

                    picture = str(save_png(result.picture, output / f"episode_{index:02d}_camera_features.png"))
                progress.write(
                    f"[demo] episode {index}: success={result.success} coverage={result.coverage:.3f} "
                    f"steps={result.steps} time={result.wall_seconds:.1f}s commands={result.commands} "
                    f"holds={result.holds} picture={picture}"
                )
        except (TimeoutError, RuntimeError) as err:
            print(f"[demo] FAILED: {err}\n{graph.tail_logs(15)}", file=sys.stderr)
            return 1
        finally:
            runner.close()
            rclpy.try_shutdown()
        latency = {stage: percentiles_ms(values) for stage, values in runner.observer.latency.stage_seconds().items()}
    if latency:
        origin = "from each frame's arrival at the observer (sim clock)" if sim_clock else "from each frame's stamp"
        print(f"[demo] latency per stage (wall-clock ms, {origin}):")
        print(f"  {'stage':<20} {'n':>6} {'p50':>8} {'p99':>8} {'max':>8}")
        for stage in STAGES:
            row = latency[stage]
            print(f"  {stage:<20} {row['n']:>6} {row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f} {row['max_ms']:>8.1f}")
    summary = summarise(results)
    print(
        f"[demo] {summary['successes']}/{summary['episodes']} episodes succeeded "
        f"(rate {summary['success_rate']:.2f}), final coverage {summary['coverage_mean']:.3f} "
        f"+- {summary['coverage_std']:.3f}, episode time {summary['episode_seconds_mean']:.1f} s (sim), "
        f"control rate {summary['command_rate_hz']:.1f} Hz"
    )
    metrics = {
        "launch_file": str(launch_file),
        "launch_args": overrides,
        "model_input_topic": runner.observer.model_input_topic,
        "summary": summary,
        # The picture and the video's frames are files of their own, not numbers.
        "episodes": [{k: v for k, v in vars(r).items() if k not in ("picture", "frames")} for r in results],
        "latency": latency,
    }
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if video is not None:
        print(f"[demo] video: {video[0]}")
    print(f"[demo] metrics, pictures and node logs in {output}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
