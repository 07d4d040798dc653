"""npdiff's UNet2DModel / UNet2DConditionModel vs diffusers' (PyTorch CPU) on the same weights.

    python benchmarks/unet.py [--only digits16] [--rounds 5 --iters 3] [--json out.json]
    python benchmarks/unet.py --only latent8                    # the text-conditioned latent U-Net
    python benchmarks/unet.py --profile [digits16|cifar32]     # per-op profile of one npdiff training step

Two passes per config, each side in its own process, alternating (benchmarks/harness.py):
  infer  forward without a tape (torch.no_grad / nd.no_grad)
  train  one DDPM training step: x_t from x_0 and noise at random timesteps,
         MSE(model(x_t, t), noise), backward, AdamW step
``latent8`` is a text-to-image U-Net (UNet2DConditionModel) on 4×8×8 latents with
cross-attention to 16 text tokens of width 64 (the same random text on both sides).
Both sides get identical weights (npdiff's initialisation with seed 0, loaded into
diffusers) and 2 threads. Prints median ms, images/s and the ratio npdiff / torch.

``--profile`` times every autograd Function's forward and backward by class
name during training steps of npdiff alone, plus the optimiser step; what is left
of the step's wall time is Python and tape bookkeeping.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

CONFIGS = {
    "digits16": dict(
        batch=64,
        unet=dict(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(32, 64, 64), layers_per_block=1,
                  down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8),
    ),
    "cifar32": dict(
        batch=32,
        unet=dict(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(64, 128, 128, 128),
                  layers_per_block=2,
                  down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_num_groups=32),
    ),
    "latent8": dict(
        batch=32,
        text=(16, 64),  # (tokens, width) of encoder_hidden_states
        unet=dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(64, 128, 128), layers_per_block=1,
                  down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=64,
                  attention_head_dim=4, norm_num_groups=32),
    ),
}

CASES = {f"{c} {p}": {"config": c, "pass": p, "batch": CONFIGS[c]["batch"], "flops": None}
         for c in CONFIGS for p in ("infer", "train")}


def _model_class(config, module):
    """UNet2DConditionModel for configs with text, else UNet2DModel, from npdiff.models or diffusers."""
    return getattr(module, "UNet2DConditionModel" if "text" in CONFIGS[config] else "UNet2DModel")


def _npdiff_model(config):
    import npdiff as nd
    import npdiff.models

    nd.manual_seed(0)
    return _model_class(config, npdiff.models)(**CONFIGS[config]["unet"])


def _text(config):
    """The fixed encoder_hidden_states (B, tokens, width) of a text-conditioned config, else None."""
    cfg = CONFIGS[config]
    if "text" not in cfg:
        return None
    return np.random.default_rng(1).standard_normal((cfg["batch"], *cfg["text"])).astype(np.float32)


def _batch(config, rng):
    """x_0, noise, t and x_t = sqrt(ᾱ_t) x_0 + sqrt(1 − ᾱ_t) ε (Ho et al. 2020, eq. 4; linear betas)."""
    cfg = CONFIGS[config]
    B, C, S = cfg["batch"], cfg["unet"]["in_channels"], cfg["unet"]["sample_size"]
    alpha_bar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    x0 = rng.uniform(-1, 1, (B, C, S, S))
    noise = rng.standard_normal((B, C, S, S))
    t = rng.integers(0, 1000, B)
    a = alpha_bar[t][:, None, None, None]
    xt = np.sqrt(a) * x0 + np.sqrt(1 - a) * noise
    return xt.astype(np.float32), noise.astype(np.float32), t


def build(side, case):
    info = CASES[case]
    config, train = info["config"], info["pass"] == "train"
    rng = np.random.default_rng(0)
    state = {k: np.array(v) for k, v in _npdiff_model(config).state_dict().items()}  # same weights on both sides
    text = _text(config)
    if side == "torch":
        import diffusers
        import torch

        model = _model_class(config, diffusers)(**CONFIGS[config]["unet"])
        model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
        model.train(train)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        cond = () if text is None else (torch.from_numpy(text),)

        def run():
            xt, noise, t = (torch.from_numpy(a) for a in _batch(config, rng))
            if not train:
                with torch.no_grad():
                    return model(xt, t, *cond).sample
            loss = torch.nn.functional.mse_loss(model(xt, t, *cond).sample, noise)
            opt.zero_grad()
            loss.backward()
            opt.step()

        return run

    import npdiff as nd
    import npdiff.nn.functional as F
    from npdiff.optim import AdamW

    model = _npdiff_model(config).train(train)
    opt = AdamW(model.parameters(), lr=1e-4)
    cond = () if text is None else (text,)

    def run():
        xt, noise, t = _batch(config, rng)
        if not train:
            with nd.no_grad():
                return model(xt, t, *cond)
        loss = F.mse_loss(model(xt, t, *cond), noise)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return run


# ----------------------------------------------------------------------------
# per-op profile (benchmarks/harness.py: profile_ops)


def profile(config: str, steps: int = 3) -> None:
    """Time each Function's forward/backward by class name over ``steps`` training steps."""
    harness.profile_ops(build("npdiff", f"{config} train"),
                        f"npdiff training step, {config} (batch {CONFIGS[config]['batch']})", steps)


def main():
    if "--profile" in sys.argv:
        i = sys.argv.index("--profile")
        config = sys.argv[i + 1] if i + 1 < len(sys.argv) and sys.argv[i + 1] in CONFIGS else "digits16"
        return profile(config)
    records = harness.main(CASES, build, os.path.abspath(__file__), "npdiff vs diffusers UNet benchmark")
    if not records:  # a worker process
        return None
    print()
    print(f"{'config':<10} {'pass':<6} {'batch':>5} {'npdiff ms':>10} {'torch ms':>10} {'npdiff img/s':>13} "
          f"{'torch img/s':>12} {'ratio':>6}")
    for r in records:
        r["npdiff_images_per_s"] = r["batch"] / (r["npdiff_ms"] * 1e-3)
        r["torch_images_per_s"] = r["batch"] / (r["torch_ms"] * 1e-3)
        print(f"{r['config']:<10} {r['pass']:<6} {r['batch']:>5} {r['npdiff_ms']:>10.1f} {r['torch_ms']:>10.1f} "
              f"{r['npdiff_images_per_s']:>13.1f} {r['torch_images_per_s']:>12.1f} {r['ratio']:>6.2f}")
    if "--json" in sys.argv:  # harness wrote the records; add images/s to them
        path = sys.argv[sys.argv.index("--json") + 1]
        with open(path, "w") as f:
            json.dump(records, f, indent=1)
    return records


if __name__ == "__main__":
    main()
