"""The benchmark scripts run end to end and write the documented JSON records.

Speed itself is never asserted here (see benchmarks/); this only keeps the scripts working.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_kernels_benchmark_writes_records(tmp_path):
    pytest.importorskip("torch", reason="the benchmark times torch as the peer")
    out = tmp_path / "k.json"
    subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "kernels.py"), "--only", "linear",
         "--rounds", "1", "--iters", "1", "--json", str(out)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    records = json.loads(out.read_text())
    assert {r["pass"] for r in records} == {"fwd", "fwd+bwd"}
    for r in records:
        assert {"family", "workload", "pass", "npdiff_ms", "torch_ms", "ratio"} <= set(r)
        assert r["npdiff_ms"] > 0 and r["torch_ms"] > 0
        assert abs(r["ratio"] - r["npdiff_ms"] / r["torch_ms"]) < 1e-9
