"""npdiff's fast kernels vs torch.nn.functional on the CPU, forward and forward+backward.

    python benchmarks/kernels.py [--only conv,attention] [--json out.json]

Both sides go through their user-facing functional API (npdiff.nn.functional with
autograd, torch.nn.functional), float32, 2 threads each, in separate processes,
alternating. "fwd" runs without a tape; "fwd+bwd" runs forward, then backward of
a fixed upstream gradient into every input that has one (input, weight, bias).
GFLOP/s counts the multiply-adds of the defining formula (2 per MAC); backward of
a GEMM-like op is counted as twice its forward.
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

# name -> (family, args, flops of one forward, backward/forward flop ratio)
WORKLOADS = {}


def _add(family, workload, build_args, fwd_flops, bwd_ratio=2.0):
    for p in ("fwd", "fwd+bwd"):
        flops = fwd_flops * (1 + bwd_ratio if p == "fwd+bwd" else 1)
        WORKLOADS[f"{family} {workload} {p}"] = dict(family=family, workload=workload, **{"pass": p},
                                                    flops=flops, args=build_args)


for n, ci, co, hw in [(64, 64, 64, 16), (64, 128, 128, 8), (32, 32, 64, 32), (16, 3, 64, 64)]:
    _add("conv2d", f"N={n} C{ci}->{co} {hw}x{hw} k3p1", (n, ci, co, hw), 2 * n * co * hw * hw * ci * 9)
for shape in [(64, 128, 16, 16), (64, 64, 32, 32)]:
    # ~8 flops per element forward (mean, var, normalise, affine), about twice that backward
    _add("group_norm", f"{shape} G=32", shape, 8 * int(np.prod(shape)), 2.0)
for b, h, l, d in [(64, 4, 64, 32), (16, 8, 256, 64), (2, 8, 4096, 64), (32, 16, 256, 8)]:
    # QKᵀ and PV: 4·L²·d per head; backward is 5 such products (2.5x)
    _add("attention", f"B={b} h={h} L={l} d={d}", (b, h, l, d), 4 * b * h * l * l * d, 2.5)
_add("linear", "4096x256 -> 1024", (4096, 256, 1024), 2 * 4096 * 256 * 1024)


def _inputs(family, args, rng):
    if family == "conv2d":
        n, ci, co, hw = args
        return [rng.standard_normal((n, ci, hw, hw)), rng.standard_normal((co, ci, 3, 3)) * 0.1,
                rng.standard_normal(co)]
    if family == "group_norm":
        c = args[1]
        return [rng.standard_normal(args), 1 + 0.1 * rng.standard_normal(c), 0.1 * rng.standard_normal(c)]
    if family == "attention":
        b, h, l, d = args
        return [rng.standard_normal((b, h, l, d)) for _ in range(3)]
    m, k, n = args
    return [rng.standard_normal((m, k)), rng.standard_normal((n, k)) * 0.05, rng.standard_normal(n)]


def _call(F, family, ts):
    if family == "conv2d":
        return F.conv2d(ts[0], ts[1], ts[2], stride=1, padding=1)
    if family == "group_norm":
        return F.group_norm(ts[0], 32, ts[1], ts[2], eps=1e-5)
    if family == "attention":
        return F.scaled_dot_product_attention(*ts)
    return F.linear(*ts)


def build(side, case):
    w = WORKLOADS[case]
    rng = np.random.default_rng(0)
    arrays = [a.astype(np.float32) for a in _inputs(w["family"], w["args"], rng)]
    backward = w["pass"] == "fwd+bwd"
    if side == "torch":
        import torch
        import torch.nn.functional as F

        ts = [torch.from_numpy(a).requires_grad_(backward) for a in arrays]
        g = None

        def run():
            nonlocal g
            if not backward:
                with torch.no_grad():
                    return _call(F, w["family"], ts)
            for t in ts:
                t.grad = None
            out = _call(F, w["family"], ts)
            if g is None:
                g = torch.ones_like(out) / out.numel()
            out.backward(g)

        return run

    import npdiff as nd
    import npdiff.nn.functional as F

    ts = [nd.tensor(a, requires_grad=backward) for a in arrays]
    g = None

    def run():
        nonlocal g
        if not backward:
            with nd.no_grad():
                return _call(F, w["family"], ts)
        for t in ts:
            t.grad = None
        out = _call(F, w["family"], ts)
        if g is None:
            g = np.full(out.shape, 1.0 / out.numel(), np.float32)
        out.backward(g)

    return run


def describe(print):
    """The machine's practical float32 peak: numpy's own sgemm on 2048x2048."""
    import time

    a = np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32)
    a @ a
    best = min((lambda t0: (a @ a, time.perf_counter() - t0)[1])(time.perf_counter()) for _ in range(5))
    print(f"numpy float32 matmul 2048^3 ({os.environ.get('OMP_NUM_THREADS', 'default')} threads in this "
          f"process): {2 * 2048**3 / best / 1e9:.1f} GFLOP/s — the bar for 'GEMM speed'")


if __name__ == "__main__":
    harness.main(WORKLOADS, build, os.path.abspath(__file__), "npdiff vs torch kernel benchmark", describe)
