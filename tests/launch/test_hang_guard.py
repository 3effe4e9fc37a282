"""tests/hang_guard.py: a test that fails and then hangs in its teardown still ends the run, with stacks.

Each case runs pytest in a subprocess on a two-file project in tmp_path, with a 3 s faulthandler limit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
LIMIT_S = 3

FAILING_TEST_WITH_A_STUCK_TEARDOWN = """
import time
import pytest

@pytest.fixture
def stuck_teardown():
    yield
    time.sleep(30)  # stands for a teardown blocked inside C

def test_fails_then_hangs(stuck_teardown):
    assert False
"""


def run_project(folder: Path, conftest: str, timeout: float) -> tuple[subprocess.CompletedProcess | None, float]:
    (folder / "pytest.ini").write_text(
        f"[pytest]\nfaulthandler_timeout = {LIMIT_S}\nfaulthandler_exit_on_timeout = true\n"
    )
    (folder / "conftest.py").write_text(conftest)
    (folder / "test_hang.py").write_text(FAILING_TEST_WITH_A_STUCK_TEARDOWN)
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:timeout", "test_hang.py"]
    start = time.monotonic()
    try:
        done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, time.monotonic() - start
    return done, time.monotonic() - start


def test_a_failed_test_stuck_in_its_teardown_ends_the_run_with_every_threads_stack(tmp_path):
    done, took = run_project(tmp_path, "from hang_guard import pytest_exception_interact  # noqa: F401\n", 25)
    assert done is not None, f"the run did not end within {took:.0f} s"
    assert done.returncode != 0
    assert f"Timeout (0:00:0{LIMIT_S})!" in done.stderr, done.stderr[-2000:]
    assert "stuck_teardown" in done.stderr  # the stack shows where it hung


def test_without_the_guard_pytest_stops_its_own_timer_when_a_test_fails(tmp_path):
    """The reason for the guard: the same project without it is still running well past the limit."""
    done, took = run_project(tmp_path, "", timeout=4 * LIMIT_S)
    assert done is None, f"the run ended after {took:.0f} s: pytest's timer was not cancelled, the guard may go"
