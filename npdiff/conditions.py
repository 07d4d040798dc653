"""Condition images and concept data for ControlNet and LoRA on the ``shapes`` dataset.

ControlNet conditions (one channel, (N, 1, 32, 32) float32 in [0, 1]) computed from what the
generator knows (``ShapesData.masks``) or from the pixels alone:

    mask     m = ∨_k mask_k                                  every object's pixels
    outline  m ∧ ¬erode(m)                                   the pixels of m with a 4-neighbour outside m
    edge     ‖(S_x ∗ g, S_y ∗ g)‖ / max, g = grey image      Sobel (1968) gradient magnitude,
             S_x = [[−1, 0, 1], [−2, 0, 2], [−1, 0, 1]], S_y = S_xᵀ, zero padding

LoRA concept data (``make_concept_shapes``): ``shapes`` images in which every object of one
colour or shape (``replaces``) becomes the concept, a word and a look the dataset never uses,
and the caption says so. The base model has never seen the word or the look; the other
attributes stay the generator's ground truth, so the same attribute classifiers score the
rest of the image. Two kinds of concept (``concept_kind``):

    colour  "pink", "cyan", "white": the object is repainted (``replaces`` a colour, default
            red); ``attributes[..., 1] = CONCEPT_INDEX``.
    shape   "ring" (an annulus, r/2 ≤ distance ≤ r): the image is drawn again with the object
            a *large* ring in its colour and place (``replaces`` a shape, default circle);
            ``attributes[..., 0] = CONCEPT_SHAPE_INDEX``. Always large: the shapes VAE (f = 2)
            keeps 98 % of large rings through its round trip but 23 % of small ones (a 7 px ring
            around a 3 px hole; docs/controlnet_lora.md), and no adapter draws past the VAE.
"""

from __future__ import annotations

import numpy as np

from .data import (COLOUR_NAMES, COLOURS, SHAPE_NAMES, SIZE_NAMES, ShapesData, _render_shapes_image, make_shapes,
                   shapes_caption)

CONTROL_KINDS = ("mask", "outline", "edge")
CONCEPT_COLOURS = {"pink": (1.00, 0.45, 0.80), "cyan": (0.10, 0.85, 0.90), "white": (0.95, 0.95, 0.95)}
CONCEPT_SHAPES = ("ring",)  # drawn by data._shape_coverage
CONCEPTS = (*CONCEPT_COLOURS, *CONCEPT_SHAPES)
CONCEPT_INDEX = len(COLOUR_NAMES)  # a concept colour's index in a concept set's attributes[..., 1]
CONCEPT_SHAPE_INDEX = len(SHAPE_NAMES)  # a concept shape's index in attributes[..., 0]
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


def concept_kind(concept: str) -> str:
    """"colour" or "shape": what the concept word names (the module docstring)."""
    if concept in CONCEPT_COLOURS:
        return "colour"
    if concept in CONCEPT_SHAPES:
        return "shape"
    raise ValueError(f"concept must be one of {CONCEPTS}, got {concept!r}")


def concept_replaces(concept: str, replaces: str | None = None) -> str:
    """The colour (colour concepts, default red) or shape (shape concepts, default circle) whose
    objects become the concept, checked against the concept's kind."""
    kind = concept_kind(concept)
    names = COLOUR_NAMES if kind == "colour" else SHAPE_NAMES
    replaces = replaces or names[0]
    if replaces not in names:
        raise ValueError(f"a {kind} concept ({concept!r}) replaces one of the {kind}s {names}, got {replaces!r}")
    return replaces


def concept_objects(concept: str, attributes: np.ndarray) -> np.ndarray:
    """(N, 2) bool: which objects of (N, 2, 4) attribute rows are the concept."""
    a = np.asarray(attributes)
    if concept_kind(concept) == "colour":
        return a[..., 1] == CONCEPT_INDEX
    return a[..., 0] == CONCEPT_SHAPE_INDEX


def make_concept_shapes(n: int = 300, split: str = "train", seed: int = 0, concept: str = "ring",
                        replaces: str | None = None) -> ShapesData:
    """``n`` shapes images whose ``replaces`` objects (a colour or a shape, ``concept_replaces``)
    become ``concept`` (module docstring).

    Images are drawn until ``n`` hold at least one such object (the others are skipped).
    A colour concept repaints the object's mask with the generator's ±0.05 colour jitter; a shape
    concept draws the image again (new background and jitter) with the object a large ring.
    Captions name the concept; ``concept_objects(concept, attributes)`` marks it."""
    kind = concept_kind(concept)
    replaces = concept_replaces(concept, replaces)
    column = 1 if kind == "colour" else 0
    old = (COLOUR_NAMES if kind == "colour" else SHAPE_NAMES).index(replaces)
    pool = make_shapes(max(8 * n, 64), split, seed)  # about 1/4 of images hold a given colour, 1/2 a shape
    picked = [i for i in range(len(pool)) if (pool.attributes[i, :, column] == old).any()][:n]
    if len(picked) < n:
        raise ValueError(f"only {len(picked)} of {len(pool)} images hold a {replaces} object; ask for fewer")
    stream = {"train": 0, "test": 1, "unseen": 2, "all": 3}[split]
    rng = np.random.default_rng([seed, 77, stream])
    attributes = pool.attributes[picked].copy()
    if kind == "shape":
        is_old = attributes[:, :, 0] == old  # (n, 2)
        attributes[is_old, 0] = CONCEPT_SHAPE_INDEX
        attributes[is_old, 2] = SIZE_NAMES.index("large")
        shape_names = (*SHAPE_NAMES, concept)
        images = np.empty((n,) + pool.images.shape[1:], np.float32)
        masks = np.empty((n,) + pool.masks.shape[1:], bool)
        for j in range(n):
            img, masks[j] = _render_shapes_image(rng, attributes[j], shape_names)
            images[j] = img * 2.0 - 1.0
        captions = [shapes_caption(a, shape_names=shape_names) for a in attributes]
        return ShapesData(images, captions, attributes, masks)
    images = pool.images[picked].copy()
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
