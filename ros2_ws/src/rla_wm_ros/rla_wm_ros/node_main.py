"""Common entry point: init rclpy, run one node, shut down cleanly on Ctrl-C / SIGINT."""

from __future__ import annotations

import sys
from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node


def spin_node(make_node: Callable[[], Node], args: list[str] | None = None, threads: int = 2) -> None:
    """Run `make_node()` until shutdown.

    Two executor threads by default, so a slow callback (model inference in its own
    callback group, a simulator reset) never stalls timers and services. A node may
    override the count once built (its `executor_threads` attribute). One thread is the
    single-threaded executor: rclpy's multi-threaded one re-polls in a busy loop while a
    message waits for a callback group that is busy (a camera frame arriving during
    inference), which the graph profile showed as most of the encoder's and the policy
    node's CPU (benchmarks/profile_graph.py, docs/performance.md).
    """
    rclpy.init(args=args if args is not None else sys.argv)
    node = None
    try:
        node = make_node()
        threads = int(getattr(node, "executor_threads", threads))
        executor = MultiThreadedExecutor(num_threads=threads) if threads > 1 else SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.try_shutdown()
