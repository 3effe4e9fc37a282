"""Pretrain the project's own small ViT encoder on simulator frames, self-supervised.

Pretrained DINO weights cannot be downloaded on offline machines, and a randomly
initialised ViT's features barely carry the block's orientation. This trains a
DINOv2-architecture ViT (saved as a `transformers` Dinov2Model folder, so
`FeatureEncoder` loads it exactly as it loads hub DINOv2/v3) with the masked
autoencoder objective (He et al., "Masked Autoencoders Are Scalable Vision
Learners", 2022): the encoder sees a random quarter of the patches, a small decoder
paints the other three quarters from the encoder's tokens.

Why masked autoencoding rather than DINO/iBOT self-distillation:
- what it must encode is what the world model needs: to paint the hidden patches,
  the visible tokens must say where the agent and the block are and how the block is
  turned, while DINO's crop invariance is built to discard position;
- on a 2-core CPU it is about 8x cheaper per image than iBOT with two global views
  (the encoder runs on 25 % of the tokens and there is no teacher pass);
- no collapse mode to tune on near-identical synthetic scenes (self-distillation
  relies on centering/sharpening and large, diverse batches).
DINOv2's own iBOT term is a masked-prediction objective too; the masked
autoencoder predicts pixels instead of a teacher's tokens.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from rla_wm.envs.pusht.frames import StateFrames
from rla_wm.models.encoder import IMAGENET_MEAN, IMAGENET_STD
from rla_wm.training.schedule import clipped_step, warmup_cosine

if TYPE_CHECKING:
    from transformers import Dinov2Model


CALIBRATION_FRAMES = 512


@dataclass(frozen=True)
class PretrainConfig:
    image_size: int = 96
    patch_size: int = 8
    hidden_size: int = 192
    layers: int = 6
    heads: int = 3
    decoder_width: int = 128
    decoder_layers: int = 2
    decoder_heads: int = 4
    mask_ratio: float = 0.75
    # Reconstruct each patch normalised by its own mean and std (MAE's norm_pix_loss): flat
    # background patches then cost nothing, and the loss is spent on edges (block, agent, target).
    norm_pix_loss: bool = False
    steps: int = 6000
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_steps: int = 300
    seed: int = 0
    save_every: int = 500


def make_dinov2(config: PretrainConfig) -> Dinov2Model:
    from transformers import Dinov2Config, Dinov2Model

    return Dinov2Model(
        Dinov2Config(
            hidden_size=config.hidden_size,
            num_hidden_layers=config.layers,
            num_attention_heads=config.heads,
            intermediate_size=4 * config.hidden_size,
            patch_size=config.patch_size,
            image_size=config.image_size,
        )
    )


def sincos_positions(side: int, width: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position codes (side*side, width), as MAE's decoder uses."""
    if width % 4:
        raise ValueError(f"width must be a multiple of 4, got {width}")
    quarter = width // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    ys, xs = torch.meshgrid(
        torch.arange(side, dtype=torch.float32), torch.arange(side, dtype=torch.float32), indexing="ij"
    )
    out = []
    for coordinate in (ys.flatten(), xs.flatten()):
        angles = coordinate[:, None] * omega[None]
        out += [angles.sin(), angles.cos()]
    return torch.cat(out, dim=1)


class MaskedAutoencoder(nn.Module):
    """DINOv2 encoder + small transformer decoder that reconstructs masked patches."""

    decoder_positions: torch.Tensor  # buffer, registered in __init__

    def __init__(self, config: PretrainConfig) -> None:
        super().__init__()
        if config.image_size % config.patch_size:
            raise ValueError("image_size must be a multiple of patch_size")
        self.config = config
        self.encoder = make_dinov2(config)
        self.side = config.image_size // config.patch_size
        width = config.decoder_width
        self.decoder_embed = nn.Linear(config.hidden_size, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        nn.init.normal_(self.mask_token, std=0.02)
        self.register_buffer("decoder_positions", sincos_positions(self.side, width)[None], persistent=False)
        layer = nn.TransformerEncoderLayer(
            width, config.decoder_heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.decoder = nn.TransformerEncoder(layer, config.decoder_layers, enable_nested_tensor=False)
        self.decoder_norm = nn.LayerNorm(width)
        self.to_pixels = nn.Linear(width, config.patch_size**2 * 3)

    def patchify(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, N, p*p*3) in the encoder's row-major patch order."""
        p = self.config.patch_size
        b = pixels.shape[0]
        patches = pixels.reshape(b, 3, self.side, p, self.side, p).permute(0, 2, 4, 3, 5, 1)
        return patches.reshape(b, self.side * self.side, p * p * 3)

    def forward(
        self, pixels: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked-patch reconstruction loss and the predicted patches (B, N, p*p*3)."""
        b = pixels.shape[0]
        n = self.side * self.side
        keep = max(1, round(n * (1.0 - self.config.mask_ratio)))
        noise = torch.rand(b, n, generator=generator, device=pixels.device)
        ids_keep = noise.argsort(dim=1)[:, :keep]
        embeddings = self.encoder.embeddings(pixels)  # (B, 1 + N, C), positions added
        patch_tokens = embeddings[:, 1:]
        visible = patch_tokens.gather(1, ids_keep[..., None].expand(-1, -1, patch_tokens.shape[-1]))
        hidden = self.encoder.encoder(torch.cat([embeddings[:, :1], visible], dim=1)).last_hidden_state
        hidden = self.decoder_embed(self.encoder.layernorm(hidden))
        tokens = self.mask_token.expand(b, n, -1).clone()
        tokens.scatter_(1, ids_keep[..., None].expand(-1, -1, tokens.shape[-1]), hidden[:, 1:])
        tokens = torch.cat([hidden[:, :1], tokens + self.decoder_positions], dim=1)
        predicted = self.to_pixels(self.decoder_norm(self.decoder(tokens)))[:, 1:]
        masked = torch.ones(b, n, dtype=torch.bool, device=pixels.device)
        masked.scatter_(1, ids_keep, False)
        target = self.patchify(pixels)
        if self.config.norm_pix_loss:
            # eps as in MAE: a flat patch's target is all zeros, not amplified noise.
            target = (target - target.mean(dim=-1, keepdim=True)) / (target.var(dim=-1, keepdim=True) + 1e-6).sqrt()
        error = (predicted - target).pow(2).mean(dim=-1)
        return error[masked].mean(), predicted


def normalise(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) normalised as FeatureEncoder.preprocess does."""
    pixels = torch.as_tensor(images).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


@torch.no_grad()
def standardise_output(encoder: Dinov2Model, images: np.ndarray, batch_size: int = 64) -> dict[str, float]:
    """Refit the final LayerNorm's affine so every output channel has mean 0 and std 1 over `images`' patch tokens.

    A masked autoencoder's output tokens are mostly the LayerNorm's bias: over sim frames they vary by about
    1 % of their size, which float16 storage and every downstream model (a LayerNorm over channels keeps
    the constant part) would have to dig out. The new affine is a per-channel linear map of the old
    output, so the features carry exactly the same information. Returns the spread before and after.
    """
    was_training = encoder.training
    encoder.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        hidden = encoder(pixel_values=normalise(images[start : start + batch_size])).last_hidden_state[:, 1:]
        outputs.append(hidden.float().reshape(-1, hidden.shape[-1]))
    tokens = torch.cat(outputs)
    mean, std = tokens.mean(0), tokens.std(0).clamp_min(1e-6)
    norm = encoder.layernorm
    # y = w * n + b  ->  (y - mean) / std = (w / std) * n + (b - mean) / std
    norm.weight.copy_(norm.weight.float() / std)
    norm.bias.copy_((norm.bias.float() - mean) / std)
    encoder.train(was_training)
    return {"frame_std_before": float(tokens.std(0).mean()), "abs_mean_before": float(tokens.abs().mean())}


def save_encoder(model: MaskedAutoencoder, folder: Path, calibration_images: np.ndarray | None = None) -> Path:
    """The encoder alone, float16, as a transformers folder (FeatureEncoder casts on load); with
    `calibration_images` its output channels are standardised on them first (`standardise_output`)."""
    import copy

    encoder = copy.deepcopy(model.encoder).float()
    if calibration_images is not None:
        standardise_output(encoder, calibration_images)
    encoder.half().save_pretrained(folder, safe_serialization=True)
    return folder


def pretrain(
    frames: StateFrames, config: PretrainConfig, out: Path, progress: bool = True
) -> tuple[MaskedAutoencoder, list[dict]]:
    """Train for config.steps; writes out/encoder (every save_every steps and at the end) and out/log.jsonl."""
    from tqdm import tqdm

    if frames.images.shape[1:3] != (config.image_size, config.image_size):
        raise ValueError(f"frames are {frames.images.shape[1:3]}, config.image_size is {config.image_size}")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = MaskedAutoencoder(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.95))

    scheduler = warmup_cosine(optimizer, config.warmup_steps, config.steps)
    out.mkdir(parents=True, exist_ok=True)
    # The frames the saved encoder's output is standardised on: a fixed, seeded sample.
    calibration = frames.images[np.random.default_rng(config.seed).permutation(len(frames))[:CALIBRATION_FRAMES]]
    log: list[dict] = []
    started = time.monotonic()
    bar = tqdm(range(config.steps), desc="pretrain encoder", disable=not progress)
    with open(out / "log.jsonl", "w") as log_file:
        for step in bar:
            batch = normalise(frames.images[rng.integers(0, len(frames), config.batch_size)])
            loss, _ = model(batch, generator)
            clipped_step(loss, model, optimizer, scheduler)
            if step % 25 == 0 or step == config.steps - 1:
                entry = {
                    "step": step,
                    "loss": float(loss),
                    "lr": scheduler.get_last_lr()[0],
                    "seconds": time.monotonic() - started,
                }
                log.append(entry)
                log_file.write(json.dumps(entry) + "\n")
                log_file.flush()
                bar.set_postfix(loss=f"{float(loss):.4f}")
            if (step + 1) % config.save_every == 0 or step == config.steps - 1:
                save_encoder(model, out / "encoder", calibration)
    return model, log
