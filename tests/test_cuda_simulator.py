"""Runs tests/cuda — the kernel table's cuda column, a UNet training step on it, ``npdiff train
--device cuda`` on the simulated device — under Numba's
CUDA simulator, in a subprocess: the simulator must be chosen (NUMBA_ENABLE_CUDASIM=1) before
numba is first imported, and the rest of the suite keeps the real Numba."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_cuda_column_under_the_simulator():
    if importlib.util.find_spec("numba_cuda") is None:
        pytest.skip("numba-cuda is not installed (pip install -e '.[cuda-sim]'): the cuda column cannot run")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1",
               PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/cuda"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    summary = r.stdout.strip().splitlines()[-1]
    skipped = re.search(r"(\d+) skipped", summary)
    # everything ran but the one cupy test (more skips would mean the simulator was not on)
    assert re.search(r"\d+ passed", summary) and (skipped is None or skipped.group(1) == "1"), summary
