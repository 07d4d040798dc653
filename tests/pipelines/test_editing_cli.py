"""``npdiff train --model classifier`` and the editing options of ``npdiff sample``, with tiny runs."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from npdiff.cli import main
from npdiff.training import Trainer
from npdiff.training.classifier import ClassifierTrainer, load_classifier

TINY = ["--channels", "8,16", "--norm-groups", "4", "--image-size", "8", "--batch-size", "8", "--sample-every", "100",
        "--quiet"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("editing")
    digits, clf, uncond = str(root / "digits"), str(root / "clf"), str(root / "uncond")
    assert main(["train", "--steps", "2", "--output", digits, *TINY]) == 0
    assert main(["train", "--steps", "1", "--unconditional", "--output", uncond, *TINY]) == 0
    assert main(["train", "--model", "classifier", "--steps", "2", "--output", clf, *TINY]) == 0
    image = str(root / "digit.png")
    Image.fromarray(np.tile(np.linspace(0, 255, 8).astype(np.uint8), (8, 1))).save(image)
    return digits, clf, image, uncond


def test_classifier_run_folder_and_resume(runs):
    _, clf, _, _ = runs
    for name in ("config.json", "checkpoint.safetensors", "log.jsonl", "accuracy.json", "ema_model"):
        assert os.path.exists(os.path.join(clf, name)), name
    report = json.load(open(os.path.join(clf, "accuracy.json")))
    assert report["step"] == 2 and all(0.0 <= report[f"accuracy_t{t}"] <= 1.0 for t in (0, 250, 750))
    model = load_classifier(clf)
    logits = model(np.zeros((3, 1, 8, 8), np.float32), np.array([0, 10, 999]))
    assert logits.shape == (3, 10)
    trainer = ClassifierTrainer.resume(clf, steps=3, progress=False)  # resumes as a classifier, one more step
    assert trainer.step == 2 and trainer.train()["step"] == 3


def test_sample_editing_options_write_pictures(runs, tmp_path):
    digits, clf, image, uncond = runs
    out = str(tmp_path / "inpaint.png")
    assert main(["sample", "--run", digits, "--inpaint", image, "--mask", "left", "--steps", "3", "--n", "2",
                 "--jump-length", "1", "--jump-n-sample", "2", "--out", out]) == 0
    assert Image.open(out).size[0] > Image.open(out).size[1]  # one row: input | mask | 2 results
    for run, flags in ((uncond, ["--classifier", clf, "--class", "2"]),  # an unconditional run, guided
                       (uncond, ["--inpaint", image, "--mask", "top", "--reconstruction-guidance", "30"]),
                       (digits, ["--img2img", image, "--strength", "0.5"]),  # no --class: the null class
                       (digits, ["--img2img", image, "--strength", "0.5", "--class", "3"]),
                       (digits, ["--invert", image, "--source-class", "1", "--class", "7"]),
                       (digits, ["--classifier", clf, "--class", "2", "--classifier-scale", "3"])):
        path = str(tmp_path / "edit.png")
        assert main(["sample", "--run", run, "--steps", "3", "--n", "2", "--out", path, *flags]) == 0
        assert os.path.isfile(path)
        os.remove(path)


def test_editing_errors(runs, capsys):
    digits, clf, image, uncond = runs
    assert main(["sample", "--run", uncond, "--img2img", image, "--class", "1", "--steps", "2"]) == 2
    assert "needs a class-conditional run" in capsys.readouterr().err
    assert main(["sample", "--run", digits, "--inpaint", image, "--steps", "2"]) == 2
    assert "needs --mask" in capsys.readouterr().err
    assert main(["sample", "--run", digits, "--classifier", clf, "--steps", "2"]) == 2
    assert "needs --class" in capsys.readouterr().err
    assert main(["sample", "--run", digits, "--classifier", digits, "--class", "1", "--steps", "2"]) == 2
    assert "is not a classifier run folder" in capsys.readouterr().err
    assert main(["sample", "--run", digits, "--invert", image, "--class", "1", "--steps", "2"]) == 2
    assert "--source-class" in capsys.readouterr().err
    assert main(["train", "--model", "classifier", "--data", "moons", "--steps", "1", "--output",
                 os.path.join(os.path.dirname(digits), "bad"), "--quiet"]) == 2
    assert "needs labelled images" in capsys.readouterr().err
    assert issubclass(ClassifierTrainer, Trainer)
