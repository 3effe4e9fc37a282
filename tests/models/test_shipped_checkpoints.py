"""The shipped sim models: small, documented, and working on the sim encoder's features of a real sim frame."""

import json

import numpy as np
import pytest
import torch

from rla_wm.assets import CHECKPOINT_DIR, resolve_model_path
from rla_wm.control.planning import load_predictor
from rla_wm.envs.pusht.sim import PushTSim
from rla_wm.models.encoder import EncoderConfig, FeatureEncoder
from rla_wm.models.policy import Policy

SHIPPED = [
    "sim-pusht-rla",
    "sim-pusht-rla-wm",
    "sim-pusht-regression",
    "sim-pusht-policy",
    "sim-pusht-policy-bc",
    "sim-pusht-policy-direct",
]
SIM_ENCODER = "builtin:dinov2-tiny-random"


@pytest.fixture(scope="module")
def sim_features() -> tuple[torch.Tensor, torch.Tensor]:
    """Features and agent position of a real Push-T start frame, as the encoder node makes them."""
    sim = PushTSim(max_steps=10, image_size=96)
    frame = sim.reset(seed=1234)
    encoder = FeatureEncoder(EncoderConfig(model=SIM_ENCODER, resolution=224))
    with torch.no_grad():
        tokens = encoder(frame.image[None])
    return tokens.float(), torch.tensor(frame.position, dtype=torch.float32)[None]


def test_shipped_models_are_small_and_carry_a_truthful_card():
    total = 0
    for name in SHIPPED:
        folder = CHECKPOINT_DIR / name
        assert (folder / "model.safetensors").is_file(), f"{name} is not shipped"
        meta = json.loads((folder / "config.json").read_text())
        assert meta["stored_dtype"] == "float16"
        assert meta["config"]["encoder_id"].startswith(SIM_ENCODER)
        card = (folder / "README.md").read_text()
        for section in ("## Data", "## Training", "## Metrics", "## Size", "Encoder weights: random"):
            assert section in card, f"{name}'s card lacks {section!r}"
        assert "(no evaluation results found)" not in card
        total += (folder / "model.safetensors").stat().st_size
    assert total < 50e6, f"shipped checkpoints are {total / 1e6:.1f} MB"


@pytest.mark.parametrize("kind", ["rla-wm", "regression"])
def test_shipped_world_models_predict_from_sim_features(sim_features, kind):
    tokens, position = sim_features
    loaded = load_predictor(
        kind, "builtin:sim-pusht-rla", "builtin:sim-pusht-rla-wm", "builtin:sim-pusht-regression", euler_steps=2
    )
    assert (loaded.num_tokens, loaded.token_dim) == tuple(tokens.shape[1:])
    assert loaded.encoder_id.startswith(SIM_ENCODER)
    actions = position[:, None].expand(1, 5, 2).clone() + torch.linspace(0, 40, 5)[None, :, None]
    with torch.no_grad():
        predicted = loaded.predictor.predict(tokens, actions)
    assert predicted.shape == tokens.shape and torch.isfinite(predicted).all()
    assert not torch.equal(predicted, tokens)


@pytest.mark.parametrize("name", ["sim-pusht-policy", "sim-pusht-policy-bc", "sim-pusht-policy-direct"])
def test_shipped_policies_act_in_range_from_sim_features(sim_features, name):
    tokens, position = sim_features
    policy, meta = Policy.load(resolve_model_path(f"builtin:{name}"))
    policy.eval()
    with torch.no_grad():
        chunk = policy(tokens, position)
        blind = policy(tokens, None)  # no joint state: the learned missing-state token
    low, high = np.array(policy.config.action_low), np.array(policy.config.action_high)
    for actions in (chunk, blind):
        assert actions.shape == (1, policy.config.chunk_length, 2)
        values = actions.numpy()
        assert np.isfinite(values).all() and (values >= low - 1e-3).all() and (values <= high + 1e-3).all()
    # The chunk starts at the robot: its first point is within one step's motion of the measured position.
    first_step = np.abs(chunk[0, 0].numpy() - position[0].numpy())
    assert (first_step <= np.array(policy.config.max_delta) + 1e-3).all()
    # And it acts: the range and step bounds above hold by construction (clamp and tanh), a chunk that
    # holds still would pass them too. The shipped policies move 50-80 px over a chunk from this frame.
    assert np.abs(chunk[0].numpy() - position[0].numpy()).max() > 10.0
