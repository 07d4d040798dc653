"""benchmarks/samplers.py's machinery: counted NFE, step choice, tables, partial JSON and resume.

The network is the closed-form ε-predictor of a Gaussian fitted to the digits
(tests/pipelines/closed_form.py), which counts its own calls: an oracle for the study's
wrapper count that needs no training and no JIT compile.
"""

import importlib.util
import json
import os
import sys

import numpy as np
import pytest

from npdiff.autograd import Tensor
from npdiff.data import load_digits
from npdiff.training import make_scheduler
from npdiff.training.run import RunInfo
from tests.pipelines.closed_form import GaussianEps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHED = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02,
         "prediction_type": "epsilon", "clip_sample": False}


def _load_study():
    spec = importlib.util.spec_from_file_location("sampler_study", os.path.join(ROOT, "benchmarks", "samplers.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


samplers = _load_study()


class GaussianDigitsModel:
    """``model(x, t, class_labels=…) -> Tensor``: the exact ε of N(mean, cov) of the digits (labels ignored)."""

    def __init__(self):
        x, _ = load_digits(16, "train")
        flat = x.reshape(len(x), -1).astype(np.float64)  # (N, 256)
        cov = np.cov(flat, rowvar=False) + 1e-2 * np.eye(flat.shape[1])
        self.eps = GaussianEps(flat.mean(0), cov, make_scheduler("ddpm", SCHED).alphas_cumprod)

    def __call__(self, x, t, class_labels=None):
        return Tensor(self.eps(np.asarray(x.data), t))


def _info():
    return RunInfo(model_class="GaussianDigits", model_config={}, scheduler_config=SCHED, sample_shape=(1, 16, 16),
                   num_classes=10, null_class=10, class_names=None)


@pytest.mark.parametrize("name", list(samplers.KNOWN_SAMPLERS))
def test_steps_for_nfe_picks_the_closest_count(name):
    spec = samplers.KNOWN_SAMPLERS[name]
    for target in (1, 2, 5, 10, 37, 1000):
        steps, count = samplers.steps_for_nfe(spec, SCHED, target)
        assert count == samplers.evaluations(spec, SCHED, steps)
        for other in (steps - 1, steps + 1):  # neither neighbour is closer (ties go to the smaller count)
            if 1 <= other <= SCHED["num_train_timesteps"]:
                c = samplers.evaluations(spec, SCHED, other)
                assert abs(count - target) < abs(c - target) or (abs(count - target) == abs(c - target)
                                                                   and count < c)
        if spec.scheduler == "heun":  # two calls per interval but the last (an Euler step to σ = 0)
            assert count == 2 * steps - 1
        else:
            assert count == target


def test_study_counts_nfe_writes_tables_and_resumes(tmp_path):
    model, info = GaussianDigitsModel(), _info()
    cells = samplers.parse_only(["ddim-eta1:5,10", "heun:5,10"])
    assert cells == [("ddim-eta1", 5), ("ddim-eta1", 10), ("heun", 5), ("heun", 10)]
    out = str(tmp_path / "study.json")
    meta = {"run": "closed-form", "step": 0, "n": 20, "guidance_scale": 2.0, "seed": 0}
    calls = []
    results = samplers.study(model, info, cells, out, n=20, guidance_scale=2.0, seed=0, meta=meta,
                             plot=str(tmp_path / "study.png"), say=lambda *a: calls.append(model.eps.calls))
    # the wrapper's count equals the closed-form model's own count, cell by cell
    per_cell = np.diff([0] + calls[1:])
    assert [c["nfe"] for c in results["cells"]] == [5, 10, 5, 9] == per_cell.tolist()
    assert [c["steps"] for c in results["cells"]] == [5, 10, 3, 5]
    saved = json.loads(open(out).read())
    assert saved["cells"] == json.loads(json.dumps(results["cells"]))
    for c in saved["cells"]:
        assert c["fd_ratio"] > 0 and np.isfinite(c["fd_ratio"]) and 0.0 <= c["conditional_accuracy"] <= 1.0
        assert abs(c["fd_ratio"] - c["fd"] / c["fd_floor"]) <= 1e-12 * c["fd_ratio"]
        assert sum(c["predicted_class_counts"]) == 20 and c["seconds"] > 0
    table = open(str(tmp_path / "study.md")).read().splitlines()
    rows = [line for line in table if line.startswith("| DDIM η = 1") or line.startswith("| Heun")]
    assert len(rows) == 6  # two samplers in each of the three tables
    assert all(len(r.strip("|").split("|")) == 3 for r in rows)  # label + NFE 5 + NFE 10
    assert "| sampler | NFE 5 | NFE 10 |" in table
    assert sum(r.count("[9]") for r in rows) == 3  # Heun's counted 9 beside the NFE 10 column
    assert os.path.getsize(tmp_path / "study.png") > 0

    # --resume runs nothing that is done; another n is refused by name
    before = model.eps.calls
    again = samplers.study(model, info, cells, out, n=20, guidance_scale=2.0, seed=0, meta=meta, resume=True,
                           say=lambda *a: None)
    assert model.eps.calls == before and len(again["cells"]) == 4 and len(again["invocations"]) == 2
    with pytest.raises(ValueError, match="exists"):
        samplers.study(model, info, cells, out, n=20, guidance_scale=2.0, seed=0, meta=meta, say=lambda *a: None)
    with pytest.raises(ValueError, match="n=20"):
        samplers.study(model, info, cells, out, n=30, guidance_scale=2.0, seed=0, meta={**meta, "n": 30},
                       resume=True, say=lambda *a: None)


class FirstInput:
    """Records the first x each sampling loop feeds the network (then answers like ``model``)."""

    def __init__(self, model):
        self.model, self.first = model, []

    def __call__(self, x, t, class_labels=None):
        self.first.append(np.asarray(x.data).copy())
        return self.model(x, t, class_labels)


def test_every_cell_starts_from_the_same_noise():
    """Common random numbers: each cell's x_T is the same draw, scaled by its sampler's σ_init."""
    info = _info()
    rec = FirstInput(GaussianDigitsModel())
    for name in ("ddpm", "ddim-eta1", "euler", "dpm++2m-sde"):
        first = len(rec.first)
        samplers.run_cell(rec, info, name, 5, n=10, guidance_scale=2.0, seed=7)
        rec.first[first + 1:] = []
    ddpm, ddim, euler, sde = (x[:10] for x in rec.first)  # the conditional half of the guided batch
    np.testing.assert_array_equal(ddim, ddpm)
    np.testing.assert_array_equal(sde, ddpm)  # DPM-Solver's inputs are unscaled, σ_init = 1
    # Euler: z·σ_max, fed as z·σ_max/√(σ_max² + 1): a positive multiple of the same z
    ratio = euler / ddpm
    np.testing.assert_allclose(ratio, np.median(ratio), rtol=1e-5)
    assert 0.9 < np.median(ratio) <= 1.0


def test_only_rejects_bad_items():
    with pytest.raises(ValueError, match="unknown sampler"):
        samplers.parse_only(["plms:10"])
    with pytest.raises(ValueError, match="integers"):
        samplers.parse_only(["heun:ten"])
    assert samplers.parse_only(None)[:2] == [("ddpm", 5), ("ddim-eta0", 5)]
    assert len(samplers.parse_only(None)) == len(samplers.SAMPLERS) * len(samplers.NFES)
