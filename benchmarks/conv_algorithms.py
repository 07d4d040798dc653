"""The algorithms of 3×3 stride-1 convolutions (im2col + sgemm, Winograd F(2×2, 3×3) and F(4×4, 3×3), the
batch-last GEMM), in one process.

    python benchmarks/conv_algorithms.py [--repeats 25] [--threads 2]

For each shape, forward and grad-input by im2col and F(2×2, 3×3), alternating call by call, best of
``--repeats``; prints ms and the ratio winograd / im2col, and which algorithm the rules pick
(``conv.winograd4_pays``; ``conv.small_plane_pays`` sends other planes of ≤ 16 pixels to the batch-last
GEMM). ``--algos`` (below) is the measurement behind ``WINOGRAD4_MIN_SIZE`` / ``_CHANNELS`` in
``npdiff/kernels/conv.py``. Run it on a quiet machine (the load average is printed). On a loaded
machine use ``--clock cpu --threads 1``: the thread's CPU time, which other processes taking the
core do not inflate (cache sharing still does, a little).

    python benchmarks/conv_algorithms.py --parts [--clock cpu --threads 1]
        per shape, where a conv's fwd+bwd time goes: forward, grad-input, grad-weight and grad-bias
        as the dispatch runs them, beside the one-thread sgemm calls alone that im2col would make
        (the GEMM floor; the rest is data movement: im2col/col2im, transforms, copies)
    python benchmarks/conv_algorithms.py --chunks [--clock cpu --threads 1]
        Winograd forward with V + M of one chunk at 0.25 to 4 MB (``winograd.CHUNK_BYTES``)
    python benchmarks/conv_algorithms.py --algos [--clock cpu --threads 1] [--shapes cifar32]
        per shape and part (forward, grad-input, grad-weight), every algorithm that computes it:
        im2col, Winograd F(2×2, 3×3), F(4×4, 3×3) (its products as the rule picks: microgemm where it beats
        the BLAS), F(4×4, 3×3) with BLAS's or microgemm's products always (F4-blas, F4-mg) and the batch-last
        GEMM, with the auto rule's pick: the measurement behind ``conv.winograd4_pays`` and ``winograd4.own_gemm_pays``
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
SHAPES_CIFAR32 = [  # cifar32's 3×3 convs, batch 32 (block_out_channels 64, 128, 128, 128; up blocks concatenated)
    (32, 64, 64, 32), (32, 128, 64, 32), (32, 64, 128, 16), (32, 128, 128, 16), (32, 256, 128, 16),
    (32, 128, 128, 8), (32, 256, 128, 8), (32, 128, 128, 4), (32, 256, 128, 4),
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=25)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall: perf_counter; cpu: this thread's CPU time (use with --threads 1 on a loaded machine)")
    p.add_argument("--parts", action="store_true", help="break fwd+bwd into its parts and the GEMM floor")
    p.add_argument("--chunks", action="store_true", help="Winograd forward by chunk size (V + M bytes)")
    p.add_argument("--algos", action="store_true", help="every algorithm on every part, with the rule's pick")
    p.add_argument("--shapes", choices=["default", "cifar32"], default="default")
    args = p.parse_args(argv)
    import numba

    from npdiff.kernels import conv as K

    numba.set_num_threads(args.threads)
    print(f"load average {os.getloadavg()[0]:.2f}, {args.threads} threads, {args.clock} clock")
    clock = time.perf_counter if args.clock == "wall" else time.thread_time
    rng = np.random.default_rng(0)
    shapes = SHAPES_CIFAR32 if args.shapes == "cifar32" else SHAPES
    if args.parts or args.chunks or args.algos:
        for N, C, O, H in shapes:
            (_parts if args.parts else _chunks if args.chunks else _algos)(K, rng, N, C, O, H, clock, args.repeats)
        return 0
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
        pick = _pick(K, C, O, H)
        cells = [f"{p} im2col {best[(p, 'im2col')] * 1e3:7.2f} winograd {best[(p, 'winograd')] * 1e3:7.2f} ms "
                 f"({best[(p, 'winograd')] / best[(p, 'im2col')]:.2f})" for p in ("fwd", "gx")]
        print(f"N={N:<3} C{C}->{O} {H}x{H}:  " + "  |  ".join(cells) + f"  -> rule picks {pick}", flush=True)
    return 0


def _pick(K, C, O, H):
    """What the auto rule takes for the forward / grad-input of a 3×3 stride-1 padding-1 conv on H×H."""
    def one(c_in, c_out):
        if K.winograd4_pays(c_in, c_out, H, H):
            return "winograd4"
        return "batch_last" if K.small_plane_pays(H, H) else "im2col"
    return f"{one(C, O)}/{one(O, C)}"


def _best(calls, clock, repeats):
    """{key: best seconds} over ``repeats`` rounds, the calls alternating within each round."""
    best = dict.fromkeys(calls, float("inf"))
    for f in calls.values():
        f()  # compile, first-touch
    for _ in range(repeats):
        for key, f in calls.items():
            t0 = clock()
            f()
            best[key] = min(best[key], clock() - t0)
    return best


def _operands(rng, N, C, O, H):
    x = rng.standard_normal((N, C, H, H)).astype(np.float32)
    w = (rng.standard_normal((O, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float32)
    g = rng.standard_normal((N, O, H, H)).astype(np.float32)
    return x, w, g


def _parts(K, rng, N, C, O, H, clock, repeats):
    """fwd / gx / gw / gb as the dispatch runs them, and the sgemm floor of im2col's products."""
    from npdiff.kernels.config import blas_single_thread

    x, w, g = _operands(rng, N, C, O, H)
    b = np.zeros(O, np.float32)
    out = np.empty((N, O, H, H), np.float32)
    P, Kd = H * H, 9 * C
    w2, cols, g3 = w.reshape(O, Kd), rng.standard_normal((Kd, P)).astype(np.float32), g.reshape(N, O, P)
    res, acc = np.empty((O, P), np.float32), np.empty((Kd, O), np.float32)

    def gemms(product):
        with blas_single_thread():
            for n in range(N):
                product(n)

    calls = {
        "fwd": lambda: K.conv2d_forward_cpu(x, w, b, (1, 1), (1, 1), out),
        "gx": lambda: K.conv2d_backward_cpu(x, w, g, (1, 1), (1, 1), True, False, False),
        "gw": lambda: K.conv2d_backward_cpu(x, w, g, (1, 1), (1, 1), False, True, False),
        "gb": lambda: K.conv2d_backward_cpu(x, w, g, (1, 1), (1, 1), False, False, True),
        # one image's im2col product per call: (O, K) @ (K, P) forward, (K, P) @ (P, O) grad-weight
        "sgemm fwd": lambda: gemms(lambda n: np.dot(w2, cols, res)),
        "sgemm gw": lambda: gemms(lambda n: np.dot(cols, g3[n].T, acc)),
    }
    t = {k: v * 1e3 for k, v in _best(calls, clock, repeats).items()}
    total = t["fwd"] + t["gx"] + t["gw"] + t["gb"]
    algo = _pick(K, C, O, H)
    print(f"N={N:<3} C{C}->{O} {H}x{H} ({algo}):  fwd {t['fwd']:6.2f}  gx {t['gx']:6.2f}  gw {t['gw']:6.2f}  "
          f"gb {t['gb']:5.2f}  = {total:6.2f} ms  |  im2col's sgemm alone: fwd {t['sgemm fwd']:6.2f}  "
          f"gw {t['sgemm gw']:6.2f} ms", flush=True)


ALGOS = ("im2col", "winograd", "winograd4", "winograd4_blas", "winograd4_microgemm", "batch_last")
SHORT = {"im2col": "im2col", "winograd": "F2", "winograd4": "F4", "winograd4_blas": "F4-blas",
         "winograd4_microgemm": "F4-mg", "batch_last": "batch-last"}


def _algos(K, rng, N, C, O, H, clock, repeats):
    """Forward, grad-input and grad-weight by each algorithm (ms), and what the auto rule takes."""
    x, w, g = _operands(rng, N, C, O, H)
    b, out = np.zeros(O, np.float32), np.empty((N, O, H, H), np.float32)
    parts = {"fwd": lambda a: K.conv2d_forward_cpu(x, w, b, (1, 1), (1, 1), out, algorithm=a),
             "gx": lambda a: K.conv2d_backward_cpu(x, w, g, (1, 1), (1, 1), True, False, False, algorithm=a),
             "gw": lambda a: K.conv2d_backward_cpu(x, w, g, (1, 1), (1, 1), False, True, False, algorithm=a)}
    algos = ALGOS if C >= 8 else ("im2col", "batch_last")
    calls = {(p, a): (lambda f=f, a=a: f(a)) for p, f in parts.items() for a in algos
             if not (p == "gw" and a == "winograd")}  # F(2×2)'s grad-weight is im2col's
    calls.update({(p, "auto"): (lambda f=f: f("auto")) for p, f in parts.items()})
    t = {k: v * 1e3 for k, v in _best(calls, clock, repeats).items()}
    cells = []
    for p in parts:
        row = "  ".join(f"{SHORT[a]} {t[(p, a)]:6.2f}" for a in algos if (p, a) in t)
        fastest = min((a for a in algos if (p, a) in t), key=lambda a: t[(p, a)])
        cells.append(f"{p}: {row}  auto {t[(p, 'auto')]:6.2f} (best {fastest})")
    print(f"N={N:<3} C{C}->{O} {H}x{H}\n    " + "\n    ".join(cells), flush=True)


def _chunks(K, rng, N, C, O, H, clock, repeats):
    """Winograd forward (one thread's chunk loop) with V + M of one chunk at 0.25 … 4 MB."""
    from npdiff.kernels import winograd as Wn
    from npdiff.kernels.config import blas_single_thread

    x, w, _ = _operands(rng, N, C, O, H)
    out, bias, U = np.empty((N, O, H, H), np.float32), np.zeros(O, np.float32), Wn.weight_transform(w)
    th = tw = -(-H // 2)
    calls, nbs = {}, {}
    for mb in (0.25, 0.5, 1, 2, 4):
        tiles = max(1, min(Wn.TILES_PER_GEMM, int(mb * 2**20) // (16 * (C + O) * 4)))
        nb = nbs[mb] = max(1, min(tiles // (th * tw), N))

        def run(nb=nb):
            with blas_single_thread():
                Wn._winograd_chunks(0, -(-N // nb), x, U, bias, 1, 1, th, tw, nb, out)

        calls[mb] = run
    best = _best(calls, clock, repeats)
    print(f"N={N:<3} C{C}->{O} {H}x{H}:  " + "  ".join(f"{mb:g} MB (nb {nbs[mb]}) {best[mb] * 1e3:6.2f}"
                                                      for mb in calls) + " ms", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
