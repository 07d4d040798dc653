"""F.conv2d / F.conv_transpose2d and nn.Conv2d / nn.ConvTranspose2d: torch configurations, modules, bad input."""

import math

import numpy as np
import pytest

import npdiff as nd
import npdiff.nn as nn
import npdiff.nn.functional as F
from npdiff.kernels.checks import pair
from tests.kernels.harness import close

TERMS = 512  # the longest sum below: gw over N·Ho·Wo = 2·12·12 products


CASES_2D = [  # (N, C, O, H, W, k, stride, padding, groups)
    (2, 3, 8, 16, 16, 3, 1, 1, 1),
    (1, 5, 7, 9, 11, (3, 5), 2, (1, 2), 1),
    (3, 8, 6, 8, 8, 1, 1, 0, 1),
    (2, 4, 6, 10, 7, 4, 2, 1, 2),
    (2, 16, 16, 12, 12, 3, 1, "same", 1),
]


@pytest.mark.parametrize("case", CASES_2D)
def test_conv2d_matches_torch(case):
    torch = pytest.importorskip("torch", reason="torch is the oracle for conv2d")
    N, C, O, H, W, k, s, p, groups = case
    kh, kw = pair(k, "k")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((O, C // groups, kh, kw)).astype(np.float32)
    b = rng.standard_normal(O).astype(np.float32)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    yt = torch.nn.functional.conv2d(xt, wt, bt, s, p, groups=groups)
    R = rng.standard_normal(yt.shape).astype(np.float32)
    (yt * torch.tensor(R)).sum().backward()
    xn, wn, bn = (nd.tensor(a, requires_grad=True) for a in (x, w, b))
    y = F.conv2d(xn, wn, bn, s, p, groups=groups)
    (y * nd.tensor(R)).sum().backward()
    close(y.numpy(), yt.detach().numpy(), np.float32, TERMS)
    for ours, theirs in ((xn, xt), (wn, wt), (bn, bt)):
        close(ours.grad.numpy(), theirs.grad.numpy(), np.float32, TERMS)


CASES_T = [  # (N, C, O, H, W, k, stride, padding, output_padding, groups)
    (2, 8, 4, 8, 8, 4, 2, 1, 0, 1),
    (1, 3, 5, 5, 7, 3, 2, 1, 1, 1),
    (2, 4, 6, 6, 5, (2, 3), (1, 3), (0, 1), (0, 2), 2),
]


@pytest.mark.parametrize("case", CASES_T)
def test_conv_transpose2d_matches_torch(case):
    torch = pytest.importorskip("torch", reason="torch is the oracle for conv_transpose2d")
    N, C, O, H, W, k, s, p, op, groups = case
    kh, kw = pair(k, "k")
    rng = np.random.default_rng(8)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((C, O // groups, kh, kw)).astype(np.float32)
    b = rng.standard_normal(O).astype(np.float32)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    yt = torch.nn.functional.conv_transpose2d(xt, wt, bt, s, p, op, groups)
    R = rng.standard_normal(yt.shape).astype(np.float32)
    (yt * torch.tensor(R)).sum().backward()
    xn, wn, bn = (nd.tensor(a, requires_grad=True) for a in (x, w, b))
    y = F.conv_transpose2d(xn, wn, bn, s, p, op, groups)
    (y * nd.tensor(R)).sum().backward()
    close(y.numpy(), yt.detach().numpy(), np.float32, TERMS)
    for ours, theirs in ((xn, xt), (wn, wt), (bn, bt)):
        close(ours.grad.numpy(), theirs.grad.numpy(), np.float32, TERMS)


def test_conv2d_module_shapes_init_and_torch_equivalence():
    nd.manual_seed(0)
    m = nn.Conv2d(6, 10, 3, stride=2, padding=1)
    assert list(m.state_dict()) == ["weight", "bias"]
    assert m.weight.shape == (10, 6, 3, 3) and m.bias.shape == (10,)
    bound = 1 / math.sqrt(6 * 9)
    assert np.abs(m.bias.numpy()).max() <= bound
    assert bound >= np.abs(m.weight.numpy()).max() > 0.9 * bound  # 540 draws fill U(±bound)
    assert abs(m.weight.numpy().std() - bound / math.sqrt(3)) < 0.15 * bound
    assert nn.Conv2d(4, 4, (1, 3), bias=False).bias is None
    torch = pytest.importorskip("torch", reason="torch is the oracle for Conv2d")
    tm = torch.nn.Conv2d(6, 10, 3, stride=2, padding=1)
    tm.load_state_dict({k: torch.tensor(v) for k, v in m.state_dict().items()})
    x = np.random.default_rng(9).standard_normal((2, 6, 9, 8)).astype(np.float32)
    close(m(nd.tensor(x)).numpy(), tm(torch.tensor(x)).detach().numpy(), np.float32, TERMS)


def test_conv_transpose2d_module_fan_in_from_weight_axis_1():
    nd.manual_seed(1)
    m = nn.ConvTranspose2d(16, 4, 4, stride=2, padding=1)
    assert m.weight.shape == (16, 4, 4, 4)
    bound = 1 / math.sqrt(4 * 16)  # torch: fan_in = weight.shape[1]·kh·kw
    assert np.abs(m.weight.numpy()).max() > 1 / math.sqrt(16 * 16)  # wider than in·kh·kw would give
    for p in (m.weight, m.bias):
        assert np.abs(p.numpy()).max() <= bound
    x = nd.tensor(np.random.default_rng(10).standard_normal((1, 16, 5, 5)).astype(np.float32))
    assert m(x).shape == (1, 4, 10, 10)
    assert m(x, output_size=(11, 11)).shape == (1, 4, 11, 11)
    torch = pytest.importorskip("torch", reason="torch is the oracle for ConvTranspose2d")
    tm = torch.nn.ConvTranspose2d(16, 4, 4, stride=2, padding=1)
    tm.load_state_dict({k: torch.tensor(v) for k, v in m.state_dict().items()})
    close(m(x).numpy(), tm(torch.tensor(x.numpy())).detach().numpy(), np.float32, TERMS)


@pytest.mark.parametrize("call,match", [
    (lambda: F.conv2d(np.zeros((3, 8, 8)), np.zeros((4, 3, 3, 3))), r"4-D.*\(3, 8, 8\)"),
    (lambda: F.conv2d(np.zeros((1, 3, 8, 8)), np.zeros((4, 2, 3, 3))), r"\(1, 3, 8, 8\).*\(4, 2, 3, 3\)"),
    (lambda: F.conv2d(np.zeros((1, 3, 8, 8)), np.zeros((4, 1, 3, 3)), groups=2), r"groups=2"),
    (lambda: F.conv2d(np.zeros((1, 4, 8, 8)), np.zeros((3, 2, 3, 3)), groups=2), r"groups=2"),
    (lambda: F.conv2d(np.zeros((1, 3, 8, 8)), np.zeros((4, 3, 3, 3)), padding=-1), r"padding"),
    (lambda: F.conv2d(np.zeros((1, 3, 2, 2)), np.zeros((4, 3, 3, 3))), r"output size"),
    (lambda: F.conv2d(np.zeros((1, 3, 8, 8)), np.zeros((4, 3, 3, 3)), np.zeros(5)), r"bias shape \(5,\)"),
    (lambda: F.conv2d(np.zeros((1, 3, 8, 8)), np.zeros((4, 3, 3, 3)), dilation=2), r"dilation"),
    (lambda: F.conv2d(np.zeros((1, 3, 8, 8), np.float32), np.zeros((4, 3, 3, 3))), r"dtype"),
    (lambda: F.conv2d(np.zeros((1, 3, 8, 8)), np.zeros((4, 3, 2, 2)), padding="same"), r"same"),
    (lambda: F.conv_transpose2d(np.zeros((1, 3, 8, 8)), np.zeros((4, 3, 3, 3))), r"\(1, 3, 8, 8\).*\(4, 3, 3, 3\)"),
    (lambda: F.conv_transpose2d(np.zeros((1, 3, 4, 4)), np.zeros((3, 2, 3, 3)), stride=2, output_padding=2),
     r"output_padding"),
    (lambda: F.conv_transpose2d(np.zeros((1, 3, 1, 1)), np.zeros((3, 2, 1, 1)), padding=1), r"output size"),
    (lambda: nn.Conv2d(3, 4, 3, groups=2), r"groups=2"),
    (lambda: nn.Conv2d(3, 0, 3), r"positive"),
    (lambda: nn.ConvTranspose2d(3, 4, 3, stride=1, output_padding=1), r"output_padding"),
])
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
