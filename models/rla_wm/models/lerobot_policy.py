"""A LeRobot pretrained-policy folder as a chunk policy over camera images (ROS-free).

`lerobot-train` writes `<output_dir>/checkpoints/last/pretrained_model/`: config.json (the policy
config, with its `type`), model.safetensors and the pre/post-processor pipelines with their
normalisation statistics. `LeRobotChunkPolicy` loads such a folder the way LeRobot's own evaluation
does (`get_policy_class(type).from_pretrained`, `make_pre_post_processors(pretrained_path=...)`) and
turns one camera image plus the robot state into a chunk of absolute targets (B, T, A) in the
dataset's units: the post-processor unnormalises the whole chunk with the dataset's action statistics.

What it keeps from LeRobot's `select_action`: the observation history. Diffusion conditions on its
last `n_obs_steps` observations, so every call pushes one observation in order, and `reset()` (or a
stamp that goes backwards or jumps by more than `history_timeout`) starts a new history, as LeRobot
resets its queues at every episode start. What it leaves out: LeRobot's action queue, which plays a
chunk one step at a time; the caller gets the whole chunk of `n_action_steps` points and replans on
the next observation. ACT and diffusion are supported; other types (and policies that need more than
one camera or an environment state) are refused at load.

Joint units: the node works in radians with the URDF's joint names. A policy trained on a dataset in
LeRobot's SO-101 layout (recorded by `lerobot-record`, a community SO-101 dataset, or this stack's
recorder with joint_layout so101_lerobot) takes and gives degrees with the gripper in 0..100; with
`joint_units` (`So101LeRobotUnits`) the adapter converts the state on the way in and the chunk on
the way out, so the chunk that leaves it is always in radians.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from rla_wm.models.checkpoint import CheckpointError, first_non_finite

if TYPE_CHECKING:
    from rla_wm.envs.so101.lerobot_units import So101LeRobotUnits

LEROBOT_PREFIX = "lerobot:"
SUPPORTED_TYPES = ("act", "diffusion")
STATE_KEY = "observation.state"
STACKED_IMAGES_KEY = "observation.images"  # diffusion's queue of all cameras, stacked
PROCESSOR_FILES = ("policy_preprocessor.json", "policy_postprocessor.json")


def lerobot_folder(spec: str) -> Path | None:
    """The folder `spec` names if it is a LeRobot policy, else None.

    "lerobot:<folder>" always names one (the folder may be missing: `load_lerobot_policy` says so).
    A plain folder is one when its config.json is an object with a string "type" and no "kind" (this
    project's checkpoints carry "kind"); an unreadable config.json is left to the project's loader.
    """
    if spec.startswith(LEROBOT_PREFIX):
        return Path(spec.removeprefix(LEROBOT_PREFIX)).expanduser()
    folder = Path(spec).expanduser()
    try:
        meta = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if isinstance(meta, dict) and isinstance(meta.get("type"), str) and "kind" not in meta:
        return folder
    return None


@dataclass(frozen=True)
class LeRobotPolicyConfig:
    """What a node needs to feed a LeRobot policy and schedule its chunks."""

    policy_type: str
    image_key: str  # the one camera feature, e.g. observation.image
    image_shape: tuple[int, int, int]  # (C, H, W) the policy was trained on
    state_dim: int  # 0 when the policy takes no state
    action_dim: int
    chunk_length: int  # points per chunk: the policy's n_action_steps
    n_obs_steps: int  # observations it conditions on
    encoder_id: str  # "lerobot:<type>", the input's name in diagnostics


class LeRobotChunkPolicy:
    """camera image (B, H, W, 3) uint8 + state (B, S) -> (B, T, A) absolute targets, float32 on the CPU.

    State and chunk are in the policy's dataset units, or in radians with `joint_units` (the policy
    then works in LeRobot's SO-101 units, converted here both ways)."""

    def __init__(
        self,
        policy: Any,
        preprocessor: Any,
        postprocessor: Any,
        device: torch.device,
        history_timeout: float | None = None,
        joint_units: So101LeRobotUnits | None = None,
    ) -> None:
        self.policy = policy
        self.preprocessor = preprocessor
        self.postprocessor = postprocessor
        self.device = device
        self.history_timeout = history_timeout
        self.joint_units = joint_units
        self.config = _describe(policy.config)
        if joint_units is not None:
            from rla_wm.envs.so101.lerobot_units import JOINT_NAMES

            dims = {self.config.action_dim, self.config.state_dim or self.config.action_dim}
            if dims != {len(JOINT_NAMES)}:
                raise CheckpointError(
                    f"SO-101 joint units need a policy over the {len(JOINT_NAMES)} SO-101 joints; this one "
                    f"takes a state of {self.config.state_dim} and acts on {self.config.action_dim}"
                )
        self.observations = 0  # pushed into the history since the last reset
        self.last_stamp: float | None = None
        self.reset()

    def reset(self) -> None:
        """Forget the observation history (a new episode)."""
        self.policy.reset()
        self.observations = 0
        self.last_stamp = None

    def images_to_tensor(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 RGB -> (B, 3, H', W') float in [0, 1] at the policy's input size, as
        LeRobot's environments feed images (any other camera size is resized, aspect ratio not kept)."""
        images = torch.as_tensor(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
            raise ValueError(f"expected (B, H, W, 3) uint8 RGB images, got {tuple(images.shape)} {images.dtype}")
        pixels = images.to(self.device).permute(0, 3, 1, 2).float() / 255.0
        size = self.config.image_shape[1:]
        if tuple(pixels.shape[-2:]) != size:
            pixels = F.interpolate(pixels, size=size, mode="bilinear", antialias=True, align_corners=False)
        return pixels.clamp_(0.0, 1.0)

    @torch.no_grad()
    def __call__(
        self, images: np.ndarray | torch.Tensor, state: np.ndarray | torch.Tensor, stamp: float | None = None
    ) -> torch.Tensor:
        """Push this observation into the history and predict the chunk that starts at it.

        `stamp` (seconds) is the observation's time: one not after the previous stamp, or more than
        `history_timeout` after it, resets the history first (a new episode or a gap in the stream).
        """
        pixels = self.images_to_tensor(images)
        state = torch.as_tensor(state, dtype=torch.float32)
        expected = (pixels.shape[0], self.config.state_dim)
        if self.config.state_dim and tuple(state.shape) != expected:
            raise ValueError(f"expected a state of shape {expected}, got {tuple(state.shape)}")
        if stamp is not None and self.last_stamp is not None:
            gap = stamp - self.last_stamp
            if gap <= 0 or (self.history_timeout is not None and gap > self.history_timeout):
                self.reset()
        observation = {self.config.image_key: pixels}
        if self.config.state_dim:
            if self.joint_units is not None:
                state = torch.from_numpy(self.joint_units.to_lerobot(state.numpy())).float()
            observation[STATE_KEY] = state.to(self.device)
        batch = self.preprocessor(observation)
        # Only observations go to the model: the pre-processor's transition adds empty action/reward keys.
        batch = {key: value for key, value in batch.items() if key.startswith("observation.")}
        if self.config.policy_type == "diffusion":
            actions = self._diffusion_chunk(batch)
        else:
            actions = self.policy.predict_action_chunk(batch)[:, : self.config.chunk_length]
        self.observations += 1
        self.last_stamp = stamp
        chunk = self.postprocessor(actions).float().cpu()
        if self.joint_units is not None:
            if not torch.isfinite(chunk).all():
                return chunk  # left for the caller's non-finite check, which drops the chunk
            chunk = torch.from_numpy(self.joint_units.to_radians(chunk.numpy())).float()
        return chunk

    def _diffusion_chunk(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """As DiffusionPolicy.select_action up to its action queue: stack the cameras, push the observation
        into the policy's own history queues, predict from the queued n_obs_steps observations."""
        from lerobot.policies.utils import populate_queues

        batch = dict(batch)
        batch[STACKED_IMAGES_KEY] = torch.stack([batch[key] for key in self.policy.config.image_features], dim=-4)
        self.policy._queues = populate_queues(self.policy._queues, batch)
        return self.policy.predict_action_chunk(batch)


def _describe(config: Any) -> LeRobotPolicyConfig:
    """Our summary of a LeRobot policy config; CheckpointError for what a one-camera node cannot feed."""
    if config.type not in SUPPORTED_TYPES:
        raise CheckpointError(f"LeRobot policy type {config.type!r} is not supported; supported: {SUPPORTED_TYPES}")
    cameras = dict(config.image_features)
    if len(cameras) != 1:
        raise CheckpointError(
            f"the policy takes {len(cameras)} cameras ({sorted(cameras)}); the node feeds exactly one"
        )
    if config.env_state_feature is not None:
        raise CheckpointError(
            "the policy takes an environment state (observation.environment_state), which no camera gives"
        )
    if config.action_feature is None:
        raise CheckpointError("the policy has no action output feature")
    (image_key, image_feature), state = next(iter(cameras.items())), config.robot_state_feature
    if len(image_feature.shape) != 3:
        raise CheckpointError(f"camera feature {image_key} has shape {image_feature.shape}, expected (C, H, W)")
    channels, height, width = (int(n) for n in image_feature.shape)
    return LeRobotPolicyConfig(
        policy_type=config.type,
        image_key=image_key,
        image_shape=(channels, height, width),
        state_dim=int(state.shape[0]) if state is not None else 0,
        action_dim=int(config.action_feature.shape[0]),
        chunk_length=int(config.n_action_steps),
        n_obs_steps=int(config.n_obs_steps),
        encoder_id=f"{LEROBOT_PREFIX}{config.type}",
    )


def load_lerobot_policy(
    spec: str | Path,
    device: str | torch.device = "cpu",
    history_timeout: float | None = None,
    joint_units: So101LeRobotUnits | None = None,
) -> LeRobotChunkPolicy:
    """Load a LeRobot pretrained_model folder ("lerobot:<folder>" or the folder); CheckpointError when it is
    missing, incomplete, corrupt, of an unsupported kind, or holds non-finite weights or statistics.
    `joint_units`: the policy works in LeRobot's SO-101 units; state and chunk are converted from and to radians."""
    path = str(spec).removeprefix(LEROBOT_PREFIX)
    if not path:
        raise CheckpointError(f"{spec!r} names no folder; expected {LEROBOT_PREFIX}<pretrained_model folder>")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise CheckpointError(
            f"{folder}: no such LeRobot policy folder (expected <output_dir>/checkpoints/last/pretrained_model)"
        )
    missing = [name for name in ("config.json", "model.safetensors", *PROCESSOR_FILES) if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(f"{folder}: not a LeRobot pretrained_model folder, missing {missing}")
    try:
        meta = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{folder / 'config.json'}: corrupt ({err})") from err
    policy_type = meta.get("type") if isinstance(meta, dict) else None
    if policy_type not in SUPPORTED_TYPES:  # before building a model of a kind we cannot run
        raise CheckpointError(
            f"{folder}: LeRobot policy type {policy_type!r} is not supported; supported: {SUPPORTED_TYPES}"
        )
    device = torch.device(device)
    try:
        from lerobot.configs.policies import PreTrainedConfig
        from lerobot.policies.factory import get_policy_class, make_pre_post_processors

        config = PreTrainedConfig.from_pretrained(folder)
        config.device = device.type
        # strict: a weights file that does not fit the config must not leave random weights in place.
        policy = get_policy_class(config.type).from_pretrained(folder, config=config, strict=True)
        preprocessor, postprocessor = make_pre_post_processors(
            policy.config,
            pretrained_path=str(folder),
            preprocessor_overrides={"device_processor": {"device": str(device)}},
        )
    except Exception as err:  # draccus, safetensors, json and torch each raise their own types here
        raise CheckpointError(f"{folder}: cannot load the LeRobot policy: {type(err).__name__}: {err}") from err
    policy.to(device).eval()
    bad = first_non_finite(policy.state_dict())
    for step in (*preprocessor.steps, *postprocessor.steps):
        if bad is None and callable(getattr(step, "state_dict", None)):
            bad = first_non_finite(step.state_dict())
    if bad is not None:
        raise CheckpointError(f"{folder}: non-finite weights or statistics, refusing to load: {bad}")
    return LeRobotChunkPolicy(policy, preprocessor, postprocessor, device, history_timeout, joint_units)
