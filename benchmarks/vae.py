"""npdiff's AutoencoderKL vs diffusers' AutoencoderKL (PyTorch CPU) on the same weights.

    python benchmarks/vae.py [--only digits16] [--rounds 5 --iters 3] [--json out.json]

Two passes per config, each side in its own process, alternating (benchmarks/harness.py):
  infer  encode + decode of the posterior mean without a tape (torch.no_grad / nd.no_grad)
  train  one VAE training step: encode, z = μ + σ ε, decode,
         L1(x̂, x) + 1e-6 · KL / (C·H·W), backward, AdamW step
Both sides get identical weights (npdiff's initialisation with seed 0, loaded into
diffusers) and 2 threads. Prints median ms, images/s and the ratio npdiff / torch.
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


def _vae(size, channels, blocks, layers, groups, latent):
    return dict(sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=blocks,
                layers_per_block=layers, down_block_types=("DownEncoderBlock2D",) * len(blocks),
                up_block_types=("UpDecoderBlock2D",) * len(blocks), norm_num_groups=groups, latent_channels=latent)


CONFIGS = {
    # `npdiff train --model vae`: digits 16×16 → 4×4×4
    "digits16": dict(batch=32, vae=_vae(16, 1, (16, 32, 32), 1, 8, 4)),
    # a scaled-down SD-v1 VAE: 3 levels, 2 ResNets per level, 64×64 RGB → 16×16×4
    "rgb64": dict(batch=4, vae=_vae(64, 3, (32, 64, 64), 2, 32, 4)),
}

CASES = {f"{c} {p}": {"config": c, "pass": p, "batch": CONFIGS[c]["batch"], "flops": None}
         for c in CONFIGS for p in ("infer", "train")}
KL_WEIGHT = 1e-6


def _npdiff_model(config):
    import npdiff as nd
    from npdiff.models import AutoencoderKL

    nd.manual_seed(0)
    return AutoencoderKL(**CONFIGS[config]["vae"])


def _images(config, rng):
    cfg = CONFIGS[config]
    B, C, S = cfg["batch"], cfg["vae"]["in_channels"], cfg["vae"]["sample_size"]
    return rng.uniform(-1, 1, (B, C, S, S)).astype(np.float32)


def build(side, case):
    info = CASES[case]
    config, train = info["config"], info["pass"] == "train"
    rng = np.random.default_rng(0)
    model, opt = harness.twin_model(side, _npdiff_model(config), "AutoencoderKL", CONFIGS[config]["vae"], train)
    if side == "torch":
        import torch

        def run():
            x = torch.from_numpy(_images(config, rng))
            if not train:
                with torch.no_grad():
                    return model.decode(model.encode(x).latent_dist.mode()).sample
            post = model.encode(x).latent_dist
            recon = model.decode(post.sample()).sample
            loss = (recon - x).abs().mean() + post.kl().mean() * (KL_WEIGHT / x[0].numel())
            opt.zero_grad()
            loss.backward()
            opt.step()

        return run

    import npdiff as nd
    from npdiff.training.vae_trainer import vae_loss

    def run():
        x = _images(config, rng)
        if not train:
            with nd.no_grad():
                return model.decode(model.encode(x).latent_dist.mode()).sample
        post = model.encode(x).latent_dist
        recon = model.decode(post.sample(generator=rng)).sample
        loss, _ = vae_loss(recon, x, post, "l1", KL_WEIGHT)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return run


def main():
    records = harness.main(CASES, build, os.path.abspath(__file__), "npdiff vs diffusers AutoencoderKL benchmark")
    if not records:  # a worker process
        return None
    print()
    print(f"{'config':<10} {'pass':<6} {'batch':>5} {'npdiff ms':>10} {'torch ms':>10} {'ratio':>6}")
    for r in records:
        print(f"{r['config']:<10} {r['pass']:<6} {r['batch']:>5} {r['npdiff_ms']:>10.1f} {r['torch_ms']:>10.1f} "
              f"{r['ratio']:>6.2f}")
    return records


if __name__ == "__main__":
    main()
