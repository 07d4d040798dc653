"""Pooling and interpolate at the F / nn level: torch over many windows (with ties), modules, bad input."""

import re

import numpy as np
import pytest

import npdiff as nd
import npdiff.kernels as KT
import npdiff.nn as nn
import npdiff.nn.functional as F


def _oracle(torch, ours_f, torch_f, x):
    xt = torch.tensor(x, requires_grad=True)
    yt = torch_f(xt)
    g = np.random.default_rng(2).standard_normal(tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.tensor(g))
    xo = nd.tensor(x, requires_grad=True)
    yo = ours_f(xo)
    yo.backward(g)
    np.testing.assert_allclose(yo.numpy(), yt.detach().numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(xo.grad.numpy(), xt.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_torch_oracle_pooling():
    torch = pytest.importorskip("torch", reason="torch is the oracle for the pooling kernels")
    tf = torch.nn.functional
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    ties = np.round(x)
    for k, s, p in [(2, 2, 0), (3, 2, 1), ((3, 2), (1, 2), (1, 0)), (4, 3, 2), (5, 1, 2)]:
        for data in (x, ties):
            _oracle(torch, lambda t: F.max_pool2d(t, k, s, p), lambda t: tf.max_pool2d(t, k, s, p), data)
        for cip in (True, False):
            _oracle(torch, lambda t: F.avg_pool2d(t, k, s, p, count_include_pad=cip),
                    lambda t: tf.avg_pool2d(t, k, s, p, count_include_pad=cip), x)
    _oracle(torch, nn.MaxPool2d(2), torch.nn.MaxPool2d(2), x)
    _oracle(torch, nn.AvgPool2d(3, 2, 1), torch.nn.AvgPool2d(3, 2, 1), x)


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: F.max_pool2d(np.zeros((2, 3, 4)), 2), "(2, 3, 4)"),
        (lambda: F.max_pool2d(np.zeros((1, 1, 4, 4)), 0), "kernel (0, 0)"),
        (lambda: F.max_pool2d(np.zeros((1, 1, 4, 4)), 2, -1), "stride (-1, -1)"),
        (lambda: F.avg_pool2d(np.zeros((1, 1, 4, 4)), 2, 2, 2), "padding (2, 2)"),
        (lambda: F.avg_pool2d(np.zeros((1, 1, 2, 2)), 3), "(1, 1, 2, 2)"),
        (lambda: F.interpolate(np.zeros((1, 1, 4)), scale_factor=2), "(1, 1, 4)"),
        (lambda: F.interpolate(np.zeros((1, 1, 4, 4)), size=(0, 3)), "(0, 3)"),
        (lambda: F.interpolate(np.zeros((1, 1, 4, 4)), size=2, scale_factor=2), "exactly one"),
        (lambda: F.interpolate(np.zeros((1, 1, 4, 4)), scale_factor=2, mode="bicubic"), "bicubic"),
        (lambda: F.interpolate(np.zeros((1, 1, 4, 4)), scale_factor=2, align_corners=True), "align_corners"),
    ],
)
def test_bad_input_raises_value_error_naming_the_shapes(call, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        call()


MODES = [("nearest", None), ("bilinear", False), ("bilinear", True)]


def test_torch_oracle_interpolate_exact_indices():
    torch = pytest.importorskip("torch", reason="torch is the oracle for interpolate")
    tf = torch.nn.functional
    x = np.random.default_rng(4).standard_normal((1, 2, 7, 5)).astype(np.float32)
    hows = [dict(scale_factor=2), dict(scale_factor=3), dict(scale_factor=1.7), dict(scale_factor=(0.5, 2.5)),
            dict(size=(13, 6)), dict(size=(3, 11)), dict(size=(29, 1)), dict(size=(7, 5))]
    for how in hows:
        for mode, ac in MODES:
            _oracle(torch, lambda t: F.interpolate(t, mode=mode, align_corners=ac, **how),
                    lambda t: tf.interpolate(t, mode=mode, align_corners=ac, **how), x)
    # nearest picks exactly torch's source pixel for many size pairs (float32 index rule)
    for h_in in range(1, 12):
        for h_out in range(1, 40):
            a = np.arange(h_in, dtype=np.float32).reshape(1, 1, h_in, 1)
            ours = KT.interpolate_forward(a, size=(h_out, 1))
            theirs = tf.interpolate(torch.tensor(a), size=(h_out, 1)).numpy()
            np.testing.assert_array_equal(ours, theirs)
    _oracle(torch, nn.Upsample(scale_factor=2), torch.nn.Upsample(scale_factor=2), x)
    _oracle(torch, nn.Upsample(size=(4, 9), mode="bilinear", align_corners=True),
            torch.nn.Upsample(size=(4, 9), mode="bilinear", align_corners=True), x)
