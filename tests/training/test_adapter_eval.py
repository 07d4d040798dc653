"""The ControlNet / LoRA target measurements: IoU, the ground-truth colour classifier, the reports."""

import numpy as np

import pytest

from npdiff.conditions import CONCEPT_INDEX, CONCEPT_SHAPE_INDEX, concept_objects, control_mask, make_concept_shapes
from npdiff.data import COLOUR_NAMES, SIZE_NAMES, make_shapes
from npdiff.models import ControlNetModel
from npdiff.models.lora import add_lora, save_lora_weights
from npdiff.training.adapter_eval import (ColourCentroids, ConceptShapeClassifier, controlnet_report, foreground,
                                          lora_report, mask_iou, object_colours, vae_concept_ceiling)
from tests.pipelines.sd_stack import tiny_pipeline_32


@pytest.fixture(scope="module")
def ring_classifier():
    return ConceptShapeClassifier("ring", n=300)


def test_foreground_and_iou_on_ground_truth():
    """The generator's own images: the foreground matches the object masks closely (IoU > 0.9;
    only anti-aliased edge pixels differ), and IoU is 1 / 0 on identical / disjoint masks."""
    d = make_shapes(200, "test")
    target = control_mask(d.masks)[:, 0] > 0
    assert mask_iou(foreground(d.images), target).mean() > 0.9
    assert mask_iou(target, target).min() == 1.0
    assert mask_iou(target, np.zeros_like(target)).max() == 0.0


def test_colour_classifier_on_ground_truth():
    """Held-out real and concept images: the nearest-centroid colours are the generator's labels."""
    clf = ColourCentroids(n=300)
    for d in (make_shapes(200, "test"), make_concept_shapes(60, "test", concept="pink")):
        labels = d.attributes[:, :, 1]
        predicted = clf.predict(object_colours(d.images, d.masks))
        assert np.mean(predicted[labels >= 0] == labels[labels >= 0]) > 0.97
    assert (make_concept_shapes(60, "test", concept="pink").attributes[:, :, 1] == CONCEPT_INDEX).any()


def test_ring_concept_set():
    """Every circle becomes a large ring in the same colour and quadrant: the mask is an annulus
    (its centre pixel is background), the caption says "large <colour> ring"; nothing else changes kind."""
    d = make_concept_shapes(40, "test")
    ring = concept_objects("ring", d.attributes)
    assert ring.any(axis=1).all() and not (d.attributes[:, :, 0] == 0).any()  # no circle left
    assert (d.attributes[ring][:, 2] == SIZE_NAMES.index("large")).all()
    for i, k in zip(*np.nonzero(ring)):
        m = d.masks[i, k]
        ys, xs = np.nonzero(m)
        cy, cx = int(round(ys.mean())), int(round(xs.mean()))
        assert 80 < m.sum() < 120 and not m[cy, cx]  # π(6.5² − 3.25²) ≈ 100 px, the hole empty
        assert f"a large {COLOUR_NAMES[d.attributes[i, k, 1]]} ring" in d.captions[i]


def test_ring_classifier_on_ground_truth(ring_classifier):
    """Held-out real images: the five-class object classifier finds every ring, and the old
    shapes' quadrants keep their labels (empty, circle, square, triangle)."""
    from npdiff.training.adapter_eval import _quadrant_labels

    d = make_concept_shapes(60, "test")
    assert ring_classifier.concept_accuracy(d.images, d.attributes) > 0.97
    old = make_shapes(200, "test")
    assert np.mean(ring_classifier.predict(old.images) == _quadrant_labels(old.attributes)) > 0.97
    assert CONCEPT_SHAPE_INDEX + 1 not in ring_classifier.predict(old.images)


def test_reports_run_on_a_tiny_stack(tmp_path):
    """Both reports run end to end (random tiny models: only the bookkeeping is checked)."""
    base = tiny_pipeline_32()
    cn = ControlNetModel.from_unet(base.unet, conditioning_embedding_out_channels=(4, 8), conditioning_channels=1)
    r = controlnet_report(base, cn, n=2, steps=1, batch=2)
    assert 0 <= r["iou_baseline"] <= 1 and r["iou_controlnet"] == r["iou_baseline"]  # a fresh ControlNet: no change
    add_lora(base.unet, rank=2)
    path = save_lora_weights(tmp_path / "l.safetensors", unet=base.unet)
    r = lora_report(tiny_pipeline_32(), path, n=2, steps=1, batch=2, concept="pink",
                    classifier=ColourCentroids(n=60))
    assert r["old_accuracy_drop_points"] == 0.0 and r["merged_vs_unmerged"] == 0.0  # B = 0: the base model
    assert r["old_accuracy_drop_se_points"] == 0.0
    assert 0 < r["file_ratio"] < 0.2
    assert 0 <= r["concept_accuracy_vae_ceiling"] <= 1


class _RoundTrip:
    """A stand-in VAE (encode → .latent_dist.mode(), decode → .sample) applying ``f`` to the images."""

    def __init__(self, f):
        self.f = f

    def encode(self, x):
        mode = lambda: np.asarray(x)  # noqa: E731
        return type("Out", (), {"latent_dist": type("Dist", (), {"mode": staticmethod(mode)})})()

    def decode(self, z):
        return type("Out", (), {"sample": self.f(z)})()


def test_vae_concept_ceiling():
    """A lossless round trip keeps the concept colour (ceiling ≈ 1); one that paints every pixel
    of the concept colour in the replaced colour (red) — what a VAE that never saw it does — gives 0."""
    clf = ColourCentroids(n=300)
    d = make_concept_shapes(40, "test", concept="pink")
    assert vae_concept_ceiling(_RoundTrip(lambda z: z), d, clf, batch=16) > 0.97
    red = np.array([0.9, 0.1, 0.1], np.float32)[:, None, None] * 2 - 1

    def to_red(z):
        pink = np.abs(z - (np.array([1.0, 0.45, 0.8], np.float32)[:, None, None] * 2 - 1)).max(axis=1) < 0.15
        return np.where(pink[:, None], red, z)

    assert vae_concept_ceiling(_RoundTrip(to_red), d, clf, batch=16) == 0.0


def test_vae_concept_ceiling_of_a_shape(ring_classifier):
    """A round trip that fills every ring's hole with its colour (a VAE that only knows discs) gives
    0; a lossless one ≈ 1."""
    d = make_concept_shapes(30, "test")
    assert vae_concept_ceiling(_RoundTrip(lambda z: z), d, ring_classifier, batch=16) > 0.97
    filled = d.images.copy()
    yy, xx = np.mgrid[:32, :32]
    for i, k in zip(*np.nonzero(concept_objects("ring", d.attributes))):
        ys, xs = np.nonzero(d.masks[i, k])
        hole = (yy - ys.mean()) ** 2 + (xx - xs.mean()) ** 2 <= 3.6 ** 2  # radius 3.25 px and its soft edge
        filled[i][:, hole] = d.images[i][:, d.masks[i, k]].mean(axis=1)[:, None]
    assert vae_concept_ceiling(_RoundTrip(lambda z: filled), d, ring_classifier, batch=len(d)) < 0.1
