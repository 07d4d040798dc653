#!/usr/bin/env bash
# One shot on a machine with an NVIDIA GPU (about 5 minutes): install the gpu extra and a CUDA
# build of torch where the machine can, run the GPU tests for real, then time our CUDA kernels
# and a UNet2DModel training step against torch CUDA eager. Prints the table and JSON, and keeps
# everything in the folder given as $1 (default gpu_results/).
#
#   bash benchmarks/gpu.sh [OUT_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu_results}
mkdir -p "$OUT"
start=$SECONDS

if ! nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"; then
  echo "gpu.sh: no NVIDIA GPU visible (nvidia-smi failed)" >&2
  exit 1
fi

# 1. what the GPU needs: numba-cuda[cu12] + cupy-cuda12x (the gpu extra), and torch built for CUDA.
#    Offline machines keep what is installed; the checks below say what is missing.
python -m pip install -q -e ".[test,gpu]" 2>&1 | tail -2 || true
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  python -m pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128 2>&1 | tail -2 || true
fi
python - <<'PY' | tee "$OUT/versions.txt"
import importlib
for name in ("numba", "numba_cuda", "cupy", "torch", "diffusers"):
    try:
        m = importlib.import_module(name)
        print(f"{name} {getattr(m, '__version__', '?')}")
    except Exception as e:
        print(f"{name} MISSING ({type(e).__name__}: {e})")
import cupy, torch
print("cupy sees a GPU:", cupy.cuda.is_available(), "| torch sees a GPU:", torch.cuda.is_available())
PY

# 2. the GPU tests, for real: the cuda column of every table row against the reference and the
#    UNet step (tests/cuda), cupy arrays dispatched to the cuda column, the table harness's central
#    differences and torch oracle on the cuda column, the PTX compile check.
timeout 170 python -m pytest -q -p no:cacheprovider tests/cuda tests/kernels/test_cuda_ptx.py \
  "tests/kernels/test_table.py" -k "cuda" 2>&1 | tee "$OUT/tests.txt" | tail -25
echo "tests exit status: ${PIPESTATUS[0]}"

# 3. kernels and training steps: npdiff cuda column vs torch CUDA eager
timeout $(( 290 - (SECONDS - start) > 60 ? 290 - (SECONDS - start) : 60 )) \
  python benchmarks/gpu.py --rounds 5 --iters 10 --json "$OUT/gpu_bench.json" 2>"$OUT/bench_stderr.txt" \
  | tee "$OUT/gpu_bench.txt"
echo "gpu.sh: done in $(( SECONDS - start )) s; results in $OUT/"
