"""The command line of ControlNet and LoRA: ``npdiff adapt``, and the adapter paths of ``sample`` / ``eval``.

    npdiff adapt controlnet --base DIR [--control mask|outline|edge] [-o RUN]   train a ControlNet
    npdiff adapt lora --base DIR [--concept ring] [--rank 8] [-o RUN]           train LoRA adapters
    npdiff adapt --resume RUN   (or npdiff train --resume RUN)                  continue either
    npdiff sample --run RUN|DIR --prompt "..." [--control PATH] [--lora FILE [--lora-scale S]]
    npdiff eval --run RUN [--lora-scale S] [--controlnet-scale S]               the targets (eval.json)

``DIR`` is the base: a StableDiffusionPipeline folder (model_index.json) or a run / stack folder
with ``pipeline/`` or ``unet/pipeline/`` (``npdiff train --data shapes``). ``RUN`` is an adapter
run folder (its config names the base). cli.py registers the ``adapt`` command and, through
``adapter_route`` in ``main``, hands ``sample`` / ``eval`` here when an adapter is involved.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from .conditions import CONCEPTS

_ADAPT_FLAGS = ("control", "train_examples", "concept", "replaces", "examples", "prior_examples", "prior_target",
                "rank", "alpha", "text_encoder", "concept_tokens", "concept_token_lr", "text_preservation", "prior_distillation", "unet_targets", "caption_dropout", "steps", "batch_size", "lr", "warmup_steps",
                "ema_decay", "log_every", "sample_every", "checkpoint_every", "sample_steps", "guidance_scale", "seed")


def add_adapt(sub, formatter_class) -> None:
    p = sub.add_parser("adapt", help="train a ControlNet or LoRA adapters on a trained text-to-image model",
                       description="Teach a locked text-to-image pipeline something new: a ControlNet steered by a "
                                   "mask / outline / edge image of the shapes data, or LoRA adapters for a new "
                                   "colour word. The base's weights never change.", formatter_class=formatter_class)
    p.add_argument("kind", nargs="?", choices=("controlnet", "lora"), help="what to train (not with --resume)")
    p.add_argument("--base", metavar="DIR", default=None,
                   help="the base: a pipeline folder (model_index.json) or a run folder with pipeline/")
    p.add_argument("--output", "-o", default=None, help="run folder (default: runs/<kind>-<date>-<time>)")
    p.add_argument("--resume", metavar="RUN", default=None, help="continue an adapter run exactly")
    p.add_argument("--stop-after", type=int, default=None, help="stop (with a checkpoint) after this many steps")
    g = p.add_argument_group("ControlNet")
    g.add_argument("--control", choices=("mask", "outline", "edge"), default=None,
                   help="the condition image: object mask, its outline, or a Sobel edge map (default mask)")
    g.add_argument("--train-examples", type=int, default=None, help="shapes training images (default 2000)")
    g = p.add_argument_group("LoRA")
    g.add_argument("--concept", choices=CONCEPTS, default=None,
                   help="the new word: a shape (ring, always large) or a colour (default ring)")
    g.add_argument("--replaces", default=None,
                   help="the shape (default circle) or colour (default red) whose objects become the concept")
    g.add_argument("--examples", type=int, default=None, help="concept images (default 300)")
    g.add_argument("--prior-examples", type=int, default=None,
                   help="images of the base's data mixed in (prior preservation; default 450, 0: none)")
    g.add_argument("--prior-target", choices=("base", "data"), default=None,
                   help="their target: the data's ε / v (default) or the locked base's prediction")
    g.add_argument("--rank", type=int, default=None, help="LoRA rank r (default 8)")
    g.add_argument("--alpha", type=float, default=None, help="LoRA α (default: the rank)")
    g.add_argument("--no-text-encoder", dest="text_encoder", action="store_false", default=None,
                   help="no LoRA on the text encoder (default: LoRA on its attention projections too)")
    g.add_argument("--concept-tokens", dest="concept_tokens", action=argparse.BooleanOptionalAction, default=None,
                   help="learn the token-embedding rows of the concept word's pieces (textual inversion on "
                        "existing rows; prompts without them are encoded as by the base; default on)")
    g.add_argument("--concept-token-lr", type=float, default=None,
                   help="peak learning rate of the concept's token rows (default 0.02)")
    g.add_argument("--text-preservation", type=float, default=None, metavar="LAMBDA",
                   help="weight of ‖e_adapted − e_base‖² on the prior captions' text states (default 1; 0: off)")
    g.add_argument("--prior-distillation", type=float, default=None, metavar="LAMBDA",
                   help="weight of ‖ŷ_adapted − ŷ_base‖² / D on the old-prompt items (prior images and dropped "
                        "captions): the locked base's own prediction, adapters at scale 0 (default 1; 0: off)")
    g.add_argument("--unet-targets", type=lambda v: tuple(t for t in v.split(",") if t), default=None,
                   metavar="NAMES", help="comma-separated U-Net layers for LoRA (default to_q,to_k,to_v,to_out.0; "
                                         "e.g. attn2.to_k,attn2.to_v: the cross-attention's text path)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--caption-dropout", type=float, default=None, help="empty-caption probability (default 0.1)")
    g.add_argument("--steps", type=int, default=None, help="optimisation steps (default 600 ControlNet, 900 LoRA)")
    g.add_argument("--batch-size", type=int, default=None, help="batch size (default 16)")
    g.add_argument("--lr", type=float, default=None, help="peak AdamW learning rate (default 1e-3)")
    g.add_argument("--warmup-steps", type=int, default=None, help="linear warm-up steps (default 50)")
    g.add_argument("--ema-decay", type=float, default=None, help="EMA decay of the exported adapter (default 0.99)")
    g.add_argument("--log-every", type=int, default=None, help="steps per log record (default 25)")
    g.add_argument("--sample-every", type=int, default=None, help="steps between sample grids (default 200)")
    g.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints (default 200)")
    g.add_argument("--sample-steps", type=int, default=None, help="sampler steps of the grids (default 20)")
    g.add_argument("--guidance-scale", type=float, default=None, help="guidance of the grids (default 3)")
    g.add_argument("--seed", type=int, default=None, help="seed (default 0)")
    g.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_adapt)


def cmd_adapt(args) -> int:
    from .training.adapters import AdapterConfig, AdapterTrainer

    progress = not args.quiet
    if args.resume:
        if args.kind or args.base:
            raise ValueError("--resume continues a run with its own settings: give no kind or --base")
        trainer = AdapterTrainer.resume(args.resume, steps=args.steps, progress=progress)
    else:
        if not args.kind or not args.base:
            raise ValueError("give what to train (controlnet or lora) and --base DIR (a trained text-to-image "
                             "pipeline)")
        values = {k: getattr(args, k) for k in _ADAPT_FLAGS if getattr(args, k) is not None}
        config = AdapterConfig(kind=args.kind, base=os.path.abspath(args.base), **values)
        out = args.output or os.path.join("runs", f"{args.kind}-{time.strftime('%Y%m%d-%H%M%S')}")
        trainer = AdapterTrainer(config, out, progress=progress)
    summary = trainer.train(stop_after=args.stop_after)
    print(f"trained {trainer.config.kind} to step {summary['step']} in {summary['seconds']:.0f} s: {trainer.run_dir}")
    return 0


# -- sample / eval ------------------------------------------------------------------------


def add_eval_flags(p) -> None:
    """``eval``'s adapter flags."""
    p.add_argument("--lora-scale", type=float, default=1.0,
                   help="LoRA runs: scale s of the LoRA update in the evaluation (default 1, as trained)")
    p.add_argument("--controlnet-scale", type=float, default=1.0,
                   help="ControlNet runs: controlnet_conditioning_scale, the factor on its residuals (default 1)")


def add_sample_flags(p) -> None:
    """``sample``'s text-to-image flags (``--prompt`` only if cli.py has not added it already)."""
    g = p.add_argument_group("text-to-image adapters (ControlNet, LoRA)")
    if "--prompt" not in p._option_string_actions:
        g.add_argument("--prompt", action="append", default=None,
                       help="a text prompt (repeat for several); text-to-image runs")
    g.add_argument("--control", metavar="PATH", default=None,
                   help="condition image (PNG/JPEG, white = object, or .npy in [0, 1]) for a ControlNet run")
    g.add_argument("--controlnet-scale", type=float, default=1.0, help="controlnet_conditioning_scale")
    g.add_argument("--lora", metavar="FILE", default=None, help="a LoRA safetensors file (ours or diffusers')")
    g.add_argument("--lora-scale", type=float, default=1.0, help="scale of the LoRA update (0 = the base)")


def is_adapter_run(path: str) -> bool:
    from . import io as nd_io

    config = os.path.join(os.fspath(path), "config.json")
    return os.path.isfile(config) and "adapter" in nd_io.load_json(config)


def wants_adapters(args) -> bool:
    """Whether ``npdiff sample`` goes the text-to-image way here: a ControlNet or LoRA is asked
    for, ``--run`` is an adapter run, or it is a diffusers pipeline folder and ``--prompt`` is given."""
    if getattr(args, "control", None) or getattr(args, "lora", None) or is_adapter_run(args.run):
        return True
    return bool(getattr(args, "prompt", None)) and os.path.isfile(os.path.join(args.run, "model_index.json"))


def adapter_route(args):
    """The command function for ``args``: ``sample`` / ``eval`` come here when an adapter is involved
    (``wants_adapters``, an adapter run), everything else keeps ``args.func``."""
    if args.command == "sample" and wants_adapters(args):
        return cmd_sample_adapted
    if args.command == "eval" and is_adapter_run(args.run):
        return cmd_eval_adapter
    if args.command == "train" and args.resume and is_adapter_run(args.resume):  # the trainer's Ctrl-C hint
        return _resume_adapter_run
    return args.func


def _resume_adapter_run(args) -> int:
    """``npdiff train --resume RUN`` on an adapter run: as ``npdiff adapt --resume RUN``."""
    from .training.adapters import AdapterTrainer

    trainer = AdapterTrainer.resume(args.resume, steps=args.steps, progress=not args.quiet)
    summary = trainer.train(stop_after=args.stop_after)
    print(f"trained {trainer.config.kind} to step {summary['step']} in {summary['seconds']:.0f} s: {trainer.run_dir}")
    return 0


def _open(args):
    """(pipeline, controlnet or None, adapter run config or None) for ``--run``."""
    from . import io as nd_io
    from .models import ControlNetModel
    from .models.lora import load_lora_weights, read_lora_file, set_lora_scale
    from .training.adapters import CONTROLNET_FOLDER, LORA_FILE, AdapterConfig, load_base_pipeline

    config, controlnet = None, None
    if is_adapter_run(args.run):
        config = AdapterConfig.from_dict(nd_io.load_json(os.path.join(args.run, "config.json"))["adapter"])
        pipe = load_base_pipeline(config.base)
        if config.kind == "controlnet":
            controlnet = ControlNetModel.from_pretrained(os.path.join(args.run, CONTROLNET_FOLDER))
        elif args.lora is None:
            args.lora = os.path.join(args.run, LORA_FILE)
    else:
        pipe = load_base_pipeline(args.run)
        if os.path.isdir(os.path.join(args.run, CONTROLNET_FOLDER)):
            controlnet = ControlNetModel.from_pretrained(os.path.join(args.run, CONTROLNET_FOLDER))
    if args.lora:
        tensors, _ = read_lora_file(args.lora)
        has_text = any(k.startswith("text_encoder.") for k in tensors)
        load_lora_weights(args.lora, unet=pipe.unet, text_encoder=pipe.text_encoder if has_text else None)
        for model in (pipe.unet, pipe.text_encoder) if has_text else (pipe.unet,):
            set_lora_scale(model, args.lora_scale)
    return pipe, controlnet, config


def _control_image(path: str, size: int) -> np.ndarray:
    """A condition file as (1, 1, size, size) float32 in [0, 1]."""
    if path.endswith(".npy"):
        a = np.asarray(np.load(path, allow_pickle=False), dtype=np.float32)
        if a.ndim >= 2 and a.size == a.shape[-1] * a.shape[-2]:  # (H, W), (1, H, W) or (1, 1, H, W)
            a = a.reshape((1, 1) + a.shape[-2:])
    else:
        from . import io as nd_io

        a = nd_io.load_image(path, mode="L", value_range=(0.0, 1.0), size=size)[None]  # (1, 1, H, W)
    if a.shape != (1, 1, size, size):
        raise ValueError(f"--control {path!r}: expected a {size}×{size} single-channel image, got shape {a.shape}")
    return a.astype(np.float32)


def cmd_sample_adapted(args) -> int:
    from . import io as nd_io
    from .pipelines import StableDiffusionControlNetPipeline
    from .training import make_scheduler

    pipe, controlnet, _ = _open(args)
    if not args.prompt:
        raise ValueError("--prompt is required for a text-to-image run (repeat it for several prompts)")
    prompts = [args.prompt] if isinstance(args.prompt, str) else list(args.prompt)
    n = args.n or 1
    steps = args.steps or 50
    guidance = 3.0 if args.guidance_scale is None else args.guidance_scale
    pipe.scheduler = make_scheduler(args.scheduler, dict(pipe.scheduler.config))
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    kw = dict(num_inference_steps=steps, guidance_scale=guidance, num_images_per_prompt=n, generator=args.seed,
              output_type="np")
    negative = getattr(args, "negative_prompt", None)  # cli.py's flag, when it has one
    if negative:
        kw["negative_prompt"] = [negative] * len(prompts)
    if args.control:
        if controlnet is None:
            raise ValueError(f"--control needs a ControlNet: {args.run!r} is neither a ControlNet run nor a pipeline "
                             "folder with controlnet/")
        cond = _control_image(args.control, size)
        cn_pipe = StableDiffusionControlNetPipeline(pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.unet,
                                                    controlnet, pipe.scheduler)
        images = cn_pipe(prompts, image=cond, controlnet_conditioning_scale=args.controlnet_scale, **kw).images
        shown = np.concatenate([np.repeat(cond * 2.0 - 1.0, 3, axis=1), images.transpose(0, 3, 1, 2) * 2.0 - 1.0])
    else:
        if controlnet is not None and is_adapter_run(args.run):
            raise ValueError(f"{args.run!r} is a ControlNet run: give its condition with --control PATH")
        images = pipe(prompts, **kw).images
        shown = images.transpose(0, 3, 1, 2) * 2.0 - 1.0
    out = args.out or os.path.join(args.run, f"samples_{'control' if args.control else 'prompt'}_{steps}.png")
    nd_io.save_image_grid(out, shown, nrow=min(len(shown), 8), scale=2)
    print(f"wrote {out}")
    return 0


def cmd_eval_adapter(args) -> int:
    """The targets of an adapter run into ``eval.json`` (see training/adapter_eval.py)."""
    from . import io as nd_io
    from .models import ControlNetModel
    from .training.adapter_eval import controlnet_report, lora_report
    from .training.adapters import CONTROLNET_FOLDER, LORA_FILE, AdapterConfig, load_base_pipeline

    config = AdapterConfig.from_dict(nd_io.load_json(os.path.join(args.run, "config.json"))["adapter"])
    base = load_base_pipeline(config.base)
    steps = args.steps or 20
    guidance = 3.0 if args.guidance_scale is None else args.guidance_scale
    n = args.n or 100
    t0 = time.perf_counter()
    if config.kind == "controlnet":
        cn = ControlNetModel.from_pretrained(os.path.join(args.run, CONTROLNET_FOLDER))
        report = controlnet_report(base, cn, config.control, n=n, seed=args.seed, steps=steps, guidance=guidance,
                                   batch=args.batch, conditioning_scale=args.controlnet_scale)
    else:
        report = lora_report(base, os.path.join(args.run, LORA_FILE), n=n, seed=args.seed, steps=steps,
                             guidance=guidance, batch=args.batch, concept=config.concept, replaces=config.replaces,
                             scale=args.lora_scale)
    report.update(run=args.run, seconds=round(time.perf_counter() - t0, 1))
    out = args.out or os.path.join(args.run, "eval.json")
    nd_io.save_json(out, report)
    for k, v in report.items():
        print(f"{k:28s} {v:.4g}" if isinstance(v, float) else f"{k:28s} {v}")
    return 0
