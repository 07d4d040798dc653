"""A tiny UNet2DModel training step — forward, backward, AdamW — with every kernel on the
``cuda`` column equals the same step on the CPU's reference column (float64, so that the
comparison measures the kernels, not float32 rounding)."""

import numpy as np

import npdiff as nd
import npdiff.kernels as K
import npdiff.nn.functional as F
from npdiff.models import UNet2DModel
from npdiff.optim import AdamW
from tests.kernels.harness import close
from tests.models.test_unet_2d import TINY

# TINY with fewer channels and one image: the simulator pays ~0.1–0.5 ms per GPU thread
MICRO = dict(TINY, block_out_channels=(2, 4), attention_head_dim=2)
from tests.models.test_unet_2d_reference_kernels import TERMS, _record_columns

LR = 1e-3
EPS = 1e-8  # AdamW's ε


def _step(column):
    nd.manual_seed(0)
    model = UNet2DModel(**MICRO).double()
    rng = np.random.default_rng(0)
    x, target = rng.standard_normal((1, 1, 4, 4)), rng.standard_normal((1, 1, 4, 4))
    t, y = np.array([600]), np.array([2])
    opt = AdamW(model.parameters(), lr=LR)
    with K.use(column):
        out = model(nd.tensor(x), t, class_labels=y)
        loss = F.mse_loss(out, nd.tensor(target))
        loss.backward()
        opt.step()
    grads = {n: p.grad.numpy().copy() for n, p in model.named_parameters()}
    return float(loss.numpy()), out.numpy(), grads, {n: p.numpy().copy() for n, p in model.named_parameters()}


def test_tiny_unet_training_step_on_the_cuda_column_equals_the_cpu_step():
    log, undo = _record_columns()
    try:
        gpu = _step("cuda")
        gpu_ops, gpu_columns = {n for n, _ in log}, {c for _, c in log}
        log.clear()
        cpu = _step("reference")
    finally:
        undo()
    assert gpu_columns == {"cuda"}
    for op in ["conv2d", "group_norm", "group_norm_silu", "attention", "silu", "linear", "mse_loss"]:
        assert {op + "_forward", op + "_backward"} <= gpu_ops, op
    assert abs(gpu[0] - cpu[0]) <= 16 * TERMS * np.finfo(np.float64).eps * max(1.0, abs(cpu[0]))
    close(gpu[1], cpu[1], np.float64, TERMS, "output")
    assert gpu[2].keys() == cpu[2].keys()
    for name, g in cpu[2].items():
        close(gpu[2][name], g, np.float64, TERMS, f"d/d{name}")
        # AdamW's first step moves θ by lr·g/(|g| + ε) (+ decay): a gradient error δ moves it by at most
        # lr·min(2, δ/ε), so gradients near 0 may legitimately differ in sign
        delta = 16 * TERMS * np.finfo(np.float64).eps * max(1.0, float(np.abs(g).max()))
        tol = LR * min(2.0, delta / EPS) + 16 * np.finfo(np.float64).eps * float(np.abs(cpu[3][name]).max())
        np.testing.assert_allclose(gpu[3][name], cpu[3][name], rtol=0, atol=tol, err_msg=f"{name} after AdamW")
