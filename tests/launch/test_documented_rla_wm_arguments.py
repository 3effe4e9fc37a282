"""The block check itself: an rla-wm line is parsed by rla-wm's real (draccus) parser, so a wrong
field, an old flag or a bad value fails it (how: documented_commands.py)."""

from __future__ import annotations

import json

from documented_commands import *  # noqa: F403  (the fixture: sandbox)
from documented_commands import block_problems, page_commands


def test_an_rla_wm_line_with_a_wrong_field_or_an_old_flag_fails(sandbox, tmp_path):
    """The check itself: rla-wm arguments are parsed by rla-wm's real (draccus) parser."""
    config = "models/configs/sim_pusht.yaml"
    page = tmp_path / "made_up.md"
    page.write_text(
        "```bash\n"
        "source scripts/env.sh\n"
        f"rla-wm train-rla --config_path={config} --out=runs/good --train.rla.steps=3\n"
        f"rla-wm train-rla --config_path={config} --out=runs/typo --train.rla.stepz=3\n"
        f"rla-wm train-wm --config_path={config} --rla runs/rla/checkpoint --out=runs/old_flag\n"
        f"rla-wm train-rla --config_path={config} --out=runs/bad_value --train.rla.steps=many\n"
        f"rla-wm train-rla --config {config} --out=runs/abbreviated_flag\n"
        "```\n"
    )
    commands = page_commands(page, 0, name="made_up.md")
    problems, stderr = block_problems(commands, sandbox, tmp_path / "work")
    failed = [problem.splitlines()[0] for problem in problems]
    assert failed == [str(c) for c in commands[2:]], "\n".join(problems) + stderr[-3000:]
    assert "stepz" in stderr and "--rla is the `rla:` section" in stderr and "many" in stderr
    assert "unrecognized arguments: --config " in stderr  # no guessing --config_path from a prefix
    # The good line parsed once, with the override applied.
    (record,) = [json.loads(r) for r in (tmp_path / "work" / "1.jsonl").read_text().splitlines()]
    assert (record["parser"], record["prog"]) == ("draccus", "rla-wm train-rla")
    assert record["args"]["train"]["rla"]["steps"] == 3 and record["args"]["out"] == "runs/good"
