"""Train `BlockPoseNet` on Push-T frames labelled with the sim's block pose (`StateFrames`).

Supervised, unlike the encoder's pretraining: the labels are the pose the simulator logs next
to every frame (`rla-wm collect-frames`). The loss is the L1 distance, in workspace pixels,
between predicted and true keypoints of the T; the reported errors are those of the pose fitted
through the keypoints, on held-out episodes (a separate frames file, other seeds).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rla_wm.envs.pusht.frames import StateFrames
from rla_wm.models.pose_estimator import (
    BlockPoseEstimator,
    BlockPoseNet,
    PoseNetConfig,
    fit_pose,
    images_to_input,
    keypoints_of_pose,
    save_pose_estimator,
)
from rla_wm.training.schedule import clipped_step, warmup_cosine

BLOCK_COLUMNS = slice(2, 6)  # block_x, block_y, block_cos, block_sin in frames.STATE_NAMES


@dataclass(frozen=True)
class PoseTrainConfig:
    steps: int = 6000
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 200
    seed: int = 0
    evaluate_every: int = 500


def block_errors(estimated: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, 3) estimated [x, y, angle] vs (N, 6) frame state -> absolute x and y errors (px), angle error (deg)."""
    block = state[:, BLOCK_COLUMNS]
    true_angle = np.arctan2(block[:, 3], block[:, 2])
    return (
        np.abs(estimated[:, 0] - block[:, 0]),
        np.abs(estimated[:, 1] - block[:, 1]),
        np.degrees(np.abs(np.angle(np.exp(1j * (estimated[:, 2] - true_angle))))),
    )


def pose_errors(estimated: np.ndarray, state: np.ndarray) -> dict[str, float]:
    """(N, 3) estimated [x, y, angle] vs (N, 6) frame state -> mean / p90 absolute errors (px, deg)."""
    dx, dy, dangle = block_errors(estimated, state)
    out = {}
    for name, values in (("x_px", dx), ("y_px", dy), ("angle_deg", dangle)):
        out[f"{name}_mean"] = float(values.mean())
        out[f"{name}_p90"] = float(np.percentile(values, 90))
    return out


# Block centres closer than this to the workspace's edge (px) are reported apart: random play pushes the
# block partly out of the camera's view there, which the task's episodes do not do.
EDGE_MARGIN = 60.0


def held_out_report(estimator: BlockPoseEstimator, frames: StateFrames) -> dict[str, dict[str, float]]:
    """Per group of frames (all, block centre >= EDGE_MARGIN inside the edge, the rest): frame count,
    position and angle error median / p90 / p99 / max, and how many frames the estimator refuses."""
    estimated, residual = estimate_poses(estimator.net, frames.images)
    dx, dy, angle = block_errors(estimated, frames.state)
    position = np.hypot(dx, dy)
    block = frames.state[:, BLOCK_COLUMNS]
    inner = ((block[:, :2] >= EDGE_MARGIN) & (block[:, :2] <= 512.0 - EDGE_MARGIN)).all(axis=1)
    report = {}
    for name, keep in (("all", np.ones(len(frames), bool)), ("inner", inner), ("edge", ~inner)):
        if not keep.any():
            continue
        row: dict[str, float] = {
            "frames": int(keep.sum()),
            "refused": int((residual[keep] > estimator.max_fit_residual).sum()),
        }
        for variable, values in (("position_px", position[keep]), ("angle_deg", angle[keep])):
            for label, q in (("median", 50), ("p90", 90), ("p99", 99), ("max", 100)):
                row[f"{variable}_{label}"] = float(np.percentile(values, q))
        report[name] = row
    return report


@torch.no_grad()
def estimate_poses(net: BlockPoseNet, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, H, W, 3) -> (N, 3) [x, y, angle] and (N,) fit residuals (px) through `net` in eval mode."""
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    model_points = torch.tensor(net.pose_config.keypoints, dtype=torch.float32, device=device)
    poses, residuals = [], []
    for start in range(0, len(images), batch_size):
        points = net(images_to_input(images[start : start + batch_size], net.config.image_size, device))
        pose, residual = fit_pose(points, model_points)
        poses.append(pose.cpu().numpy())
        residuals.append(residual.cpu().numpy())
    net.train(was_training)
    return np.concatenate(poses), np.concatenate(residuals)


def train_pose_estimator(
    frames: StateFrames,
    eval_frames: StateFrames,
    out: Path,
    net_config: PoseNetConfig | None = None,
    config: PoseTrainConfig | None = None,
    progress: bool = True,
) -> tuple[BlockPoseNet, list[dict]]:
    """Train for config.steps; writes out/pose_estimator (at each evaluation and the end), out/log.jsonl."""
    from tqdm import tqdm

    net_config = net_config or PoseNetConfig()
    config = config or PoseTrainConfig()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    net = BlockPoseNet(net_config)
    model_points = torch.tensor(net_config.keypoints, dtype=torch.float32)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    scheduler = warmup_cosine(optimizer, config.warmup_steps, config.steps)
    targets = keypoints_of_pose(torch.from_numpy(frames.state[:, BLOCK_COLUMNS]), model_points)
    out.mkdir(parents=True, exist_ok=True)
    log: list[dict] = []
    started = time.monotonic()
    bar = tqdm(range(config.steps), desc="train pose estimator", disable=not progress)
    with open(out / "log.jsonl", "w") as log_file:
        for step in bar:
            index = rng.integers(0, len(frames), config.batch_size)
            images = images_to_input(frames.images[index], net_config.image_size, torch.device("cpu"))
            loss = (net(images) - targets[index]).abs().mean()
            clipped_step(loss, net, optimizer, scheduler)
            entry: dict = {"step": step, "loss_px": loss.item(), "seconds": time.monotonic() - started}
            if (step + 1) % config.evaluate_every == 0 or step == config.steps - 1:
                entry["held_out"] = pose_errors(estimate_poses(net, eval_frames.images)[0], eval_frames.state)
                save_pose_estimator(net, out / "pose_estimator", {"step": step, "held_out": entry["held_out"]})
                bar.write(f"step {step + 1}: held-out {json.dumps(entry['held_out'])}")
            if step % 25 == 0 or "held_out" in entry:
                log.append(entry)
                log_file.write(json.dumps(entry) + "\n")
                log_file.flush()
                bar.set_postfix(loss_px=f"{entry['loss_px']:.2f}")
    return net, log


def write_pose_examples(net: BlockPoseNet, frames: StateFrames, path: Path, shown: int = 8, worst: int = 4) -> Path:
    """A sheet of held-out frames with the estimated T drawn on them: `shown` seeded picks, then the
    `worst` by position error (where a person sees what the estimator gets wrong)."""
    from rla_wm.evaluation.visualize import block_pose_overlay, image_grid, save_png

    poses, _ = estimate_poses(net, frames.images)
    dx, dy, _ = block_errors(poses, frames.state)
    error = np.hypot(dx, dy)
    picks = list(np.random.default_rng(0).permutation(len(frames))[:shown]) + list(np.argsort(-error)[:worst])
    pictures = [block_pose_overlay(frames.images[i], poses[i], height=192) for i in picks]
    return save_png(image_grid(pictures, columns=4), path)
