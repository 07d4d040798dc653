"""Every row of the kernel table on the ``cuda`` column against the reference column, through
the one harness (tests/kernels/harness.py), with the CPU columns' tolerances."""

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import npdiff.kernels as K
from tests.kernels.harness import check_agreement
from tests.kernels.test_table import SPECS

EXAMPLES = int(os.environ.get("NPDIFF_CUDA_EXAMPLES", "2"))


def test_every_row_has_a_cuda_column():
    assert all("cuda" in op.columns for op in K.OPS.values())
    assert {row for spec in SPECS for row in spec.rows} == set(K.OPS)


@pytest.mark.parametrize("spec", SPECS, ids=repr)
@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_cuda_column_agrees_with_the_reference(spec, data):
    check_agreement(spec, data.draw(spec.draw), "cuda")


@pytest.mark.parametrize("spec", [s for s in SPECS if s.name in ("conv2d", "conv_transpose2d", "attention")],
                         ids=repr)
def test_fixed_case_in_float64(spec):
    """The harness's fixed case (groups = 2, uneven stride, a bias plane per head ...) in float64."""
    check_agreement(spec, spec.fixed(np.random.default_rng(5)), "cuda")


def test_fast_switch_sends_cupy_arrays_to_the_cuda_column():
    from npdiff.kernels.cuda.common import SIMULATOR

    if SIMULATOR:
        pytest.skip("the simulator takes numpy arrays; cupy arrays need a GPU")
    cupy = pytest.importorskip("cupy", reason="cupy arrays need the 'gpu' extra")
    if not cupy.cuda.is_available():
        pytest.skip("cupy sees no GPU")
    x = cupy.linspace(-2, 2, 7, dtype=np.float32)
    calls = []
    op = K.OPS["relu_forward"]
    saved = op.columns["cuda"]
    op.columns["cuda"] = lambda a: calls.append("cuda") or saved(a)
    try:
        y = K.relu_forward(x)
    finally:
        op.columns["cuda"] = saved
    assert calls == ["cuda"] and isinstance(y, cupy.ndarray)
    np.testing.assert_array_equal(cupy.asnumpy(y), np.maximum(cupy.asnumpy(x), 0))
