"""Per-stage latencies of a closed loop, from arrival times keyed by camera stamp.

A closed-loop observer (`rla_wm_ros.closed_loop`) records when each camera frame, feature map,
model chunk and robot command arrives, keyed by the stamp of the camera frame it came from; this
module turns those tables into latencies per stage and summarises them. No ROS here, so the
bookkeeping is testable on plain numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

STAGES = ("camera_to_features", "features_to_chunk", "chunk_to_command", "camera_to_command")


@dataclass
class LatencyLog:
    """Wall-clock arrival times (ns) per camera stamp at each stage, turned into per-stage latencies.

    On wall-clock stamps a frame's latency starts at its stamp (when it was taken). On the
    simulator's clock a stamp is simulated time, so the frame's arrival at the observer
    stands in for it (a DDS hop later than the capture). `model_inputs` holds the arrivals on
    the model's input topic when that is not /features (None: the model reads `features`).
    """

    stamps_are_wall_time: bool = True
    frames: dict[int, int] = field(default_factory=dict)
    features: dict[int, int] = field(default_factory=dict)
    chunks: dict[int, int] = field(default_factory=dict)
    commands: dict[int, int] = field(default_factory=dict)
    model_inputs: dict[int, int] | None = None

    def stage_seconds(self) -> dict[str, np.ndarray]:
        """Latency in seconds of every stamp seen at both ends of each stage, by stage name (STAGES)."""
        camera = None if self.stamps_are_wall_time else self.frames

        def gaps(later: dict[int, int], earlier: dict[int, int] | None) -> np.ndarray:
            # Copies first: an observer's executor thread may add arrivals while this reads them.
            later, earlier = dict(later), (None if earlier is None else dict(earlier))
            values = [
                arrival - (earlier[stamp] if earlier is not None else stamp)
                for stamp, arrival in later.items()
                if earlier is None or stamp in earlier
            ]
            return np.array(values, dtype=np.float64) * 1e-9

        return {
            "camera_to_features": gaps(self.features, camera),
            "features_to_chunk": gaps(self.chunks, self.features if self.model_inputs is None else self.model_inputs),
            "chunk_to_command": gaps(self.commands, self.chunks),
            "camera_to_command": gaps(self.commands, camera),
        }


def percentiles_ms(values: np.ndarray) -> dict[str, float]:
    """Count, median, 99th percentile and maximum of latencies in seconds, in milliseconds (NaN when empty)."""
    if values.size == 0:
        return {"n": 0, "p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    return {
        "n": int(values.size),
        "p50_ms": float(np.percentile(values, 50) * 1e3),
        "p99_ms": float(np.percentile(values, 99) * 1e3),
        "max_ms": float(values.max() * 1e3),
    }
