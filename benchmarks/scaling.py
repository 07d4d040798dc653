"""Weak scaling of data-parallel training: N ranks × 1 thread against 1 rank × 1 thread.

    python benchmarks/scaling.py [--ranks 2] [--batch 32] [--steps 20] [--warmup 3] [--rounds 2] [--json out.json]

Both sides train the default digits model (`npdiff train`'s class-conditional UNet,
channels 32/64, attention at 8×8, 16×16 images) with the same per-rank batch B, each
rank on one Numba thread (NUMBA_NUM_THREADS=1), through the real trainer (data, draws,
forward, backward, all-reduce, clipping, AdamW, EMA). The first ``--warmup`` steps
(JIT compile, first-touch allocation) are not timed; the sides alternate for
``--rounds`` rounds (1, N, 1, N, …) and each side's best round is kept, since other
jobs on the machine only ever make a round slower.

Printed:
  throughput      images per second: ranks · B · steps / time
  efficiency      throughput(N ranks) / (N · throughput(1 rank))    (1 = perfect weak scaling)
  allreduce       seconds per step inside the gradient all-reduce on rank 0 (waiting for
                  the slower rank included), and its share of the step
  transfer        the same all-reduce timed alone after a barrier (no waiting): the
                  communication cost the model in docs/distributed.md predicts
  CPU time        process CPU seconds per step on each rank: on a machine shared with
                  other jobs, the CPU-time ratio shows what the ranks cost themselves
                  (extra work, spinning while waiting) apart from the cores they did not get
  gradient bytes  the flat buffer reduced each step

State the machine's load (printed: os.getloadavg) next to any figure you quote.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(args) -> None:
    """One rank: train the default digits model for warmup + steps steps, report timings (rank 0)."""
    import numpy as np

    from npdiff.training import TrainConfig, trainer_class

    # one step more than timed: the callback stops the run before the last step's sample grid
    config = TrainConfig(batch_size=args.batch, steps=args.warmup + args.steps + 1, checkpoint_every=10**6,
                         sample_every=10**6, log_every=10**6)
    run_dir = tempfile.mkdtemp(prefix="npdiff-scaling-")
    try:
        trainer = trainer_class(config)(config, run_dir, progress=False)
        dist = trainer.dist
        stamps = {}

        def callback(t, record):
            if t.step == args.warmup:
                stamps["start"], stamps["cpu"] = time.perf_counter(), time.process_time()
                stamps["allreduce"] = dist.allreduce_seconds
            if t.step == args.warmup + args.steps:
                stamps["end"], stamps["cpu_end"] = time.perf_counter(), time.process_time()
                stamps["allreduce_end"] = dist.allreduce_seconds
                raise StopIteration  # skip the end-of-run grid and checkpoint

        try:
            trainer.train(callback=callback)
        except StopIteration:
            pass
        seconds = stamps["end"] - stamps["start"]
        params = trainer.optimizer.params
        n_values = sum(int(p.data.size) for p in params)
        transfer = None
        cpu = np.array([(stamps["cpu_end"] - stamps["cpu"]) / args.steps])  # CPU seconds per step, this rank
        if dist.distributed:  # every rank's CPU time; then the all-reduce alone, after a barrier
            from mpi4py import MPI

            everyone = np.empty(dist.world_size)
            dist._wait(dist.comm.Iallgather(cpu, everyone), "the CPU-time gather")
            cpu = everyone

            buf = np.zeros(n_values + len(params) + 2, np.float32)
            times = []
            for _ in range(10):
                dist._wait(dist.comm.Ibarrier(), "a barrier")
                t0 = time.perf_counter()
                dist._wait(dist.comm.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM), "the timed all-reduce")
                times.append(time.perf_counter() - t0)
            transfer = float(np.median(times))
        if dist.is_root:
            print(json.dumps({
                "ranks": dist.world_size, "batch": trainer.loader.batch_size, "steps": args.steps,
                "seconds": seconds, "images_per_s": dist.world_size * trainer.loader.batch_size * args.steps / seconds,
                "allreduce_s_per_step": (stamps["allreduce_end"] - stamps["allreduce"]) / args.steps,
                "transfer_s": transfer, "gradient_bytes": 4 * n_values, "parameters": n_values,
                "cpu_s_per_step": cpu.tolist(),
            }), flush=True)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def launch(ranks: int, args) -> dict:
    env = {**os.environ, "NUMBA_NUM_THREADS": "1",
           "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--batch", str(args.batch), "--steps",
           str(args.steps), "--warmup", str(args.warmup)]
    if ranks > 1:
        mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
        mpiexec = mpiexec if os.path.isfile(mpiexec) else shutil.which("mpiexec")
        if mpiexec is None:
            sys.exit("mpiexec not found: pip install 'npdiff[dist]' (mpi4py and mpich)")
        cmd = [mpiexec, "-n", str(ranks), *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--batch", type=int, default=32, help="per-rank batch (the default run's 32)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    load_before = os.getloadavg()
    best = {}
    for r in range(args.rounds):
        for ranks in (1, args.ranks):
            result = launch(ranks, args)
            print(f"round {r + 1}: {ranks} rank(s) × batch {result['batch']}: {result['images_per_s']:.1f} img/s, "
                  f"all-reduce {1e3 * result['allreduce_s_per_step']:.1f} ms/step "
                  f"(load {os.getloadavg()[0]:.2f})", flush=True)
            if ranks not in best or result["images_per_s"] > best[ranks]["images_per_s"]:
                best[ranks] = result
    one, many = best[1], best[args.ranks]
    efficiency = many["images_per_s"] / (args.ranks * one["images_per_s"])
    step = many["seconds"] / many["steps"]
    print(f"\ndefault digits UNet, {many['parameters']:,} parameters, gradient buffer "
          f"{many['gradient_bytes'] / 2**20:.2f} MiB; per-rank batch {many['batch']}, 1 thread per rank")
    print(f"1 rank:  {one['images_per_s']:.1f} img/s ({1e3 * one['seconds'] / one['steps']:.0f} ms/step)")
    print(f"{args.ranks} ranks: {many['images_per_s']:.1f} img/s ({1e3 * step:.0f} ms/step)")
    print(f"weak-scaling efficiency: {100 * efficiency:.1f} %")
    cpu_eff = one["cpu_s_per_step"][0] / max(many["cpu_s_per_step"])
    print(f"CPU seconds per step: 1 rank {one['cpu_s_per_step'][0]:.3f}; {args.ranks} ranks "
          f"{', '.join(f'{c:.3f}' for c in many['cpu_s_per_step'])} -> CPU-time efficiency {100 * cpu_eff:.1f} % "
          f"(what a quiet machine would give if the cores were free; spinning in the all-reduce counts)")
    print(f"all-reduce: {1e3 * many['allreduce_s_per_step']:.2f} ms/step = "
          f"{100 * many['allreduce_s_per_step'] / step:.1f} % of the step (waiting included); "
          f"alone after a barrier: {1e3 * many['transfer_s']:.2f} ms")
    print(f"load average: {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after (1-minute)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"one": one, "many": many, "efficiency": efficiency, "cpu_efficiency": cpu_eff,
                       "load_before": load_before, "load_after": os.getloadavg()}, f, indent=1)


if __name__ == "__main__":
    main()
