"""Every command the pages document is found, has a check, and no earlier command was dropped
(how each kind is checked: documented_commands.py)."""

from __future__ import annotations

from documented_commands import COMMANDS, kind, signature

# What the README's blocks ran when its material moved into docs/*.md (then 8 blocks, 30
# commands). Each must stay documented, on some page, so moving text never drops a check.
EARLIER_SIGNATURES = {
    "make demo",
    "make test",
    "pip install",
    "cd ros2_ws",
    "ros2 launch robot_policy.launch.xml",
    "ros2 launch robot_record.launch.xml",
    "ros2 service call /recorder/start_episode",
    "ros2 service call /recorder/stop_episode",
    "collect",
    "rla-wm cache-features",
    "rla-wm train-rla",
    "rla-wm train-wm",
    "rla-wm train-regression",
    "rla-wm train-policy",
    "rla-wm evaluate",
    "rla-wm evaluate-policy",
    "python scripts/ship_checkpoints.py",
    "bash scripts/evaluate_closed_loop.sh",
    "python -m rla_wm_ros.demo",
    "python -m rla_wm.evaluation.closed_loop_report",
}


def test_documented_commands_are_found_and_every_one_is_checked():
    pages = {c.page for c in COMMANDS}
    assert "README.md" in pages and any(p.startswith("docs/") for p in pages), pages
    unknown = [str(c) for c in COMMANDS if kind(c) == "unknown"]
    assert not unknown, "documented commands this test has no check for (add one):\n" + "\n".join(unknown)
    # The two commands are on the README's first screen, not only somewhere in docs/.
    readme = {signature(c) for c in COMMANDS if c.page == "README.md"}
    assert {"make demo", "make test"} <= readme, readme


def test_documented_commands_still_include_every_earlier_one():
    documented = {signature(c) for c in COMMANDS}
    missing = sorted(EARLIER_SIGNATURES - documented)
    assert not missing, f"commands no page documents any more (so nothing checks them): {missing}"
