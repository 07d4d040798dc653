"""Condition images and concept data for ControlNet and LoRA on the ``shapes`` dataset.

ControlNet conditions (one channel, (N, 1, 32, 32) float32 in [0, 1]) computed from what the
generator knows (``ShapesData.masks``) or from the pixels alone:

    mask     m = ∨_k mask_k                                  every object's pixels
    outline  m ∧ ¬erode(m)                                   the pixels of m with a 4-neighbour outside m
    edge     ‖(S_x ∗ g, S_y ∗ g)‖ / max, g = grey image      Sobel (1968) gradient magnitude,
             S_x = [[−1, 0, 1], [−2, 0, 2], [−1, 0, 1]], S_y = S_xᵀ, zero padding

LoRA concept data (``make_concept_shapes``): the ``shapes`` images with every object of one
colour repainted in a colour the dataset never uses (default "pink"), and that word in the
caption. The base model has never seen the word or the colour; the other attributes
(shape, size, position) stay the generator's ground truth, so the same attribute
classifiers score the result, and ``attributes`` marks the new colour as ``CONCEPT_INDEX``.
"""

from __future__ import annotations

import numpy as np

from .data import COLOUR_NAMES, COLOURS, ShapesData, make_shapes, shapes_caption

CONTROL_KINDS = ("mask", "outline", "edge")
CONCEPT_COLOURS = {"pink": (1.00, 0.45, 0.80), "cyan": (0.10, 0.85, 0.90), "white": (0.95, 0.95, 0.95)}
CONCEPT_INDEX = len(COLOUR_NAMES)  # the concept colour's index in a concept set's attributes
SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=np.float32)


def control_mask(masks: np.ndarray) -> np.ndarray:
    """(N, K, H, W) bool object masks → (N, 1, H, W) float32: 1 where any object is."""
    m = np.asarray(masks, dtype=bool)
    if m.ndim != 4:
        raise ValueError(f"masks must be (N, objects, H, W), got shape {m.shape}")
    return m.any(axis=1, keepdims=True).astype(np.float32)


def control_outline(masks: np.ndarray) -> np.ndarray:
    """(N, K, H, W) masks → (N, 1, H, W) float32: the union's pixels with a 4-neighbour outside it
    (outside the image counts as outside)."""
    m = control_mask(masks)[:, 0] > 0  # (N, H, W)
    p = np.pad(m, ((0, 0), (1, 1), (1, 1)))  # (N, H+2, W+2), False border
    interior = p[:, :-2, 1:-1] & p[:, 2:, 1:-1] & p[:, 1:-1, :-2] & p[:, 1:-1, 2:]  # all four neighbours inside
    return (m & ~interior)[:, None].astype(np.float32)


def sobel_edges(images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) images in [−1, 1] → (N, 1, H, W) float32 Sobel gradient magnitude of the
    channel mean, each image divided by its maximum (an all-flat image gives zeros)."""
    x = np.asarray(images, dtype=np.float32)
    if x.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {x.shape}")
    g = np.pad(x.mean(axis=1), ((0, 0), (1, 1), (1, 1)))  # (N, H+2, W+2), zero padding
    H, W = x.shape[2:]
    gx = np.zeros((len(x), H, W), np.float32)
    gy = np.zeros_like(gx)
    for p in range(3):  # cross-correlation with the 3×3 kernels, as conv2d computes it
        for q in range(3):
            window = g[:, p:p + H, q:q + W]
            gx += SOBEL_X[p, q] * window
            gy += SOBEL_X[q, p] * window  # S_y = S_xᵀ
    mag = np.sqrt(gx * gx + gy * gy)
    peak = mag.reshape(len(x), -1).max(axis=1)[:, None, None]
    return (mag / np.where(peak > 0, peak, 1.0))[:, None].astype(np.float32)


def control_condition(kind: str, data: ShapesData) -> np.ndarray:
    """The (N, 1, 32, 32) condition of ``kind`` ("mask", "outline", "edge") for a shapes set."""
    if kind == "mask":
        return control_mask(data.masks)
    if kind == "outline":
        return control_outline(data.masks)
    if kind == "edge":
        return sobel_edges(data.images)
    raise ValueError(f"control kind must be one of {CONTROL_KINDS}, got {kind!r}")


def make_concept_shapes(n: int = 300, split: str = "train", seed: int = 0, concept: str = "pink",
                        replaces: str = "red") -> ShapesData:
    """``n`` shapes images whose ``replaces``-coloured objects are repainted in ``concept``.

    Images are drawn until ``n`` contain at least one such object (the others are skipped);
    the repainted pixels are the object's mask, with the generator's ±0.05 colour jitter.
    Captions name the new colour; ``attributes[..., 1]`` is ``CONCEPT_INDEX`` for it."""
    if concept not in CONCEPT_COLOURS:
        raise ValueError(f"concept must be one of {sorted(CONCEPT_COLOURS)}, got {concept!r}")
    if replaces not in COLOURS:
        raise ValueError(f"replaces must be one of {COLOUR_NAMES}, got {replaces!r}")
    old = COLOUR_NAMES.index(replaces)
    pool = make_shapes(max(8 * n, 64), split, seed)  # about 1/4 of images hold a given colour
    picked = [i for i in range(len(pool)) if (pool.attributes[i, :, 1] == old).any()][:n]
    if len(picked) < n:
        raise ValueError(f"only {len(picked)} of {len(pool)} images hold a {replaces} object; ask for fewer")
    rng = np.random.default_rng([seed, 77])
    images = pool.images[picked].copy()
    attributes = pool.attributes[picked].copy()
    masks = pool.masks[picked]
    rgb = np.asarray(CONCEPT_COLOURS[concept])
    for j in range(n):
        for k in range(2):
            if attributes[j, k, 1] != old:
                continue
            colour = np.clip(rgb + rng.uniform(-0.05, 0.05, 3), 0.0, 1.0) * 2.0 - 1.0  # [−1, 1]
            images[j][:, masks[j, k]] = colour[:, None].astype(np.float32)
            attributes[j, k, 1] = CONCEPT_INDEX
    names = (*COLOUR_NAMES, concept)
    captions = [shapes_caption(a, names) for a in attributes]
    return ShapesData(images, captions, attributes, masks)
