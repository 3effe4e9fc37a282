"""Keep video encoding from leaving the calling thread at real-time priority.

SVT-AV1 (libsvtav1, LeRobot's default video codec) moves the thread that encodes to SCHED_FIFO
priority 99 when the process runs as root, as in Docker and CI. Every thread and process that thread
starts afterwards inherits it. Two busy torch threads at FIFO 99 then hold both cores of a 2-core
machine, and nothing else runs again: that was CI's hang, after a test had recorded a dataset in the
test process. On a robot computer it would starve the controllers. `keep_thread_scheduling` puts the
calling thread's policy and priority back when the block ends.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


def thread_scheduling() -> tuple[int, int]:
    """(policy, priority) of the calling thread (Linux: pid 0 is the calling thread)."""
    return os.sched_getscheduler(0), os.sched_getparam(0).sched_priority


def set_thread_scheduling(scheduling: tuple[int, int]) -> None:
    """Give the calling thread a (policy, priority) that `thread_scheduling` returned."""
    policy, priority = scheduling
    os.sched_setscheduler(0, policy, os.sched_param(priority))


@contextmanager
def keep_thread_scheduling() -> Iterator[None]:
    """Restore the calling thread's scheduling policy and priority after the block."""
    before = thread_scheduling()
    try:
        yield
    finally:
        if thread_scheduling() != before:
            set_thread_scheduling(before)
