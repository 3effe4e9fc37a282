"""Latency, throughput and peak memory of the encoder, the policy and one world-model prediction.

    python benchmarks/bench_models.py                     # small CPU settings (the embedded default)
    python benchmarks/bench_models.py --scale paper --device cuda --dtype bfloat16
    python benchmarks/bench_models.py --scale paper --device cuda --dtype bfloat16 --compile reduce-overhead

Rows:
- encode: camera frames of --frame-size (640x480 raw RGB, as robot cameras publish) resized to
  the encoder's input and encoded, batch 1 and a batch of --encode-batch;
- camera -> command: the policy node's compute for one frame: the host frame to the device, the
  encoder, the policy's chunk (flow head, --flow-steps Euler steps) and the chunk back on the host
  (no ROS here: profile_graph.py measures the graph);
- prediction: one RLA-WM prediction (--euler-steps Euler steps, then the RLA decoder) and one
  regression-baseline prediction, batch 1 and a planning batch of --planning-batch.

Scales: "small" is what the embedded demo runs (the random tiny DINOv2 at 224 px, the pusht_small
sizes); "paper" is the paper's: a DINOv3 ViT-L/16 at 512x512 (32x32 patches of 1024 channels, 4
register tokens), the RLA autoencoder with K=32, D=64 and 12 + 12 blocks of width 1024, RLA-WM
with 8 conditioning + 8 flow blocks of width 1024, a regression baseline of 12 blocks, and a
6-joint policy of 6 blocks of width 512 on 2x2-merged patches. Every model has random weights:
latency does not depend on the values.

Each row prints the median milliseconds over --repeats runs after --warmup runs (the device
synchronised around each), items per second, and peak memory above what the process held
before the row (CUDA's allocator peak on a GPU; the sampled resident set size on a CPU).
--compile compiles the models (rla_wm.models.acceleration): the ViT whole, the other models
block by block; "reduce-overhead" replays CUDA graphs. Compilation happens in the warm-up runs.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable

import torch
from measure import PeakMemory, median_seconds

from rla_wm.models.acceleration import COMPILE_MODES, compile_blocks, compile_whole
from rla_wm.models.encoder import EncoderConfig, FeatureEncoder, make_random_vit
from rla_wm.models.policy import Policy, PolicyConfig
from rla_wm.models.prediction import RegressionPredictor, RLAWMPredictor
from rla_wm.models.regression import RegressionConfig, RegressionModel
from rla_wm.models.rla import RLAAutoencoder, RLAConfig
from rla_wm.models.world_model import RLAWorldModel, WorldModelConfig

JOINTS = 6  # the policy of the paper scale drives a 6-joint arm (the SO-101: 5 joints + gripper)


def configs(scale: str, flow_steps: int) -> tuple[RLAConfig, WorldModelConfig, RegressionConfig, PolicyConfig]:
    if scale == "small":
        shared = dict(token_dim=192, num_tokens=256)
        policy = PolicyConfig(**shared, action_head="flow", flow_steps=flow_steps)
        return (
            RLAConfig(**shared, width=192, encoder_depth=3, decoder_depth=3),
            WorldModelConfig(**shared, width=192, condition_depth=3, flow_depth=3),
            RegressionConfig(**shared, width=192, depth=6),
            policy,
        )
    shared = dict(token_dim=1024, num_tokens=1024)
    joints = dict(
        state_dim=JOINTS,
        action_dim=JOINTS,
        max_delta=(0.05,) * JOINTS,
        action_low=(-3.0,) * JOINTS,
        action_high=(3.0,) * JOINTS,
        state_low=(-3.0,) * JOINTS,
        state_high=(3.0,) * JOINTS,
    )
    return (
        RLAConfig.paper(**shared),
        WorldModelConfig.paper(**shared),
        RegressionConfig.paper(**shared),
        PolicyConfig(
            **shared,
            **joints,
            chunk_length=12,  # the paper's chunk: 12 predicted, 8 executed
            latent_tokens=32,
            latent_dim=64,
            width=512,
            depth=6,
            heads=8,
            mlp_ratio=4.0,
            action_head="flow",
            flow_steps=flow_steps,
        ),
    )


def make_encoder(scale: str, device: str, dtype: str) -> FeatureEncoder:
    if scale == "small":
        return FeatureEncoder(EncoderConfig(device=device, dtype=dtype))
    folder = make_random_vit(
        tempfile.mkdtemp() + "/vitl16", family="dinov3", hidden_size=1024, layers=24, heads=16, patch_size=16
    )
    return FeatureEncoder(EncoderConfig(model=str(folder), resolution=512, device=device, dtype=dtype))


def row(label: str, fn: Callable[[], object], items: int, unit: str, args: argparse.Namespace) -> None:
    for _ in range(args.warmup):
        fn()
    with PeakMemory(args.device) as memory:
        seconds = median_seconds(fn, args.device, args.repeats)
    print(
        f"{label:44s} {seconds * 1e3:9.2f} ms  {items / seconds:10.1f} {unit}/s  peak {memory.mib:8.0f} MiB",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=["small", "paper"], default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--compile", default="none", choices=COMPILE_MODES)
    parser.add_argument("--frame-size", default="640x480", help="camera frames, WIDTHxHEIGHT")
    parser.add_argument("--encode-batch", type=int, default=32)
    parser.add_argument("--planning-batch", type=int, default=300)
    parser.add_argument("--euler-steps", type=int, default=10, help="RLA-WM Euler steps (the paper samples 30)")
    parser.add_argument("--flow-steps", type=int, default=10, help="the policy's flow-head Euler steps")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--skip", default="", help="row groups to skip: encode, command, prediction")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    skip = set(args.skip.split(","))
    torch.manual_seed(0)
    width, height = (int(v) for v in args.frame_size.split("x"))
    rla_config, wm_config, regression_config, policy_config = configs(args.scale, args.flow_steps)
    print(
        f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
        f"dtype {args.dtype}, compile {args.compile}, torch {torch.__version__}, "
        f"torch threads {torch.get_num_threads()}, scale {args.scale}, frames {width}x{height}"
    )

    if not {"encode", "command"} <= skip:
        encoder = make_encoder(args.scale, args.device, args.dtype)
        compile_whole(encoder.model, args.compile)
        frames = torch.randint(0, 255, (args.encode_batch, height, width, 3), dtype=torch.uint8)
        if device.type == "cuda":
            frames = frames.pin_memory()
        print(f"encoder {encoder.encoder_id}: grid {encoder.grid}")
    if "encode" not in skip:
        row("encode batch 1", lambda: encoder(frames[:1]), 1, "frames", args)
        row(f"encode batch {args.encode_batch}", lambda: encoder(frames), args.encode_batch, "frames", args)
    if "command" not in skip:
        policy = Policy(policy_config).to(device, dtype).eval()
        compile_blocks(policy, args.compile)
        state = torch.zeros(1, policy_config.state_dim, device=device, dtype=dtype)
        print(
            f"policy: {sum(p.numel() for p in policy.parameters()) / 1e6:.1f} M parameters, "
            f"chunk {policy_config.chunk_length} x {policy_config.action_dim}, {args.flow_steps} flow steps"
        )

        def camera_to_command() -> torch.Tensor:
            with torch.inference_mode():
                tokens = encoder(frames[:1]).to(dtype)
                return policy(tokens, state).float().cpu()

        row("camera -> command (batch 1)", camera_to_command, 1, "commands", args)

    if "prediction" not in skip:
        autoencoder = RLAAutoencoder(rla_config).to(device, dtype).eval()
        world_model = RLAWorldModel(wm_config).to(device, dtype).eval()
        regression_model = RegressionModel(regression_config).to(device, dtype).eval()
        for model in (autoencoder, world_model, regression_model):
            compile_blocks(model, args.compile)
        regression = RegressionPredictor(regression_model)
        rla_wm = RLAWMPredictor(world_model, autoencoder, steps=args.euler_steps, seed=None)
        for size in (1, args.planning_batch):
            features = torch.randn(size, rla_config.num_tokens, rla_config.token_dim, device=device, dtype=dtype)
            actions = torch.rand(size, 5, 2, device=device, dtype=dtype) * 512
            with torch.inference_mode():
                row(
                    f"RLA-WM prediction batch {size} ({args.euler_steps} Euler)",
                    lambda: rla_wm.predict(features, actions),
                    size,
                    "predictions",
                    args,
                )
                row(
                    f"regression prediction batch {size}",
                    lambda: regression.predict(features, actions),
                    size,
                    "predictions",
                    args,
                )


if __name__ == "__main__":
    main()
