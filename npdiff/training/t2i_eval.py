"""What a text-to-image run on ``shapes`` is scored by (``npdiff eval`` on a stack or latent run).

For held-out prompts, images are generated and the fixed attribute classifier
(``metrics.ShapesClassifier``) checks each object's shape, colour, size and position
(``metrics.shapes_report``):

    seen     captions of the ``test`` split: attribute combinations that occur in training
    unseen   captions of the ``unseen`` split: every one names a held-out colour–shape pair
             (red triangle, green circle, blue square), so only composition can draw it

at each classifier-free guidance scale s (Ho & Salimans 2022, eq. 6), with the Fréchet
ratio FD(generated, real test) / FD(real train, real test) in ``metrics.shapes_features``.
The same initial latents are used at every scale, so the table isolates guidance.
"""

from __future__ import annotations

import time

import numpy as np

GUIDANCE_SCALES = (1.0, 2.0, 4.0, 7.5)
VAE_CEILING_N = 500  # held-out images whose round trip scores a stack's VAE (a few seconds)


def vae_ceiling(vae, n: int = VAE_CEILING_N, data_seed: int = 0) -> dict:
    """The frozen VAE's attribute ceiling (``vae_trainer.attribute_ceiling``) on the first ``n``
    test images: what the classifier still reads after decode(μ(x)), beside the real images."""
    from ..data import make_shapes
    from .vae_trainer import attribute_ceiling

    test = make_shapes(None, "test", data_seed)
    return attribute_ceiling(vae, test.images[:n], test.attributes[:n])


def generate(pipe, prompts: list[str], *, guidance_scale: float, steps: int, seed: int, batch: int = 100,
             progress: bool = False) -> np.ndarray:
    """One image per prompt, (N, 3, H, W) in [-1, 1]; the initial latents depend only on ``seed``."""
    f = pipe.vae_scale_factor
    size = pipe.unet.config.sample_size
    latents = np.random.default_rng(seed).standard_normal(
        (len(prompts), pipe.unet.config.in_channels, size, size)).astype(np.float32)
    out = []
    for s in range(0, len(prompts), batch):
        images = pipe(prompts[s:s + batch], num_inference_steps=steps, guidance_scale=guidance_scale,
                      latents=latents[s:s + batch], generator=np.random.default_rng([seed, s]), output_type="np",
                      height=size * f, width=size * f, progress=progress).images
        out.append(images.transpose(0, 3, 1, 2) * 2.0 - 1.0)  # (B, 3, H, W)
    return np.concatenate(out).astype(np.float32)


def t2i_report(pipe, *, n: int = 200, guidance_scales=GUIDANCE_SCALES, steps: int = 25, seed: int = 0,
               batch: int = 100, data_seed: int = 0, progress: bool = False) -> dict:
    """{"guidance": {str(s): {"seen": shapes_report, "unseen": shapes_report, "fd_ratio", ...}}, ...}
    for the first ``n`` captions of the test and unseen splits; also returns the generated images
    of the last scale under "images" (not JSON: popped by the caller)."""
    from ..data import make_shapes
    from ..metrics import shapes_classifier, shapes_fd_ratio, shapes_report

    clf = shapes_classifier()
    test, unseen = make_shapes(None, "test", data_seed), make_shapes(None, "unseen", data_seed)
    train = make_shapes(None, "train", data_seed)
    n = min(n, len(test), len(unseen))
    floor = train.images[np.random.default_rng(seed).permutation(len(train))[:n]]
    table, images = {}, {}
    for s in guidance_scales:
        t0 = time.perf_counter()
        row = {}
        for split, data in (("seen", test), ("unseen", unseen)):
            x = generate(pipe, list(data.captions[:n]), guidance_scale=float(s), steps=steps, seed=seed, batch=batch,
                         progress=progress)
            row[split] = shapes_report(x, data.attributes[:n], classifier=clf)
            images[(float(s), split)] = x
        row.update(shapes_fd_ratio(images[(float(s), "seen")], test.images[:n], floor))
        row["seconds"] = round(time.perf_counter() - t0, 1)
        table[f"{float(s):g}"] = row
    return {"guidance": table, "n_prompts": n, "steps": steps, "seed": seed,
            "classifier_real_test": clf.test_report, "classifier_real_unseen": clf.unseen_report,
            "images": images}


def format_table(report: dict) -> str:
    """The guidance table as Markdown: per scale, seen all-correct and per-attribute accuracies,
    unseen all-correct, Fréchet ratio."""
    lines = ["| guidance | seen all right | shape | colour | size | position | unseen all right | "
             "unseen shape | unseen colour | Fréchet ratio |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s, row in report["guidance"].items():
        a, u = row["seen"], row["unseen"]
        lines.append(f"| {s} | {a['all_correct']:.1%} | {a['shape_accuracy']:.1%} | {a['colour_accuracy']:.1%} | "
                     f"{a['size_accuracy']:.1%} | {a['position_accuracy']:.1%} | {u['all_correct']:.1%} | "
                     f"{u['shape_accuracy']:.1%} | {u['colour_accuracy']:.1%} | {row['fd_ratio']:.2f} |")
    return "\n".join(lines)
