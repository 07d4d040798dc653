"""`npdiff train --model dit --vae DIR`: a class-conditional DiT on the digits VAE's latents,
through the latent trainer; sampling and eval decode through the run's VAE."""

import json
import os

import numpy as np
import pytest

from npdiff import cli
from npdiff.training import TrainConfig, load_run, trainer_class


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    """A 2-step digits VAE (f = 4: 16×16 → 4×4×4); enough to give the DiT latents to learn."""
    out = str(tmp_path_factory.mktemp("latent_dit") / "vae")
    assert cli.main(["train", "--model", "vae", "--steps", "2", "--batch-size", "8", "--sample-every", "100",
                     "-o", out, "--quiet"]) == 0
    return out


def test_dit_on_vae_latents_learns_samples_and_evals(vae_run, tmp_path):
    run_dir = str(tmp_path / "dit")
    assert cli.main(["train", "--model", "dit", "--vae", vae_run, "--hidden-dim", "32", "--num-blocks", "2",
                     "--steps", "30", "--batch-size", "32", "--lr", "2e-3", "--warmup-steps", "4", "--log-every", "1",
                     "--sample-every", "30", "--checkpoint-every", "30", "-o", run_dir, "--quiet"]) == 0
    run = load_run(run_dir)
    assert run.info.model_class == "DiTTransformer2DModel" and run.info.null_class == 10
    assert run.info.sample_shape == (4, 4, 4)  # 16×16 digits, f = 4, 4 latent channels
    cfg = run.info.model_config
    assert cfg["patch_size"] == 1 and cfg["in_channels"] == 4 and cfg["num_embeds_ada_norm"] == 10
    assert os.path.isfile(os.path.join(run_dir, "samples", "step_000030.png"))
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        losses = [r["loss"] for r in map(json.loads, f) if "loss" in r]
    assert len(losses) == 30
    # the zero-initialised DiT predicts v̂ = 0 (loss E‖v‖²/D = 1 for unit-variance latents); AdamW must
    # bring the loss well below that within 30 steps
    assert np.mean(losses[-6:]) < 0.85 * np.mean(losses[:6]), losses
    out = str(tmp_path / "s.png")
    assert cli.main(["sample", "--run", run_dir, "--n", "4", "--steps", "2", "--class", "3", "--out", out,
                     "--npy"]) == 0
    assert np.load(out.replace(".png", ".npy")).shape == (4, 1, 16, 16)  # decoded to pixels
    assert cli.main(["eval", "--run", run_dir, "--n", "20", "--steps", "2"]) == 0
    report = json.load(open(os.path.join(run_dir, "eval.json")))
    assert 0.0 <= report["conditional_accuracy"] <= 1.0 and np.isfinite(report["fd"])


def test_patch_size_flag_and_latent_choice(vae_run, tmp_path):
    """--patch-size overrides the default patch; a patch that does not divide the latent is refused."""
    run_dir = str(tmp_path / "p2")
    assert cli.main(["train", "--model", "dit", "--vae", vae_run, "--patch-size", "2", "--hidden-dim", "32",
                     "--num-blocks", "1", "--steps", "1", "--batch-size", "8", "--sample-every", "100",
                     "-o", run_dir, "--quiet"]) == 0
    assert load_run(run_dir).info.model_config["patch_size"] == 2
    config = TrainConfig(model="dit", vae=vae_run, patch_size=3, hidden_dim=32, num_blocks=1)
    with pytest.raises(ValueError, match="multiple of its patch size 3"):
        trainer_class(config)(config, str(tmp_path / "p3"), progress=False)


def test_latent_dit_resume_is_exact(vae_run, tmp_path):
    """3 steps + resume 3 steps == 6 steps straight: the latent trainer's exact resume holds for the DiT."""
    from npdiff.training.checkpoint import load_checkpoint

    common = ["--model", "dit", "--vae", vae_run, "--hidden-dim", "32", "--num-blocks", "1", "--steps", "6",
              "--batch-size", "8", "--checkpoint-every", "3", "--sample-every", "100", "--quiet"]
    split, straight = str(tmp_path / "split"), str(tmp_path / "straight")
    assert cli.main(["train", *common, "--stop-after", "3", "-o", split]) == 0
    assert cli.main(["train", "--resume", split, "--quiet"]) == 0
    assert cli.main(["train", *common, "-o", straight]) == 0
    a, b = load_checkpoint(os.path.join(split, "checkpoint.safetensors")), load_checkpoint(
        os.path.join(straight, "checkpoint.safetensors"))
    assert a.step == b.step == 6
    for k in b.model:
        np.testing.assert_array_equal(a.model[k], b.model[k], err_msg=k)


@pytest.mark.parametrize("fields, message", [
    (dict(model="unet", vae="somewhere"), "a frozen VAE is used by model 'ldm' or 'dit' only"),
    (dict(model="unet", patch_size=2), "only the DiT has patches"),
    (dict(model="dit", patch_size=0), "patch_size=0"),
])
def test_bad_latent_dit_configs_are_named(fields, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**fields)


def test_latent_flag():
    assert TrainConfig(model="dit", vae="v").latent and TrainConfig(model="ldm", vae="v").latent
    assert not TrainConfig(model="dit").latent and not TrainConfig().latent
