"""precompile.py: a second process compiles winograd4's driver into Numba's on-disk cache, and this process
then loads it (no second compile) for the argument types a convolution uses.

Run in a fresh interpreter with an empty cache folder of its own (the test process may hold the driver
already): start the helper, check that only one runs, wait for its signal, read the cache index as a warm
start would (nothing left to start), then run a convolution and its weight gradient and check that the
driver came from the cache (one cache hit, no miss: the helper compiled exactly the signature the kernels
call). Then the same for the backward kernels the helper compiles after the driver.
"""

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = textwrap.dedent("""
    import numpy as np
    from npdiff.kernels import precompile, winograd4
    driver = winograd4._winograd4_chunks
    assert not precompile.driver_cached(), "the cache folder is not empty"
    assert precompile.start(), "no helper started on a cold cache"
    assert not precompile.start(), "a second helper started while one runs"
    precompile._FILL.clear()  # what the wait compiles meanwhile in a training run: not needed here
    assert precompile.wait(), "the helper did not compile the driver"
    assert not driver.signatures, "this process compiled the driver itself"
    assert precompile.driver_cached() and not precompile.start(), "a warm cache would start a helper again"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 16, 9, 7)).astype(np.float32)
    w = rng.standard_normal((24, 16, 3, 3)).astype(np.float32)
    out = np.empty((3, 24, 9, 7), np.float32)
    winograd4.winograd4_conv3x3(x, winograd4.weight_transform(w), np.zeros(24, np.float32), (1, 1), out)
    winograd4.winograd4_weight_grad(x, out, (1, 1))
    hits, misses = dict(driver.stats.cache_hits), dict(driver.stats.cache_misses)
    assert sum(hits.values()) == 1 and not misses, (hits, misses)
    assert precompile.finish(), "the helper failed after the driver"
    from npdiff.kernels import elementwise, norm, pooling
    tail = (norm._group_norm_backward_fast, pooling._nearest_backward_fast, elementwise.GRADS["silu"])
    precompile.compile_backward_tail(np.float32)  # the helper's calls, here: every kernel from the cache
    for kernel in tail:
        hits, misses = dict(kernel.stats.cache_hits), dict(kernel.stats.cache_misses)
        assert sum(hits.values()) == 1 and not misses, (kernel, hits, misses)
    print("ok")
""")


def test_helper_compiles_the_driver_that_the_convolution_then_loads(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), NPDIFF_NUMBA_CACHE="1", NPDIFF_PRECOMPILE="1",
               PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    launcher = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE", "SLURM_STEP_TASKS_PER_NODE")
    for name in launcher:
        env.pop(name, None)  # one process on the node, as a plain ``npdiff train``
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    assert not any(".tmp." in name for _, _, files in os.walk(tmp_path) for name in files)  # no half-written file
