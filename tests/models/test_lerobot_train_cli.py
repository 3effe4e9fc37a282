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

import pytest
import torch

from rla_wm.envs.pusht.dataset import ACTION_KEY, IMAGE_KEY, STATE_KEY

# The dataset, the documented command and the tiny sizes live in conftest.py: the trained folders are
# shared with the other LeRobot tests of a run (test_lerobot_policy.py, test_lerobot_policy_graph.py).
from conftest import LEROBOT_REPO_ID as REPO_ID
from conftest import LEROBOT_TRAIN_STEPS as STEPS

pytestmark = pytest.mark.timeout(300)

IMAGE_SIZE = 96


@pytest.mark.parametrize("policy_type", ["diffusion", "act"])
def test_lerobot_train_writes_a_policy_that_loads_and_acts(
    policy_type: str, lerobot_dataset, lerobot_pretrained
) -> None:
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors
    from safetensors.torch import load_file

    dataset = lerobot_dataset
    model_dir = lerobot_pretrained(policy_type)

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
