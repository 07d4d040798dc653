"""The ControlNet / LoRA target measurements: IoU, the ground-truth colour classifier, the reports."""

import numpy as np

from npdiff.conditions import CONCEPT_INDEX, control_mask, make_concept_shapes
from npdiff.data import make_shapes
from npdiff.models import ControlNetModel
from npdiff.models.lora import add_lora, save_lora_weights
from npdiff.training.adapter_eval import (ColourCentroids, controlnet_report, foreground, lora_report, mask_iou,
                                          object_colours, vae_concept_ceiling)
from tests.pipelines.sd_stack import tiny_pipeline_32


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
    for d in (make_shapes(200, "test"), make_concept_shapes(60, "test")):
        labels = d.attributes[:, :, 1]
        predicted = clf.predict(object_colours(d.images, d.masks))
        assert np.mean(predicted[labels >= 0] == labels[labels >= 0]) > 0.97
    assert (make_concept_shapes(60, "test").attributes[:, :, 1] == CONCEPT_INDEX).any()


def test_reports_run_on_a_tiny_stack(tmp_path):
    """Both reports run end to end (random tiny models: only the bookkeeping is checked)."""
    base = tiny_pipeline_32()
    cn = ControlNetModel.from_unet(base.unet, conditioning_embedding_out_channels=(4, 8), conditioning_channels=1)
    r = controlnet_report(base, cn, n=2, steps=1, batch=2)
    assert 0 <= r["iou_baseline"] <= 1 and r["iou_controlnet"] == r["iou_baseline"]  # a fresh ControlNet: no change
    add_lora(base.unet, rank=2)
    path = save_lora_weights(tmp_path / "l.safetensors", unet=base.unet)
    r = lora_report(tiny_pipeline_32(), path, n=2, steps=1, batch=2, centroids=ColourCentroids(n=60))
    assert r["old_accuracy_drop_points"] == 0.0 and r["merged_vs_unmerged"] == 0.0  # B = 0: the base model
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
    d = make_concept_shapes(40, "test")
    assert vae_concept_ceiling(_RoundTrip(lambda z: z), d, clf, batch=16) > 0.97
    red = np.array([0.9, 0.1, 0.1], np.float32)[:, None, None] * 2 - 1

    def to_red(z):
        pink = np.abs(z - (np.array([1.0, 0.45, 0.8], np.float32)[:, None, None] * 2 - 1)).max(axis=1) < 0.15
        return np.where(pink[:, None], red, z)

    assert vae_concept_ceiling(_RoundTrip(to_red), d, clf, batch=16) == 0.0
