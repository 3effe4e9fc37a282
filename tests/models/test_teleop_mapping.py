"""Teleop input mapping (pure): keys, gamepad, velocity integration, chunks, play."""

from __future__ import annotations

import numpy as np
import pytest

from rla_wm.control.teleop import (
    DOWN,
    FASTER,
    HOLD,
    LEFT,
    QUIT,
    RIGHT,
    SLOWER,
    UP,
    JoyMapping,
    KeyboardTeleop,
    PlaySource,
    VelocityIntegrator,
    hold_chunk,
    limit_lead,
    parse_keys,
)


def test_parse_keys_handles_letters_arrows_and_unknown_sequences():
    data = b"wAsD\x1b[A\x1b[B\x1b[C\x1b[D\x1bOA+-= _q\x1b[15~x\x03"
    assert parse_keys(data) == [
        UP,
        LEFT,
        DOWN,
        RIGHT,
        UP,
        DOWN,
        RIGHT,
        LEFT,
        UP,
        FASTER,
        SLOWER,
        FASTER,
        HOLD,
        SLOWER,
        QUIT,
        QUIT,
    ]


def test_keyboard_velocity_direction_speed_hold_and_timeout():
    keys = KeyboardTeleop(speed=100.0, speed_factor=2.0, key_timeout=0.3)
    keys.press(RIGHT, now=0.0)
    np.testing.assert_allclose(keys.velocity(now=0.1), [100.0, 0.0])
    keys.press(UP, now=0.1)  # image frame: up is -y; two keys -> diagonal at the same speed
    np.testing.assert_allclose(keys.velocity(now=0.2), [100.0 / np.sqrt(2), -100.0 / np.sqrt(2)])
    keys.press(LEFT, now=0.2)  # reversing replaces, it does not cancel out
    np.testing.assert_allclose(keys.velocity(now=0.25), [-100.0 / np.sqrt(2), -100.0 / np.sqrt(2)])
    assert np.all(keys.velocity(now=1.0) == 0.0), "a key moves the robot only while it repeats"
    keys.press(FASTER, now=1.0)
    keys.press(DOWN, now=1.0)
    np.testing.assert_allclose(keys.velocity(now=1.1), [0.0, 200.0])
    keys.press(HOLD, now=1.1)
    assert np.all(keys.velocity(now=1.1) == 0.0)
    for _ in range(20):
        keys.press(SLOWER, now=1.2)
    assert keys.speed == keys.min_speed
    keys.press(DOWN, now=1.3)
    keys.press(QUIT, now=1.3)
    assert keys.quit and np.all(keys.velocity(now=1.3) == 0.0), "quit also stops the robot"


def test_joy_mapping_axes_deadzone_and_deadman():
    joy = JoyMapping(deadzone=0.2, max_speed=100.0, deadman_button=4)
    pressed = [0, 0, 0, 0, 1]
    # joy_node convention: stick left = +1 on axis 0, stick up = +1 on axis 1.
    np.testing.assert_allclose(joy.velocity([-1.0, 0.0], pressed), [100.0, 0.0])  # right -> +x
    np.testing.assert_allclose(joy.velocity([0.0, 1.0], pressed), [0.0, -100.0])  # up -> -y (image frame)
    np.testing.assert_allclose(joy.velocity([0.15, -0.1], pressed), [0.0, 0.0])  # inside the deadzone
    np.testing.assert_allclose(joy.velocity([-0.6, 0.0], pressed), [50.0, 0.0])  # rescaled past the deadzone
    assert joy.velocity([-1.0, 0.0], [0, 0, 0, 0, 0]) is None, "deadman released -> hold"
    assert joy.velocity([-1.0, 0.0], [1, 1]) is None, "a message without the deadman button -> hold"
    assert joy.velocity([1.0], pressed) is None, "too few axes -> hold"
    assert joy.velocity([float("nan"), 0.0], pressed) is None
    free = JoyMapping(deadman_button=-1, invert_x=False, max_speed=10.0, deadzone=0.0)
    np.testing.assert_allclose(free.velocity([1.0, 0.0], []), [10.0, 0.0])
    with pytest.raises(ValueError):
        JoyMapping(deadzone=1.0)


def test_integrator_moves_clips_limits_the_lead_and_holds():
    integ = VelocityIntegrator(low=np.array([0.0, 0.0]), high=np.array([512.0, 512.0]), max_lead=30.0)
    measured = np.array([100.0, 100.0])
    np.testing.assert_allclose(integ.step(np.array([100.0, 0.0]), measured, 0.1), [110.0, 100.0])
    np.testing.assert_allclose(integ.step(np.array([100.0, 0.0]), measured, 0.1), [120.0, 100.0])
    # A robot that does not follow (blocked): the target stays within max_lead of it.
    for _ in range(10):
        target = integ.step(np.array([100.0, 0.0]), measured, 0.1)
    np.testing.assert_allclose(target, [130.0, 100.0])
    positions, times = integ.chunk(np.array([100.0, 0.0]), 3, 0.1)
    np.testing.assert_allclose(times, [0.1, 0.2, 0.3])
    np.testing.assert_allclose(positions, [[130.0, 100.0], [140.0, 100.0], [150.0, 100.0]])
    # Deadman released: the target snaps to the measured position and the chunk stays there.
    np.testing.assert_allclose(integ.step(None, measured, 0.1), measured)
    positions, _ = integ.chunk(None, 3, 0.1)
    np.testing.assert_allclose(positions, np.repeat(measured[None], 3, 0))
    # Joint limits: never beyond them.
    at_wall = np.array([505.0, 5.0])
    integ.step(None, at_wall, 0.1)
    for _ in range(5):
        target = integ.step(np.array([200.0, -200.0]), at_wall, 0.1)
    positions, _ = integ.chunk(np.array([200.0, -200.0]), 4, 0.1)
    assert (positions >= 0.0).all() and (positions <= 512.0).all()
    np.testing.assert_allclose(target, [512.0, 0.0])


def test_hold_chunk_and_limit_lead():
    positions, times = hold_chunk(np.array([1.0, 2.0]), 3, 0.1)
    np.testing.assert_allclose(positions, [[1.0, 2.0]] * 3)
    np.testing.assert_allclose(times, [0.1, 0.2, 0.3])
    np.testing.assert_allclose(limit_lead(np.array([100.0, 0.0]), np.zeros(2), 40.0), [40.0, 0.0])
    np.testing.assert_allclose(limit_lead(np.array([10.0, 0.0]), np.zeros(2), 40.0), [10.0, 0.0])
    with pytest.raises(ValueError):
        hold_chunk(np.zeros(2), 0, 0.1)


def test_play_is_seeded_and_moves():
    def run(seed: int) -> np.ndarray:
        play = PlaySource(seed)
        position = np.array([200.0, 200.0])
        return np.array([play(position) for _ in range(20)])

    a, b = run(3), run(3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, run(4))
    assert np.linalg.norm(a[-1] - a[0]) > 5.0
