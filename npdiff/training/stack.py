"""The whole text-to-image stack in one command: VAE → CLIP → latent U-Net, each stage its own run folder.

``npdiff train --data shapes`` (no other argument) calls ``train_stack``:

    OUT/vae/     ``VAETrainer``    AutoencoderKL, f = 2: 32×32×3 → 16×16×4, scaling_factor measured
    OUT/clip/    ``CLIPTrainer``   text encoder + image encoder, contrastive with hard negatives
    OUT/unet/    ``LatentTrainer`` UNet2DConditionModel on the VAE's latents, cross-attending to
                                   the frozen CLIP text encoder's hidden states; OUT/unet/pipeline/
                                   is the diffusers StableDiffusionPipeline folder

A stage whose folder already holds a finished run is reused as it is; an interrupted one
is resumed exactly; so the command can be re-run after Ctrl-C, and a stage can be
retrained alone (delete its folder). ``OUT/stack.json`` records the stages and their times.
"""

from __future__ import annotations

import os
import sys
import time

from .. import io as nd_io
from .checkpoint import CHECKPOINT_NAME, load_checkpoint
from .config import TrainConfig

STAGES = ("vae", "clip", "unet")


def shapes_stack_configs(out: str, seed: int = 0) -> dict[str, TrainConfig]:
    """The default stage configs of ``npdiff train --data shapes`` (sized for ≤ 25 min on 2 cores).

    The VAE's reconstruction loss is the squared error: with L1 every pixel of the noisy
    backgrounds pulls as hard as an object's, and 600-step L1 VAEs lost objects (attribute ceiling
    71–88 % all correct, by the draw); MSE weighs the large errors of a lost or recoloured object
    and reaches a 100 % ceiling at 600 steps in both seeds tried (docs/text_to_image.md, "The VAE's
    ceiling"). The U-Net's quality still rises steeply with training samples (600 × 32 steps →
    700 × 64 → 1,000 × 64), so it gets batch 64 at a peak lr of 2e-3 and what time the other stages
    leave: 1,400 steps; at the quiet step times (VAE 0.33 s, CLIP 0.39 s, U-Net 0.57 s; t2i-final's
    stack.json, ``benchmarks/t2i_stack_time.py``) the stack projects to ≈ 20 min.
    ``benchmarks/t2i_quality.py`` measures quality against steps (and rejected min-SNR-5).
    The VAE's latent channels are balanced (``latent_balance``: centred, unit std per channel,
    folded into its 1×1 convs; training/latent_balance.py): on the same U-Net seed, prompts and
    latents it raised colour from 78.2 to 95.3 % at guidance 2 (docs/text_to_image.md,
    "Per-channel latent balance"). Samples and ``npdiff sample`` use guidance 2: the balanced draws
    meet every bar there (colour 88.6-95.9 % in four draws) and not reliably at 4 (81.9-87.6 %)."""
    common = dict(data="shapes", image_size=None, seed=seed, class_conditional=False, log_every=10)
    vae = TrainConfig(**common, model="vae", block_out_channels=(32, 64), layers_per_block=1, latent_channels=4,
                      recon_loss="mse", kl_weight=1e-6, latent_balance=True, steps=600, batch_size=32, lr=2e-3, warmup_steps=50,
                      ema_decay=0.99, sample_every=200, checkpoint_every=200)
    clip = TrainConfig(**common, model="clip", block_out_channels=(32, 64, 128), layers_per_block=1, attention=False,
                       hidden_dim=64, num_blocks=3, steps=400, batch_size=128, lr=2e-3, warmup_steps=30,
                       ema_decay=0.99, sample_every=200, checkpoint_every=100)
    unet = TrainConfig(**common, model="ldm", vae=os.path.join(out, "vae"), text_encoder=os.path.join(out, "clip"),
                       block_out_channels=(48, 96), layers_per_block=1, norm_num_groups=8, label_dropout=0.1,
                       prediction_type="v_prediction", steps=1400, batch_size=64, lr=2e-3,
                       warmup_steps=100, ema_decay=0.995, sample_every=700, checkpoint_every=100, sample_steps=25,
                       guidance_scale=2.0)
    return {"vae": vae, "clip": clip, "unet": unet}


def _stage_state(folder: str) -> int | None:
    """The step of a stage folder's checkpoint, or None when it has none."""
    path = os.path.join(folder, CHECKPOINT_NAME)
    return load_checkpoint(path).step if os.path.isfile(path) else None


def train_stack(out: str, *, seed: int = 0, progress: bool = True, configs: dict | None = None) -> dict:
    """Train (or reuse, or resume) each stage in order; returns {stage: {"seconds", "step", "reused"}}.
    ``configs`` replaces ``shapes_stack_configs(out, seed)`` (tests use tiny ones)."""
    from .run import resume, trainer_class

    configs = configs or shapes_stack_configs(out, seed)
    os.makedirs(out, exist_ok=True)
    summary = {}
    for name in STAGES:
        config, folder = configs[name], os.path.join(out, name)
        step = _stage_state(folder)
        t0 = time.perf_counter()
        if step is not None and step >= config.steps:
            print(f"[{name}] {folder} is finished (step {step}): reused", file=sys.stderr, flush=True)
            summary[name] = {"step": step, "seconds": 0.0, "reused": True}
            if name == "vae" and config.data == "shapes":
                summary[name]["attribute_ceiling"] = _print_vae_ceiling(folder)
            continue
        if step is not None:
            print(f"[{name}] resuming {folder} at step {step}/{config.steps}", file=sys.stderr, flush=True)
            trainer = resume(folder, progress=progress)
        else:
            trainer = trainer_class(config)(config, folder, progress=progress)
            print(f"[{name}] training {trainer.info.model_class} for {config.steps} steps -> {folder}",
                  file=sys.stderr, flush=True)
        result = trainer.train()
        summary[name] = {"step": result["step"], "seconds": round(time.perf_counter() - t0, 1), "reused": False,
                         "step_seconds": _mean_step_time(folder)}
        if name == "vae" and config.data == "shapes":
            summary[name]["attribute_ceiling"] = _print_vae_ceiling(folder)
        nd_io.save_json(os.path.join(out, "stack.json"), summary)
    nd_io.save_json(os.path.join(out, "stack.json"), summary)
    return summary


def _print_vae_ceiling(folder: str) -> dict:
    """The trained VAE's attribute ceiling (t2i_eval.vae_ceiling), printed: if it is low, every later
    stage is capped by it (docs/text_to_image.md, "The VAE's ceiling")."""
    from ..models import AutoencoderKL
    from .t2i_eval import vae_ceiling
    from .vae_trainer import format_ceiling

    report = vae_ceiling(AutoencoderKL.from_pretrained(os.path.join(folder, "vae")))
    print(f"[vae] {format_ceiling(report)}", file=sys.stderr, flush=True)
    return {k: v for k, v in report.items() if k != "real"}


def _mean_step_time(folder: str) -> float | None:
    """Mean optimisation-step time of a stage from its log (the load-independent part of its wall time)."""
    path = os.path.join(folder, "log.jsonl")
    if not os.path.isfile(path):
        return None
    times = [r["step_time"] for r in nd_io.read_jsonl(path) if "step_time" in r]
    return round(sum(times) / len(times), 4) if times else None


def find_pipeline(run_dir: str) -> str | None:
    """The StableDiffusionPipeline folder of a stack folder or a latent-diffusion run folder, else None."""
    for folder in (os.path.join(run_dir, "pipeline"), os.path.join(run_dir, "unet", "pipeline")):
        if os.path.isfile(os.path.join(folder, "model_index.json")):
            return folder
    return None
