"""The training device without a GPU: a clear error where "cuda" cannot run, and the CPU run's
deferred loss read (one host read per log line, NaN/Inf caught there). The device run itself is
tested under the CUDA simulator (tests/cuda/test_train_cuda.py)."""

import json

import numpy as np
import pytest

import npdiff as nd
from npdiff import backend, cli
from npdiff.training import TrainConfig, Trainer, TrainingDiverged


@pytest.fixture
def no_gpu(monkeypatch):
    """This machine as one with neither a GPU (cupy) nor the CUDA simulator."""
    monkeypatch.setattr(backend, "_CUPY_OK", False)
    monkeypatch.delenv("NUMBA_ENABLE_CUDASIM", raising=False)


def test_cuda_without_gpu_or_simulator_names_what_is_missing(no_gpu, tmp_path, capsys):
    with pytest.raises(backend.DeviceUnavailableError, match=r"\[gpu\].*NUMBA_ENABLE_CUDASIM=1"):
        Trainer(TrainConfig(device="cuda", steps=1), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(backend.DeviceUnavailableError, match="cupy"):
        nd.nn.Linear(2, 3).to("cuda")
    assert cli.main(["train", "--device", "cuda", "--steps", "1", "--output", str(tmp_path / "cli")]) == 2
    err = capsys.readouterr().err
    assert "npdiff train: error: device 'cuda' requested" in err and "pip install -e '.[gpu]'" in err


def test_unknown_device_is_refused_by_name():
    with pytest.raises(ValueError, match="device='tpu'"):
        TrainConfig(device="tpu")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        backend.to_device(np.zeros(2), "tpu")
    assert backend.check_device("cpu") == "cpu" and backend.to_device(np.zeros(2), "cpu").dtype == np.float64


def _toy(**kw):
    fields = dict(data="moons", model="mlp", image_size=None, toy_samples=256, hidden_dim=16, num_blocks=1,
                  class_conditional=False, prediction_type="epsilon", batch_size=32, steps=6, warmup_steps=1,
                  log_every=3, sample_every=1000, checkpoint_every=1000, sample_steps=2)
    return TrainConfig(**{**fields, **kw})


def test_loss_is_read_once_per_log_line_and_a_nan_is_caught_there(tmp_path, monkeypatch):
    """The record of a step keeps its loss and grad norm as 0-d arrays; the log line reads the
    window's values at once (one read per line), and a NaN stops the run at that read."""
    reads = []
    original = Trainer._read_pending

    def counting(self):
        if getattr(self, "_pending", None):  # (the step-0 checkpoint comes before train() starts a window)
            reads.append([s for s, _ in self._pending])
            assert all(isinstance(r["loss"], np.ndarray) and r["loss"].shape == () for _, r in self._pending)
        original(self)

    monkeypatch.setattr(Trainer, "_read_pending", counting)
    Trainer(_toy(), tmp_path / "run", progress=False).train()
    assert reads == [[1, 2, 3], [4, 5, 6]]
    log = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    assert [r["step"] for r in log] == [3, 6] and all(np.isfinite(r["loss"]) for r in log)

    def poison(trainer, record):
        if trainer.step == 4:
            for p in trainer.model.parameters():
                p.data[...] = np.nan

    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 5.*last good checkpoint \(step 0\)"):
        Trainer(_toy(), tmp_path / "nan", progress=False).train(callback=poison)


def test_trainers_not_ported_to_the_device_refuse_it_by_name(tmp_path, monkeypatch):
    # every trainer of TrainConfig runs on cuda now (the adapters' trainer has no --device); a trainer
    # that declares the CPU only is refused by its name before anything is built
    class HostOnlyTrainer(Trainer):
        devices = ("cpu",)

    monkeypatch.setattr(backend, "gpu_kind", lambda: "simulator")  # as if "cuda" were there
    with pytest.raises(ValueError, match=r"HostOnlyTrainer \(model 'mlp'\) trains on cpu only.*--device cuda"):
        HostOnlyTrainer(_toy(device="cuda"), tmp_path / "host", progress=False)
    from npdiff.training.run import trainer_class

    for model in ("unet", "dit", "mlp", "classifier", "vae", "clip", "ldm"):
        assert "cuda" in trainer_class(TrainConfig(model=model, vae="v" if model == "ldm" else None)).devices, model


def test_resume_onto_a_missing_device_says_so(no_gpu, tmp_path, capsys):
    Trainer(_toy(steps=1), tmp_path / "run", progress=False).train()
    assert cli.main(["train", "--resume", str(tmp_path / "run"), "--steps", "2", "--device", "cuda", "--quiet"]) == 2
    assert "device 'cuda' requested" in capsys.readouterr().err
