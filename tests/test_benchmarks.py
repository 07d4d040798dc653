"""The benchmark scripts run end to end and write the documented JSON records.

Speed itself is never asserted here (see benchmarks/); this only keeps the scripts working.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_benchmark(name):
    """benchmarks/NAME.py as a module (the folder is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", f"{name}.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


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



def test_unet_vs_dit_benchmark_writes_records(tmp_path):
    """benchmarks/unet_vs_dit.py: both models' step times from one process, FLOPs, equal-time steps.
    Run in this process (the subprocess would spend most of its time importing torch and diffusers)."""
    pytest.importorskip("diffusers", reason="the FLOPs are counted on diffusers' twin models")
    import numba

    bench = _load_benchmark("unet_vs_dit")
    out = tmp_path / "uvd.json"
    threads = numba.get_num_threads()
    try:
        bench.main(["--rounds", "1", "--steps", "1", "--sample-rounds", "1", "--sample-steps", "1",
                    "--dit-width", "32", "--dit-blocks", "1", "--unet-channels", "8,16", "--threads", str(threads),
                    "--json", str(out)])
    finally:
        numba.set_num_threads(threads)
    unet, dit = json.loads(out.read_text())
    assert unet["model"] == "UNet2DModel" and dit["model"] == "DiTTransformer2DModel"
    assert dit["model_config"]["num_attention_heads"] * dit["model_config"]["attention_head_dim"] == 32
    for r in (unet, dit):
        assert r["step_ms"] > 0 and r["sample_images_per_s"] > 0 and r["parameters"] > 0
        # forward + backward of a step costs more than the forward of its batch
        assert r["train_gflop_per_image"] > r["forward_gflop_per_image"] > 0
    assert unet["equal_time_steps"] == 2000
    assert dit["equal_time_steps"] == round(2000 * unet["step_ms"] / dit["step_ms"])


def test_flop_count_includes_attention():
    """The DiT's counted forward FLOPs equal the hand count: per block and token 12·E² multiply-adds
    in the linear layers (q, k, v, out: 4E²; MLP E→4E→E: 8E²) and 2·L·E in attention (QKᵀ and ·V),
    plus the per-sample conditioning and the patch embedding / final layer (torch's fused CPU
    attention kernel would count 0 for the attention part)."""
    pytest.importorskip("diffusers", reason="the FLOPs are counted on diffusers' twin models")
    from npdiff.training import TrainConfig
    from npdiff.training.run import RunInfo, dit_config

    bench = _load_benchmark("unet_vs_dit")
    E, blocks, S, p, B = 64, 2, 8, 2, 4
    config = dit_config(TrainConfig(model="dit", hidden_dim=E, num_blocks=blocks), 1, S, 10)
    info = RunInfo("DiTTransformer2DModel", config, None, (1, S, S), 10, 10, None)
    L = (S // p) ** 2
    tokens = blocks * L * (12 * E * E + 2 * L * E)  # multiply-adds of the token path, per image
    # per sample: each block's timestep MLP (256 → E → E) and adaLN (E → 6E); the final layer recomputes
    # block 0's c (one more timestep MLP) and its modulation (E → 2E)
    per_sample = blocks * (256 * E + E * E + E * 6 * E) + (256 * E + E * E) + E * 2 * E
    ends = L * (p * p * 1 * E) + L * (E * p * p * 1)  # patch embedding and proj_out_2
    _, forward = bench.training_flops(info, B)
    assert forward == 2 * B * (tokens + per_sample + ends)


def test_norm_floor_benchmark_writes_records(tmp_path):
    """benchmarks/norm_floor.py: group-norm kernels' GB/s beside the two copies, one record per shape."""
    import numba

    bench = _load_benchmark("norm_floor")
    out = tmp_path / "nf.json"
    threads = numba.get_num_threads()
    try:
        bench.main(["--threads", "1", "--repeats", "1", "--json", str(out)])
    finally:
        numba.set_num_threads(threads)
    records = json.loads(out.read_text())
    assert [r["shape"] for r in records[1:]] == [list(s) for s, _ in bench.SHAPES]
    for r in records:
        assert set(r["copy"]) == {"np.copyto", "cached copy"} and all(c["gb_s"] > 0 for c in r["copy"].values())
    for r in records[1:]:
        assert set(r["kernels"]) == {"group_norm fwd", "group_norm bwd", "gn+silu fwd", "gn+silu bwd"}
        for name, k in r["kernels"].items():
            moved = (2 if "fwd" in name else 3) * r["mbytes"] * 1e6  # bytes: x → y; g, x → dx
            assert abs(k["gb_s"] - moved / (k["best_ms"] * 1e-3) / 1e9) < 1e-6 * k["gb_s"]
