"""Smoke tests of the ``npdiff`` command line with tiny step counts, and its documented errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from npdiff.cli import SCHEDULER_NAMES, build_parser, main


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    run = str(tmp_path_factory.mktemp("cli") / "toy")
    assert main(["train", "--data", "8gaussians", "--steps", "20", "--toy-samples", "256", "--batch-size", "32",
                 "--hidden-dim", "16", "--sample-every", "20", "--output", run, "--quiet"]) == 0
    return run


def test_help_runs_as_a_module_and_explains_every_flag():
    out = subprocess.run([sys.executable, "-m", "npdiff.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for command in ("train", "sample", "eval", "viz", "bench"):
        assert command in out.stdout
    # every option of every sub-command carries a help text
    parser = build_parser()
    subparsers = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"][0]
    stack = list(subparsers.choices.values())
    while stack:
        p = stack.pop()
        for action in p._actions:
            if action.__class__.__name__ == "_SubParsersAction":
                stack += list(action.choices.values())
            elif action.dest != "help":
                assert action.help, f"{p.prog} {action.option_strings or action.dest} has no help"


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_sample_with_every_scheduler(toy_run, tmp_path, scheduler):
    out = str(tmp_path / f"{scheduler}.png")
    assert main(["sample", "--run", toy_run, "--scheduler", scheduler, "--steps", "4", "--n", "64",
                 "--out", out, "--npy", "--seed", "1"]) == 0
    pts = np.load(str(tmp_path / f"{scheduler}.npy"))
    assert os.path.isfile(out) and pts.shape == (64, 2) and np.all(np.isfinite(pts))


def test_sample_is_reproducible_from_the_seed(toy_run, tmp_path):
    for name in ("a", "b"):
        assert main(["sample", "--run", toy_run, "--scheduler", "ddpm", "--steps", "5", "--n", "16", "--npy",
                     "--out", str(tmp_path / f"{name}.png")]) == 0
    np.testing.assert_array_equal(np.load(str(tmp_path / "a.npy")), np.load(str(tmp_path / "b.npy")))


def test_resume_and_eval(toy_run, capsys):
    assert main(["train", "--resume", toy_run, "--steps", "25", "--quiet"]) == 0
    assert main(["eval", "--run", toy_run, "--steps", "5", "--n", "100"]) == 0
    report = json.load(open(os.path.join(toy_run, "eval.json")))
    assert report["step"] == 25 and report["n_samples"] == 100 and report["mmd2_floor"] > 0


def test_viz_commands(tmp_path):
    assert main(["viz", "schedules", "--out", str(tmp_path)]) == 0
    assert os.path.isfile(tmp_path / "schedules_alpha_bar.png") and os.path.isfile(tmp_path / "schedules_log_snr.png")
    assert main(["viz", "forward", "--digit", "7", "--columns", "4", "--out", str(tmp_path / "f.png")]) == 0
    assert main(["viz", "forward", "--image", str(tmp_path / "f.png"), "--size", "16",
                 "--out", str(tmp_path / "g.png")]) == 0
    from PIL import Image

    assert Image.open(tmp_path / "g.png").size[0] > Image.open(tmp_path / "g.png").size[1]  # a 2-row strip


@pytest.mark.parametrize("argv, message", [
    (["train", "--data", "/no/such/folder", "--steps", "1"], "cannot load dataset '/no/such/folder'"),
    (["train", "--resume", "/no/such/run"], "run folder '/no/such/run' does not exist"),
    (["sample", "--run", "/no/such/run"], "run folder '/no/such/run' does not exist"),
    (["eval", "--run", "/no/such/run"], "run folder '/no/such/run' does not exist"),
    (["viz", "forward", "--image", "/no/such.png"], "image file '/no/such.png' does not exist"),
    (["viz", "forward", "--digit", "12"], "--digit must be in 0"),
])
def test_bad_inputs_give_documented_errors(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"npdiff {argv[0]}: error:") and message in err, err


def test_bad_run_folder_and_bad_class(toy_run, tmp_path, capsys):
    assert main(["sample", "--run", str(tmp_path)]) == 2
    assert "is not a run folder: config.json is missing" in capsys.readouterr().err
    assert main(["sample", "--run", toy_run, "--class", "3", "--steps", "2"]) == 2
    assert "--class needs a class-conditional run" in capsys.readouterr().err
    assert main(["train", "--data", "moons", "--prediction-type", "sample", "--model", "unet", "--steps", "1",
                 "--output", str(tmp_path / "x"), "--quiet"]) == 2
    assert "model 'unet' needs images" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse rejects an unknown scheduler itself
        main(["sample", "--run", toy_run, "--scheduler", "plms"])


def test_image_run_sample_trajectory_and_digits_eval(tmp_path, capsys):
    run = str(tmp_path / "digits")
    assert main(["train", "--image-size", "8", "--channels", "8,16", "--norm-groups", "4", "--steps", "3",
                 "--batch-size", "8", "--sample-every", "3", "--output", run, "--quiet"]) == 0
    assert os.path.isfile(os.path.join(run, "samples", "step_000003.png"))
    out = str(tmp_path / "seven.png")
    assert main(["sample", "--run", run, "--steps", "3", "--n", "5", "--class", "7", "--guidance-scale", "2",
                 "--trajectory", "3", "--npy", "--out", out]) == 0
    assert np.load(str(tmp_path / "seven.npy")).shape == (5, 1, 8, 8)
    np.testing.assert_array_equal(np.load(str(tmp_path / "seven_labels.npy")), np.full(5, 7))
    assert os.path.isfile(str(tmp_path / "seven_trajectory.png"))
    assert main(["eval", "--run", run, "--steps", "2", "--n", "20"]) == 0
    report = json.load(open(os.path.join(run, "eval.json")))
    assert {"conditional_accuracy", "fd", "fd_floor", "nn_distance"} <= set(report)
    assert "conditional_accuracy" in capsys.readouterr().out


def test_train_dit_on_digits_loss_decreases(tmp_path):
    """`npdiff train --model dit`: a class-conditional DiT (patch 2) on 8×8 digits trains through
    the same trainer, its run folder rebuilds the DiT, and the loss falls within 24 steps."""
    run = str(tmp_path / "dit")
    assert main(["train", "--model", "dit", "--image-size", "8", "--hidden-dim", "32", "--num-blocks", "2",
                 "--steps", "24", "--batch-size", "32", "--warmup-steps", "4", "--log-every", "1",
                 "--sample-every", "24", "--checkpoint-every", "24", "--output", run, "--quiet"]) == 0
    saved = json.load(open(os.path.join(run, "config.json")))
    assert saved["model_class"] == "DiTTransformer2DModel"
    assert saved["model_config"]["patch_size"] == 2 and saved["model_config"]["num_embeds_ada_norm"] == 10
    with open(os.path.join(run, "log.jsonl")) as f:
        losses = [r["loss"] for r in map(json.loads, f) if "loss" in r]
    assert len(losses) == 24
    # the zero-initialised DiT predicts 0 (loss = E‖v‖²/d); a few AdamW steps must bring it well below
    assert np.mean(losses[-6:]) < 0.85 * np.mean(losses[:6]), losses
