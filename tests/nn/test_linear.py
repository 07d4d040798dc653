"""F.linear against torch and its bad shapes."""

import numpy as np
import pytest

import npdiff as nd
import npdiff.nn.functional as F


def test_matches_torch():
    torch = pytest.importorskip("torch", reason="torch.nn.functional.linear is the oracle")
    rng = np.random.default_rng(0)
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in [(2, 5, 16), (8, 16), (8,)])
    g = rng.standard_normal((2, 5, 8)).astype(np.float32)
    ts = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    torch.nn.functional.linear(*ts).backward(torch.tensor(g))
    ns = [nd.tensor(a, requires_grad=True) for a in (x, w, b)]
    out = F.linear(*ns)
    out.backward(g)
    np.testing.assert_allclose(out.numpy(), torch.nn.functional.linear(*ts).detach().numpy(), rtol=1e-5, atol=1e-5)
    for n_, t_ in zip(ns, ts):
        np.testing.assert_allclose(n_.grad.numpy(), t_.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_bad_shapes():
    with pytest.raises(ValueError, match=r"\(3, 4\).*in_features=5"):
        F.linear(nd.zeros(3, 4), nd.zeros(2, 5))
    with pytest.raises(ValueError, match=r"bias shape \(3,\)"):
        F.linear(nd.zeros(3, 5), nd.zeros(2, 5), nd.zeros(3))
