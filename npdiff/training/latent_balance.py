"""Per-channel latent balance, folded into a frozen VAE's 1×1 convolutions (diffusers-compatible).

Why. One global ``scaling_factor`` s makes the latents' *overall* std 1, but the channels of
a small VAE can have very different spreads (t2i-f's MSE VAE: 0.22 / 0.80 / 1.53 / 0.54 after
s). The forward process adds the same N(0, 1) noise to every channel, so a channel with std
0.22 is drowned at a signal-to-noise ratio 1/0.22² ≈ 21 times higher than one with std 1, and
the U-Net's loss barely weighs what it carries. docs/text_to_image.md, "Per-channel latent
balance", shows that hue lives mostly in such channels.

What. An affine map of each latent channel, z'_c = (z_c − m_c) / σ_c with m_c, σ_c the mean and
std of channel c of the latents z ~ q(z|x) over training images (σ_c² = Var μ_c + E σ²_post,c;
for a trained VAE the posterior variance is negligible), folded into the weights
so that nothing outside the VAE changes (diffusers' StableDiffusionPipeline reads no
per-channel fields; it only multiplies by ``scaling_factor``):

    quant_conv    (W, b) → the moments [μ, log σ²] = W h + b, c channels each. For c < C:
                  μ'_c      = (μ_c − m_c) / σ_c   : W'[c] = W[c] / σ_c,  b'[c] = (b[c] − m_c) / σ_c
                  log σ'²_c = log σ²_c − 2 log σ_c : W'[C + c] = W[C + c],  b'[C + c] = b[C + c] − 2 log σ_c
                  (a sample z' = μ' + σ' ε is then exactly (z − m) / σ for the same ε)
    post_quant_conv (P, p) → P z + p = P (σ ⊙ z' + m) + p:
                  P'[:, c] = P[:, c] · σ_c,  p' = p + P m

so decode'(z') = decode(σ ⊙ z' + m) = decode(z): the round trip decode'(encode'(x)) is the old
one up to rounding, and every channel of z' has mean 0 and std 1 on the statistics' images.
The global ``scaling_factor`` is then measured again from the data (1 / std of μ', ≈ 1).

The one caveat is the log-variance clamp [−30, 20] of ``DiagonalGaussianDistribution``: a
shifted log σ² that crosses it would change the posterior; ``balance_vae`` refuses such a VAE
by name (a VAE trained with β = 1e-6 has log σ² far inside it).

Tested in tests/training/test_latent_balance.py.
"""

from __future__ import annotations

import os

import numpy as np

from .. import backend
from ..models import AutoencoderKL
from .vae_trainer import N_LATENT_STATS

LOGVAR_CLAMP = (-30.0, 20.0)  # DiagonalGaussianDistribution's clamp (diffusers' too)


def latent_channel_stats(vae, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean m_c and std σ_c of the latents z ~ q(z|x) of ``images``, over (N, h, w): two (C,)
    arrays. By the law of total variance σ_c² = Var(μ_c) + E[σ²_post,c]: the spread of the posterior means
    plus the posterior's own variance (negligible for a trained VAE at β = 1e-6, not for an untrained one),
    so that the samples the U-Net trains on have std 1 per channel after the balance."""
    return _channel_stats(*_posterior_moments(vae, images))


def _channel_stats(mu: np.ndarray, logvar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``latent_channel_stats`` from the moments (N, C, h, w) of ``_posterior_moments``."""
    post_var = np.exp(np.clip(logvar, *LOGVAR_CLAMP))
    return mu.mean(axis=(0, 2, 3)), np.sqrt(mu.var(axis=(0, 2, 3)) + post_var.mean(axis=(0, 2, 3)))


def fold_latent_affine(vae, shift, scale, scaling_factor: float | None = None) -> AutoencoderKL:
    """A new AutoencoderKL whose latent is z' = (z − shift) / scale per channel and whose decoder
    takes z' (the module docstring's equations); ``vae`` is not modified. ``shift`` and ``scale``
    are (C,) arrays, ``scale`` > 0; the fold is computed in float64 and cast to the VAE's dtype.
    ``scaling_factor`` replaces the config's (None: kept)."""
    c = int(vae.config.latent_channels)
    shift, scale = np.asarray(shift, np.float64), np.asarray(scale, np.float64)
    if shift.shape != (c,) or scale.shape != (c,):
        raise ValueError(f"shift and scale must have shape ({c},) (latent_channels), got {shift.shape} and {scale.shape}")
    if not (np.all(np.isfinite(scale)) and np.all(scale > 0) and np.all(np.isfinite(shift))):
        raise ValueError(f"scale must be finite and > 0 and shift finite, got scale {scale} and shift {shift}")
    if vae.quant_conv is None or vae.post_quant_conv is None:
        raise ValueError("fold_latent_affine needs use_quant_conv and use_post_quant_conv (the 1×1 convs it folds "
                         "into); this VAE has them off")
    state = {k: np.asarray(backend.to_device(v, "cpu")) for k, v in vae.state_dict().items()}  # host copies
    dtype = state["quant_conv.weight"].dtype
    w = state["quant_conv.weight"].astype(np.float64)  # (2C, 2C, 1, 1): rows 0..C−1 give μ, C..2C−1 log σ²
    b = state["quant_conv.bias"].astype(np.float64)  # (2C,)
    w[:c] /= scale[:, None, None, None]
    b[:c] = (b[:c] - shift) / scale
    b[c:] -= 2.0 * np.log(scale)
    p = state["post_quant_conv.weight"].astype(np.float64)  # (C, C, 1, 1): p[o, i] multiplies z_i
    pb = state["post_quant_conv.bias"].astype(np.float64)  # (C,)
    pb = pb + p[:, :, 0, 0] @ shift  # p' = p + P m, with the old P
    p *= scale[None, :, None, None]  # P'[:, i] = P[:, i] · σ_i
    state.update({"quant_conv.weight": w.astype(dtype), "quant_conv.bias": b.astype(dtype),
                  "post_quant_conv.weight": p.astype(dtype), "post_quant_conv.bias": pb.astype(dtype)})
    config = {k: v for k, v in vae.config.items() if not k.startswith("_")}
    if scaling_factor is not None:
        config["scaling_factor"] = float(scaling_factor)
    out = AutoencoderKL(**config).to(dtype=dtype)  # float64 VAEs stay float64
    out.load_state_dict(state)
    return out.eval()


def balance_vae(vae, images: np.ndarray) -> tuple[AutoencoderKL, dict]:
    """Fold the per-channel balance measured on ``images`` into a copy of ``vae`` and set its global
    ``scaling_factor`` to 1 / std of the balanced latents (``latent_channel_stats``; ≈ 1).
    Returns (the balanced VAE, {"shift", "scale", "scaled_std_before", "scaled_std_after", "scaling_factor"})."""
    mu, logvar = _posterior_moments(vae, images)  # (N, C, h, w) each
    shift, scale = _channel_stats(mu, logvar)
    lo, hi = logvar.min(axis=(0, 2, 3)), logvar.max(axis=(0, 2, 3))  # (C,) each, before the clamp
    moved = ((lo >= LOGVAR_CLAMP[0]) & (lo - 2 * np.log(scale) < LOGVAR_CLAMP[0])) | \
            ((hi <= LOGVAR_CLAMP[1]) & (hi - 2 * np.log(scale) > LOGVAR_CLAMP[1]))
    if moved.any():
        bad = np.flatnonzero(moved).tolist()
        raise ValueError(f"balancing would move the posterior's log-variance of latent channels {bad} (range "
                         f"{lo[bad].round(1).tolist()} .. {hi[bad].round(1).tolist()}, shifted by −2 log σ = "
                         f"{(-2 * np.log(scale[bad])).round(2).tolist()}) across the clamp {LOGVAR_CLAMP}: the "
                         f"balanced VAE would not encode the same distribution")
    balanced = fold_latent_affine(vae, shift, scale)
    # the global factor, measured (not assumed) on the balanced latents: 1 / their std, ≈ 1
    _, after = latent_channel_stats(balanced, images)  # (C,), each ≈ 1
    factor = 1.0 / float(np.sqrt(np.mean(after ** 2)))  # the channels are centred: total var = mean of theirs
    balanced = fold_latent_affine(vae, shift, scale, scaling_factor=factor)
    old = float(vae.config.scaling_factor)
    report = {"shift": shift.tolist(), "scale": scale.tolist(), "scaled_std_before": (old * scale).tolist(),
              "scaled_std_after": (factor * after).tolist(), "scaling_factor": factor}
    return balanced, report


def _posterior_moments(vae, images: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """μ and the log-variance before the clamp of q(z|x) for ``images``, in float64 on the host: two (N, C, h, w)."""
    from ..autograd import no_grad

    c, out = int(vae.config.latent_channels), []
    with no_grad():
        for s in range(0, len(images), batch):
            x = vae._as_input(images[s:s + batch], vae.config.in_channels, "images")
            h = vae.quant_conv(vae.encoder(x))  # (B, 2C, h, w) = [μ, log σ²], as encode computes it
            out.append(np.asarray(backend.to_device(h.data, "cpu"), np.float64))
    moments = np.concatenate(out)
    return moments[:, :c], moments[:, c:]


def balance_vae_folder(src: str, dst: str, images: np.ndarray | None = None) -> dict:
    """Balance the VAE of ``src`` (a VAE run folder or an AutoencoderKL folder) into the NEW
    AutoencoderKL folder ``dst`` (refused if it exists and is not empty; ``src`` is never written),
    with ``balance.json`` (``balance_vae``'s report) beside the weights. ``images`` default to the
    first ``N_LATENT_STATS`` training images of the run's data (a run folder's config.json), as
    the trainer measures ``scaling_factor``. Returns the report."""
    from .. import io as nd_io
    from .config import TrainConfig
    from .latent_trainer import vae_folder
    from .run import load_train_data, read_run_config

    source = vae_folder(src)
    if os.path.exists(dst) and os.listdir(dst):
        raise ValueError(f"balance_vae_folder writes a new folder; {dst!r} exists and is not empty")
    if images is None:
        if os.path.abspath(source) == os.path.abspath(src):
            raise ValueError(f"{src!r} is an AutoencoderKL folder, not a VAE run folder: pass the images whose "
                             f"latents set the balance")
        config = TrainConfig.from_dict(read_run_config(src, "a VAE run folder")["train"])
        images = load_train_data(config).images[:N_LATENT_STATS]
    balanced, report = balance_vae(AutoencoderKL.from_pretrained(source).eval(), np.asarray(images, np.float32))
    balanced.save_pretrained(dst)
    nd_io.save_json(os.path.join(dst, "balance.json"), {"source": os.path.abspath(source), **report})
    return report


def main(argv=None) -> int:
    """``python -m npdiff.training.latent_balance SRC DST``: balance_vae_folder, with a printed summary."""
    import argparse

    p = argparse.ArgumentParser(description="Fold a per-channel latent balance into a copy of a trained VAE")
    p.add_argument("src", help="a VAE run folder (`npdiff train --model vae`, or a stack's vae/)")
    p.add_argument("dst", help="the new AutoencoderKL folder (must not exist or be empty)")
    args = p.parse_args(argv)
    r = balance_vae_folder(args.src, args.dst)
    fmt = lambda v: " / ".join(f"{x:.3f}" for x in v)  # noqa: E731
    print(f"scaled channel stds {fmt(r['scaled_std_before'])} -> {fmt(r['scaled_std_after'])} "
          f"(scaling_factor {r['scaling_factor']:.4f}); wrote {args.dst}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
