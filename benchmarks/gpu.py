"""npdiff's cuda column (our Numba CUDA kernels on CuPy arrays) vs torch CUDA eager, on one GPU.

    python benchmarks/gpu.py [--only conv2d,unet] [--rounds 5 --iters 10] [--json out.json]

The kernel workloads are benchmarks/kernels.py's (same shapes, same functional calls: F.conv2d,
F.group_norm, F.scaled_dot_product_attention, F.linear, forward and forward+backward) and the
training step is benchmarks/unet.py's digits16 and cifar32 configs (x_t, MSE to the noise,
backward, AdamW), with identical weights on both sides. Both sides run in this process (one GPU,
no thread pools to fight over), alternating round by round; every timing synchronises both
devices before reading the clock. Prints median ms per iteration, the ratio npdiff / torch and,
with --json, one record per case. A case that fails on one side is reported and skipped.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import time
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", os.path.join(HERE, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _sync():
    import cupy
    import torch

    cupy.cuda.Device().synchronize()
    torch.cuda.synchronize()


def kernel_case(kb, name, side):
    """One iteration of a benchmarks/kernels.py workload on the GPU for ``side``."""
    w = kb.WORKLOADS[name]
    arrays = [a.astype(np.float32) for a in kb._inputs(w["family"], w["args"], np.random.default_rng(0))]
    backward = w["pass"] == "fwd+bwd"
    if side == "torch":
        import torch
        import torch.nn.functional as F

        ts = [torch.from_numpy(a).cuda().requires_grad_(backward) for a in arrays]
        ctx, ones = torch.no_grad, torch.ones_like
    else:
        import cupy

        import npdiff as nd
        import npdiff.nn.functional as F

        ts = [nd.tensor(cupy.asarray(a), requires_grad=backward) for a in arrays]
        ctx, ones = nd.no_grad, lambda out: cupy.ones(out.shape, np.float32)

    def run():
        if not backward:
            with ctx():
                return kb._call(F, w["family"], ts)
        for t in ts:
            t.grad = None
        out = kb._call(F, w["family"], ts)
        out.backward(ones(out) / out.numel())

    return run


def unet_case(ub, config, side):
    """One DDPM training step of benchmarks/unet.py's ``config`` on the GPU for ``side``."""
    import cupy

    rng = np.random.default_rng(0)
    state = {k: np.array(v) for k, v in ub._npdiff_model(config).state_dict().items()}
    if side == "torch":
        import diffusers
        import torch

        model = diffusers.UNet2DModel(**ub.CONFIGS[config]["unet"]).cuda()
        model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def run():
            xt, noise, t = (torch.from_numpy(a).cuda() for a in ub._batch(config, rng))
            loss = torch.nn.functional.mse_loss(model(xt, t).sample, noise)
            opt.zero_grad()
            loss.backward()
            opt.step()

        return run
    import npdiff as nd
    import npdiff.nn.functional as F
    from npdiff.optim import AdamW

    model = ub._npdiff_model(config).to("cuda").train()
    opt = AdamW(model.parameters(), lr=1e-4)

    def run():
        xt, noise, t = ub._batch(config, rng)
        loss = F.mse_loss(model(nd.tensor(cupy.asarray(xt)), t), nd.tensor(cupy.asarray(noise)))
        opt.zero_grad()
        loss.backward()
        opt.step()

    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--only", default="", help="comma-separated substrings of case names")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    import torch

    kb, ub = _load("kernels"), _load("unet")
    cases = {name: (lambda side, n=name: kernel_case(kb, n, side)) for name in kb.WORKLOADS}
    for config in ("digits16", "cifar32"):
        cases[f"unet {config} train (batch {ub.CONFIGS[config]['batch']})"] = \
            (lambda side, c=config: unet_case(ub, c, side))
    names = [n for n in cases if not args.only or any(s in n for s in args.only.split(","))]
    print(f"GPU: {torch.cuda.get_device_name()}  (torch {torch.__version__}, npdiff cuda column; "
          f"median of {args.rounds}×{args.iters} iterations after a warm-up call)")
    header = f"{'case':<48} {'npdiff ms':>10} {'torch ms':>10} {'ratio':>7} {'first call s':>12}"
    print(header + "\n" + "-" * len(header))
    records = []
    for name in names:
        try:
            runs, warm, times = {}, {}, {"npdiff": [], "torch": []}
            for side in ("npdiff", "torch"):
                t0 = time.perf_counter()
                runs[side] = cases[name](side)
                runs[side]()  # warm-up: Numba compiles the kernels, cuDNN picks algorithms
                _sync()
                warm[side] = time.perf_counter() - t0
            for _ in range(args.rounds):
                for side in ("npdiff", "torch"):  # alternate A B A B
                    _sync()
                    t0 = time.perf_counter()
                    for _ in range(args.iters):
                        runs[side]()
                    _sync()
                    times[side].append((time.perf_counter() - t0) / args.iters)
        except Exception as e:  # report and go on: one broken case must not hide the others
            print(f"{name:<48} failed: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc()
            records.append(dict(case=name, error=f"{type(e).__name__}: {e}"))
            continue
        med = {s: statistics.median(t) * 1e3 for s, t in times.items()}
        ratio = med["npdiff"] / med["torch"]
        print(f"{name:<48} {med['npdiff']:>10.3f} {med['torch']:>10.3f} {ratio:>7.2f} {warm['npdiff']:>12.2f}",
              flush=True)
        records.append(dict(case=name, npdiff_ms=med["npdiff"], torch_ms=med["torch"], ratio=ratio,
                            npdiff_first_call_s=warm["npdiff"], gpu=torch.cuda.get_device_name()))
    print(json.dumps(records))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)


if __name__ == "__main__":
    main()
