"""One ControlNet or LoRA training step: npdiff vs diffusers (+ peft), same weights, PyTorch CPU.

    python benchmarks/adapters.py [--only controlnet] [--rounds 5 --iters 3] [--json out.json]

The base is the latent U-Net of the text-to-image stack on ``shapes`` (32×32 images, a VAE of
factor 4 → 4×8×8 latents; channels 64/128, cross-attention at the upper level and the middle,
2 and 4 heads, 24 text tokens of width 64), locked. One step, batch 16:
  controlnet  r = ControlNet(z_t, t, e, mask) → U(z_t, t, e; + r) → MSE → backward (through
              the locked U-Net into the ControlNet) → AdamW on the ControlNet only
  lora        rank-8 adapters on to_q/to_k/to_v/to_out.0 → U(z_t, t, e) → MSE → backward →
              AdamW on A and B only
Each side in its own process, alternating (benchmarks/harness.py). Prints median ms, the
ratio npdiff / torch, and what 10 minutes buy: steps = 600 s / step time.
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

BATCH, LK, TEXT = 16, 24, 64
UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(64, 128), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=TEXT, attention_head_dim=(2, 4), norm_num_groups=8)
EMBED = (16, 32, 64)  # conditioning embedding: 32×32 masks → 8×8
RANK = 8
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
CASES = {f"{kind} step (batch {BATCH})": {"kind": kind, "batch": BATCH, "flops": None}
         for kind in ("controlnet", "lora")}


def _inputs(rng):
    return (rng.standard_normal((BATCH, 4, 8, 8)).astype(np.float32), rng.integers(0, 1000, BATCH),
            rng.standard_normal((BATCH, LK, TEXT)).astype(np.float32),
            (rng.random((BATCH, 1, 32, 32)) > 0.7).astype(np.float32),
            rng.standard_normal((BATCH, 4, 8, 8)).astype(np.float32))


def _npdiff_models(kind):
    import npdiff as nd
    from npdiff.models import ControlNetModel, UNet2DConditionModel
    from npdiff.models.lora import add_lora

    nd.manual_seed(0)
    unet = UNet2DConditionModel(**UNET)
    if kind == "controlnet":
        return unet, ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=EMBED, conditioning_channels=1)
    add_lora(unet, RANK)
    return unet, None


def build(side, case):
    kind = CASES[case]["kind"]
    rng = np.random.default_rng(0)
    unet, controlnet = _npdiff_models(kind)
    if side == "torch":
        import diffusers
        import torch

        ref = diffusers.UNet2DConditionModel(**UNET)
        base = {k: v for k, v in unet.state_dict().items() if ".lora_" not in k}
        ref.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in base.items()})
        ref.requires_grad_(False)
        if kind == "controlnet":
            cn = diffusers.ControlNetModel.from_unet(ref, conditioning_embedding_out_channels=EMBED,
                                                     conditioning_channels=1)
            cn.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in controlnet.state_dict().items()})
            params = list(cn.parameters())
        else:
            from peft import LoraConfig

            ref.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, target_modules=TARGETS))
            ours = {k: v for k, v in unet.state_dict().items() if ".lora_" in k}
            with torch.no_grad():
                for name, p in ref.named_parameters():
                    if "lora_" in name:
                        p.copy_(torch.from_numpy(np.array(ours[name.replace(".default", "")])))
            params = [p for p in ref.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4)

        def run():
            x, t, e, c, target = (torch.from_numpy(np.asarray(a)) for a in _inputs(rng))
            if kind == "controlnet":
                down, mid = cn(x, t, e, c, return_dict=False)
                out = ref(x, t, e, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
            else:
                out = ref(x, t, e).sample
            loss = ((out - target) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

        return run

    import npdiff.nn.functional as F
    from npdiff.optim import AdamW

    params = list(controlnet.parameters()) if kind == "controlnet" else [p for p in unet.parameters()
                                                                          if p.requires_grad]
    if kind == "controlnet":
        unet.requires_grad_(False)
    opt = AdamW(params, lr=1e-4)

    def run():
        x, t, e, c, target = _inputs(rng)
        if kind == "controlnet":
            down, mid = controlnet(x, t, e, c)
            out = unet(x, t, e, down_block_additional_residuals=down, mid_block_additional_residual=mid)
        else:
            out = unet(x, t, e)
        loss = F.mse_loss(out, target)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return run


def main():
    records = harness.main(CASES, build, os.path.abspath(__file__), "npdiff vs diffusers ControlNet / LoRA step")
    if not records:  # a worker process
        return None
    print()
    print(f"{'kind':<11} {'batch':>5} {'npdiff ms':>10} {'torch ms':>10} {'ratio':>6} {'npdiff steps / 10 min':>22}")
    for r in records:
        print(f"{r['kind']:<11} {r['batch']:>5} {r['npdiff_ms']:>10.1f} {r['torch_ms']:>10.1f} {r['ratio']:>6.2f} "
              f"{600e3 / r['npdiff_ms']:>22.0f}")
    return records


if __name__ == "__main__":
    main()
