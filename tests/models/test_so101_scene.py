"""The SO-101 push-cube scene (rla_wm.envs.so101): the arm from the wheel, both cameras, cheap meshes."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest

from rla_wm.envs.so101 import assets, meshes
from rla_wm.envs.so101.scene import CAMERAS, CUBE_JOINT, MESH_CELL, ZONE_GEOM, mesh_files
from rla_wm.envs.so101.sim import JOINT_NAMES, So101Sim

from conftest import so101_urdf

WIDTH, HEIGHT = 96, 72  # not square, and not the default size: the offscreen buffer must follow


@pytest.fixture(scope="module")
def sim():
    sim = So101Sim(max_steps=20, width=WIDTH, height=HEIGHT)
    yield sim
    sim.close()


def urdf_joint_limits() -> dict[str, tuple[float, float, float]]:
    """{joint: (lower, upper, velocity)} of the URDF's movable joints, read here with ElementTree."""
    root = ET.parse(so101_urdf()).getroot()
    limits = {}
    for joint in root.findall("joint"):
        if joint.get("type") in ("revolute", "prismatic"):
            limit = joint.find("limit")
            limits[joint.get("name")] = tuple(float(limit.get(key)) for key in ("lower", "upper", "velocity"))
    return limits


def red_pixels(image: np.ndarray) -> int:
    """Pixels of the red cube (the arm is yellow and black, the table beige, the zone green)."""
    r, g, b = (image[..., channel].astype(int) for channel in range(3))
    return int(np.sum((r > 120) & (g < 70) & (b < 70)))


def test_the_arm_comes_from_the_installed_wheel():
    assert assets.urdf_path() == so101_urdf()
    assert assets.arm_xml_path().is_file() and len(assets.mesh_paths()) >= 10


def test_joint_names_and_limits_are_the_urdfs(sim):
    urdf = urdf_joint_limits()
    assert set(JOINT_NAMES) == set(urdf)
    assert sim.limits.names == JOINT_NAMES == sim.joint_names
    for index, name in enumerate(JOINT_NAMES):
        lower, upper, velocity = urdf[name]
        assert sim.limits.lower[index] == lower, name
        assert sim.limits.upper[index] == upper, name
        assert sim.limits.max_velocity[index] == velocity, name
        # The simulated arm has the same joint and range (the MJCF writes more digits).
        assert np.allclose(sim.model.joint(name).range, (lower, upper), atol=1e-4), name
        assert np.allclose(sim.model.actuator(name).ctrlrange, (lower, upper), atol=1e-4), name


def test_both_cameras_render_at_the_configured_size_and_see_the_cube(sim):
    frame = sim.reset(0)
    assert sim.cameras == CAMERAS == ("front", "wrist")
    assert set(frame.images) == set(CAMERAS)
    for name, image in frame.images.items():
        assert image.shape == (HEIGHT, WIDTH, 3) and image.dtype == np.uint8, name
        assert image.std() > 10, f"{name} renders a (nearly) blank image"
    assert not np.array_equal(frame.images["front"], frame.images["wrist"])
    for seed in range(4):  # wherever the layout puts it, the scene camera sees the cube
        assert red_pixels(sim.reset(seed).images["front"]) >= 4, seed


def test_zone_is_only_drawn_and_the_cube_is_free(sim):
    zone = sim.model.geom(ZONE_GEOM)
    assert zone.contype[0] == 0 and zone.conaffinity[0] == 0
    assert sim.model.joint(CUBE_JOINT).type[0] == 0  # mjJNT_FREE
    # Rendering is set up cheaply: no shadow map, no multisampling.
    assert sim.model.vis.quality.shadowsize == 0 and sim.model.vis.quality.offsamples == 0


def test_coarse_meshes_keep_each_parts_outline_with_far_fewer_triangles(sim):
    coarse_files = mesh_files(MESH_CELL)  # what the scene was built from (cached by the sim fixture)
    total_original = total_coarse = 0
    for path in assets.mesh_paths():
        original = meshes.read_stl(path.read_bytes()).reshape(-1, 3)
        coarse = meshes.read_stl(coarse_files[path.name]).reshape(-1, 3)
        total_original += len(original)
        total_coarse += len(coarse)
        assert len(coarse) < len(original), path.name
        # Every part keeps its extent to within one cell.
        assert np.allclose(coarse.min(axis=0), original.min(axis=0), atol=MESH_CELL), path.name
        assert np.allclose(coarse.max(axis=0), original.max(axis=0), atol=MESH_CELL), path.name
    assert total_coarse < total_original / 5
    assert int(sim.model.mesh_facenum.sum()) * 3 == total_coarse
