"""Activations, softmax, mse_loss and dropout at the F / nn level: torch, dropout statistics, modules, bad input."""

import numpy as np
import pytest

import npdiff as nd
import npdiff.nn as nn
import npdiff.nn.functional as F


def test_matches_torch():
    torch = pytest.importorskip("torch", reason="torch is the oracle for the activations")
    tf = torch.nn.functional
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((4, 5, 6)) * 4).astype(np.float32)
    t = rng.standard_normal((4, 5, 6)).astype(np.float32)
    cases = [
        (F.relu, tf.relu), (F.sigmoid, torch.sigmoid), (F.silu, tf.silu), (F.gelu, tf.gelu),
        (lambda a: F.gelu(a, approximate="tanh"), lambda a: tf.gelu(a, approximate="tanh")),
        (lambda a: F.softmax(a, 1), lambda a: tf.softmax(a, 1)),
        (lambda a: F.log_softmax(a, -1), lambda a: tf.log_softmax(a, -1)),
        (lambda a: F.mse_loss(a, t), lambda a: tf.mse_loss(a, torch.tensor(t))),
        (lambda a: F.mse_loss(a, t, reduction="sum"), lambda a: tf.mse_loss(a, torch.tensor(t), reduction="sum")),
        (lambda a: F.mse_loss(a, t, reduction="none"), lambda a: tf.mse_loss(a, torch.tensor(t), reduction="none")),
    ]
    for ours, theirs in cases:
        a = nd.tensor(x, requires_grad=True)
        y = ours(a)
        g = rng.standard_normal(y.shape).astype(np.float32)
        y.backward(g)
        ta = torch.tensor(x, requires_grad=True)
        ty = theirs(ta)
        ty.backward(torch.tensor(g))
        np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(a.grad.numpy(), ta.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_mse_target_gradient():
    x, t = nd.tensor(np.ones((2, 2)), requires_grad=True), nd.tensor(np.zeros((2, 2)), requires_grad=True)
    F.mse_loss(x, t).backward()
    np.testing.assert_allclose(x.grad.numpy(), 0.5)
    np.testing.assert_allclose(t.grad.numpy(), -0.5)


def test_dropout_statistics_and_gradient():
    x = nd.tensor(np.ones((200, 500), np.float32), requires_grad=True)
    y = F.dropout(x, p=0.3, generator=np.random.default_rng(0))
    kept = y.numpy() != 0
    assert abs(kept.mean() - 0.7) < 0.01
    np.testing.assert_allclose(y.numpy()[kept], 1 / 0.7, rtol=1e-6)
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), y.numpy())  # same mask, same scale
    again = F.dropout(x, p=0.3, generator=np.random.default_rng(0)).numpy()
    np.testing.assert_array_equal(again, y.numpy())


def test_dropout_default_generator_and_edge_probabilities():
    x = np.ones((50, 50), np.float32)
    nd.manual_seed(3)
    a = F.dropout(x).numpy()
    nd.manual_seed(3)
    np.testing.assert_array_equal(F.dropout(x).numpy(), a)
    np.testing.assert_array_equal(F.dropout(x, p=1.0).numpy(), 0)
    np.testing.assert_array_equal(F.dropout(x, p=0.0).numpy(), x)
    np.testing.assert_array_equal(F.dropout(x, p=0.9, training=False).numpy(), x)


def test_modules():
    x = np.random.default_rng(8).standard_normal((3, 4)).astype(np.float32)
    for mod, fn in [(nn.ReLU(), F.relu), (nn.Sigmoid(), F.sigmoid), (nn.SiLU(), F.silu), (nn.GELU(), F.gelu),
                    (nn.GELU("tanh"), lambda a: F.gelu(a, approximate="tanh")), (nn.Softmax(dim=1), lambda a: F.softmax(a, 1))]:
        np.testing.assert_array_equal(mod(x).numpy(), fn(x).numpy())
        assert list(mod.parameters()) == []
    drop = nn.Dropout(p=0.5)
    assert (drop(np.ones((20, 20), np.float32)).numpy() == 0).any()
    drop.eval()
    np.testing.assert_array_equal(drop(x).numpy(), x)


def test_bad_inputs():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        F.mse_loss(x, np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="reduction"):
        F.mse_loss(x, x, reduction="avg")
    with pytest.raises(ValueError, match="approximate"):
        F.gelu(x, approximate="fast")
    with pytest.raises(ValueError, match=r"dim 2 .*\(2, 3\)"):
        F.softmax(x, 2)
    with pytest.raises(ValueError, match="dim must be given"):
        F.log_softmax(x)
    with pytest.raises(ValueError, match="probability"):
        F.dropout(x, p=1.5)
    with pytest.raises(ValueError, match="probability"):
        nn.Dropout(p=-0.1)
