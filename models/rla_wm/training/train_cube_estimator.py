"""Train the SO-101 cube estimator (`rla_wm.models.cube_estimator`) on front-camera frames labelled by the sim.

Frames come from the push-cube task in process (`collect_cube_frames`): the scripted expert with
executed noise (DART, so the cube also ends up where a policy's errors push it, and the arm
crosses in front of it in every way a push does) and joint random walks (the arm anywhere, the
cube mostly still). Each frame's labels are the sim's cube and zone centres projected into the
camera (image fractions). The loss is the L1 distance of the predicted points in camera pixels plus a
small weight on the heat maps' spread (so a confident map is a peaked one and a diffuse map means
"not found");
the reported errors are those of the table positions (mm) on held-out episodes of other seeds.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rla_wm.envs.so101.camera import PinholeCamera
from rla_wm.models.cube_estimator import (
    KEYPOINTS,
    MAX_SPREAD,
    CubeStateEstimator,
    image_points,
    net_config,
    save_cube_estimator,
)
from rla_wm.models.keypoint_net import KeypointNet, images_to_input
from rla_wm.training.schedule import clipped_step, warmup_cosine
from rla_wm.training.train_pose_estimator import PoseTrainConfig


@dataclass
class CubeFrames:
    """Front-camera frames with the sim's cube centre (N, 3) and zone centre (N, 2), in metres."""

    images: np.ndarray  # (N, H, W, 3) uint8
    cube: np.ndarray
    zone: np.ndarray
    episode: np.ndarray  # (N,) the seed each frame's episode was reset with

    def __len__(self) -> int:
        return len(self.images)


def collect_cube_frames(
    episodes: int,
    seed: int,
    image_size: int = 128,
    execution_noise: float = 0.05,
    play_every: int = 4,
    play_steps: int = 40,
    progress: bool = True,
) -> tuple[CubeFrames, PinholeCamera]:
    """Frames of `episodes` episodes (seeds seed, seed + 1, ...) and the front camera's model.

    Every `play_every`-th episode is a joint random walk of `play_steps` frames; the others are the
    expert with `execution_noise` rad of noise on every executed joint target (it still solves them),
    until success or 150 steps."""
    from tqdm.auto import tqdm

    from rla_wm.control.teleop import JointRandomWalk
    from rla_wm.envs.so101.expert import So101Expert
    from rla_wm.envs.so101.scene import SCENE_CAMERA
    from rla_wm.envs.so101.sim import CONTROL_HZ, So101Sim, body_joint_noise

    sim = So101Sim(max_steps=150, width=image_size, height=image_size)
    camera = PinholeCamera.from_mujoco(sim.model, SCENE_CAMERA, image_size, image_size)
    expert = So101Expert(sim.model)
    images, cubes, zones, seeds = [], [], [], []
    try:
        for k in tqdm(range(episodes), desc="cube frames", unit="episode", disable=not progress):
            episode_seed = seed + k
            frame = sim.reset(episode_seed)
            expert.reset()
            play = play_every > 0 and k % play_every == play_every - 1
            walk = JointRandomWalk(sim.limits.lower, sim.limits.upper, seed=[episode_seed], period=1.0 / CONTROL_HZ)
            rng = np.random.default_rng([episode_seed, 2])
            for _ in range(play_steps if play else 150):
                images.append(frame.image)
                cubes.append(frame.cube_pose[:3].copy())
                zones.append(frame.zone[:2].copy())
                seeds.append(episode_seed)
                if frame.done:
                    break
                if play:
                    target = walk(frame.joint_positions)
                else:
                    target = expert(frame) + body_joint_noise(rng, execution_noise)
                frame = sim.step(target)
    finally:
        sim.close()
    frames = CubeFrames(np.stack(images), np.stack(cubes), np.stack(zones), np.array(seeds))
    return frames, camera


@dataclass(frozen=True)
class CubeTrainConfig(PoseTrainConfig):
    """The Push-T pose estimator's optimiser settings, fewer steps, and the heat maps' spread in the loss."""

    steps: int = 4000
    # Weight of the heat maps' spread (camera px) in the loss: the soft-argmax alone reaches the right
    # point with a diffuse map too; a peaked one makes the spread a confidence the estimator can refuse on.
    spread_weight: float = 0.1


def estimate(estimator: CubeStateEstimator, frames: CubeFrames, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2, 2) estimated cube and zone centres (m) and (N, 2) spreads, unchecked, in batches."""
    points, spreads = [], []
    for start in range(0, len(frames), batch_size):
        p, s = estimator.locate(frames.images[start : start + batch_size])
        points.append(p)
        spreads.append(s)
    return np.concatenate(points), np.concatenate(spreads)


def held_out_report(estimator: CubeStateEstimator, frames: CubeFrames) -> dict[str, dict[str, float]]:
    """Per point: median / p90 / p99 / max horizontal error (mm), and the spreads' p99 and max."""
    points, spreads = estimate(estimator, frames)
    truth = np.stack([frames.cube[:, :2], frames.zone], axis=1)
    errors = np.linalg.norm(points - truth, axis=-1) * 1000.0
    report: dict[str, dict[str, float]] = {}
    for k, name in enumerate(KEYPOINTS):
        e = errors[:, k]
        report[name] = {
            "median_mm": float(np.median(e)),
            "p90_mm": float(np.percentile(e, 90)),
            "p99_mm": float(np.percentile(e, 99)),
            "max_mm": float(e.max()),
            "spread_p99": float(np.percentile(spreads[:, k], 99)),
            "spread_max": float(spreads[:, k].max()),
        }
    report["frames"] = {
        "count": float(len(frames)),
        "refused": float((spreads.max(axis=1) > estimator.max_spread).sum()),
    }
    return report


def train_cube_estimator(
    frames: CubeFrames,
    eval_frames: CubeFrames,
    camera: PinholeCamera,
    out: Path,
    image_size: int = 96,
    width: int = 32,
    config: CubeTrainConfig | None = None,
    progress: bool = True,
) -> tuple[CubeStateEstimator, list[dict]]:
    """Train for config.steps; writes out/cube_estimator (at each evaluation and the end) and out/log.jsonl."""
    from tqdm.auto import tqdm

    config = config or CubeTrainConfig()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    net = KeypointNet(net_config(image_size, width))
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = warmup_cosine(optimizer, config.warmup_steps, config.steps)
    scale = torch.tensor([camera.width, camera.height], dtype=torch.float32)  # fractions -> camera pixels
    targets = torch.from_numpy(image_points(camera, frames.cube, frames.zone).astype(np.float32))
    out.mkdir(parents=True, exist_ok=True)
    log: list[dict] = []
    started = time.monotonic()
    bar = tqdm(range(config.steps), desc="train cube estimator", disable=not progress)
    with open(out / "log.jsonl", "w") as log_file:
        for step in bar:
            net.train()
            index = rng.integers(0, len(frames), config.batch_size)
            images = images_to_input(frames.images[index], image_size, torch.device("cpu"))
            points, spreads = net.locate(images)
            position_loss = ((points - targets[index]) * scale).abs().mean()
            spread_px = spreads.mean() * float(scale.mean())
            loss = position_loss + config.spread_weight * spread_px
            clipped_step(loss, net, optimizer, scheduler)
            entry: dict = {
                "step": step,
                "loss_px": position_loss.item(),
                "spread_px": spread_px.item(),
                "seconds": time.monotonic() - started,
            }
            if (step + 1) % config.evaluate_every == 0 or step == config.steps - 1:
                estimator = CubeStateEstimator(net, camera)
                entry["held_out"] = held_out_report(estimator, eval_frames)
                save_cube_estimator(net, camera, out / "cube_estimator", {"step": step, "held_out": entry["held_out"]})
                net = estimator.net  # the same module, kept in float32 on the CPU
                bar.write(f"step {step + 1}: held-out {json.dumps(entry['held_out'])}")
            if step % 25 == 0 or "held_out" in entry:
                log.append(entry)
                log_file.write(json.dumps(entry) + "\n")
                log_file.flush()
                bar.set_postfix(loss_px=f"{entry['loss_px']:.2f}")
    return CubeStateEstimator(net, camera, max_spread=MAX_SPREAD), log


def write_cube_examples(
    estimator: CubeStateEstimator, frames: CubeFrames, path: Path, shown: int = 8, worst: int = 4
) -> Path:
    """A sheet of held-out frames with the estimated cube and zone centres (cyan crosses) and the true ones
    (white): `shown` seeded picks, then the `worst` by cube error."""
    from rla_wm.evaluation.visualize import image_grid, points_overlay, save_png

    points, _ = estimate(estimator, frames)
    truth = np.stack([frames.cube[:, :2], frames.zone], axis=1)
    error = np.linalg.norm(points[:, 0] - truth[:, 0], axis=-1)
    picks = list(np.random.default_rng(0).permutation(len(frames))[:shown]) + list(np.argsort(-error)[:worst])
    camera = estimator.camera
    scale = np.array([camera.width, camera.height])
    pictures = []
    for i in picks:
        estimated = image_points(camera, [*points[i, 0], frames.cube[i, 2]], points[i, 1]) * scale
        true = image_points(camera, frames.cube[i], frames.zone[i]) * scale
        white, cyan = (255, 255, 255), (0, 220, 255)
        marks = [(true[0], white), (true[1], white), (estimated[0], cyan), (estimated[1], cyan)]
        pictures.append(points_overlay(frames.images[i], marks, height=192))
    return save_png(image_grid(pictures, columns=4), path)
