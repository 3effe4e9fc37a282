"""Shared by the documented-command tests: finds every command in the ```bash blocks of README.md
and docs/*.md, and runs a block's commands the way a new user would. The test files take the
`sandbox` fixture with `from documented_commands import *` (`__all__` names just it; a conftest.py
here would shadow the tests' `from conftest import ...`), the other helpers by name.

What the tests (test_documented_*.py) check: every command works as written, for a new user.

Every page is covered the same way, and its commands are written to run from the repository
root. Each block runs as a bash script in a FRESH environment (system PATH only: no venv, no sourced
workspace), with the lines exactly as the page writes them, from a sandbox that links to
every top-level entry of the repository except outputs/, runs/ and data/ (so nothing a
command writes lands in the checkout). What happens to each line:

* ``source scripts/env.sh``, ``export ...`` and ``VAR=value`` lines run as written (later
  lines use what they set; e.g. ``$C`` and ``$R``).
* Project commands (``collect``, ``demo``, ``rla-wm``, the node executables, ``python -m ...``,
  ``python script.py``, ``bash scripts/...``, ``torchrun ... -m rla_wm.cli``) run exactly as
  written, with a ``sitecustomize`` hook on PYTHONPATH: the program's own parser runs for real
  (argparse's ``ArgumentParser.parse_args``: option names, types, choices, required options,
  sub-commands; for ``rla-wm``, which parses with draccus, ``rla_wm.training.config.parse_config``:
  the config file, every ``--a.b=value`` field and its type) and the hook then exits with
  status 0 before any work starts. So a command passes only if it is found on PATH, starts, and
  accepts its arguments; an ``rla-wm`` command must also have parsed them with draccus (once;
  under ``torchrun``, once in each process it starts). We do not substitute ``--help``: that
  would not check the arguments. A bash script runs whole, its Python programs parse-only the
  same way; a launcher (``torchrun``) runs for real, and the processes it starts parse-only.
  What the hook cannot see is checked after it: the ``NAME:=VALUE`` launch arguments a
  ``demo`` command passes are parsed against its launch file, as ``demo`` does next.
* ``make TARGET`` runs as ``make -n TARGET`` (make's own dry run; ``make test`` would run
  this suite, ``make demo`` minutes of simulation).
* ``ros2 launch`` / ``ros2 service call`` cannot run (no ros2 CLI here): the launch file must
  be installed and parse with the given arguments through the project's launch runner (every
  argument declared; ``...`` stands for the arguments of the previous command of that file on
  the same page), and a service call's type must import and take the request as written, and
  the service must exist with that type on the graph the page's launch line of that block starts.
* The on-robot install lines (``pip install``, ``cd ros2_ws && colcon build``) are not run
  (they would reinstall into the shared venv): the files and folders they name must exist,
  and pinned versions must be the ones installed here.

A line that fits none of these fails test_documented_commands_coverage.py, so a new kind of
command gets a check. Moving a command between pages keeps it checked; dropping one that the
pages documented when the README was split into docs/ fails `test_documented_commands_still_include_every_earlier_one`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from ament_index_python.packages import get_package_share_directory

from rla_wm_ros.launch_xml import parse_launch_file

__all__ = ["sandbox"]

REPO = Path(__file__).resolve().parents[2]
# The pages whose commands are checked: the README and every page under docs/.
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LAUNCH_SHARE = Path(get_package_share_directory("rla_wm_ros")) / "launch"
SOURCE_LAUNCH = REPO / "ros2_ws" / "src" / "rla_wm_ros" / "launch"
NODE_EXECUTABLES = {"sim_robot", "encoder", "policy", "safety_gate", "recorder", "teleop", "planner"}
# Launchers run for real: the programs they start are the ones whose arguments are checked.
LAUNCHERS = {"torchrun"}
PROJECT_COMMANDS = {"collect", "demo", "rla-wm", "python", "bash"} | NODE_EXECUTABLES | LAUNCHERS
# Folders documented commands write to; the sandbox gets its own.
PRIVATE = {"outputs", "runs", "data", ".git"}
FRESH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BLOCK_TIMEOUT = 600

HOOK = """
import os, sys
# Not colcon's own helper, which a sourced setup.bash runs (e.g. inside bash scripts/...).
if os.environ.get("RLA_README_ARGCHECK") and not os.path.basename(sys.argv[0]).startswith("_local_setup_util"):
    import importlib.abc, importlib.machinery, json

    def _record_and_exit(parser, prog, args):
        with open(os.environ["RLA_README_ARGCHECK"], "a") as f:
            f.write(json.dumps({"cwd": os.getcwd(), "argv": sys.argv, "parser": parser, "prog": prog,
                                "args": args}, default=str) + "\\n")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    if os.path.basename(sys.argv[0]) not in __LAUNCHERS__:
        import argparse

        _parse_args = argparse.ArgumentParser.parse_args

        def _parse_only(self, args=None, namespace=None):
            parsed = _parse_args(self, args, namespace)  # errors exit with status 2, as usual
            _record_and_exit("argparse", self.prog, vars(parsed))

        argparse.ArgumentParser.parse_args = _parse_only

    class _ParseConfigOnly(importlib.abc.MetaPathFinder):
        \"\"\"rla-wm parses with draccus, which never calls argparse's parse_args: wrap
        rla_wm.training.config.parse_config as the module loads, before rla_wm.cli imports it.\"\"\"

        def find_spec(self, name, path, target=None):
            if name != "rla_wm.training.config":
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is None or spec.loader is None:
                return spec
            exec_module = spec.loader.exec_module

            def exec_and_wrap(module):
                exec_module(module)
                parse_config = module.parse_config

                def parse_only(kind, args, prog=None):
                    config = parse_config(kind, args, prog)  # a bad field or value raises ConfigError, as usual
                    import draccus

                    _record_and_exit("draccus", prog, draccus.encode(config))

                module.parse_config = parse_only

            spec.loader.exec_module = exec_and_wrap
            return spec

    sys.meta_path.insert(0, _ParseConfigOnly())
""".replace("__LAUNCHERS__", repr(sorted(LAUNCHERS)))


@dataclass
class Command:
    page: str  # the page's path relative to the repository, e.g. docs/training.md
    block: int  # numbered across all pages, so one number names one block
    line: int  # the page's line number of the command's first line
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
        return f"{self.page}:{self.line}: {self.text.strip()}"


BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```", flags=re.MULTILINE | re.DOTALL)


def page_commands(page: Path, first_block: int, name: str | None = None) -> list[Command]:
    """The commands of one page's ```bash blocks; its blocks are numbered from first_block.
    `name` defaults to the page's path in the repository."""
    text = page.read_text()
    name = name or page.relative_to(REPO).as_posix()
    commands = []
    for block, match in enumerate(BASH_BLOCK.finditer(text), start=first_block):
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
                commands.append(Command(name, block, first_line + start, logical, words))
    return commands


def documented_commands() -> list[Command]:
    commands: list[Command] = []
    first_block = 0
    for page in PAGES:
        commands += page_commands(page, first_block)
        first_block += len(BASH_BLOCK.findall(page.read_text()))
    return commands


COMMANDS = documented_commands()


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


def signature(command: Command) -> str:
    """What a command runs, without its options: 'rla-wm train-wm', 'python -m rla_wm_ros.demo',
    'ros2 launch robot_policy.launch.xml', 'make demo'; '' for shell lines."""
    if kind(command) == "shell":
        return ""
    words = command.words[command.words.index(command.program) :]
    program = words[0]
    if program == "python":
        return " ".join(words[:3]) if words[1] == "-m" else " ".join(words[:2])
    if program == "ros2":
        return " ".join(words[:2] + [words[3]]) if words[1] == "launch" else " ".join(words[:4])
    if program == "pip":
        return "pip install"
    if program in ("make", "bash", "rla-wm", "cd"):
        return " ".join(words[:2])
    return program


def option_value(words: list[str], name: str) -> str | None:
    """The value of `--name VALUE` or `--name=VALUE` among a command's words."""
    for index, word in enumerate(words):
        if word == name and index + 1 < len(words):
            return words[index + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None


def expected_draccus_parses(command: Command) -> int:
    """How many processes of a command must parse their arguments with draccus (rla-wm's parser):
    one for `rla-wm` and `python -m rla_wm.cli`, one per process for `torchrun -m rla_wm.cli`."""
    words = command.words[command.words.index(command.program) :]
    if words[0] == "rla-wm" or words[:3] == ["python", "-m", "rla_wm.cli"]:
        return 1
    if words[0] == "torchrun" and "rla_wm.cli" in words:
        processes = option_value(words, "--nproc-per-node") or option_value(words, "--nproc_per_node")
        assert processes and processes.isdigit(), f"{command}: give --nproc-per-node as a number"
        return int(processes)
    return 0


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


def run_block(commands: list[Command], root: Path, work: Path) -> tuple[dict[int, int], subprocess.CompletedProcess]:
    """Run one block's commands as a script; return {index in commands: exit status} of what it ran."""
    hook_dir = work / "hook"
    hook_dir.mkdir(parents=True, exist_ok=True)
    (hook_dir / "sitecustomize.py").write_text(HOOK)
    status_file = work / "block.status"
    lines = [f"cd {shlex.quote(str(root))}"]
    for index, command in enumerate(commands):
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
    script = work / "block.sh"
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


def block_problems(commands: list[Command], root: Path, work: Path) -> tuple[list[str], str]:
    """Run one block's commands; return what did not work as written (one entry per command,
    starting with the command) and the block's stderr."""
    statuses, result = run_block(commands, root, work)
    problems = []
    for index, command in enumerate(commands):
        if kind(command) not in ("shell", "run", "make"):
            continue
        code = statuses.get(index)
        if code != 0:
            problems.append(f"{command}\n    exit status {code}" + (" (command not found)" if code == 127 else ""))
            continue
        if kind(command) != "run":
            continue
        records_file = work / f"{index}.jsonl"
        records = [json.loads(r) for r in records_file.read_text().splitlines()] if records_file.exists() else []
        if not records:
            problems.append(
                f"{command}\n    exited 0 but no Python program parsed its arguments (did it run for real?)"
            )
        draccus_parses = sum(record["parser"] == "draccus" for record in records)
        if draccus_parses != expected_draccus_parses(command):
            problems.append(
                f"{command}\n    {draccus_parses} processes parsed rla-wm arguments, "
                f"expected {expected_draccus_parses(command)}"
            )
        for record in records:
            if {"launch_args", "launch_file", "episode_steps"} <= set(record["args"]):
                try:
                    check_launch_args(record)
                except Exception as exc:  # noqa: BLE001 - reported with the command
                    problems.append(f"{command}\n    launch arguments: {exc}")
    return problems, result.stderr
