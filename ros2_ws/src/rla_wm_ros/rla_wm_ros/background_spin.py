"""Spin nodes in a background thread, and stop them in the order rclpy supports.

rclpy does not support destroying a node while another thread spins it: the spinner can crash
or hang in the middle layer (ros2/rclpy#255, #663). Nor can a spinning thread be stopped reliably
with `Executor.shutdown()` in rclpy 9.1: it returns at once, destroying the executor's wake-up guard
condition while the spin thread may be building its next wait set on it, and a wait without it
blocks until some other entity fires, which after a test or an episode may be never. So the thread
here spins in bounded rounds and checks a stop flag between them; `close()` sets the flag, waits for
the thread to end, and only then shuts the executor down and destroys the nodes and the context.
"""

from __future__ import annotations

import threading

from rclpy.context import Context
from rclpy.executors import ExternalShutdownException, ShutdownException, SingleThreadedExecutor
from rclpy.node import Node

# The longest a close() waits for a thread that is idle (no message, no timer) to notice it.
SPIN_ROUND_S = 0.1


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
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, name="background-spin", daemon=True)
        self._thread.start()
        self._closed = False

    def _spin(self) -> None:
        try:
            while not self._stop.is_set() and self.executor.context.ok():
                self.executor.spin_once(timeout_sec=SPIN_ROUND_S)
        except (ExternalShutdownException, ShutdownException):  # the context or executor went away
            pass

    def close(self, timeout: float = 10.0) -> None:
        """Stop spinning, wait up to `timeout` seconds for the thread, then destroy the nodes (and
        the context if owned). Raises SpinnerStuckError if the thread is still running. Idempotent."""
        if self._closed:
            return
        self._stop.set()
        self.executor.wake()  # ends the current wait early; if the wake-up is lost, the round's timeout does
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise SpinnerStuckError(
                f"the spin thread of {[n.get_name() for n in self.nodes]} did not end within {timeout:.0f} s "
                "(a callback is blocked); its nodes were not destroyed"
            )
        self._closed = True
        self.executor.shutdown()  # nothing spins it any more: nothing to race
        for node in self.nodes:
            node.destroy_node()
        if self.own_context and self.context is not None:
            self.context.try_shutdown()
