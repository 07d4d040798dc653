"""Per-channel latent balance folded into the VAE's 1×1 convs (training/latent_balance.py).

The fold is exact algebra (z' = (z − m) / σ in quant_conv, z = σ z' + m in post_quant_conv), so
it is checked in float64 layer by layer against the affine written out, with tolerances from
the arithmetic: a K-term dot product plus a bias, each rounded, differs from the same sum
computed another way by at most (K + 3)·eps·(Σ|terms| + |bias|) (Higham, §3.1). The decoder
after post_quant_conv is the very same module, so agreement of its input is agreement of the
round trip; the whole round trip is also compared. Then: balanced channels have mean 0 and
std 1, the saved folder loads in diffusers and agrees, and the refusals name their cause.
"""

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npdiff import cli
from npdiff.autograd import no_grad
from npdiff.models import AutoencoderKL
from npdiff.training import TrainConfig
from npdiff.training.latent_balance import (_posterior_moments, balance_vae, balance_vae_folder, fold_latent_affine,
                                           latent_channel_stats)

EPS64 = np.finfo(np.float64).eps
C = 3  # latent channels of the tiny VAE
TINY = dict(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4, latent_channels=C, sample_size=8,
            scaling_factor=0.7)


def tiny_vae(seed: int = 0, dtype=np.float64) -> AutoencoderKL:
    """A tiny AutoencoderKL with every parameter perturbed (zero-initialised biases matter too)."""
    vae = AutoencoderKL(**TINY).to(dtype=dtype)
    rng = np.random.default_rng(seed)
    vae.load_state_dict({k: (v + 0.2 * rng.standard_normal(v.shape)).astype(dtype) for k, v in vae.state_dict().items()})
    return vae.eval()


def images(seed: int, n: int = 6) -> np.ndarray:
    return np.random.default_rng([seed, 1]).uniform(-1, 1, (n, 3, 8, 8))


def _conv1x1_bound(w, b, x, extra=0.0):
    """(K + 3)·eps·(Σ_k |w[o, k] x[k]| + |b[o]| + |extra|) per output element of a 1×1 conv: (B, O, h, w)."""
    k = w.shape[1]
    terms = np.einsum("ok,bkhw->bohw", np.abs(w[:, :, 0, 0]), np.abs(x))  # (B, O, h, w)
    return (k + 3) * EPS64 * (terms + np.abs(b)[None, :, None, None] + np.abs(extra))


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), log_scale=st.lists(st.floats(-2, 2), min_size=C, max_size=C),
       shift=st.lists(st.floats(-3, 3), min_size=C, max_size=C))
def test_fold_is_the_affine_and_keeps_the_round_trip(seed, log_scale, shift):
    vae, x = tiny_vae(seed % 1000), images(seed)
    scale, shift = np.exp(log_scale), np.asarray(shift)
    before = {k: v.copy() for k, v in vae.state_dict().items()}
    folded = fold_latent_affine(vae, shift, scale)
    assert folded.dtype == np.float64 and float(folded.config.scaling_factor) == 0.7  # the config is kept
    with no_grad():
        h = vae.encoder(vae._as_input(x, 3, "x")).numpy()  # (B, 2C, h, w): the shared encoder's output
        post, post2 = vae.encode(x).latent_dist, folded.encode(x).latent_dist
        mu, lv, mu2, lv2 = post.mean.numpy(), post.logvar.numpy(), post2.mean.numpy(), post2.logvar.numpy()
        s, m = scale[None, :, None, None], shift[None, :, None, None]
        w, b = vae.quant_conv.weight.data, vae.quant_conv.bias.data
        # μ' = (μ − m)/σ and log σ'² = log σ² − 2 log σ: both sides are rounded 2C-term sums (+ bias, shift)
        bound = _conv1x1_bound(w, b, h, extra=np.concatenate([shift, 2 * np.log(scale)])[None, :, None, None])
        assert np.all(np.abs(mu2 - (mu - m) / s) <= bound[:, :C] / s + 4 * EPS64 * np.abs(mu2))
        assert np.all(np.abs(lv2 - (lv - 2 * np.log(s))) <= bound[:, C:])
        # the decoder's input: P'z' + p' = P(σ z' + m) + p for z' = μ'
        z2 = mu2
        p_in, p_in2 = vae.post_quant_conv(s * z2 + m).numpy(), folded.post_quant_conv(z2).numpy()
        pw, pb = vae.post_quant_conv.weight.data, vae.post_quant_conv.bias.data
        bound = _conv1x1_bound(pw, pb, np.abs(s * z2) + np.abs(m)) * 3  # both sides, and σ z' + m rounded once
        assert np.all(np.abs(p_in2 - p_in) <= bound)
        # so the round trip is the old one; the decoder (a fixed deep function) sees inputs equal to ~10 ulps,
        # and on these O(1) weights its gain is O(10): 1e-9 of the image scale leaves a margin of ~10⁴
        r, r2 = vae.decode(mu).sample.numpy(), folded.decode(mu2).sample.numpy()
        np.testing.assert_allclose(r2, r, rtol=0, atol=1e-9 * np.abs(r).max())
    assert all(np.array_equal(v, before[k]) for k, v in vae.state_dict().items())  # ``vae`` is not modified


def test_balanced_channels_have_zero_mean_and_unit_std():
    """Each channel of z' ~ q'(z'|x) has mean 0 and variance Var μ'_c + E σ'²_c = 1 (law of total variance;
    the random tiny VAE has a posterior variance comparable to its means' spread, so both terms count)."""
    vae, x = tiny_vae(3), images(3, 12)
    m, sd = latent_channel_stats(vae, x)
    assert np.ptp(0.7 * sd) > 0.05  # the tiny VAE's channels are unbalanced to start with
    balanced, report = balance_vae(vae, x)
    with no_grad():
        post = balanced.encode(x).latent_dist
        mu, var = post.mean.numpy().astype(np.float64), post.var.numpy().astype(np.float64)  # (N, C, h, w)
    n = mu[:, 0].size
    # means over n values of terms of size ≲ 4, each off by a few eps after the float64 fold: n·eps·4 per channel
    tol = 4 * n * EPS64 * 4
    np.testing.assert_allclose(mu.mean(axis=(0, 2, 3)), 0.0, atol=tol)
    np.testing.assert_allclose(mu.var(axis=(0, 2, 3)) + var.mean(axis=(0, 2, 3)), 1.0, rtol=4 * tol)
    assert np.all(var.mean(axis=(0, 2, 3)) > 0.01)  # the posterior term is not negligible here
    np.testing.assert_allclose(report["scaled_std_after"], 1.0, rtol=4 * tol)
    np.testing.assert_allclose(report["scaled_std_before"], 0.7 * sd, rtol=1e-12)
    # the global factor is measured again on the balanced latents: 1 / their std, = 1 in exact arithmetic
    assert balanced.config.scaling_factor == pytest.approx(1.0, rel=4 * tol)
    np.testing.assert_allclose(report["shift"], m, rtol=1e-12)
    np.testing.assert_allclose(report["scale"], sd, rtol=1e-12)
    # and the statistics are the law of total variance over the posterior moments
    with no_grad():
        p0 = vae.encode(x).latent_dist
        mu0, var0 = p0.mean.numpy(), p0.var.numpy()
    np.testing.assert_allclose(sd ** 2, mu0.var(axis=(0, 2, 3)) + var0.mean(axis=(0, 2, 3)), rtol=1e-12)


def test_fold_and_balance_refuse_bad_input(tmp_path, capsys):
    vae = tiny_vae(0)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        fold_latent_affine(vae, np.zeros(2), np.ones(3))
    with pytest.raises(ValueError, match="finite and > 0"):
        fold_latent_affine(vae, np.zeros(3), np.array([1.0, 0.0, 1.0]))
    plain = AutoencoderKL(**{**TINY, "use_quant_conv": False})
    with pytest.raises(ValueError, match="use_quant_conv"):
        fold_latent_affine(plain, np.zeros(3), np.ones(3))
    # a log-variance inside the clamp [−30, 20] that −2 log σ_c would move across it: widen the means ten times
    # (σ_c > 1), then put each channel's lowest log σ² at −30 + ½ log σ_c (the posterior variance is then ~e⁻³⁰,
    # so σ_c is the means' spread alone), which −2 log σ_c takes below −30
    x = images(0)
    wide = fold_latent_affine(vae, np.zeros(C), np.full(C, 0.1))
    mu, logvar = _posterior_moments(wide, x)
    sd = mu.std(axis=(0, 2, 3))
    assert np.all(sd > 1)
    state = wide.state_dict()
    state["quant_conv.bias"] = state["quant_conv.bias"] + np.r_[np.zeros(C), -30.0 - logvar.min(axis=(0, 2, 3))
                                                                + 0.5 * np.log(sd)]
    wide.load_state_dict(state)
    with pytest.raises(ValueError, match="across the clamp"):
        balance_vae(wide, x)
    # folders: a new one only, and images needed when the source is not a run folder
    src = str(tmp_path / "src")
    tiny_vae(1, np.float32).save_pretrained(src)
    with pytest.raises(ValueError, match="pass the images"):
        balance_vae_folder(src, str(tmp_path / "dst"))
    os.makedirs(tmp_path / "full")
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(ValueError, match="not empty"):
        balance_vae_folder(src, str(tmp_path / "full"), images(0))
    with pytest.raises(ValueError, match="latent_balance"):
        TrainConfig(model="unet", latent_balance=True)
    assert cli.main(["train", "--model", "unet", "--latent-balance", "-o", str(tmp_path / "u"), "--quiet"]) == 2
    assert "latent_balance=True" in capsys.readouterr().err  # the flag reaches the config
    assert TrainConfig.from_dict({"model": "vae"}).latent_balance is False  # old run configs load as trained


def test_balanced_folder_loads_in_diffusers_and_agrees(tmp_path):
    torch = pytest.importorskip("torch", reason="the oracle check needs torch")
    diffusers = pytest.importorskip("diffusers", reason="the oracle check needs diffusers")
    from tests.oracle import assert_close

    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    tiny_vae(2, np.float32).save_pretrained(src)
    x = images(2).astype(np.float32)
    report = balance_vae_folder(src, dst, x)
    assert json.load(open(os.path.join(dst, "balance.json")))["scale"] == report["scale"]
    ours = AutoencoderKL.from_pretrained(dst)
    ref = diffusers.AutoencoderKL.from_pretrained(dst).eval()
    assert ref.config.scaling_factor == pytest.approx(report["scaling_factor"], rel=1e-12)
    with no_grad(), torch.no_grad():
        post, post_ref = ours.encode(x).latent_dist, ref.encode(torch.from_numpy(x)).latent_dist
        assert_close(post.mean.numpy(), post_ref.mean.numpy(), "balanced mean")
        assert_close(post.logvar.numpy(), post_ref.logvar.numpy(), "balanced logvar")
        assert_close(ours.decode(post.mean).sample.numpy(), ref.decode(post_ref.mean).sample.numpy(), "decode")
    # and the source's round trip in float32: the fold rounds each weight once (relative eps32), so the decoder
    # input moves by ~K·eps32 of its scale; the same 2e-4 the oracle allows between two implementations
    with no_grad():
        old = AutoencoderKL.from_pretrained(src)
        assert_close(ours.decode(post.mean).sample.numpy(), old.decode(old.encode(x).latent_dist.mean).sample.numpy(),
                     "round trip")


def test_vae_run_exports_its_latent_balanced(tmp_path):
    """`npdiff train --model vae --latent-balance`: vae/ is the balanced fold of the EMA weights (the
    checkpoint keeps the trained ones), with balance.json; the prior grid uses the balanced prior."""
    from npdiff.training import load_checkpoint
    from npdiff.training.checkpoint import CHECKPOINT_NAME

    out = str(tmp_path / "vae")
    assert cli.main(["train", "--model", "vae", "--image-size", "8", "--channels", "8,16", "--norm-groups", "4",
                     "--batch-size", "8", "--steps", "2", "--sample-every", "2", "--latent-balance", "-o", out,
                     "--quiet"]) == 0
    report = json.load(open(os.path.join(out, "vae", "balance.json")))
    exported = AutoencoderKL.from_pretrained(os.path.join(out, "vae"))
    ema = load_checkpoint(os.path.join(out, CHECKPOINT_NAME)).ema
    assert not np.array_equal(exported.state_dict()["quant_conv.bias"], ema["quant_conv.bias"])  # folded
    for key in ("encoder.conv_in.weight", "decoder.conv_out.weight"):  # everything but the two 1×1 convs is as trained
        np.testing.assert_array_equal(exported.state_dict()[key], ema[key])
    np.testing.assert_allclose(report["scaled_std_after"], 1.0, rtol=1e-5)  # float32 fold: see test_t2i_stack
    assert os.path.isfile(os.path.join(out, "samples", "prior_step_000002.png"))
