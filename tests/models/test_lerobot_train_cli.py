"""LeRobot's own trainer (`lerobot-train`) on a dataset written by record_pusht_dataset.

Runs the `lerobot-train` commands that docs/training.md ("LeRobot's own trainer") documents,
as subprocesses. Each run uses tiny model sizes and a few steps. The test then loads the
pretrained_model folder that the run wrote, the way LeRobot's own evaluation does: the policy
class's from_pretrained, plus the saved pre/post-processors. Nothing is downloaded:
HF_HUB_OFFLINE=1 is set, and the documented flags keep the ResNet backbones randomly
initialised.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rla_wm.envs.pusht.dataset import ACTION_KEY, IMAGE_KEY, STATE_KEY, record_pusht_dataset

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "training.md"
REPO_ID = "local/pusht_lerobot_train"
STEPS = 3
IMAGE_SIZE = 96
# Tiny sizes, so that a step takes well under a second on one CPU thread. Everything else comes
# from the documented command.
TINY = {
    "diffusion": {
        "policy.down_dims": "[32, 64]",  # two levels: horizon 16 must stay divisible by 2**levels
        "policy.diffusion_step_embed_dim": "32",
        "policy.spatial_softmax_num_keypoints": "8",
        "policy.num_train_timesteps": "10",  # select_action runs this many denoising steps
    },
    "act": {
        "policy.dim_model": "32",
        "policy.n_heads": "2",
        "policy.dim_feedforward": "64",
        "policy.n_encoder_layers": "1",
        "policy.n_decoder_layers": "1",
        "policy.n_vae_encoder_layers": "1",
        "policy.latent_dim": "8",
        "policy.chunk_size": "10",
        "policy.n_action_steps": "10",
    },
}


def documented_train_flags(policy_type: str) -> dict[str, str]:
    """The `--key=value` flags of the `lerobot-train` command that docs/training.md gives for one policy type."""
    section = DOC.read_text().split("## LeRobot's own trainer", 1)[1].split("\n## ", 1)[0]
    for block in re.findall(r"^```sh\n(.*?)^```", section, flags=re.MULTILINE | re.DOTALL):
        for line in block.replace("\\\n", "").splitlines():
            words = shlex.split(line, comments=True)
            if not words or words[0] != "lerobot-train":
                continue
            flags = dict(word.removeprefix("--").split("=", 1) for word in words[1:])
            if flags.get("policy.type") == policy_type:
                return flags
    raise AssertionError(f"docs/training.md documents no `lerobot-train --policy.type={policy_type}` command")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lerobot_train") / "pusht"
    return record_pusht_dataset(root, repo_id=REPO_ID, episodes=2, steps_per_episode=30, progress=False)


def run_lerobot_train(policy_type: str, dataset: Path, output_dir: Path) -> Path:
    """Run the documented command on `dataset`, with tiny sizes; return the last pretrained_model folder."""
    flags = documented_train_flags(policy_type)
    flags.update(TINY[policy_type])
    flags.update(
        {
            "dataset.repo_id": REPO_ID,
            "dataset.root": str(dataset),
            "output_dir": str(output_dir),
            "steps": str(STEPS),
            "batch_size": "2",
            "policy.device": "cpu",
        }
    )
    command = [sys.executable, "-m", "lerobot.scripts.lerobot_train", *(f"--{k}={v}" for k, v in flags.items())]
    # One torch thread, as the docs say: the default pool is many times slower on a busy 2-core machine.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "SVT_LOG": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, f"{shlex.join(command)}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return output_dir / "checkpoints" / "last" / "pretrained_model"


@pytest.mark.parametrize("policy_type", ["diffusion", "act"])
def test_lerobot_train_writes_a_policy_that_loads_and_acts(policy_type: str, dataset: Path, tmp_path: Path) -> None:
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors
    from safetensors.torch import load_file

    model_dir = run_lerobot_train(policy_type, dataset, tmp_path / "run")

    # What the run wrote, as docs/training.md describes it.
    preprocessor = json.loads((model_dir / "policy_preprocessor.json").read_text())
    postprocessor = json.loads((model_dir / "policy_postprocessor.json").read_text())
    steps = preprocessor["steps"] + postprocessor["steps"]
    state_files = {step["state_file"] for step in steps if "state_file" in step}
    assert state_files == {
        "policy_preprocessor_step_3_normalizer_processor.safetensors",
        "policy_postprocessor_step_0_unnormalizer_processor.safetensors",
    }
    for name in ["config.json", "model.safetensors", "train_config.json", *state_files]:
        assert (model_dir / name).is_file(), f"{name} missing from {sorted(p.name for p in model_dir.iterdir())}"
    step = json.loads((model_dir.parent / "training_state" / "training_step.json").read_text())["step"]
    assert step == STEPS

    config = json.loads((model_dir / "config.json").read_text())
    assert config["type"] == policy_type
    assert config["pretrained_backbone_weights"] is None  # nothing to download
    assert config["input_features"] == {
        IMAGE_KEY: {"type": "VISUAL", "shape": [3, IMAGE_SIZE, IMAGE_SIZE]},
        STATE_KEY: {"type": "STATE", "shape": [2]},
    }
    assert config["output_features"] == {ACTION_KEY: {"type": "ACTION", "shape": [2]}}

    # The normaliser carries this dataset's state and action statistics.
    data = LeRobotDataset(REPO_ID, root=dataset)
    normaliser = load_file(model_dir / "policy_preprocessor_step_3_normalizer_processor.safetensors")
    for key in (STATE_KEY, ACTION_KEY):
        for stat in ("min", "max", "mean", "std"):
            expected = torch.as_tensor(data.meta.stats[key][stat], dtype=torch.float32)
            torch.testing.assert_close(normaliser[f"{key}.{stat}"].float(), expected)

    # from_pretrained loads the trained weights: every parameter is the one in model.safetensors.
    policy = get_policy_class(PreTrainedConfig.from_pretrained(model_dir).type).from_pretrained(model_dir)
    policy.eval()
    saved = load_file(model_dir / "model.safetensors")
    loaded = policy.state_dict()
    assert saved and set(saved) <= set(loaded)
    for name, tensor in saved.items():
        assert torch.equal(loaded[name], tensor), name

    pre, post = make_pre_post_processors(policy.config, pretrained_path=str(model_dir))
    frame = data[len(data) // 2]
    observation = {IMAGE_KEY: frame[IMAGE_KEY], STATE_KEY: frame[STATE_KEY], "task": frame["task"]}
    with torch.no_grad():
        action = post(policy.select_action(pre(observation)))
    assert action.shape == (1, 2)
    assert torch.isfinite(action).all()
    if policy_type == "diffusion":
        # Diffusion clips its normalised sample to [-1, 1] and unnormalises MIN_MAX: the action lies within
        # the dataset's action range, in pixels, so the postprocessor's statistics were applied.
        low = torch.as_tensor(data.meta.stats[ACTION_KEY]["min"], dtype=torch.float32)
        high = torch.as_tensor(data.meta.stats[ACTION_KEY]["max"], dtype=torch.float32)
        assert torch.all(action[0] >= low - 1e-3) and torch.all(action[0] <= high + 1e-3), (action, low, high)
