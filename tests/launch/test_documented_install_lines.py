"""The documented on-robot install lines (not run here): the files and folders they name exist, and
their pinned versions are the ones installed here."""

from __future__ import annotations

from importlib import metadata

import pytest

from documented_commands import COMMANDS, REPO, kind


def test_documented_install_lines_name_existing_files_and_installed_versions():
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
