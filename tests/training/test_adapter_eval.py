"""The ControlNet / LoRA target measurements: IoU, the ground-truth colour classifier, the reports."""

import numpy as np

from npdiff.conditions import CONCEPT_INDEX, control_mask, make_concept_shapes
from npdiff.data import make_shapes
from npdiff.models import ControlNetModel
from npdiff.models.lora import add_lora, save_lora_weights
from npdiff.training.adapter_eval import (ColourCentroids, controlnet_report, foreground, lora_report, mask_iou,
                                          object_colours)
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
