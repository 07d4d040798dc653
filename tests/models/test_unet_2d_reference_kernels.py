"""The reference kernels are a living spec: a tiny UNet2DModel, forward and backward, run
entirely on the ``reference`` column of the kernel table gives the fast path's output and
gradients (float64, so the comparison measures the kernels, not float32 rounding)."""

import numpy as np

import npdiff as nd
import npdiff.kernels as K
from npdiff.models import UNet2DModel
from tests.kernels.harness import close
from tests.models.test_unet_2d import TINY

# the longest chain of sums: ~10 layers deep, each summing ≤ 8·9 conv products or a 2·4·4 norm set
TERMS = 4096


def _run(model, x, t, y, R):
    xt = nd.tensor(x, requires_grad=True)
    model.zero_grad()
    out = model(xt, t, class_labels=y)
    (out * R).sum().backward()
    return out.numpy(), xt.grad.numpy(), {n: p.grad.numpy() for n, p in model.named_parameters()}


def _record_columns():
    """Wrap every column of every op so that a call appends (op, column); returns the log and an undo."""
    log, saved = [], {name: dict(op.columns) for name, op in K.OPS.items()}
    for name, op in K.OPS.items():
        for col, fn in saved[name].items():
            op.columns[col] = (lambda n, c, f: lambda *a: log.append((n, c)) or f(*a))(name, col, fn)
    return log, lambda: [K.OPS[n].columns.update(cols) for n, cols in saved.items()]


def test_tiny_unet_on_reference_kernels_matches_the_fast_path():
    nd.manual_seed(0)
    model = UNet2DModel(**TINY).double()
    rng = np.random.default_rng(0)
    x, R = rng.standard_normal((2, 1, 4, 4)), rng.standard_normal((2, 1, 4, 4))
    t, y = np.array([10, 600]), np.array([2, 0])
    log, undo = _record_columns()
    try:
        fast = _run(model, x, t, y, R)
        fast_columns = {c for _, c in log}
        log.clear()
        with K.use("reference"):
            ref = _run(model, x, t, y, R)
        ref_ops = {n for n, _ in log}
        ref_columns = {c for _, c in log}
    finally:
        undo()
    assert fast_columns == {"numba"} and ref_columns == {"reference"}
    # forward and backward of every kernel family the model uses ran on the reference loops
    for op in ["conv2d", "group_norm", "attention", "silu", "linear"]:
        assert {op + "_forward", op + "_backward"} <= ref_ops, op
    close(ref[0], fast[0], np.float64, TERMS, "output")
    close(ref[1], fast[1], np.float64, TERMS, "d/dx")
    assert ref[2].keys() == fast[2].keys()
    for name, g in fast[2].items():
        close(ref[2][name], g, np.float64, TERMS, f"d/d{name}")
