"""The editing targets of issue 14, measured on trained digits runs, and the pictures in docs/images.

    python benchmarks/editing_quality.py --run runs/digits --classifier runs/digits-clf [--parts ...]
    python benchmarks/editing_quality.py --uncond-run runs/digits-uncond --parts inpaint --reconstruction-guidance 30

Parts (each prints a table and merges its numbers into --out JSON, so a partial run keeps them):

  inversion  DDIM inversion round trip at guidance 1: mean |x − x̂| on test digits in [-1, 1]
  inpaint    left / right half kept, the other half filled by the run's null-class (unconditional)
             model; kept pixels must equal the input; accuracy = the fixed digits classifier
             (npdiff.metrics) names the original digit; RePaint resampling off and on, for each
             --reconstruction-guidance w; settings are chosen on the first --validation digits,
             and the accuracy on the rest is printed too
  sdedit     test digits of class y edited towards class k ≠ y at several strengths: accuracy of
             k and the mean |x − x⁰| to the input
  guidance   classifier guidance of the null-class model over scales (accuracy, Fréchet ratio),
             beside classifier-free guidance of the conditional model at the same step count

The run must be class-conditional with label dropout (the default `npdiff train`). Inpainting
and classifier guidance use an unconditional model: ``--uncond-run`` (a run trained with
``--unconditional``) or, without it, the conditional run's null class. This is a
quality measurement, not a timing: speed is measured by the other scripts here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from npdiff import io as nd_io  # noqa: E402
from npdiff.data import load_digits  # noqa: E402
from npdiff.metrics import conditional_accuracy, digits_report  # noqa: E402
from npdiff.pipelines import (NullClassModel, classifier_guided_sample, ddim_edit, img2img, inpaint,  # noqa: E402
                              sample)
from npdiff.schedulers import DDIMInverseScheduler  # noqa: E402
from npdiff.training import load_run, make_scheduler  # noqa: E402
from npdiff.training.classifier import load_classifier  # noqa: E402

IMAGES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "images")


def _batches(fn, n: int, batch: int):
    return np.concatenate([fn(slice(i, min(n, i + batch))) for i in range(0, n, batch)])


def _unconditional(run, args):
    """The unconditional model: --uncond-run's (trained without labels), else the run's null class."""
    if args.uncond_run:
        uncond = load_run(args.uncond_run)
        if uncond.info.null_class is not None:
            raise SystemExit(f"--uncond-run {args.uncond_run} is class-conditional; train it with --unconditional")
        return uncond.model
    return NullClassModel(run.model, run.info.null_class)


def part_inversion(run, args, test_x, test_y):
    n = min(args.n_inversion, len(test_x))
    x, y = test_x[:n], test_y[:n]

    def one(s):
        out = ddim_edit(run.model, make_scheduler("ddim", run.info.scheduler_config),
                        DDIMInverseScheduler.from_config(run.info.scheduler_config), x[s], num_inference_steps=50,
                        source_labels=y[s], target_labels=y[s], guidance_scale=1.0, null_class=run.info.null_class)
        return out.samples

    rec = _batches(one, n, args.batch)
    mae = float(np.abs(rec - x).mean())
    edit_to = (y[:10] + 5) % 10
    edits = ddim_edit(run.model, make_scheduler("ddim", run.info.scheduler_config),
                      DDIMInverseScheduler.from_config(run.info.scheduler_config), x[:10], num_inference_steps=50,
                      source_labels=y[:10], target_labels=edit_to, guidance_scale=args.cfg,
                      null_class=run.info.null_class).samples
    if args.pictures:
        nd_io.save_image_grid(os.path.join(IMAGES, "editing_inversion.png"),
                              np.concatenate([x[:10], np.clip(rec[:10], -1, 1), np.clip(edits, -1, 1)]), nrow=10, scale=3)
    print(f"inversion round trip (50 DDIM steps, guidance 1, {n} test digits): mean |x - x_rec| = {mae:.4f}")
    return {"inversion_mae": mae, "inversion_n": n,
            "inversion_edit_accuracy": conditional_accuracy(edits, edit_to)}


def part_inpaint(run, args, test_x, test_y):
    x, y = test_x[args.first:args.first + args.n], test_y[args.first:args.first + args.n]
    n = len(x)
    uncond = _unconditional(run, args)
    size = x.shape[-1]
    result, pictures = {}, []
    for keep in args.keep:
        mask = np.zeros((1, 1, size, size), np.float32)
        cols = slice(0, size // 2) if keep == "left" else slice(size // 2, size)
        mask[..., cols] = 1.0
        for w in args.reconstruction_guidance:
            for name, jumps in [("off", 1), ("on", args.jump_n_sample)][:2 if args.jump_n_sample > 1 else 1]:
                t0 = time.perf_counter()
                out = _batches(lambda s: inpaint(uncond, make_scheduler(args.inpaint_scheduler, run.info.scheduler_config),
                                                 x[s], mask, num_inference_steps=args.inpaint_steps or args.steps,
                                                 jump_length=args.jump_length, jump_n_sample=jumps,
                                                 reconstruction_guidance=w, generator=[args.seed, s.start]).samples,
                               n, args.batch)
                exact = bool(np.array_equal(out[..., cols], x[..., cols]))
                acc = conditional_accuracy(np.clip(out, -1, 1), y)
                key = (f"inpaint_{args.inpaint_scheduler}{args.inpaint_steps or args.steps}_keep_{keep}_rg{w:g}"
                       f"_repaint_{name}{'_uncond_run' if args.uncond_run else ''}")
                result[key] = {"accuracy": acc, "kept_pixels_exact": exact, "seconds": round(time.perf_counter() - t0, 1)}
                held = ""
                if 0 < args.validation - args.first < n:  # the digits after the validation subset, alone
                    v = args.validation - args.first
                    result[key]["accuracy_after_validation"] = conditional_accuracy(np.clip(out[v:], -1, 1), y[v:])
                    held = f" ({result[key]['accuracy_after_validation']:.3f} on the {n - v} after the validation subset)"
                print(f"inpaint ({args.inpaint_scheduler}, {args.inpaint_steps or args.steps} steps, test digits "
                      f"{args.first}…{args.first + n - 1}) keep {keep:5s} reconstruction guidance {w:<4g} RePaint "
                      f"{name:3s}: accuracy {acc:.3f}{held}, kept pixels exact: {exact}", flush=True)
        # the last configuration's first 8: input | mask | result rows
        pictures += [x[:8], np.broadcast_to(mask[0] * 2 - 1, (8, 1, size, size)), np.clip(out[:8], -1, 1)]
    result["inpaint_n"] = n
    result["inpaint_first"] = args.first
    result["inpaint_scheduler"] = args.inpaint_scheduler
    result["inpaint_repaint"] = {"jump_length": args.jump_length, "jump_n_sample": args.jump_n_sample}
    if args.pictures:
        nd_io.save_image_grid(os.path.join(IMAGES, "editing_inpaint.png"), np.concatenate(pictures), nrow=8, scale=3)
    return result


def part_sdedit(run, args, test_x, test_y):
    n = min(args.n, len(test_x))
    x, y = test_x[:n], test_y[:n]
    target = (y + 1 + np.random.default_rng(args.seed).integers(0, 9, n)) % 10  # any class but the digit's own
    rows, strip = {}, [x[:1]]
    for strength in args.strengths:
        out = _batches(lambda s: img2img(run.model, make_scheduler("ddim", run.info.scheduler_config), x[s], strength,
                                         num_inference_steps=args.steps, class_labels=target[s],
                                         guidance_scale=args.cfg, null_class=run.info.null_class,
                                         generator=[args.seed, s.start]).samples, n, args.batch)
        acc = conditional_accuracy(np.clip(out, -1, 1), target)
        dist = float(np.abs(np.clip(out, -1, 1) - x).mean())
        rows[f"{strength:g}"] = {"accuracy_target": acc, "mean_abs_distance": dist}
        strip.append(np.clip(out[:1], -1, 1))
        print(f"SDEdit strength {strength:.2f}: target-class accuracy {acc:.3f}, mean |x - x0| {dist:.3f}")
    if args.pictures:
        nd_io.save_image_strip(os.path.join(IMAGES, "editing_sdedit_strengths.png"), np.concatenate(strip), scale=4)
    return {"sdedit": rows, "sdedit_n": n, "sdedit_guidance_scale": args.cfg,
            "sdedit_strip": f"test digit {int(y[0])} -> class {int(target[0])}, strengths {args.strengths}"}


def part_guidance(run, args, classifier):
    n = args.n_guidance
    labels = np.arange(n) % 10
    uncond = _unconditional(run, args)
    table, strip = {"classifier" + ("_uncond_run" if args.uncond_run else ""): {}, "cfg": {}}, []
    for scale in args.classifier_scales:
        out = _batches(lambda s: classifier_guided_sample(uncond, classifier, make_scheduler("ddim", run.info.scheduler_config),
                                                          labels[s], scale, shape=(s.stop - s.start, 1, 16, 16),
                                                          num_inference_steps=args.steps,
                                                          generator=[args.seed, s.start]).samples, n, args.batch)
        rep = digits_report(np.clip(out, -1, 1), labels)
        table["classifier" + ("_uncond_run" if args.uncond_run else "")][f"{scale:g}"] = {"accuracy": rep["conditional_accuracy"], "fd_ratio": rep["fd_ratio"]}
        strip.append(np.clip(out[:10], -1, 1))
        print(f"classifier guidance s={scale:<5g}: accuracy {rep['conditional_accuracy']:.3f}, "
              f"Fréchet ratio {rep['fd_ratio']:.2f}")
    for scale in args.cfg_scales:
        out = _batches(lambda s: sample(run.model, make_scheduler("ddim", run.info.scheduler_config),
                                        (s.stop - s.start, 1, 16, 16), class_labels=labels[s], guidance_scale=scale,
                                        null_class=run.info.null_class, num_inference_steps=args.steps,
                                        generator=[args.seed, s.start]).samples, n, args.batch)
        rep = digits_report(np.clip(out, -1, 1), labels)
        table["cfg"][f"{scale:g}"] = {"accuracy": rep["conditional_accuracy"], "fd_ratio": rep["fd_ratio"]}
        print(f"classifier-free guidance s={scale:<5g}: accuracy {rep['conditional_accuracy']:.3f}, "
              f"Fréchet ratio {rep['fd_ratio']:.2f}")
    if args.pictures:
        nd_io.save_image_grid(os.path.join(IMAGES, "editing_classifier_guidance.png"), np.concatenate(strip),
                              nrow=10, scale=3)
    return {"guidance": table, "guidance_n": n, "guidance_steps": args.steps}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default=None, help="class-conditional digits run folder (may be left out for the "
                   "inpaint and guidance parts with --uncond-run; guidance then has no classifier-free rows)")
    p.add_argument("--classifier", default=None, help="classifier run folder (for the guidance part)")
    p.add_argument("--uncond-run", default=None, help="an unconditional run (`npdiff train --unconditional`) for "
                   "inpainting and classifier guidance (default: the --run model's null class)")
    p.add_argument("--parts", nargs="+", default=["inversion", "inpaint", "sdedit", "guidance"])
    p.add_argument("--n", type=int, default=359, help="test digits per measurement (the test split has 359)")
    p.add_argument("--first", type=int, default=0, help="inpainting: index of the first test digit (a validation "
                   "subset is --first 0 --n 120, the held-out rest --first 120)")
    p.add_argument("--n-inversion", type=int, default=100, help="test digits of the inversion round trip")
    p.add_argument("--n-guidance", type=int, default=200, help="samples per guidance scale")
    p.add_argument("--steps", type=int, default=25, help="DDIM steps (inversion always uses 50)")
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--cfg", type=float, default=2.0, help="classifier-free guidance scale of SDEdit / edits")
    p.add_argument("--strengths", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8])
    p.add_argument("--classifier-scales", type=float, nargs="+", default=[0.0, 1.0, 3.0, 10.0])
    p.add_argument("--cfg-scales", type=float, nargs="*", default=[1.0, 2.0, 3.0])
    p.add_argument("--inpaint-scheduler", choices=("ddim", "ddpm"), default="ddim")
    p.add_argument("--validation", type=int, default=120, help="inpainting: the first VALIDATION test digits "
                   "chose the settings (reconstruction guidance w, steps); accuracy on the rest is reported too")
    p.add_argument("--inpaint-steps", type=int, default=None, help="inpainting steps (default: --steps)")
    p.add_argument("--reconstruction-guidance", type=float, nargs="+", default=[0.0],
                   help="inpainting: weights w of reconstruction guidance, each run with RePaint off and on")
    p.add_argument("--no-pictures", dest="pictures", action="store_false", help="leave docs/images alone")
    p.add_argument("--jump-length", type=int, default=5)
    p.add_argument("--jump-n-sample", type=int, default=3)
    p.add_argument("--keep", nargs="+", choices=("left", "right"), default=["left", "right"],
                   help="inpainting: which half is kept")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/editing_quality.json")
    args = p.parse_args(argv)
    if args.run is None:
        if args.uncond_run is None or not set(args.parts) <= {"inpaint", "guidance"}:
            raise SystemExit("--run is needed, except for the parts inpaint and guidance with --uncond-run")
        args.cfg_scales = []
    run = load_run(args.run or args.uncond_run)
    if args.run is not None and (run.info.null_class is None or run.info.sample_shape != (1, 16, 16)):
        raise SystemExit("--run must be a class-conditional 16x16 digits run (the default `npdiff train`)")
    test_x, test_y = load_digits(16, "test")
    results = nd_io.load_json(args.out) if os.path.isfile(args.out) else {}
    results.update({"run": args.run, "run_step": run.step, "steps": args.steps, "uncond_run": args.uncond_run})
    os.makedirs(IMAGES, exist_ok=True)
    for part in args.parts:
        t0 = time.perf_counter()
        if part == "guidance":
            if args.classifier is None:
                raise SystemExit("the guidance part needs --classifier")
            results.update(part_guidance(run, args, load_classifier(args.classifier)))
        else:
            results.update(globals()[f"part_{part}"](run, args, test_x, test_y))
        results[f"{part}_seconds"] = round(time.perf_counter() - t0, 1)
        nd_io.save_json(args.out, results)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
