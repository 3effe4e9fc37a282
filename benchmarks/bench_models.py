"""Latency of the feature encoder and of one world-model prediction, batch 1 and a planning batch.

    python benchmarks/bench_models.py                     # small CPU settings (the embedded default)
    python benchmarks/bench_models.py --scale paper --device cuda --dtype bfloat16

Prints median milliseconds over --repeats runs after warm-up. Models have random
weights: latency does not depend on the values.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rla_wm.models.encoder import EncoderConfig, FeatureEncoder, make_random_dinov2
from rla_wm.models.prediction import RegressionPredictor, RLAWMPredictor
from rla_wm.models.regression import RegressionConfig, RegressionModel
from rla_wm.models.rla import RLAAutoencoder, RLAConfig
from rla_wm.models.world_model import RLAWorldModel, WorldModelConfig


def timed(fn, repeats: int, device: torch.device) -> float:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    fn()
    sync()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=["small", "paper"], default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--planning-batch", type=int, default=300)
    parser.add_argument("--euler-steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)

    if args.scale == "small":
        encoder_config = EncoderConfig(device=args.device, dtype=args.dtype)
        rla = RLAConfig(width=192, encoder_depth=3, decoder_depth=3)
        wm = WorldModelConfig(width=192, condition_depth=3, flow_depth=3)
        reg = RegressionConfig(width=192, depth=6)
    else:
        import tempfile

        folder = make_random_dinov2(
            tempfile.mkdtemp() + "/vitl", hidden_size=1024, layers=24, heads=16, patch_size=16, image_size=512
        )
        encoder_config = EncoderConfig(model=str(folder), resolution=512, device=args.device, dtype=args.dtype)
        rla = RLAConfig.paper(token_dim=1024, num_tokens=1024)
        wm = WorldModelConfig(
            token_dim=1024,
            num_tokens=1024,
            latent_tokens=32,
            latent_dim=64,
            width=1024,
            condition_depth=8,
            flow_depth=8,
            heads=16,
        )
        reg = RegressionConfig(token_dim=1024, num_tokens=1024, width=1024, depth=12, heads=16)

    encoder = FeatureEncoder(encoder_config)
    frames = torch.randint(0, 255, (args.planning_batch, 96, 96, 3), dtype=torch.uint8)
    print(f"device {device}, dtype {args.dtype}, torch threads {torch.get_num_threads()}, scale {args.scale}")
    print(f"encoder {encoder.encoder_id} grid {encoder.grid}")
    print(f"  encode batch 1:   {timed(lambda: encoder(frames[:1]), args.repeats, device):9.1f} ms")
    batch = min(32, args.planning_batch)
    print(f"  encode batch {batch}:  {timed(lambda: encoder(frames[:batch]), args.repeats, device):9.1f} ms")

    autoencoder = RLAAutoencoder(rla).to(device, dtype).eval()
    world_model = RLAWorldModel(wm).to(device, dtype).eval()
    regression = RegressionPredictor(RegressionModel(reg).to(device, dtype).eval())
    rla_wm = RLAWMPredictor(world_model, autoencoder, steps=args.euler_steps, seed=None)
    for size in (1, args.planning_batch):
        features = torch.randn(size, rla.num_tokens, rla.token_dim, device=device, dtype=dtype)
        actions = torch.rand(size, 5, 2, device=device, dtype=dtype) * 512
        with torch.inference_mode():
            wm_ms = timed(lambda: rla_wm.predict(features, actions), args.repeats, device)
            reg_ms = timed(lambda: regression.predict(features, actions), args.repeats, device)
        print(
            f"prediction batch {size:4d}: RLA-WM ({args.euler_steps} Euler steps) {wm_ms:9.1f} ms | "
            f"regression {reg_ms:9.1f} ms"
        )


if __name__ == "__main__":
    main()
