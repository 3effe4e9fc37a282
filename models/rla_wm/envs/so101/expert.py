"""Scripted SO-101 expert: pushes the cube into the zone with the closed jaws, by inverse kinematics.

Inputs (a `So101Frame`): the joint positions, the cube's pose and the zone; output: the next six
joint position targets. Each control step it re-plans from the measured state:

- the push line runs through the cube's centre toward the zone's centre; the push point is just
  behind the cube on that line;
- with the tool on the table behind the cube and on the line, it pushes: the tool target moves
  past the push point by a step that shrinks as the cube nears the zone's centre, so the cube is
  dropped there rather than shoved through;
- otherwise it repositions: up to a travel height, over to above the push point, down;
- once the cube's centre is near the zone's centre it lifts the tool clear and holds, so the
  cube comes to rest (success needs it at rest); if the cube leaves, it pushes again.

The tool targets become joint targets through `ArmKinematics` (damped least squares on the MuJoCo
model), with the jaws pointing down and tilted away from the base by more the farther out the
tool is (the SO-101's wrist cannot point straight down at its reach's ends). The position servos
sag under gravity, so each command adds the model's gravity torque divided by the servo gain.

`python -m rla_wm.envs.so101.expert --episodes 50` measures the success rate in `So101Sim`.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import dataclass

import mujoco
import numpy as np

from rla_wm.envs.so101.kinematics import ArmKinematics
from rla_wm.envs.so101.scene import CUBE_HALF, SceneOptions, build_model
from rla_wm.envs.so101.sim import CONTROL_HZ, JOINT_NAMES, So101Frame, So101Sim

GRIPPER_CLOSED = 0.0  # rad: jaws shut, so they push as one block
PUSH_HEIGHT = 0.012  # m: tool point height while pushing (the cube is 3 cm tall)
TRAVEL_HEIGHT = 0.065  # m: tool point height when moving over the cube
STANDOFF = 0.012  # m: from the cube's face to the tool point at the push point
MAX_PUSH = 0.02  # m: how far past the push point the tool aims per step (0.2 m/s)
MAX_MOVE = 0.04  # m: longest tool move per step when repositioning
DONE_DISTANCE = 0.012  # m: cube centre this close to the zone centre: stop pushing
RESUME_DISTANCE = 0.025  # m: ... and push again only if it drifts this far
ON_LINE = 0.01  # m: largest sideways offset of the tool from the push line that still pushes
CLEARANCE = 0.006  # m: tool point at least this far behind the cube's back face counts as behind it
AT_HEIGHT = 0.012  # m: tool within this of the push height counts as down
TILT = ((0.12, 0.32), (np.radians(10.0), np.radians(35.0)))  # tool's distance from base -> tilt


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 1e-9 else np.array([1.0, 0.0])


def _limit(start: np.ndarray, goal: np.ndarray, length: float) -> np.ndarray:
    move = goal - start
    norm = float(np.linalg.norm(move))
    return goal if norm <= length else start + move * (length / norm)


class So101Expert:
    """The push-cube expert; call it on each frame, `reset()` between episodes."""

    def __init__(self, model: mujoco.MjModel | None = None) -> None:
        # Kinematics only: the sim's model when given, else the same scene (rendering is never set up).
        model = model if model is not None else build_model(SceneOptions())
        self.kinematics = ArmKinematics(model, JOINT_NAMES)
        self._gain = np.array([model.actuator(name).gainprm[0] for name in JOINT_NAMES])
        self._finished = False
        self._pushing = False
        self._solution: np.ndarray | None = None

    def reset(self) -> None:
        self._finished = False
        self._pushing = False
        self._solution = None

    @property
    def pushing(self) -> bool:
        """Whether the last command pushes the cube (the tool moves on past the push point)."""
        return self._pushing

    @property
    def solution(self) -> np.ndarray | None:
        """Joint positions the last command settles at (its IK solution, before gravity compensation)."""
        return None if self._solution is None else self._solution.copy()

    def plan_copy(self) -> So101Expert:
        """A copy with this expert's episode memory, for planning ahead without changing this one. It
        shares the kinematics (scratch MuJoCo data, used by one call at a time): a deep copy of the
        model per chunk would cost more than the plan."""
        clone = copy.copy(self)
        clone._solution = self.solution
        return clone

    def __call__(self, frame: So101Frame) -> np.ndarray:
        return self.act(frame)

    def _tool_target(self, joint_positions: np.ndarray, cube_xy: np.ndarray, zone_xy: np.ndarray) -> np.ndarray:
        """Where the tool point should go next (x, y, z in m), from the measured state; updates the phase."""
        tool, _ = self.kinematics.forward(joint_positions)
        cube = np.asarray(cube_xy, dtype=np.float64)
        zone = np.asarray(zone_xy, dtype=np.float64)
        distance = float(np.linalg.norm(zone - cube))
        if self._finished and distance > RESUME_DISTANCE:
            self._finished = False
        elif not self._finished and distance < DONE_DISTANCE:
            self._finished = True
        direction = _unit(zone - cube)
        if self._finished:
            self._pushing = False
            # Clear of the cube: straight up from where the tool is, then hold there.
            return _limit(tool, np.array([*tool[:2], TRAVEL_HEIGHT]), MAX_MOVE)
        push_point = cube - direction * (CUBE_HALF + STANDOFF)
        offset = tool[:2] - cube
        along = float(offset @ direction)
        sideways = abs(float(offset @ np.array([-direction[1], direction[0]])))
        low = tool[2] < PUSH_HEIGHT + AT_HEIGHT
        behind = along < -(CUBE_HALF + CLEARANCE)  # clear of the cube's back face
        # A push starts only on the line and clear of the cube; once started it goes on while the
        # tool stays behind the cube's centre, touching it, and near the line.
        if self._pushing:
            self._pushing = low and along < -CUBE_HALF * 0.8 and sideways < 2 * ON_LINE
        else:
            self._pushing = low and behind and sideways < ON_LINE
        if self._pushing:
            depth = min(MAX_PUSH, distance)
            goal = np.array([*(push_point + direction * depth), PUSH_HEIGHT])
        elif behind and sideways < CUBE_HALF + STANDOFF:
            # In the corridor behind the cube, where the tool cannot land on it: down to the push
            # point, sliding along the cube's back face if already down.
            goal = np.array([*push_point, PUSH_HEIGHT])
        elif tool[2] < TRAVEL_HEIGHT - AT_HEIGHT:
            # Up first, stepping back from the cube so that lifting cannot drag it.
            away = _unit(tool[:2] - cube)
            goal = np.array([*(tool[:2] + away * 0.01), TRAVEL_HEIGHT])
        else:
            goal = np.array([*push_point, TRAVEL_HEIGHT])
        # Short moves: the servos lag behind long ones, and a lagging tool strays off the line.
        return _limit(tool, goal, MAX_MOVE)

    def act(self, frame: So101Frame) -> np.ndarray:
        """Joint position targets (rad, `JOINT_NAMES` order) for the next control period."""
        return self.act_on_state(frame.joint_positions, frame.cube_pose, frame.zone)

    def act_on_state(self, joint_positions: np.ndarray, cube_pose: np.ndarray, zone: np.ndarray) -> np.ndarray:
        """`act` on the measured joints (rad, `JOINT_NAMES` order), the cube's pose (x, y, ... in m) and the
        zone (x, y, ... in m): for a caller that gets them from messages rather than from a `So101Frame`."""
        joint_positions = np.asarray(joint_positions, dtype=np.float64)
        target = self._tool_target(joint_positions, np.asarray(cube_pose)[:2], np.asarray(zone)[:2])
        reach = float(np.linalg.norm(target[:2]))
        tilt = float(np.interp(reach, *TILT))
        axis = np.array([*(_unit(target[:2]) * np.sin(tilt)), -np.cos(tilt)])
        start = joint_positions if self._solution is None else self._solution
        start = np.array(start, dtype=np.float64)
        start[JOINT_NAMES.index("wrist_roll")] = 0.0
        start[JOINT_NAMES.index("gripper")] = GRIPPER_CLOSED
        solution, _ = self.kinematics.solve(start, target, axis=axis)
        self._solution = solution
        return solution + self.kinematics.gravity(solution) / self._gain


@dataclass(frozen=True)
class EpisodeResult:
    seed: int
    success: bool
    steps: int
    coverage: float
    distance: float


def run_episode(sim: So101Sim, expert: So101Expert, seed: int) -> EpisodeResult:
    """One expert episode in `sim` (its max_steps is the step limit)."""
    frame = sim.reset(seed)
    expert.reset()
    while not frame.done:
        frame = sim.step(expert(frame))
    return EpisodeResult(seed, frame.success, frame.step, frame.coverage, frame.distance)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure the scripted SO-101 push-cube expert's success rate.")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0, help="episode k uses seed + k")
    parser.add_argument("--max-steps", type=int, default=200, help=f"step limit per episode ({CONTROL_HZ} Hz)")
    parser.add_argument("--render", action="store_true", help="render both cameras each step (slower)")
    parser.add_argument("--json", type=str, default="", help="also write the results here")
    args = parser.parse_args(argv)
    sim = So101Sim(max_steps=args.max_steps, render_images=args.render)
    expert = So101Expert(sim.model)
    started = time.monotonic()
    results = []
    try:
        for k in range(args.episodes):
            result = run_episode(sim, expert, args.seed + k)
            results.append(result)
            print(
                f"seed {result.seed}: success={result.success} steps={result.steps} "
                f"coverage={result.coverage:.3f} distance={result.distance:.4f}",
                flush=True,
            )
    finally:
        sim.close()
    successes = [r for r in results if r.success]
    steps = np.array([r.steps for r in successes], dtype=float)
    summary = {
        "episodes": len(results),
        "successes": len(successes),
        "success_rate": len(successes) / max(1, len(results)),
        "steps_successful": (
            {
                "mean": float(steps.mean()),
                "min": int(steps.min()),
                "p50": float(np.percentile(steps, 50)),
                "p90": float(np.percentile(steps, 90)),
                "max": int(steps.max()),
            }
            if successes
            else None
        ),
        "max_steps": args.max_steps,
        "wall_seconds": time.monotonic() - started,
        "failed_seeds": [r.seed for r in results if not r.success],
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"summary": summary, "episodes": [vars(r) for r in results]}, file, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
