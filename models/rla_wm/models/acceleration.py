"""What helps on a GPU, in one place: torch.compile of the transformer blocks or of a whole model.

Attention already runs fused (`F.scaled_dot_product_attention` in `layers.Attention`; the ViT
encoders load with transformers' "sdpa" attention). Compiling fuses the element-wise work around
the matrix products (layer norms, adaLN modulation, GELU, residual gates) into a few kernels, and
mode "reduce-overhead" replays each compiled graph as a CUDA graph, which removes the per-kernel
launch cost that dominates batch-1 latency on a GPU.

`compile_blocks` compiles each `Block` of a model rather than the model: the models' Python loops
(Euler steps, chained chunks, variable-length GRU packing) stay eager, so no graph breaks on them,
and identical blocks share one compiled graph.
"""

from __future__ import annotations

import torch._dynamo
from torch import nn

from rla_wm.models.layers import Block

COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
# Every Block of every model shares Block.forward's code, and each variant (plain, adaptive,
# cross-attending, cached keys; batch 1 and a planning batch) is one more compiled entry for it.
# Dynamo's default of 8 entries per code object is reached by the policy and a world model in one
# process, after which it silently runs the remaining variants eager.
RECOMPILE_LIMIT = 64


def _check_mode(mode: str) -> None:
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {COMPILE_MODES}, got {mode!r}")


def compile_blocks(model: nn.Module, mode: str, backend: str = "inductor") -> int:
    """Compile every transformer `Block` inside `model` in place (compiled on first call); returns how
    many. Mode "none" compiles nothing."""
    _check_mode(mode)
    if mode == "none":
        return 0
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    blocks = [module for module in model.modules() if isinstance(module, Block)]
    for block in blocks:
        block.compile(mode=None if mode == "default" else mode, backend=backend)
    return len(blocks)


def compile_whole(model: nn.Module, mode: str, backend: str = "inductor") -> bool:
    """Compile `model`'s forward as one graph in place (a ViT encoder: one call, no Python loops);
    returns whether it did."""
    _check_mode(mode)
    if mode == "none":
        return False
    model.compile(mode=None if mode == "default" else mode, backend=backend)
    return True
