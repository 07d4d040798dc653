"""The one dispatch sends device (cupy) arrays to the cuda column under the default switch —
checked without cupy by making the dispatch see a stand-in array module."""

import numpy as np

import npdiff.kernels as K
from npdiff.kernels import dispatch
from npdiff.kernels.dispatch import Op


class _DeviceModule:  # what get_array_module returns for a cupy array: anything but numpy
    pass


def _columns(calls):
    return {c: (lambda c: lambda *a: calls.append(c))(c) for c in ("reference", "numba", "cuda", "xp")}


def test_fast_switch_picks_cuda_for_device_arrays_and_numba_for_numpy(monkeypatch):
    calls = []
    op = Op("probe", lambda x: (x,), **_columns(calls))
    op(np.zeros(3))
    monkeypatch.setattr(dispatch, "get_array_module", lambda a: _DeviceModule)
    op(np.zeros(3))
    with K.use("reference"):
        op(np.zeros(3))
    with K.use("xp"):
        op(np.zeros(3))
    assert calls == ["numba", "cuda", "reference", "xp"]


def test_a_row_without_cuda_falls_back_to_xp_on_device_arrays(monkeypatch):
    calls = []
    cols = _columns(calls)
    del cols["cuda"]
    op = Op("probe", lambda x: (x,), **cols)
    monkeypatch.setattr(dispatch, "get_array_module", lambda a: _DeviceModule)
    op(np.zeros(3))
    assert calls == ["xp"]


def test_the_cuda_column_is_not_imported_until_it_runs():
    import subprocess
    import sys

    code = ("import sys, numpy as np, npdiff.nn.functional as F; F.relu(np.ones(2)); "
            "print(any(m.startswith('npdiff.kernels.cuda.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # numba-cuda stays optional: npdiff and its CPU kernels run without it
