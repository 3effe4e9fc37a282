"""Every ```bash block of README.md and docs/*.md with a project command or a make line runs as
written in a fresh environment, its programs parsing their arguments for real (how: documented_commands.py)."""

from __future__ import annotations

import pytest

from documented_commands import *  # noqa: F403  (the fixture: sandbox)
from documented_commands import COMMANDS, block_problems, kind

BLOCKS = sorted({c.block for c in COMMANDS if kind(c) in ("run", "make")})
# Test ids name the page and line where the block starts, e.g. docs/training.md:10.
BLOCK_IDS = [next(f"{c.page}:{c.line}" for c in COMMANDS if c.block == block) for block in BLOCKS]


@pytest.mark.parametrize("block", BLOCKS, ids=BLOCK_IDS)
def test_documented_block_runs_as_written(block, sandbox, tmp_path):
    problems, stderr = block_problems([c for c in COMMANDS if c.block == block], sandbox, tmp_path)
    assert not problems, (
        "documented commands that do not work as written:\n"
        + "\n".join(problems)
        + f"\n--- stderr ---\n{stderr[-4000:]}"
    )
