"""The VAE trainer and its command line: the loss, learning, exact resume, run folder, eval and viz."""

import json
import os

import numpy as np
import pytest

import npdiff as nd
from npdiff.cli import main
from npdiff.io import load_safetensors
from npdiff.models import AutoencoderKL, DiagonalGaussianDistribution
from npdiff.training import CHECKPOINT_NAME, TrainConfig, VAETrainer, load_checkpoint, vae_defaults, vae_loss

TINY_FLAGS = ["--model", "vae", "--image-size", "8", "--channels", "8,16", "--norm-groups", "4", "--batch-size", "16",
              "--quiet"]


def _tiny(**changes) -> TrainConfig:
    base = {**vae_defaults(), "image_size": 8, "block_out_channels": (8, 16), "norm_num_groups": 4, "batch_size": 8,
            "steps": 4, "warmup_steps": 2, "log_every": 2, "checkpoint_every": 100, "sample_every": 100}
    return TrainConfig(**{**base, **changes})


@pytest.mark.parametrize("kind", ["l1", "mse"])
def test_vae_loss_terms(kind):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (3, 1, 4, 4))
    params = nd.tensor(rng.standard_normal((3, 4, 2, 2)), requires_grad=True)  # c = 2 latent channels
    post = DiagonalGaussianDistribution(params)
    recon = nd.tensor(rng.uniform(-1, 1, (3, 1, 4, 4)), requires_grad=True)
    beta = 0.5
    loss, terms = vae_loss(recon, x, post, kind, beta)
    d = recon.numpy() - x
    rec = np.abs(d).mean() if kind == "l1" else (d * d).mean()
    mu, lv = params.numpy()[:, :2], params.numpy()[:, 2:]
    kl = 0.5 * np.sum(mu**2 + np.exp(lv) - 1 - lv, axis=(1, 2, 3)).mean()
    np.testing.assert_allclose([terms["recon"], terms["kl"]], [rec, kl], rtol=1e-12)
    np.testing.assert_allclose(loss.item(), rec + beta * kl / 16, rtol=1e-12)  # KL per pixel of C·H·W = 16
    loss.backward()
    # ∂L/∂μ = β μ / (B · C·H·W)
    np.testing.assert_allclose(params.grad.numpy()[:, :2], beta * mu / (3 * 16), rtol=1e-12)
    with pytest.raises(ValueError, match="recon_loss must be 'l1' or 'mse'"):
        vae_loss(recon, x, post, "huber")


def test_cli_vae_learns_and_writes_its_run_folder(tmp_path, capsys):
    run = str(tmp_path / "vae")
    assert main(["train", *TINY_FLAGS, "--steps", "24", "--log-every", "4", "--warmup-steps", "4", "--lr", "3e-3",
                 "--sample-every", "24", "--output", run]) == 0
    losses = [json.loads(line)["loss"] for line in open(os.path.join(run, "log.jsonl"))]
    assert len(losses) == 6 and losses[-1] < 0.8 * losses[0], losses
    record = json.loads(open(os.path.join(run, "log.jsonl")).readline())
    assert {"loss", "recon", "kl", "grad_norm", "lr", "step_time"} <= set(record)
    for name in ("recon", "prior", "interp"):
        assert os.path.isfile(os.path.join(run, "samples", f"{name}_step_000024.png")), name
    assert os.path.isfile(os.path.join(run, "loss.png"))
    vae = AutoencoderKL.from_pretrained(os.path.join(run, "vae"))
    assert vae.downsampling_factor == 2 and vae.config.latent_channels == 4
    assert 0 < vae.config.scaling_factor != 1.0  # measured from the training latents

    capsys.readouterr()
    assert main(["eval", "--run", run, "--n", "40"]) == 0
    report = json.load(open(os.path.join(run, "eval.json")))
    assert {"psnr", "ssim", "kl_per_dim", "recon_accuracy"} <= set(report)
    assert report["n_images"] == 40 and report["latent_shape"] == [4, 4, 4] and report["kl_per_dim"] > 0
    assert 0 <= report["recon_accuracy"] <= 1 and report["ssim"] <= 1
    assert "kl_per_dim" in capsys.readouterr().out
    assert main(["viz", "latent", "--run", run, "--out", str(tmp_path / "latent.png")]) == 0
    assert os.path.isfile(tmp_path / "latent.png")
    assert main(["sample", "--run", run]) == 2
    assert "is a VAE run" in capsys.readouterr().err


def test_resume_is_exact(tmp_path):
    cfg = _tiny(recon_loss="mse", kl_weight=1e-3)
    VAETrainer(cfg, tmp_path / "straight", progress=False).train()
    VAETrainer(cfg, tmp_path / "split", progress=False).train(stop_after=2)
    assert load_checkpoint(str(tmp_path / "split" / CHECKPOINT_NAME)).step == 2
    assert main(["train", "--resume", str(tmp_path / "split"), "--quiet"]) == 0  # the CLI picks the VAE trainer
    a, b = (load_safetensors(str(tmp_path / d / CHECKPOINT_NAME)) for d in ("straight", "split"))
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    steps = [json.loads(line)["step"] for line in open(tmp_path / "split" / "log.jsonl")]
    assert steps == [2, 4]


def test_vae_config_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="recon_loss='l2'"):
        _tiny(recon_loss="l2")
    with pytest.raises(ValueError, match="kl_weight=-1"):
        _tiny(kl_weight=-1.0)
    assert main(["train", "--model", "vae", "--data", "moons", "--steps", "1", "--output", str(tmp_path / "m"),
                 "--quiet"]) == 2
    assert "model 'vae' needs images" in capsys.readouterr().err
    assert main(["train", *TINY_FLAGS, "--image-size", "6", "--channels", "8,16,16", "--steps", "1",
                 "--output", str(tmp_path / "n")]) == 2
    assert "image size 6 must be divisible by 4 for 3 VAE levels" in capsys.readouterr().err
