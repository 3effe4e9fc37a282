"""World action model: chunk bounds, missing-state token, masked losses, overfitting, checkpoints, errors."""

import json

import pytest
import torch

from rla_wm.models.checkpoint import CheckpointError
from rla_wm.models.policy import Policy, PolicyConfig, PolicyLossWeights

from conftest import tiny_policy_config

CONFIG = tiny_policy_config()
STATE_RANGE = 512.0


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread is faster than two fighting over a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_batch(batch: int, seed: int = 0, config: PolicyConfig = CONFIG):
    """Random tokens, z and states; actions reachable from the state (steps within 0.8 max_delta)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, config.num_tokens, config.token_dim, generator=g)
    z = torch.randn(batch, config.latent_tokens, config.latent_dim, generator=g)
    state = 50 + torch.rand(batch, config.state_dim, generator=g) * 400
    steps = (torch.rand(batch, config.chunk_length, config.action_dim, generator=g) * 1.6 - 0.8) * 10.0
    actions = state[:, None] + torch.cumsum(steps, dim=1)
    return tokens, z, state, actions


def test_chunk_steps_never_exceed_max_delta_and_points_stay_in_the_action_range():
    torch.manual_seed(0)
    policy = Policy(CONFIG).eval()
    state = torch.tensor([[100.0, 200.0], [5.0, 500.0]])
    chunk = policy(torch.randn(2, 16, 16), state)
    assert chunk.shape == (2, 5, 2)
    assert policy.predict_rla(torch.randn(2, 16, 16), state).shape == (2, 2, 4)
    # An untrained head stays far inside its bounds, so they would hold by chance: saturate it
    # (increments of -1 in x and +1 in y, in units of max_delta) so that both bounds must act.
    with torch.no_grad():
        policy.action_out[1].weight.zero_()
        policy.action_out[1].bias.copy_(torch.tensor([-50.0, 50.0]))
        chunk = policy(torch.randn(2, 16, 16), state)
    steps = torch.arange(1, 6, dtype=torch.float32)
    # Full steps of max_delta (10), never more...
    torch.testing.assert_close(chunk[0], torch.stack([100.0 - 10 * steps, 200.0 + 10 * steps], dim=1))
    # ...and clamped at the action range [0, 512] where a full step would leave it.
    torch.testing.assert_close(chunk[1, :, 0], torch.zeros(5))
    torch.testing.assert_close(chunk[1, :, 1], torch.tensor([510.0, 512.0, 512.0, 512.0, 512.0]))


def test_node_facing_names_are_the_world_action_model():
    # The policy node builds `Policy(PolicyConfig())` and reads action_dim / encoder_id.
    policy = Policy(PolicyConfig()).eval()
    assert policy.config.action_dim == 2 and policy.config.encoder_id.endswith("@224")
    chunk = policy(torch.randn(1, 256, 192), torch.tensor([[250.0, 260.0]]))
    assert chunk.shape == (1, PolicyConfig().chunk_length, 2)


def test_missing_state_token_stands_in_for_an_absent_state():
    torch.manual_seed(0)
    policy = Policy(CONFIG).eval()
    tokens, _, state, _ = make_batch(3)

    # Without a state the learned token is used (gradient reaches it) and the state projection is not.
    policy.zero_grad()
    policy.predict(tokens, None).actions.sum().backward()
    assert policy.missing_state.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in policy.state_proj.parameters())

    # With a state the token is not used at all.
    policy.zero_grad()
    policy.predict(tokens, state).actions.sum().backward()
    assert policy.missing_state.grad is None or policy.missing_state.grad.abs().sum() == 0

    # Changing the token changes state-free predictions a lot, and nothing else. (Adding a constant
    # to the token would prove nothing: the trunk's pre-norm LayerNorms cancel a constant shift, so
    # the output moves by float rounding only. The perturbation is a fixed random vector with zero
    # mean, ten times the token's own size: heads move by ~20% of their output, a
    # constant shift by ~1e-6.)
    def outputs(out):  # every head, in comparable units
        return torch.cat([out.rla.flatten(1), out.increments.flatten(1), policy.normalise_state(out.state)], dim=1)

    def relative_change(after, before):
        return ((after - before).norm(dim=1) / before.norm(dim=1)).min().item()  # the least-changed sample

    visible = torch.tensor([True, False, True])
    with torch.no_grad():
        blind, seen = outputs(policy.predict(tokens, None)), outputs(policy.predict(tokens, state))
        mixed_before = outputs(policy.predict(tokens, state, visible))
        direction = torch.randn(policy.missing_state.shape, generator=torch.Generator().manual_seed(1))
        direction -= direction.mean()
        policy.missing_state.add_(direction / direction.norm() * 10 * policy.missing_state.norm())
        assert relative_change(outputs(policy.predict(tokens, None)), blind) > 0.05
        torch.testing.assert_close(outputs(policy.predict(tokens, state)), seen)  # unused with a state
        mixed_after = outputs(policy.predict(tokens, state, visible))
        assert relative_change(mixed_after[1:2], mixed_before[1:2]) > 0.05  # the sample without a state
        torch.testing.assert_close(mixed_after[visible], mixed_before[visible])  # the samples with one

    # Per sample: a hidden state gives exactly the state-free prediction, whatever the row holds.
    garbage = state.clone()
    garbage[1] = float("nan")
    with torch.no_grad():
        mixed = policy.predict(tokens, garbage, visible)
        alone = policy.predict(tokens[1:2], None)
    torch.testing.assert_close(mixed.actions[1:2], alone.actions)
    torch.testing.assert_close(mixed.rla[1:2], alone.rla)
    # Without a state the chunk is anchored on the state head's estimate.
    torch.testing.assert_close(mixed.anchor[1], mixed.state[1])
    torch.testing.assert_close(mixed.anchor[0], state[0])


def test_action_free_windows_send_no_action_gradient():
    torch.manual_seed(0)
    policy = Policy(CONFIG)
    tokens, z, state, actions = make_batch(6)
    labelled = torch.tensor([True, False, True, False, True, False])
    action_only = PolicyLossWeights(action=1.0, rla=0.0, state=0.0)

    def gradients(tokens, state, actions, labelled, weights=action_only):
        policy.zero_grad()
        tokens = tokens.clone().requires_grad_(True)
        loss, _ = policy.loss(tokens, z[: len(tokens)], state, actions, labelled, labelled, weights)
        loss.backward()
        return (
            loss.detach(),
            tokens.grad,
            {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None},
        )

    loss, token_grad, grads = gradients(tokens, state, actions, labelled)
    assert loss > 0
    # Action-free windows' inputs get no gradient from the action loss...
    assert token_grad[~labelled].abs().max() == 0
    assert token_grad[labelled].abs().max() > 0
    # ...and their placeholder labels do not matter, even absurd ones.
    wild_actions, wild_state = actions.clone(), state.clone()
    wild_actions[~labelled] = 1e6
    wild_state[~labelled] = -1e6
    loss_wild, _, grads_wild = gradients(tokens, wild_state, wild_actions, labelled)
    torch.testing.assert_close(loss_wild, loss)
    for name in grads:
        torch.testing.assert_close(grads_wild[name], grads[name])
    # A batch of action-free windows only: no action gradient at all, but the RLA loss still trains.
    none = torch.zeros(6, dtype=torch.bool)
    loss_free, _, grads_free = gradients(tokens, state, actions, none)
    assert loss_free == 0 and all(g.abs().max() == 0 for g in grads_free.values())
    loss_rla, _, grads_rla = gradients(tokens, state, actions, none, PolicyLossWeights())
    assert loss_rla > 0 and grads_rla["rla_queries"].abs().max() > 0
    assert grads_rla["action_queries"].abs().max() == 0  # the action head learns from labels only


@pytest.mark.parametrize("action_reads_rla", [True, False])
def test_overfits_a_tiny_dataset(action_reads_rla, one_thread):
    torch.manual_seed(0)
    config = tiny_policy_config(action_reads_rla=action_reads_rla, width=48)
    policy = Policy(config)
    assert hasattr(policy, "rla_in") == action_reads_rla
    tokens, z, state, actions = make_batch(8, seed=1, config=config)
    labelled = torch.tensor([True] * 6 + [False] * 2)
    steps = 300
    optimiser = torch.optim.Adam(policy.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    losses = []
    for _ in range(steps):
        loss, metrics = policy.loss(tokens, z, state, actions, labelled, labelled)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0]
    policy.eval()
    with torch.no_grad():
        chunk = policy(tokens[labelled], state[labelled])
        rla = policy.predict(tokens, state).rla
    # The recorded chunks, next to holding still (what an untrained policy does): a fifth of its
    # error on average, nowhere half its worst. And z of every window, the action-free ones too.
    # Measured with 1 and 2 threads: mean 0.07-0.08, worst 0.23-0.26 of holding still; cosine >= 0.96.
    error = (chunk - actions[labelled]).abs()
    hold_error = (state[labelled, None] - actions[labelled]).abs()
    assert error.mean() < 0.2 * hold_error.mean() and error.max() < 0.5 * hold_error.max()
    assert torch.nn.functional.cosine_similarity(rla.flatten(1), z.flatten(1)).min() > 0.9
    assert metrics["labelled_fraction"] == pytest.approx(0.75)


def test_action_head_reads_the_predicted_rla_only_when_configured():
    torch.manual_seed(0)
    tokens, _, state, _ = make_batch(2)
    for reads in (True, False):
        policy = Policy(tiny_policy_config(action_reads_rla=reads)).eval()
        # Perturb the RLA head's output layer: the chunk changes only if the action head reads z.
        with torch.no_grad():
            before = policy(tokens, state)
            policy.rla_out[1].bias.add_(3.0)
            changed = not torch.allclose(policy(tokens, state), before)
        assert changed == reads


def test_wrong_inputs_raise():
    policy = Policy(CONFIG)
    with pytest.raises(ValueError, match="tokens"):
        policy(torch.randn(1, 10, 16), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="NaN"):
        policy(torch.full((1, 16, 16), float("nan")), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="state"):
        policy(torch.randn(1, 16, 16), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="state=None"):
        policy(torch.randn(1, 16, 16), torch.tensor([[float("nan"), 1.0]]))
    tokens, z, state, actions = make_batch(2)
    with pytest.raises(ValueError, match="z"):
        policy.loss(tokens, z[:, :1], state, actions, torch.ones(2, dtype=torch.bool), torch.ones(2, dtype=torch.bool))
    actions[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="labelled windows"):
        policy.loss(tokens, z, state, actions, torch.ones(2, dtype=torch.bool), torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="token_merge"):
        Policy(tiny_policy_config(token_merge=3))
    with pytest.raises(ValueError, match="max_delta"):
        Policy(tiny_policy_config(max_delta=(1.0,)))


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    policy = Policy(tiny_policy_config(latent_scale=2.5, state_low=(10.0, 20.0), state_high=(400.0, 410.0))).eval()
    policy.save(tmp_path / "ckpt", extra={"rla_checkpoint": "somewhere"})
    loaded, meta = Policy.load(tmp_path / "ckpt")
    tokens, state = torch.randn(2, 16, 16), torch.tensor([[10.0, 20.0], [300.0, 100.0]])
    torch.testing.assert_close(loaded(tokens, state), policy(tokens, state))
    torch.testing.assert_close(loaded(tokens, None), policy(tokens, None))
    torch.testing.assert_close(loaded.predict_rla(tokens, state), policy.predict_rla(tokens, state))
    assert meta["kind"] == "world_action_model" and meta["rla_checkpoint"] == "somewhere"
    assert loaded.config == policy.config


def test_missing_corrupt_and_mismatched_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        Policy.load(tmp_path / "nothing")
    Policy(CONFIG).save(tmp_path / "ok")
    (tmp_path / "ok" / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="unreadable"):
        Policy.load(tmp_path / "ok")
    Policy(CONFIG).save(tmp_path / "mismatch")
    meta = json.loads((tmp_path / "mismatch" / "config.json").read_text())
    meta["config"]["width"] = 64
    (tmp_path / "mismatch" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not fit"):
        Policy.load(tmp_path / "mismatch")
    meta["kind"] = "chunk_policy"  # a checkpoint of the earlier, head-less policy
    (tmp_path / "mismatch" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="expected 'world_action_model'"):
        Policy.load(tmp_path / "mismatch")


def test_scene_head_learns_to_read_the_scene_it_never_takes_as_input(one_thread):
    """Training-only supervision: the scene head reads a pose hidden in the tokens; acting needs no scene."""
    torch.manual_seed(0)
    config = tiny_policy_config(width=48, scene_dim=2, scene_low=(-1.0, -1.0), scene_high=(1.0, 1.0))
    policy = Policy(config)
    tokens, z, state, actions = make_batch(16, seed=2, config=config)
    scene = torch.rand(16, 2) * 2 - 1
    tokens[:, 5, :2] = scene * 3  # the "block" is visible in one patch
    labelled = torch.ones(16, dtype=torch.bool)
    weights = PolicyLossWeights(scene=1.0)
    optimiser = torch.optim.Adam(policy.parameters(), lr=3e-3)
    first = None
    for _ in range(200):
        loss, metrics = policy.loss(tokens, z, state, actions, labelled, labelled, weights, False, scene=scene)
        first = metrics["scene_loss"] if first is None else first
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert metrics["scene_loss"] < 0.1 * first
    with torch.no_grad():
        estimate = policy.estimate_scene(tokens, state)
        assert (estimate - scene).abs().mean() < 0.15  # a constant guess errs by 0.5 on average
        assert policy(tokens, state).shape == (16, config.chunk_length, config.action_dim)

    # Action-free windows carry no scene: their placeholder targets send no gradient.
    policy.zero_grad()
    unlabelled = torch.zeros(16, dtype=torch.bool)
    only_scene = PolicyLossWeights(action=0.0, rla=0.0, state=0.0, scene=1.0)
    loss, _ = policy.loss(tokens, z, state, actions, unlabelled, unlabelled, only_scene, False, scene=scene * 0 + 9)
    loss.backward()
    assert policy.scene_out[1].weight.grad.abs().max() == 0

    with pytest.raises(ValueError, match="no scene head"):
        Policy(CONFIG).loss(tokens, z, state, actions, labelled, labelled, weights, False, scene=scene)
    with pytest.raises(ValueError, match="scene"):
        policy.loss(tokens, z, state, actions, labelled, labelled, weights, False, scene=scene[:, :1])
    with pytest.raises(ValueError, match="scene_low"):
        Policy(tiny_policy_config(scene_dim=2, scene_low=(0.0,), scene_high=(1.0, 1.0)))


def test_token_range_maps_each_state_channel_to_the_unit_range_and_survives_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    # A 3-channel state token (e.g. metres, a wide coordinate, a sine): each channel's range -> [-1, 1].
    low, high = (0.1, 100.0, -1.0), (0.3, 300.0, 1.0)
    scaled_config = tiny_policy_config(num_tokens=1, token_dim=3, token_merge=1, token_norm=False)
    ranged = Policy(tiny_policy_config(**{**vars(scaled_config), "token_low": low, "token_high": high})).eval()
    plain = Policy(scaled_config).eval()
    plain.load_state_dict(ranged.state_dict())  # same weights; the range is not a saved weight
    tokens = torch.tensor([[[0.2, 250.0, 0.5]], [[0.1, 100.0, -1.0]]])
    unit = torch.tensor([[[0.0, 0.5, 0.5]], [[-1.0, -1.0, -1.0]]])
    state = torch.tensor([[10.0, 20.0], [30.0, 40.0]])
    torch.testing.assert_close(ranged(tokens, state), plain(unit, state))
    assert not torch.allclose(ranged(tokens, state), plain(tokens, state))
    ranged.save(tmp_path / "ckpt")
    loaded, _ = Policy.load(tmp_path / "ckpt")
    torch.testing.assert_close(loaded(tokens, state), ranged(tokens, state))
    with pytest.raises(ValueError, match="token_norm"):
        Policy(tiny_policy_config(token_low=(0.0,) * 16, token_high=(1.0,) * 16))
    with pytest.raises(ValueError, match="token_low has 2 entries"):
        Policy(tiny_policy_config(**{**vars(scaled_config), "token_low": (0.0, 0.0), "token_high": (1.0, 1.0)}))
