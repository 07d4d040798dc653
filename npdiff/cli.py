"""The ``npdiff`` command line: train, sample, eval, viz, bench.

    npdiff train                          class-conditional digits UNet, run folder in runs/
    npdiff train --data moons             a 2-D toy with the MLP denoiser
    npdiff train --model vae              the digits VAE (AutoencoderKL, f = 4), run folder with vae/
    npdiff train --data shapes            the text-to-image stack: VAE, CLIP, latent U-Net (runs/shapes-*/)
    npdiff sample --run runs/shapes-... --prompt "a large red circle at the top left" --guidance-scale 4
    npdiff train --resume runs/digits     continue a run exactly where it stopped
    npdiff sample --run runs/digits --scheduler dpm++ --steps 20 --class 7
    npdiff eval --run runs/digits         sample-quality metrics (VAE runs: reconstruction), eval.json
    npdiff viz schedules | viz forward --digit 3 | viz latent --run runs/vae
    npdiff bench                          the kernel, UNet, DiT and VAE benchmarks against PyTorch
    npdiff adapt controlnet|lora --base DIR   ControlNet / LoRA on a locked text-to-image model (cli_adapters.py)

Errors in the input (a missing folder, a run folder without a checkpoint, a bad
value) print ``npdiff <command>: error: ...`` and exit with status 2; a diverged
training run exits with 1; Ctrl-C exits with 130 after saving a checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time

import numpy as np

from .backend import DeviceUnavailableError
from .cli_adapters import add_adapt, add_eval_flags, add_sample_flags, adapter_route
from .data import TOY_DATASETS

SCHEDULER_NAMES = ("ddpm", "ddim", "euler", "euler_a", "heun", "dpm++")


# ----------------------------------------------------------------------------
# parsers
# ----------------------------------------------------------------------------


class _HelpFormatter(argparse.HelpFormatter):
    """Appends "(default: …)" to a flag's help unless the default is None/bool or the text names it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.option_strings and "default" not in text
                and action.default is not None and not isinstance(action.default, bool)
                and action.default is not argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


def _channels(text: str) -> tuple:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 32,64,64, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"channels must be positive, got {text!r}")
    return values


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train", help="train a diffusion model or a VAE (no arguments: class-conditional digits UNet)",
        description="Train a DDPM (or, with --model vae, an AutoencoderKL) and write a run folder: config.json, "
                    "checkpoint.safetensors (model, EMA, optimizer, RNG states), log.jsonl, loss.png, "
                    "samples/*.png and ema_model/ (VAE: vae/), both in the diffusers layout. Flags left out keep "
                    "the defaults of the run kind (digits/images, 2-D toys, or the VAE).",
        formatter_class=_HelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", default="digits",
                   help=f"'digits' (scikit-learn's 8x8 digits, resized), a toy name {TOY_DATASETS}, a folder of "
                        "images (class sub-folders become labels), a folder of MNIST/Fashion-MNIST IDX files, "
                        "or an .npz file with 'images'/'x' (+ 'labels'/'y')")
    g.add_argument("--image-size", type=int, default=None, help="resize (and centre-crop) images to this square "
                   "size; must be divisible by 2^(levels-1) of --channels (default 16)")
    g.add_argument("--hflip", action="store_true", default=None, help="random horizontal flips (not for digits)")
    g.add_argument("--toy-samples", type=int, default=None, help="number of points drawn for a toy dataset "
                   "(default 8192)")
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=("unet", "dit", "mlp", "classifier", "vae", "clip", "ldm"), default=None,
                   help="denoiser: UNet2DModel or DiTTransformer2DModel (patch 2) for images, a residual MLP "
                        "for 2-D points (default: by data); 'classifier': the noise-conditional classifier "
                        "p(y | x_t, t) for classifier guidance (`npdiff sample --classifier DIR`); 'vae': train "
                        "an AutoencoderKL on the images instead; 'clip': contrastive CLIP pre-training on captioned "
                        "data; 'ldm': latent diffusion on the latents of --vae (captions: text-conditional with "
                        "--text-encoder; labels: class-conditional). --data shapes without --model trains the "
                        "whole text-to-image stack (vae, clip, unet stages under --output)")
    g.add_argument("--channels", type=_channels, default=None,
                   help="UNet/VAE channels per resolution level, e.g. 32,64,64 (default 32,64; VAE 16,32,32: "
                        "3 levels, downsampling factor 4)")
    g.add_argument("--layers-per-block", type=int, default=None, help="UNet/VAE ResNet blocks per level (default 1)")
    g.add_argument("--no-attention", dest="attention", action="store_false", default=None,
                   help="no self-attention at the UNet's lowest resolution (VAE: in its mid blocks)")
    g.add_argument("--norm-groups", type=int, default=None, help="GroupNorm groups in the UNet/VAE (default 8)")
    g.add_argument("--hidden-dim", type=int, default=None, help="MLP width; DiT token width (default 128)")
    g.add_argument("--num-blocks", type=int, default=None, help="MLP residual blocks; DiT transformer blocks (default 3)")
    g.add_argument("--patch-size", type=int, default=None, help="DiT patch side (default 2 on pixels, 1 on latents)")
    g.add_argument("--unconditional", dest="class_conditional", action="store_false", default=None,
                   help="ignore labels (default: class-conditional when the data has labels)")
    g.add_argument("--label-dropout", type=float, default=None,
                   help="probability of training with the null class, for classifier-free guidance (default 0.1)")
    g = p.add_argument_group("VAE (--model vae)")
    g.add_argument("--latent-channels", type=int, default=None, help="channels of the latent z (default 4)")
    g.add_argument("--recon-loss", choices=("l1", "mse"), default=None,
                   help="reconstruction term: mean absolute or squared error (default l1)")
    g.add_argument("--kl-weight", type=float, default=None,
                   help="β of recon + β·KL(q(z|x) ‖ N(0, I)), relative to per-image sums as SD's kl_weight "
                        "(default 1e-6)")
    g.add_argument("--latent-balance", action="store_true", default=None,
                   help="export vae/ with each latent channel centred and scaled to unit std, folded into its 1×1 "
                        "convs (round trip unchanged); the shapes stack's default")
    g = p.add_argument_group("latent diffusion (--model ldm, or --model dit with --vae)")
    g.add_argument("--vae", default=None, metavar="DIR", help="the frozen VAE: a `--model vae` run folder of the "
                   "same data (or a diffusers AutoencoderKL folder); with --model dit the DiT learns its latents")
    g.add_argument("--text-encoder", default=None, metavar="DIR", help="captioned data: the frozen text encoder, "
                   "a `--model clip` run folder (text_encoder/ + tokenizer/)")
    g.add_argument("--cross-attention-max-tokens", type=int, default=None, metavar="N",
                   help="captioned data: U-Net levels with at most N positions (h·w) cross-attend to the text; the "
                        "lowest level always does (default 64: the 8×8 level of 16×16 latents; 256 adds 16×16)")
    g = p.add_argument_group("diffusion")
    g.add_argument("--prediction-type", choices=("epsilon", "sample", "v_prediction"), default=None,
                   help="what the network predicts: the noise ε, the clean sample x₀, or the velocity v "
                        "(default v_prediction for images, epsilon for toys)")
    g.add_argument("--beta-schedule", choices=("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"),
                   default=None, help="noise schedule (default linear: the one every sampler handles well; "
                                      "squaredcos_cap_v2 is the cosine schedule)")
    g.add_argument("--timesteps", type=int, default=None, help="number of diffusion steps T (default 1000)")
    g.add_argument("--snr-gamma", type=float, default=None, help="min-SNR-γ loss weighting, e.g. 5 "
                   "(default: off, uniform weights)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=None, help="total optimisation steps (default 4000; 5000 for toys)")
    g.add_argument("--batch-size", type=int, default=None, help="batch size, per rank under mpiexec (default 32; "
                   "256 for toys)")
    g.add_argument("--lr", type=float, default=None, help="peak AdamW learning rate (default 2e-3; 1e-3 for toys)")
    g.add_argument("--weight-decay", type=float, default=None, help="AdamW decoupled weight decay (default 0)")
    g.add_argument("--warmup-steps", type=int, default=None, help="linear LR warm-up steps, then cosine decay "
                   "(default 100)")
    g.add_argument("--grad-clip", type=float, default=None, help="max global gradient norm (default 1.0)")
    g.add_argument("--ema-decay", type=float, default=None, help="EMA decay of the sampling weights "
                   "(default 0.999; 0.995 for toys)")
    g = p.add_argument_group("run")
    g.add_argument("--output", "-o", default=None, help="run folder (default: runs/<data>-<date>-<time>)")
    g.add_argument("--resume", metavar="DIR", default=None,
                   help="continue the run in DIR exactly where its checkpoint stopped (other flags except "
                        "--steps, --stop-after, --device and --quiet are taken from DIR/config.json)")
    g.add_argument("--stop-after", type=int, default=None,
                   help="stop (with a checkpoint) after this many steps of this invocation; --resume continues")
    g.add_argument("--seed", type=int, default=None, help="seed of init, data order, timesteps and noise (default 0)")
    g.add_argument("--log-every", type=int, default=None, help="steps per log.jsonl record (default 25)")
    g.add_argument("--sample-every", type=int, default=None, help="steps between sample grids (default 1150)")
    g.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints (default 500)")
    g.add_argument("--guidance-scale", type=float, default=None,
                   help="classifier-free guidance scale of the periodic sample grids and of sampling and eval (default 1.5)")
    g.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="where the weights, optimizer, EMA and batches live: cpu, or cuda (a GPU through cupy: "
                        "pip install -e '.[gpu]'; without one, Numba's CUDA simulator under NUMBA_ENABLE_CUDASIM=1). "
                        "Default cpu; a resumed run keeps its device unless --device is given")
    g.add_argument("--quiet", action="store_true", help="no progress output")
    _add_threads(g)
    p.set_defaults(func=cmd_train)


_TRAIN_FLAGS = {  # argparse dest -> TrainConfig field
    "data": "data", "image_size": "image_size", "hflip": "hflip", "toy_samples": "toy_samples", "model": "model",
    "channels": "block_out_channels", "layers_per_block": "layers_per_block", "attention": "attention",
    "norm_groups": "norm_num_groups", "hidden_dim": "hidden_dim", "num_blocks": "num_blocks",
    "patch_size": "patch_size",
    "class_conditional": "class_conditional", "label_dropout": "label_dropout",
    "prediction_type": "prediction_type", "beta_schedule": "beta_schedule", "timesteps": "num_train_timesteps",
    "snr_gamma": "snr_gamma", "steps": "steps", "batch_size": "batch_size", "lr": "lr",
    "weight_decay": "weight_decay", "warmup_steps": "warmup_steps", "grad_clip": "grad_clip",
    "ema_decay": "ema_decay", "seed": "seed", "log_every": "log_every", "sample_every": "sample_every",
    "checkpoint_every": "checkpoint_every", "guidance_scale": "guidance_scale",
    "latent_channels": "latent_channels", "recon_loss": "recon_loss", "kl_weight": "kl_weight",
    "latent_balance": "latent_balance",
    "vae": "vae", "text_encoder": "text_encoder", "device": "device",
    "cross_attention_max_tokens": "cross_attention_max_tokens",
}


def _add_run_sampling(p, n_help: str) -> None:
    p.add_argument("--run", required=True, metavar="DIR", help="run folder written by `npdiff train`")
    p.add_argument("--scheduler", choices=SCHEDULER_NAMES, default="ddim",
                   help="sampler: ddpm (ancestral), ddim (deterministic), euler, euler_a (ancestral Euler), "
                        "heun (2nd order), dpm++ (DPM-Solver++ 2M)")
    p.add_argument("--steps", type=int, default=None, help="inference steps (default 50; 1000 for ddpm)")
    p.add_argument("--n", type=int, default=None, help=n_help)
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="classifier-free guidance scale for class-conditional runs: 1 = plain conditional, "
                        "0 = unconditional, >1 = sharper classes (default: the run's; new runs 1.5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial noise and stochastic steps")
    p.add_argument("--no-ema", dest="ema", action="store_false", help="use the live weights instead of the EMA")
    _add_threads(p)


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="draw samples from a trained run (PNG grid, optional .npy and trajectory)",
                       description="Sample from a run folder with any scheduler. Image runs give a PNG grid "
                                   "(class-conditional: one class per column); toy runs a scatter plot.",
                       formatter_class=_HelpFormatter)
    _add_run_sampling(p, "number of samples (default: 10 per class for class-conditional runs, else 64; "
                         "2000 points for toys)")
    p.add_argument("--class", dest="class_label", type=int, default=None,
                   help="draw every sample from this class (default: cycle through the classes)")
    p.add_argument("--prompt", default=None, help="text-to-image runs (`npdiff train --data shapes`): what to "
                   "draw, e.g. \"a large red circle at the top left and a small blue triangle at the bottom right\"")
    p.add_argument("--negative-prompt", default=None, help="text-to-image runs: the prompt guidance pushes away "
                   "from (default: the empty prompt)")
    p.add_argument("--out", default=None, help="output PNG (default: DIR/samples_<scheduler>_<steps>.png)")
    p.add_argument("--npy", action="store_true", help="also save the raw samples (and labels) as .npy")
    p.add_argument("--trajectory", type=int, default=None, metavar="K",
                   help="also save the trajectory at K evenly spaced steps: two rows per sample (x_t, then the "
                        "predicted x₀) for the first 4 samples (<out>_trajectory.png)")
    _add_editing(p)
    add_sample_flags(p)
    p.set_defaults(func=cmd_sample)


def _add_editing(p) -> None:
    g = p.add_argument_group("editing and guidance (image runs; the output grid shows input | mask | results)")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--inpaint", metavar="IMAGE", default=None,
                     help="fill the part of IMAGE outside --mask (any trained model; --scheduler ddpm or ddim)")
    src.add_argument("--img2img", metavar="IMAGE", default=None,
                     help="SDEdit: noise IMAGE to --strength and denoise it (towards --class, if given)")
    src.add_argument("--invert", metavar="IMAGE", default=None,
                     help="DDIM inversion: invert IMAGE (as --source-class) to x_T, regenerate it as --class")
    g.add_argument("--mask", default=None, help="for --inpaint: a mask image (white = keep, black = fill) or "
                   "left/right/top/bottom, the half of the image that is kept")
    g.add_argument("--strength", type=float, default=None,
                   help="how far the input is noised: 1 = from pure noise (default 1 for --inpaint, 0.7 for "
                        "--img2img)")
    g.add_argument("--jump-length", type=int, default=10, help="RePaint: steps per jump back")
    g.add_argument("--jump-n-sample", type=int, default=1, help="RePaint: passes over each jump (1 = no resampling)")
    g.add_argument("--reconstruction-guidance", type=float, default=0.0, metavar="W",
                   help="inpainting: correct x̂₀ by W·√ᾱ·∇ of its error on the kept pixels (Ho et al. 2022; one "
                        "backward per step; 30 on digits, see README 'Editing and guidance'; default 0: off)")
    g.add_argument("--source-class", type=int, default=None, help="for --invert: the input's class")
    g.add_argument("--classifier", metavar="DIR", default=None,
                   help="classifier guidance of an unconditional run (or of a class-conditional run's null class) "
                        "with the classifier trained by `npdiff train --model classifier -o DIR`")
    g.add_argument("--classifier-scale", type=float, default=1.0, help="classifier guidance scale s")


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="sample-quality metrics of a run, printed and saved as JSON",
                       description="Digits: accuracy of class-conditional samples under a fixed classifier, "
                                   "Fréchet distance of its features vs the floor (the mean over 50 real train subsets; ratio ± se), mean nearest-"
                                   "neighbour distance to the training set. 2-D toys: MMD² and energy distance "
                                   "to fresh data vs the fresh-vs-fresh floor. Other image data: nearest-"
                                   "neighbour distance only. VAE runs: reconstruction PSNR and SSIM on the held-"
                                   "out split, KL per latent dimension, and (digits) the classifier's accuracy on "
                                   "the reconstructions (psnr, ssim, kl_per_dim, recon_accuracy). CLIP runs: zero-shot "
                                   "accuracy per attribute on the held-out shapes. Text-to-image runs (`npdiff train "
                                   "--data shapes`): per-attribute accuracy of generated images under the fixed "
                                   "attribute classifier on held-out seen- and unseen-combination prompts, and the "
                                   "Fréchet ratio, at guidance 1, 2, 4, 7.5 (or --guidance-scale).",
                       formatter_class=_HelpFormatter)
    _add_run_sampling(p, "samples to generate (default: 50 per class for digits, 2000 for toys, 256 otherwise; "
                         "VAE runs: held-out images to reconstruct, default all)")
    p.add_argument("--out", default=None, help="output JSON (default: DIR/eval.json)")
    p.add_argument("--batch", type=int, default=100, help="samples per sampling batch (memory vs speed)")
    add_eval_flags(p)
    p.set_defaults(func=cmd_eval)


def _add_viz(sub) -> None:
    p = sub.add_parser("viz", help="pictures: noise schedules, forward noising strips, a VAE's latent space",
                       description="Draw the pictures that explain diffusion.")
    vs = p.add_subparsers(dest="what", required=True, metavar="{schedules,forward,latent,attention}")
    s = vs.add_parser("schedules", help="ᾱ_t and log-SNR(t) of every beta schedule",
                      formatter_class=_HelpFormatter)
    s.add_argument("--timesteps", type=int, default=1000, help="number of diffusion steps T")
    s.add_argument("--out", default="viz", help="output folder (schedules_alpha_bar.png, schedules_log_snr.png)")
    s.set_defaults(func=cmd_viz_schedules)
    f = vs.add_parser("forward", help="one image noised at increasing t, linear vs cosine schedule",
                      description="A strip of the same image noised at increasing t with the same noise, one "
                                  "row per schedule (linear, cosine): the cosine schedule destroys information "
                                  "more slowly.",
                      formatter_class=_HelpFormatter)
    src = f.add_mutually_exclusive_group()
    src.add_argument("--image", default=None, help="an image file (PNG/JPEG), shown in grayscale")
    src.add_argument("--digit", type=int, default=None, help="the first scikit-learn digit of this class (0-9); "
                                                              "the default when --image is not given is 3")
    f.add_argument("--size", type=int, default=32, help="resize the image to this square size")
    f.add_argument("--columns", type=int, default=8, help="number of timesteps shown")
    f.add_argument("--timesteps", type=int, default=1000, help="number of diffusion steps T")
    f.add_argument("--seed", type=int, default=0, help="seed of the noise")
    f.add_argument("--out", default="viz/forward.png", help="output PNG")
    f.set_defaults(func=cmd_viz_forward)
    lat = vs.add_parser("latent", help="a VAE run's held-out posterior means, coloured by class",
                        description="Scatter the posterior means μ(x) of the held-out split of a VAE run "
                                    "(`npdiff train --model vae`), one colour per class: a 2-D latent is "
                                    "drawn as it is (e.g. --latent-channels 2 with --channels 16,32,32,32,32 "
                                    "on 16×16 digits: f = 16, a 1×1×2 latent), a larger one by its first two "
                                    "principal components.",
                        formatter_class=_HelpFormatter)
    lat.add_argument("--run", required=True, metavar="DIR", help="VAE run folder written by `npdiff train --model vae`")
    lat.add_argument("--out", default=None, help="output PNG (default: DIR/latent.png)")
    lat.add_argument("--no-ema", dest="ema", action="store_false", help="use the live weights instead of the EMA")
    lat.set_defaults(func=cmd_viz_latent)
    att = vs.add_parser("attention", help="a text-to-image run's cross-attention map of each word over the image",
                        description="Generate one image of --prompt and show, for each --word (default: every "
                                    "word of the prompt but a/at/the/and), which pixels the U-Net's cross-attention "
                                    "layers read that word at: softmax(QKᵀ/√d) averaged over heads, layers and "
                                    "denoising steps (Hertz et al. 2022).",
                        formatter_class=_HelpFormatter)
    att.add_argument("--run", required=True, metavar="DIR", help="a text-to-image run (`npdiff train --data shapes`)")
    att.add_argument("--prompt", required=True, help="what to draw")
    att.add_argument("--word", action="append", default=None, help="a word of the prompt (repeatable)")
    att.add_argument("--guidance-scale", type=float, default=None, help="guidance scale (default: the run's)")
    att.add_argument("--steps", type=int, default=25, help="DDIM steps")
    att.add_argument("--seed", type=int, default=0, help="seed of the initial latents")
    att.add_argument("--out", default=None, help="output PNG (default: DIR/attention.png)")
    att.set_defaults(func=cmd_viz_attention, scheduler="ddim", ema=True)


def _add_bench(sub) -> None:
    p = sub.add_parser("bench",
                       help="run the benchmarks (npdiff vs PyTorch on the same workloads, each in its own process)",
                       description="Runs benchmarks/kernels.py, unet.py, dit.py and vae.py from the source "
                                   "checkout with this Python; extra arguments are passed on to each script. "
                                   "`npdiff bench scaling` (not in 'all'; needs the dist extra) measures "
                                   "data-parallel weak scaling with mpiexec; `npdiff bench unet_vs_dit` (not in "
                                   "'all') the default UNet's and a DiT's training steps in one process, for "
                                   "equal-wall-time runs; `npdiff bench samplers` (not in 'all') the sampler study: "
                                   "Fréchet ratio, accuracy and seconds of every sampler at NFE 5 … 1000 on a "
                                   "trained digits run (--run DIR).")
    p.add_argument("which", nargs="?", choices=("all", "kernels", "unet", "dit", "vae", "adapters", "scaling",
                                                "unet_vs_dit", "samplers"), default="all",
                   help="which benchmark script to run")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the script(s)")
    p.set_defaults(func=cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="npdiff", description="Diffusion models from scratch in NumPy and Numba: train, sample, evaluate, "
                                   "visualise. Run `npdiff <command> --help` for each command's flags.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,sample,eval,viz,bench,adapt}")
    _add_train(sub)
    _add_sample(sub)
    _add_eval(sub)
    _add_viz(sub)
    _add_bench(sub)
    add_adapt(sub, _HelpFormatter)
    return parser


def _add_threads(p) -> None:
    p.add_argument("--threads", type=int, default=None,
                   help="threads for the Numba kernels (default: all cores; BLAS stays single-threaded, "
                        "see npdiff/kernels/config.py)")


@contextlib.contextmanager
def _numba_threads(threads):
    """Run one command with ``threads`` Numba threads (None: leave the default)."""
    # npdiff's kernel config first: it sets OMP_WAIT_POLICY=PASSIVE, which OpenMP reads once,
    # when Numba's pool starts (get_num_threads below starts it). Started before, the pool's
    # idle threads spin and a loaded 2-core machine ran `npdiff train` 10× slower.
    from .kernels import config as _kernel_config  # noqa: F401
    import numba

    previous = numba.get_num_threads()
    if threads is not None:
        if not 1 <= threads <= numba.config.NUMBA_NUM_THREADS:
            raise ValueError(f"--threads must be in 1 … {numba.config.NUMBA_NUM_THREADS}, got {threads}")
        numba.set_num_threads(threads)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


# ----------------------------------------------------------------------------
# commands
# ----------------------------------------------------------------------------


def _default_run_dir(data: str) -> str:
    base = os.path.basename(os.path.normpath(data)) or "data"
    base = os.path.splitext(base)[0]
    return os.path.join("runs", f"{base}-{time.strftime('%Y%m%d-%H%M%S')}")


def cmd_train(args) -> int:
    from .training.distributed import get_world

    try:
        world = get_world()  # one process, or this rank of `mpiexec -n N npdiff train` (training/distributed.py)
    except RuntimeError as e:  # started by a launcher, but MPI cannot be used: say why, exit 2
        raise ValueError(str(e)) from None
    if not world.distributed:
        return _train(args, world)
    trainer = []
    try:
        return _train(args, world, trainer)
    except KeyboardInterrupt:
        if trainer and trainer[0]._stop_agreed:  # every rank stopped after the same step: a clean exit
            raise
        world.end_on_error("interrupted", 130)
    except BaseException as e:  # noqa: BLE001 - under MPI every failure must end the whole job
        world.end_on_error(f"{type(e).__name__}: {e}", 2 if isinstance(e, ValueError) else 1)


def _train(args, world, holder=None) -> int:
    from .training import TrainConfig, TrainingDiverged, resume, toy_defaults, trainer_class, vae_defaults

    progress = not args.quiet
    say = world.is_root  # rank 0 alone reports
    if args.resume is None and args.model is None and args.data == "shapes":
        return _train_stack(args)
    if args.resume is not None:
        trainer = resume(args.resume, steps=args.steps, progress=progress, device=args.device)
        if say:
            print(f"resuming {args.resume} at step {trainer.step}/{trainer.config.steps}"
                  + (f" on {world.world_size} ranks" if world.distributed else ""), file=sys.stderr)
    else:
        if args.model == "vae":
            fields = vae_defaults()
        else:
            fields = toy_defaults(args.data) if args.data in TOY_DATASETS else {}
        fields.update({field: getattr(args, dest) for dest, field in _TRAIN_FLAGS.items()
                       if getattr(args, dest) is not None})
        config = TrainConfig(**fields)
        run_dir = args.output or _default_run_dir(config.data)
        trainer = trainer_class(config)(config, run_dir, progress=progress)
        n_params = sum(int(p.data.size) for p in trainer.model.parameters())
        ranks = (f" on {world.world_size} ranks × batch {trainer.loader.batch_size}" if world.distributed else "")
        if say:
            print(f"training {trainer.info.model_class} ({n_params:,} parameters) on {config.data!r} "
                  f"({len(trainer.dataset)} items) for {config.steps} steps{ranks} -> {run_dir}", file=sys.stderr)
    if holder is not None:
        holder.append(trainer)
    try:
        summary = trainer.train(stop_after=args.stop_after)
    except TrainingDiverged as e:
        if say:
            print(f"npdiff train: {e}", file=sys.stderr)
        return 1
    if say:
        print(f"done: step {summary['step']} in {summary['seconds']:.1f} s; run folder {summary['run_dir']}")
    return 0


def _train_stack(args) -> int:
    """npdiff train --data shapes: the VAE, CLIP and latent U-Net stages (training/stack.py)."""
    from .training import TrainingDiverged
    from .training.stack import train_stack

    allowed = {"data", "seed"}
    extra = sorted(f"--{dest.replace('_', '-')}" for dest in _TRAIN_FLAGS
                   if dest not in allowed and getattr(args, dest) is not None)
    if args.stop_after is not None:
        extra.append("--stop-after")
    if extra:
        raise ValueError(f"`npdiff train --data shapes` trains the whole stack with its own settings; {extra} "
                         f"apply to one stage: train a stage alone with --model vae, clip or ldm")
    out = args.output or _default_run_dir("shapes")
    t0 = time.perf_counter()
    try:
        summary = train_stack(out, seed=args.seed or 0, progress=not args.quiet)
    except TrainingDiverged as e:
        print(f"npdiff train: {e}", file=sys.stderr)
        return 1
    for name, stage in summary.items():
        how = "reused" if stage["reused"] else f"{stage['seconds']:.0f} s"
        print(f"  {name:5s} step {stage['step']}  {how}")
    print(f"done in {time.perf_counter() - t0:.0f} s; stack folder {out} (sample: npdiff sample --run {out} "
          f"--prompt \"a large red circle at the top left\")")
    return 0


def _open_run(args, run=None):
    from .training import load_run

    run = run or load_run(args.run, use_ema=args.ema)
    if run.info.model_class == "AutoencoderKL":
        raise ValueError(f"{run.run_dir!r} is a VAE run: it has no sampler (its reconstructions, prior samples "
                         f"and interpolations are in {os.path.join(run.run_dir, 'samples')}); use "
                         f"`npdiff eval --run` or `npdiff viz latent --run`")
    steps = args.steps if args.steps is not None else (1000 if args.scheduler == "ddpm" else 50)
    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    guidance = args.guidance_scale if args.guidance_scale is not None else run.config.guidance_scale
    return run, steps, guidance


def _draw(run, scheduler_name: str, steps: int, n: int, labels, guidance: float, seed: int, batch: int | None = None,
          trajectory: int | None = None):
    """Samples (and the first batch's trajectory) in batches of ``batch``, one generator for all."""
    from .pipelines import sample
    from .training import make_scheduler

    info = run.info
    gen = np.random.default_rng(seed)
    batch = batch or n
    vae = None
    if run.config.latent:  # latent diffusion with class labels (U-Net or DiT): decode with the run's frozen VAE
        from .models import AutoencoderKL
        from .pipelines.latents import decode_latents
        from .training.latent_trainer import vae_folder

        if trajectory is not None:
            raise ValueError("--trajectory is not available for latent runs")
        vae = AutoencoderKL.from_pretrained(vae_folder(run.config.vae))
    outs, first = [], None
    for start in range(0, n, batch):
        stop = min(n, start + batch)
        scheduler = make_scheduler(scheduler_name, info.scheduler_config)
        y = None if labels is None else labels[start:stop]
        out = sample(run.model, scheduler, (stop - start, *info.sample_shape), class_labels=y,
                     guidance_scale=guidance if y is not None else 1.0, null_class=info.null_class, generator=gen,
                     num_inference_steps=steps, trajectory_steps=trajectory if start == 0 else None,
                     progress=True)
        outs.append(out.samples if vae is None else decode_latents(vae, out.samples))
        first = first or out
    return np.concatenate(outs), first


def _labels_for(run, n: int, class_label):
    info = run.info
    if info.null_class is None:
        if class_label is not None:
            raise ValueError(f"--class needs a class-conditional run; {run.run_dir!r} was trained unconditionally")
        return None
    if class_label is not None:
        if not 0 <= class_label < info.num_classes:
            raise ValueError(f"--class must be in 0 … {info.num_classes - 1}, got {class_label}")
        return np.full(n, class_label, dtype=np.int64)
    return np.arange(n, dtype=np.int64) % info.num_classes


def _t2i_pipeline(args, folder: str):
    """The StableDiffusionPipeline of a text-to-image run with --scheduler, and the run's guidance scale."""
    from . import io as nd_io
    from .pipelines import StableDiffusionPipeline
    from .training import make_scheduler

    if not args.ema:
        raise ValueError("a text-to-image run's pipeline/ holds the EMA weights only; drop --no-ema")
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    pipe.scheduler = make_scheduler(args.scheduler, dict(pipe.scheduler.config))
    config = os.path.join(os.path.dirname(folder), "config.json")
    guidance = nd_io.load_json(config)["train"]["guidance_scale"] if os.path.isfile(config) else 4.0
    return pipe, guidance


def _sample_t2i(args, folder: str) -> int:
    """npdiff sample --run DIR --prompt "...": a grid of --n images of one prompt."""
    from . import io as nd_io

    if args.prompt is None:
        raise ValueError(f"{args.run!r} is a text-to-image run: say what to draw with --prompt \"...\"")
    if args.class_label is not None or args.inpaint or args.img2img or args.invert or args.classifier:
        raise ValueError("a text-to-image run takes --prompt (and --negative-prompt), not --class or editing flags")
    pipe, guidance = _t2i_pipeline(args, folder)
    guidance = args.guidance_scale if args.guidance_scale is not None else guidance
    steps = args.steps if args.steps is not None else (1000 if args.scheduler == "ddpm" else 50)
    n = args.n or 16
    if n < 1 or steps < 1:
        raise ValueError(f"--n and --steps must be >= 1, got {n} and {steps}")
    out = pipe(args.prompt, negative_prompt=args.negative_prompt, num_inference_steps=steps,
               guidance_scale=guidance, num_images_per_prompt=n, generator=np.random.default_rng(args.seed),
               output_type="np", progress=True).images  # (n, H, W, 3) in [0, 1]
    images = out.transpose(0, 3, 1, 2) * 2.0 - 1.0
    path = args.out or os.path.join(os.path.dirname(folder), f"prompt_{args.scheduler}_{steps}_s{guidance:g}.png")
    nd_io.save_image_grid(path, images, nrow=int(np.ceil(np.sqrt(n))), scale=max(1, 64 // images.shape[-1]))
    print(f"wrote {path}: {n} images of {args.prompt!r} (guidance {guidance:g}, {args.scheduler}, {steps} steps)")
    if args.npy:
        np.save(os.path.splitext(path)[0] + ".npy", images)
    return 0


def cmd_sample(args) -> int:
    from . import io as nd_io
    from .training.stack import find_pipeline

    folder = find_pipeline(args.run) if os.path.isdir(args.run) else None
    if folder is not None:
        return _sample_t2i(args, folder)
    if args.prompt is not None or args.negative_prompt is not None:
        raise ValueError(f"--prompt needs a text-to-image run (`npdiff train --data shapes`); {args.run!r} has no "
                         f"pipeline/ folder")
    run, steps, guidance = _open_run(args)
    if args.inpaint or args.img2img or args.invert or args.classifier:
        return _sample_edit(args, run, steps, guidance)
    info = run.info
    toy = info.is_points
    conditional = info.null_class is not None
    n = args.n or info.default_sample_count(10 if args.class_label is None else None, 64)
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    labels = _labels_for(run, n, args.class_label)
    if args.trajectory is not None and (toy or args.trajectory < 1):
        raise ValueError("--trajectory K needs an image run and K >= 1")
    samples, first = _draw(run, args.scheduler, steps, n, labels, guidance, args.seed, trajectory=args.trajectory)
    out = args.out or os.path.join(run.run_dir, f"samples_{args.scheduler}_{steps}.png")
    if toy:
        from .data import make_toy

        ref = make_toy(run.config.data, len(samples), seed=1) if run.config.data in TOY_DATASETS else None
        nd_io.save_scatter(out, samples, ref, title=f"{args.scheduler}, {steps} steps", lim=3.0)
    else:
        nrow = info.num_classes if conditional and args.class_label is None else int(np.ceil(np.sqrt(n)))
        nd_io.save_image_grid(out, samples, nrow=nrow, scale=max(1, 64 // samples.shape[-1]))
    print(f"wrote {out}")
    stem = os.path.splitext(out)[0]
    if args.npy:
        np.save(stem + ".npy", samples)
        print(f"wrote {stem}.npy")
        if labels is not None:
            np.save(stem + "_labels.npy", labels)
            print(f"wrote {stem}_labels.npy")
    if args.trajectory is not None:
        k = min(4, n)
        xt, x0 = first.trajectory[:, :k], first.pred_x0[:, :k]  # (K, k, C, H, W)
        rows = []
        for j in range(k):  # per sample: a row of x_t, then a row of x̂₀
            rows += [xt[:, j], np.clip(x0[:, j], -1, 1)]
        strip = np.concatenate(rows)  # (2k·K, C, H, W)
        path = stem + "_trajectory.png"
        nd_io.save_image_grid(path, strip, nrow=len(first.timesteps), scale=max(1, 64 // info.sample_shape[-1]))
        ts = ", ".join(f"{float(t):g}" for t in first.timesteps)
        print(f"wrote {path} (columns t = {ts}; rows: x_t, predicted x0, per sample)")
    return 0


def _input_image(path: str, shape) -> np.ndarray:
    """An image file as (C, H, W) in [-1, 1] at the run's sample shape (resized bicubically)."""
    from PIL import Image

    from . import io as nd_io

    c, h, w = shape
    img = nd_io.load_image(path, mode="L" if c == 1 else "RGB")  # (C, H', W') in [-1, 1]
    if c not in (1, 3):
        raise ValueError(f"image inputs need a run with 1 or 3 channels, got {c}")
    planes = []
    for plane in img:  # resize each channel as an 8-bit picture
        pil = Image.fromarray(np.round((plane + 1.0) * 127.5).astype(np.uint8)).resize((w, h), Image.BICUBIC)
        planes.append(np.asarray(pil, dtype=np.float32) / 127.5 - 1.0)
    return np.stack(planes)


def _input_mask(spec: str | None, shape) -> np.ndarray:
    """--mask as a (1, H, W) {0, 1} array: a file (white = keep) or the name of the kept half."""
    _, h, w = shape
    halves = {"left": (slice(None), slice(0, w // 2)), "right": (slice(None), slice(w // 2, w)),
              "top": (slice(0, h // 2), slice(None)), "bottom": (slice(h // 2, h), slice(None))}
    if spec is None:
        raise ValueError("--inpaint needs --mask (a mask image, white = keep, or left/right/top/bottom)")
    if spec in halves:
        m = np.zeros((1, h, w), np.float32)
        m[(0, *halves[spec])] = 1.0
        return m
    return (_input_image(spec, (1, h, w)) > 0.0).astype(np.float32)  # threshold at mid-grey


def _sample_edit(args, run, steps: int, guidance: float) -> int:
    """npdiff sample --inpaint / --img2img / --invert / --classifier."""
    from . import io as nd_io
    from .pipelines import NullClassModel, classifier_guided_sample, ddim_edit, img2img, inpaint
    from .schedulers import DDIMInverseScheduler
    from .training import make_scheduler
    from .training.classifier import load_classifier

    info = run.info
    if len(info.sample_shape) != 3:
        raise ValueError("editing and classifier guidance need an image run")
    conditional = info.null_class is not None
    n = args.n or 8
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    scheduler = make_scheduler(args.scheduler, info.scheduler_config)
    scale = max(1, 64 // info.sample_shape[-1])
    # without --class (and for classifier guidance) the model runs unconditionally: a class-conditional
    # run through its null class
    unconditional = NullClassModel(run.model, info.null_class) if conditional else run.model
    labels = None if args.classifier or args.class_label is None else _labels_for(run, n, args.class_label)
    model = unconditional if labels is None else run.model
    cond = dict(class_labels=labels, guidance_scale=guidance if labels is not None else 1.0,
                null_class=info.null_class)
    if args.classifier:
        if args.inpaint or args.img2img or args.invert:
            raise ValueError("--classifier guides plain sampling; it cannot be combined with an edit")
        if args.class_label is None:
            raise ValueError("--classifier needs --class, the class to guide towards")
        classifier = load_classifier(args.classifier)
        target = np.full(n, args.class_label, dtype=np.int64)
        out = classifier_guided_sample(unconditional, classifier, scheduler, target, args.classifier_scale,
                                       shape=(n, *info.sample_shape), num_inference_steps=steps, generator=args.seed,
                                       progress=True)
        path = args.out or os.path.join(run.run_dir, f"classifier_guided_{args.class_label}_s{args.classifier_scale:g}.png")
        nd_io.save_image_grid(path, np.clip(out.samples, -1, 1), nrow=int(np.ceil(np.sqrt(n))), scale=scale)
        print(f"wrote {path}")
        return 0
    source = args.inpaint or args.img2img or args.invert
    image = np.broadcast_to(_input_image(source, info.sample_shape), (n, *info.sample_shape)).copy()
    rows = [image[:1]]
    if args.inpaint:
        mask = _input_mask(args.mask, info.sample_shape)
        out = inpaint(model, scheduler, image, mask, num_inference_steps=steps,
                      strength=1.0 if args.strength is None else args.strength, jump_length=args.jump_length,
                      jump_n_sample=args.jump_n_sample, reconstruction_guidance=args.reconstruction_guidance,
                      generator=args.seed, progress=True, **cond)
        rows.append(np.broadcast_to(mask * 2.0 - 1.0, (1, *info.sample_shape)))
        what = "inpaint"
    elif args.img2img:
        out = img2img(model, scheduler, image, 0.7 if args.strength is None else args.strength,
                      num_inference_steps=steps, generator=args.seed, progress=True, **cond)
        what = "img2img"
    else:
        if not conditional or args.class_label is None or args.source_class is None:
            raise ValueError("--invert needs a class-conditional run, --source-class (the input's class) and "
                             "--class (the class to regenerate it as)")
        source_labels = np.full(n, args.source_class, dtype=np.int64)
        inverse = DDIMInverseScheduler.from_config(info.scheduler_config)
        out = ddim_edit(run.model, make_scheduler("ddim", info.scheduler_config), inverse, image[:1],
                        num_inference_steps=steps, source_labels=source_labels[:1], target_labels=labels[:1],
                        guidance_scale=guidance, null_class=info.null_class, progress=True)
        what = "invert"
    path = args.out or os.path.join(run.run_dir, f"{what}.png")
    grid = np.concatenate(rows + [np.clip(out.samples, -1, 1)])
    nd_io.save_image_grid(path, grid, nrow=len(grid), scale=scale)
    print(f"wrote {path} (input{' | mask' if args.inpaint else ''} | {len(out.samples)} result(s))")
    return 0


def cmd_eval(args) -> int:
    from . import io as nd_io
    from .metrics import digits_report, nearest_neighbour_distance, toy_report
    from .training import load_run
    from .training.stack import find_pipeline

    folder = find_pipeline(args.run) if os.path.isdir(args.run) else None
    if folder is not None:
        return _eval_t2i(args, folder)
    run = load_run(args.run, use_ema=args.ema)
    if run.info.model_class == "AutoencoderKL":
        return _eval_vae(run, args)
    if run.info.model_class == "CLIPModel":
        return _eval_clip(run, args)
    run, steps, guidance = _open_run(args, run)
    info, data = run.info, run.config.data
    toy = info.is_points
    conditional = info.null_class is not None
    n = args.n if args.n is not None else info.default_sample_count(50, 256)
    if n < 2 or args.batch < 1:
        raise ValueError(f"--n must be >= 2 and --batch >= 1, got {n} and {args.batch}")
    labels = _labels_for(run, n, None)
    t0 = time.perf_counter()
    samples, _ = _draw(run, args.scheduler, steps, n, labels, guidance, args.seed, batch=args.batch)
    seconds = time.perf_counter() - t0
    if toy:
        if data not in TOY_DATASETS:
            raise ValueError(f"eval of 2-D data needs a toy dataset {TOY_DATASETS}, the run used {data!r}")
        report = toy_report(samples, data, seed=args.seed)
        nd_io.save_scatter(os.path.join(run.run_dir, "eval_samples.png"), samples[:2000], None, lim=3.0,
                           title=f"{args.scheduler}, {steps} steps")
    elif data == "digits" and samples.shape[1] == 1:
        report = digits_report(samples, labels, seed=args.seed)
        nd_io.save_image_grid(os.path.join(run.run_dir, "eval_samples.png"), samples[:100],
                              nrow=info.num_classes if conditional else 10, scale=2)
    else:
        from .training import load_train_data

        train = load_train_data(run.config)
        report = {"nn_distance": nearest_neighbour_distance(samples, train.images), "n_samples": int(n)}
    report.update({"run": run.run_dir, "step": run.step, "scheduler": args.scheduler, "steps": steps,
                   "guidance_scale": guidance if conditional else None, "ema": args.ema, "seed": args.seed,
                   "sampling_seconds": round(seconds, 2)})
    _write_report(report, args.out or os.path.join(run.run_dir, "eval.json"))
    if "fd_floor_draws" in report:  # digits: the Fréchet figures with their spreads, readable
        from .metrics import format_fd_summary

        print(format_fd_summary(report))
    return 0


def _write_report(report: dict, out: str) -> None:
    from . import io as nd_io

    nd_io.save_json(out, report)
    for k, v in report.items():
        print(f"{k:26s} {v:.4g}" if isinstance(v, float) else f"{k:26s} {v}")
    print(f"wrote {out}")


def _clip_zero_shot(clip_dir: str, model=None, n: int | None = None) -> dict:
    """Zero-shot accuracy per attribute of a CLIP run on the real test and unseen images."""
    from .data import make_shapes
    from .models import CLIPTokenizer
    from .training.clip_trainer import zero_shot_report

    if model is None:
        from .training import load_run

        model = load_run(clip_dir).model
    tok = CLIPTokenizer.from_pretrained(os.path.join(clip_dir, "tokenizer"))
    out = {}
    for split in ("test", "unseen"):
        d = make_shapes(None, split)
        k = len(d) if n is None else min(n, len(d))
        out[split] = zero_shot_report(model, tok, d.images[:k], d.attributes[:k])
    return out


def _eval_clip(run, args) -> int:
    """npdiff eval on a CLIP run: zero-shot accuracy per attribute on held-out real images."""
    t0 = time.perf_counter()
    zs = _clip_zero_shot(run.run_dir, run.model, args.n)
    report = {f"{split}_{k}": v for split, r in zs.items() for k, v in r.items()}
    report.update({"run": run.run_dir, "step": run.step, "ema": args.ema, "seconds": round(time.perf_counter() - t0, 2)})
    _write_report(report, args.out or os.path.join(run.run_dir, "eval.json"))
    return 0


def _eval_t2i(args, folder: str) -> int:
    """npdiff eval on a text-to-image run: attribute accuracies and Fréchet ratio per guidance scale."""
    from . import io as nd_io
    from .training.t2i_eval import GUIDANCE_SCALES, VAE_CEILING_N, format_table, t2i_report, vae_ceiling
    from .training.vae_trainer import format_ceiling

    pipe, _ = _t2i_pipeline(args, folder)
    scales = GUIDANCE_SCALES if args.guidance_scale is None else (args.guidance_scale,)
    steps = args.steps if args.steps is not None else 25
    n = args.n if args.n is not None else 200
    if n < 2 or steps < 1 or args.batch < 1:
        raise ValueError(f"--n must be >= 2, --steps and --batch >= 1; got {n}, {steps}, {args.batch}")
    run_dir = os.path.dirname(folder)
    t0 = time.perf_counter()
    report = t2i_report(pipe, n=n, guidance_scales=scales, steps=steps, seed=args.seed, batch=args.batch,
                        progress=True)
    images = report.pop("images")
    report.update({"run": run_dir, "scheduler": args.scheduler, "seconds": round(time.perf_counter() - t0, 1)})
    report["vae_ceiling"] = vae_ceiling(pipe.vae, max(n, VAE_CEILING_N))
    clip_dir = os.path.join(os.path.dirname(run_dir), "clip")
    if os.path.isfile(os.path.join(clip_dir, "checkpoint.safetensors")):
        report["clip_zero_shot"] = _clip_zero_shot(clip_dir)
    out = args.out or os.path.join(run_dir, "eval.json")
    nd_io.save_json(out, report)
    for (scale, split), x in images.items():
        nd_io.save_image_grid(os.path.join(run_dir, f"eval_{split}_s{scale:g}.png"), np.clip(x[:32], -1, 1), nrow=8,
                              scale=2)
    for split in ("seen", "unseen"):  # one row per prompt, one column per guidance scale (same initial latents)
        strip = np.stack([images[(float(s), split)][:8] for s in scales], axis=1)  # (8, scales, 3, H, W)
        nd_io.save_image_grid(os.path.join(run_dir, f"eval_{split}_guidance.png"),
                              np.clip(strip.reshape(-1, *strip.shape[2:]), -1, 1), nrow=len(scales), scale=2)
    print(format_table(report))
    print(format_ceiling(report["vae_ceiling"]))
    if "clip_zero_shot" in report:
        for split, r in report["clip_zero_shot"].items():
            print(f"CLIP zero-shot ({split}): " + ", ".join(f"{k} {v:.1%}" for k, v in r.items() if k.endswith("accuracy")))
    print(f"wrote {out}, eval_<seen|unseen>_s<scale>.png and eval_<seen|unseen>_guidance.png (rows: the first "
          f"8 prompts, columns: guidance {', '.join(f'{s:g}' for s in scales)}) in {run_dir}")
    return 0


def _held_out_split(run):
    """The run's held-out images (and labels): the test split of its data."""
    from .training import load_train_data

    return load_train_data(run.config, "test")


def _eval_vae(run, args) -> int:
    """Reconstruction metrics of a VAE run on the held-out split (decode of the posterior mean)."""
    from .metrics import reconstruction_report
    from .training.vae_trainer import reconstruct

    test = _held_out_split(run)
    n = len(test) if args.n is None else min(args.n, len(test))
    if n < 1 or args.batch < 1:
        raise ValueError(f"--n and --batch must be >= 1, got {args.n} and {args.batch}")
    x = test.images[:n]
    t0 = time.perf_counter()
    recon, kl = reconstruct(run.model, x, batch=args.batch)
    digits = run.config.data == "digits" and run.info.sample_shape[0] == 1
    report = reconstruction_report(x, recon, test.labels[:n] if digits and test.labels is not None else None)
    f = run.model.downsampling_factor
    latent_shape = [run.model.config.latent_channels, x.shape[2] // f, x.shape[3] // f]  # (c, h, w)
    report = {"psnr": report.pop("psnr"), "ssim": report.pop("ssim"),
              "kl_per_dim": float(kl.mean() / np.prod(latent_shape)), **report, "latent_shape": latent_shape,
              "run": run.run_dir, "step": run.step, "ema": args.ema, "split": "test",
              "seconds": round(time.perf_counter() - t0, 2)}
    if run.config.data == "shapes":  # the attribute classifier on the reconstructions: the VAE's ceiling
        from .training.vae_trainer import attribute_report, format_ceiling

        report["attribute_ceiling"] = attribute_report(recon, x, test.attributes[:n])
        print(format_ceiling(report["attribute_ceiling"]))
    from . import io as nd_io

    pairs = np.stack([x[:32], np.clip(recon[:32], -1, 1)], axis=1).reshape(-1, *x.shape[1:])  # (2n, C, H, W)
    nd_io.save_image_grid(os.path.join(run.run_dir, "eval_reconstructions.png"), pairs, nrow=8,
                          scale=max(1, 64 // x.shape[-1]))
    _write_report(report, args.out or os.path.join(run.run_dir, "eval.json"))
    return 0


def cmd_viz_schedules(args) -> int:
    from . import io as nd_io
    from .diffusion import BETA_SCHEDULES, NoiseSchedule

    t = np.arange(args.timesteps)
    alpha_bar = {name: NoiseSchedule(args.timesteps, beta_schedule=name).alphas_cumprod for name in BETA_SCHEDULES}
    with np.errstate(divide="ignore"):
        log_snr = {name: np.log(ab) - np.log1p(-ab) for name, ab in alpha_bar.items()}  # log(ᾱ/(1−ᾱ))
    os.makedirs(args.out, exist_ok=True)
    p1, p2 = os.path.join(args.out, "schedules_alpha_bar.png"), os.path.join(args.out, "schedules_log_snr.png")
    nd_io.save_curves(p1, t, alpha_bar, xlabel="t", ylabel="ᾱ_t (signal fraction kept)",
                      title="ᾱ_t of each beta schedule")
    nd_io.save_curves(p2, t, log_snr, xlabel="t", ylabel="log SNR(t) = log ᾱ_t / (1 − ᾱ_t)",
                      title="log-SNR of each beta schedule")
    print(f"wrote {p1}\nwrote {p2}")
    return 0


def cmd_viz_forward(args) -> int:
    from . import io as nd_io
    from .data import load_digits
    from .diffusion import NoiseSchedule

    if args.columns < 2 or args.size < 4:
        raise ValueError(f"--columns must be >= 2 and --size >= 4, got {args.columns} and {args.size}")
    if args.image is not None:
        x0 = nd_io.load_image(args.image, mode="L", size=args.size)[None]  # (1, 1, S, S) in [-1, 1]
        what = os.path.basename(args.image)
    else:
        digit = 3 if args.digit is None else args.digit
        if not 0 <= digit <= 9:
            raise ValueError(f"--digit must be in 0 … 9, got {digit}")
        images, labels = load_digits(args.size, "all")  # (N, 1, S, S) in [-1, 1]
        x0 = images[np.flatnonzero(labels == digit)[:1]]  # (1, 1, S, S)
        what = f"digit {digit}"
    ts = np.round(np.linspace(0, args.timesteps - 1, args.columns)).astype(np.int64)
    noise = np.random.default_rng(args.seed).standard_normal(x0.shape).astype(np.float32)
    rows = []
    for schedule in ("linear", "squaredcos_cap_v2"):  # top row, bottom row (cosine)
        sched = NoiseSchedule(args.timesteps, beta_schedule=schedule)
        rows += [sched.q_sample(x0, np.array([t]), noise)[0] for t in ts]
    strip = np.stack(rows)  # (2·columns, 1, S, S)
    nd_io.save_image_grid(args.out, strip, nrow=args.columns, scale=max(1, 64 // args.size))
    print(f"wrote {args.out}: {what}; top row linear, bottom row cosine; columns t = {', '.join(map(str, ts))}")
    return 0


def cmd_viz_latent(args) -> int:
    from . import io as nd_io
    from .training import load_run
    from .training.vae_trainer import encode_means

    run = load_run(args.run, use_ema=args.ema)
    if run.info.model_class != "AutoencoderKL":
        raise ValueError(f"{run.run_dir!r} is a {run.info.model_class} run; `viz latent` needs a VAE run "
                         "(npdiff train --model vae)")
    test = _held_out_split(run)
    mu = encode_means(run.model, test.images).reshape(len(test), -1)  # (N, c·h·w)
    if mu.shape[1] == 2:
        points, axes = mu, ("z₁", "z₂")
    else:  # first two principal components of the means
        centred = mu - mu.mean(0)
        _, sv, vt = np.linalg.svd(centred, full_matrices=False)
        points = centred @ vt[:2].T  # (N, 2)
        share = sv[:2] ** 2 / np.sum(sv**2)
        axes = (f"PC 1 ({share[0]:.0%} of the variance)", f"PC 2 ({share[1]:.0%})")
    out = args.out or os.path.join(run.run_dir, "latent.png")
    nd_io.save_class_scatter(out, points, test.labels, test.class_names, xlabel=axes[0], ylabel=axes[1],
                             title=f"posterior means of {len(test)} held-out images ({mu.shape[1]}-D latent)")
    print(f"wrote {out}")
    return 0


def cmd_viz_attention(args) -> int:
    from . import io as nd_io
    from .pipelines.attention_maps import CrossAttentionRecorder, token_positions, word_maps
    from .training.stack import find_pipeline

    folder = find_pipeline(args.run) if os.path.isdir(args.run) else None
    if folder is None:
        raise ValueError(f"{args.run!r} is not a text-to-image run (no pipeline/ folder)")
    pipe, guidance = _t2i_pipeline(args, folder)
    guidance = args.guidance_scale if args.guidance_scale is not None else guidance
    stop = {"a", "an", "at", "the", "and"}
    words = args.word or [w for w in args.prompt.lower().split() if w not in stop]
    positions = {w: token_positions(pipe.tokenizer, args.prompt, w) for w in words}
    with CrossAttentionRecorder(pipe.unet, guided=guidance > 1.0) as maps:
        image = pipe(args.prompt, num_inference_steps=args.steps, guidance_scale=guidance,
                     generator=np.random.default_rng(args.seed), output_type="np").images[0]  # (H, W, 3)
    attn = word_maps(maps)[0]  # (Lk, h, w)
    panels = [image]
    h = image.shape[0]
    for w in words:
        m = attn[positions[w]].mean(axis=0)  # (h, w)
        m = (m - m.min()) / max(float(m.max() - m.min()), 1e-12)
        big = np.kron(m, np.ones((h // m.shape[0], h // m.shape[1])))  # (H, W), nearest upsampling
        heat = np.stack([big, 0.25 * big, 1.0 - big], axis=-1)  # blue (ignored) → red (attended)
        panels.append(0.45 * image + 0.55 * heat)
    strip = np.stack(panels).transpose(0, 3, 1, 2) * 2.0 - 1.0  # (1 + words, 3, H, W)
    out = args.out or os.path.join(os.path.dirname(folder), "attention.png")
    nd_io.save_image_grid(out, strip.astype(np.float32), nrow=len(strip), scale=max(1, 128 // h))
    print(f"wrote {out}: the image, then the cross-attention map of {', '.join(repr(w) for w in words)} "
          f"(red = attended; averaged over heads, layers and {args.steps} steps)")
    return 0


def cmd_bench(args) -> int:
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
    scripts = ["kernels", "unet", "dit", "vae", "adapters"] if args.which == "all" else [args.which]
    status = 0
    for name in scripts:
        path = os.path.join(root, f"{name}.py")
        if not os.path.isfile(path):
            raise ValueError(f"benchmark script {path!r} not found (npdiff bench runs from a source checkout)")
        print(f"== {name}: {sys.executable} {path} {' '.join(args.args)}", flush=True)
        status = max(status, subprocess.call([sys.executable, path, *args.args]))
    return status


def main(argv=None) -> int:
    """Entry point of the ``npdiff`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with _numba_threads(getattr(args, "threads", None)):
            return int(adapter_route(args)(args) or 0)  # sample / eval with a ControlNet or LoRA: cli_adapters
    except (ValueError, DeviceUnavailableError) as e:
        print(f"npdiff {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
