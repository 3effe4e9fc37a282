"""The ladder's privileged rung, offline: expert demonstrations recorded with the block pose as
observation.environment_state train the same policy recipe on a 1x1 "feature map" of block state,
which the policy node then matches against the sim robot's /sim/block_state."""

import numpy as np
import pytest
import torch
import yaml

from rla_wm.cli import main
from rla_wm.data.datasets import DataError, FeatureCache
from rla_wm.envs.environment_state_encoder import EnvironmentStateEncoder
from rla_wm.envs.pusht.privileged import (
    BLOCK_STATE_CHANNELS,
    BLOCK_STATE_ENCODER_ID,
    block_pose_from_tokens,
)
from rla_wm.envs.pusht.sim import PushTSim
from rla_wm.models.encoder import EncoderConfig
from rla_wm.models.policy_loading import load_policy
from rla_wm.recording.environment import ENVIRONMENT_STATE_KEY
from rla_wm.training.train import build_encoder

pytestmark = pytest.mark.timeout(600)

EPISODES, STEPS, SEED = 3, 30, 7


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    root = tmp_path_factory.mktemp("block_state")
    main(
        [
            "record-pusht",
            f"--root={root / 'demos'}",
            "--repo_id=t/demos",
            f"--episodes={EPISODES}",
            f"--steps={STEPS}",
            f"--seed={SEED}",
            "--policy=expert",
            "--environment_state=true",
        ]
    )
    return root


def test_block_state_encoder_is_built_from_its_id():
    encoder = build_encoder(EncoderConfig(model=BLOCK_STATE_ENCODER_ID))
    assert isinstance(encoder, EnvironmentStateEncoder) and encoder.encoder_id == BLOCK_STATE_ENCODER_ID
    assert (encoder.grid.height, encoder.grid.width, encoder.grid.channels) == (1, 1, BLOCK_STATE_CHANNELS)
    with pytest.raises(ValueError, match="not finite"):
        encoder(torch.full((1, BLOCK_STATE_CHANNELS), float("nan")))


def test_cache_holds_the_simulated_block_pose_of_every_frame(demos, tmp_path):
    cache = FeatureCache.build(
        demos / "demos",
        "t/demos",
        EnvironmentStateEncoder(BLOCK_STATE_ENCODER_ID),
        tmp_path / "cache",
        image_key=ENVIRONMENT_STATE_KEY,
    )
    assert cache.encoder_id == BLOCK_STATE_ENCODER_ID
    assert cache.token_shape == (1, BLOCK_STATE_CHANNELS)
    assert cache.has_actions
    # Replay episode 0's recorded actions in a fresh sim: the cached tokens are its block poses.
    sim = PushTSim(max_steps=STEPS, image_size=96)
    try:
        frame = sim.reset(seed=SEED)
        actions = cache.actions(0)
        poses = [frame.block_pose]
        for action in actions[:-1]:
            frame = sim.step(action)
            poses.append(frame.block_pose)
    finally:
        sim.close()
    cached = block_pose_from_tokens(cache.episode_features(0)[:, 0].astype(np.float64))
    truth = np.asarray(poses)
    # float16 cache: positions to a fraction of a pixel, angles to ~1e-3 rad.
    assert np.abs(cached[:, :2] - truth[:, :2]).max() < 0.5
    turn = np.angle(np.exp(1j * (cached[:, 2] - truth[:, 2])))
    assert np.abs(turn).max() < 5e-3
    # The block moves in these demonstrations, so equality is not trivially a constant.
    assert np.ptp(truth[:, :2], axis=0).max() > 1.0


def test_dataset_without_environment_state_is_refused_by_name(tmp_path):
    main(["record-pusht", f"--root={tmp_path / 'plain'}", "--repo_id=t/plain", "--episodes=1", "--steps=5"])
    with pytest.raises(DataError, match=ENVIRONMENT_STATE_KEY.replace(".", r"\.")):
        FeatureCache.build(
            tmp_path / "plain",
            "t/plain",
            EnvironmentStateEncoder(BLOCK_STATE_ENCODER_ID),
            tmp_path / "cache",
            image_key=ENVIRONMENT_STATE_KEY,
        )


def test_record_refuses_an_unknown_policy(tmp_path):
    from rla_wm.training.config import ConfigError

    with pytest.raises(ConfigError, match="policy must be one of"):
        main(["record-pusht", f"--root={tmp_path / 'x'}", "--policy=teleport"])


def test_block_state_recipe_trains_a_flow_policy_the_node_can_serve(demos):
    config = yaml.safe_load(open("models/configs/sim_pusht_block_state.yaml"))
    config["data"].update(dataset_root="demos", repo_id="t/demos", cache_root="cache", held_out_fraction=0.34)
    config["rla"].update(width=16, encoder_depth=1, decoder_depth=1, heads=2)
    config["policy"].update(width=32, depth=1, head_depth=1, heads=2, flow_steps=3)
    small = {"steps": 6, "batch_size": 8, "log_every": 3, "warmup_steps": 1}
    config["train"] = {"rla": {**small, "min_gap": 2, "max_gap": 8}, "policy": {**small, "ema_decay": 0.9}}
    path = demos / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    main(["train-rla", f"--config_path={path}", f"--out={demos / 'rla'}"])
    main(
        [
            "train-policy",
            f"--config_path={path}",
            f"--rla_checkpoint={demos / 'rla' / 'checkpoint'}",
            f"--out={demos / 'policy'}",
        ]
    )
    policy = load_policy(str(demos / "policy" / "checkpoint"))
    assert policy.config.encoder_id == BLOCK_STATE_ENCODER_ID
    assert (policy.config.num_tokens, policy.config.token_dim) == (1, BLOCK_STATE_CHANNELS)
    assert policy.config.action_head == "flow" and not policy.config.token_norm
