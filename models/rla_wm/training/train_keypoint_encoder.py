"""Train `KeypointAutoencoder` on camera frames, without labels (`rla_wm.models.keypoint_encoder`).

The loss is the decoder's mean squared error repainting each frame from its K points, with the
pixels where something moves weighted up (`foreground_weight`). The sim's
state logged next to the frames is used only to report progress: at each evaluation a linear probe
(`rla_wm.evaluation.probe`, the same ridge read-out as for the ViT encoders) is fitted from the
points to the state on part of the held-out episodes and scored on the rest.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rla_wm.envs.pusht.frames import StateFrames
from rla_wm.evaluation.probe import probe_encoder
from rla_wm.models.keypoint_encoder import (
    KeypointAutoencoder,
    KeypointAutoencoderConfig,
    KeypointEncoder,
    save_keypoint_encoder,
)
from rla_wm.models.keypoint_net import images_to_input
from rla_wm.training.schedule import clipped_step, warmup_cosine

# The refusal bound: this many times the largest reconstruction error on held-out frames. Scene frames
# repaint within it; a black, white or noise frame is far outside (tests/models/test_keypoint_encoder.py).
REFUSAL_MARGIN = 3.0


@dataclass(frozen=True)
class KeypointTrainConfig:
    steps: int = 8000
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 200
    seed: int = 0
    evaluate_every: int = 1000
    # Pixels that differ from the training frames' median frame (what moves: the agent, the block) count
    # 1 + foreground_weight times in the loss. The median is computed from the frames themselves, no label:
    # without it the agent (about 0.4 % of the pixels) is left out of the repainting, and its point with it.
    foreground_weight: float = 10.0


def median_frame(model: KeypointAutoencoder, images: np.ndarray, count: int = 2000, seed: int = 0) -> torch.Tensor:
    """(3, T, T) per-pixel median of up to `count` seeded frames at the decoder's target size: the scene's
    static part (background, target outline), since whatever moves is elsewhere in most frames."""
    picks = np.random.default_rng(seed).permutation(len(images))[:count]
    with torch.no_grad():
        targets = model.target(images_to_input(images[picks], model.config.image_size, torch.device("cpu")))
    return targets.median(dim=0).values


def weighted_reconstruction_loss(
    model: KeypointAutoencoder, images: torch.Tensor, background: torch.Tensor, foreground_weight: float
) -> torch.Tensor:
    """Mean squared repainting error, pixels away from the static `background` weighted 1 + foreground_weight."""
    _, painted = model(images)
    target = model.target(images)
    moving = ((target - background).abs().amax(dim=1, keepdim=True) > 0.1).float()
    weights = 1.0 + foreground_weight * moving
    return ((painted - target).pow(2) * weights).sum() / (weights.sum() * 3)


def held_out_evaluation(
    model: KeypointAutoencoder, frames: StateFrames, batch_size: int = 256
) -> tuple[np.ndarray, dict[str, float]]:
    """The model as the encoder it will be saved as (eval mode, no refusal): (N,) per-frame reconstruction
    errors of `frames`, and the linear probe's error per state variable on their held-out episodes."""
    was_training = model.training
    encoder = KeypointEncoder(model)  # puts the model in eval mode
    errors = np.concatenate(
        [
            encoder.points_and_errors(frames.images[i : i + batch_size])[1].numpy()
            for i in range(0, len(frames), batch_size)
        ]
    )
    result = probe_encoder(encoder, frames, kind="linear")
    model.train(was_training)
    return errors, {name: float(error) for name, error in zip(result.names, result.probe_error)}


def train_keypoint_encoder(
    frames: StateFrames,
    eval_frames: StateFrames,
    out: Path,
    model_config: KeypointAutoencoderConfig | None = None,
    config: KeypointTrainConfig | None = None,
    progress: bool = True,
) -> tuple[KeypointAutoencoder, list[dict]]:
    """Train for config.steps; writes out/keypoint_encoder (at each evaluation and the end), out/log.jsonl."""
    from tqdm import tqdm

    model_config = model_config or KeypointAutoencoderConfig()
    config = config or KeypointTrainConfig()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = KeypointAutoencoder(model_config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = warmup_cosine(optimizer, config.warmup_steps, config.steps)
    background = median_frame(model, frames.images, seed=config.seed)
    out.mkdir(parents=True, exist_ok=True)
    log: list[dict] = []
    started = time.monotonic()
    bar = tqdm(range(config.steps), desc="train keypoint encoder", disable=not progress)
    with open(out / "log.jsonl", "w") as log_file:
        for step in bar:
            index = rng.integers(0, len(frames), config.batch_size)
            images = images_to_input(frames.images[index], model_config.image_size, torch.device("cpu"))
            loss = weighted_reconstruction_loss(model, images, background, config.foreground_weight)
            clipped_step(loss, model, optimizer, scheduler)
            entry: dict = {"step": step, "loss": loss.item(), "seconds": time.monotonic() - started}
            if (step + 1) % config.evaluate_every == 0 or step == config.steps - 1:
                errors, entry["held_out_probe"] = held_out_evaluation(model, eval_frames)
                entry["held_out_mse"] = float(errors.mean())
                card = {"step": step, "held_out_mse": entry["held_out_mse"], "linear_probe": entry["held_out_probe"]}
                save_keypoint_encoder(model, out / "keypoint_encoder", REFUSAL_MARGIN * float(errors.max()), card)
                probe = json.dumps(entry["held_out_probe"])
                bar.write(f"step {step + 1}: held-out mse {entry['held_out_mse']:.5f}, probe {probe}")
            if step % 25 == 0 or "held_out_probe" in entry:
                log.append(entry)
                log_file.write(json.dumps(entry) + "\n")
                log_file.flush()
                bar.set_postfix(loss=f"{entry['loss']:.5f}")
    return model, log


def write_keypoint_examples(model: KeypointAutoencoder, frames: StateFrames, path: Path, shown: int = 6) -> Path:
    """A sheet of held-out frames: each frame with its points drawn, next to the decoder's repainting
    (what the encoder kept of the scene), `shown` seeded picks."""
    from rla_wm.evaluation.visualize import image_grid, keypoint_overlay, save_png

    was_training = model.training
    model.eval()
    picks = np.random.default_rng(0).permutation(len(frames))[:shown]
    with torch.no_grad():
        points, painted = model(images_to_input(frames.images[picks], model.config.image_size, torch.device("cpu")))
    model.train(was_training)
    pictures = []
    for frame, frame_points, repainted in zip(frames.images[picks], points.numpy(), painted.numpy()):
        pictures.append(keypoint_overlay(frame, frame_points))
        pictures.append(keypoint_overlay((repainted.transpose(1, 2, 0) * 255).round().astype(np.uint8), frame_points))
    return save_png(image_grid(pictures, columns=4), path)
