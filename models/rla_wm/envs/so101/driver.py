"""The simulated SO-101 behind a joint_trajectory_controller: what the `sim_arm` node drives.

A real arm's controller samples its active trajectory at its update rate (100 Hz and more) and
sends each sample to the servos. `So101Driver` does the same inside each 1 / CONTROL_HZ s
control period of `So101Sim`: it splits the period into `update_rate / CONTROL_HZ` parts and
holds, over each part, the command `rla_wm.control.trajectory.TrajectoryFollower` gives at that
part's end (interpolation between points, past points interpolated through, a refused message
such as an empty one leaving the running trajectory in place: `rla_wm.control.jtc`).

With no trajectory yet, or after its last point, the command holds: at the start pose after a
reset (JTC holds the position it was activated at), then at the last command. The measured
position is never fed back as the hold command: the servos sag under gravity, and re-commanding
the sagged position each period would let the arm sink step by step. A non-finite command (JTC
forwards NaN) is refused by this "hardware": it keeps the last command and counts it.

The simulation runs a whole period at its end, after the trajectories received during it: each
takes over at its receipt time within the period (at the first controller update from then on),
from the joints' measured position at that moment, as JTC starts a trajectory from the state at
receipt. Until then the previous trajectory runs. (Taking it over from the period's start instead
would command the stale, sagged position of the period's start until the receipt: with a chunk
arriving 60 ms into each period the arm then sinks instead of following.)

Times are integer nanoseconds on the caller's clock (ROS or simulated), as in the messages.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from rla_wm.control.jtc import NANOSECONDS, Trajectory, jtc_rejection
from rla_wm.control.trajectory import TrajectoryFollower
from rla_wm.envs.so101.sim import CONTROL_HZ, JOINT_NAMES, So101Frame, So101Sim

PERIOD_NANOSECONDS = NANOSECONDS // CONTROL_HZ


@dataclass(frozen=True)
class DriverStep:
    frame: So101Frame  # the state at the end of the period
    refused_commands: int  # parts of the period whose command was not finite (the last one held instead)


class So101Driver:
    """`So101Sim` driven by trajectories; `update_rate` (Hz) a multiple of CONTROL_HZ."""

    def __init__(self, sim: So101Sim, update_rate: int = 100) -> None:
        parts = update_rate // CONTROL_HZ
        if update_rate % CONTROL_HZ or not 1 <= parts <= sim.physics_steps:
            raise ValueError(
                f"update_rate must be a multiple of {CONTROL_HZ} Hz from {CONTROL_HZ} to "
                f"{CONTROL_HZ * sim.physics_steps} Hz (the physics rate), got {update_rate}"
            )
        self.sim = sim
        self.update_rate = update_rate
        # Physics steps at the end of each part: whole steps, spread as evenly as they divide.
        self._boundaries = [round(k * sim.physics_steps / parts) for k in range(1, parts + 1)]
        self._follower = TrajectoryFollower(JOINT_NAMES)
        self._hold = np.zeros(len(JOINT_NAMES))
        self._received: deque[tuple[int, Trajectory]] = deque()  # accepted, not yet taken over: (receipt, trajectory)

    @property
    def frame(self) -> So101Frame:
        return self.sim.frame

    @property
    def hold(self) -> np.ndarray:
        """The command sent last (what the servos hold when no trajectory moves them)."""
        return self._hold.copy()

    def reset(self, seed: int) -> So101Frame:
        """A new episode; the previous trajectory is forgotten and the arm holds its start pose."""
        frame = self.sim.reset(seed)
        self._follower = TrajectoryFollower(JOINT_NAMES)
        self._received.clear()
        self._hold = frame.joint_positions.copy()
        return frame

    def command(self, trajectory: Trajectory, now_ns: int) -> str:
        """Take a trajectory received at `now_ns` as JTC would; why it was refused, or "" if accepted.

        An accepted one takes over at `now_ns` within the period `step` runs next (see the module docstring).
        """
        reason = jtc_rejection(trajectory, JOINT_NAMES, now_ns)
        if not reason:
            self._received.append((now_ns, trajectory))
        return reason

    def step(self, end_ns: int) -> DriverStep:
        """Run the control period that ends at `end_ns`; a no-op once the episode is done."""
        if self.frame.done:
            self._received.clear()  # nothing moves until the reset, which forgets them anyway
            return DriverStep(self.frame, 0)
        start_ns = end_ns - PERIOD_NANOSECONDS
        timestep = self.sim.model.opt.timestep
        refused = 0
        done_steps = 0
        for boundary in self._boundaries:
            # The command due at the end of this part, as a controller's update at that moment sends it.
            due_ns = start_ns + boundary * PERIOD_NANOSECONDS // self.sim.physics_steps
            while self._received and self._received[0][0] <= due_ns:
                receipt_ns, trajectory = self._received.popleft()
                self._follower.command(trajectory, receipt_ns, self.sim.joint_positions())
            command = self._follower.target(due_ns, self._hold)
            if np.isfinite(command).all():
                self._hold = self.sim.clip(command)
            else:
                refused += 1
            self.sim.advance(self._hold, (boundary - done_steps) * timestep)
            done_steps = boundary
        return DriverStep(self.sim.observe(), refused)
