"""Train → sample → eval on two moons through the command line: the model must learn."""

import json
import os

import numpy as np

from npdiff.cli import main
from npdiff.metrics import toy_report
from npdiff.pipelines import sample
from npdiff.training import load_run, make_scheduler


def test_two_moons_train_sample_eval_learns(tmp_path, capsys):
    run = str(tmp_path / "moons")
    assert main(["train", "--data", "moons", "--steps", "1500", "--toy-samples", "4096", "--output", run,
                 "--sample-every", "1500", "--quiet"]) == 0
    for name in ("config.json", "checkpoint.safetensors", "log.jsonl", "loss.png", "samples/step_001500.png",
                 "ema_model/config.json", "ema_model/diffusion_pytorch_model.safetensors"):
        assert os.path.isfile(os.path.join(run, name)), name
    records = [json.loads(line) for line in open(os.path.join(run, "log.jsonl"))]
    assert records[-1]["step"] == 1500
    assert {"loss", "grad_norm", "lr", "step_time"} <= set(records[-1])
    assert np.mean([r["loss"] for r in records[-10:]]) < np.mean([r["loss"] for r in records[:2]])

    assert main(["sample", "--run", run, "--steps", "20", "--n", "500", "--npy"]) == 0
    pts = np.load(os.path.join(run, "samples_ddim_20.npy"))
    assert pts.shape == (500, 2) and np.all(np.isfinite(pts))

    assert main(["eval", "--run", run, "--steps", "50", "--n", "1000"]) == 0
    trained = json.load(open(os.path.join(run, "eval.json")))
    assert "mmd2_ratio" in capsys.readouterr().out

    # the same sampler on the untrained (freshly initialised) model
    untrained_model = load_run(run).info.build_model().eval()
    out = sample(untrained_model, make_scheduler("ddim", load_run(run).info.scheduler_config), (1000, 2),
                 generator=0, num_inference_steps=50)
    untrained = toy_report(out.samples, "moons", seed=0)
    assert trained["mmd2"] < 0.05 * untrained["mmd2"], (trained, untrained)
    assert trained["energy"] < 0.2 * untrained["energy"], (trained, untrained)
    assert trained["mmd2_ratio"] < 10.0, trained
