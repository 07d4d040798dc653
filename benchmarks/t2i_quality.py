"""Quality of the shapes latent U-Net against training steps (the ablations of docs/text_to_image.md).

Trains the ``unet`` stage of ``shapes_stack_configs`` on an existing stack's frozen
``vae/`` and ``clip/`` (with ``--set key=value`` overrides of its TrainConfig) and, at
each ``--eval-at`` step, scores the EMA U-Net with ``t2i_report`` (held-out seen and
unseen prompts, the fixed attribute classifier) at the ``--guidance`` scales. One JSON
line per evaluation goes to ``OUT/quality.jsonl``; the run folder is a normal
resumable run (``npdiff eval --run OUT`` works on it).

The cosine LR schedule spans ``--steps``: the score at an earlier step is that of a run
still at high LR, not of a shorter run (which would have decayed by then).

    python benchmarks/t2i_quality.py --stack /work/runs/t2i-c --out /work/runs/t2i-c/abl-base \\
        --steps 1200 --eval-at 300,600,1200 --set lr=2e-3

``npdiff eval --run OUT`` gives the full guidance table of the finished run.
``--score RUN`` scores an existing run (a stack or U-Net run folder) at --n / --guidance
without training or writing into RUN (the row goes to OUT/quality.jsonl): the same held-out
prompts and initial latents, so two runs' rows compare pairwise.

Each colour accuracy is printed with its standard error √(p(1 − p)/m) over the m objects the
n prompts name (≈ 1.5 n): ±4 points at n = 64, ±2.6 at n = 128 around 85 %.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_value(text: str):
    """A --set value: JSON when it parses (numbers, lists, null, true), else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv=None) -> int:
    from npdiff.training.latent_trainer import LatentTrainer
    from npdiff.training.stack import shapes_stack_configs
    from npdiff.training.t2i_eval import t2i_report

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stack", default=None, help="a stack folder holding trained vae/ and clip/ (required to train)")
    p.add_argument("--out", required=True, help="the new U-Net run folder")
    p.add_argument("--steps", type=int, default=None, help="training steps (required to train)")
    p.add_argument("--eval-at", default="", help="comma-separated steps to score (e.g. 300,600,1200)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (to --steps, which may "
                   "differ from its own: the cosine schedule then spans the new total)")
    p.add_argument("--guidance", default="2,4", help="comma-separated guidance scales")
    p.add_argument("--n", type=int, default=64, help="held-out prompts per split")
    p.add_argument("--sample-steps", type=int, default=20, help="DDIM steps at evaluation")
    p.add_argument("--raw", action="store_true", help="also score the raw (non-EMA) weights at each mark "
                   "(rows with \"weights\": \"raw\"): does the EMA lag on a short run?")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="TrainConfig override")
    p.add_argument("--score", default=None, metavar="RUN", help="only score this finished run (read-only)")
    args = p.parse_args(argv)
    scales = tuple(float(s) for s in args.guidance.split(","))
    if args.score:
        from npdiff.pipelines import StableDiffusionPipeline
        from npdiff.training.stack import find_pipeline

        folder = find_pipeline(args.score)
        if folder is None:
            p.error(f"--score: {args.score!r} holds no pipeline/ (a stack or latent U-Net run folder)")
        t0 = time.perf_counter()
        report = t2i_report(StableDiffusionPipeline.from_pretrained(folder), n=args.n, guidance_scales=scales,
                            steps=args.sample_steps)
        report.pop("images")
        _log_rows(os.path.join(args.out, "quality.jsonl"), report, {"scored": os.path.abspath(args.score),
                  "eval_seconds": round(time.perf_counter() - t0, 1)}, args.n)
        return 0
    if args.stack is None or args.steps is None:
        p.error("training needs --stack and --steps (or --score RUN to score a finished run)")

    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--set wants KEY=VALUE, got {item!r}")
        overrides[key] = parse_value(value)
    config = shapes_stack_configs(args.stack)["unet"].replace(steps=args.steps, **overrides)
    if "block_out_channels" in overrides:
        config = config.replace(block_out_channels=tuple(overrides["block_out_channels"]))
    marks = sorted({int(s) for s in args.eval_at.split(",") if s})
    if args.resume:
        if overrides:
            p.error("--resume continues the run's own config: drop --set")
        trainer = LatentTrainer.resume(args.out, steps=args.steps, progress=False)
    else:
        trainer = LatentTrainer(config, args.out, progress=False)
    log = os.path.join(args.out, "quality.jsonl")
    t_train = 0.0
    # each mark once (the final step was scored twice when it was also a mark)
    for mark in sorted({m for m in marks if m > trainer.step} | {args.steps}):
        t0 = time.perf_counter()
        trainer.train(stop_after=mark - trainer.step)
        t_train += time.perf_counter() - t0
        if mark not in marks:
            break
        for weights in ("ema", "raw") if args.raw else ("ema",):
            t0 = time.perf_counter()
            model = trainer.ema_model() if weights == "ema" else trainer.model.eval()
            report = t2i_report(trainer.pipeline(model), n=args.n, guidance_scales=scales, steps=args.sample_steps)
            trainer.model.train()
            report.pop("images")
            _log_rows(log, report, {"step": trainer.step, "weights": weights, "train_seconds": round(t_train, 1),
                                    "eval_seconds": round(time.perf_counter() - t0, 1), "overrides": overrides}, args.n)
    return 0


def colour_se(p: float, n: int) -> float:
    """Standard error of a per-object accuracy p over the objects of the first n seen prompts."""
    from npdiff.data import make_shapes

    m = int((make_shapes(None, "test").attributes[:n, :, 0] >= 0).sum())
    return (p * (1 - p) / m) ** 0.5


def _log_rows(log: str, report: dict, row: dict, n: int) -> None:
    """Print one line per guidance scale and append the row (every scale's accuracies) to ``log``."""
    from npdiff import io as nd_io

    label = f"step {row['step']:5d} {row['weights']}" if "step" in row else "scored"
    for s, r in report["guidance"].items():
        row[f"g{s}"] = {split: {k: round(v, 3) for k, v in r[split].items() if k != "n_samples"}
                        for split in ("seen", "unseen")} | {"fd_ratio": round(r["fd_ratio"], 3)}
        seen, unseen = r["seen"], r["unseen"]
        se = colour_se(seen["colour_accuracy"], n)
        row[f"g{s}"]["seen"]["colour_se"] = round(se, 3)
        print(f"{label} g {s:>4}: seen all {seen['all_correct']:.1%}  shape {seen['shape_accuracy']:.1%} colour "
              f"{seen['colour_accuracy']:.1%} ± {se:.1%} size {seen['size_accuracy']:.1%} position "
              f"{seen['position_accuracy']:.1%} | unseen all {unseen['all_correct']:.1%} | FD ratio "
              f"{r['fd_ratio']:.2f}", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(log)), exist_ok=True)
    nd_io.append_jsonl(log, row)


if __name__ == "__main__":
    sys.exit(main())
