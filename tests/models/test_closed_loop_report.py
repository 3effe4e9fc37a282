"""The closed-loop comparison: table rows and figure from demo metrics, and clear errors on bad runs."""

import json
from pathlib import Path

import pytest

from rla_wm.evaluation.closed_loop_report import load_evaluation, main


def write_run(folder: Path, successes: list[bool], coverage: list[float], latency: bool = True) -> Path:
    folder.mkdir(parents=True)
    episodes = [
        {"episode": i, "success": s, "coverage": c, "steps": 100, "wall_seconds": 4.0, "commands": 40, "holds": 0}
        for i, (s, c) in enumerate(zip(successes, coverage))
    ]
    metrics = {
        "launch_args": {"policy_checkpoint": "builtin:sim-pusht-policy"},
        "summary": {"episode_seconds_mean": 10.0, "command_rate_hz": 4.0},
        "episodes": episodes,
        "latency": {"camera_to_command": {"n": 10, "p50_ms": 61.0, "p99_ms": 140.0}} if latency else {},
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_table_and_figure_from_two_runs(tmp_path, capsys):
    first = write_run(tmp_path / "bc", [True, False, False, True], [0.96, 0.3, 0.5, 0.97])
    second = write_run(tmp_path / "planner", [False, False], [0.1, 0.2], latency=False)
    assert main(["--run", f"BC={first}", "--run", f"planner RLA-WM={second}", "--out", str(tmp_path / "out")]) == 0
    table = (tmp_path / "out" / "results.md").read_text().splitlines()
    assert table[2].startswith("| BC | 4 | 0.50 (2/4) | 0.682 ± ")
    assert "| 61 / 140 |" in table[2]
    assert table[3].startswith("| planner RLA-WM | 2 | 0.00 (0/2) | 0.150 ± 0.050 |")
    assert "nan / nan" in table[3]  # no latency measured is shown as such, not as 0
    assert (tmp_path / "out" / "closed_loop.png").stat().st_size > 5000
    assert "planner RLA-WM" in capsys.readouterr().out


def test_missing_or_incomplete_runs_are_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics.json"):
        load_evaluation("x", tmp_path / "nothing")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "metrics.json").write_text(json.dumps({"episodes": []}))
    with pytest.raises(ValueError, match="summary"):
        load_evaluation("old", tmp_path / "old")
    with pytest.raises(SystemExit):
        main(["--run", "no-equals-sign", "--out", str(tmp_path)])
