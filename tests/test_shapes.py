"""The ``shapes`` captioned dataset and its fixed attribute classifiers."""

import numpy as np
import pytest

from npdiff.data import (COLOUR_NAMES, COLOURS, HELD_OUT_PAIRS, SHAPE_NAMES, DataLoader, load_dataset, make_shapes,
                         shapes_caption)
from npdiff.metrics import shapes_classifier, shapes_report

HELD = {(COLOUR_NAMES.index(c), SHAPE_NAMES.index(s)) for c, s in HELD_OUT_PAIRS}


def _pairs(attributes):
    """(N, 2) bool: does object k have a held-out (colour, shape) pair?"""
    return np.array([[(c, s) in HELD for s, c, _, _ in row] for row in attributes])


def test_seeded_shapes_and_ranges():
    a, b = make_shapes(64, "train", seed=3), make_shapes(64, "train", seed=3)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.captions == b.captions
    c = make_shapes(64, "test", seed=3)
    assert not np.array_equal(a.images, c.images)  # splits are different streams
    assert a.images.shape == (64, 3, 32, 32) and a.images.dtype == np.float32
    assert a.images.min() >= -1.0 and a.images.max() <= 1.0
    assert a.attributes.shape == (64, 2, 4) and a.masks.shape == (64, 2, 32, 32)
    with pytest.raises(ValueError, match="split"):
        make_shapes(8, "valid")


def test_held_out_pairs_only_in_unseen():
    train, test, unseen = make_shapes(400, "train"), make_shapes(200, "test"), make_shapes(200, "unseen")
    assert not _pairs(train.attributes).any() and not _pairs(test.attributes).any()
    assert _pairs(unseen.attributes).any(axis=1).all()
    assert _pairs(unseen.attributes)[:, 1].any()  # the held-out object is not always named first
    # every colour and every shape is still seen in training
    objs = train.attributes[train.attributes[:, :, 0] >= 0]
    assert set(objs[:, 0]) == set(range(3)) and set(objs[:, 1]) == set(range(6))
    counts = (train.attributes[:, :, 0] >= 0).sum(1)
    assert set(counts) == {1, 2} and 0.4 < np.mean(counts == 2) < 0.6


def test_captions_masks_and_pixels_agree_with_ground_truth():
    d = make_shapes(200, "train", seed=1)
    for i in range(len(d)):
        assert d.captions[i] == shapes_caption(d.attributes[i])
        words = d.captions[i].split()
        if d.attributes[i, 1, 0] < 0:
            assert not d.masks[i, 1].any()
        objs = [r for r in d.attributes[i] if r[0] >= 0]
        assert words.count("and") == len(objs) - 1
        for k, (shape, colour, size, position) in enumerate(objs):
            m = d.masks[i, k]
            rows, cols = np.nonzero(m)
            # the mask lies in its quadrant
            assert (rows // 16 == position // 2).all() and (cols // 16 == position % 2).all()
            # its pixels have the object's colour (± 0.05 jitter, edges blended with the background)
            rgb = (d.images[i][:, m].mean(axis=1) + 1) / 2
            assert np.abs(rgb - np.array(COLOURS[COLOUR_NAMES[colour]])).max() < 0.15
            assert (m.sum() > 60) == (size == 1)  # small: area ~30-40 px, large ~100-130
        assert not (d.masks[i, 0] & d.masks[i, 1]).any()


def test_load_dataset_and_loader():
    ds = load_dataset("shapes", "test")
    assert ds.captions is not None and len(ds.captions) == len(ds) == len(ds.attributes) == len(ds.masks)
    assert ds.sample_shape == (3, 32, 32) and ds.labels is None and not ds.is_toy
    x, y = next(iter(DataLoader(ds, batch_size=8)))
    assert x.shape == (8, 3, 32, 32) and y is None
    assert len(load_dataset("shapes", "unseen")) == 1000
    with pytest.raises(ValueError, match="32"):
        load_dataset("shapes", size=16)


def test_attribute_classifier_accuracy_and_sensitivity():
    clf = shapes_classifier()
    # on real held-out images (seen and unseen colour-shape pairs) nearly everything is right
    for report in (clf.test_report, clf.unseen_report):
        assert report["all_correct"] >= 0.97, report
        assert min(report[f"{k}_accuracy"] for k in ("shape", "colour", "size", "position")) >= 0.98, report
    # asking for the wrong colour / shape / position is caught
    d = make_shapes(200, "test", seed=7)
    wrong = d.attributes.copy()
    has = wrong[:, :, 0] >= 0
    wrong[:, :, 1][has] = (wrong[:, :, 1][has] + 1) % 6
    r = shapes_report(d.images, wrong)
    assert r["colour_accuracy"] < 0.05 and r["all_correct"] < 0.05 and r["shape_accuracy"] > 0.95
    wrong = d.attributes.copy()
    wrong[:, :, 3][has] = 3 - wrong[:, :, 3][has]  # the opposite quadrant
    moved = shapes_report(d.images, wrong)
    assert moved["count_accuracy"] < 0.5 and moved["all_correct"] < 0.5
    with pytest.raises(ValueError, match="attributes"):
        shapes_report(d.images, d.attributes[:10])
