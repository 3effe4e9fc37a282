"""`collect`: record simulated episodes (Push-T, or the SO-101 arm) through the real ROS graph.

Brings up exactly the graph of `launch/sim_collect.launch.xml` (Push-T: sim robot as the /clock
source, teleop source, safety gate, recorder) or, with `--robot so101`, of
`launch/sim_arm_collect.launch.xml` (the simulated SO-101 as the /clock source, the scripted
expert through the policy node or random joint-space play through the teleop node, safety gate,
recorder writing LeRobot's SO-101 layout), then for each episode: resets the sim, starts a
recorder episode, waits until the sim reports the episode done (success or step limit) and saves
it. Prints a summary (episodes, successes, frames, dataset size, wall time) and writes it as JSON.

  collect --episodes 20 --mode expert --dataset-root data/pusht_expert --real-time-factor 5
  collect --episodes 20 --mode play --dataset-root data/pusht_play      # action-free, task "play"
  collect --episodes 20 --mode expert --environment-state --dataset-root data/pusht_expert_state
      # also the block's state as observation.environment_state (for a privileged policy)
  collect --robot so101 --episodes 20 --mode expert --dataset-root data/so101_expert
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import rclpy
from ament_index_python.packages import get_package_share_directory
from rclpy.context import Context
from rclpy.node import Node
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from rla_wm_msgs.msg import EpisodeStatus, RecorderStatus
from rla_wm_msgs.srv import StartEpisode
from rla_wm_ros.background_spin import BackgroundSpin
from rla_wm_ros.launch_xml import LaunchedGraph, parse_launch_file

EXPERT_TASK = "Push the T block onto the target"
PLAY_TASK = "play"


@dataclass(frozen=True)
class Robot:
    """What differs between the simulated robots `collect` records."""

    launch_file: str  # in the package's launch folder
    reset_service: str  # the sim node's ~/reset
    expert_task: str
    repo_id: str
    image_size: int
    real_time_factor: float  # the default: fast, and still no frame skipped on a busy 2-core machine


ROBOTS = {
    "pusht": Robot("sim_collect.launch.xml", "/sim_robot/reset", EXPERT_TASK, "local/pusht_sim", 96, 3.0),
    # Rendering two cameras and simulating the arm take most of a 2-core machine at 1x real time.
    "so101": Robot(
        "sim_arm_collect.launch.xml",
        "/sim_arm/reset",
        "Push the cube into the target zone",
        "local/so101_sim",
        128,
        1.0,
    ),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--robot",
        choices=tuple(ROBOTS),
        default="pusht",
        help="pusht: the Push-T sim; so101: the simulated SO-101 arm, recorded in LeRobot's SO-101 layout",
    )
    parser.add_argument("--episodes", type=int, default=10, help="episodes to record")
    parser.add_argument(
        "--mode",
        choices=("expert", "play"),
        default="expert",
        help="expert: scripted demonstrations with actions; play: random play, action-free",
    )
    parser.add_argument(
        "--dataset-root", type=Path, required=True, help="LeRobot dataset folder (resumed if it exists)"
    )
    parser.add_argument(
        "--repo-id", default=None, help="repo id stored in the dataset (default: local/pusht_sim, local/so101_sim)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="sim seed; recorded episode k = 1, 2, ... uses seed + k (each starts with a reset)",
    )
    parser.add_argument(
        "--real-time-factor",
        type=float,
        default=None,
        help="simulated seconds per wall second (default: 3 for pusht, 1 for so101: no frame skipped on a busy "
        "2-core machine)",
    )
    parser.add_argument(
        "--environment-state",
        action="store_true",
        help="also record the sim's privileged state as observation.environment_state: Push-T's block (x, y, cos, "
        "sin), or the SO-101's cube pose and zone (rla_wm.envs.so101.environment_state)",
    )
    parser.add_argument("--max-episode-steps", type=int, default=300, help="step limit per episode (10 Hz)")
    parser.add_argument(
        "--image-size", type=int, default=None, help="camera image side in pixels (default: 96 pusht, 128 so101)"
    )
    parser.add_argument(
        "--task",
        default=None,
        help=f"task string (default: {EXPERT_TASK!r}, {ROBOTS['so101'].expert_task!r} on so101, or {PLAY_TASK!r} "
        "for play)",
    )
    parser.add_argument("--output", type=Path, default=Path("outputs/collect"), help="folder for summary.json and logs")
    parser.add_argument(
        "--launch-file",
        type=Path,
        default=None,
        help="default: the package's sim_collect.launch.xml (pusht) or sim_arm_collect.launch.xml (so101)",
    )
    parser.add_argument("--startup-timeout", type=float, default=60.0, help="seconds for the graph to come up")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    robot = ROBOTS[args.robot]
    args.repo_id = args.repo_id or robot.repo_id
    args.image_size = robot.image_size if args.image_size is None else args.image_size
    args.real_time_factor = robot.real_time_factor if args.real_time_factor is None else args.real_time_factor
    if args.episodes < 1 or args.max_episode_steps < 1 or args.image_size < 32:
        parser.error("--episodes and --max-episode-steps must be positive, --image-size at least 32")
    if not 0.1 <= args.real_time_factor <= 100.0:
        parser.error("--real-time-factor must be in [0.1, 100]")
    return args


@dataclass
class EpisodeRecord:
    index: int  # dataset episode index
    sim_episode: int
    success: bool
    coverage: float
    steps: int
    frames: int
    saved: bool
    wall_seconds: float
    message: str


class CollectClient(Node):
    """Talks to the running graph: sim reset and status, recorder services and status."""

    def __init__(self, context: Context, command_topic: str, reset_service: str = "/sim_robot/reset") -> None:
        super().__init__("collect", context=context)
        self.lock = threading.Lock()
        self.status: EpisodeStatus | None = None
        self.recorder: RecorderStatus | None = None
        self.commands = 0
        self.reset_client = self.create_client(Trigger, reset_service)
        self.start_client = self.create_client(StartEpisode, "/recorder/start_episode")
        self.stop_client = self.create_client(Trigger, "/recorder/stop_episode")
        self.discard_client = self.create_client(Trigger, "/recorder/discard_episode")
        self.create_subscription(EpisodeStatus, "/episode_status", self.on_status, 10)
        self.create_subscription(RecorderStatus, "/recorder/status", self.on_recorder, 10)
        self.create_subscription(JointTrajectory, command_topic, self.on_command, 10)

    def on_status(self, msg: EpisodeStatus) -> None:
        with self.lock:
            self.status = msg

    def on_recorder(self, msg: RecorderStatus) -> None:
        with self.lock:
            self.recorder = msg

    def on_command(self, msg: JointTrajectory) -> None:
        if msg.points:  # an empty trajectory is the gate holding
            with self.lock:
                self.commands += 1

    def call(self, client, request, timeout: float, alive: Callable[[], bool]):
        wait_until(client.service_is_ready, timeout, f"service {client.srv_name}", alive)
        future = client.call_async(request)
        wait_until(future.done, timeout, f"an answer from {client.srv_name}", alive)
        return future.result()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if not alive():
            raise RuntimeError(f"a node died while waiting for {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.005)


def folder_bytes(root: Path) -> int:
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())


def run_episode(
    client: CollectClient, task: str, timeout: float, alive: Callable[[], bool], command_timeout: float = 10.0
) -> EpisodeRecord:
    """One episode; `command_timeout`: how long the command source may take to answer the reset
    episode (the first time, a node may still be starting: the policy node imports torch)."""
    started = time.monotonic()
    with client.lock:
        previous = client.status.episode if client.status is not None else -1
    reset = client.call(client.reset_client, Trigger.Request(), 10.0, alive)
    if not reset.success:
        raise RuntimeError(f"sim reset refused: {reset.message}")

    def status() -> EpisodeStatus | None:
        with client.lock:
            return client.status

    wait_until(
        lambda: (s := status()) is not None and s.episode != previous and not s.done,
        10.0,
        "the reset episode to start",
        alive,
    )
    sim_episode = status().episode
    # Record once the gate forwards this episode's commands (camera, state and commands all fresh).
    with client.lock:
        commands = client.commands
    wait_until(lambda: client.commands > commands, command_timeout, "commands through the safety gate", alive)
    start = client.call(client.start_client, StartEpisode.Request(task=task), 10.0, alive)
    if not start.success:
        raise RuntimeError(f"recorder refused to start an episode: {start.message}")
    wait_until(
        lambda: (s := status()) is not None and (s.episode != sim_episode or s.done),
        timeout,
        f"sim episode {sim_episode} to end",
        alive,
    )
    final = status()
    with client.lock:
        recorder = client.recorder
    frames_seen = recorder.frames_recorded if recorder is not None and recorder.recording else 0
    stop = client.call(client.stop_client, Trigger.Request(), 120.0, alive)  # saving encodes the video
    # The recorder's stop message reports "<n> frames, <m> skipped"; the status only lags behind it.
    match = re.search(r"(\d+) frames, (\d+) skipped", stop.message)
    frames = int(match.group(1)) if match else frames_seen
    return EpisodeRecord(
        index=int(start.episode_index),
        sim_episode=int(sim_episode),
        success=bool(final.success),
        coverage=float(final.coverage),
        steps=int(final.step),
        frames=frames if stop.success else 0,
        saved=bool(stop.success),
        wall_seconds=time.monotonic() - started,
        message=stop.message,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    robot = ROBOTS[args.robot]
    share = Path(get_package_share_directory("rla_wm_ros"))
    launch_file = args.launch_file or share / "launch" / robot.launch_file
    dataset_root = args.dataset_root.expanduser().absolute()
    play = args.mode == "play"
    task = args.task or (PLAY_TASK if play else robot.expert_task)
    overrides = {
        "dataset_root": str(dataset_root),
        "repo_id": args.repo_id,
        "record_actions": "false" if play else "true",  # play is action-free on both robots
        "seed": str(args.seed),
        "max_episode_steps": str(args.max_episode_steps),
        "image_size": str(args.image_size),
        "real_time_factor": str(args.real_time_factor),
    }
    overrides["record_environment_state"] = "true" if args.environment_state else "false"
    if args.robot == "pusht":
        overrides["teleop_source"] = "play" if play else "expert"
    else:
        overrides["command_source"] = args.mode
    description = parse_launch_file(launch_file, overrides=overrides)
    command_topic = description.args.get("command_topic", "/arm_controller/joint_trajectory")
    output = args.output
    output.mkdir(parents=True, exist_ok=True)
    episode_timeout = args.max_episode_steps / (10.0 * args.real_time_factor) * 3.0 + 30.0
    print(
        f"[collect] {args.episodes} {args.mode} episodes -> {dataset_root} ({args.repo_id}), "
        f"real time factor {args.real_time_factor}, task {task!r}",
        flush=True,
    )

    records: list[EpisodeRecord] = []
    started = time.monotonic()
    failure = ""
    with LaunchedGraph() as graph:
        graph.start(description, env=dict(os.environ), log_dir=output / "logs")
        context = Context()
        rclpy.init(context=context)
        client = CollectClient(context, command_topic, robot.reset_service)
        spin = BackgroundSpin(client, context=context, own_context=True)
        alive = lambda: all(graph.alive().values())  # noqa: E731
        try:
            from tqdm.auto import tqdm

            wait_until(
                lambda: client.status is not None and client.recorder is not None,
                args.startup_timeout,
                "sim and recorder status",
                alive,
            )
            print(f"[collect] graph flowing after {time.monotonic() - started:.1f} s", flush=True)
            with tqdm(total=args.episodes, unit="episode", disable=args.no_progress, desc="collect") as bar:
                for k in range(args.episodes):
                    command_timeout = args.startup_timeout if k == 0 else 10.0
                    record = run_episode(client, task, episode_timeout, alive, command_timeout)
                    records.append(record)
                    successes = sum(r.success for r in records)
                    bar.set_postfix(success=f"{successes}/{len(records)}", frames=sum(r.frames for r in records))
                    bar.update(1)
                    if not record.saved:
                        tqdm.write(f"[collect] episode not saved: {record.message}")
        except (TimeoutError, RuntimeError) as err:
            failure = str(err)
            print(f"[collect] FAILED: {err}\n{graph.tail_logs(15)}", file=sys.stderr)
        finally:
            spin.close()
        # The recorder closes the dataset when it stops (SIGINT, as ros2 launch does).
        codes = graph.stop(timeout=30.0)
    wall = time.monotonic() - started
    saved = [r for r in records if r.saved]
    summary = {
        "robot": args.robot,
        "mode": args.mode,
        "task": task,
        "dataset_root": str(dataset_root),
        "repo_id": args.repo_id,
        "real_time_factor": args.real_time_factor,
        "max_episode_steps": args.max_episode_steps,
        "environment_state": args.environment_state,
        "episodes": len(records),
        "episodes_saved": len(saved),
        "successes": sum(r.success for r in records),
        "success_rate": sum(r.success for r in records) / len(records) if records else 0.0,
        "frames": sum(r.frames for r in saved),
        "dataset_bytes": folder_bytes(dataset_root) if dataset_root.exists() else 0,
        "wall_seconds": wall,
        "episodes_per_minute": len(saved) / wall * 60.0 if wall > 0 else 0.0,
        "node_exit_codes": codes,
        "failure": failure,
        "episode_records": [asdict(r) for r in records],
    }
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    print(
        f"[collect] episodes {len(records)} (saved {len(saved)}), successes {summary['successes']}, "
        f"frames {summary['frames']}, dataset {summary['dataset_bytes'] / 1e6:.2f} MB at {dataset_root}, "
        f"wall {wall:.1f} s ({summary['episodes_per_minute']:.1f} episodes/min)"
    )
    print(f"[collect] summary: {output / 'summary.json'}; node logs: {output / 'logs'}")
    return 1 if failure or len(saved) < args.episodes else 0


if __name__ == "__main__":
    sys.exit(main())
