"""Keep a hung test from holding the whole run: a pytest hook the test conftest imports.

pytest ends a run stuck in one test after `faulthandler_timeout` (pytest.ini, with
`faulthandler_exit_on_timeout`): it prints every thread's stack and exits. But pytest's faulthandler
and pytest-timeout both stop their timers as soon as a test raises (they make way for a debugger), so
a teardown that then blocks inside C, where no signal reaches Python, would hold the run until CI's
own limit with nothing printed. This hook arms the same exit timer again for the rest of that test;
pytest cancels it when the test's protocol ends.
"""

from __future__ import annotations

import faulthandler

import pytest
from _pytest.faulthandler import fault_handler_stderr_fd_key, get_exit_on_timeout_config_value, get_timeout_config_value


@pytest.hookimpl(trylast=True)  # after pytest's own hooks, which cancel the timer
def pytest_exception_interact(node: pytest.Item | pytest.Collector) -> None:
    if not isinstance(node, pytest.Item):  # a collection error: no test protocol would cancel the timer
        return
    limit = get_timeout_config_value(node.config)
    if limit > 0 and get_exit_on_timeout_config_value(node.config) and fault_handler_stderr_fd_key in node.config.stash:
        faulthandler.dump_traceback_later(limit, file=node.config.stash[fault_handler_stderr_fd_key], exit=True)
