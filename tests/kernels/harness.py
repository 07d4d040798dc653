"""One test harness for every row of the kernel table (``npdiff/kernels/table.py``).

A ``Spec`` describes one forward/backward pair of rows: how to draw its inputs (hypothesis),
how to call the forward and the backward rows, and its torch equivalent. ``test_table.py``
runs, for every spec and every implementation column (in the spirit of tinygrad's
``helper_test_op`` and chainer's ``FunctionTestCase``):

  * agreement with the reference column over generated shapes (non-contiguous views, odd
    sizes, batch 1; float32 and float64),
  * float64 central differences of the column's forward against its own backward,
  * the torch oracle, forward and backward,
  * the bad-input cases (``ValueError`` naming what was wrong).

Tolerances come from the arithmetic: a result that sums ``terms`` rounded products differs
between two summation orders by at most about terms·ε·Σ|products|; with unit-normal data
Σ|products| stays within a few times max(1, |result|). So ``close`` allows
``16·terms·ε·max(1, max|want|)`` (ε of the compared dtype), an absolute floor included.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from hypothesis import strategies as st

import npdiff.kernels as K


def close(got, want, dtype, terms=1, what=""):
    """|got − want| ≤ 16·terms·ε(dtype)·max(1, max|want|) elementwise (infinities must match)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    inf = np.isinf(want)
    np.testing.assert_array_equal(got[inf], want[inf], err_msg=what)
    got, want = np.where(inf, 0, got), np.where(inf, 0, want)
    tol = 16 * terms * np.finfo(dtype).eps * max(1.0, float(np.abs(want).max(initial=0)))
    np.testing.assert_allclose(got, want, rtol=0, atol=tol, err_msg=what)


def array(draw, rng, shape, dtype, scale=1.0):
    """A standard-normal array of ``shape``, sometimes a transposed or strided (non-contiguous) view."""
    shape = tuple(shape)
    layout = draw(st.sampled_from(["contiguous", "transposed", "strided"])) if len(shape) >= 2 else "contiguous"
    if layout == "transposed":
        a = rng.standard_normal(shape[:-2] + shape[:-3:-1]).swapaxes(-1, -2)
    elif layout == "strided":
        a = rng.standard_normal(shape[:-1] + (2 * shape[-1],))[..., ::2]
    else:
        a = rng.standard_normal(shape)
    return (a * scale).astype(dtype)


@dataclass
class Case:
    """Differentiable input arrays (name -> array; None = absent) and the other arguments."""

    arrays: dict
    params: dict = field(default_factory=dict)

    def astype(self, dtype):
        arrays = {k: None if a is None else a.astype(dtype) for k, a in self.arrays.items()}
        params = {k: a.astype(dtype) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a
                  for k, a in self.params.items()}
        return Case(arrays, params)

    @property
    def dtype(self):
        return next(a for a in self.arrays.values() if a is not None).dtype


@dataclass
class Spec:
    """One forward/backward pair of table rows and how to test it."""

    name: str
    rows: tuple  # the table rows it covers (forward, backward)
    draw: object  # hypothesis strategy -> Case
    forward: object  # (case) -> (output, saved)
    backward: object  # (case, saved, g) -> {array name: gradient}
    fixed: object  # (rng) -> float64 Case for central differences and the oracle
    torch: object = None  # (torch, tensors dict, params) -> output, or None
    terms: object = 1  # (case) -> the longest sum in the op (for ``close``)
    bad: list = field(default_factory=list)  # [(call, regex)]
    oracle_dtype: object = np.float64
    column_terms: dict = field(default_factory=dict)  # column -> factor on ``terms`` (a column's own error bound)

    def __repr__(self):
        return self.name


def numeric_grads(spec, case, R, idx_per_array=6, h=1e-6, seed=0):
    """Central differences of Σ forward(case)·R at a few indices of each differentiable array."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, a in case.arrays.items():
        if a is None:
            continue
        a = case.arrays[name] = np.array(a)  # a private contiguous copy to perturb
        flat = rng.choice(a.size, min(a.size, idx_per_array), replace=False)
        vals = {}
        for f in flat:
            i = np.unravel_index(f, a.shape)
            old = a[i]
            a[i] = old + h
            hi = float((np.asarray(spec.forward(case)[0], np.float64) * R).sum())
            a[i] = old - h
            lo = float((np.asarray(spec.forward(case)[0], np.float64) * R).sum())
            a[i] = old
            vals[i] = (hi - lo) / (2 * h)
        out[name] = vals
    return out


def check_central_differences(spec, case):
    y, saved = spec.forward(case)
    R = np.random.default_rng(1).standard_normal(np.shape(y))
    grads = spec.backward(case, saved, R.astype(case.dtype).reshape(np.shape(y)))
    scale = 1.0 + float(np.abs(np.asarray(y) * R).sum())
    for name, vals in numeric_grads(spec, case, R).items():
        g = np.asarray(grads[name], np.float64)
        for i, num in vals.items():
            # truncation O(h²) and rounding O(ε·|loss|/h) of the difference quotient
            assert abs(g[i] - num) <= 1e-6 * (abs(num) + 1e-3 * scale), (
                f"{spec.name} d/d{name}{i}: backward {g[i]:.10g} vs central difference {num:.10g}")


def run(spec, case, column):
    """(output, {name: gradient}) of ``spec`` on ``case`` with one column, for a fixed random g."""
    with K.use(column):
        y, saved = spec.forward(case)
        g = np.random.default_rng(0).standard_normal(np.shape(y)).astype(case.dtype).reshape(np.shape(y))
        return y, spec.backward(case, saved, g)


def check_agreement(spec, case, column, reference=None):
    """``column``'s output and gradients on ``case`` equal the reference column's (same dtype and
    shape) within ``close``; ``reference`` = run(spec, case, "reference") when already computed."""
    y_ref, g_ref = reference or run(spec, case, "reference")
    terms = (spec.terms(case) if callable(spec.terms) else spec.terms) * spec.column_terms.get(column, 1)
    y, grads = run(spec, case, column)
    assert np.asarray(y).dtype == case.dtype, (column, np.asarray(y).dtype)
    close(y, y_ref, case.dtype, terms, f"{spec.name} {column} forward")
    for name, want in g_ref.items():
        close(grads[name], want, case.dtype, terms, f"{spec.name} {column} d/d{name}")


def _cuda_usable():
    from npdiff.kernels import cuda

    return cuda.usable()


def columns(spec):
    """The implementation columns that every row of ``spec`` has and that can run here (the
    ``cuda`` column only under the CUDA simulator or on a GPU: ``tests/cuda``)."""
    cols = set.intersection(*[set(K.OPS[r].columns) for r in spec.rows])
    if "cuda" in cols and not _cuda_usable():
        cols.discard("cuda")
    return sorted(cols)
