"""Shared by the launch_xml tests: launch files, YAML param files and "installed" packages written into
tmp_path, a fake package finder mapping package names to tmp install prefixes (so nothing here needs a
built workspace), and a stand-in node executable for the process runner.

The test files take the fixtures with `from launch_xml_helpers import *` (`__all__` names just them; a
conftest.py here would shadow the tests' `from conftest import ...`), the other helpers by name."""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from rla_wm_ros.launch_xml import LaunchFileError, parse_launch_file

__all__ = ["finder", "prefix", "write"]


class FakeFinder:
    """Package name -> install prefix; unknown packages raise KeyError like ament's."""

    def __init__(self, prefixes: dict[str, Path]) -> None:
        self.prefixes = prefixes
        self.calls: list[str] = []

    def __call__(self, package: str) -> str:
        self.calls.append(package)
        return str(self.prefixes[package])


@pytest.fixture
def prefix(tmp_path: Path) -> Path:
    """An install prefix holding package 'demo_pkg' (share dir with a config file)."""
    root = tmp_path / "install"
    config = root / "share" / "demo_pkg" / "config"
    config.mkdir(parents=True)
    (config / "base.yaml").write_text("/**:\n  ros__parameters:\n    rate: 10.0\n")
    (config / "extra.yaml").write_text("/**:\n  ros__parameters:\n    depth: 3\n")
    (root / "lib" / "demo_pkg").mkdir(parents=True)
    return root


@pytest.fixture
def finder(prefix: Path, tmp_path: Path) -> FakeFinder:
    other = tmp_path / "other_install"
    (other / "share" / "other_pkg").mkdir(parents=True)
    return FakeFinder({"demo_pkg": prefix, "other_pkg": other})


@pytest.fixture
def write(tmp_path: Path) -> Callable[..., Path]:
    """write(body, name=...) -> path of a launch file whose <launch> holds `body`."""

    def _write(body: str, name: str = "test.launch.xml") -> Path:
        path = tmp_path / name
        path.write_text(f'<?xml version="1.0"?>\n<launch>\n{body}\n</launch>\n')
        return path

    return _write


def expect_error(path: Path, *fragments: str, **kwargs) -> LaunchFileError:
    """Parse `path`, require a LaunchFileError whose message names the file and `fragments`."""
    with pytest.raises(LaunchFileError) as info:
        parse_launch_file(path, **kwargs)
    message = str(info.value)
    assert path.name in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return info.value


NODE_SCRIPT = '''#!{python}
"""Test node: record argv/env, then wait for SIGINT and exit with a fixed code. A signal named in IGNORE
is logged ("ignored SIGINT") and otherwise ignored, so the test sees which signals reached it, in order."""
import json, os, signal, sys, threading

OUT = {out!r}
EXIT_CODE = {code}
IGNORE = {ignore!r}
CRASH = {crash!r}

stopping = threading.Event()


def on_sigint(signum, frame):
    stopping.set()


def log_and_ignore(signum, frame):
    print("ignored", signal.Signals(signum).name, flush=True)


for name in IGNORE:
    signal.signal(getattr(signal, name), log_and_ignore)
if "SIGINT" not in IGNORE:
    signal.signal(signal.SIGINT, on_sigint)

# Logged before the record appears: tests signal the node once they see the record, and a handler's
# line must never come before this one.
print("node started", os.path.basename(sys.argv[0]), flush=True)
record = {{"argv": sys.argv, "env": os.environ.get("LAUNCH_XML_TEST_VALUE"),
          "pid": os.getpid(), "pgid": os.getpgid(0)}}
with open(OUT + ".tmp", "w") as f:
    json.dump(record, f)
os.replace(OUT + ".tmp", OUT)  # atomic: the test never reads half a file
if CRASH:
    print("fatal: simulated crash", file=sys.stderr)
    sys.exit(3)
while not stopping.wait(1.0):  # the handler sets it; the time-out only bounds each wait
    pass
print("caught SIGINT, shutting down")
sys.exit(EXIT_CODE)
'''


def install_node(
    prefix: Path,
    package: str,
    executable: str,
    out: Path,
    code: int = 0,
    ignore: tuple[str, ...] = (),
    crash: bool = False,
) -> Path:
    """Write an executable Python script to <prefix>/lib/<package>/<executable>."""
    path = prefix / "lib" / package / executable
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        NODE_SCRIPT.format(python=sys.executable, out=str(out), code=code, ignore=list(ignore), crash=crash)
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
