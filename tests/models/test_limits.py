"""Joint limits from a strict YAML file and/or a real arm's URDF (rla_wm.control.limits)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from rla_wm.control.limits import DuplicateKeyError, limits_from_urdf, load_limits, urdf_joints

from conftest import so101_urdf

REPO = Path(__file__).resolve().parents[2]
SO101_JOINTS = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")


def urdf_attributes(text: str) -> dict[str, dict[str, str]]:
    """{joint: {type, lower, upper, velocity, ...}} of every typed <joint>, by regex (not the library's parser)."""
    joints = {}
    for match in re.finditer(r'<joint\s+name="([^"]+)"\s+type="([^"]+)"\s*>(.*?)</joint>', text, re.S):
        name, kind, body = match.groups()
        limit = re.search(r"<limit\b([^>]*?)/?>", body)
        attributes = dict(re.findall(r'(\w+)="([^"]*)"', limit.group(1))) if limit else {}
        joints[name] = {"type": kind, **attributes}
    return joints


@pytest.fixture(scope="module")
def so101() -> tuple[Path, str, dict[str, dict[str, str]]]:
    path = so101_urdf()
    text = path.read_text(encoding="utf-8")
    return path, text, urdf_attributes(text)


def write(folder: Path, text: str, name: str = "limits.yaml") -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


def assert_matches_urdf(limits, attributes: dict[str, dict[str, str]]) -> None:
    for index, name in enumerate(limits.names):
        joint = attributes[name]
        assert limits.lower[index] == float(joint["lower"]), name
        assert limits.upper[index] == float(joint["upper"]), name
        assert limits.max_velocity[index] == float(joint["velocity"]), name


# --------------------------------------------------------------------------- YAML only


def test_shipped_pusht_limits_still_load():
    limits, max_step = load_limits(str(REPO / "ros2_ws/src/rla_wm_ros/config/pusht_limits.yaml"))
    assert limits.names == ("agent_x", "agent_y")
    # The file's numbers: the 512 px workspace, 1000 px/s, and a 200 px step.
    assert max_step == 200.0
    assert limits.lower.tolist() == [0.0, 0.0] and limits.upper.tolist() == [512.0, 512.0]
    assert limits.max_velocity.tolist() == [1000.0, 1000.0]


def test_empty_joints_is_refused(tmp_path):
    path = write(tmp_path, "joints: {}\nmax_step: 1.0\n")
    with pytest.raises(ValueError, match=r"`joints` is empty") as err:
        load_limits(path)
    assert path in str(err.value)


def test_missing_limits_file_is_refused():
    with pytest.raises(ValueError, match="limits_file is required"):
        load_limits("")
    with pytest.raises(FileNotFoundError):
        load_limits("/nonexistent/limits.yaml")


def test_duplicate_joint_key_is_refused_with_its_line(tmp_path):
    path = write(
        tmp_path,
        (
            "joints:\n"
            "  a: {lower: -1.0, upper: 1.0, max_velocity: 1.0}\n"
            "  a: {lower: -9.0, upper: 9.0, max_velocity: 9.0}\n"
            "max_step: 1.0\n"
        ),
    )
    with pytest.raises(DuplicateKeyError, match=r"duplicate key 'a' on line 3 \(first given on line 2\)") as err:
        load_limits(path)
    assert path in str(err.value)


@pytest.mark.parametrize(
    "text, key, line",
    [
        ("max_step: 0.1\njoints:\n  a: {lower: 0, upper: 1, max_velocity: 1}\nmax_step: 10.0\n", "max_step", 4),
        ("max_step: 0.1\njoints:\n  a:\n    lower: 0\n    upper: 1\n    max_velocity: 1\n    upper: 5\n", "upper", 7),
    ],
)
def test_duplicate_key_anywhere_is_refused(tmp_path, text, key, line):
    with pytest.raises(DuplicateKeyError, match=rf"duplicate key '{key}' on line {line}"):
        load_limits(write(tmp_path, text))


@pytest.mark.parametrize(
    "text, message",
    [
        ("- 1\n- 2\n", r"must be a YAML mapping"),
        ("", r"must be a YAML mapping"),
        ("max_step: 1\njoints:\n  a: {lower: zero, upper: 1, max_velocity: 1}\n", r"joints\.a\.lower must be a number"),
        ("max_step: 1\njoints:\n  a: {lower: true, upper: 1, max_velocity: 1}\n", r"joints\.a\.lower must be a number"),
        ("max_step: 1\njoints:\n  a: {lower: 0, upper: .nan, max_velocity: 1}\n", r"joints\.a\.upper must be finite"),
        ("max_step: 1\njoints:\n  a: {lower: 0, upper: 1, max_velocity: .inf}\n", r"max_velocity must be finite"),
        ("max_step: 1\njoints:\n  a: {lower: 0, upper: 1}\n", r"missing max_velocity"),
        (
            "max_step: 1\njoints:\n  a: {lower: 0, upper: 1, max_velocity: 1, max_vel: 2}\n",
            r"unknown keys \['max_vel'\]",
        ),
        ("max_step: 1\njoints:\n  a: {lower: 2, upper: 1, max_velocity: 1}\n", r"above upper"),
        ("max_step: 1\njoints:\n  a: {lower: 0, upper: 1, max_velocity: 0}\n", r"must be positive"),
        ("max_step: 1\njoints: [a, b]\n", r"`joints` must be a mapping"),
        ("max_step: 1\njoint:\n  a: {lower: 0, upper: 1, max_velocity: 1}\n", r"unknown keys \['joint'\]"),
        ("joints:\n  a: {lower: 0, upper: 1, max_velocity: 1}\n", r"needs `max_step`"),
        ("max_step: 0\njoints:\n  a: {lower: 0, upper: 1, max_velocity: 1}\n", r"max_step must be positive"),
        ("max_step: .inf\njoints:\n  a: {lower: 0, upper: 1, max_velocity: 1}\n", r"max_step must be finite"),
        ("max_step: 1\n", r"needs `joints`"),
        ("max_step: 1\njoints: {a: {lower: 0}\n", r"not valid YAML"),
        (
            "max_step: 1\ncontrolled_joints: [a]\njoints:\n  a: {lower: 0, upper: 1, max_velocity: 1}\n",
            r"controlled_joints selects URDF joints",
        ),
    ],
)
def test_malformed_limits_files_are_refused_naming_the_file(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ValueError, match=message) as err:
        load_limits(path)
    assert path in str(err.value)


# --------------------------------------------------------------------------- the SO-101 URDF


def test_so101_urdf_gives_its_movable_joints_and_their_limits(tmp_path, so101):
    path, _, attributes = so101
    limits, max_step = load_limits(write(tmp_path, f"urdf: {path}\nmax_step: 0.25\n"))
    assert max_step == 0.25
    assert set(limits.names) == set(SO101_JOINTS)
    # URDF order, read independently; the fixed gripper_frame_joint and the <transmission> joints are not joints.
    movable = [name for name, joint in attributes.items() if joint["type"] in ("revolute", "prismatic")]
    assert list(limits.names) == movable
    assert attributes["gripper_frame_joint"]["type"] == "fixed" and "gripper_frame_joint" not in limits.names
    assert np.isfinite(limits.lower).all() and np.isfinite(limits.upper).all()
    assert (limits.lower < limits.upper).all() and (limits.max_velocity > 0).all()
    assert_matches_urdf(limits, attributes)


def test_relative_urdf_path_is_taken_from_the_yaml_folder(tmp_path, monkeypatch, so101):
    path, _, attributes = so101
    robot = tmp_path / "robot"
    (robot / "urdf").mkdir(parents=True)
    shutil.copy(path, robot / "urdf" / "arm.urdf")
    limits_file = write(robot, "urdf: urdf/arm.urdf\nmax_step: 0.2\n")
    monkeypatch.chdir(tmp_path)  # not the YAML's folder
    limits, _ = load_limits(limits_file)
    assert set(limits.names) == set(SO101_JOINTS)
    assert_matches_urdf(limits, attributes)
    with pytest.raises(FileNotFoundError, match="missing.urdf"):
        load_limits(write(robot, "urdf: missing.urdf\nmax_step: 0.2\n", "other.yaml"))


def test_yaml_entries_tighten_urdf_limits(tmp_path, so101):
    path, _, attributes = so101
    pan = attributes["shoulder_pan"]
    tight_lower = float(pan["lower"]) / 2
    tight_velocity = float(pan["velocity"]) / 4
    gripper_upper = float(attributes["gripper"]["upper"]) - 0.5
    limits, _ = load_limits(
        write(
            tmp_path,
            (
                f"urdf: {path}\nmax_step: 0.2\njoints:\n"
                f"  shoulder_pan: {{lower: {tight_lower!r}, max_velocity: {tight_velocity!r}}}\n"
                f"  gripper: {{upper: {gripper_upper!r}, lower: {attributes['gripper']['lower']}}}\n"  # equal = allowed
            ),
        )
    )
    pan_index = limits.names.index("shoulder_pan")
    assert limits.lower[pan_index] == tight_lower
    assert limits.upper[pan_index] == float(pan["upper"])  # untouched
    assert limits.max_velocity[pan_index] == tight_velocity
    gripper_index = limits.names.index("gripper")
    assert limits.upper[gripper_index] == gripper_upper
    assert limits.lower[gripper_index] == float(attributes["gripper"]["lower"])
    assert limits.max_velocity[gripper_index] == float(attributes["gripper"]["velocity"])
    for index, name in enumerate(limits.names):
        if name not in ("shoulder_pan", "gripper"):
            joint = attributes[name]
            assert (limits.lower[index], limits.upper[index], limits.max_velocity[index]) == (
                float(joint["lower"]),
                float(joint["upper"]),
                float(joint["velocity"]),
            ), name


@pytest.mark.parametrize(
    "key, delta, urdf_key",
    [
        ("lower", -0.1, "lower"),
        ("upper", 0.1, "upper"),
        ("max_velocity", 1.0, "velocity"),
    ],
)
def test_yaml_entry_that_loosens_a_urdf_limit_is_refused(tmp_path, so101, key, delta, urdf_key):
    path, _, attributes = so101
    looser = float(attributes["elbow_flex"][urdf_key]) + delta
    limits_file = write(tmp_path, f"urdf: {path}\nmax_step: 0.2\njoints:\n  elbow_flex: {{{key}: {looser!r}}}\n")
    with pytest.raises(ValueError, match=rf"joints\.elbow_flex\.{key} .* would loosen the URDF") as err:
        load_limits(limits_file)
    assert limits_file in str(err.value)


def test_yaml_joint_that_is_not_in_the_urdf_is_refused(tmp_path, so101):
    path, _, _ = so101
    with pytest.raises(ValueError, match=r"joints\.elbow is not a joint of URDF"):
        load_limits(write(tmp_path, f"urdf: {path}\nmax_step: 0.2\njoints:\n  elbow: {{upper: 1.0}}\n"))
    with pytest.raises(ValueError, match=r"joints\.gripper is not a governed joint"):
        load_limits(
            write(
                tmp_path,
                (
                    f"urdf: {path}\nmax_step: 0.2\ncontrolled_joints: [shoulder_pan]\n"
                    "joints:\n  gripper: {upper: 1.0}\n"
                ),
            )
        )
    with pytest.raises(ValueError, match=r"joints\.gripper has unknown keys \['uper'\]"):
        load_limits(write(tmp_path, f"urdf: {path}\nmax_step: 0.2\njoints:\n  gripper: {{uper: 1.0}}\n"))


def test_tightening_past_the_other_bound_is_refused(tmp_path, so101):
    path, _, attributes = so101
    above = float(attributes["wrist_flex"]["upper"])  # lower raised to the URDF's upper, upper lowered below it
    with pytest.raises(ValueError, match=r"'wrist_flex' ends up with lower .* above upper"):
        load_limits(
            write(
                tmp_path,
                (f"urdf: {path}\nmax_step: 0.2\njoints:\n  wrist_flex: {{lower: {above!r}, upper: {above - 0.1!r}}}\n"),
            )
        )


def test_continuous_joint_needs_yaml_bounds(tmp_path, so101):
    _, text, attributes = so101
    continuous = text.replace(
        '<joint name="wrist_roll" type="revolute">', '<joint name="wrist_roll" type="continuous">'
    )
    assert continuous != text
    urdf = tmp_path / "continuous.urdf"
    urdf.write_text(continuous)
    with pytest.raises(ValueError, match=r"'wrist_roll' is continuous \(no position limit\): give joints\.wrist_roll"):
        load_limits(write(tmp_path, f"urdf: {urdf}\nmax_step: 0.2\n"))
    with pytest.raises(ValueError, match=r"'wrist_roll' is continuous"):
        load_limits(write(tmp_path, f"urdf: {urdf}\nmax_step: 0.2\njoints:\n  wrist_roll: {{lower: -3.0}}\n"))
    limits, _ = load_limits(
        write(tmp_path, (f"urdf: {urdf}\nmax_step: 0.2\njoints:\n  wrist_roll: {{lower: -3.0, upper: 3.0}}\n"))
    )
    index = limits.names.index("wrist_roll")
    assert (limits.lower[index], limits.upper[index]) == (-3.0, 3.0)
    assert limits.max_velocity[index] == float(attributes["wrist_roll"]["velocity"])
    # Left out of controlled_joints, it needs nothing.
    limits, _ = load_limits(write(tmp_path, f"urdf: {urdf}\nmax_step: 0.2\ncontrolled_joints: [gripper]\n"))
    assert limits.names == ("gripper",)
    # The URDF alone cannot govern it.
    with pytest.raises(ValueError, match="continuous"):
        limits_from_urdf(continuous)


def test_robot_description_string_works_and_both_given_is_refused(tmp_path, so101):
    path, text, attributes = so101
    limits, max_step = load_limits(write(tmp_path, "max_step: 0.3\n"), robot_description=text)
    assert max_step == 0.3 and set(limits.names) == set(SO101_JOINTS)
    assert_matches_urdf(limits, attributes)
    from_file, _ = load_limits(write(tmp_path, f"urdf: {path}\nmax_step: 0.3\n", "with_urdf.yaml"))
    assert from_file.names == limits.names
    for field in ("lower", "upper", "max_velocity"):
        assert np.array_equal(getattr(from_file, field), getattr(limits, field))
    with pytest.raises(ValueError, match="robot_description is set too"):
        load_limits(write(tmp_path, f"urdf: {path}\nmax_step: 0.3\n", "with_urdf.yaml"), robot_description=text)
    with pytest.raises(ValueError, match="robot_description is not valid XML"):
        load_limits(write(tmp_path, "max_step: 0.3\n"), robot_description="<robot><joint></robot>")
    with pytest.raises(ValueError, match="limits_file is required"):
        load_limits("", robot_description=text)


def test_controlled_joints_select_and_order(tmp_path, so101):
    path, _, attributes = so101
    order = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll"]  # LeRobot's order, no gripper
    limits, _ = load_limits(write(tmp_path, f"urdf: {path}\nmax_step: 0.2\ncontrolled_joints: {order}\n"))
    assert list(limits.names) == order
    assert_matches_urdf(limits, attributes)
    for bad, message in [
        ("[shoulder_pan, shoulder_pan]", r"lists \['shoulder_pan'\] more than once"),
        ("[shoulder_pan, gripper_frame_joint]", r"'gripper_frame_joint' is a fixed joint"),
        ("[shoulder_pan, elbow]", r"'elbow' is not in URDF"),
        ("[]", r"controlled_joints must be a non-empty list"),
        ("shoulder_pan", r"controlled_joints must be a non-empty list"),
    ]:
        with pytest.raises(ValueError, match=message):
            load_limits(write(tmp_path, f"urdf: {path}\nmax_step: 0.2\ncontrolled_joints: {bad}\n"))


# --------------------------------------------------------------------------- other URDF shapes

SMALL_URDF = """<?xml version="1.0"?>
<robot name="small">
  <link name="base"/><link name="a"/><link name="b"/><link name="c"/><link name="d"/>
  <joint name="mount" type="fixed"><parent link="base"/><child link="a"/></joint>
  <joint name="slide" type="prismatic"><parent link="a"/><child link="b"/>
    <limit effort="5" velocity="0.2" lower="-0.1" upper="0.3"/></joint>
  <joint name="finger" type="prismatic"><parent link="b"/><child link="c"/>
    <limit effort="5" velocity="0.1" upper="0.04"/></joint>
  <joint name="finger_mirror" type="prismatic"><parent link="b"/><child link="d"/>
    <limit effort="5" velocity="0.1" upper="0.04"/><mimic joint="finger" multiplier="1"/></joint>
</robot>
"""


def test_fixed_and_mimic_joints_are_skipped_and_lower_defaults_to_zero():
    limits = limits_from_urdf(SMALL_URDF)
    assert limits.names == ("slide", "finger")
    assert limits.lower.tolist() == [-0.1, 0.0]  # the URDF spec: a missing lower is 0
    assert limits.upper.tolist() == [0.3, 0.04]
    assert limits.max_velocity.tolist() == [0.2, 0.1]
    with pytest.raises(ValueError, match="'finger_mirror' mimics 'finger'"):
        limits_from_urdf(SMALL_URDF, ["finger_mirror"])
    assert [joint.name for joint in urdf_joints(SMALL_URDF)] == ["mount", "slide", "finger", "finger_mirror"]


@pytest.mark.parametrize(
    "limit, message",
    [
        ('<limit effort="5" lower="-0.1" upper="0.3"/>', r"has no velocity"),
        ('<limit effort="5" velocity="0" lower="-0.1" upper="0.3"/>', r"velocity 0; it must be positive"),
        ('<limit effort="5" velocity="-1" lower="-0.1" upper="0.3"/>', r"must be positive"),
        ('<limit effort="5" velocity="nan" lower="-0.1" upper="0.3"/>', r"velocity='nan' is not finite"),
        ('<limit effort="5" velocity="fast" lower="-0.1" upper="0.3"/>', r"velocity='fast' is not a number"),
        ("", r"has no <limit> element"),
    ],
)
def test_missing_or_bad_urdf_velocity_is_refused(limit, message):
    urdf = SMALL_URDF.replace('<limit effort="5" velocity="0.2" lower="-0.1" upper="0.3"/>', limit)
    assert urdf != SMALL_URDF
    with pytest.raises(ValueError, match=message):
        limits_from_urdf(urdf)


def test_urdf_without_movable_joints_or_not_a_urdf_is_refused():
    with pytest.raises(ValueError, match="no movable, non-mimic joint"):
        limits_from_urdf('<robot name="r"><joint name="j" type="fixed"/></robot>')
    with pytest.raises(ValueError, match=r"root element is <sdf>"):
        limits_from_urdf("<sdf/>")
    with pytest.raises(ValueError, match="empty"):
        limits_from_urdf("  ")
