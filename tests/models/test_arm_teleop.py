"""Arm teleoperation without ROS: keyboard and gamepad in joint space and in Cartesian space
(the SO-101's own IK on the pinned MuJoCo model), deadman, limits and the lead bound."""

from __future__ import annotations

import numpy as np
import pytest

from rla_wm.control.arm_teleop import ArmJoyMapping, ArmKeyboard, ArmTeleop, so101_kinematics
from rla_wm.control.teleop import parse_keys
from rla_wm.control.teleop_session import TeleopSession, TeleopSettings
from rla_wm.envs.so101.sim import HOME, JOINT_NAMES, urdf_limits

GRIPPER = JOINT_NAMES.index("gripper")


@pytest.fixture(scope="module")
def kinematics():
    return so101_kinematics(JOINT_NAMES)


@pytest.fixture(scope="module")
def limits():
    found = urdf_limits()
    order = [found.names.index(name) for name in JOINT_NAMES]
    return np.asarray(found.lower)[order], np.asarray(found.upper)[order]


def test_arm_keys_parse_and_move_the_selected_joint_or_the_tool():
    assert parse_keys(b"rfoc3") == ["raise", "lower", "open", "close", "select3"]
    joint = ArmKeyboard("joint", 6, GRIPPER, speed=0.5, gripper_speed=1.0, max_speed=2.0)
    for key in parse_keys(b"3w"):
        joint.press(key, now=0.0)
    np.testing.assert_allclose(joint.velocity(now=0.1), [0, 0, 0.5, 0, 0, 0])
    joint.press("select2", now=0.1)  # another joint: the old one stops at once
    joint.press("down", now=0.1)
    joint.press("close", now=0.1)
    np.testing.assert_allclose(joint.velocity(now=0.2), [0, -0.5, 0, 0, 0, -1.0])
    np.testing.assert_allclose(joint.velocity(now=1.0), np.zeros(6))  # keys not repeated: stop
    cartesian = ArmKeyboard("cartesian", 6, GRIPPER, speed=0.05, gripper_speed=1.0, max_speed=0.2)
    for key in parse_keys(b"wao"):
        cartesian.press(key, now=0.0)
    velocity = cartesian.velocity(now=0.0)
    # Forward and left together: the diagonal at the speed; the gripper opens at its own speed.
    np.testing.assert_allclose(velocity, [0.05 / np.sqrt(2), 0.05 / np.sqrt(2), 0.0, 1.0])
    cartesian.press("hold", now=0.0)
    assert not cartesian.velocity(now=0.0).any()
    with pytest.raises(ValueError, match="space"):
        ArmKeyboard("polar", 6, GRIPPER, 0.05, 1.0, 0.2)


def test_arm_joy_needs_the_deadman_and_maps_axes_scales_and_gripper_buttons():
    joy = ArmJoyMapping(axes=(1, 0, -1), scales=(0.05, -0.05, 0.05), deadman_button=4, open_button=1, close_button=0)
    axes = [0.5, 1.0, 0.0, 0.0, 0.0]
    assert joy.velocity(axes, [0, 1, 0, 0, 0], gripper_axis=3) is None  # deadman released
    velocity = joy.velocity(axes, [0, 1, 0, 0, 1], gripper_axis=3)
    # Axis 1 full: x at 0.05; axis 0 half (deadzone 0.1 rescaled): y at -(0.4/0.9)*0.05; no z; open.
    np.testing.assert_allclose(velocity, [0.05, -0.05 * 0.4 / 0.9, 0.0, 1.0])
    assert joy.velocity([np.nan, 1.0], [0, 0, 0, 0, 1], gripper_axis=3) is None
    with pytest.raises(ValueError, match="one scale per"):
        ArmJoyMapping(axes=(0, 1), scales=(1.0,))


def test_joint_space_teleop_moves_within_limits_bounds_the_lead_and_freezes_on_release(limits):
    low, high = limits
    teleop = ArmTeleop("joint", low, high, GRIPPER, max_lead=0.3)
    measured = np.array(HOME, dtype=np.float64)
    velocity = np.zeros(6)
    velocity[0] = 1.0  # shoulder_pan at 1 rad/s, the arm not following
    for _ in range(10):
        positions, times = teleop.chunk(velocity, measured, 0.1, points=3, period=0.1)
    np.testing.assert_allclose(times, [0.1, 0.2, 0.3])
    assert positions[0][0] == pytest.approx(measured[0] + 0.3)  # led by max_lead, not 1 rad
    assert np.all(positions >= low - 1e-12) and np.all(positions <= high + 1e-12)
    np.testing.assert_allclose(positions[:, 1:], np.repeat(measured[None, 1:], 3, 0))
    # Released: the measured pose is frozen once; a sagging measurement does not drag the hold down.
    held, _ = teleop.chunk(None, measured, 0.1, points=3, period=0.1)
    sagged = measured - 0.05
    again, _ = teleop.chunk(None, sagged, 0.1, points=3, period=0.1)
    np.testing.assert_allclose(held, np.repeat(measured[None], 3, 0))
    np.testing.assert_allclose(again, held)
    with pytest.raises(ValueError, match="6 axes"):
        teleop.chunk(np.zeros(4), measured, 0.1, points=3, period=0.1)


def test_cartesian_teleop_moves_the_tool_straight_and_keeps_the_jaws_axis(kinematics, limits):
    low, high = limits
    teleop = ArmTeleop("cartesian", low, high, GRIPPER, max_lead=0.03, kinematics=kinematics)
    measured = np.array(HOME, dtype=np.float64)
    start_tool, start_axis = kinematics.forward(measured)
    # Tool up at 5 cm/s, gripper closing: one 0.1 s tick from the measured pose.
    positions, _ = teleop.chunk(np.array([0.0, 0.0, 0.05, -0.5]), measured, 0.1, points=3, period=0.1)
    tools = np.array([kinematics.forward(q)[0] for q in positions])
    # Each chunk point 5 mm above the last, x and y kept (IK error well under a millimetre).
    np.testing.assert_allclose(tools[:, 2] - start_tool[2], [0.005, 0.010, 0.015], atol=5e-4)
    np.testing.assert_allclose(tools[:, :2], np.repeat(start_tool[None, :2], 3, 0), atol=5e-4)
    for q in positions:
        assert np.dot(kinematics.forward(q)[1], start_axis) > np.cos(np.radians(3))
    assert positions[0][GRIPPER] == pytest.approx(measured[GRIPPER] - 0.05)
    np.testing.assert_allclose(positions[:, JOINT_NAMES.index("wrist_roll")], measured[4])  # roll held
    # The arm does not follow: the target stops max_lead (3 cm) from the measured tool point.
    for _ in range(20):
        positions, _ = teleop.chunk(np.array([0.05, 0.0, 0.0, 0.0]), measured, 0.1, points=1, period=0.1)
    reached = kinematics.forward(positions[0])[0]
    assert np.linalg.norm(reached - start_tool) == pytest.approx(0.03 * 1.0, abs=2e-3)
    assert np.all(positions >= low) and np.all(positions <= high)
    with pytest.raises(ValueError, match="kinematics"):
        ArmTeleop("cartesian", low, high, GRIPPER, max_lead=0.03)


def test_teleop_session_drives_an_arm_by_keys_in_cartesian_space(limits):
    low, high = limits
    now = [0.0]
    settings = TeleopSettings(
        source="keyboard",
        joint_names=JOINT_NAMES,
        space="cartesian",
        gripper_joint="gripper",
        speed=0.05,
        max_speed=0.2,
        max_lead=0.5,
    )
    session = TeleopSession(settings, low, high, clock=lambda: now[0])
    kinematics = session.arm.integrator.kinematics  # type: ignore[union-attr]
    measured = np.array(HOME, dtype=np.float64)
    session.observe_state(0, measured)
    session.press_keys(parse_keys(b"r"))
    chunk = session.tick(100_000_000)
    assert chunk is not None and chunk.positions.shape == (3, 6)
    rise = kinematics.forward(chunk.positions[0])[0] - kinematics.forward(measured)[0]
    np.testing.assert_allclose(rise, [0.0, 0.0, 0.005], atol=5e-4)  # 5 cm/s for one 0.1 s tick
    with pytest.raises(ValueError, match="gripper_joint"):
        TeleopSettings(joint_names=JOINT_NAMES, gripper_joint="jaw")
    with pytest.raises(ValueError, match="needs 5 axes"):
        TeleopSettings(source="joy", joint_names=JOINT_NAMES, gripper_joint="gripper", joy_joint_axes=(0, 1)).arm_joy()
