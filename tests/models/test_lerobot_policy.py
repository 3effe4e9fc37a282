"""rla_wm.models.lerobot_policy: a LeRobot pretrained_model folder as a chunk policy over camera images.

The diffusion folder is the one `lerobot-train` writes (the documented command, tiny sizes, a few steps:
the `lerobot_pretrained` fixture of conftest.py, shared with test_lerobot_train_cli.py). The adapter's
chunk must be LeRobot's own action, in the dataset's units, and its observation history must behave as
LeRobot's queues do. ACT is built with the policy class and its processors (save_pretrained), which is
the same folder layout without a training run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rla_wm.assets import resolve_model_path
from rla_wm.envs.pusht.dataset import ACTION_KEY, IMAGE_KEY, STATE_KEY
from rla_wm.models.checkpoint import CheckpointError
from rla_wm.models.lerobot_policy import LeRobotChunkPolicy, lerobot_folder, load_lerobot_policy
from rla_wm.models.policy_loading import load_any_policy, load_policy

from conftest import LEROBOT_REPO_ID

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def frames(lerobot_dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image (96, 96, 3) uint8, state (2,) pixels) of four dataset frames, two from each episode."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    data = LeRobotDataset(LEROBOT_REPO_ID, root=lerobot_dataset)
    picked = []
    for index in (5, 6, len(data) - 6, len(data) - 5):
        frame = data[index]
        image = (frame[IMAGE_KEY].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
        picked.append((image, frame[STATE_KEY].numpy()))
    return picked


@pytest.fixture(scope="module")
def action_range(lerobot_dataset) -> tuple[torch.Tensor, torch.Tensor]:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    stats = LeRobotDataset(LEROBOT_REPO_ID, root=lerobot_dataset).meta.stats[ACTION_KEY]
    return torch.as_tensor(stats["min"]).float(), torch.as_tensor(stats["max"]).float()


def lerobot_action(folder: Path, image: np.ndarray, state: np.ndarray, seed: int) -> torch.Tensor:
    """The first action of LeRobot's own evaluation path (from_pretrained, saved processors, select_action)."""
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    policy = get_policy_class(PreTrainedConfig.from_pretrained(folder).type).from_pretrained(folder).eval()
    pre, post = make_pre_post_processors(policy.config, pretrained_path=str(folder))
    observation = {
        IMAGE_KEY: torch.from_numpy(image).permute(2, 0, 1).float() / 255.0,
        STATE_KEY: torch.from_numpy(state),
    }
    torch.manual_seed(seed)
    with torch.no_grad():
        return post(policy.select_action(pre(observation)))


def test_diffusion_folder_gives_lerobots_own_action_as_a_chunk_in_pixels(lerobot_pretrained, frames, action_range):
    folder = lerobot_pretrained("diffusion")
    assert lerobot_folder(str(folder)) == folder  # found by its config.json's "type"
    assert lerobot_folder(resolve_model_path("builtin:sim-pusht-policy")) is None  # this project's checkpoint
    policy = load_any_policy(str(folder))
    assert isinstance(policy, LeRobotChunkPolicy)
    config = policy.config
    assert (config.policy_type, config.image_key, config.image_shape) == ("diffusion", IMAGE_KEY, (3, 96, 96))
    assert (config.state_dim, config.action_dim, config.n_obs_steps) == (2, 2, 2)
    saved = json.loads((folder / "config.json").read_text())
    assert config.chunk_length == saved["n_action_steps"] == 8

    image, state = frames[0]
    torch.manual_seed(11)
    chunk = policy(image[None], state[None])
    assert chunk.shape == (1, 8, 2) and chunk.dtype == torch.float32
    assert torch.isfinite(chunk).all()
    # Point 0 is exactly what LeRobot's select_action returns for the same observation and noise.
    torch.testing.assert_close(chunk[:, 0], lerobot_action(folder, image, state, seed=11), atol=1e-4, rtol=0)
    # Pixels, not normalised values: diffusion clips its sample to [-1, 1] and the post-processor maps that
    # onto the dataset's action range, whose lower bound is >= 20 px (the recorder's target margin).
    low, high = action_range
    assert (low >= 20.0).all()
    assert (chunk >= low - 1e-3).all() and (chunk <= high + 1e-3).all(), (chunk, low, high)
    # A camera of another size is resized to the policy's input (96x96) rather than refused.
    wide = np.ascontiguousarray(np.repeat(np.repeat(image, 2, axis=0), 3, axis=1))  # 192x288
    assert policy(wide[None], state[None]).shape == (1, 8, 2)
    with pytest.raises(ValueError, match="uint8"):
        policy(image[None].astype(np.float32), state[None])


def test_observation_history_is_kept_in_order_and_reset_between_episodes(lerobot_pretrained, frames):
    policy = load_lerobot_policy(f"lerobot:{lerobot_pretrained('diffusion')}", history_timeout=1.0)
    (first, first_state), (_, _), (other, other_state), _ = frames

    def act(image: np.ndarray, state: np.ndarray, stamp: float | None) -> torch.Tensor:
        torch.manual_seed(3)  # the same noise for every prediction: chunks differ only by their history
        return policy(image[None], state[None], stamp=stamp)

    policy.reset()
    alone = act(other, other_state, None)  # a fresh history: the one observation, n_obs_steps times
    policy.reset()
    act(first, first_state, 10.0)
    after_first = act(other, other_state, 10.1)
    assert policy.observations == 2
    # Diffusion conditions on both observations: the earlier frame changes the chunk.
    assert (after_first - alone).abs().max() > 1e-2, "the observation history made no difference"

    act(first, first_state, 10.2)  # the history ends [other, first]
    policy.reset()  # a new episode: forgotten (kept, it would be [first, other], as after_first)
    assert policy.observations == 0
    torch.testing.assert_close(act(other, other_state, 20.0), alone)
    # A gap beyond history_timeout, or a stamp going backwards, starts a new history too.
    act(first, first_state, 30.0)
    torch.testing.assert_close(act(other, other_state, 31.5), alone)
    assert policy.observations == 1
    act(first, first_state, 40.0)
    torch.testing.assert_close(act(other, other_state, 39.0), alone)
    act(first, first_state, 50.0)
    torch.testing.assert_close(act(other, other_state, 50.1), after_first)  # in order, within the timeout


def test_act_policy_folder_gives_its_whole_chunk(lerobot_dataset, frames, tmp_path):
    """ACT (deterministic at inference), saved the way lerobot-train saves it, with the dataset's statistics."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy
    from lerobot.policies.factory import make_pre_post_processors

    config = ACTConfig(
        input_features={
            IMAGE_KEY: PolicyFeature(FeatureType.VISUAL, (3, 96, 96)),
            STATE_KEY: PolicyFeature(FeatureType.STATE, (2,)),
        },
        output_features={ACTION_KEY: PolicyFeature(FeatureType.ACTION, (2,))},
        pretrained_backbone_weights=None,
        dim_model=32,
        n_heads=2,
        dim_feedforward=64,
        n_encoder_layers=1,
        n_decoder_layers=1,
        n_vae_encoder_layers=1,
        latent_dim=8,
        chunk_size=10,
        n_action_steps=6,
        device="cpu",
    )
    torch.manual_seed(0)
    stats = LeRobotDataset(LEROBOT_REPO_ID, root=lerobot_dataset).meta.stats
    pre, post = make_pre_post_processors(config, dataset_stats=stats)
    folder = tmp_path / "act"
    for part in (ACTPolicy(config), pre, post):
        part.save_pretrained(folder)

    policy = load_any_policy(str(folder))
    assert isinstance(policy, LeRobotChunkPolicy) and policy.config.chunk_length == 6
    image, state = frames[1]
    chunk = policy(image[None], state[None])
    assert chunk.shape == (1, 6, 2) and torch.isfinite(chunk).all()
    torch.testing.assert_close(chunk[:, 0], lerobot_action(folder, image, state, seed=0), atol=1e-4, rtol=0)
    # MEAN_STD: an untrained ACT's normalised outputs are small, so its targets lie near the dataset's mean.
    mean, std = (torch.as_tensor(stats[ACTION_KEY][key]).float() for key in ("mean", "std"))
    assert ((chunk - mean).abs() < 5 * std).all(), (chunk, mean, std)


def broken_copy(folder: Path, tmp_path: Path, name: str) -> Path:
    copy = tmp_path / name
    shutil.copytree(folder, copy)
    return copy


def test_missing_or_corrupt_folders_are_clear_checkpoint_errors(lerobot_pretrained, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = lerobot_pretrained("diffusion")
    with pytest.raises(CheckpointError, match="no such LeRobot policy folder"):
        load_lerobot_policy(f"lerobot:{tmp_path / 'missing'}")
    with pytest.raises(CheckpointError, match="names no folder"):
        load_lerobot_policy("lerobot:")

    no_weights = broken_copy(folder, tmp_path, "no_weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"missing \['model.safetensors'\]"):
        load_any_policy(str(no_weights))

    truncated = broken_copy(folder, tmp_path, "truncated")
    weights = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(CheckpointError, match="cannot load the LeRobot policy"):
        load_any_policy(str(truncated))

    # A weights file that does not fit the config must not leave random weights in place.
    short = broken_copy(folder, tmp_path, "short")
    state = load_file(short / "model.safetensors")
    del state[sorted(state)[0]]
    save_file(state, short / "model.safetensors")
    with pytest.raises(CheckpointError, match="cannot load the LeRobot policy"):
        load_any_policy(str(short))

    nan = broken_copy(folder, tmp_path, "nan")
    state = load_file(nan / "model.safetensors")
    name = sorted(state)[-1]
    state[name] = torch.full_like(state[name], float("nan"))
    save_file(state, nan / "model.safetensors")
    with pytest.raises(CheckpointError, match=f"non-finite.*{name}"):
        load_any_policy(str(nan))

    garbled = broken_copy(folder, tmp_path, "garbled")
    (garbled / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: corrupt"):
        load_any_policy(f"lerobot:{garbled}")

    other_type = broken_copy(folder, tmp_path, "other_type")
    config = json.loads((other_type / "config.json").read_text())
    (other_type / "config.json").write_text(json.dumps({**config, "type": "sac"}))
    with pytest.raises(CheckpointError, match="type 'sac' is not supported"):
        load_any_policy(str(other_type))

    # The feature-policy loader names what the folder is instead of a confusing config error.
    with pytest.raises(CheckpointError, match="LeRobot policy folder"):
        load_policy(str(folder))


class _HoldingPolicy:
    """A LeRobot-shaped ACT policy over the six SO-101 joints that returns its input state as every chunk
    point, plus 10 (degrees) on shoulder_pan: what units go in and come out is then visible."""

    def __init__(self) -> None:
        from types import SimpleNamespace

        feature = lambda *shape: SimpleNamespace(shape=shape)  # noqa: E731
        self.config = SimpleNamespace(
            type="act",
            image_features={"observation.images.front": feature(3, 32, 32)},
            env_state_feature=None,
            action_feature=feature(6),
            robot_state_feature=feature(6),
            n_action_steps=4,
            n_obs_steps=1,
        )
        self.seen_states: list[torch.Tensor] = []

    def reset(self) -> None:
        pass

    def predict_action_chunk(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        state = batch[STATE_KEY]
        self.seen_states.append(state.clone())
        chunk = state[:, None].repeat(1, self.config.n_action_steps, 1)
        chunk[..., 0] += 10.0
        return chunk


def test_so101_lerobot_units_are_converted_from_and_to_radians():
    """A policy trained on LeRobot's SO-101 layout sees degrees and a 0..100 gripper; the node gets radians."""
    from rla_wm.envs.so101.lerobot_units import default_units

    units = default_units()
    policy = _HoldingPolicy()
    identity = lambda batch: batch  # noqa: E731
    adapter = LeRobotChunkPolicy(policy, identity, identity, torch.device("cpu"), joint_units=units)
    radians = np.array(
        [[0.3, -0.5, 1.0, 0.2, -1.2, units.gripper_lower + 0.25 * (units.gripper_upper - units.gripper_lower)]]
    )
    chunk = adapter(np.zeros((1, 48, 64, 3), dtype=np.uint8), radians)
    seen = policy.seen_states[-1].numpy()
    np.testing.assert_allclose(seen[0, :5], np.degrees(radians[0, :5]), rtol=1e-5)
    assert seen[0, 5] == pytest.approx(25.0, abs=1e-3)  # a quarter open
    expected = radians.copy()
    expected[0, 0] += np.radians(10.0)
    assert chunk.shape == (1, 4, 6)
    np.testing.assert_allclose(chunk[0].numpy(), np.repeat(expected, 4, axis=0), atol=1e-5)
    # Without the conversion the same policy's chunk is in its own (degree) units: the difference is real.
    plain = LeRobotChunkPolicy(_HoldingPolicy(), identity, identity, torch.device("cpu"))
    assert plain(np.zeros((1, 48, 64, 3), dtype=np.uint8), radians)[0, 0, 0] == pytest.approx(10.3, abs=1e-5)

    two_joint = _HoldingPolicy()
    two_joint.config.action_feature.shape = (2,)
    two_joint.config.robot_state_feature.shape = (2,)
    with pytest.raises(CheckpointError, match="SO-101 joints"):
        LeRobotChunkPolicy(two_joint, identity, identity, torch.device("cpu"), joint_units=units)
