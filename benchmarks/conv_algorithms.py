"""im2col + sgemm vs Winograd F(2×2, 3×3) for 3×3 stride-1 convolutions, in one process.

    python benchmarks/conv_algorithms.py [--repeats 25] [--threads 2]

For each shape, forward and grad-input by both algorithms, alternating call by call, best of
``--repeats``; prints ms and the ratio winograd / im2col, and which one ``conv.winograd_pays``
picks. This is the measurement behind ``WINOGRAD_MIN_SIZE`` / ``_CHANNELS`` / ``_PRODUCT`` in
``npdiff/kernels/conv.py``. Run it on a quiet machine (the load average is printed). On a loaded
machine use ``--clock cpu --threads 1``: the thread's CPU time, which other processes taking the
core do not inflate (cache sharing still does, a little).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

SHAPES = [  # N, C_in, C_out, H (= W)
    (64, 64, 64, 16), (64, 128, 128, 8), (32, 32, 64, 32), (16, 3, 64, 64),
    (32, 32, 32, 16), (32, 64, 64, 8), (64, 32, 32, 16), (64, 64, 64, 4),
    (64, 96, 32, 16), (64, 128, 64, 8), (64, 128, 64, 4),  # digits16's up blocks (skip connections concatenated)
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=25)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall: perf_counter; cpu: this thread's CPU time (use with --threads 1 on a loaded machine)")
    args = p.parse_args(argv)
    import numba

    from npdiff.kernels import conv as K

    numba.set_num_threads(args.threads)
    print(f"load average {os.getloadavg()[0]:.2f}, {args.threads} threads, {args.clock} clock")
    clock = time.perf_counter if args.clock == "wall" else time.thread_time
    rng = np.random.default_rng(0)
    for N, C, O, H in SHAPES:
        x = rng.standard_normal((N, C, H, H)).astype(np.float32)
        w = (rng.standard_normal((O, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float32)
        b = rng.standard_normal(O).astype(np.float32)
        g = rng.standard_normal((N, O, H, H)).astype(np.float32)
        out = np.empty((N, O, H, H), np.float32)
        calls = {
            ("fwd", "im2col"): lambda: K.conv2d_forward_cpu(x, w, b, (1, 1), (1, 1), out, algorithm="im2col"),
            ("fwd", "winograd"): lambda: K.conv2d_forward_cpu(x, w, b, (1, 1), (1, 1), out, algorithm="winograd"),
            ("gx", "im2col"): lambda: K.conv2d_backward_cpu(x, w, g, (1, 1), (1, 1), True, False, False,
                                                            algorithm="im2col"),
            ("gx", "winograd"): lambda: K.conv2d_backward_cpu(x, w, g, (1, 1), (1, 1), True, False, False,
                                                              algorithm="winograd"),
        }
        best = dict.fromkeys(calls, float("inf"))
        for f in calls.values():
            f()  # compile, first-touch
        for _ in range(args.repeats):
            for key, f in calls.items():
                t0 = clock()
                f()
                best[key] = min(best[key], clock() - t0)
        pick = "/".join("winograd" if K.winograd_pays(C, O, H, H, grad_input=gi) else "im2col" for gi in (False, True))
        cells = [f"{p} im2col {best[(p, 'im2col')] * 1e3:7.2f} winograd {best[(p, 'winograd')] * 1e3:7.2f} ms "
                 f"({best[(p, 'winograd')] / best[(p, 'im2col')]:.2f})" for p in ("fwd", "gx")]
        print(f"N={N:<3} C{C}->{O} {H}x{H}:  " + "  |  ".join(cells) + f"  -> rule picks {pick}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
