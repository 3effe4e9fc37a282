"""The push-cube scene: the wheel's SO-101 arm on a table, a cube, a marked target zone, two cameras.

The scene is MJCF written here (`scene_xml`) that includes the wheel's arm MJCF unchanged. It is
compiled from memory: the arm MJCF and its meshes are handed to MuJoCo as files of a virtual
file system, the meshes as coarser copies (see `meshes.py`). The wrist camera is added to the
arm's ``gripper`` body (the wrist-roll link, which carries the fixed jaw, as on the real arm)
through MuJoCo's model editing API, since MJCF cannot add a child to a body of an included file.

Rendering is kept cheap: no shadows, no multisampling, no textures, and an offscreen buffer the
size of the cameras' images.

Frame: the arm's base at the origin on the table top (z = 0), reaching along +x.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import mujoco
import numpy as np

from rla_wm.envs.so101 import assets, meshes

SCENE_CAMERA = "front"
WRIST_CAMERA = "wrist"
CAMERAS = (SCENE_CAMERA, WRIST_CAMERA)
CUBE_BODY = "cube"
CUBE_JOINT = "cube"
ZONE_GEOM = "zone"
TABLE_GEOM = "table"
TOOL_SITE = "gripperframe"  # the arm MJCF's site at the fixed jaw's tip: the point the expert pushes with
GRIPPER_BODY = "gripper"  # the arm MJCF's wrist-roll link

CUBE_HALF = 0.015  # m: a 3 cm cube
CUBE_MASS = 0.03  # kg
ZONE_RADIUS = 0.04  # m
ZONE_THICKNESS = 0.0005  # m, drawn just above the table so it never flickers into it
MESH_CELL = 0.002  # m, vertex clustering grid of the rendered and collided meshes


@dataclass(frozen=True)
class SceneOptions:
    width: int = 128
    height: int = 128
    mesh_cell: float | None = MESH_CELL  # None: the shipped meshes, unchanged

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"camera size must be positive, got {self.width}x{self.height}")
        if self.mesh_cell is not None and self.mesh_cell <= 0:
            raise ValueError(f"mesh_cell must be positive or None, got {self.mesh_cell}")


def _xyaxes(position: tuple[float, float, float], target: tuple[float, float, float]) -> str:
    """MJCF ``xyaxes`` of a camera at `position` looking at `target` with the image's up toward +z."""
    forward = np.subtract(target, position, dtype=float)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, (0.0, 0.0, 1.0))
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    return " ".join(f"{value:.6f}" for value in (*right, *up))


# The scene camera: in front of the arm, above the far edge of the table, looking down at the
# workspace so that the cube, the zone and the gripper are all in view.
SCENE_CAMERA_POS = (0.52, 0.0, 0.40)
SCENE_CAMERA_TARGET = (0.17, 0.0, 0.0)
SCENE_CAMERA_FOVY = 58.0
# The wrist camera, in the gripper body's frame (the jaws point along its -z and open along x):
# 4.5 cm to the side of the jaws, 2 cm down them, looking along them and turned 15 degrees toward
# them, so both jaw tips sit at the top of the image and the table ahead of them fills the rest.
WRIST_CAMERA_POS = (0.0, -0.045, -0.02)
WRIST_CAMERA_QUAT = (0.9914449, 0.1305262, 0.0, 0.0)  # 15 degrees about the body's x axis
WRIST_CAMERA_FOVY = 75.0


def scene_xml(options: SceneOptions) -> str:
    """The scene MJCF; it includes the arm MJCF by its file name."""
    h = CUBE_HALF
    return f"""<mujoco model="so101_push_cube">
  <include file="{assets.ARM_XML}"/>
  <option timestep="0.002" integrator="implicitfast"/>
  <visual>
    <global offwidth="{options.width}" offheight="{options.height}"/>
    <quality shadowsize="0" offsamples="0"/>
    <headlight ambient="0.35 0.35 0.35" diffuse="0.45 0.45 0.45" specular="0 0 0"/>
  </visual>
  <worldbody>
    <light name="sun" directional="true" pos="0 0 1" dir="0.3 0.2 -1" castshadow="false"
           diffuse="0.5 0.5 0.5" specular="0 0 0"/>
    <geom name="{TABLE_GEOM}" type="box" pos="0.15 0 -0.02" size="0.4 0.4 0.02" rgba="0.62 0.55 0.45 1"/>
    <geom name="{ZONE_GEOM}" type="cylinder" pos="0.25 0.1 {ZONE_THICKNESS}" size="{ZONE_RADIUS} {ZONE_THICKNESS}"
          contype="0" conaffinity="0" rgba="0.15 0.65 0.25 1"/>
    <body name="{CUBE_BODY}" pos="0.25 0 {h}">
      <freejoint name="{CUBE_JOINT}"/>
      <geom name="cube" type="box" size="{h} {h} {h}" mass="{CUBE_MASS}" rgba="0.85 0.15 0.15 1"/>
    </body>
    <camera name="{SCENE_CAMERA}" pos="{" ".join(map(str, SCENE_CAMERA_POS))}"
            xyaxes="{_xyaxes(SCENE_CAMERA_POS, SCENE_CAMERA_TARGET)}" fovy="{SCENE_CAMERA_FOVY}"/>
  </worldbody>
</mujoco>
"""


@functools.lru_cache(maxsize=4)
def mesh_files(mesh_cell: float | None) -> dict[str, bytes]:
    """{file name: STL bytes} of the arm's meshes, clustered on `mesh_cell` (None: as shipped).

    Cached: clustering all meshes takes about a second, and a process may build several scenes.
    """
    files = {}
    for path in assets.mesh_paths():
        data = path.read_bytes()
        files[path.name] = data if mesh_cell is None else meshes.coarse_stl(data, mesh_cell)
    return files


def build_spec(options: SceneOptions | None = None) -> mujoco.MjSpec:
    """The scene as an editable MuJoCo spec (arm, table, cube, zone, both cameras)."""
    options = options or SceneOptions()
    spec = mujoco.MjSpec.from_string(
        scene_xml(options),
        include={assets.ARM_XML: assets.arm_xml_path().read_bytes()},
        assets=dict(mesh_files(options.mesh_cell)),
    )
    gripper = spec.body(GRIPPER_BODY)
    if gripper is None:
        raise ValueError(f"{assets.arm_xml_path()} has no body {GRIPPER_BODY!r} to carry the wrist camera")
    gripper.add_camera(name=WRIST_CAMERA, pos=WRIST_CAMERA_POS, quat=WRIST_CAMERA_QUAT, fovy=WRIST_CAMERA_FOVY)
    return spec


def build_model(options: SceneOptions | None = None) -> mujoco.MjModel:
    """The compiled scene."""
    return build_spec(options).compile()
