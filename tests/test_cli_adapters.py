"""``npdiff adapt`` / ``sample --control --lora`` / ``eval`` on an adapter run, with a tiny base pipeline."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from npdiff.cli import main
from tests.pipelines.sd_stack import tiny_pipeline_32

TINY = ["--steps", "2", "--batch-size", "4", "--sample-steps", "1", "--log-every", "1", "--quiet"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_adapters") / "base"
    tiny_pipeline_32().save_pretrained(folder)
    return str(folder)


def test_controlnet_train_sample_eval(base, tmp_path):
    run = str(tmp_path / "cn")
    assert main(["adapt", "controlnet", "--base", base, "--control", "outline", "--train-examples", "8",
                 "-o", run, *TINY]) == 0
    assert os.path.isfile(os.path.join(run, "controlnet", "config.json"))
    mask = np.zeros((32, 32), np.uint8)
    mask[4:20, 8:24] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = str(tmp_path / "s.png")
    assert main(["sample", "--run", run, "--prompt", "a large red circle at the top left", "--control",
                 str(tmp_path / "mask.png"), "--steps", "2", "--out", out]) == 0
    assert Image.open(out).size[0] > 0
    assert main(["sample", "--run", run, "--prompt", "a red circle", "--steps", "1"]) == 2  # --control missing
    assert main(["eval", "--run", run, "--n", "2", "--steps", "1", "--batch", "2"]) == 0
    report = json.load(open(os.path.join(run, "eval.json")))
    assert {"iou_controlnet", "iou_baseline", "colour_accuracy_controlnet"} <= set(report)
    assert main(["adapt", "--resume", run, "--steps", "3", "--quiet"]) == 0
    assert main(["train", "--resume", run, "--steps", "4", "--quiet"]) == 0  # what the Ctrl-C message says
    assert json.load(open(os.path.join(run, "config.json")))["adapter"]["steps"] == 4


def test_lora_train_and_sample_with_a_file(base, tmp_path):
    run = str(tmp_path / "lora")
    assert main(["adapt", "lora", "--base", base, "--examples", "8", "--prior-examples", "4", "--rank", "2", "-o", run,
                 *TINY]) == 0
    lora = os.path.join(run, "pytorch_lora_weights.safetensors")
    out = str(tmp_path / "s.png")
    assert main(["sample", "--run", base, "--prompt", "a large red ring at the top right", "--lora", lora,
                 "--lora-scale", "0.5", "--steps", "2", "--out", out]) == 0
    assert os.path.isfile(out)
    assert main(["adapt", "lora", "--quiet"]) == 2  # no --base


def test_eval_passes_the_lora_scale(base, tmp_path, monkeypatch):
    """``npdiff eval --run LORA_RUN --lora-scale S`` evaluates with the LoRA at scale S."""
    import npdiff.training.adapter_eval as adapter_eval

    run = str(tmp_path / "lora")
    assert main(["adapt", "lora", "--base", base, "--examples", "4", "--prior-examples", "0", "--rank", "2", "-o", run,
                 *TINY]) == 0
    seen = {}
    monkeypatch.setattr(adapter_eval, "lora_report", lambda base, path, **kw: seen.update(kw) or {"concept": "ring"})
    assert main(["eval", "--run", run, "--lora-scale", "0.25", "--n", "2"]) == 0
    assert seen["scale"] == 0.25 and seen["concept"] == "ring" and seen["n"] == 2


def test_eval_passes_the_controlnet_scale(base, tmp_path, monkeypatch):
    """``npdiff eval --run CONTROLNET_RUN --controlnet-scale S`` draws with controlnet_conditioning_scale S."""
    import npdiff.training.adapter_eval as adapter_eval

    run = str(tmp_path / "cn")
    assert main(["adapt", "controlnet", "--base", base, "--train-examples", "4", "-o", run, *TINY]) == 0
    seen = []
    monkeypatch.setattr(adapter_eval, "_draw", lambda pipe, captions, *a, **kw: seen.append(kw) or
                        np.zeros((len(captions), 3, 32, 32), np.float32))
    assert main(["eval", "--run", run, "--controlnet-scale", "0.25", "--n", "2"]) == 0
    assert seen[0]["controlnet_conditioning_scale"] == 0.25 and "image" in seen[0]  # with the ControlNet
    assert "controlnet_conditioning_scale" not in seen[1]  # the base alone
    assert json.load(open(os.path.join(run, "eval.json")))["controlnet_conditioning_scale"] == 0.25
