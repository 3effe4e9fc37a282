"""Every command in the README's ```bash blocks works as written, for a new user.

Each block runs as a bash script in a FRESH environment (system PATH only: no venv, no sourced
workspace), with the lines exactly as the README writes them, from a sandbox that links to
every top-level entry of the repository except outputs/, runs/ and data/ (so nothing a
command writes lands in the checkout). What happens to each line:

* ``source scripts/env.sh``, ``export ...`` and ``VAR=value`` lines run as written (later
  lines use what they set; e.g. ``$C`` and ``$R``).
* Project commands (``collect``, ``demo``, ``rla-wm``, the node executables, ``python -m ...``,
  ``python script.py``, ``bash scripts/...``) run exactly as written, with a
  ``sitecustomize`` hook on PYTHONPATH: the program's own ``ArgumentParser.parse_args`` runs
  for real (option names, types, choices, required options, sub-commands) and the hook then
  exits with status 0 before any work starts. So a command passes only if it is found on
  PATH, starts, and accepts its arguments. We do not substitute ``--help``: that would not
  check the arguments. A bash script runs whole, its Python programs parse-only the same way.
  What the hook cannot see is checked after it: the ``NAME:=VALUE`` launch arguments a
  ``demo`` command passes are parsed against its launch file, as ``demo`` does next.
* ``make TARGET`` runs as ``make -n TARGET`` (make's own dry run; ``make test`` would run
  this suite, ``make demo`` minutes of simulation).
* ``ros2 launch`` / ``ros2 service call`` cannot run (no ros2 CLI here): the launch file must
  be installed and parse with the given arguments through the project's launch runner (every
  argument declared; ``...`` stands for the arguments of the previous command of that file),
  and a service call's type must import and take the request as written, and the service
  must exist with that type on the graph the README's launch line of that block starts.
* The on-robot install lines (``pip install``, ``cd ros2_ws && colcon build``) are not run
  (they would reinstall into the shared venv): the files and folders they name must exist,
  and pinned versions must be the ones installed here.

A line that fits none of these fails the test, so a new kind of command gets a check.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from ament_index_python.packages import get_package_share_directory

from rla_wm_ros.launch_xml import LaunchedGraph, parse_launch_file

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
LAUNCH_SHARE = Path(get_package_share_directory("rla_wm_ros")) / "launch"
SOURCE_LAUNCH = REPO / "ros2_ws" / "src" / "rla_wm_ros" / "launch"
NODE_EXECUTABLES = {"sim_robot", "encoder", "policy", "safety_gate", "recorder", "teleop", "planner"}
PROJECT_COMMANDS = {"collect", "demo", "rla-wm", "python", "bash"} | NODE_EXECUTABLES
# Folders README commands write to; the sandbox gets its own.
PRIVATE = {"outputs", "runs", "data", ".git"}
FRESH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BLOCK_TIMEOUT = 600

HOOK = """
import os, sys
# Not colcon's own helper, which a sourced setup.bash runs (e.g. inside bash scripts/...).
if os.environ.get("RLA_README_ARGCHECK") and not os.path.basename(sys.argv[0]).startswith("_local_setup_util"):
    import argparse, json

    _parse_args = argparse.ArgumentParser.parse_args

    def _parse_only(self, args=None, namespace=None):
        parsed = _parse_args(self, args, namespace)  # errors exit with status 2, as usual
        with open(os.environ["RLA_README_ARGCHECK"], "a") as f:
            f.write(json.dumps({"cwd": os.getcwd(), "argv": sys.argv, "prog": self.prog,
                                "args": vars(parsed)}, default=str) + "\\n")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    argparse.ArgumentParser.parse_args = _parse_only
"""


@dataclass
class Command:
    block: int
    line: int  # README line number of the command's first line
    text: str  # as written, continuation lines included
    words: list[str]  # shell words, comments dropped

    @property
    def program(self) -> str:
        """First word that is not a VAR=value assignment ('' for a line of assignments)."""
        for word in self.words:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", word):
                return word
        return ""

    def __str__(self) -> str:
        return f"README.md:{self.line}: {self.text.strip()}"


def readme_commands() -> list[Command]:
    text = README.read_text()
    commands = []
    for block, match in enumerate(re.finditer(r"^```bash\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)):
        first_line = text[: match.start(1)].count("\n") + 1
        lines = match.group(1).splitlines()
        i = 0
        while i < len(lines):
            start = i
            logical = lines[i]
            while logical.endswith("\\") and i + 1 < len(lines):
                i += 1
                logical += "\n" + lines[i]
            i += 1
            # bash drops a backslash-newline pair; shlex would keep the newline as a word.
            words = shlex.split(logical.replace("\\\n", ""), comments=True)
            if words:
                commands.append(Command(block, first_line + start, logical, words))
    return commands


COMMANDS = readme_commands()


def kind(command: Command) -> str:
    program = command.program
    if program == "" or program == "export":
        return "shell"
    if program == "source":
        assert command.words == ["source", "scripts/env.sh"], f"{command}: only scripts/env.sh is sourced"
        return "shell"
    if program == "make":
        return "make"
    if program in PROJECT_COMMANDS:
        return "run"
    if program == "ros2":
        return "ros2"
    if program in ("pip", "cd"):
        return "install"
    return "unknown"


def test_readme_has_commands_and_every_one_is_checked():
    assert COMMANDS, "no ```bash blocks found in README.md"
    unknown = [str(c) for c in COMMANDS if kind(c) == "unknown"]
    assert not unknown, "README commands this test has no check for (add one):\n" + "\n".join(unknown)
    # The README really documents the project commands this file is about.
    programs = {c.program for c in COMMANDS}
    assert {"collect", "rla-wm", "python"} <= programs, programs


# ------------------------------------------------------------------ running the blocks


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("readme") / "repo"
    root.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in PRIVATE:
            (root / entry.name).symlink_to(entry)
    return root


def seed_script_outputs(command: Command, root: Path) -> None:
    """scripts/evaluate_closed_loop.sh ends with a report over the evaluations present in OUT.
    Parse-only runs produce none, so give the report its runs' (never read) metrics.json,
    which makes the script build and parse its full report command."""
    if command.program != "bash":
        return
    words = command.words[command.words.index("bash") + 1 :]
    if words[0] != "scripts/evaluate_closed_loop.sh":
        return
    script = (REPO / words[0]).read_text()
    names = re.search(r"^ONLY=\$\{ONLY:-(.*)\}$", script, flags=re.MULTILINE).group(1).split()
    out = root / (words[1] if len(words) > 1 else "outputs/eval")
    for name in names:
        (out / name).mkdir(parents=True, exist_ok=True)
        (out / name / "metrics.json").write_text("{}")


def run_block(block: int, root: Path, work: Path) -> tuple[dict[int, int], subprocess.CompletedProcess]:
    """Run one README block as a script; return {command index: exit status} of what it ran."""
    hook_dir = work / "hook"
    hook_dir.mkdir(parents=True, exist_ok=True)
    (hook_dir / "sitecustomize.py").write_text(HOOK)
    status_file = work / f"block{block}.status"
    lines = [f"cd {shlex.quote(str(root))}"]
    for index, command in enumerate(COMMANDS):
        if command.block != block:
            continue
        what = kind(command)
        if what in ("shell", "run"):
            if what == "run":
                seed_script_outputs(command, root)
                lines.append(f"export RLA_README_ARGCHECK={shlex.quote(str(work / f'{index}.jsonl'))}")
            lines.append(command.text)  # exactly as written
        elif what == "make":
            lines.append("make -n " + command.text.split("make", 1)[1])
        else:
            continue
        lines.append(f'echo "{index} $?" >> {shlex.quote(str(status_file))}')
        lines.append("unset RLA_README_ARGCHECK")
    script = work / f"block{block}.sh"
    script.write_text("\n".join(lines) + "\n")
    env = {
        "PATH": FRESH_PATH,
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
        "PYTHONPATH": str(hook_dir),
        "ROS_DOMAIN_ID": os.environ.get("ROS_DOMAIN_ID", "0"),
    }
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT)
    statuses = {}
    if status_file.exists():
        for entry in status_file.read_text().split("\n"):
            if entry:
                index, code = entry.split()
                statuses[int(index)] = int(code)
    return statuses, result


def check_launch_args(record: dict) -> None:
    """What demo does right after parse_args: parse its launch file with the NAME:=VALUE args."""
    from rla_wm_ros.demo import parse_overrides

    args = record["args"]
    launch_file = args["launch_file"]
    if launch_file in (None, "None"):
        launch_file = LAUNCH_SHARE / "sim_policy.launch.xml"
    launch_file = Path(record["cwd"]) / launch_file
    overrides = {"max_episode_steps": str(args["episode_steps"]), **parse_overrides(args["launch_args"])}
    parse_launch_file(launch_file, overrides=overrides)


BLOCKS = sorted({c.block for c in COMMANDS if kind(c) in ("run", "make")})


@pytest.mark.parametrize("block", BLOCKS)
def test_readme_block_runs_as_written(block, sandbox, tmp_path):
    statuses, result = run_block(block, sandbox, tmp_path)
    ran = [(i, c) for i, c in enumerate(COMMANDS) if c.block == block and kind(c) in ("shell", "run", "make")]
    problems = []
    for index, command in ran:
        code = statuses.get(index)
        if code != 0:
            problems.append(f"{command}\n    exit status {code}" + (" (command not found)" if code == 127 else ""))
            continue
        if kind(command) != "run":
            continue
        records_file = tmp_path / f"{index}.jsonl"
        records = [json.loads(r) for r in records_file.read_text().splitlines()] if records_file.exists() else []
        if not records:
            problems.append(
                f"{command}\n    exited 0 but no Python program parsed its arguments (did it run for real?)"
            )
        for record in records:
            if {"launch_args", "launch_file", "episode_steps"} <= set(record["args"]):
                try:
                    check_launch_args(record)
                except Exception as exc:  # noqa: BLE001 - reported with the command
                    problems.append(f"{command}\n    launch arguments: {exc}")
    assert not problems, (
        "README commands that do not work as written:\n"
        + "\n".join(problems)
        + f"\n--- stderr ---\n{result.stderr[-4000:]}"
    )


# ------------------------------------------------------------------ ros2 lines: static checks


def ros2_launch_commands() -> list[tuple[Command, str, dict[str, str]]]:
    """(command, launch file, overrides) of every `ros2 launch` line; '...' = the previous line's args."""
    found = []
    previous: dict[str, dict[str, str]] = {}
    for command in COMMANDS:
        if kind(command) != "ros2" or command.words[1] != "launch":
            continue
        package, launch_file, *rest = command.words[2:]
        assert package == "rla_wm_ros", command
        overrides = dict(previous.get(launch_file, {})) if "..." in rest else {}
        for word in rest:
            if word == "...":
                continue
            name, sep, value = word.partition(":=")
            assert sep and name, f"{command}: {word!r} is not NAME:=VALUE"
            overrides[name] = os.path.expandvars(value)
        previous[launch_file] = overrides
        found.append((command, launch_file, overrides))
    return found


def test_readme_ros2_launch_lines_name_installed_files_and_declared_args():
    launches = ros2_launch_commands()
    assert launches, "README has no ros2 launch line"
    for command, launch_file, overrides in launches:
        assert (SOURCE_LAUNCH / launch_file).is_file(), f"{command}: no {launch_file} in the package"
        assert (LAUNCH_SHARE / launch_file).is_file(), f"{command}: {launch_file} is not installed"
        # Undeclared or missing required arguments are errors of the runner's parser.
        description = parse_launch_file(LAUNCH_SHARE / launch_file, overrides=overrides)
        for name, value in overrides.items():
            assert description.args[name] == value, (command, name)


def test_readme_ros2_service_calls_exist_on_the_launched_graph(ros_domain, ros_node, tmp_path):
    import importlib

    def set_message_fields(message, values: dict) -> None:  # rosidl_runtime_py is not installed here
        for field_name, value in values.items():
            assert field_name in message.get_fields_and_field_types(), f"no field {field_name!r} in {message}"
            if isinstance(value, dict):
                set_message_fields(getattr(message, field_name), value)
            else:
                setattr(message, field_name, value)  # the generated setter checks the type

    calls = [c for c in COMMANDS if kind(c) == "ros2" and c.words[1] == "service"]
    assert calls, "README has no ros2 service line"
    launches = ros2_launch_commands()
    by_block: dict[int, list[Command]] = {}
    for command in calls:
        assert command.words[2] == "call", command
        type_name = command.words[4]
        assert command.words[3].startswith("/"), f"{command}: give the service's full name"
        package, kind_, service = type_name.split("/")
        assert kind_ == "srv", command
        srv = getattr(importlib.import_module(f"{package}.srv"), service)
        request = srv.Request()
        if len(command.words) > 5:
            set_message_fields(request, yaml.safe_load(command.words[5]))  # raises on unknown fields
        by_block.setdefault(command.block, []).append(command)

    for block, block_calls in by_block.items():
        (launch,) = [(c, f, o) for c, f, o in launches if c.block == block]
        _, launch_file, overrides = launch
        # The README's dataset_root is under $HOME: record into the test's folder instead.
        overrides = {
            **overrides,
            **({"dataset_root": str(tmp_path / "dataset")} if "dataset_root" in overrides else {}),
        }
        description = parse_launch_file(LAUNCH_SHARE / launch_file, overrides=overrides)
        with LaunchedGraph() as graph:
            graph.start(description, env={"ROS_DOMAIN_ID": str(ros_domain)}, log_dir=tmp_path / f"logs{block}")
            wanted = {(c.words[3], c.words[4]) for c in block_calls}
            seen: set = set()

            def all_served() -> bool:
                seen.clear()
                seen.update((n, t) for n, types in ros_node.get_service_names_and_types() for t in types)
                return wanted <= seen

            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not all_served():
                assert all(graph.alive().values()), graph.tail_logs(30)
                time.sleep(0.2)
            assert wanted <= seen, f"services of {launch_file} missing: {sorted(wanted - seen)}\n{graph.tail_logs(20)}"


def test_readme_install_lines_name_existing_files_and_installed_versions():
    for command in [c for c in COMMANDS if kind(c) == "install"]:
        cwd = REPO
        parts: list[list[str]] = [[]]
        for word in command.words:
            if word == "&&":
                parts.append([])
            else:
                parts[-1].append(word)
        for words in parts:
            part = " ".join(words)
            if words[0] == "cd":
                cwd = cwd / words[1]
                assert cwd.is_dir(), f"{command}: no folder {words[1]}"
            elif words[0] == "source":
                assert (cwd / words[1]).is_file(), f"{command}: no {cwd / words[1]} (after a build)"
            elif words[0] == "colcon":
                assert (cwd / "src").is_dir(), f"{command}: colcon build in {cwd} finds no src/"
            elif words[:2] == ["pip", "install"]:
                for i, word in enumerate(words):
                    if word in ("-r", "-e"):
                        assert (cwd / words[i + 1]).exists(), f"{command}: no {words[i + 1]}"
                    elif "==" in word:
                        name, version = word.split("==")
                        assert metadata.version(name) == version, f"{command}: {name} here is {metadata.version(name)}"
            else:
                pytest.fail(f"{command}: no check for {part!r}")
