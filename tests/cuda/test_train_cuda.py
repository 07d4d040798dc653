"""``npdiff train --device cuda`` on the simulated device (Numba's CUDA simulator): the run, its
host transfers, its checkpoint against the CPU run's, and resuming onto the device.

One tiny run of 2 steps per device, each in two invocations (``--stop-after 1``, then
``--resume``), so that the step-1 checkpoint can be compared with the CPU's and the second step
runs on a model restored onto the device. The simulator pays ~0.1–0.5 ms per GPU thread: the
UNet has one level of 2 channels on 4×4 digits, batch 1.
"""

import json
import os

import numpy as np
import pytest

from npdiff import backend, cli
from npdiff.training import Trainer, load_checkpoint
from npdiff.training.checkpoint import CHECKPOINT_NAME
from tests.cuda.device_runs import assert_first_steps_agree, recorded, train
from tests.models.test_unet_2d_reference_kernels import TERMS

FLAGS = ["--data", "digits", "--image-size", "4", "--channels", "2", "--norm-groups", "2", "--no-attention",
         "--batch-size", "1", "--steps", "2", "--warmup-steps", "1", "--log-every", "1", "--sample-every", "1000",
         "--checkpoint-every", "1000", "--seed", "0", "--quiet"]
LR = 2e-3  # TrainConfig's lr (reached after the 1 warm-up step)

# host → device copies of one DDPM step: the batch x₀ and its noise ε (the trainer), the timesteps t
# (the UNet's time embedding) and the labels y (the class embedding, after checking their range on
# the host), and the per-sample coefficients (B,) gathered on the host from the float64 schedule:
# √ᾱ_t and √(1−ᾱ_t) for q_sample, again for the v-prediction target
WRITES_PER_STEP = 2 + 1 + 1 + 2 + 2


def _run(out, device):
    """``npdiff train`` 1 step, keep that checkpoint, then ``--resume`` for step 2."""
    first = train(out, [*FLAGS, "--stop-after", "1"], device)
    return first, train(out, FLAGS, device, resume=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The CPU run and the device run, with the device run's host transfers: per training step, and
    per read of the pending losses (the one read of each log line)."""
    base = tmp_path_factory.mktemp("train")
    cpu = _run(base / "cpu", "cpu")
    with recorded(Trainer) as rec:
        gpu = _run(base / "cuda", "cuda")
    return {"cpu": cpu, "cuda": gpu, **rec, "dir": base}


def test_a_training_step_runs_on_the_cuda_column_and_reads_nothing_back(runs):
    assert runs["columns"] == [{"cuda"}] * 2  # every kernel of both steps, chosen by the arrays' type alone
    if backend.gpu_kind() != "simulator":
        pytest.skip("host transfers are counted on the simulated device only (cupy does not count them)")
    assert runs["steps"] == [{"reads": 0, "writes": WRITES_PER_STEP}] * 2
    assert runs["reads"] == [(1, 1), (1, 1)]  # log every step here: one read of one step's loss and grad norm


def test_device_checkpoint_equals_the_cpu_checkpoint(runs):
    (cpu, _), (gpu, _) = runs["cpu"], runs["cuda"]
    assert_first_steps_agree(cpu, gpu, (runs["dir"] / "cpu", runs["dir"] / "cuda"), LR, TERMS)


def test_resumed_onto_the_device_it_continues_the_cpu_run(runs):
    (_, cpu), (_, gpu) = runs["cpu"], runs["cuda"]
    assert cpu.step == gpu.step == 2
    for key in ("trainer_rng", "loader", "global_rng", "lr_schedule"):
        assert gpu.meta[key] == cpu.meta[key], key
    for group in ("model", "ema"):
        for name, v in getattr(gpu, group).items():
            assert type(v) is np.ndarray and np.all(np.isfinite(v)), name  # host copies, on disk as safetensors
    log = [json.loads(line) for line in open(runs["dir"] / "cuda" / "log.jsonl")]
    assert [r["step"] for r in log] == [1, 2]


def test_resume_restores_the_checkpoint_bit_exactly_on_the_device(runs):
    state = load_checkpoint(os.path.join(runs["dir"] / "cuda", CHECKPOINT_NAME))
    trainer = Trainer.resume(runs["dir"] / "cuda", progress=False)
    assert trainer.device == "cuda" and trainer.step == 2
    named = dict(trainer.model.named_parameters())
    for name, p in named.items():
        assert backend.device_of(p.data) == "cuda", name
        assert np.array_equal(backend.to_device(p.data, "cpu"), state.model[name]), name
    for s, name in zip(trainer.ema.shadow, named):
        assert backend.device_of(s) == "cuda" and np.array_equal(backend.to_device(s, "cpu"), state.ema[name])
    for i, st in trainer.optimizer.state.items():
        for key in ("exp_avg", "exp_avg_sq"):
            v = st[key]
            assert backend.device_of(v) == "cuda"
            assert np.array_equal(backend.to_device(v, "cpu"), state.optimizer["state"][f"{i}.{key}"])


def test_the_toy_mlp_trains_on_the_device_as_on_the_cpu(tmp_path):
    """The MLP denoiser makes its time code where the sample is (a host-side code would be refused
    by the device): 2 steps on the moons, the logged loss and grad norm as on the CPU; then each run
    resumed on the other device for a third step."""
    flags = ["--data", "moons", "--toy-samples", "64", "--hidden-dim", "8", "--num-blocks", "1", "--batch-size", "4",
             "--steps", "2", "--log-every", "1", "--sample-every", "1000", "--quiet"]
    logs = {}
    for device in ("cpu", "cuda"):
        assert cli.main(["train", *flags, "--device", device, "--output", str(tmp_path / device)]) == 0
        logs[device] = [json.loads(line) for line in open(tmp_path / device / "log.jsonl")]
    for device, other in (("cpu", "cuda"), ("cuda", "cpu")):
        assert cli.main(["train", "--resume", str(tmp_path / device), "--steps", "3", "--device", other, "--quiet"]) == 0
        logs[device] = [json.loads(line) for line in open(tmp_path / device / "log.jsonl")]
        assert json.load(open(tmp_path / device / "config.json"))["train"]["device"] == other
    assert [r["step"] for r in logs["cuda"]] == [r["step"] for r in logs["cpu"]] == [1, 2, 3]
    for cpu, gpu in zip(logs["cpu"], logs["cuda"]):
        for key in ("loss", "grad_norm"):  # a few layers of 8-wide sums of float32 products
            assert abs(gpu[key] - cpu[key]) <= 16 * 64 * np.finfo(np.float32).eps * max(1.0, abs(cpu[key])), key
