"""The shipped SO-101 models: the cube-state policy (builtin:sim-so101-policy-cube-state) and the front-camera
cube estimator (builtin:sim-so101-cube-cnn). Each is small, float16, with a card; the estimator reads the cube
and zone from unseen frames (at the sim's 128 px and from a 480 px render) and refuses a dead camera; the policy
does the task in closed loop (in process, the way `rla-wm rollout --robot=so101` runs it), on the sim's cube
state and on the camera's estimate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rla_wm.assets import CHECKPOINT_DIR
from rla_wm.envs.so101.environment_state import CUBE_STATE_ENCODER_ID
from rla_wm.envs.so101.expert import So101Expert
from rla_wm.envs.so101.sim import So101Sim
from rla_wm.evaluation.rollout import run_rollouts, tokens_function
from rla_wm.models.cube_estimator import WEIGHTS_FILE, CubeStateEstimator
from rla_wm.models.encoder import EncoderConfig, load_encoder
from rla_wm.models.keypoint_net import PoseEstimatorError
from rla_wm.models.policy_loading import load_policy

pytestmark = pytest.mark.timeout(300)

POLICY = "sim-so101-policy-cube-state"
ESTIMATOR = "sim-so101-cube-cnn"
EXECUTE_STEPS = 2  # the policy card's
# Unseen seeds each solved in 12-14 steps when measured, on the sim's state and on the camera; two of three
# must still be solved within 150 steps (a margin for another CPU's numerics: contact is chaotic).
EASY_SEEDS = [3, 4, 6]
# The card's held-out medians are under 1 mm; these bounds leave a wide margin for other CPUs.
MEDIAN_MM = 3.0


def test_the_policy_is_shipped_small_with_a_card():
    folder = CHECKPOINT_DIR / POLICY
    meta = json.loads((folder / "config.json").read_text())
    assert meta["stored_dtype"] == "float16" and meta["config"]["encoder_id"] == CUBE_STATE_ENCODER_ID
    assert (folder / "model.safetensors").stat().st_size < 10e6
    card = (folder / "README.md").read_text()
    for section in ("## Data", "## Training", "## Closed loop", "## Size", "execute_steps 2"):
        assert section in card, f"the card lacks {section!r}"


def test_the_estimator_is_shipped_small_with_a_card():
    folder = CHECKPOINT_DIR / ESTIMATOR
    assert (folder / WEIGHTS_FILE).stat().st_size < 2e6
    state = torch.load(folder / WEIGHTS_FILE, weights_only=True)
    assert all(value.dtype == torch.float16 for value in state.values() if value.is_floating_point())
    card = (folder / "README.md").read_text()
    for section in ("## Data", "## Training", "## Held-out error", "## Frames without the scene are refused"):
        assert section in card, f"the card lacks {section!r}"
    held_out = json.loads((folder / "metrics.json").read_text())["held_out"]
    assert held_out["cube"]["p90_mm"] < 5.0 and held_out["zone"]["p90_mm"] < 5.0


def expert_frames(size: int, seeds: range, every: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Front-camera frames of the scripted expert pushing the cube (seeds the estimator never saw), with the
    cube's and the zone's true x, y."""
    sim = So101Sim(max_steps=40, width=size, height=size)
    expert = So101Expert()
    images, cubes, zones = [], [], []
    try:
        for seed in seeds:
            frame = sim.reset(seed)
            expert.reset()
            while not frame.done:
                if frame.step % every == 0:
                    images.append(frame.image)
                    cubes.append(frame.cube_pose[:2])
                    zones.append(frame.zone[:2])
                frame = sim.step(expert(frame))
    finally:
        sim.close()
    return np.stack(images), np.stack(cubes), np.stack(zones)


@pytest.mark.parametrize("size", [128, 480])
def test_the_estimator_reads_cube_and_zone_from_unseen_frames(size):
    torch.set_num_threads(1)
    encoder = load_encoder(EncoderConfig(model=f"builtin:{ESTIMATOR}"))
    assert isinstance(encoder, CubeStateEstimator) and encoder.encoder_id == CUBE_STATE_ENCODER_ID
    images, cubes, zones = expert_frames(size, range(1001, 1004))
    points, spreads = encoder.locate(images)
    cube_mm = np.linalg.norm(points[:, 0] - cubes, axis=-1) * 1000
    zone_mm = np.linalg.norm(points[:, 1] - zones, axis=-1) * 1000
    assert np.median(cube_mm) < MEDIAN_MM and np.median(zone_mm) < MEDIAN_MM, (size, cube_mm, zone_mm)
    # The zone is never hidden from the front camera: no frame far off.
    assert zone_mm.max() < 15.0, (size, zone_mm.max())
    # Peaked heat maps on real frames: the estimator trusts (almost) all of them.
    assert (spreads.max(axis=1) <= encoder.max_spread).mean() > 0.9


def test_a_dead_camera_is_refused_not_read_as_a_cube():
    estimator = CubeStateEstimator.load(f"builtin:{ESTIMATOR}")
    frame = So101Sim(max_steps=5).reset(seed=7).image
    noise = np.random.default_rng(0).integers(0, 255, frame.shape, dtype=np.uint8)
    for name, image in (("black", np.zeros_like(frame)), ("white", np.full_like(frame, 255)), ("noise", noise)):
        with pytest.raises(PoseEstimatorError, match="heat map spreads"):
            estimator(image)
        _, spreads = estimator.locate(image)
        # Measured: 0.19 and more, against 0.011-0.014 on real frames and a limit of 0.05.
        assert spreads.max() > 2 * estimator.max_spread, name
    _, spreads = estimator.locate(frame)
    assert spreads.max() < estimator.max_spread / 2


@pytest.mark.parametrize("camera", [False, True], ids=["cube-state", "camera"])
def test_the_policy_solves_unseen_starts_on_the_sims_state_and_on_the_camera(camera):
    torch.set_num_threads(1)
    policy = load_policy(f"builtin:{POLICY}")
    tokens_of = tokens_function(
        policy.config.encoder_id, torch.device("cpu"), camera_encoder=f"builtin:{ESTIMATOR}" if camera else ""
    )
    summary, episodes = run_rollouts(
        policy, tokens_of, EASY_SEEDS, EXECUTE_STEPS, max_steps=150, progress=False, robot="so101"
    )
    assert summary.successes >= 2, episodes
