"""Where attention's time goes: the fast kernels against the sgemm floor of their own tile products.

    python benchmarks/attention_parts.py [--only 4096,d=8] [--repeats 5]

One thread, CPU time (``time.process_time``: nearly blind to other processes on a loaded machine),
median of ``--repeats``, on the attention workloads of ``benchmarks/kernels.py``. For each case:
npdiff's forward and backward kernels called directly (``npdiff.kernels.attention_forward`` /
``attention_backward``: no tape); for the BLAS path (d > 16) the same sgemm tile products alone, on
the same tiles (forward: S = qs k_jᵀ and P V; backward: the five FlashAttention-2 products) —
what is left above that floor is the softmax work (max, exp, sums, rescaling) and data movement;
and torch's ``scaled_dot_product_attention`` forward and forward+backward in a child process (one
thread). The exponential's and the GEMMs' speeds depend on the BLAS kernels: the header prints them
(docs/kernels.md, "Which GEMM kernels run").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
CASES = [(64, 4, 64, 32), (16, 8, 256, 64), (2, 8, 4096, 64), (32, 16, 256, 8)]  # (B, h, L, d), as kernels.py


def _name(case):
    b, h, l, d = case
    return f"B={b} h={h} L={l} d={d}"


def _median_ms(fn, repeats):
    fn()  # warm-up: JIT compile, first-touch allocations
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times) * 1e3


def _inputs(case):
    b, h, l, d = case
    rng = np.random.default_rng(0)
    return [rng.standard_normal((b, h, l, d)).astype(np.float32) for _ in range(4)]  # q, k, v, g


def _gemm_floors():
    import numba

    @numba.njit(nogil=True)
    def forward(q, k, v, tq, tk):
        N, Lq, d = q.shape
        Lk, dv = k.shape[1], v.shape[2]
        sbuf = np.empty(tk * tq, q.dtype)  # tiles as contiguous views
        out = np.empty((tq, dv), q.dtype)
        for n in range(N):
            for i0 in range(0, Lq, tq):
                nq = min(tq, Lq - i0)
                for j0 in range(0, Lk, tk):
                    nk = min(tk, Lk - j0)
                    S = sbuf[:nq * nk].reshape((nq, nk))  # row-major (query, key) tiles, as the kernel takes them
                    np.dot(q[n, i0:i0 + nq], k[n, j0:j0 + nk].T, S)
                    np.dot(S, v[n, j0:j0 + nk], out[:nq])

    @numba.njit(nogil=True)
    def backward(q, k, v, g, tq, tk):
        N, Lq, d = q.shape
        Lk, dv = k.shape[1], v.shape[2]
        pbuf, dbuf = np.empty(tk * tq, q.dtype), np.empty(tk * tq, q.dtype)
        tv, tkb, tqb = np.empty((tk, dv), q.dtype), np.empty((tk, d), q.dtype), np.empty((tq, d), q.dtype)
        for n in range(N):
            for j0 in range(0, Lk, tk):
                nk = min(tk, Lk - j0)
                for i0 in range(0, Lq, tq):
                    nq = min(tq, Lq - i0)
                    PT, dPT = pbuf[:nk * nq].reshape((nk, nq)), dbuf[:nk * nq].reshape((nk, nq))
                    np.dot(k[n, j0:j0 + nk], q[n, i0:i0 + nq].T, PT)
                    np.dot(PT, g[n, i0:i0 + nq], tv[:nk])
                    np.dot(v[n, j0:j0 + nk], g[n, i0:i0 + nq].T, dPT)
                    np.dot(dPT, q[n, i0:i0 + nq], tkb[:nk])
                    np.dot(dPT.T, k[n, j0:j0 + nk], tqb[:nq])

    return forward, backward


def run_npdiff(cases, repeats):
    import numba

    numba.set_num_threads(1)
    import npdiff.kernels as K
    from npdiff.kernels import attention as A
    from npdiff.kernels.config import blas_single_thread

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from harness import blas_kernels

    print(f"npdiff, one thread, CPU time; BLAS kernels: {blas_kernels()} "
          f"(OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')}); load {os.getloadavg()[0]:.2f}")
    floor_fwd, floor_bwd = _gemm_floors()
    rows = {}
    for case in cases:
        q, k, v, g = _inputs(case)
        out, lse = K.attention_forward(q, k, v)
        row = dict(fwd=_median_ms(lambda: K.attention_forward(q, k, v), repeats),
                   bwd=_median_ms(lambda: K.attention_backward(g, q, k, v, out, lse), repeats))
        if case[3] > A.SMALL_HEAD_DIM:
            q3, k3, v3, g3 = (a.reshape(-1, a.shape[-2], a.shape[-1]) for a in (q, k, v, g))
            tq, tk = A._tiles(q3.shape[0], q3.shape[1], k3.shape[1], q3.shape[2])
            fq, fk = A._tiles(q3.shape[0], q3.shape[1], k3.shape[1], q3.shape[2], forward=True)
            with blas_single_thread():
                row["fwd_sgemm"] = _median_ms(lambda: floor_fwd(q3, k3, v3, fq, fk), repeats)
                row["bwd_sgemm"] = _median_ms(lambda: floor_bwd(q3, k3, v3, g3, tq, tk), repeats)
        rows[_name(case)] = row
    return rows


def run_torch(cases, repeats):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    rows = {}
    for case in cases:
        q, k, v, g = (torch.from_numpy(a) for a in _inputs(case))
        for t in (q, k, v):
            t.requires_grad_(True)

        def forward():
            with torch.no_grad():
                F.scaled_dot_product_attention(q, k, v)

        def forward_backward():
            F.scaled_dot_product_attention(q, k, v).backward(g)

        rows[_name(case)] = dict(fwd=_median_ms(forward, repeats), fwd_bwd=_median_ms(forward_backward, repeats))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="", help="comma-separated substrings of the case names")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    cases = [c for c in CASES if not args.only or any(s in _name(c) for s in args.only.split(","))]
    if args.torch_worker:
        print(json.dumps(run_torch(cases, args.repeats)))
        return
    ours = run_npdiff(cases, args.repeats)
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    child = subprocess.run([sys.executable, os.path.abspath(__file__), "--torch-worker", "--only", args.only,
                            "--repeats", str(args.repeats)], capture_output=True, text=True, env=env, check=True)
    theirs = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"{'case':<24} {'fwd ms':>8} {'sgemm':>8} {'bwd ms':>8} {'sgemm':>8} {'torch fwd':>10} {'torch f+b':>10} "
          f"{'ratio f+b':>9} {'sgemm/torch':>11}")
    for name, r in ours.items():
        t = theirs[name]
        floor = r.get("fwd_sgemm", float("nan")) + r.get("bwd_sgemm", float("nan"))
        print(f"{name:<24} {r['fwd']:>8.1f} {r.get('fwd_sgemm', float('nan')):>8.1f} {r['bwd']:>8.1f} "
              f"{r.get('bwd_sgemm', float('nan')):>8.1f} {t['fwd']:>10.1f} {t['fwd_bwd']:>10.1f} "
              f"{(r['fwd'] + r['bwd']) / t['fwd_bwd']:>9.2f} {floor / t['fwd_bwd']:>11.2f}")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
