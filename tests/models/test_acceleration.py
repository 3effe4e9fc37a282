"""torch.compile of the models' blocks (what the GPU benchmarks' --compile runs): every Block is
compiled in place and the compiled model predicts what the eager one does."""

from __future__ import annotations

import pytest
import torch

from rla_wm.models.acceleration import compile_blocks, compile_whole
from rla_wm.models.layers import Block
from rla_wm.models.prediction import RLAWMPredictor
from rla_wm.models.rla import RLAAutoencoder, RLAConfig
from rla_wm.models.world_model import RLAWorldModel, WorldModelConfig

SHARED = dict(token_dim=8, num_tokens=4)
RLA = RLAConfig(**SHARED, latent_tokens=2, latent_dim=4, width=16, encoder_depth=1, decoder_depth=2, heads=2)
WM = WorldModelConfig(**SHARED, latent_tokens=2, latent_dim=4, width=16, condition_depth=2, flow_depth=1, heads=2)


def predictor() -> RLAWMPredictor:
    torch.manual_seed(0)
    return RLAWMPredictor(RLAWorldModel(WM), RLAAutoencoder(RLA), steps=3, seed=1)


def test_compiled_blocks_predict_what_the_eager_model_predicts() -> None:
    current, actions = torch.randn(3, 4, 8), torch.rand(3, 5, 2) * 512
    eager = predictor().predict(current, actions)
    compiled = predictor()
    # The "eager" backend runs TorchDynamo's capture without code generation: the graph is what a
    # GPU's inductor compiles, checked here in seconds on any CPU.
    models = (compiled.world_model, compiled.autoencoder)
    counts = [compile_blocks(model, "default", backend="eager") for model in models]
    assert counts == [WM.condition_depth + WM.flow_depth, RLA.encoder_depth + RLA.decoder_depth]
    compiled_blocks = [m for m in compiled.world_model.modules() if isinstance(m, Block)]
    assert all(block._compiled_call_impl is not None for block in compiled_blocks)
    torch.testing.assert_close(compiled.predict(current, actions), eager)


def test_mode_none_compiles_nothing_and_unknown_modes_are_refused() -> None:
    model = predictor().world_model
    assert compile_blocks(model, "none") == 0 and compile_whole(model, "none") is False
    assert all(m._compiled_call_impl is None for m in model.modules() if isinstance(m, Block))
    with pytest.raises(ValueError, match="compile mode"):
        compile_blocks(model, "fastest")
