#!/usr/bin/env bash
# One shot on a machine with an NVIDIA GPU (about 5 minutes): install the gpu extra and a CUDA
# build of torch where the machine can, run the GPU tests for real, then time our CUDA kernels
# and a UNet2DModel training step against torch CUDA eager, then time `npdiff train --device cuda`
# (the whole run on the GPU) beside the same run on the CPU. Prints the tables and JSON, and keeps
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
timeout 150 python -m pytest -q -p no:cacheprovider tests/cuda tests/kernels/test_cuda_ptx.py \
  "tests/kernels/test_table.py" -k "cuda" 2>&1 | tee "$OUT/tests.txt" | tail -25
echo "tests exit status: ${PIPESTATUS[0]}"

# 3. kernels and training steps: npdiff cuda column vs torch CUDA eager
timeout $(( 200 - (SECONDS - start) > 45 ? 200 - (SECONDS - start) : 45 )) \
  python benchmarks/gpu.py --rounds 5 --iters 10 --json "$OUT/gpu_bench.json" 2>"$OUT/bench_stderr.txt" \
  | tee "$OUT/gpu_bench.txt"
# 4. the whole training step on the device: `npdiff train --device cuda` (weights, AdamW, EMA and
#    batches on the GPU; one host read per log line), 100 steps of the default digits UNet, timed
#    from its log beside 10 steps of the same run on the CPU (≤ 100 s together)
rm -rf "$OUT/train_cuda" "$OUT/train_cpu"
for dev in cuda cpu; do
  steps=$([ "$dev" = cuda ] && echo 100 || echo 10)
  limit=$([ "$dev" = cuda ] && echo 60 || echo 40)
  timeout "$limit" python -m npdiff.cli train --device "$dev" --steps "$steps" --log-every 5 --sample-every 100000 \
    --checkpoint-every 100000 --quiet --output "$OUT/train_$dev" 2>&1 | tail -3
done
python - "$OUT" <<'PY' | tee "$OUT/train.txt"
import json, sys
rows = {}
for dev in ("cuda", "cpu"):
    try:
        log = [json.loads(line) for line in open(f"{sys.argv[1]}/train_{dev}/log.jsonl")]
    except OSError:
        print(f"npdiff train --device {dev}: no log (failed or timed out)")
        continue
    if len(log) < 2:
        print(f"npdiff train --device {dev}: one log line only, no rate")
        continue
    # wall time between the first and last log lines (each line's host read waits for the device, so
    # this is the GPU's time, not the launches'); the first window, with the JIT compile, is left out
    rows[dev] = (log[-1]["elapsed"] - log[0]["elapsed"]) / (log[-1]["step"] - log[0]["step"])
    print(f"npdiff train --device {dev}: {1e3 * rows[dev]:.1f} ms/step (batch 32, digits 16×16 UNet, "
          f"steps {log[0]['step']}–{log[-1]['step']}), final loss {log[-1]['loss']:.4f}")
if len(rows) == 2:
    print(f"GPU speed-up of the training step: {rows['cpu'] / rows['cuda']:.1f}×")
PY
echo "gpu.sh: done in $(( SECONDS - start )) s; results in $OUT/"
