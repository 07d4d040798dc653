"""Where does hue live in a shapes VAE's latent? Per-channel spreads and colour differences.

    python benchmarks/latent_channels.py --vae /work/runs/t2i-f/vae [--n 200] [--json out.json]

Renders ``--n`` one-object scenes (random shape, size, position, background) six times each,
once per colour, with the same random draws, so the six images differ only in colour (and
likewise three times each, once per shape, for comparison), encodes them with the VAE's
posterior mean μ(x) and reports per latent channel c, with s the global ``scaling_factor``:

    s·σ_c        the channel's std over 512 training images (the noise is N(0, 1) in every channel)
    s·Δ_colour   RMS over scenes and positions of μ_c minus the scene's mean over its six colours
    s·Δ_near     RMS of the differences of the near-hue pairs red/orange, orange/yellow, blue/purple
    s·Δ_shape    the same for the three shapes
    Δ/σ          Δ_colour / σ_c: the colour signal after per-channel balance (each σ_c → 1)
    share        Δ_colour,c² / Σ_c Δ_colour²: where the colour signal is

A colour difference d in a channel is drowned by the forward process once √(1 − ᾱ_t) ≫ √ᾱ_t·d,
so hue in a low-σ channel is lost at low noise, where the U-Net has little weight on it.
The VAE can be balanced (npdiff.training.latent_balance) and measured again with --vae.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

NEAR_PAIRS = (("red", "orange"), ("orange", "yellow"), ("blue", "purple"))


def render_variants(n: int, field: str, seed: int = 0) -> np.ndarray:
    """(n, k, 3, 32, 32) images in [-1, 1]: n one-object scenes, each drawn k times (k = 6 colours
    or 3 shapes) with identical random draws (background, jitter, colour noise), so that the k
    images of a scene differ only in ``field`` ("colour" or "shape")."""
    from npdiff.data import COLOUR_NAMES, SHAPE_NAMES, _render_shapes_image

    k = len(COLOUR_NAMES) if field == "colour" else len(SHAPE_NAMES)
    pick = np.random.default_rng([seed, 77])
    out = np.empty((n, k, 3, 32, 32), dtype=np.float32)
    for i in range(n):
        attrs = np.full((2, 4), -1, dtype=np.int64)
        attrs[0] = [pick.integers(3), pick.integers(6), pick.integers(2), pick.integers(4)]
        for j in range(k):
            attrs[0, 1 if field == "colour" else 0] = j
            img, _ = _render_shapes_image(np.random.default_rng([seed, 78, i]), attrs)  # same draws for every j
            out[i, j] = img * 2.0 - 1.0
    return out


def channel_report(vae, n: int = 200, seed: int = 0) -> dict:
    """The module docstring's table as {column: (C,) list}, plus the scaling factor."""
    from npdiff.data import COLOUR_NAMES, make_shapes
    from npdiff.training.vae_trainer import N_LATENT_STATS, encode_means

    s = float(vae.config.scaling_factor)
    train = make_shapes(None, "train").images[:N_LATENT_STATS]
    sigma = encode_means(vae, train).astype(np.float64).std(axis=(0, 2, 3))  # (C,)
    out = {"scaling_factor": s, "scaled_std": (s * sigma).tolist()}
    for field in ("colour", "shape"):
        x = render_variants(n, field, seed)  # (n, k, 3, 32, 32)
        mu = encode_means(vae, x.reshape(-1, *x.shape[2:])).astype(np.float64)
        mu = mu.reshape(*x.shape[:2], *mu.shape[1:])  # (n, k, C, h, w)
        dev = mu - mu.mean(axis=1, keepdims=True)  # each variant minus its scene's mean over the k variants
        rms = np.sqrt((dev ** 2).mean(axis=(0, 1, 3, 4)))  # (C,)
        out[f"scaled_{field}_diff"] = (s * rms).tolist()
        if field == "colour":
            out["colour_over_std"] = (rms / sigma).tolist()
            out["colour_share"] = (rms ** 2 / (rms ** 2).sum()).tolist()
            idx = [(COLOUR_NAMES.index(a), COLOUR_NAMES.index(b)) for a, b in NEAR_PAIRS]
            near = np.stack([mu[:, a] - mu[:, b] for a, b in idx], axis=1)  # (n, pairs, C, h, w)
            out["scaled_near_hue_diff"] = (s * np.sqrt((near ** 2).mean(axis=(0, 1, 3, 4)))).tolist()
            out["near_over_std"] = (np.sqrt((near ** 2).mean(axis=(0, 1, 3, 4))) / sigma).tolist()
    return out


def print_report(r: dict) -> None:
    c = len(r["scaled_std"])
    rows = [("s·σ_c", "scaled_std"), ("s·Δ_colour", "scaled_colour_diff"), ("s·Δ_near", "scaled_near_hue_diff"),
            ("s·Δ_shape", "scaled_shape_diff"), ("Δ_colour/σ_c", "colour_over_std"), ("Δ_near/σ_c", "near_over_std"),
            ("colour share", "colour_share")]
    print(f"scaling_factor s = {r['scaling_factor']:.4f}")
    print(f"{'':14s}" + "".join(f"{'ch ' + str(i):>9s}" for i in range(c)))
    for label, key in rows:
        print(f"{label:14s}" + "".join(f"{v:9.3f}" for v in r[key]))


def main(argv=None) -> int:
    from npdiff.models import AutoencoderKL
    from npdiff.training.latent_trainer import vae_folder

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vae", required=True, help="a VAE run folder or AutoencoderKL folder")
    p.add_argument("--n", type=int, default=200, help="scenes per comparison")
    p.add_argument("--json", default=None, help="also write the report here")
    args = p.parse_args(argv)
    report = channel_report(AutoencoderKL.from_pretrained(vae_folder(args.vae)).eval(), args.n)
    print_report(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
