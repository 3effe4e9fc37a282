"""The planner's replan thread: wakes during a run coalesce into one more run, stop ends it."""

import threading
import time

from rla_wm_ros.wakeable_worker import WakeableWorker

from conftest import wait_for


def test_wakes_during_a_run_coalesce_into_exactly_one_more_run_and_stop_ends_the_thread():
    release = threading.Event()
    started = []

    def slow_job() -> None:
        started.append(time.monotonic())
        release.wait(10)

    worker = WakeableWorker(slow_job, name="test-worker")
    try:
        worker.wake()
        wait_for(lambda: len(started) == 1, 10, "the first run")
        for _ in range(5):  # five timer ticks while the job runs
            worker.wake()
        release.set()
        wait_for(lambda: worker.runs == 2, 10, "the catch-up run")
        time.sleep(0.2)
        assert worker.runs == 2 and len(started) == 2  # one catch-up run, not five queued
    finally:
        worker.stop()
    assert not worker.alive


def test_a_worker_never_woken_runs_nothing():
    runs = []
    worker = WakeableWorker(lambda: runs.append(1), name="test-idle")
    time.sleep(0.1)
    worker.stop()
    assert runs == [] and not worker.alive
