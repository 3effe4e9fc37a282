"""The flow-matching action head represents multimodal demonstrations; the regression head averages them."""

from __future__ import annotations

import pytest
import torch

from rla_wm.models.policy import Policy

from conftest import tiny_policy_config


def train_on_two_modes(head: str, steps: int = 200) -> Policy:
    """One observation, two demonstrated chunks: every step +8 px in x, or every step -8 px."""
    torch.manual_seed(0)
    policy = Policy(tiny_policy_config(action_head=head, chunk_length=4))
    optimizer = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    batch = 64
    tokens = torch.zeros(batch, 16, 16)
    state = torch.full((batch, 2), 256.0)
    sign = torch.where(torch.arange(batch) % 2 == 0, 1.0, -1.0)
    steps_x = 8.0 * sign[:, None] * torch.arange(1, 5)[None]
    actions = state[:, None].repeat(1, 4, 1)
    actions[..., 0] += steps_x
    z = torch.zeros(batch, 2, 4)
    labelled = torch.ones(batch, dtype=torch.bool)
    for _ in range(steps):
        loss, _ = policy.loss(tokens, z, state, actions, labelled, labelled)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return policy.eval()


@pytest.fixture(scope="module")
def two_mode_chunks() -> dict[str, torch.Tensor]:
    chunks = {}
    for head in ("flow", "regression"):
        policy = train_on_two_modes(head)
        policy.reseed(1)
        with torch.no_grad():
            chunks[head] = policy(torch.zeros(200, 16, 16), torch.full((200, 2), 256.0))
    return chunks


def test_the_flow_head_samples_each_demonstrated_mode(two_mode_chunks) -> None:
    final_x = two_mode_chunks["flow"][:, -1, 0] - 256.0  # the demonstrations end at +32 or -32
    right, left = (final_x > 16).float().mean(), (final_x < -16).float().mean()
    # Both modes appear, in roughly equal shares, and almost nothing lands in between.
    assert right > 0.25 and left > 0.25
    assert right + left > 0.8


def test_the_regression_head_averages_the_modes_into_neither(two_mode_chunks) -> None:
    final_x = two_mode_chunks["regression"][:, -1, 0] - 256.0
    assert final_x.abs().max() < 16  # the mean of +32 and -32, not a demonstrated chunk


def test_flow_sampling_is_reproducible_by_seed() -> None:
    policy = Policy(tiny_policy_config(action_head="flow")).eval()
    tokens, state = torch.randn(3, 16, 16), torch.full((3, 2), 100.0)
    with torch.no_grad():
        policy.reseed(5)
        first = policy(tokens, state)
        policy.reseed(5)
        again = policy(tokens, state)
        policy.reseed(6)
        other = policy(tokens, state)
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first, other)


def test_flow_chunks_respect_the_per_point_bound() -> None:
    policy = Policy(tiny_policy_config(action_head="flow", max_delta=(3.0, 3.0))).eval()
    with torch.no_grad():
        # Weights scaled up so the raw flow output is far outside the bound: the clamp must act.
        for parameter in policy.action_out.parameters():
            parameter.mul_(1000.0)
        chunk = policy(torch.randn(8, 16, 16), torch.full((8, 2), 200.0))
    steps = torch.diff(torch.cat([torch.full((8, 1, 2), 200.0), chunk], dim=1), dim=1).abs()
    assert steps.max() <= 3.0 + 1e-4
    assert steps.max() > 2.9  # the bound is reached, so the test would see it broken


def test_an_unknown_action_head_is_refused() -> None:
    with pytest.raises(ValueError, match="action_head"):
        Policy(tiny_policy_config(action_head="diffusion"))


def test_the_flow_head_runs_in_bfloat16_near_its_float32_chunk() -> None:
    """A GPU deployment (bench_models.py --dtype bfloat16) runs the policy in bfloat16: the flow noise,
    drawn on the CPU generator in float32, must enter the model in its dtype, and the chunk stay near
    the float32 one drawn from the same noise."""
    torch.manual_seed(0)
    policy = Policy(tiny_policy_config(action_head="flow")).eval()
    tokens, state = torch.randn(4, 16, 16), torch.full((4, 2), 100.0)
    with torch.no_grad():
        policy.reseed(3)
        reference = policy(tokens, state)
        policy.to(torch.bfloat16)
        policy.reseed(3)
        low = policy(tokens.bfloat16(), state.bfloat16())
    assert low.dtype == torch.bfloat16 and torch.isfinite(low.float()).all()
    # Targets near 100 px: bfloat16 resolves 0.5 px there; the chunk moves up to 50 px from the state.
    assert (low.float() - reference).abs().mean() < 2.0
    assert (reference - 100.0).abs().max() > 1.0  # the chunk moved, so the comparison means something
