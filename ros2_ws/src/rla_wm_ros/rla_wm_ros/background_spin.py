"""Spin nodes in a background thread, and stop them in the order rclpy supports.

rclpy does not support destroying a node while another thread spins it: the spinner can crash
or hang in the middle layer (ros2/rclpy#255, #663). `Executor.shutdown()` only signals the
spinner and returns at once, so `shutdown(); destroy_node()` is exactly that race. `close()`
signals, waits for the spin thread to end, and only then destroys the nodes and the context.
"""

from __future__ import annotations

import threading

from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node


class SpinnerStuckError(RuntimeError):
    """The spin thread did not end: a callback is blocked. Its nodes are left undestroyed."""


class BackgroundSpin:
    """A single-threaded executor spinning `nodes` in a daemon thread until `close()`.

    own_context: `close()` also shuts `context` down (a context made for these nodes alone).
    """

    def __init__(self, *nodes: Node, context: Context | None = None, own_context: bool = False) -> None:
        if own_context and context is None:
            raise ValueError("own_context needs the context to shut down")
        self.nodes = list(nodes)
        self.context = context
        self.own_context = own_context
        self.executor = SingleThreadedExecutor(context=context)
        for node in self.nodes:
            self.executor.add_node(node)
        self._thread = threading.Thread(target=self.executor.spin, name="background-spin", daemon=True)
        self._thread.start()
        self._closed = False

    def close(self, timeout: float = 10.0) -> None:
        """Stop spinning, wait up to `timeout` seconds for the thread, then destroy the nodes (and
        the context if owned). Raises SpinnerStuckError if the thread is still running. Idempotent."""
        if self._closed:
            return
        self.executor.shutdown(timeout_sec=0)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise SpinnerStuckError(
                f"the spin thread of {[n.get_name() for n in self.nodes]} did not end within {timeout:.0f} s "
                "(a callback is blocked); its nodes were not destroyed"
            )
        self._closed = True
        for node in self.nodes:
            node.destroy_node()
        if self.own_context and self.context is not None:
            self.context.try_shutdown()
