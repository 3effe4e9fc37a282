"""Cost of the simulated SO-101 arm: render time per camera frame and physics time per control step.

    source scripts/env.sh
    python benchmarks/bench_so101_render.py                         # 128x128, both cameras
    python benchmarks/bench_so101_render.py --size 160x120 --size 224x224
    python benchmarks/bench_so101_render.py --mesh-cell 0           # the wheel's full meshes, for comparison
    LP_NUM_THREADS=1 python benchmarks/bench_so101_render.py        # OSMesa's llvmpipe on one thread

Plays scripted-expert episodes (so the arm moves and pushes the cube) and, at every control step,
times each camera's render (scene update + draw + read-back) and the physics of the step
(1 / CONTROL_HZ s of simulation, with the arm touching the cube), and the expert's inverse
kinematics per step. Prints wall-clock ms (mean,
median, 90th percentile) and this process's CPU ms per call (all threads, OSMesa's included):
the wall time depends on what else the machine runs, the CPU time much less. The load average
is printed with them for that reason.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from rla_wm.envs.so101.expert import So101Expert
from rla_wm.envs.so101.scene import CAMERAS
from rla_wm.envs.so101.sim import CONTROL_HZ, So101Sim


def _size(text: str) -> tuple[int, int]:
    width, _, height = text.partition("x")
    return int(width), int(height or width)


def _stats(wall: list[float], cpu: list[float]) -> dict[str, float]:
    w = np.asarray(wall) * 1e3
    return {
        "wall_ms_mean": round(float(w.mean()), 2),
        "wall_ms_p50": round(float(np.percentile(w, 50)), 2),
        "wall_ms_p90": round(float(np.percentile(w, 90)), 2),
        "cpu_ms_mean": round(float(np.mean(cpu) * 1e3), 2),
    }


def bench(width: int, height: int, mesh_cell: float | None, steps: int, seed: int) -> dict:
    started = time.perf_counter()
    sim = So101Sim(max_steps=10_000, width=width, height=height, mesh_cell=mesh_cell)
    expert = So101Expert(sim.model)
    load_s = time.perf_counter() - started
    renderer = sim._renderer  # noqa: SLF001  (timing each camera on its own)
    assert renderer is not None
    render_wall: dict[str, list[float]] = {camera: [] for camera in CAMERAS}
    render_cpu: dict[str, list[float]] = {camera: [] for camera in CAMERAS}
    physics_wall: list[float] = []
    physics_cpu: list[float] = []
    expert_wall: list[float] = []
    expert_cpu: list[float] = []
    frame = sim.reset(seed)
    expert.reset()
    for _ in range(steps):
        if frame.success:
            seed += 1
            frame = sim.reset(seed)
            expert.reset()
        wall, cpu = time.perf_counter(), time.process_time()
        targets = expert(frame)
        expert_wall.append(time.perf_counter() - wall)
        expert_cpu.append(time.process_time() - cpu)
        wall, cpu = time.perf_counter(), time.process_time()
        sim.advance(targets, 1.0 / CONTROL_HZ)
        physics_wall.append(time.perf_counter() - wall)
        physics_cpu.append(time.process_time() - cpu)
        for camera in CAMERAS:
            wall, cpu = time.perf_counter(), time.process_time()
            renderer.update_scene(sim.data, camera=camera)
            image = renderer.render()
            render_wall[camera].append(time.perf_counter() - wall)
            render_cpu[camera].append(time.process_time() - cpu)
            assert image.shape == (height, width, 3)
        frame = sim.observe()
    sim.close()
    return {
        "size": f"{width}x{height}",
        "mesh_cell": mesh_cell,
        "triangles": int(sim.model.mesh_facenum.sum()),
        "load_s": round(load_s, 2),  # the first size also pays the mesh clustering (cached after)
        "render": {camera: _stats(render_wall[camera], render_cpu[camera]) for camera in CAMERAS},
        "physics_per_step": _stats(physics_wall, physics_cpu),
        "expert_per_step": _stats(expert_wall, expert_cpu),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", action="append", type=_size, help="WxH (or N for NxN); repeatable; default 128")
    parser.add_argument("--mesh-cell", type=float, default=None, help="mesh clustering cell in m; 0: full meshes")
    parser.add_argument("--steps", type=int, default=100, help="control steps timed per size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from rla_wm.envs.so101.scene import MESH_CELL

    cell = MESH_CELL if args.mesh_cell is None else (args.mesh_cell or None)
    print(
        f"MUJOCO_GL={os.environ.get('MUJOCO_GL')} LP_NUM_THREADS={os.environ.get('LP_NUM_THREADS', '(all)')} "
        f"cpus={os.cpu_count()} load average (1 min) before: {os.getloadavg()[0]:.2f}"
    )
    for width, height in args.size or [(128, 128)]:
        print(json.dumps(bench(width, height, cell, args.steps, args.seed)), flush=True)
    print(f"load average (1 min) after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
