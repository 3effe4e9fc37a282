"""Turning a policy's action chunk into the points to send: drop what is due too soon, blend seams.

A chunk is anchored to the observation it was computed from (absolute times on one
clock). By the time it is published some of its points are already past; and a new
chunk generally disagrees with the tail of the previous one, which the robot is still
following. Sending it raw makes the commanded path jump at every seam.

`ChunkScheduler` keeps the last chunk it sent and cross-fades the new one into it:
at the new chunk's first kept point the command equals where the previous chunk
would have been, and the weight of the new chunk ramps linearly to 1 over
`blend_time` seconds. Points beyond the previous chunk's end are the new chunk's own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ScheduledChunk:
    times: np.ndarray  # (T,) absolute seconds
    positions: np.ndarray  # (T, J)
    dropped: int  # points removed because they were past or due too soon


class ChunkScheduler:
    def __init__(self, blend_time: float, min_lead_time: float) -> None:
        if blend_time < 0 or min_lead_time < 0:
            raise ValueError(f"blend_time and min_lead_time must be >= 0, got {blend_time}, {min_lead_time}")
        self.blend_time = blend_time
        self.min_lead_time = min_lead_time
        self._previous: ScheduledChunk | None = None

    def reset(self) -> None:
        """Forget the previous chunk (after a hold, a reset, or an e-stop): no blending into it."""
        self._previous = None

    def schedule(
        self,
        times: np.ndarray,
        positions: np.ndarray,
        now: float,
        measured: np.ndarray | None = None,
        tolerance: np.ndarray | None = None,
    ) -> ScheduledChunk | None:
        """Absolute `times` (T,) and `positions` (T, J) -> the points to publish at `now`; None if none is left.

        With `measured` (J,) and `tolerance` (J,): if the robot is further than `tolerance` from
        where the previous chunk has it now, the robot is not following that chunk (the safety
        gate refused it, held, or an e-stop), so the new chunk is not blended into it.
        """
        times = np.asarray(times, dtype=np.float64)
        positions = np.asarray(positions, dtype=np.float64)
        if times.ndim != 1 or positions.ndim != 2 or len(times) != len(positions):
            raise ValueError(f"times {times.shape} and positions {positions.shape} do not describe one chunk")
        if not (np.isfinite(times).all() and np.isfinite(positions).all()):
            raise ValueError("chunk contains NaN or inf")
        if len(times) > 1 and not (np.diff(times) > 0).all():
            raise ValueError("chunk times must increase strictly")
        keep = times > now + self.min_lead_time
        dropped = int((~keep).sum())
        if not keep.any():
            return None
        times, positions = times[keep], positions[keep]
        if measured is not None and tolerance is not None and not self.is_followed(now, measured, tolerance):
            self._previous = None
        blended = self._blend(times, positions)
        chunk = ScheduledChunk(times, blended, dropped)
        self._previous = chunk
        return chunk

    def is_followed(self, now: float, measured: np.ndarray, tolerance: np.ndarray) -> bool:
        """Whether the robot at `measured` is where the previous chunk puts it at `now` (within `tolerance`)."""
        previous = self._previous
        if previous is None:
            return False
        measured = np.asarray(measured, dtype=np.float64)
        if measured.shape != previous.positions.shape[1:] or not np.isfinite(measured).all():
            return False
        # Before its first point the robot is still heading there; after its last it holds that target.
        expected = np.array(
            [np.interp(now, previous.times, previous.positions[:, j]) for j in range(previous.positions.shape[1])]
        )
        return bool((np.abs(measured - expected) <= np.asarray(tolerance, dtype=np.float64)).all())

    def _blend(self, times: np.ndarray, positions: np.ndarray) -> np.ndarray:
        previous = self._previous
        if previous is None or self.blend_time == 0 or previous.positions.shape[1] != positions.shape[1]:
            return positions
        # Only the part of the new chunk that the previous one still covers is blended.
        covered = (times >= previous.times[0]) & (times <= previous.times[-1])
        if not covered.any():
            return positions
        old = np.stack(
            [np.interp(times, previous.times, previous.positions[:, j]) for j in range(positions.shape[1])], axis=1
        )
        weight = np.clip((times - times[0]) / self.blend_time, 0.0, 1.0)
        weight = np.where(covered, weight, 1.0)[:, None]
        return weight * positions + (1.0 - weight) * old


class ReplanPacer:
    """Diffusion Policy's action horizon for a node that sees every camera frame.

    After acting on the observation stamped s, the next inference waits for the observation
    stamped s + execute_steps * point_period (less half a period, for jittered stamps), so a
    multimodal policy commits to a chunk for that long instead of switching modes at every frame
    (measured in process with `rla-wm rollout`: replanning every step loses about a third of the
    successes of executing 4 points). It acts at once when the robot is not following the last
    chunk (a gate refusal, a hold, a reset: that chunk is no longer what the robot does) and when
    stamps go backwards (a new episode or clock). execute_steps 1 acts on every observation.
    """

    def __init__(self, execute_steps: int, point_period: float) -> None:
        if execute_steps < 1 or not point_period > 0:
            raise ValueError(f"need execute_steps >= 1 and point_period > 0, got {execute_steps}, {point_period}")
        self.execute_steps = execute_steps
        self.point_period = point_period
        self._last: float | None = None

    def reset(self) -> None:
        self._last = None

    def due(self, stamp: float, followed: bool = True) -> bool:
        """Whether to run the policy on the observation stamped `stamp` (seconds)."""
        last = self._last
        if self.execute_steps == 1 or last is None or not followed or stamp < last:
            return True
        return stamp >= last + (self.execute_steps - 0.5) * self.point_period

    def acted(self, stamp: float) -> None:
        """A chunk computed from the observation stamped `stamp` was published."""
        self._last = stamp
