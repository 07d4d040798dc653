"""Helpers of the ``npdiff train --device cuda`` tests: run a trainer on either device through the
CLI, record what each device step did (host transfers, kernel columns), and compare a device
checkpoint after one AdamW step with the CPU run's."""

import contextlib
import json
import os

import numpy as np

from npdiff import backend, cli
from npdiff.training import BaseTrainer, TrainConfig, load_checkpoint
from npdiff.training.checkpoint import CHECKPOINT_NAME
from npdiff.training.run import load_run, trainer_class
from tests.kernels.harness import close
from tests.models.test_unet_2d_reference_kernels import _record_columns

BETA1, EPS = 0.9, 1e-8  # AdamW's β₁ and ε (TrainConfig's defaults)


# one optimisation step of a tiny model (4×4 digits, 2 channels, batch 1), no grids or checkpoints on the way
ONE_TINY_STEP_LR = 2e-3
ONE_TINY_STEP = ["--image-size", "4", "--channels", "2", "--norm-groups", "2", "--batch-size", "1", "--steps", "1",
                 "--warmup-steps", "1", "--lr", str(ONE_TINY_STEP_LR), "--log-every", "1", "--sample-every", "1000",
                 "--checkpoint-every", "1000", "--seed", "0", "--quiet"]


def train(out, flags, device, resume=False):
    """``npdiff train FLAGS --device DEVICE --output OUT`` (or ``--resume OUT``); ``flags`` may also be a
    ``TrainConfig`` (for settings the CLI does not take), trained by its trainer. The checkpoint it leaves."""
    if isinstance(flags, TrainConfig):
        config = flags.replace(device=device)
        trainer_class(config)(config, str(out), progress=False).train()
    else:
        args = ["train", "--resume", str(out), "--quiet"] if resume else \
            ["train", *flags, "--device", device, "--output", str(out)]
        assert cli.main(args) == 0
    return load_checkpoint(os.path.join(out, CHECKPOINT_NAME))


@contextlib.contextmanager
def recorded(trainer_cls):
    """Within: every ``trainer_cls.train_step`` appends to ``rec["steps"]`` its host transfers and to
    ``rec["columns"]`` the kernel columns it ran on; ``rec["reads"]`` gets (steps read, reads made) of
    each read of the pending losses."""
    rec = {"steps": [], "columns": [], "reads": []}
    train_step, read_pending = trainer_cls.train_step, BaseTrainer._read_pending

    def counted_step(self, *args):
        backend.reset_transfers()
        mark = len(calls)
        record = train_step(self, *args)
        rec["steps"].append(backend.transfers())
        rec["columns"].append({column for _, column in calls[mark:]})
        return record

    def counted_read(self):
        pending, before = len(getattr(self, "_pending", ())), backend.transfers()["reads"]
        read_pending(self)
        if pending:
            rec["reads"].append((pending, backend.transfers()["reads"] - before))

    calls, undo = _record_columns()  # (op, column) of every kernel call
    try:
        import pytest

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(trainer_cls, "train_step", counted_step)
            mp.setattr(BaseTrainer, "_read_pending", counted_read)
            yield rec
    finally:
        undo()


def assert_first_steps_agree(cpu, gpu, run_dirs, lr, terms, log_keys=("loss",)):
    """The step-1 checkpoints ``cpu`` and ``gpu`` (of the runs in ``run_dirs`` = (cpu dir, device dir))
    agree as one AdamW step of float32 kernels allows, ``terms`` being the longest chain of sums:

    - the same RNG states (the same draws on either device);
    - AdamW's first moment (1 − β₁)·g gives the clipped gradients: within 16·terms·ε₃₂·max(1, max|g|);
    - the first step moves θ by lr·g/(|g| + ε), so a gradient error δ moves it by at most
      lr·min(2, δ/(|g| + ε)) (across a sign change too), plus θ's own float32 rounding; the EMA is a
      convex mix of θ₀ and θ₁, so the same bound;
    - the logged ``log_keys`` within the kernel bound."""
    eps32 = np.finfo(np.float32).eps
    assert cpu.step == gpu.step == 1
    for key in ("trainer_rng", "loader", "global_rng"):
        assert gpu.meta[key] == cpu.meta[key], key
    g = {k: v / (1 - BETA1) for k, v in cpu.optimizer["state"].items() if k.endswith("exp_avg")}
    for k, want in g.items():
        close(gpu.optimizer["state"][k] / (1 - BETA1), want, np.float32, terms, k)
    names = [n for n, p in load_run(run_dirs[0]).model.named_parameters()]  # AdamW's order
    assert len(names) == len(g)
    for i, name in enumerate(names):
        grad = g[f"{i}.exp_avg"]
        delta = 16 * terms * eps32 * max(1.0, float(np.abs(grad).max()))
        tol = lr * np.minimum(2.0, delta / (np.abs(grad) + EPS)) + 4 * eps32 * np.abs(cpu.model[name])
        assert np.all(np.abs(gpu.model[name] - cpu.model[name]) <= tol), name
        assert np.all(np.abs(gpu.ema[name] - cpu.ema[name]) <= tol), name
    logs = [json.loads(open(os.path.join(d, "log.jsonl")).readline()) for d in run_dirs]
    for key in log_keys:
        assert abs(logs[1][key] - logs[0][key]) <= 16 * terms * eps32 * max(1.0, abs(logs[0][key])), key
