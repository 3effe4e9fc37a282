"""A thread that runs one job each time it is woken, outside the rclpy executor.

rclpy's multi-threaded executor re-polls in a busy loop while a ready callback waits for a busy
callback group. A replan longer than the MPC period kept the MPC timer in exactly that state: the
planner node's executor threads spun on the GIL and stretched a 0.16 s replan to 0.5 s or more.
Here the timer only wakes this thread, and returns at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class WakeableWorker:
    """Runs `work` on its own thread after each `wake()`. Wakes during a run coalesce into one
    more run right after it: a job slower than its wake-up rate runs back to back, never queued."""

    def __init__(self, work: Callable[[], None], name: str) -> None:
        self._work = work
        self._wake = threading.Event()
        self._stopping = False
        self.runs = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the run in progress (if any); waits up to `timeout` seconds for it."""
        self._stopping = True
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            if self._stopping:
                return
            self._wake.clear()
            self._work()  # the caller's job handles its own errors (the node guard counts them)
            self.runs += 1
