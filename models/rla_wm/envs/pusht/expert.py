"""Scripted Push-T expert that pushes the T block to the goal using the privileged sim state.

Why a contact model and not a fixed script: gym-pusht's shapes are frictionless and the
space's damping of 0 zeroes the block's velocity every physics step, so the block moves
only while the agent touches it, exactly as a free rigid body hit at the contact point
along the contact normal (quasi-static, frictionless pushing). For every candidate contact
on the T's outline the expert therefore knows the block twist (translation + rotation)
one pixel of push produces, picks the contact whose twist best reduces the pose error
(less a cost for walking there), walks around the block to it and pushes. Re-deciding at
every step turns this into translate-and-rotate pushing with small corrective pushes near
the goal.

Inputs: agent position, block pose, goal pose (all pixels / radians, gym-pusht's frame).
Output: the next absolute agent target (x, y), the sim's action space.

`python -m rla_wm.envs.pusht.expert --episodes 50` measures the success rate in `PushTSim`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from rla_wm.envs.pusht.sim import CONTROL_HZ, GOAL_POSE, PushTSim, SimFrame

# gym-pusht geometry (PushTEnv.add_tee with scale 30, length 4; add_circle radius 15), in the
# block's body frame: a 120x30 bar on top of a 30x90 stem.
AGENT_RADIUS = 15.0
T_OUTLINE = np.array(
    [(-60.0, 0.0), (60.0, 0.0), (60.0, 30.0), (15.0, 30.0), (15.0, 120.0), (-15.0, 120.0), (-15.0, 30.0), (-60.0, 30.0)]
)
T_COG = np.array([0.0, 45.0])  # pymunk's centre of gravity: mean of the two boxes' centroids
T_MASS = 1.0
T_MOMENT = 3000.0  # body.moment in gym-pusht
# Pose error metric: rotation in pixels at the radius of gyration, so 1 px ~ 1 rad * 55 px.
ROTATION_SCALE = float(np.sqrt(T_MOMENT / T_MASS))
# Agent centres the walls allow (walls at 5 / 506, 2 px thick), with a small margin.
AGENT_LOW = 24.0
AGENT_HIGH = 488.0


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def _wrap(angle: float) -> float:
    return float((angle + np.pi) % (2 * np.pi) - np.pi)


def _point_segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of points (..., 2) to segments a-b (..., 2), broadcasting."""
    ab = b - a
    t = np.clip(np.sum((points - a) * ab, axis=-1) / np.maximum(np.sum(ab * ab, axis=-1), 1e-12), 0.0, 1.0)
    return np.linalg.norm(points - (a + t[..., None] * ab), axis=-1)


def _segments_clearance(p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    """Smallest distance of each segment p0[i]-p1[i] (N, 2) to the T outline (body frame); 0 if they cross."""
    a = T_OUTLINE[None, :, :]
    b = np.roll(T_OUTLINE, -1, axis=0)[None, :, :]
    q0, q1 = p0[:, None, :], p1[:, None, :]
    d = np.minimum.reduce(
        [
            _point_segment_distance(q0, a, b),
            _point_segment_distance(q1, a, b),
            _point_segment_distance(a, q0, q1),
            _point_segment_distance(b, q0, q1),
        ]
    )
    # Proper crossings: each segment's ends lie on opposite sides of the other.
    d1, d2 = _cross(b - a, q0 - a), _cross(b - a, q1 - a)
    d3, d4 = _cross(q1 - q0, a - q0), _cross(q1 - q0, b - q0)
    crossing = (d1 * d2 < 0) & (d3 * d4 < 0)
    d = np.where(crossing, 0.0, d).min(axis=1)
    # A segment entirely inside the T crosses nothing; its ends are inside.
    return np.where(_inside_t(p0) | _inside_t(p1), 0.0, d)


def _inside_t(points: np.ndarray) -> np.ndarray:
    x, y = points[..., 0], points[..., 1]
    bar = (np.abs(x) <= 60.0) & (y >= 0.0) & (y <= 30.0)
    stem = (np.abs(x) <= 15.0) & (y >= 30.0) & (y <= 120.0)
    return bar | stem


def _outline_distance(points: np.ndarray) -> np.ndarray:
    """Distance of body-frame points (N, 2) to the T outline; negative inside."""
    a, b = T_OUTLINE, np.roll(T_OUTLINE, -1, axis=0)
    d = _point_segment_distance(points[:, None, :], a[None], b[None]).min(axis=1)
    return np.where(_inside_t(points), -d, d)


@dataclass(frozen=True)
class _Contacts:
    """Candidate pushes in the body frame: contact point, outward normal, pre-contact agent centre,
    and the block twist (vx, vy, omega) produced per pixel of agent motion along the inward normal."""

    points: np.ndarray  # (K, 2)
    normals: np.ndarray  # (K, 2) outward
    approach: np.ndarray  # (K, 2)
    twist: np.ndarray  # (K, 3)


def _build_contacts(spacing: float, approach_gap: float, clearance: float) -> _Contacts:
    outline = T_OUTLINE
    area = 0.5 * np.sum(_cross(outline, np.roll(outline, -1, axis=0)))
    sign = 1.0 if area > 0 else -1.0
    points, normals = [], []
    count = len(outline)
    edge_normals = []
    for i in range(count):
        a, b = outline[i], outline[(i + 1) % count]
        direction = (b - a) / np.linalg.norm(b - a)
        normal = sign * np.array([direction[1], -direction[0]])
        edge_normals.append(normal)
        length = float(np.linalg.norm(b - a))
        for t in np.arange(spacing / 2, length, spacing):
            points.append(a + t * direction)
            normals.append(normal)
    for i in range(count):
        # Convex corners: a disc on the corner can push along any normal between its two edges'.
        before, after = edge_normals[i - 1], edge_normals[i]
        if _cross(before, after) * sign <= 0:
            continue  # concave: the disc cannot touch the corner alone
        start = np.arctan2(before[1], before[0])
        sweep = _wrap(np.arctan2(after[1], after[0]) - start)
        for f in (0.2, 0.4, 0.6, 0.8):
            angle = start + f * sweep
            points.append(outline[i].copy())
            normals.append(np.array([np.cos(angle), np.sin(angle)]))
    points_arr, normals_arr = np.array(points), np.array(normals)
    approach = points_arr + normals_arr * (AGENT_RADIUS + approach_gap)
    touching = points_arr + normals_arr * AGENT_RADIUS
    # The disc must fit at the contact (pocket corners) and at the approach point.
    keep = (_outline_distance(touching) >= AGENT_RADIUS - 1e-6) & (_outline_distance(approach) >= clearance)
    points_arr, normals_arr, approach = points_arr[keep], normals_arr[keep], approach[keep]
    # Frictionless contact: the impulse is along the inward normal; its size makes the contact
    # point's normal velocity equal the pusher's (unit) speed.
    push = -normals_arr
    arm = _cross(points_arr - T_COG, push)
    impulse = 1.0 / (1.0 / T_MASS + arm**2 / T_MOMENT)
    twist = np.column_stack([push * (impulse / T_MASS)[:, None], impulse * arm / T_MOMENT])
    return _Contacts(points_arr, normals_arr, approach, twist)


def _waypoints(offset: float) -> np.ndarray:
    """Points diagonally off the T's convex corners, for walking around the block."""
    outline = T_OUTLINE
    area = 0.5 * np.sum(_cross(outline, np.roll(outline, -1, axis=0)))
    sign = 1.0 if area > 0 else -1.0
    result = []
    count = len(outline)
    for i in range(count):
        prev_dir = outline[i] - outline[i - 1]
        next_dir = outline[(i + 1) % count] - outline[i]
        n_prev = sign * np.array([prev_dir[1], -prev_dir[0]]) / np.linalg.norm(prev_dir)
        n_next = sign * np.array([next_dir[1], -next_dir[0]]) / np.linalg.norm(next_dir)
        if _cross(n_prev, n_next) * sign > 0:
            result.append(outline[i] + offset * (n_prev + n_next))
    return np.array(result)


class PushTExpert:
    """Deterministic scripted expert; call with a `SimFrame` (the `Policy` signature of
    `rla_wm.envs.pusht.dataset`) or use `act` with the poses directly.

    max_lead: the target is never farther than this from the agent (px): at 10 Hz, 40 px
        is 400 px/s, inside the safety gate's 1000 px/s limit even with some lag.
    travel_cost: score lost per pixel of walking to a contact (score ~ cosine between the
        pose error and the contact's twist).
    switch_margin: a new contact must beat the one being pushed by this much (no dithering).
    """

    def __init__(
        self,
        max_lead: float = 40.0,
        max_push: float = 30.0,
        travel_cost: float = 0.0015,
        switch_margin: float = 0.15,
        spacing: float = 6.0,
        approach_gap: float = 4.0,
        clearance: float = AGENT_RADIUS + 2.0,
    ) -> None:
        self.max_lead = max_lead
        self.max_push = max_push
        self.travel_cost = travel_cost
        self.switch_margin = switch_margin
        self.clearance = clearance
        self.contacts = _build_contacts(spacing, approach_gap, clearance)
        self.waypoints = _waypoints(AGENT_RADIUS + 6.0)
        self._waypoint_links, self._visible = self._precompute_graph()
        self.reset()

    def reset(self, frame: SimFrame | None = None) -> None:
        """Forget the contact being pushed (call at every episode start)."""
        self._current: int | None = None
        self._pushing = False
        self._visited: set[int] = set()  # waypoints already passed on the walk to the current contact

    def __call__(self, frame: SimFrame, rng: np.random.Generator | None = None) -> np.ndarray:
        if frame.step == 0:
            self.reset()
        return self.act(frame.position, frame.block_pose, frame.goal_pose)

    # ------------------------------------------------------------------ planning helpers

    def _precompute_graph(self) -> tuple[np.ndarray, np.ndarray]:
        """Walking distances between waypoints that see each other, and which approach points each waypoint sees.

        Both are fixed in the body frame, so only segments that start at the agent are checked live.
        """
        w = self.waypoints
        n = len(w)
        i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        clear = _segments_clearance(w[i.ravel()], w[j.ravel()]).reshape(n, n) >= self.clearance
        dist = np.where(clear, np.linalg.norm(w[:, None] - w[None], axis=-1), np.inf)
        np.fill_diagonal(dist, 0.0)
        q = self.contacts.approach
        wi, qi = np.meshgrid(np.arange(n), np.arange(len(q)), indexing="ij")
        visible = (_segments_clearance(w[wi.ravel()], q[qi.ravel()]) >= self.clearance).reshape(n, len(q))
        return dist, visible

    def _paths(self, waypoints_ok: np.ndarray) -> np.ndarray:
        """Shortest walks between waypoints through usable ones only (Floyd-Warshall on a handful of nodes)."""
        usable = waypoints_ok[:, None] & waypoints_ok[None, :]
        dist = np.where(usable, self._waypoint_links, np.inf)
        for k in range(len(dist)):
            dist = np.minimum(dist, dist[:, k : k + 1] + dist[k : k + 1, :])
        return dist

    def _travel(self, agent: np.ndarray, waypoints_ok: np.ndarray) -> np.ndarray:
        """Walking distance from `agent` (body frame) to every contact's approach point around the block."""
        q = self.contacts.approach
        direct_ok = _segments_clearance(np.repeat(agent[None], len(q), 0), q) >= self.clearance
        direct = np.where(direct_ok, np.linalg.norm(q - agent, axis=1), np.inf)
        w = self.waypoints
        to_w = np.where(
            (_segments_clearance(np.repeat(agent[None], len(w), 0), w) >= self.clearance) & waypoints_ok,
            np.linalg.norm(w - agent, axis=1),
            np.inf,
        )
        to_w = np.min(to_w[:, None] + self._paths(waypoints_ok), axis=0)
        via = np.where(self._visible, to_w[:, None] + np.linalg.norm(w[:, None] - q[None], axis=-1), np.inf)
        return np.minimum(direct, via.min(axis=0))

    def _next_waypoint(self, agent: np.ndarray, goal_index: int, waypoints_ok: np.ndarray) -> np.ndarray:
        """First waypoint on the shortest walk from `agent` (body frame) to approach point `goal_index`."""
        w = self.waypoints
        goal = self.contacts.approach[goal_index]
        hop = np.linalg.norm(w - agent, axis=1)
        # A waypoint the agent stands on is passed: never a next hop again on this walk (it would stop
        # there for good, or shuttle between two waypoints that each look "next" from the other).
        self._visited.update(np.flatnonzero(hop <= 5.0).tolist())
        passed = np.zeros(len(w), dtype=bool)
        passed[list(self._visited)] = True
        first = (_segments_clearance(np.repeat(agent[None], len(w), 0), w) >= self.clearance) & waypoints_ok & ~passed
        last = self._visible[:, goal_index] & waypoints_ok
        to_goal = np.linalg.norm(w - goal, axis=1)[None, :]
        rest = np.where(last[None, :], self._paths(waypoints_ok) + to_goal, np.inf).min(axis=1)
        total = np.where(first, hop + rest, np.inf)
        index = int(np.argmin(total))
        return w[index] if np.isfinite(total[index]) else goal

    # ------------------------------------------------------------------ the policy

    def act(
        self, agent_position: np.ndarray, block_pose: np.ndarray, goal_pose: npt.ArrayLike = GOAL_POSE
    ) -> np.ndarray:
        """Next agent target (x, y) in pixels, float32."""
        agent_world = np.asarray(agent_position, dtype=np.float64)
        block_pose = np.asarray(block_pose, dtype=np.float64)
        goal_pose = np.asarray(goal_pose, dtype=np.float64)
        if not (np.isfinite(agent_world).all() and np.isfinite(block_pose).all() and np.isfinite(goal_pose).all()):
            raise ValueError("the expert needs finite agent position, block pose and goal pose")
        rotation = _rotation(block_pose[2])
        origin = block_pose[:2]

        def to_world(points: np.ndarray) -> np.ndarray:
            return points @ rotation.T + origin

        agent = (agent_world - origin) @ rotation  # body frame

        # Pose error of the centre of gravity and the angle, in the world frame.
        cog = to_world(T_COG)
        goal_cog = goal_pose[:2] + _rotation(goal_pose[2]) @ T_COG
        error = np.array([*(goal_cog - cog), ROTATION_SCALE * _wrap(goal_pose[2] - block_pose[2])])
        error_norm = float(np.linalg.norm(error))
        if error_norm < 1e-6:
            return agent_world.astype(np.float32)
        twist = self.contacts.twist
        twist_world = np.column_stack([twist[:, :2] @ rotation.T, ROTATION_SCALE * twist[:, 2]])
        twist_norm = np.linalg.norm(twist_world, axis=1)
        alignment = twist_world @ error / (twist_norm * error_norm)

        approach_world = to_world(self.contacts.approach)
        reachable = ((approach_world >= AGENT_LOW) & (approach_world <= AGENT_HIGH)).all(axis=1)
        waypoints_world = to_world(self.waypoints)
        # np.asarray: numpy's stubs type .all(axis=1) as "bool or array"; here it is always the array.
        waypoints_ok = np.asarray(((waypoints_world >= AGENT_LOW) & (waypoints_world <= AGENT_HIGH)).all(axis=1))

        distance = float(_outline_distance(agent[None])[0])
        start = agent
        if distance < self.clearance:
            # Too close to the block to plan a walk from here: plan from a point backed off it.
            start = self._backed_off(agent)
        travel = self._travel(start, waypoints_ok)
        travel = travel + np.linalg.norm(start - agent)
        score = np.where(reachable & np.isfinite(travel), alignment - self.travel_cost * travel, -np.inf)
        current = self._current
        if self._pushing and current is not None:
            # The contact being pushed needs no walk; keep it unless another is clearly better.
            score[current] = alignment[current] + self.switch_margin
        choice = int(np.argmax(score))
        if not np.isfinite(score[choice]):
            # Nothing reachable from here (boxed in by the block and a wall): step clear of the block.
            return np.clip(to_world(start), AGENT_LOW, AGENT_HIGH).astype(np.float32)
        if choice != current:
            self._current, self._pushing = choice, False
            self._visited.clear()

        contact_world = to_world(self.contacts.points[choice])
        normal_world = rotation @ self.contacts.normals[choice]
        touching_world = contact_world + normal_world * AGENT_RADIUS
        if not self._pushing and np.linalg.norm(approach_world[choice] - agent_world) < 6.0:
            self._pushing = True
        if self._pushing:
            # Push along the inward normal by the distance that best cancels the error.
            depth = float(np.clip(twist_world[choice] @ error / twist_norm[choice] ** 2, 1.0, self.max_push))
            target = touching_world - normal_world * depth
        elif (
            np.isfinite(travel[choice])
            and distance >= self.clearance
            and bool(_segments_clearance(agent[None], self.contacts.approach[choice][None])[0] >= self.clearance)
        ):
            target = approach_world[choice]
        elif distance < self.clearance:
            target = to_world(start)
        else:
            target = to_world(self._next_waypoint(agent, choice, waypoints_ok))
        lead = target - agent_world
        lead_norm = float(np.linalg.norm(lead))
        if lead_norm > self.max_lead:
            target = agent_world + lead * (self.max_lead / lead_norm)
        return np.clip(target, AGENT_LOW, AGENT_HIGH).astype(np.float32)

    def _backed_off(self, agent: np.ndarray) -> np.ndarray:
        """A body-frame point straight away from the nearest part of the block, clear of it."""
        a, b = T_OUTLINE, np.roll(T_OUTLINE, -1, axis=0)
        ab = b - a
        t = np.clip(np.sum((agent - a) * ab, axis=1) / np.sum(ab * ab, axis=1), 0.0, 1.0)
        nearest = a + t[:, None] * ab
        index = int(np.argmin(np.linalg.norm(agent - nearest, axis=1)))
        away = agent - nearest[index]
        if _inside_t(agent[None])[0]:
            away = -away  # the agent starts overlapping the block (gym-pusht allows it): leave the short way
        norm = float(np.linalg.norm(away))
        if norm < 1e-6:
            return agent
        return nearest[index] + away / norm * (self.clearance + 1.0)


@dataclass(frozen=True)
class EpisodeResult:
    seed: int
    success: bool
    steps: int
    coverage: float


def run_episode(sim: PushTSim, expert: PushTExpert, seed: int) -> EpisodeResult:
    """One expert episode in `sim` (its max_steps is the step limit)."""
    frame = sim.reset(seed)
    expert.reset()
    while not frame.done:
        frame = sim.step(expert(frame))
    return EpisodeResult(seed, frame.success, frame.step, frame.coverage)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure the scripted Push-T expert's success rate in PushTSim.")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0, help="episode k uses seed + k")
    parser.add_argument("--max-steps", type=int, default=300, help=f"step limit per episode ({CONTROL_HZ} Hz)")
    parser.add_argument("--json", type=str, default="", help="also write the results here")
    args = parser.parse_args(argv)
    sim = PushTSim(max_steps=args.max_steps, image_size=96)
    expert = PushTExpert()
    started = time.monotonic()
    results = []
    try:
        for k in range(args.episodes):
            result = run_episode(sim, expert, args.seed + k)
            results.append(result)
            print(
                f"seed {result.seed}: success={result.success} steps={result.steps} coverage={result.coverage:.3f}",
                flush=True,
            )
    finally:
        sim.close()
    successes = [r for r in results if r.success]
    summary = {
        "episodes": len(results),
        "successes": len(successes),
        "success_rate": len(successes) / max(1, len(results)),
        "mean_steps_successful": float(np.mean([r.steps for r in successes])) if successes else None,
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
