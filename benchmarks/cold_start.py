"""Cold start: how long the default ``npdiff train`` takes to reach its first training steps.

Each measurement is a fresh Python process running the CLI's default training (``TrainConfig()``,
digits, the default UNet) for a few steps with Numba's cache in a folder of this script's
choosing: an empty folder the first time (cold: every kernel the run uses is compiled) and the
same folder again (warm: compiled code is loaded from the cache). Printed per run: the import
time, the time to build the trainer (model, data, optimiser), the time of the first step
(compilation happens here), its CPU time, the median of the following steps, the CPU time of the
helper process that compiles the Winograd driver meanwhile (npdiff/kernels/precompile.py; 0 when
none was started), how long the run waited for it, and an estimate of the time to the first step on an
idle machine from the two processes' CPU clocks (``idle_estimate``), all in seconds. ``--breakdown`` lists what
the measured process compiled (the helper's driver is not in it).

    python benchmarks/cold_start.py [--steps 4] [--runs 1] [--json out.json]

The ``--worker`` mode is the measured process itself (one run, JSON on stdout).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def compile_profile():
    """Register and return a ``numba:compile`` listener whose ``records`` give, per compiled function,
    its signatures and exclusive CPU and wall seconds (a compile's time minus that of the compiles
    nested in it). Numba is imported here, so only a ``--breakdown`` run imports it early."""
    from numba.core import event

    class CompileProfile(event.Listener):
        def __init__(self):
            self.stack = []  # [name, signature, cpu0, wall0, nested cpu, nested wall]
            self.records = {}  # name -> {"signatures": [...], "cpu_s": float, "wall_s": float}

        def on_start(self, ev):
            fn = getattr(ev.data["dispatcher"], "py_func", None)
            name = f"{fn.__module__}.{fn.__qualname__}" if fn is not None else repr(ev.data["dispatcher"])
            sig = "(" + ", ".join(str(a) for a in ev.data["args"]) + ")"
            self.stack.append([name, sig, time.process_time(), time.perf_counter(), 0.0, 0.0])

        def on_end(self, ev):
            name, sig, cpu0, wall0, nested_cpu, nested_wall = self.stack.pop()
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            r = self.records.setdefault(name, {"signatures": [], "cpu_s": 0.0, "wall_s": 0.0})
            r["signatures"].append(sig)
            r["cpu_s"] += cpu - nested_cpu
            r["wall_s"] += wall - nested_wall
            if self.stack:
                self.stack[-1][4] += cpu
                self.stack[-1][5] += wall

    profile = CompileProfile()
    event.register("numba:compile", profile)
    return profile


def worker(steps: int, breakdown: bool = False) -> dict:
    profile = compile_profile() if breakdown else None
    t0 = time.perf_counter()
    from npdiff.kernels import config as _kernel_config  # noqa: F401  (the CLI's import order: pool policy first)
    from npdiff.training import TrainConfig, trainer_class

    t_import = time.perf_counter() - t0
    # steps far beyond this run: the end-of-training sample grid and checkpoint stay out of the timing
    config = TrainConfig(steps=10**6, sample_every=10**9, checkpoint_every=10**9)
    run_dir = tempfile.mkdtemp(prefix="npdiff-cold-")
    trainer = trainer_class(config)(config, run_dir, progress=False)
    t_build = time.perf_counter() - t0 - t_import
    marks = []

    def on_step(_trainer, _record):
        marks.append(time.perf_counter())

    cpu_marks = []

    def on_step_cpu(_trainer, _record):
        if not cpu_marks:
            cpu_marks.append(time.process_time())
        on_step(_trainer, _record)

    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.train(stop_after=steps, callback=on_step_cpu)
    cpu_first = cpu_marks[0] if cpu_marks else time.process_time()
    steps_s = [b - a for a, b in zip([start] + marks[:-1], marks)]
    from npdiff.kernels import precompile

    precompile.finish()  # the helper's exit (done already in a run of more than a few steps): its CPU time below
    children = os.times()
    out = {"import_s": t_import, "build_s": t_build, "first_step_s": steps_s[0],
           "first_step_cpu_s": cpu_marks[0] - cpu_start,
           "helper_cpu_s": children.children_user + children.children_system,  # precompile.py's helper
           "waited_s": precompile.WAITED_S[0],
           "idle_estimate_s": idle_estimate(precompile.CPU, cpu_first),
           "later_step_s": statistics.median(steps_s[1:]) if len(steps_s) > 1 else None,
           "to_first_step_s": t_import + t_build + steps_s[0]}
    if profile is not None:
        out["compiled"] = profile.records
    return out


def idle_estimate(cpu: dict, cpu_first: float) -> float:
    """Seconds from this process's start to the end of its first step on an idle machine with a core for
    each process, from CPU clocks: this process's CPU up to the end of its wait for the helper's driver, or the
    helper's CPU up to its line counted from the helper's start, whichever is later, plus this process's CPU
    after the wait. Without a helper, this process's CPU to the end of the step. On a loaded machine the CPU
    seconds are themselves inflated (shared caches), and kernels compiled twice because the helper lagged
    are counted: an upper estimate."""
    if "helper_ready" not in cpu:
        return cpu_first
    return max(cpu["wait_end"], cpu["start"] + cpu["helper_ready"]) + (cpu_first - cpu["wait_end"])


def measure(cache_dir: str, steps: int, breakdown: bool = False) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, __file__, "--worker", "--steps", str(steps)] + (["--breakdown"] if breakdown else []), env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"cold-start worker failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_breakdown(records: dict, top: int | None = None) -> None:
    """The compiled functions, costliest first: signatures, exclusive CPU and wall seconds."""
    rows = sorted(records.items(), key=lambda kv: -kv[1]["cpu_s"])
    total_cpu = sum(r["cpu_s"] for _, r in rows)
    total_wall = sum(r["wall_s"] for _, r in rows)
    n_sigs = sum(len(r["signatures"]) for _, r in rows)
    print(f"compiled: {len(rows)} functions, {n_sigs} signatures, {total_cpu:.2f} s CPU, {total_wall:.2f} s wall")
    print(f"{'cpu s':>6} {'wall s':>6} {'sigs':>4}  function: signatures")
    for name, r in rows[:top]:
        sigs = r["signatures"]
        shown = "; ".join(sigs) if len(sigs) <= 3 else "; ".join(sigs[:3]) + f"; … {len(sigs) - 3} more"
        print(f"{r['cpu_s']:6.2f} {r['wall_s']:6.2f} {len(sigs):4d}  {name.removeprefix('npdiff.')}: {shown}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4, help="training steps per run (first + later ones)")
    p.add_argument("--runs", type=int, default=1, help="cold/warm pairs, each with a fresh cache")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--breakdown", action="store_true",
                   help="list what each cold run compiled: functions, signatures, seconds (module docstring)")
    p.add_argument("--top", type=int, default=None, help="with --breakdown: only the N costliest functions")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.steps, args.breakdown)))
        return 0
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    print(f"{'run':<6} {'import':>7} {'build':>7} {'step 1':>7} {'cpu':>7} {'later':>7} {'to step 1':>10} "
          f"{'helper cpu':>10} {'waited':>7} {'idle est.':>9}  (s)")
    results = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="npdiff-numba-cache-") as cache:
            for kind in ("cold", "warm"):
                r = dict(measure(cache, args.steps, args.breakdown), run=kind)
                results.append(r)
                later = f"{r['later_step_s']:7.2f}" if r["later_step_s"] is not None else f"{'-':>7}"
                print(f"{kind:<6} {r['import_s']:7.2f} {r['build_s']:7.2f} {r['first_step_s']:7.2f} "
                      f"{r['first_step_cpu_s']:7.2f} {later} {r['to_first_step_s']:10.2f} {r['helper_cpu_s']:10.2f} "
                      f"{r['waited_s']:7.2f} {r['idle_estimate_s']:9.2f}", flush=True)
                if args.breakdown and (kind == "cold" or r["compiled"]):
                    print_breakdown(r["compiled"], args.top)
                elif args.breakdown:
                    print("compiled: nothing (every function came from the cache)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
