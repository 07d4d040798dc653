"""Data-parallel training (npdiff/training/distributed.py).

Without MPI: the definitions that make N ranks × batch B equal one process × N·B are
exact — the sharded loader's batches and the sharded generator's draws, concatenated
over the ranks, are bit-identical to the single process's. With MPI (the ``dist``
extra): ``mpiexec -n 2`` runs of tiny models of every trainer match one process with
twice the batch, a 2-rank ``--resume`` is bit-exact, the CLI trains on 2 ranks, and a
rank that raises or silently dies ends the job with a message naming it instead of a
hang. The MPI tests skip with the reason when mpi4py or its MPI library is missing.
"""

import functools
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from npdiff.data import DataLoader
from npdiff.io import load_safetensors, read_jsonl
from npdiff.kernels import config as kernel_config
from npdiff.training import CHECKPOINT_NAME, TrainConfig, load_checkpoint, trainer_class
from npdiff.training.distributed import Distributed, ShardedGenerator, launcher_world_size

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(ROOT, "tests", "training", "dist_worker.py")
EPS32 = float(np.finfo(np.float32).eps)


# ----------------------------------------------------------------------------
# the definitions, exactly (no MPI needed)
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("hflip", [False, True])
def test_sharded_loader_sees_the_single_process_batches(hflip):
    data = np.random.default_rng(0).standard_normal((23, 1, 2, 3)).astype(np.float32)
    labels = np.arange(23)
    single = DataLoader(data, labels, 6, hflip=hflip, seed=5).infinite()
    ranks = [DataLoader(data, labels, 2, hflip=hflip, seed=5, num_replicas=3, rank=r) for r in range(3)]
    streams = [r.infinite() for r in ranks]
    for _ in range(9):  # 3 batches per epoch: crosses two epoch boundaries
        x, y = next(single)
        parts = [next(s) for s in streams]
        np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), x)
        np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), y)
    assert len({json.dumps(r.state_dict()) for r in ranks}) == 1  # one resumable position for all ranks


def test_sharded_loader_refuses_bad_shards():
    data = np.zeros((10, 2), np.float32)
    with pytest.raises(ValueError, match="rank must be in"):
        DataLoader(data, batch_size=2, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="drop_last=True"):
        DataLoader(data, batch_size=2, num_replicas=2, drop_last=False)
    with pytest.raises(ValueError, match="6 × 2 ranks"):
        DataLoader(data, batch_size=6, num_replicas=2)


def test_sharded_generator_slices_the_global_draws():
    single, shared = np.random.default_rng(3), [np.random.default_rng(3) for _ in range(2)]
    ranks = [ShardedGenerator(g, r, 2) for r, g in enumerate(shared)]
    # the single process draws each array for the global batch of 8; each rank keeps 4
    expect = [single.integers(0, 1000, size=8), single.standard_normal((8, 3), dtype=np.float32), single.random(8)]
    got = [[g.integers(0, 1000, size=4), g.standard_normal((4, 3), dtype=np.float32), g.random(4)] for g in ranks]
    for i, e in enumerate(expect):
        np.testing.assert_array_equal(np.concatenate([got[0][i], got[1][i]]), e)
    assert ranks[0].bit_generator.state == ranks[1].bit_generator.state == single.bit_generator.state
    with pytest.raises(ValueError, match="size="):
        ranks[0].standard_normal()


def test_one_rank_without_a_launcher(monkeypatch):
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(name, raising=False)
    assert launcher_world_size() == 1
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert launcher_world_size() == 4
    world = Distributed(None)
    assert (world.rank, world.world_size, world.is_root, world.distributed) == (0, 1, True, False)
    g = np.random.default_rng(0)
    assert world.sharded(g) is g
    assert world.average_gradients([], {"loss": 0.5}, stop=True) == ({"loss": 0.5}, True)
    monkeypatch.setenv("NPDIFF_DIST_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="NPDIFF_DIST_TIMEOUT"):
        Distributed(None)


def test_threads_per_rank_from_the_launcher(monkeypatch):
    for name in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE",
                 "SLURM_STEP_TASKS_PER_NODE", "SLURM_NODEID"):
        monkeypatch.delenv(name, raising=False)
    assert kernel_config.ranks_on_this_node() == 1
    monkeypatch.setenv("SLURM_STEP_TASKS_PER_NODE", "4(x2),3")
    monkeypatch.setenv("SLURM_NODEID", "2")
    assert kernel_config.ranks_on_this_node() == 3
    monkeypatch.setenv("MPI_LOCALNRANKS", "2")
    assert kernel_config.ranks_on_this_node() == 2
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert [kernel_config.threads_per_rank(n) for n in (1, 2, 3, 16, 32)] == [16, 8, 5, 1, 1]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})  # bound by the launcher
    assert kernel_config.threads_per_rank(4) == 3


# ----------------------------------------------------------------------------
# 2 ranks under mpiexec
# ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _find_mpiexec():
    """(path or None, why not): MPICH's mpiexec (Hydra) next to this Python (the mpich wheel's) or
    on PATH, if mpi4py can load MPI."""
    candidates = [os.path.join(os.path.dirname(sys.executable), "mpiexec"), shutil.which("mpiexec")]
    exe = next((c for c in candidates if c and os.path.isfile(c)), None)
    if exe is None:
        return None, "no mpiexec found: install the dist extra (pip install -e '.[dist]': mpi4py and mpich)"
    version = subprocess.run([exe, "--version"], capture_output=True, text=True)
    if "HYDRA" not in version.stdout + version.stderr:  # the launch flags below are Hydra's
        return None, f"{exe} is not MPICH's Hydra launcher; install the dist extra (mpi4py and mpich)"
    probe = subprocess.run([sys.executable, "-c", "from mpi4py import MPI"], capture_output=True, text=True)
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return None, f"mpi4py cannot load an MPI library ({reason}); install the dist extra (mpi4py and mpich)"
    return exe, ""


def _mpiexec():
    exe, why = _find_mpiexec()
    if exe is None:
        pytest.skip(why)
    return exe


def _launch(args, tmp_path, *, ranks=2, timeout=120, env=None, extra=()):
    environment = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    cmd = [_mpiexec(), *extra, "-n", str(ranks), sys.executable, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=environment, cwd=tmp_path)


def _workers(jobs, tmp_path, **kw):
    path = tmp_path / f"jobs{len(list(tmp_path.glob('jobs*.json')))}.json"
    path.write_text(json.dumps(jobs))
    return _launch([WORKER, str(path)], tmp_path, **kw)


def _tiny(model: str, batch: int, steps: int = 4) -> dict:
    config = dict(data="digits", image_size=8, steps=steps, batch_size=batch, warmup_steps=1, log_every=1,
                  checkpoint_every=1000, sample_every=1000, sample_steps=2, norm_num_groups=4,
                  block_out_channels=[8, 16], label_dropout=0.3)
    if model != "unet":
        config["model"] = model
    if model == "vae":
        config["latent_channels"] = 2
    if model == "dit":
        config.update(hidden_dim=32, num_blocks=1)
    return config


def _assert_matches_one_process(two_dir, one_dir, global_batch: int):
    """2 ranks × B against one process × 2B after several AdamW steps.

    Loss and gradient norm, every step: the same per-sample terms summed in another
    grouping (two half sums added), with weights that differ by rounding only: n·ε
    relative with n = 2B·D terms (D values per image), ×4 for the few layers of error.
    Weights and EMA: AdamW divides each gradient by its running RMS, so an element whose
    gradient is zero or tiny in exact arithmetic (the attention key bias: softmax ignores a
    constant added to every key) turns rounding noise into steps of up to lr, and a single
    element can drift by up to the movement Σ_s lr_s on either side: each element is held
    to 2·Σ_s lr_s, and the RMS over all elements to 1 % of Σ_s lr_s (rounding gives < 0.1 %;
    one different sample, timestep or noise draw changes most elements by O(Σ_s lr_s)).
    """
    log2 = list(read_jsonl(os.path.join(two_dir, "log.jsonl")))
    log1 = list(read_jsonl(os.path.join(one_dir, "log.jsonl")))
    assert [r["step"] for r in log2] == [r["step"] for r in log1]
    n = global_batch * 64  # 8×8 one-channel images: the loss is a mean of at most n terms
    for r2, r1 in zip(log2, log1):
        np.testing.assert_allclose(r2["loss"], r1["loss"], rtol=4 * n * EPS32, err_msg=f"step {r1['step']}")
        # the norm of the averaged gradient (before clipping): the same sums, the same bound
        np.testing.assert_allclose(r2["grad_norm"], r1["grad_norm"], rtol=4 * n * EPS32, err_msg=f"step {r1['step']}")
    movement = sum(r["lr"] for r in log1)  # Σ_s lr_s: how far AdamW moves an element, about
    a = load_safetensors(os.path.join(two_dir, CHECKPOINT_NAME))
    b = load_safetensors(os.path.join(one_dir, CHECKPOINT_NAME))
    assert sorted(a) == sorted(b)
    for group in ("model/", "ema/"):
        diff = np.concatenate([(a[k].astype(np.float64) - b[k]).ravel() for k in a if k.startswith(group)])
        assert np.abs(diff).max() <= 2 * movement, group
        assert np.sqrt(np.mean(diff**2)) <= 0.01 * movement, group


def _checkpoint_equal(a_dir, b_dir):
    a = load_safetensors(os.path.join(a_dir, CHECKPOINT_NAME))
    b = load_safetensors(os.path.join(b_dir, CHECKPOINT_NAME))
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    ma = load_checkpoint(os.path.join(a_dir, CHECKPOINT_NAME)).meta
    mb = load_checkpoint(os.path.join(b_dir, CHECKPOINT_NAME)).meta
    for key in ("step", "trainer_rng", "loader", "lr_schedule", "optimizer_scalars", "ema_hyper", "global_rng",
                "world_size"):
        assert ma[key] == mb[key], key


KINDS = ("vae", "dit", "classifier")


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory):
    """One ``mpiexec -n 2`` for several runs (process start-up is most of a tiny run's time):
    a UNet run straight and the same run stopped after 2 steps, a VAE, a DiT and a classifier
    run, and a run in which rank 1 asks to stop after step 2. Returns (folder, {run: records})."""
    tmp = tmp_path_factory.mktemp("two_ranks")
    jobs = [{"config": _tiny("unet", 4), "run_dir": str(tmp / "two")},
            {"config": _tiny("unet", 4), "run_dir": str(tmp / "split"), "stop_after": 2},
            *({"config": _tiny(k, 4, steps=3), "run_dir": str(tmp / f"{k}2")} for k in KINDS),
            {"config": _tiny("unet", 4, steps=50), "run_dir": str(tmp / "stop"), "fail_rank": 1, "fail_step": 2,
             "fail_how": "stop"}]
    out = _workers(jobs, tmp)
    assert out.returncode == 0, out.stderr[-3000:]
    records = {}
    for line in out.stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            records.setdefault(os.path.basename(record["run_dir"]), []).append(record)
    return tmp, records


def test_two_ranks_equal_one_process_and_resume_exactly(two_rank_runs):
    """UNet (class-conditional, label dropout): 2 ranks × 4 = 1 × 8; the run stopped after 2
    steps and resumed by a fresh mpiexec is bit-identical to the straight 2-rank run."""
    tmp, records = two_rank_runs
    assert sorted((r["rank"], r["world_size"], r["batch"]) for r in records["two"]) == [(0, 2, 4), (1, 2, 4)]
    if "NUMBA_NUM_THREADS" not in os.environ:  # each rank's pool: cores ÷ 2 ranks on this machine
        assert {r["numba_threads"] for r in records["two"]} == {kernel_config.threads_per_rank(2)}
    config = json.loads((tmp / "two" / "config.json").read_text())
    assert config["distributed"] == {"world_size": 2, "global_batch_size": 8}
    out = _workers([{"resume": True, "run_dir": str(tmp / "split")}], tmp)
    assert out.returncode == 0, out.stderr[-3000:]
    _checkpoint_equal(tmp / "two", tmp / "split")
    steps = [r["step"] for r in read_jsonl(str(tmp / "split" / "log.jsonl"))]
    assert steps == [1, 2, 3, 4]  # rank 0 alone logged, once per step
    cfg = TrainConfig(**_tiny("unet", 8))
    trainer_class(cfg)(cfg, tmp / "one", progress=False).train()
    _assert_matches_one_process(tmp / "two", tmp / "one", 8)
    # resuming with another number of ranks is refused, naming both
    from npdiff.training import resume

    with pytest.raises(ValueError, match="trained by 2 process"):
        resume(tmp / "split")


def test_every_trainer_runs_on_two_ranks(two_rank_runs):
    """VAE (the posterior's ε is sharded too), DiT and the noisy classifier: 2 ranks × 4 = 1 × 8."""
    tmp, records = two_rank_runs
    for k in KINDS:
        assert sorted(r["step"] for r in records[f"{k}2"]) == [3, 3]
        cfg = TrainConfig(**_tiny(k, 8, steps=3))
        trainer_class(cfg)(cfg, tmp / f"{k}1", progress=False).train()
        _assert_matches_one_process(tmp / f"{k}2", tmp / f"{k}1", 8)


def test_a_stop_on_one_rank_stops_every_rank_after_the_same_step(two_rank_runs):
    """Ctrl-C reaches the ranks at different moments: rank 1 asks after step 2, the request
    travels in step 3's all-reduce, and every rank stops after step 3; rank 0 saves it."""
    tmp, records = two_rank_runs
    assert sorted((r["rank"], r["step"], r["stopped"]) for r in records["stop"]) == [(0, 3, True), (1, 3, True)]
    assert load_checkpoint(str(tmp / "stop" / CHECKPOINT_NAME)).step == 3


def test_cli_trains_on_two_ranks(tmp_path):
    run = tmp_path / "cli"
    args = ["-m", "npdiff.cli", "train", "--image-size", "8", "--channels", "8,16", "--norm-groups", "4",
            "--steps", "2", "--batch-size", "4", "--warmup-steps", "1", "--sample-every", "1000", "--log-every", "1",
            "--output", str(run), "--quiet"]
    out = _launch(args, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("done: step 2") == 1  # rank 0 alone reports
    assert "on 2 ranks × batch 4" in out.stderr
    assert load_checkpoint(str(run / CHECKPOINT_NAME)).meta["world_size"] == 2


def test_a_launcher_that_mpi_cannot_see_is_refused(tmp_path):
    """A launcher's environment says 2 processes but MPI sees 1 (library and launcher do not match):
    refused with the reason, not trained as 2 unaware copies writing one run folder."""
    _mpiexec()
    env = {**os.environ, "OMPI_COMM_WORLD_SIZE": "2", "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, "-m", "npdiff.cli", "train", "--steps", "1", "-o", str(tmp_path / "r")],
                         capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert out.returncode == 2
    assert "the launcher started 2 processes but MPI sees 1" in out.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("how", ["raise", "exit"])
def test_a_failing_rank_ends_the_job_naming_it(tmp_path, how):
    """rank 1 fails after step 2. "raise": it tells rank 0 at once; "exit": it vanishes and rank 0
    finds out at the deadline (Hydra's own clean-up is switched off so that npdiff's is tested).
    The deadline, 8 s, leaves room for a loaded machine's skew between the ranks before that."""
    job = {"config": _tiny("unet", 4, steps=50),
           "run_dir": str(tmp_path / "run"), "fail_rank": 1, "fail_step": 2, "fail_how": how}
    out = _workers([job], tmp_path, timeout=90, env={"NPDIFF_DIST_TIMEOUT": "8"}, extra=["-disable-auto-cleanup"])
    assert out.returncode != 0
    expected = "rank 1 of 2 failed: RuntimeError: injected failure at step 2" if how == "raise" else \
        "rank(s) 1 of 2 did not arrive and do not answer"
    assert expected in out.stderr, out.stderr[-3000:]
    # rank 0 saved the last completed step on its way out (the run checkpoints only every 1000)
    assert load_checkpoint(str(tmp_path / "run" / CHECKPOINT_NAME)).step == 2

