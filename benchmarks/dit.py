"""npdiff's DiTTransformer2DModel vs diffusers' (PyTorch CPU) on the same weights.

    python benchmarks/dit.py [--only digits16] [--rounds 5 --iters 3] [--json out.json]
    python benchmarks/dit.py --profile [digits16|latent32]     # per-op profile of one npdiff training step

Workloads (each side in its own process, alternating; see benchmarks/harness.py):
  digits16  the `npdiff train --model dit` digits model: 1×16×16, patch 2 (64 tokens),
            width 96 (3 heads of 32), 3 blocks, 10 classes, batch 32
  latent32  a DiT-S-like block stack on 4×32×32 latents: patch 2 (256 tokens),
            width 192 (6 heads), 4 blocks, batch 8

Passes:
  infer  forward without a tape
  train  one DDPM training step: x_t = q_sample(x_0, t, ε) at random t, MSE(model(x_t, t, y), ε),
         backward, AdamW step

Both sides get identical weights (npdiff's initialisation with seed 0, perturbed so
that the zero-initialised adaLN layers are not zero, then loaded into diffusers) and
the same batches. Prints median ms and the ratio npdiff / torch.
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

CONFIGS = {
    "digits16": dict(batch=32, dit=dict(sample_size=16, in_channels=1, patch_size=2, num_attention_heads=3,
                                        attention_head_dim=32, num_layers=3, num_embeds_ada_norm=10)),
    "latent32": dict(batch=8, dit=dict(sample_size=32, in_channels=4, patch_size=2, num_attention_heads=6,
                                       attention_head_dim=32, num_layers=4, num_embeds_ada_norm=1000)),
}
CASES = {f"{c} {p}": {"config": c, "pass": p, "batch": CONFIGS[c]["batch"], "flops": None}
         for c in CONFIGS for p in ("infer", "train")}


def _weights(config):
    import npdiff as nd
    from npdiff.models import DiTTransformer2DModel

    nd.manual_seed(0)
    model = DiTTransformer2DModel(**CONFIGS[config]["dit"])
    rng = np.random.default_rng(0)
    for p in model.parameters():  # the adaLN-Zero layers start at 0: give them (small) values
        p.data[...] += 0.02 * rng.standard_normal(p.shape).astype(p.dtype)
    return model


def _batch(config, rng):
    """x_t = sqrt(ᾱ_t) x_0 + sqrt(1 − ᾱ_t) ε (Ho et al. 2020, eq. 4), the noise, t and labels."""
    from npdiff.diffusion.schedules import NoiseSchedule

    cfg = CONFIGS[config]
    B, C, S = cfg["batch"], cfg["dit"]["in_channels"], cfg["dit"]["sample_size"]
    x0 = rng.uniform(-1, 1, (B, C, S, S)).astype(np.float32)
    noise = rng.standard_normal((B, C, S, S)).astype(np.float32)
    t = rng.integers(0, 1000, B)
    y = rng.integers(0, cfg["dit"]["num_embeds_ada_norm"] + 1, B)  # includes the null class
    xt = NoiseSchedule(1000).q_sample(x0, t, noise).astype(np.float32)
    return xt, noise, t, y


def build(side, case):
    info = CASES[case]
    config, train = info["config"], info["pass"] == "train"
    rng = np.random.default_rng(0)
    ours = _weights(config)
    if side == "torch":
        import diffusers
        import torch

        model = diffusers.DiTTransformer2DModel(**CONFIGS[config]["dit"])
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in ours.state_dict().items()})
        model.eval()  # no random label dropout inside the model (npdiff's trainer drops labels itself)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def run():
            xt, noise, t, y = (torch.from_numpy(a) for a in _batch(config, rng))
            if not train:
                with torch.no_grad():
                    return model(xt, t, y).sample
            loss = torch.nn.functional.mse_loss(model(xt, t, y).sample, noise)
            opt.zero_grad()
            loss.backward()
            opt.step()

        return run

    import npdiff as nd
    import npdiff.nn.functional as F
    from npdiff.optim import AdamW

    model = ours.train(train)
    opt = AdamW(model.parameters(), lr=1e-4)

    def run():
        xt, noise, t, y = _batch(config, rng)
        if not train:
            with nd.no_grad():
                return model(xt, t, class_labels=y)
        loss = F.mse_loss(model(xt, t, class_labels=y), noise)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return run


def main():
    if "--profile" in sys.argv:  # each Function's forward/backward, AdamW, and the Python/tape rest
        i = sys.argv.index("--profile")
        config = sys.argv[i + 1] if i + 1 < len(sys.argv) and sys.argv[i + 1] in CONFIGS else "digits16"
        return harness.profile_ops(build("npdiff", f"{config} train"),
                                   f"npdiff DiT training step, {config} (batch {CONFIGS[config]['batch']})", steps=5)
    return harness.main(CASES, build, os.path.abspath(__file__), "npdiff vs diffusers DiTTransformer2DModel (CPU)")


if __name__ == "__main__":
    main()
