"""Side-by-side timing of npdiff and PyTorch, each in its own process.

OpenBLAS/Numba and torch's OpenMP pools slow each other down inside one process,
so the orchestrator starts one long-lived worker per side and alternates between
them (A B A B ...): it sends {"case": ..., "iters": n} on a worker's stdin, the worker
answers with a JSON list of per-iteration seconds. Only one side computes at a
time; idle OpenMP threads are told to sleep (OMP_WAIT_POLICY=PASSIVE).

A benchmark script defines ``build(side, case) -> callable`` (the callable runs
one timed iteration; building it pays warm-up and JIT compile) and calls
``main(cases, build, ...)``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict

import numpy as np


def _worker(build, side: str, threads: int, clock: str = "wall"):
    """Serve timing requests on stdin/stdout until EOF. ``clock``: "wall" (perf_counter) or "cpu"
    (process_time: the CPU time of all the process's threads, which other processes on a loaded
    machine do not inflate; a thread that waits for another costs nothing in it, so use it with
    ``--threads 1`` to compare work, not parallel efficiency)."""
    now = time.perf_counter if clock == "wall" else time.process_time
    if side == "torch":
        import torch

        torch.set_num_threads(threads)
    else:
        import numba

        numba.set_num_threads(threads)
    built = {}
    out = sys.stdout
    sys.stdout = sys.stderr  # stray prints must not corrupt the protocol
    for line in sys.stdin:
        req = json.loads(line)
        case, iters = req["case"], req["iters"]
        if case not in built:
            t0 = time.perf_counter()
            fn = build(side, case)
            fn()  # warm-up (JIT compile, first-touch allocations)
            built[case] = fn
            warm = time.perf_counter() - t0
        else:
            warm = 0.0
        fn = built[case]
        times = []
        for _ in range(int(iters)):
            t0 = now()
            fn()
            times.append(now() - t0)
        out.write(json.dumps({"times": times, "warmup_s": warm}) + "\n")
        out.flush()


class _Side:
    def __init__(self, script: str, side: str, threads: int, clock: str = "wall"):
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS=str(threads),
                   OPENBLAS_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads))
        self.proc = subprocess.Popen(
            [sys.executable, script, "--worker", side, "--threads", str(threads), "--clock", clock],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )

    def run(self, case: str, iters: int) -> dict:
        self.proc.stdin.write(json.dumps({"case": case, "iters": iters}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark worker died while running {case!r} (see its stderr above)")
        return json.loads(line)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def instruction_set() -> str:
    """The widest x86 vector extension the CPU reports (what Numba compiles for on this host)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"), ("sse4_2", "SSE4.2")):
        if flag in flags:
            return name
    return "unknown"


def _fma_kernel():
    import numba

    @numba.njit(fastmath=True, nogil=True)
    def fma_loop(acc, reps, m, c):
        # 256 independent float32 accumulators (16 AVX-512 / 32 AVX2 registers' worth): the
        # multiply-add chains overlap, so the loop runs at the FMA units' throughput
        for _ in range(reps):
            for i in range(256):
                acc[i] = acc[i] * m + c
        return acc[0]

    return fma_loop


def measured_peak(threads: int, repeats: int = 3) -> dict:
    """float32 GFLOP/s the machine reaches: an FMA loop on ``threads`` threads at once, and
    npdiff's GEMM (gemm.matmul: rows over threads, one-thread sgemm each) on 1024², best of
    ``repeats``. Kernel GFLOP/s figures read as a fraction of these."""
    import threading

    import numba

    from npdiff.kernels import gemm

    numba.set_num_threads(threads)
    fma = _fma_kernel()
    reps = 100_000
    m, c = np.float32(0.999), np.float32(0.001)
    fma(np.zeros(256, np.float32), 10, m, c)  # compile
    best_fma = 0.0
    for _ in range(repeats):
        accs = [np.zeros(256, np.float32) for _ in range(threads)]
        workers = [threading.Thread(target=fma, args=(a, reps, m, c)) for a in accs]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best_fma = max(best_fma, threads * 2 * 256 * reps / (time.perf_counter() - t0) / 1e9)
    a = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)
    gemm.matmul(a, a)
    best_gemm = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        gemm.matmul(a, a)
        best_gemm = max(best_gemm, 2 * 1024 ** 3 / (time.perf_counter() - t0) / 1e9)
    return {"fma_gflops": best_fma, "gemm_gflops": best_gemm}


def describe_machine(threads: int, out=print) -> dict:
    """Print (and return) the CPU, its instruction set, the load average and the measured float32 peak."""
    import platform

    model = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    info = {"cpu": model, "isa": instruction_set(), "load_average": os.getloadavg()[0], "threads": threads}
    info.update(measured_peak(threads))
    info["blas"] = blas_kernels()
    out(f"CPU: {info['cpu']} ({info['isa']}), load average {info['load_average']:.2f}; float32 peak on "
        f"{threads} threads: FMA loop {info['fma_gflops']:.0f} GFLOP/s, GEMM 1024² {info['gemm_gflops']:.0f} GFLOP/s")
    out(f"BLAS kernels: {info['blas']} (OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')}; "
        f"npdiff's GEMMs run on scipy's OpenBLAS, torch's on oneDNN/MKL)")
    return info


def blas_kernels() -> str:
    """The kernel family each loaded BLAS library runs (threadpoolctl's "architecture"), e.g.
    "openblas Haswell": with OPENBLAS_CORETYPE=Haswell, OpenBLAS runs its AVX2 kernels even on an
    AVX-512 CPU (measured on an AMD EPYC with AVX-512: one-thread sgemm 123 vs 229 GFLOP/s), so the
    GEMM figures above and every GEMM-based kernel depend on it."""
    try:
        import scipy.linalg.cython_blas  # noqa: F401  (the BLAS Numba's np.dot calls)
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover
        return "unknown"
    seen = []
    for lib in threadpool_info():
        if lib.get("user_api") == "blas":
            name = f"{lib.get('internal_api')} {lib.get('architecture') or ''}".strip()
            if name not in seen:
                seen.append(name)
    return ", ".join(seen) or "unknown"


def main(cases: dict, build, script: str, title: str, describe=None):
    """Run every case alternately on both sides; print a table; optionally write JSON.

    ``cases`` maps a case name to a dict of record fields, including ``flops``
    (floating-point operations of one iteration, or None) and ``unit`` items per
    iteration (for images/s), plus any identifying keys for the JSON records.
    """
    ap = argparse.ArgumentParser(description=title)
    ap.add_argument("--worker", choices=["npdiff", "torch"], help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=2, help="threads per side (default 2)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds per case (default 5)")
    ap.add_argument("--iters", type=int, default=3, help="timed iterations per round (default 3)")
    ap.add_argument("--only", default="", help="comma-separated substrings: run only matching cases")
    ap.add_argument("--json", metavar="PATH", help="write one record per case to PATH")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall: elapsed time (default); cpu: the worker's CPU time, for a loaded machine "
                         "(compares work; use with --threads 1)")
    args = ap.parse_args()
    if args.worker:
        return _worker(build, args.worker, args.threads, args.clock)

    names = [c for c in cases if not args.only or any(s in c for s in args.only.split(","))]
    machine = describe_machine(args.threads)
    sides = {s: _Side(script, s, args.threads, args.clock) for s in ("npdiff", "torch")}
    if args.clock == "cpu":
        print("times are CPU times (process_time of each worker), not elapsed times")
    records = []
    if describe:
        describe(print)
    header = f"{'case':<44} {'npdiff ms':>10} {'torch ms':>10} {'np GF/s':>8} {'pt GF/s':>8} {'ratio':>6} {'compile s':>9}"
    print(header)
    print("-" * len(header))
    try:
        for name in names:
            times = {"npdiff": [], "torch": []}
            warm = {}
            for _ in range(args.rounds):
                for side in ("npdiff", "torch"):  # alternate A B A B
                    r = sides[side].run(name, args.iters)
                    times[side] += r["times"]
                    warm.setdefault(side, r["warmup_s"])
            med = {s: statistics.median(t) * 1e3 for s, t in times.items()}
            info = cases[name]
            flops = info.get("flops")
            gf = {s: (flops / (med[s] * 1e-3) / 1e9 if flops else float("nan")) for s in med}
            ratio = med["npdiff"] / med["torch"]
            print(f"{name:<44} {med['npdiff']:>10.2f} {med['torch']:>10.2f} {gf['npdiff']:>8.1f} "
                  f"{gf['torch']:>8.1f} {ratio:>6.2f} {warm['npdiff']:>9.2f}", flush=True)
            rec = {k: v for k, v in info.items() if k != "flops"}
            rec.update(case=name, npdiff_ms=med["npdiff"], torch_ms=med["torch"], ratio=ratio,
                       npdiff_gflops=gf["npdiff"], torch_gflops=gf["torch"], npdiff_first_call_s=warm["npdiff"],
                       machine=machine)
            records.append(rec)
    finally:
        for s in sides.values():
            s.close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
        print(f"wrote {len(records)} records to {args.json}")
    return records


def twin_model(side: str, npdiff_model, diffusers_class: str, config: dict, train: bool, lr: float = 1e-4):
    """The model of one side with npdiff's weights (``npdiff_model`` was built with a fixed seed),
    in train or eval mode, and an AdamW over its parameters: (model, optimizer)."""
    if side == "torch":
        import diffusers
        import torch

        state = {k: torch.from_numpy(np.array(v)) for k, v in npdiff_model.state_dict().items()}
        model = getattr(diffusers, diffusers_class)(**config)
        model.load_state_dict(state)
        model.train(train)
        return model, torch.optim.AdamW(model.parameters(), lr=lr)
    from npdiff.optim import AdamW

    model = npdiff_model.train(train)
    return model, AdamW(model.parameters(), lr=lr)


# ----------------------------------------------------------------------------
# per-op profile of one npdiff step


def _function_classes():
    """Every autograd Function subclass (the kernel-backed ones included)."""
    import npdiff.autograd as ag
    import npdiff.nn.functional  # noqa: F401  (defines the kernel-backed Functions)

    seen, todo = [], [ag.Function]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.append(sub)
                todo.append(sub)
    return seen


def profile_ops(step, title: str, steps: int = 3, threads: int = 2) -> dict:
    """Time each autograd Function's forward and backward by class name (and the AdamW step)
    over ``steps`` calls of ``step`` (npdiff alone, after one warm-up call); print a table and
    return {op: {"fwd", "bwd", "opt", "calls"}} in seconds per step. What is left of the step's
    wall time is Python, tape bookkeeping and data."""
    import numba

    from npdiff.optim import AdamW

    numba.set_num_threads(threads)
    step()  # warm-up: JIT compile outside the profile
    stats = defaultdict(lambda: [0, 0.0])  # (op, "fwd"/"bwd") -> [calls, seconds]

    def timed(fn, key):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                op = getattr(args[0], "op", None) if args else None  # e.g. UnaryFn's ctx.op = "silu"
                s = stats[(f"{key[0]}[{op}]", key[1]) if isinstance(op, str) else key]
                s[0] += 1
                s[1] += time.perf_counter() - t0
        return wrapper

    patched = []
    for cls in _function_classes():
        for attr, tag in (("forward", "fwd"), ("backward", "bwd")):
            own = cls.__dict__.get(attr)
            if isinstance(own, staticmethod):
                patched.append((cls, attr, own))
                setattr(cls, attr, staticmethod(timed(own.__func__, (cls.__name__, tag))))
    adamw_step = AdamW.step
    AdamW.step = timed(adamw_step, ("AdamW.step", "opt"))
    try:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        total = (time.perf_counter() - t0) / steps
    finally:
        AdamW.step = adamw_step
        for cls, attr, own in patched:
            setattr(cls, attr, own)
    ops = defaultdict(lambda: {"fwd": 0.0, "bwd": 0.0, "opt": 0.0, "calls": 0})
    for (name, tag), (calls, sec) in stats.items():
        ops[name][tag] += sec / steps
        ops[name]["calls"] += calls // steps if tag != "bwd" else 0
    rows = sorted(ops.items(), key=lambda kv: -(kv[1]["fwd"] + kv[1]["bwd"] + kv[1]["opt"]))
    accounted = sum(v["fwd"] + v["bwd"] + v["opt"] for _, v in rows)
    print(f"{title}: {total * 1e3:.1f} ms per step, mean of {steps}; load average {os.getloadavg()[0]:.2f}")
    print(f"{'op':<28} {'calls':>6} {'fwd ms':>9} {'bwd ms':>9} {'total ms':>9} {'share':>6}")
    for name, v in rows:
        tot = v["fwd"] + v["bwd"] + v["opt"]
        print(f"{name:<28} {v['calls']:>6} {v['fwd'] * 1e3:>9.1f} {(v['bwd'] + v['opt']) * 1e3:>9.1f} "
              f"{tot * 1e3:>9.1f} {tot / total:>6.1%}")
    rest = total - accounted
    print(f"{'(python, tape, data)':<28} {'':>6} {'':>9} {'':>9} {rest * 1e3:>9.1f} {rest / total:>6.1%}")
    return {**{k: dict(v) for k, v in rows}, "(python, tape, data)": {"fwd": rest, "bwd": 0.0, "opt": 0.0, "calls": 0},
            "total": total}
