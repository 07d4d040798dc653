"""Memory of the default training over a long run: peak and drift of resident memory, page faults.

Runs the CLI's default training (``TrainConfig()``: digits, the default UNet, batch 32) for
``--steps`` steps in this process, with sampling and checkpoints pushed beyond the run, and records
after every step the resident set size (``/proc/self/statm``), the minor page faults of the step
and its time. Prints the peak resident memory, the resident memory after the first steps and at
the end (flat means no growth: the drift per 100 steps is the slope of a least-squares line over
the second half of the run), the page faults per step (memory taken back from the kernel and
faulted in again every step shows here; see ``npdiff/kernels/config.py``) and the median step.

    python benchmarks/memory.py [--steps 300] [--json out.json]

With ``--tracemalloc`` the peak of Python-tracked allocations (numpy arrays included) is also
reported; tracing slows the steps.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time

import numpy as np


def rss_mb() -> float:
    """Resident set size of this process in MB (Linux: /proc/self/statm, second field, in pages)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--tracemalloc", action="store_true", help="also trace Python allocations (slower)")
    ap.add_argument("--json", metavar="PATH", help="write the per-step records and the summary to PATH")
    args = ap.parse_args(argv)
    if args.steps < 4:
        ap.error(f"--steps must be at least 4 (got {args.steps})")

    from npdiff.kernels import config as kernel_config
    from npdiff.training import TrainConfig, trainer_class

    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start()
    config = TrainConfig(steps=10**6, sample_every=10**9, checkpoint_every=10**9, log_every=10**9)
    trainer = trainer_class(config)(config, tempfile.mkdtemp(prefix="npdiff-memory-"), progress=False)
    print(f"load average {os.getloadavg()[0]:.2f}; malloc tuned: {kernel_config.MALLOC_TUNED}; "
          f"default training, batch {config.batch_size}, {args.steps} steps", flush=True)
    records = []
    last = [time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt]

    def on_step(_trainer, _record):
        now, faults = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        records.append({"step": _trainer.step, "rss_mb": rss_mb(), "minflt": faults - last[1], "s": now - last[0]})
        last[:] = [now, faults]

    trainer.train(stop_after=args.steps, callback=on_step)
    rss = np.array([r["rss_mb"] for r in records])
    half = len(rss) // 2
    slope = np.polyfit(np.arange(half, len(rss)), rss[half:], 1)[0] * 100  # MB per 100 steps
    summary = {
        "load_average": os.getloadavg()[0],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_3_steps_mb": float(rss[2]), "rss_end_mb": float(rss[-1]),
        "rss_drift_mb_per_100_steps": float(slope),
        "minflt_per_step_median": statistics.median(r["minflt"] for r in records[3:]),
        "step_s_median": statistics.median(r["s"] for r in records[3:]),
    }
    if args.tracemalloc:
        summary["tracemalloc_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
    for key, value in summary.items():
        print(f"{key:32s} {value:10.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": summary, "steps": records}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
