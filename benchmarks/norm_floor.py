"""Group norm against the memory floor: achieved GB/s of the kernels beside two copies of the same size.

    python benchmarks/norm_floor.py [--threads 1,2] [--repeats 50] [--json out.json]

The group-norm kernels (the table's numba column, called directly: no tape) move a fixed number of
bytes: the forward reads x and writes y (2 B, B = the array's bytes), the backward reads g and x and
writes dx (3 B); the fused GroupNorm + SiLU moves the same. Everything else (the statistics, the
sums, the second pass over a slab) happens in cache (norm.py: a (n, group) slab is 8 KB on the
benchmark shapes). So bytes ÷ time is the kernels' bandwidth, and two copies of B bytes bound it:

  * ``np.copyto`` (glibc's memcpy): above a size threshold (about ¾ of the L3 cache) it writes with
    non-temporal stores, which do not read the destination line first; the bare floor.
  * a Numba loop ``out[i] = x[i]`` (``cached_copy`` below): ordinary stores, so each written line
    is first read into cache (write-allocate), 3 B of traffic for a 2 B copy once the arrays do not
    fit in cache; the floor for a kernel Numba compiles (it emits no non-temporal stores).

Printed per shape and thread count: each kernel's best and median ms, GB/s from the best, and that
as a fraction of the two copies' GB/s (best of ``--repeats``, wall clock; state the load: the
machine may be shared). The shapes are benchmarks/kernels.py's group-norm workloads (G = 32) and
two of the U-Net's small maps (S = H·W = 16 and 64: per-channel rows too short for the vector loops
to fill; docs/kernels.md, Normalisation).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
SHAPES = [((64, 128, 16, 16), 32), ((64, 64, 32, 32), 32), ((64, 64, 4, 4), 8), ((64, 64, 8, 8), 8)]
COPY_BYTES = 16 << 20  # the 16 MB copy of the issue, beside each shape's own size


def _timed(fn, repeats):
    fn()  # warm-up: compile, first-touch allocations
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[0] * 1e3, times[len(times) // 2] * 1e3


def _cached_copy():
    from npdiff.kernels.config import jit_serial, parallel_for

    @jit_serial
    def copy_rows(lo, hi, x, out):
        for r in range(lo, hi):
            for i in range(x.shape[1]):
                out[r, i] = x[r, i]

    def run(x, out):
        x2, out2 = x.reshape(64, -1), out.reshape(64, -1)  # (64, B/256): 64 rows split over the threads
        parallel_for(copy_rows, 64, x2, out2)

    return run


def measure(threads, repeats):
    import numba

    from npdiff.kernels import norm as K

    numba.set_num_threads(threads)
    cached_copy = _cached_copy()
    rng = np.random.default_rng(0)
    records = []
    for shape, G in [((COPY_BYTES // 4 // 64, 64), None)] + SHAPES:
        x = rng.standard_normal(shape, dtype=np.float32)
        nbytes = x.nbytes
        dst = np.empty_like(x)
        copies = {"np.copyto": _timed(lambda: np.copyto(dst, x), repeats),
                  "cached copy": _timed(lambda: cached_copy(x, dst), repeats)}
        copy_gbs = {k: 2 * nbytes / (v[0] * 1e-3) / 1e9 for k, v in copies.items()}
        rec = {"shape": list(shape), "groups": G, "threads": threads, "mbytes": nbytes / 1e6,
               "copy": {k: {"best_ms": v[0], "gb_s": copy_gbs[k]} for k, v in copies.items()}, "kernels": {}}
        if G is not None:
            C = shape[1]
            w = (1 + 0.1 * rng.standard_normal(C)).astype(np.float32)
            b = (0.1 * rng.standard_normal(C)).astype(np.float32)
            g = rng.standard_normal(shape, dtype=np.float32)
            _, mean, rstd = K.group_norm_forward_numba(x, G, w, b)
            kernels = {
                "group_norm fwd": (2, lambda: K.group_norm_forward_numba(x, G, w, b)),
                "group_norm bwd": (3, lambda: K.group_norm_backward_numba(g, x, mean, rstd, G, w)),
                "gn+silu fwd": (2, lambda: K.group_norm_silu_forward_numba(x, G, w, b)),
                "gn+silu bwd": (3, lambda: K.group_norm_silu_backward_numba(g, x, mean, rstd, G, w, b)),
            }
            for name, (moves, fn) in kernels.items():
                best, med = _timed(fn, repeats)
                gbs = moves * nbytes / (best * 1e-3) / 1e9
                rec["kernels"][name] = {"best_ms": best, "median_ms": med, "gb_s": gbs,
                                        **{f"of {k}": gbs / v for k, v in copy_gbs.items()}}
        records.append(rec)
    return records


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--repeats", type=int, default=50, help="timed calls per kernel; the best is reported")
    ap.add_argument("--json", metavar="PATH", help="write the records to PATH")
    args = ap.parse_args(argv)
    import harness

    print(f"CPU: {harness.instruction_set()}, load average {os.getloadavg()[0]:.2f}; wall clock, best of "
          f"{args.repeats}")
    records = []
    for threads in (int(t) for t in args.threads.split(",")):
        for rec in measure(threads, args.repeats):
            records.append(rec)
            c = rec["copy"]
            head = (f"{str(tuple(rec['shape'])):18} G={rec['groups'] or '-':>2} {rec['mbytes']:5.1f} MB, "
                    f"{threads} thread(s): copies {c['np.copyto']['gb_s']:.0f} GB/s (np.copyto), "
                    f"{c['cached copy']['gb_s']:.0f} GB/s (cached stores)")
            print(head)
            for name, k in rec["kernels"].items():
                print(f"    {name:15} {k['best_ms']:7.3f} ms (median {k['median_ms']:.3f})  {k['gb_s']:5.0f} GB/s  "
                      f"= {k['of np.copyto']:4.0%} of np.copyto, {k['of cached copy']:4.0%} of the cached copy")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
    return records


if __name__ == "__main__":
    main()
