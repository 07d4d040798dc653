"""Sample quality against network evaluations: every sampler at every NFE, on a trained digits run.

    python benchmarks/samplers.py [--run DIR] [--n 50] [--guidance-scale 2] [--seed 0]
                                  [--out JSON] [--resume] [--only SAMPLER[:NFE,NFE...] ...]
    npdiff bench samplers [the same arguments]

The study of the DDIM paper's Table 1 (Song et al. 2021) and DPM-Solver++'s figures
(Lu et al. 2022b) replayed on our own model: for each sampler of ``SAMPLERS`` and each
target NFE of ``NFES``, draw ``--n`` class-conditional samples (labels 0, 1, …, 9, 0, …)
and score them with the fixed digits classifier exactly as ``npdiff eval`` does
(``npdiff.metrics.digits_report``):

  fd_ratio               Fréchet distance of the samples' classifier features to the real
                         test split, over the same distance for as many real training
                         images (the floor at the SAME sample count: the distance is biased
                         upwards by ~1/n, so a ratio against a floor of another n would mix
                         that bias into the comparison; the floor is the mean over 50 fixed
                         training subsets, docs/quality.md — docs/samplers.md's table used
                         one subset drawn with the seed).
  conditional_accuracy   fraction the classifier assigns to the asked-for label.
  seconds                wall time of the sampling loop (not of the metrics).

NFE accounting. NFE = network evaluations, COUNTED by wrapping the model
(``CountingModel``), not derived from the step count. One evaluation is one call of the
network; a guided step asks for the conditional and the unconditional output in ONE
batched call of 2B rows (npdiff.pipelines.sampling), which counts as one NFE, the usual
accounting of the papers and of diffusers. Every sampler is counted the same way. The
step count is chosen so that the counted NFE equals the target, or is the closest to it
(ties go to the smaller count): Heun evaluates twice per interval except on the last,
which ends at σ = 0 and is a plain Euler step (Karras et al. 2022, Alg. 1), so n steps
cost 2n − 1 evaluations and the even targets get 2n − 1 = target − 1.

Common random numbers: every cell starts from the same seed, so every sampler gets the
same initial noise x_T (scaled by its ``init_noise_sigma``) and the same labels, and the
stochastic samplers draw their step noise from the same stream after it. Differences
between cells are then differences of the samplers, not of the draws.

The JSON (``--out``) is rewritten after every cell, so a crash keeps the finished cells;
``--resume`` skips the cells already in it (its run, step, EMA choice, n, guidance and seed
must match) and ``--only`` runs a subset. Each invocation is logged in the JSON, so a table
can be traced to the invocations that made it. The Markdown tables (``<out>.md``) and the plot (``--plot``) are
written from the JSON after every cell. This is a quality measurement; speed is measured
by the other scripts here.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass, field

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from npdiff import io as nd_io  # noqa: E402
from npdiff.metrics import digits_report  # noqa: E402
from npdiff.pipelines import sample  # noqa: E402
from npdiff.training import make_scheduler  # noqa: E402

DEFAULT_RUN = os.path.join("runs", "digits")  # where the README's default run is told to write
NFES = (5, 10, 20, 50, 100, 250, 1000)


@dataclass(frozen=True)
class Sampler:
    """One row of the study: an npdiff scheduler (``SCHEDULERS`` short name), the config keys
    it overrides in the run's scheduler config, and the keyword arguments of its ``step``."""

    scheduler: str
    config: dict = field(default_factory=dict)
    step_kwargs: dict = field(default_factory=dict)
    label: str = ""


SAMPLERS = {
    "ddpm": Sampler("ddpm", label="DDPM (ancestral)"),
    "ddim-eta0": Sampler("ddim", step_kwargs={"eta": 0.0}, label="DDIM η = 0"),
    "ddim-eta0.5": Sampler("ddim", step_kwargs={"eta": 0.5}, label="DDIM η = 0.5"),
    "ddim-eta1": Sampler("ddim", step_kwargs={"eta": 1.0}, label="DDIM η = 1"),
    "euler": Sampler("euler", label="Euler"),
    "euler-a": Sampler("euler_a", label="Euler ancestral"),
    "heun": Sampler("heun", label="Heun (2nd order)"),
    "dpm++2m": Sampler("dpm++", label="DPM-Solver++ 2M"),
    "dpm++2m-sde": Sampler("dpm++", config={"algorithm_type": "sde-dpmsolver++"}, label="DPM-Solver++ 2M SDE"),
}

#: Variants outside the default grid, for ``--only`` (e.g. the σ spacing Karras et al. pair Heun with).
EXTRA_SAMPLERS = {
    "heun-karras": Sampler("heun", config={"use_karras_sigmas": True}, label="Heun, Karras σ (ρ = 7)"),
}
KNOWN_SAMPLERS = {**SAMPLERS, **EXTRA_SAMPLERS}


class CountingModel:
    """``model`` with a call counter: each call is one network evaluation, whatever its batch holds."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.model(*args, **kwargs)

    @property
    def training(self) -> bool:
        return bool(getattr(self.model, "training", False))

    def eval(self):
        if hasattr(self.model, "eval"):
            self.model.eval()
        return self

    def train(self, mode: bool = True):
        if hasattr(self.model, "train"):
            self.model.train(mode)
        return self


def build_scheduler(spec: Sampler, scheduler_config: dict):
    """The scheduler of ``spec`` from the run's scheduler config."""
    return make_scheduler(spec.scheduler, {**scheduler_config, **spec.config})


def evaluations(spec: Sampler, scheduler_config: dict, steps: int) -> int:
    """Model calls of a sampling loop with ``steps`` inference steps: one per listed timestep."""
    scheduler = build_scheduler(spec, scheduler_config)
    scheduler.set_timesteps(int(steps))
    return len(scheduler.timesteps)


def steps_for_nfe(spec: Sampler, scheduler_config: dict, target: int) -> tuple[int, int]:
    """(steps, evaluations) whose evaluation count is closest to ``target`` (ties: the smaller count).

    The count grows with the steps (one per step, two for Heun's interior intervals), so a
    bisection finds the first step count reaching the target; it or the one below is closest.
    The DDPM-style schedulers cannot take more steps than ``num_train_timesteps``."""
    if target < 1:
        raise ValueError(f"target NFE must be >= 1, got {target}")
    hi = int(scheduler_config.get("num_train_timesteps", 1000))
    if evaluations(spec, scheduler_config, hi) < target:
        return hi, evaluations(spec, scheduler_config, hi)
    lo = 1
    while lo < hi:  # smallest steps with evaluations(steps) >= target
        mid = (lo + hi) // 2
        if evaluations(spec, scheduler_config, mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    best = (lo, evaluations(spec, scheduler_config, lo))
    if lo > 1:
        below = (lo - 1, evaluations(spec, scheduler_config, lo - 1))
        if target - below[1] <= best[1] - target:
            best = below
    return best


def run_cell(model, info, name: str, target: int, n: int, guidance_scale: float, seed: int) -> dict:
    """Sample ``n`` images with sampler ``name`` at ``target`` NFE and score them like ``npdiff eval``.

    ``model`` is called as ``model(x, t, class_labels=…)``; ``info`` is the run's RunInfo
    (scheduler_config, sample_shape, null_class, num_classes). One batch: the NFE per sample
    equals the counted calls."""
    spec = KNOWN_SAMPLERS[name]
    steps, expected = steps_for_nfe(spec, info.scheduler_config, target)
    conditional = info.null_class is not None
    labels = np.arange(n, dtype=np.int64) % info.num_classes if conditional else None
    counted = CountingModel(model)
    scheduler = build_scheduler(spec, info.scheduler_config)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    out = sample(counted, scheduler, (n, *info.sample_shape), class_labels=labels,
                 guidance_scale=guidance_scale if conditional else 1.0, null_class=info.null_class,
                 generator=np.random.default_rng(seed), num_inference_steps=steps,
                 scheduler_kwargs=spec.step_kwargs or None)
    seconds = time.perf_counter() - t0
    if counted.calls != expected:
        raise RuntimeError(f"{name}: {steps} steps were expected to evaluate the model {expected} times, "
                           f"it was called {counted.calls} times")
    report = digits_report(out.samples, labels, seed=seed)
    return {"sampler": name, "target_nfe": int(target), "steps": int(steps), "nfe": int(counted.calls),
            "fd_ratio": report["fd_ratio"], "fd": report["fd"], "fd_floor": report["fd_floor"],
            "conditional_accuracy": report["conditional_accuracy"],
            "predicted_class_counts": report["predicted_class_counts"],
            "seconds": round(seconds, 3), "load_average": round(load, 2)}


def parse_only(items, nfes=NFES) -> list[tuple[str, int]]:
    """The (sampler, target NFE) cells of ``--only`` items "SAMPLER" or "SAMPLER:NFE,NFE"; None: the
    grid of ``SAMPLERS``, column by column (every sampler at the smallest NFE first), so an interrupted
    run holds whole columns. ``--only`` also takes the ``EXTRA_SAMPLERS``."""
    if not items:
        return [(s, k) for k in nfes for s in SAMPLERS]
    cells = []
    for item in items:
        name, _, targets = item.partition(":")
        if name not in KNOWN_SAMPLERS:
            raise ValueError(f"--only {item!r}: unknown sampler {name!r}; expected one of {list(KNOWN_SAMPLERS)}")
        try:
            ks = [int(k) for k in targets.split(",")] if targets else list(nfes)
        except ValueError:
            raise ValueError(f"--only {item!r}: NFEs must be integers, e.g. {name}:10,20") from None
        if any(k < 1 for k in ks):
            raise ValueError(f"--only {item!r}: NFEs must be >= 1")
        cells += [(name, k) for k in ks if (name, k) not in cells]
    return cells


# ----------------------------------------------------------------------------
# the results file, its tables and its plot
# ----------------------------------------------------------------------------

def _key(cell: dict) -> tuple[str, int]:
    return cell["sampler"], cell["target_nfe"]


def format_tables(results: dict) -> str:
    """Markdown: three sampler × NFE tables (Fréchet ratio, conditional accuracy, seconds).

    A cell whose counted NFE differs from its column's target shows the count in brackets."""
    cells = {_key(c): c for c in results["cells"]}
    names = [s for s in KNOWN_SAMPLERS if any(k[0] == s for k in cells)]
    nfes = sorted({k[1] for k in cells})
    meta = results["meta"]
    lines = [f"Run `{meta['run']}` (step {meta['step']}), {meta['n']} samples per cell, guidance "
             f"{meta['guidance_scale']:g}, seed {meta['seed']}; NFE counted, one batched guided call = 1.", ""]

    def table(title, fmt):
        lines.append(f"**{title}**")
        lines.append("")
        lines.append("| sampler | " + " | ".join(f"NFE {k}" for k in nfes) + " |")
        lines.append("|---|" + "---|" * len(nfes))
        for s in names:
            row = []
            for k in nfes:
                c = cells.get((s, k))
                if c is None:
                    row.append("–")
                    continue
                text = fmt(c)
                row.append(text if c["nfe"] == k else f"{text} [{c['nfe']}]")
            lines.append(f"| {KNOWN_SAMPLERS[s].label} | " + " | ".join(row) + " |")
        lines.append("")

    table("Fréchet ratio (FD / floor at the same n; lower is better, 1 = real data)",
          lambda c: f"{c['fd_ratio']:.2f}")
    table("Conditional accuracy (%)", lambda c: "–" if c["conditional_accuracy"] is None
          else f"{100 * c['conditional_accuracy']:.0f}")
    table("Seconds (sampling only)", lambda c: f"{c['seconds']:.1f}")
    return "\n".join(lines)


def save_plot(results: dict, path: str) -> None:
    """Fréchet ratio against the counted NFE (log x), one line per sampler, and the floor (ratio 1)."""
    curves = {}
    for s in KNOWN_SAMPLERS:
        cs = sorted((c for c in results["cells"] if c["sampler"] == s), key=lambda c: c["nfe"])
        if cs:
            curves[KNOWN_SAMPLERS[s].label] = ([c["nfe"] for c in cs], [c["fd_ratio"] for c in cs])
    if not curves:
        return
    xs = [x for xy in curves.values() for x in xy[0]]
    curves["floor (real train vs test)"] = ([min(xs), max(xs)], [1.0, 1.0])
    meta = results["meta"]
    nd_io.save_curves(path, None, curves, xlabel="network evaluations (NFE, log scale)",
                      ylabel="Fréchet ratio (FD / floor)", logx=True, logy=True, figsize=(7.5, 5.0),
                      title=f"digits, {meta['n']} samples per point, guidance {meta['guidance_scale']:g}")


def _write(results: dict, out: str, plot: str | None) -> None:
    nd_io.save_json(out, results)
    nd_io.atomic_write(os.path.splitext(out)[0] + ".md", format_tables(results) + "\n")
    if plot:
        save_plot(results, plot)


def _open_results(out: str, resume: bool, meta: dict) -> dict:
    if not os.path.exists(out):
        return {"meta": meta, "invocations": [], "cells": []}
    if not resume:
        raise ValueError(f"{out} exists: pass --resume to add to it, or another --out")
    results = nd_io.load_json(out)
    for key in ("run", "step", "ema", "n", "guidance_scale", "seed"):
        if results["meta"].get(key) != meta.get(key):
            raise ValueError(f"--resume: {out} was made with {key}={results['meta'].get(key)!r}, "
                             f"this invocation has {meta[key]!r}")
    return results


def study(model, info, cells, out: str, n: int, guidance_scale: float, seed: int, meta: dict,
          resume: bool = False, plot: str | None = None, say=print) -> dict:
    """Run ``cells`` [(sampler, target NFE)], writing ``out`` (JSON), ``<out>.md`` and ``plot`` after each."""
    results = _open_results(out, resume, meta)
    done = {_key(c) for c in results["cells"]}
    todo = [c for c in cells if c not in done]
    invocation = {"argv": meta.get("argv"), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                  "cells": [list(c) for c in todo], "finished": None}
    results["invocations"].append(invocation)
    say(f"{len(todo)} cells to run ({len(cells) - len(todo)} already in {out})")
    for name, target in todo:
        cell = run_cell(model, info, name, target, n, guidance_scale, seed)
        results["cells"].append(cell)
        _write(results, out, plot)
        acc = cell["conditional_accuracy"]
        say(f"{KNOWN_SAMPLERS[name].label:22s} NFE {cell['nfe']:4d} ({cell['steps']:4d} steps)  Fréchet ratio "
            f"{cell['fd_ratio']:6.2f}  accuracy {'–' if acc is None else f'{100 * acc:5.1f} %'}  "
            f"{cell['seconds']:7.1f} s  load {cell['load_average']:.1f}")
    invocation["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    _write(results, out, plot)
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default=DEFAULT_RUN, help="a class-conditional digits run (default: %(default)s)")
    p.add_argument("--n", type=int, default=50, help="samples per cell (default: %(default)s)")
    p.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance (default: the run's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial noise and step noise of every cell")
    p.add_argument("--only", nargs="+", default=None, metavar="SAMPLER[:NFE,...]",
                   help=f"run these cells only; samplers: {', '.join(KNOWN_SAMPLERS)}")
    p.add_argument("--nfe", type=int, nargs="+", default=list(NFES), help="target NFEs (default: %(default)s)")
    p.add_argument("--out", default="samplers.json", help="results JSON; tables go to <out>.md")
    p.add_argument("--plot", default=None, help="also draw the Fréchet ratio vs NFE plot to this PNG")
    p.add_argument("--resume", action="store_true", help="add to an existing --out, skipping its cells")
    p.add_argument("--no-ema", dest="ema", action="store_false", help="the live weights instead of the EMA")
    p.add_argument("--threads", type=int, default=None, help="Numba threads (default: all cores)")
    args = p.parse_args(argv)
    if args.n < 2:
        p.error(f"--n must be >= 2, got {args.n}")
    try:
        cells = parse_only(args.only, nfes=tuple(args.nfe))
    except ValueError as e:
        p.error(str(e))
    from npdiff.kernels import config as _kernel_config  # noqa: F401  (thread policy before Numba's pool)
    import numba

    from npdiff.training import load_run

    if args.threads is not None:
        numba.set_num_threads(args.threads)
    if not os.path.isdir(args.run):
        p.error(f"--run {args.run!r} is not a folder; train one with `npdiff train -o {args.run}`")
    run = load_run(args.run, use_ema=args.ema)
    if run.config.data != "digits" or tuple(run.info.sample_shape)[0] != 1:
        p.error(f"--run {args.run!r} is not a digits image run (data {run.config.data!r}); the study scores "
                "samples with the fixed digits classifier")
    guidance = args.guidance_scale if args.guidance_scale is not None else run.config.guidance_scale
    meta = {"run": os.path.abspath(args.run), "step": run.step, "ema": args.ema, "n": args.n,
            "guidance_scale": guidance, "seed": args.seed, "nfe_accounting": "one call of the network = 1 NFE; "
            "a guided step's conditional and unconditional halves go in one batched call",
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                        "numba_threads": numba.get_num_threads()},
            "argv": sys.argv if argv is None else ["benchmarks/samplers.py", *argv]}
    print(f"{args.run}: step {run.step}, {args.n} samples per cell, guidance {guidance:g}, seed {args.seed}; "
          f"writing {args.out}")
    try:
        study(run.model, run.info, cells, args.out, args.n, guidance, args.seed, meta, resume=args.resume,
              plot=args.plot)
    except ValueError as e:
        print(f"samplers.py: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} and {os.path.splitext(args.out)[0]}.md" + (f" and {args.plot}" if args.plot else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
