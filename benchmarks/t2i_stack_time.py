"""Step times of the default `npdiff train --data shapes` stages, and the stack's wall time they project.

For each stage of ``shapes_stack_configs`` (VAE, CLIP, latent U-Net) this builds the trainer
as the stack does (the U-Net on an existing stack's ``vae/`` and ``clip/``), runs a few
warm-up steps (Numba compiles on first use), then times ``--steps`` more with the wall clock
and with ``time.process_time`` (CPU seconds of every thread of the process). On a loaded
machine the wall time per step is inflated by the other processes while the CPU time is
much less so, hence both are printed next to the load average; the projection is

    stack ≈ Σ_stages (setup + steps × seconds per step)

once with the wall time per step and once with min(wall, CPU) per step (the quiet-machine
estimate: a quiet step is at most its CPU time when the kernels use one core, and less
when they use two). Sample grids, checkpoints and the final exports are not included
(a few seconds each; the real stack's ``stack.json`` has the measured totals).

    python benchmarks/t2i_stack_time.py --stack /work/runs/t2i-d [--steps 10] [--only unet]
    python benchmarks/t2i_stack_time.py --stack /work/runs/t2i-d --profile    # where a U-Net step goes

``--profile`` times every autograd Function's forward and backward during the default
U-Net stage's ``train_step`` (benchmarks/harness.py: ``profile_ops``; the batch, the cached
latents and text states, the loss, AdamW and the EMA included, no checkpoints).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def time_stage(config, folder: str, steps: int, warmup: int) -> dict:
    """{"setup", "wall", "cpu"}: the trainer's construction seconds and the seconds per step, read
    between the first and the last timed step's callback (so the checkpoint and loss plot that
    ``train`` writes when it returns are not counted)."""
    from npdiff.training.run import trainer_class

    config = config.replace(sample_every=10**9, checkpoint_every=10**9, log_every=10**9,
                            steps=max(config.steps, warmup + steps + 1))
    t0 = time.perf_counter()
    trainer = trainer_class(config)(config, folder, progress=False)
    setup = time.perf_counter() - t0
    trainer.train(stop_after=warmup)
    marks = []
    trainer.train(stop_after=steps + 1, callback=lambda tr, rec: marks.append((time.perf_counter(), time.process_time())))
    (w0, c0), (w1, c1) = marks[0], marks[-1]
    return {"setup": setup, "wall": (w1 - w0) / steps, "cpu": (c1 - c0) / steps}


def profile(config, steps: int) -> int:
    """Print ``profile_ops``'s table for ``steps`` calls of the latent trainer's ``train_step``."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import harness
    import numba

    from npdiff.training.run import trainer_class

    with tempfile.TemporaryDirectory() as tmp:
        trainer = trainer_class(config)(config, os.path.join(tmp, "unet"), progress=False)
        batches = trainer.loader.infinite()
        harness.profile_ops(lambda: trainer.train_step(*next(batches)),
                            f"default U-Net stage, one train_step (batch {config.batch_size})", steps=steps,
                            threads=numba.config.NUMBA_NUM_THREADS)
    return 0


def main(argv=None) -> int:
    from npdiff.training.stack import STAGES, shapes_stack_configs

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stack", required=True, help="a stack folder holding trained vae/ and clip/ (for the U-Net)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per stage")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--only", choices=STAGES, action="append", help="time only these stages")
    p.add_argument("--profile", action="store_true", help="per-op profile of the U-Net stage's train_step")
    args = p.parse_args(argv)
    if args.profile:
        return profile(shapes_stack_configs(args.stack)["unet"], args.steps)

    configs = shapes_stack_configs(args.stack)
    total_wall = total_quiet = 0.0
    print(f"load average at start {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or STAGES:
            folder = os.path.join(tmp, name)
            r = time_stage(configs[name], folder, args.steps, args.warmup)
            shutil.rmtree(folder, ignore_errors=True)
            n = configs[name].steps
            wall, quiet = r["setup"] + n * r["wall"], r["setup"] + n * min(r["wall"], r["cpu"])
            total_wall, total_quiet = total_wall + wall, total_quiet + quiet
            print(f"{name:5s} {n:5d} steps × batch {configs[name].batch_size:3d}: setup {r['setup']:5.1f} s, "
                  f"{r['wall']:.3f} s/step wall, {r['cpu']:.3f} s/step CPU -> {wall / 60:5.1f} min as measured, "
                  f"{quiet / 60:5.1f} min quiet estimate (load average {os.getloadavg()[0]:.2f})", flush=True)
    print(f"stack: {total_wall / 60:.1f} min as measured, {total_quiet / 60:.1f} min quiet estimate", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
