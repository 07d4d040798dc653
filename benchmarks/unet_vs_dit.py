"""The default digits UNet against a DiT at equal wall time: what each costs, measured in one run.

    python benchmarks/unet_vs_dit.py [--rounds 5 --steps 8] [--dit-width 96 --dit-blocks 3] [--json out.json]

"Equal wall time" on a shared machine cannot be two separate trainings' clocks (the load
changes between them). This script times both models' real training steps in ONE process,
alternating (UNet k steps, DiT k steps, UNet k steps, …), so both see the same load; the
DiT's step budget is then

    N_DiT = 2,000 · t_UNet / t_DiT          (2,000 = the default run's steps)

and ``npdiff train --model dit --steps N_DiT`` trains the DiT for the UNet run's training time.

Per model it prints:
  parameters         trainable parameters
  step ms            median wall time of one training step of the real trainer (``Trainer.train_step``:
                     batch 32, q_sample, forward, v-loss, backward, grad clipping, AdamW, LR step, EMA)
  GFLOP/step         forward + backward of one training step (batch 32), and per image; counted by
                     ``torch.utils.flop_counter.FlopCounterMode`` on diffusers' twin of the same config
                     (matrix products, convolutions and attention: 2 FLOPs per multiply-add; norms and
                     elementwise ops are not counted, as is usual)
  sample img/s       ``npdiff eval``'s sampling: a batch of 100 (10 per class), DDIM 50 steps, guidance 2
                     (two network evaluations per step), wall time of the whole batch
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

DEFAULT_STEPS = 2000  # the default `npdiff train` run


def trainer_configs(dit_width: int, dit_blocks: int, dit_lr: float, unet_channels=None):
    """(name, TrainConfig) of the default UNet run (or one with other channels) and of the DiT run
    compared with it."""
    from npdiff.training import TrainConfig

    unet = TrainConfig() if unet_channels is None else TrainConfig(block_out_channels=unet_channels,
                                                                   norm_num_groups=min(8, *unet_channels))
    return [("UNet2DModel", unet),
            ("DiTTransformer2DModel", TrainConfig(model="dit", hidden_dim=dit_width, num_blocks=dit_blocks, lr=dit_lr))]


def training_flops(info, batch: int) -> tuple[float, float]:
    """(FLOPs of one training step's forward + backward, FLOPs of one forward) at ``batch``, counted
    by torch's FlopCounterMode on diffusers' model of the same config; NaN without the oracle."""
    try:
        import diffusers
        import torch
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:
        return float("nan"), float("nan")
    torch.manual_seed(0)
    model = getattr(diffusers, info.model_class)(**info.model_config)
    c, h, w = info.sample_shape
    x = torch.randn(batch, c, h, w)
    t = torch.randint(0, 1000, (batch,))
    y = torch.arange(batch) % max(info.num_classes, 1)
    # the counter has no formula for torch's fused CPU attention kernel (it counts 0); the math
    # backend computes the same attention as two batched products (QKᵀ, then ·V), which it counts
    with sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as counter:
            with torch.no_grad():
                model(x, t, class_labels=y)
        forward = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            loss = torch.nn.functional.mse_loss(model(x, t, class_labels=y).sample, x)
            loss.backward()
    return float(counter.get_total_flops()), float(forward)


def time_sampling(trainer, n: int = 100, steps: int = 50, guidance: float = 2.0) -> float:
    """Wall seconds of ``npdiff eval``'s sampling of one batch of n (n / 10 per class)."""
    from npdiff.pipelines import sample
    from npdiff.training import make_scheduler

    info = trainer.info
    scheduler = make_scheduler("ddim", info.scheduler_config)
    labels = np.arange(n) % info.num_classes
    t0 = time.perf_counter()
    sample(trainer.model, scheduler, (n, *info.sample_shape), class_labels=labels, guidance_scale=guidance,
           null_class=info.null_class, generator=0, num_inference_steps=steps)
    return time.perf_counter() - t0


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    ap.add_argument("--steps", type=int, default=8, help="training steps per model per round (default 8)")
    ap.add_argument("--sample-rounds", type=int, default=2, help="alternating rounds of sampling (default 2; 0: skip)")
    ap.add_argument("--sample-steps", type=int, default=50, help="DDIM steps of the timed sampling (default 50, "
                    "as npdiff eval)")
    ap.add_argument("--dit-width", type=int, default=96, help="DiT token width (default 96: 3 heads of 32)")
    ap.add_argument("--dit-blocks", type=int, default=3, help="DiT transformer blocks (default 3)")
    ap.add_argument("--dit-lr", type=float, default=1e-3, help="the DiT run's peak learning rate (default 1e-3)")
    ap.add_argument("--unet-channels", default=None, help="UNet channels per level, e.g. 8,16 (default: the "
                    "default run's 32,64)")
    ap.add_argument("--threads", type=int, default=2, help="Numba threads (default 2)")
    ap.add_argument("--json", metavar="PATH", help="write the records to PATH")
    args = ap.parse_args(argv)

    import numba

    from npdiff.training import trainer_class

    numba.set_num_threads(args.threads)
    machine = harness.describe_machine(args.threads)
    load_before = os.getloadavg()[0]
    models = []
    with tempfile.TemporaryDirectory() as tmp:  # the trainers write nothing until train(); the folder stays empty
        channels = None if args.unet_channels is None else tuple(int(c) for c in args.unet_channels.split(","))
        for name, config in trainer_configs(args.dit_width, args.dit_blocks, args.dit_lr, channels):
            trainer = trainer_class(config)(config, os.path.join(tmp, name), progress=False)
            batches = trainer.loader.infinite()
            for _ in range(2):  # warm-up: JIT compile, first-touch allocations
                trainer.train_step(*next(batches))
            models.append(dict(name=name, config=config, trainer=trainer, batches=batches, times=[], sample_s=[]))
        for _ in range(args.rounds):  # A B A B: both models see the same load
            for m in models:
                for _ in range(args.steps):
                    x0, y = next(m["batches"])
                    t0 = time.perf_counter()
                    m["trainer"].train_step(x0, y)
                    m["times"].append(time.perf_counter() - t0)
        for _ in range(args.sample_rounds):
            for m in models:
                m["sample_s"].append(time_sampling(m["trainer"], steps=args.sample_steps))
    load_after = os.getloadavg()[0]

    records = []
    for m in models:
        trainer, config = m["trainer"], m["config"]
        step_s = statistics.median(m["times"])
        train_flops, forward_flops = training_flops(trainer.info, config.batch_size)
        sample_s = statistics.median(m["sample_s"]) if m["sample_s"] else float("nan")
        records.append(dict(
            model=m["name"], model_config=trainer.info.model_config, lr=config.lr,
            parameters=int(sum(p.data.size for p in trainer.model.parameters())), batch=config.batch_size,
            step_ms=step_s * 1e3, train_gflop_per_step=train_flops / 1e9,
            train_gflop_per_image=train_flops / config.batch_size / 1e9,
            forward_gflop_per_image=forward_flops / config.batch_size / 1e9,
            train_gflops_achieved=train_flops / step_s / 1e9, sample_images_per_s=100 / sample_s,
            load_average=[load_before, load_after], machine=machine))
    unet, dit = records
    dit["equal_time_steps"] = round(DEFAULT_STEPS * unet["step_ms"] / dit["step_ms"])
    unet["equal_time_steps"] = DEFAULT_STEPS

    print(f"load average {load_before:.2f} before, {load_after:.2f} after; {args.rounds} rounds × {args.steps} "
          f"training steps per model, alternating; sampling: 100 images, DDIM {args.sample_steps}, guidance 2")
    print(f"{'model':<22} {'params':>9} {'step ms':>8} {'GFLOP/step':>11} {'GFLOP/img':>10} {'GFLOP/s':>8} "
          f"{'sample img/s':>13} {'steps in 2,000 UNet steps':>26}")
    for r in records:
        print(f"{r['model']:<22} {r['parameters']:>9,} {r['step_ms']:>8.1f} {r['train_gflop_per_step']:>11.2f} "
              f"{r['train_gflop_per_image']:>10.3f} {r['train_gflops_achieved']:>8.1f} {r['sample_images_per_s']:>13.1f} "
              f"{r['equal_time_steps']:>26,}")
    print(f"equal wall time: npdiff train --model dit --hidden-dim {args.dit_width} --num-blocks {args.dit_blocks} "
          f"--lr {args.dit_lr:g} --steps {dit['equal_time_steps']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
        print(f"wrote {args.json}")
    return records


if __name__ == "__main__":
    main()
