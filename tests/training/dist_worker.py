"""One rank of the data-parallel tests: ``mpiexec -n N python dist_worker.py JOBS.json``.

JOBS.json is a list of runs done one after the other by the same processes. Each has
``run_dir`` and either ``config`` (TrainConfig fields: start a new run) or
``resume: true`` (continue the run in ``run_dir`` from its checkpoint); optionally
``stop_after`` (steps of this invocation) and ``fail_rank`` / ``fail_step`` /
``fail_how`` ("raise": an exception on that rank after that step; "exit": the process
vanishes without a word, as if killed; "stop": that rank asks to stop, as Ctrl-C does).
"""

import json
import os
import sys

from npdiff.training import TrainConfig, resume, trainer_class


def run(job: dict) -> None:
    if job.get("resume"):
        trainer = resume(job["run_dir"], progress=False)
    else:
        config = TrainConfig(**job["config"])
        trainer = trainer_class(config)(config, job["run_dir"], progress=False)
    fail_rank, fail_step, how = job.get("fail_rank"), job.get("fail_step"), job.get("fail_how", "raise")

    def callback(t, record):
        if t.dist.rank == fail_rank and t.step == fail_step:
            if how == "exit":
                os._exit(3)  # no exception, no message: the other ranks must find out by themselves
            if how == "stop":
                t._stop_requested = True  # what the SIGINT handler does
                return
            raise RuntimeError(f"injected failure at step {t.step}")

    stopped = False
    try:
        trainer.train(stop_after=job.get("stop_after"), callback=callback)
    except KeyboardInterrupt:
        stopped = True
    import numba

    print(json.dumps({"rank": trainer.dist.rank, "world_size": trainer.dist.world_size, "step": trainer.step,
                      "numba_threads": numba.config.NUMBA_NUM_THREADS,
                      "batch": trainer.loader.batch_size, "run_dir": job["run_dir"], "stopped": stopped}), flush=True)


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        for job in json.load(f):
            run(job)
