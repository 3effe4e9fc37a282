"""So101Sim: per-seed layouts, joint position control at 10 Hz, the success rule and the episode's end."""

from __future__ import annotations

import numpy as np
import pytest

from rla_wm.envs.so101.layout import (
    BEARING,
    CUBE_RADIUS,
    MAX_DISTANCE,
    MIN_DISTANCE,
    MIN_PATH_RADIUS,
    path_radius,
    sample_layout,
)
from rla_wm.envs.so101.scene import CUBE_HALF, ZONE_RADIUS
from rla_wm.envs.so101.sim import CONTROL_HZ, HOME, So101Sim, coverage, is_success

MAX_STEPS = 15


@pytest.fixture(scope="module")
def sim():
    sim = So101Sim(max_steps=MAX_STEPS, width=64, height=48)
    yield sim
    sim.close()


def cube_pose(x: float, y: float, z: float = CUBE_HALF, yaw: float = 0.0) -> np.ndarray:
    return np.array([x, y, z, np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])


def test_reset_is_reproducible_per_seed(sim):
    first = sim.reset(3)
    for _ in range(3):  # move things, so the second reset has something to undo
        sim.step(HOME + 0.3)
    again = sim.reset(3)
    assert again.step == 0 and again.time == 0.0
    for field in ("joint_positions", "joint_velocities", "cube_pose", "zone"):
        assert np.array_equal(getattr(first, field), getattr(again, field)), field
    for camera, image in first.images.items():
        assert np.array_equal(image, again.images[camera]), camera


def test_layouts_differ_across_seeds(sim):
    frames = [sim.reset(seed) for seed in range(8)]
    layouts = np.array([[*frame.cube_pose[:2], *frame.zone[:2]] for frame in frames])
    gaps = np.linalg.norm(layouts[:, None] - layouts[None], axis=-1)[np.triu_indices(8, 1)]
    assert gaps.min() > 0.01  # every pair of episodes differs in where the cube or the zone is
    assert np.ptp(layouts, axis=0).min() > 0.05  # and both spread over the workspace
    assert not np.array_equal(sim.reset(0).images["front"], sim.reset(1).images["front"])


def test_layouts_start_unsolved_and_inside_the_workspace():
    for seed in range(300):
        layout = sample_layout(seed)
        distance = np.linalg.norm(layout.zone_xy - layout.cube_xy)
        assert MIN_DISTANCE <= distance <= MAX_DISTANCE, seed
        assert CUBE_RADIUS[0] <= np.linalg.norm(layout.cube_xy) <= CUBE_RADIUS[1], seed
        assert BEARING[0] <= np.arctan2(layout.cube_xy[1], layout.cube_xy[0]) <= BEARING[1], seed
        # The straight path never cuts close past the base, where the tool cannot follow.
        path = layout.cube_xy + np.linspace(0.0, 1.0, 50)[:, None] * (layout.zone_xy - layout.cube_xy)
        closest = np.linalg.norm(path, axis=1).min()
        assert closest >= MIN_PATH_RADIUS - 1e-9, seed
        assert path_radius(layout.cube_xy, layout.zone_xy) == pytest.approx(closest, abs=2e-3)
        assert coverage(cube_pose(*layout.cube_xy, yaw=layout.cube_yaw), np.array([*layout.zone_xy, ZONE_RADIUS])) == 0


def test_reset_frame_is_not_a_success(sim):
    for seed in range(5):
        frame = sim.reset(seed)
        assert not frame.success and not frame.done and frame.coverage == 0.0
        assert frame.distance > ZONE_RADIUS
        # The cube rests on the table where the layout put it.
        assert np.allclose(frame.cube_pose[:2], sim.layout.cube_xy) and abs(frame.cube_pose[2] - CUBE_HALF) < 1e-3


def test_a_step_moves_every_joint_toward_its_target(sim):
    start = sim.reset(0)
    target = start.joint_positions + np.array([0.3, -0.25, 0.25, -0.3, 0.4, 0.5])
    frame = sim.step(target)
    assert frame.step == 1 and frame.time == pytest.approx(1.0 / CONTROL_HZ)
    before = np.abs(target - start.joint_positions)
    after = np.abs(target - frame.joint_positions)
    assert (after < before * 0.7).all(), (before, after)
    for _ in range(9):
        frame = sim.step(target)
    # The servos hold it closely (their gravity sag is a few hundredths of a radian).
    assert np.abs(target - frame.joint_positions).max() < 0.06


def test_targets_are_clipped_to_the_urdf_limits_and_bad_ones_refused(sim):
    sim.reset(0)
    with pytest.raises(ValueError, match="6 finite joint positions"):
        sim.step(np.zeros(5))
    with pytest.raises(ValueError, match="finite"):
        sim.step(np.array([0.0, 0.0, np.nan, 0.0, 0.0, 0.0]))
    assert np.array_equal(sim.clip(np.full(6, 100.0)), sim.limits.upper)
    assert np.array_equal(sim.clip(np.full(6, -100.0)), sim.limits.lower)
    pan = sim.joint_names.index("shoulder_pan")
    target = HOME.copy()
    target[pan] = 100.0
    for _ in range(8):
        frame = sim.step(target)
    assert frame.joint_positions[pan] <= sim.limits.upper[pan] + 0.02


def test_the_episode_ends_at_max_steps_and_then_stands_still(sim):
    frame = sim.reset(1)
    while not frame.done:
        frame = sim.step(HOME)
    assert frame.step == MAX_STEPS and not frame.success
    time = sim.data.time
    assert sim.step(HOME + 0.5) is frame
    assert sim.data.time == time


def test_goal_images_show_the_cube_on_the_zone_and_leave_the_episode_alone(sim):
    frame = sim.reset(2)
    qpos = sim.data.qpos.copy()
    goal = sim.goal_images()
    assert set(goal) == set(frame.images)
    assert not np.array_equal(goal["front"], frame.images["front"])
    assert np.array_equal(sim.data.qpos, qpos)
    assert np.array_equal(sim.observe().images["front"], frame.images["front"])


def test_success_needs_the_cube_centre_over_the_zone_flat_and_at_rest():
    zone = np.array([0.2, 0.05, ZONE_RADIUS])
    still = np.zeros(6)
    assert is_success(cube_pose(0.2, 0.05), still, zone)
    assert is_success(cube_pose(0.2 + ZONE_RADIUS * 0.95, 0.05), still, zone)
    assert not is_success(cube_pose(0.2 + ZONE_RADIUS * 1.05, 0.05), still, zone)
    assert not is_success(cube_pose(0.2, 0.05), np.array([0.05, 0, 0, 0, 0, 0]), zone)  # sliding through
    assert not is_success(cube_pose(0.2, 0.05), np.array([0, 0, 0, 0, 0, 2.0]), zone)  # spinning
    assert not is_success(cube_pose(0.2, 0.05, z=0.04), still, zone)  # lifted


def test_coverage_is_the_part_of_the_cube_over_the_zone():
    zone = np.array([0.2, 0.05, ZONE_RADIUS])
    assert coverage(cube_pose(0.2, 0.05, yaw=0.3), zone) == 1.0
    assert coverage(cube_pose(0.4, 0.05), zone) == 0.0
    half = coverage(cube_pose(0.2 + ZONE_RADIUS, 0.05), zone)  # centre on the rim: about half
    assert 0.35 < half < 0.65
    assert coverage(cube_pose(0.2 + ZONE_RADIUS - CUBE_HALF / 2, 0.05), zone) > half


def test_rendering_then_triton_in_one_process():
    """Mesa and triton each load an LLVM: triton imported after MuJoCo rendered used to kill the process
    (segfault), which any process that simulates the arm and runs a LeRobot policy would hit."""
    import subprocess
    import sys

    pytest.importorskip("triton")
    script = (
        "from rla_wm.envs.so101.sim import So101Sim\n"
        "sim = So101Sim(max_steps=2, width=32, height=24)\n"
        "sim.reset(0)\n"
        "assert all(image.mean() > 0 for image in sim.render().values())\n"
        "sim.close()\n"
        "import triton\n"
        "print('survived')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "survived" in result.stdout
