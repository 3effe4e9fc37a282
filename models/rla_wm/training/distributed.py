"""What keeps a training command correct under N processes (`accelerate launch`, `torchrun`).

- `start_run`: one accelerator per run, DDP over NCCL on GPUs and gloo on CPUs;
- `ShardedBatches`: every process draws the same seeded global batch of `batch_size` items and
  keeps items rank, rank + N, ... of it, so N processes with B / N items each take the same
  optimiser steps on the same data as one process with B (DDP averages their gradients);
- `Objective`: the model and its loss as one module, so DDP's forward (which arms the gradient
  averaging) runs on every step;
- `mean_over_processes`: the logged loss and metrics are averages over all processes;
- the main process alone writes (feature caches, checkpoints, logs); the others wait at barriers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Sampler

from rla_wm.training.config import ConfigError, TrainConfig

if TYPE_CHECKING:
    from accelerate import Accelerator

    from rla_wm.models.checkpoint import Checkpointable

LossFn = Callable[[tuple], tuple[torch.Tensor, dict[str, float]]]

# How long a process waits at a barrier: the others wait while the main process encodes a
# dataset into its feature cache (the ViT over every frame, hours on a large dataset).
# Run `rla-wm cache-features` before a multi-process launch to keep that out of it.
BARRIER_TIMEOUT = timedelta(hours=6)


def start_run(config: TrainConfig) -> Accelerator:
    """The accelerator of one training run over every process the launcher started."""
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        # Without it, accelerate ignores a torchrun launch on a machine without GPUs and every
        # process would train alone.
        cpu=not torch.cuda.is_available(),
        # batch_size is the global batch: the scheduler steps once per optimiser step, not N times.
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        kwargs_handlers=[
            # A policy batch may leave a head unused (e.g. no hidden state): DDP must not wait for it.
            DistributedDataParallelKwargs(find_unused_parameters=True),
            InitProcessGroupKwargs(timeout=BARRIER_TIMEOUT),
        ],
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != launched:
        raise RuntimeError(
            f"{launched} processes were launched but accelerate runs {accelerator.num_processes}: "
            "each would train alone"
        )
    if config.batch_size % accelerator.num_processes:
        raise ConfigError(
            f"batch_size {config.batch_size} (the global batch) does not split evenly across "
            f"{accelerator.num_processes} processes"
        )
    return accelerator


class ShuffledBatches(Sampler[list[int]]):
    """Global batches of `batch_size` distinct items, reshuffled each pass from (seed, pass).

    Every process builds the same one, so every process knows the whole global batch. The
    short batch at the end of a pass is dropped: it could not split evenly across processes.
    """

    def __init__(self, item_count: int, batch_size: int, seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if item_count < batch_size:
            raise ConfigError(f"{item_count} training items are fewer than the batch_size {batch_size}")
        self.item_count = int(item_count)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self._passes = 0

    def __len__(self) -> int:
        return self.item_count // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        order = np.random.default_rng([self.seed, self._passes]).permutation(self.item_count)
        self._passes += 1
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield [int(i) for i in order[start : start + self.batch_size]]


class ShardedBatches(Sampler[list[int]]):
    """This process's share of each global batch: items rank, rank + N, rank + 2N, ...

    Dealt round-robin rather than cut in blocks so that a batch ordered by kind (labelled
    windows first, then action-free ones) gives every process the same mix.
    """

    def __init__(self, global_batches: Sampler[list[int]], rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.global_batches = global_batches
        self.rank = int(rank)
        self.world_size = int(world_size)

    def __len__(self) -> int:
        return len(self.global_batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches:
            if len(batch) % self.world_size:
                raise ValueError(f"a batch of {len(batch)} items does not split across {self.world_size} processes")
            yield batch[self.rank :: self.world_size]


class Objective(torch.nn.Module):
    """A model and its loss as one module.

    DDP averages gradients only for a loss computed inside its own forward; calling the
    model's `loss` method on the unwrapped model would train every process alone.
    """

    def __init__(self, model: torch.nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: tuple) -> tuple[torch.Tensor, dict[str, float]]:
        return self.loss_fn(batch)


def mean_over_processes(accelerator: Accelerator, loss: torch.Tensor, metrics: dict[str, float]) -> dict[str, float]:
    """{"loss": ..., **metrics}, each averaged over the processes (a collective: all must call it)."""
    names = sorted(metrics)
    values = torch.tensor(
        [float(loss.detach()), *(float(metrics[n]) for n in names)], dtype=torch.float64, device=accelerator.device
    )
    values = accelerator.reduce(values, reduction="mean")
    return dict(zip(["loss", *names], values.tolist()))


def same_on_every_process(accelerator: Accelerator, value: Any) -> Any:
    """The main process's `value` everywhere: numbers measured on the data (scales, ranges) can
    differ in the last bit between processes with other thread counts, and the models must not."""
    from accelerate.utils import broadcast_object_list

    if accelerator.num_processes == 1:
        return value
    return broadcast_object_list([value], from_process=0)[0]


def save_on_main(accelerator: Accelerator, model: Checkpointable, folder: Path, extra: dict) -> Path:
    """The main process writes the checkpoint; every process returns once it is there."""
    if accelerator.is_main_process:
        folder = model.save(folder, extra=extra)
    accelerator.wait_for_everyone()
    return folder
