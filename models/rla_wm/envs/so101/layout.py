"""Per-seed layouts of the push-cube task: where the cube starts and where the target zone is.

Both are drawn in polar coordinates around the arm's base, inside the band where the arm can
put its tool on the table with the jaws pointing down: from about 0.14 m out (closer in, the
gripper runs into the shoulder) to beyond 0.32 m. The tool pushes from ~3 cm behind the cube,
so the cube's straight path to the zone keeps `MIN_PATH_RADIUS` from the base: a path cutting
past the base would need the tool where it cannot go (the 4 cm margin over 0.14 m covers a cube
that drifts off the straight path or overshoots the zone toward the base). Cube and zone are far enough apart that
the task never starts solved and close enough that one or two pushes solve it. Different seeds
give different layouts, so the cameras, not a memorised motion, tell where to push.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rla_wm.envs.so101.scene import CUBE_HALF, ZONE_RADIUS

CUBE_RADIUS = (0.18, 0.27)  # m from the base axis
ZONE_RADIUS_RANGE = (0.18, 0.29)
MIN_PATH_RADIUS = 0.18  # m: closest the straight cube-to-zone path comes to the base axis
BEARING = (-0.8, 0.8)  # rad either side of straight ahead (+x)
# Cube centre to zone centre: at least the zone radius plus the cube's half diagonal plus 2 cm.
MIN_DISTANCE = ZONE_RADIUS + CUBE_HALF * float(np.sqrt(2.0)) + 0.02
MAX_DISTANCE = 0.16


@dataclass(frozen=True)
class Layout:
    cube_xy: np.ndarray  # (2,) m
    cube_yaw: float  # rad
    zone_xy: np.ndarray  # (2,) m


def _polar(rng: np.random.Generator, radius: tuple[float, float]) -> np.ndarray:
    r = rng.uniform(*radius)
    bearing = rng.uniform(*BEARING)
    return np.array([r * np.cos(bearing), r * np.sin(bearing)])


def sample_layout(seed: int) -> Layout:
    """The layout of episode `seed` (the same seed always gives the same layout)."""
    rng = np.random.default_rng(seed)
    cube = _polar(rng, CUBE_RADIUS)
    yaw = float(rng.uniform(-np.pi / 4, np.pi / 4))  # a cube's yaw repeats every 90 degrees
    while True:  # rejection sampling: about three zone draws per layout on average
        zone = _polar(rng, ZONE_RADIUS_RANGE)
        if MIN_DISTANCE <= np.linalg.norm(zone - cube) <= MAX_DISTANCE and path_radius(cube, zone) >= MIN_PATH_RADIUS:
            return Layout(cube_xy=cube, cube_yaw=yaw, zone_xy=zone)


def path_radius(start: np.ndarray, end: np.ndarray) -> float:
    """Closest distance of the segment start-end (x, y) to the base axis (the origin)."""
    segment = end - start
    t = float(np.clip(-(start @ segment) / max(float(segment @ segment), 1e-12), 0.0, 1.0))
    return float(np.linalg.norm(start + t * segment))
