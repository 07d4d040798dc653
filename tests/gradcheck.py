"""Central-difference gradient checks shared by the test suite (float64)."""

from __future__ import annotations

import numpy as np

import npdiff as nd


def numeric_grad(f, x: np.ndarray, idx, eps: float = 1e-6) -> float:
    """(f(x + eps·e_idx) − f(x − eps·e_idx)) / 2eps for a scalar-valued ``f()`` reading ``x`` in place."""
    old = x[idx]
    x[idx] = old + eps
    hi = f()
    x[idx] = old - eps
    lo = f()
    x[idx] = old
    return (hi - lo) / (2 * eps)


def sample_indices(shape, n: int, rng):
    """Up to ``n`` distinct multi-indices into an array of ``shape`` (all of them when small)."""
    size = int(np.prod(shape))
    flat = np.arange(size) if size <= n else rng.choice(size, n, replace=False)
    return [np.unravel_index(i, shape) for i in flat]


def check_gradients(fn, arrays, n_samples: int = 12, eps: float = 1e-6, rtol: float = 1e-5, atol: float = 1e-7,
                    seed: int = 0, wrt=None):
    """Compare autograd gradients of ``sum(fn(*tensors) * R)`` with central differences.

    ``arrays`` are float64 numpy arrays (possibly non-contiguous views); ``wrt`` lists the
    positions to check (default: all). R is a fixed random weighting so every output
    element matters.
    """
    rng = np.random.default_rng(seed)
    arrays = [np.array(a, dtype=np.float64) if not isinstance(a, np.ndarray) else a for a in arrays]
    wrt = range(len(arrays)) if wrt is None else wrt
    tensors = [nd.tensor(a, requires_grad=i in wrt) for i, a in enumerate(arrays)]
    out = fn(*tensors)
    R = rng.standard_normal(out.shape)
    (out * nd.tensor(R)).sum().backward()

    def scalar():
        with nd.no_grad():
            return float((fn(*[nd.tensor(a) for a in arrays]).numpy() * R).sum())

    for i in wrt:
        analytic = tensors[i].grad.numpy()
        assert analytic.shape == arrays[i].shape
        for idx in sample_indices(arrays[i].shape, n_samples, rng):
            num = numeric_grad(scalar, arrays[i], idx, eps)
            assert np.isclose(analytic[idx], num, rtol=rtol, atol=atol), (
                f"input {i} at {idx}: autograd {analytic[idx]:.8g} vs numeric {num:.8g}"
            )
