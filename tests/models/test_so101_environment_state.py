"""The push-cube task's environment state tokens, and the sim_arm node's settings."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rla_wm.control.settings import setting_specs
from rla_wm.envs.so101.environment_state import (
    CUBE_STATE_CHANNELS,
    CUBE_STATE_NAMES,
    cube_state_from_tokens,
    cube_state_tokens,
)
from rla_wm.envs.so101.expert import So101Expert
from rla_wm.envs.so101.sim import So101Sim
from rla_wm.envs.so101.sim_arm_settings import SimArmSettings


def test_tokens_round_trip_the_cube_pose_and_zone():
    pose = np.array([0.21, -0.07, 0.015, 0.9, 0.0, 0.0, 0.43588989])
    zone = np.array([0.25, 0.1, 0.04])
    tokens = cube_state_tokens(pose, zone)
    assert tokens.shape == (1, CUBE_STATE_CHANNELS) == (1, len(CUBE_STATE_NAMES)) and tokens.dtype == np.float32
    back_pose, back_zone = cube_state_from_tokens(tokens[0])
    assert np.allclose(back_pose[:3], pose[:3], atol=1e-7) and np.allclose(back_zone, zone, atol=1e-7)
    assert np.allclose(back_pose[3:], pose[3:] / np.linalg.norm(pose[3:]), atol=1e-7)
    # One rotation, one encoding: q and -q give the same tokens.
    flipped = np.concatenate([pose[:3], -pose[3:]])
    assert np.array_equal(cube_state_tokens(flipped, zone), tokens)
    assert back_pose[3] >= 0


def test_tokens_refuse_what_is_not_a_pose():
    zone = np.array([0.25, 0.1, 0.04])
    for pose in (np.zeros(7), np.full(7, np.nan), np.ones(6)):
        with pytest.raises(ValueError):
            cube_state_tokens(pose, zone)
    with pytest.raises(ValueError, match="channels"):
        cube_state_from_tokens(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="finite"):
        cube_state_from_tokens(np.full((1, CUBE_STATE_CHANNELS), np.inf))


def test_the_expert_acts_the_same_on_decoded_tokens_as_on_the_frame():
    sim = So101Sim(max_steps=10, render_images=False)
    try:
        frame = sim.reset(5)
        pose, zone = cube_state_from_tokens(cube_state_tokens(frame.cube_pose, frame.zone)[0])
        from_frame = So101Expert(sim.model).act(frame)
        from_tokens = So101Expert(sim.model).act_on_state(frame.joint_positions, pose, zone)
    finally:
        sim.close()
    assert np.allclose(from_frame, from_tokens, atol=1e-4)


def test_every_setting_is_described_and_update_rate_checked():
    specs = setting_specs(SimArmSettings)
    assert [spec.name for spec in specs] == [field.name for field in dataclasses.fields(SimArmSettings)]
    assert all(spec.description for spec in specs)
    assert SimArmSettings().image_width == SimArmSettings().image_height == 128
    with pytest.raises(ValueError, match="update_rate"):
        SimArmSettings(update_rate=25)
