"""Inverse kinematics of the SO-101 tool point on the MuJoCo model: damped least squares.

The task is the tool point's position plus the direction the jaws point (a pointing axis). The
wrist roll is held: it only turns the jaws about that axis. The expert asks for axes in the
vertical plane through the base and the target, the plane the arm moves in, so the four other
joints (pan, lift, elbow, wrist flex) can meet position and axis together where the arm reaches;
the axis is weighted below the position, so at the workspace's edge the position wins, and the
damping keeps joint moves small and smooth near singular poses. Jacobians come from ``mj_jacSite``
on a private ``MjData``, so the simulation being solved for is never touched.
"""

from __future__ import annotations

import mujoco
import numpy as np

from rla_wm.envs.so101.scene import GRIPPER_BODY, TOOL_SITE

IK_JOINTS = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex")  # the roll is held
DOWN = np.array([0.0, 0.0, -1.0])


class ArmKinematics:
    """Forward and inverse kinematics of the tool site, for joint vectors in `joint_names` order."""

    def __init__(self, model: mujoco.MjModel, joint_names: tuple[str, ...]) -> None:
        self._model = model
        self._data = mujoco.MjData(model)
        self._names = tuple(joint_names)
        missing = [name for name in IK_JOINTS if name not in self._names]
        if missing:
            raise ValueError(f"joint_names {self._names} lack the IK joints {missing}")
        self._qpos = np.array([model.joint(name).qposadr[0] for name in self._names])
        self._ik = np.array([self._names.index(name) for name in IK_JOINTS])  # indices into joint vectors
        self._dof = np.array([model.joint(name).dofadr[0] for name in IK_JOINTS])
        self._dofs = np.array([model.joint(name).dofadr[0] for name in self._names])
        self._lower = np.array([model.joint(name).range[0] for name in IK_JOINTS])
        self._upper = np.array([model.joint(name).range[1] for name in IK_JOINTS])
        self._site = model.site(TOOL_SITE).id
        self._body = model.body(GRIPPER_BODY).id

    def _pose(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._data.qpos[self._qpos] = q
        mujoco.mj_kinematics(self._model, self._data)
        # The jaws point along the gripper body's -z axis.
        return self._data.site_xpos[self._site].copy(), -self._data.xmat[self._body].reshape(3, 3)[:, 2]

    def forward(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(tool position (3,), unit pointing axis of the jaws (3,)) at joint vector `q`."""
        q = np.asarray(q, dtype=np.float64)
        if q.shape != (len(self._names),):
            raise ValueError(f"q must have {len(self._names)} entries ({self._names}), got shape {q.shape}")
        return self._pose(q)

    def solve(
        self,
        q: np.ndarray,
        position: np.ndarray,
        axis: np.ndarray = DOWN,
        axis_weight: float = 0.1,
        damping: float = 0.02,
        iterations: int = 40,
        max_joint_step: float = 0.2,
        tolerance: float = 1e-4,
    ) -> tuple[np.ndarray, float]:
        """Joint vector that puts the tool at `position` pointing along `axis`, starting from `q`.

        Only the IK joints change; the others keep their values from `q`. `axis_weight` is metres
        of position error one unit of axis error is worth. Returns (joints, remaining position
        error in metres); the result always lies within the joints' ranges.
        """
        q = np.array(q, dtype=np.float64)
        if q.shape != (len(self._names),):
            raise ValueError(f"q must have {len(self._names)} entries ({self._names}), got shape {q.shape}")
        target = np.asarray(position, dtype=np.float64)
        want = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
        jacp = np.zeros((3, self._model.nv))
        jacr = np.zeros((3, self._model.nv))
        error = np.inf
        for _ in range(iterations):
            tool, pointing = self._pose(q)
            position_error = target - tool
            error = float(np.linalg.norm(position_error))
            axis_error = want - pointing
            if error < tolerance and np.linalg.norm(axis_error) * axis_weight < tolerance:
                break
            mujoco.mj_comPos(self._model, self._data)
            mujoco.mj_jacSite(self._model, self._data, jacp, jacr, self._site)
            # d(pointing)/dt = omega x pointing = -[pointing]x omega.
            skew = np.array(
                [[0.0, -pointing[2], pointing[1]], [pointing[2], 0.0, -pointing[0]], [-pointing[1], pointing[0], 0.0]]
            )
            jacobian = np.vstack([jacp[:, self._dof], axis_weight * (-skew @ jacr[:, self._dof])])
            residual = np.concatenate([position_error, axis_weight * axis_error])
            step = jacobian.T @ np.linalg.solve(jacobian @ jacobian.T + damping**2 * np.eye(6), residual)
            step *= min(1.0, max_joint_step / max(float(np.abs(step).max()), 1e-12))
            q[self._ik] = np.clip(q[self._ik] + step, self._lower, self._upper)
        tool, _ = self._pose(q)
        return q, float(np.linalg.norm(target - tool))

    def gravity(self, q: np.ndarray) -> np.ndarray:
        """Joint torques (N m, `joint_names` order) that hold the arm still at `q` against gravity."""
        q = np.asarray(q, dtype=np.float64)
        if q.shape != (len(self._names),):
            raise ValueError(f"q must have {len(self._names)} entries ({self._names}), got shape {q.shape}")
        self._data.qpos[self._qpos] = q
        self._data.qvel[:] = 0.0
        mujoco.mj_kinematics(self._model, self._data)
        mujoco.mj_comPos(self._model, self._data)
        bias = np.zeros(self._model.nv)
        mujoco.mj_rne(self._model, self._data, 0, bias)  # at zero velocity: gravity only
        return bias[self._dofs]
