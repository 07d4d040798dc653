"""The README's ControlNet / LoRA pictures from trained adapter runs (not a test: minutes of sampling).

    PYTHONPATH=$PWD python benchmarks/adapter_pictures.py --controlnet RUN_CN --lora RUN_LORA --out docs/images

controlnet.png, on held-out (test split) conditions, one column per condition:
    row 1 the condition image, row 2 the base alone, row 3 base + ControlNet (same initial latents)
lora.png, on held-out concept prompts ("... ring ..." by default), one column per prompt:
    row 1 the generator's ground truth, row 2 the base alone, row 3 base + LoRA (same latents)
lora_old.png, on held-out old prompts (the shapes test split), one column per prompt:
    row 1 the generator's ground truth, row 2 the base alone, row 3 base + LoRA (same latents):
    what the LoRA must leave alone
The prompts of each column are printed. Sampling settings are the eval's (DDIM, 20 steps, guidance 3).
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from npdiff import io as nd_io
from npdiff.conditions import control_condition, make_concept_shapes
from npdiff.data import make_shapes
from npdiff.models import ControlNetModel
from npdiff.training.adapter_eval import _draw
from npdiff.training.adapters import CONTROLNET_FOLDER, LORA_FILE, AdapterConfig, load_base_pipeline


def _config(run: str) -> AdapterConfig:
    return AdapterConfig.from_dict(nd_io.load_json(os.path.join(run, "config.json"))["adapter"])


def controlnet_picture(run: str, path: str, n: int, seed: int, steps: int, guidance: float) -> None:
    from npdiff.pipelines import StableDiffusionControlNetPipeline

    config = _config(run)
    base = load_base_pipeline(config.base)
    cn = ControlNetModel.from_pretrained(os.path.join(run, CONTROLNET_FOLDER)).eval()
    test = make_shapes(n, "test", seed)
    cond = control_condition(config.control, test)  # (n, 1, 32, 32) in [0, 1]
    pipe = StableDiffusionControlNetPipeline(base.vae, base.text_encoder, base.tokenizer, base.unet, cn, base.scheduler)
    with_cn = _draw(pipe, test.captions, n, seed, steps, guidance, image=cond)
    without = _draw(base, test.captions, n, seed, steps, guidance)
    cond_rgb = np.repeat(cond * 2.0 - 1.0, 3, axis=1)
    nd_io.save_image_grid(path, np.concatenate([cond_rgb, without, with_cn]), nrow=n, scale=3)
    for i, caption in enumerate(test.captions):
        print(f"controlnet column {i}: {caption}")


def lora_picture(run: str, path: str, n: int, seed: int, steps: int, guidance: float) -> None:
    from npdiff.models.lora import load_lora_weights
    from npdiff.training.adapter_eval import _file_has_text_encoder

    config = _config(run)
    base = load_base_pipeline(config.base)
    test = make_concept_shapes(n, "test", seed, config.concept, config.replaces)
    old = make_shapes(n, "test", seed)
    without = _draw(base, test.captions, n, seed, steps, guidance)
    old_without = _draw(base, old.captions, n, seed, steps, guidance)
    lora_file = os.path.join(run, LORA_FILE)
    load_lora_weights(lora_file, unet=base.unet,
                      text_encoder=base.text_encoder if _file_has_text_encoder(lora_file) else None)
    with_lora = _draw(base, test.captions, n, seed, steps, guidance)
    old_with = _draw(base, old.captions, n, seed, steps, guidance)
    nd_io.save_image_grid(path, np.concatenate([test.images, without, with_lora]), nrow=n, scale=3)
    nd_io.save_image_grid(path.replace(".png", "_old.png"), np.concatenate([old.images, old_without, old_with]),
                          nrow=n, scale=3)
    for i, caption in enumerate(test.captions):
        print(f"lora column {i}: {caption}")
    for i, caption in enumerate(old.captions):
        print(f"lora_old column {i}: {caption}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--controlnet", help="a ControlNet run folder of `npdiff adapt controlnet`")
    p.add_argument("--lora", help="a LoRA run folder of `npdiff adapt lora`")
    p.add_argument("--out", default="docs/images", help="folder of controlnet.png / lora.png (default docs/images)")
    p.add_argument("--n", type=int, default=8, help="columns (held-out conditions / prompts) (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance-scale", type=float, default=3.0)
    args = p.parse_args(argv)
    if not (args.controlnet or args.lora):
        p.error("give --controlnet RUN and/or --lora RUN")
    os.makedirs(args.out, exist_ok=True)
    if args.controlnet:
        controlnet_picture(args.controlnet, os.path.join(args.out, "controlnet.png"), args.n, args.seed, args.steps,
                           args.guidance_scale)
    if args.lora:
        lora_picture(args.lora, os.path.join(args.out, "lora.png"), args.n, args.seed, args.steps,
                     args.guidance_scale)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
