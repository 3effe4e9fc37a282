"""The simulated SO-101 arm on the push-cube task, behind a small API like `PushTSim`'s.

Commands are absolute joint position targets in radians for the six joints, in `JOINT_NAMES`
order (LeRobot's SO-101 order, the kinematic chain from the base out; the URDF file lists them
the other way round). The arm MJCF's position actuators track them, as the real arm's servos
do. One `step` holds the targets for one control period (1 / CONTROL_HZ s); `advance` and
`observe` split it for callers that change the targets within a period (trajectory
interpolation).

The task: push the cube into the target zone. Success, read from the simulator state: the
cube's centre lies over the zone (horizontal distance to the zone's centre at most its radius),
the cube rests flat on the table, and it is at rest (slower than 1 cm/s and 0.5 rad/s), so a
cube merely pushed across the zone does not count. The episode ends on success or after
`max_steps` control periods; later steps change nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import mujoco
import numpy as np

from rla_wm.control.limits import limits_from_urdf
from rla_wm.control.safety import JointLimits
from rla_wm.envs.so101 import assets
from rla_wm.envs.so101.layout import Layout, sample_layout
from rla_wm.envs.so101.scene import (
    CAMERAS,
    CUBE_HALF,
    CUBE_JOINT,
    MESH_CELL,
    SCENE_CAMERA,
    TOOL_SITE,
    ZONE_GEOM,
    ZONE_RADIUS,
    ZONE_THICKNESS,
    SceneOptions,
    build_model,
)

JOINT_NAMES = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")
CONTROL_HZ = 10
# Start pose: tool 22 cm out and 10 cm above the table, gripper at 0 rad (jaws almost shut),
# jaws pointing down and 30 degrees away from the base (solved once with `ArmKinematics`).
HOME = np.array([0.0, -0.74, 0.61, 1.18, 0.0, 0.0])
REST_SPEED = 0.01  # m/s
REST_SPIN = 0.5  # rad/s
FLAT_TOLERANCE = 0.003  # m: cube centre height within this of a cube lying on a face
# The cube's footprint sampled on this many points per side for `coverage`.
_COVERAGE_GRID = 10


def body_joint_noise(rng: np.random.Generator, std: float) -> np.ndarray:
    """Gaussian noise (rad, std `std`) on every joint but the gripper, in JOINT_NAMES order: the noise DART
    adds to the expert's executed targets (the jaws stay as the expert holds them)."""
    return rng.normal(0.0, std, len(JOINT_NAMES)) * (np.arange(len(JOINT_NAMES)) != JOINT_NAMES.index("gripper"))


def urdf_limits() -> JointLimits:
    """Position and velocity limits of `JOINT_NAMES`, read from the wheel's URDF."""
    path = assets.urdf_path()
    return limits_from_urdf(path.read_bytes(), JOINT_NAMES, source=f"URDF {path}")


@dataclass(frozen=True)
class So101Frame:
    joint_positions: np.ndarray  # (6,) rad, JOINT_NAMES order
    joint_velocities: np.ndarray  # (6,) rad/s
    images: dict[str, np.ndarray]  # camera name -> (H, W, 3) uint8 RGB; empty when rendering is off
    coverage: float  # fraction of the cube's footprint over the zone, 0..1
    success: bool
    done: bool
    step: int  # control periods since reset: simulated time x CONTROL_HZ, rounded
    time: float  # simulated seconds since reset
    # Privileged state for scripted experts and metrics (not a camera observation), world frame:
    cube_pose: np.ndarray = field(default_factory=lambda: np.full(7, np.nan))  # x y z (m), qw qx qy qz
    cube_velocity: np.ndarray = field(default_factory=lambda: np.full(6, np.nan))  # linear (m/s), angular (rad/s)
    zone: np.ndarray = field(default_factory=lambda: np.full(3, np.nan))  # centre x, y and radius (m)
    tool_position: np.ndarray = field(default_factory=lambda: np.full(3, np.nan))  # the fixed jaw's tip

    @property
    def position(self) -> np.ndarray:
        """The measured joint positions under the name Push-T's frame gives its robot's, so the in-process
        rollout (`rla_wm.evaluation.rollout`) runs either simulator."""
        return self.joint_positions

    @property
    def image(self) -> np.ndarray:
        """The scene camera's image: what the encoder and the gate watch (the launch files' camera_topic)."""
        return self.images[SCENE_CAMERA]

    @property
    def distance(self) -> float:
        """Horizontal distance of the cube's centre from the zone's centre (m)."""
        return float(np.linalg.norm(self.cube_pose[:2] - self.zone[:2]))


class So101Sim:
    """SO-101 push-cube in MuJoCo with a scene and a wrist camera; one `step` is 1 / CONTROL_HZ s."""

    def __init__(
        self,
        max_steps: int = 200,
        width: int = 128,
        height: int = 128,
        render_images: bool = True,
        mesh_cell: float | None = MESH_CELL,
    ) -> None:
        if max_steps <= 0:
            raise ValueError(f"max_steps must be positive, got {max_steps}")
        self.max_steps = max_steps
        self.limits = urdf_limits()
        self.model = build_model(SceneOptions(width=width, height=height, mesh_cell=mesh_cell))
        self.data = mujoco.MjData(self.model)
        model = self.model
        self._qpos = np.array([model.joint(name).qposadr[0] for name in JOINT_NAMES])
        self._qvel = np.array([model.joint(name).dofadr[0] for name in JOINT_NAMES])
        self._actuators = np.array([model.actuator(name).id for name in JOINT_NAMES])
        cube = model.joint(CUBE_JOINT)
        self._cube_qpos = int(cube.qposadr[0])
        self._cube_qvel = int(cube.dofadr[0])
        self._zone = model.geom(ZONE_GEOM).id
        self._tool = model.site(TOOL_SITE).id
        self._substeps = max(1, round(1.0 / (CONTROL_HZ * model.opt.timestep)))
        self._renderer = _renderer(model, width, height) if render_images else None
        self._layout: Layout | None = None
        self._frame: So101Frame | None = None

    @property
    def joint_names(self) -> tuple[str, ...]:
        return JOINT_NAMES

    @property
    def physics_steps(self) -> int:
        """MuJoCo steps in one control period (`advance` rounds to whole ones)."""
        return self._substeps

    @property
    def cameras(self) -> tuple[str, ...]:
        return CAMERAS if self._renderer is not None else ()

    @property
    def frame(self) -> So101Frame:
        if self._frame is None:
            raise RuntimeError("call reset() first")
        return self._frame

    @property
    def layout(self) -> Layout:
        if self._layout is None:
            raise RuntimeError("call reset() first")
        return self._layout

    def reset(self, seed: int) -> So101Frame:
        """Arm at HOME, cube and zone where `sample_layout(seed)` puts them."""
        layout = sample_layout(seed)
        model, data = self.model, self.data
        mujoco.mj_resetData(model, data)
        data.qpos[self._qpos] = HOME
        data.ctrl[self._actuators] = HOME
        half_yaw = layout.cube_yaw / 2.0
        data.qpos[self._cube_qpos : self._cube_qpos + 7] = (
            *layout.cube_xy,
            CUBE_HALF,
            np.cos(half_yaw),
            0.0,
            0.0,
            np.sin(half_yaw),
        )
        model.geom_pos[self._zone] = (*layout.zone_xy, ZONE_THICKNESS)
        mujoco.mj_forward(model, data)
        self._layout = layout
        self._frame = None
        self._frame = self.observe()
        return self._frame

    def clip(self, targets: np.ndarray) -> np.ndarray:
        """`targets` checked (six finite numbers) and clipped to the URDF's position limits."""
        targets = np.asarray(targets, dtype=np.float64)
        if targets.shape != (len(JOINT_NAMES),) or not np.isfinite(targets).all():
            raise ValueError(f"targets must be {len(JOINT_NAMES)} finite joint positions {JOINT_NAMES}, got {targets}")
        return np.clip(targets, self.limits.lower, self.limits.upper)

    def advance(self, targets: np.ndarray, seconds: float) -> None:
        """Hold position targets `targets` for `seconds` of simulated time (no observation, no render).

        `seconds` is rounded to whole physics steps (MuJoCo's 2 ms). Does nothing once the episode is
        done; `observe` is what decides that, so call it at least once per control period.
        """
        frame = self.frame
        if frame.done:
            return
        self.data.ctrl[self._actuators] = self.clip(targets)
        steps = round(seconds / self.model.opt.timestep)
        if steps > 0:
            mujoco.mj_step(self.model, self.data, nstep=steps)

    def joint_positions(self) -> np.ndarray:
        """The joints' positions now (rad, `JOINT_NAMES` order), without observing or rendering: what a
        controller reads between `advance` calls."""
        return self.data.qpos[self._qpos].copy()

    def step(self, targets: np.ndarray) -> So101Frame:
        """Drive the joints toward `targets` for one control period; a no-op once the episode is done."""
        if self.frame.done:
            return self.frame
        self.advance(targets, self._substeps * self.model.opt.timestep)
        self._frame = self.observe()
        return self._frame

    def render(self) -> dict[str, np.ndarray]:
        """Both cameras' images of the current state ({} when rendering is off)."""
        if self._renderer is None:
            return {}
        images = {}
        for camera in CAMERAS:
            self._renderer.update_scene(self.data, camera=camera)
            images[camera] = self._renderer.render().copy()
        return images

    def observe(self) -> So101Frame:
        """The current state as a frame (renders both cameras); once done, the frame that ended it.

        The frame becomes `frame`: after `advance` calls it is what decides that the episode is done.
        """
        if self._frame is not None and self._frame.done:
            return self._frame
        data = self.data
        cube_pose = data.qpos[self._cube_qpos : self._cube_qpos + 7].copy()
        cube_velocity = data.qvel[self._cube_qvel : self._cube_qvel + 6].copy()
        zone = np.array([*self.layout.zone_xy, ZONE_RADIUS])
        step = int(round(data.time * CONTROL_HZ))
        success = is_success(cube_pose, cube_velocity, zone)
        self._frame = So101Frame(
            joint_positions=data.qpos[self._qpos].copy(),
            joint_velocities=data.qvel[self._qvel].copy(),
            images=self.render(),
            coverage=coverage(cube_pose, zone),
            success=success,
            done=success or step >= self.max_steps,
            step=step,
            time=float(data.time),
            cube_pose=cube_pose,
            cube_velocity=cube_velocity,
            zone=zone,
            tool_position=data.site_xpos[self._tool].copy(),
        )
        return self._frame

    def goal_images(self) -> dict[str, np.ndarray]:
        """Both cameras' images of this episode solved: the cube flat on the zone's centre, the arm at HOME.

        The planner's goal. The running episode's state is restored afterwards.
        """
        if self._renderer is None:
            return {}
        model, data = self.model, self.data
        saved = (data.qpos.copy(), data.qvel.copy(), data.act.copy(), data.ctrl.copy(), data.time)
        try:
            data.qpos[self._qpos] = HOME
            data.qpos[self._cube_qpos : self._cube_qpos + 7] = (*self.layout.zone_xy, CUBE_HALF, 1.0, 0.0, 0.0, 0.0)
            mujoco.mj_forward(model, data)
            return self.render()
        finally:
            data.qpos[:], data.qvel[:], data.act[:], data.ctrl[:], data.time = saved
            mujoco.mj_forward(model, data)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


def _renderer(model: mujoco.MjModel, width: int, height: int) -> mujoco.Renderer:
    """An offscreen renderer for both cameras (they share its size), with a hint when OpenGL is missing."""
    try:
        return mujoco.Renderer(model, height=height, width=width)
    except Exception as err:  # the back ends raise assorted errors (ImportError, RuntimeError, GLError)
        backend = os.environ.get("MUJOCO_GL", "")
        raise RuntimeError(
            f"cannot render the SO-101 cameras (MUJOCO_GL={backend!r}): {err}. Headless rendering uses "
            "OSMesa: on Debian `apt-get install libosmesa6`; or pass render_images=False"
        ) from err


def is_success(cube_pose: np.ndarray, cube_velocity: np.ndarray, zone: np.ndarray) -> bool:
    """Cube centre over the zone, cube lying flat on the table, and at rest (see the module docstring)."""
    inside = np.linalg.norm(cube_pose[:2] - zone[:2]) <= zone[2]
    flat = abs(cube_pose[2] - CUBE_HALF) <= FLAT_TOLERANCE
    still = np.linalg.norm(cube_velocity[:3]) < REST_SPEED and np.linalg.norm(cube_velocity[3:]) < REST_SPIN
    return bool(inside and flat and still)


def coverage(cube_pose: np.ndarray, zone: np.ndarray) -> float:
    """Fraction of the cube's bottom face that lies over the zone (Push-T's coverage, for a cube)."""
    ticks = (np.arange(_COVERAGE_GRID) + 0.5) / _COVERAGE_GRID * 2.0 - 1.0
    u, v = np.meshgrid(ticks, ticks)
    local = np.stack([u.ravel(), v.ravel(), -np.ones(u.size)], axis=1) * CUBE_HALF
    rotation = np.zeros(9)
    mujoco.mju_quat2Mat(rotation, cube_pose[3:7])
    points = local @ rotation.reshape(3, 3).T + cube_pose[:3]
    return float(np.mean(np.linalg.norm(points[:, :2] - zone[:2], axis=1) <= zone[2]))
