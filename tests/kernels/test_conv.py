"""Conv family: reference vs fast vs xp, central differences, torch oracle, modules, bad input."""

import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import npdiff as nd
import npdiff.nn as nn
import npdiff.nn.functional as F
from npdiff import kernels as KT
from npdiff.kernels import conv as K
from npdiff.kernels.checks import pair
from tests.gradcheck import check_gradients

TOL = {np.float32: dict(rtol=1e-4, atol=1e-4), np.float64: dict(rtol=1e-10, atol=1e-10)}


def close(a, b, dtype=np.float64):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), **TOL[dtype])


def _array(draw, rng, shape, dtype):
    """A standard-normal array of ``shape``, sometimes as a transposed or strided (non-contiguous) view."""
    layout = draw(st.sampled_from(["contiguous", "transposed", "strided"]))
    if layout == "transposed":
        return rng.standard_normal(shape[:2] + shape[2:][::-1]).astype(dtype).swapaxes(2, 3)
    if layout == "strided":
        return rng.standard_normal(shape[:-1] + (2 * shape[-1],)).astype(dtype)[..., ::2]
    return rng.standard_normal(shape).astype(dtype)


@st.composite
def conv_case(draw, transposed=False, dtype=np.float64):
    """Shapes, weights and hyper-parameters: batch 1-2, channels 1-5 (with groups 1-2),
    odd/non-square sizes, kernels 1-5, stride 1-3, padding 0-2, output_padding < stride."""
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    groups = draw(st.sampled_from([1, 1, 2]))
    N = draw(st.integers(1, 2))
    Cg, Og = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    if transposed:
        H, W = draw(st.integers(1, 6)), draw(st.integers(1, 6))
        oph, opw = draw(st.integers(0, sh - 1)), draw(st.integers(0, sw - 1))
        Ho = (H - 1) * sh - 2 * ph + kh + oph
        Wo = (W - 1) * sw - 2 * pw + kw + opw
        wshape = (groups * Cg, Og, kh, kw)
    else:
        H, W = draw(st.integers(max(1, kh - 2 * ph), 9)), draw(st.integers(max(1, kw - 2 * pw), 9))
        oph = opw = 0
        Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
        wshape = (groups * Og, Cg, kh, kw)
    assume(Ho >= 1 and Wo >= 1)
    x = _array(draw, rng, (N, groups * Cg, H, W), dtype)
    w = _array(draw, rng, wshape, dtype)
    b = rng.standard_normal(groups * Og).astype(dtype) if draw(st.booleans()) else None
    g = _array(draw, rng, (N, groups * Og, Ho, Wo), dtype)
    return dict(x=x, w=w, b=b, g=g, stride=(sh, sw), padding=(ph, pw), op=(oph, opw), groups=groups)


# -- fast and xp vs reference ---------------------------------------------------


@given(conv_case())
def test_conv2d_fast_and_xp_match_reference(c):
    x, w, b, g, s, p, G = c["x"], c["w"], c["b"], c["g"], c["stride"], c["padding"], c["groups"]
    want = K.conv2d_forward_reference(x, w, b, s, p, G)
    close(KT.conv2d_forward(x, w, b, s, p, G), want)
    if G == 1:
        close(K.conv2d_forward_xp(x, w, b, s, p, 1), want)
    gwant = K.conv2d_backward_reference(x, w, g, s, p, G)
    for got, ref in zip(KT.conv2d_backward(x, w, g, s, p, G), gwant):
        close(got, ref)
    if G == 1:
        for got, ref in zip(K.conv2d_backward_xp(x, w, g, s, p, 1, True, True, True), gwant):
            close(got, ref)


@given(conv_case(transposed=True))
def test_conv_transpose2d_fast_and_xp_match_reference(c):
    x, w, b, g, s, p, op, G = c["x"], c["w"], c["b"], c["g"], c["stride"], c["padding"], c["op"], c["groups"]
    want = K.conv_transpose2d_forward_reference(x, w, b, s, p, op, G)
    close(KT.conv_transpose2d_forward(x, w, b, s, p, op, G), want)
    if G == 1:
        close(K.conv_transpose2d_forward_xp(x, w, b, s, p, op, 1), want)
    gwant = K.conv_transpose2d_backward_reference(x, w, g, s, p, op, G)
    for got, ref in zip(KT.conv_transpose2d_backward(x, w, g, s, p, op, G), gwant):
        close(got, ref)
    if G == 1:
        for got, ref in zip(K.conv_transpose2d_backward_xp(x, w, g, s, p, op, 1, True, True, True), gwant):
            close(got, ref)


@pytest.mark.parametrize("chunk_bytes", [64, 3000, 1 << 20])
@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1), (1, 0)])
def test_chunking_row_bands_and_image_batches(monkeypatch, chunk_bytes, stride, padding):
    """Tiny budgets split images into bands of output rows; large ones batch several images."""
    monkeypatch.setattr(K, "_CHUNK_BYTES", chunk_bytes)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 2, 9, 7))
    w = rng.standard_normal((4, 2, 3, 3))
    b = rng.standard_normal(4)
    want = K.conv2d_forward_reference(x, w, b, (stride,) * 2, (padding,) * 2)
    close(KT.conv2d_forward(x, w, b, stride, padding), want)
    g = rng.standard_normal(want.shape)
    for got, ref in zip(KT.conv2d_backward(x, w, g, stride, padding),
                        K.conv2d_backward_reference(x, w, g, (stride,) * 2, (padding,) * 2)):
        close(got, ref)
    wt = rng.standard_normal((2, 4, 3, 3))
    close(KT.conv_transpose2d_forward(x, wt, b, stride, padding),
          K.conv_transpose2d_forward_reference(x, wt, b, (stride,) * 2, (padding,) * 2))



@pytest.mark.parametrize("threads", [1, 3, 7])
@pytest.mark.parametrize("N,stride,padding,k", [(1, 1, 1, 3), (2, 2, 1, 3), (5, 1, 2, 4), (3, (1, 2), (2, 0), (5, 2)),
                                                 (1, 3, 1, 1)])  # stride > kernel: a band of gx rows no window reaches
def test_thread_partition_row_bands_halo_and_idle_threads(monkeypatch, threads, N, stride, padding, k):
    """Any worker count: chunks split evenly or not, threads left without a chunk (their weight-gradient
    accumulator must be zero), and fewer images than threads (bands of rows; grad-input bands
    recompute their halo of g rows and write only their own gx rows, zeros where no window reaches)."""
    monkeypatch.setattr(K, "num_threads", lambda: threads)
    rng = np.random.default_rng(11)
    s, p = pair(stride, "s"), pair(padding, "p")
    kh, kw = pair(k, "k")
    x = rng.standard_normal((N, 3, 11, 6))
    w = rng.standard_normal((4, 3, kh, kw))
    b = rng.standard_normal(4)
    want = K.conv2d_forward_reference(x, w, b, s, p)
    close(KT.conv2d_forward(x, w, b, stride, padding), want)
    g = rng.standard_normal(want.shape)
    for got, ref in zip(KT.conv2d_backward(x, w, g, stride, padding), K.conv2d_backward_reference(x, w, g, s, p)):
        close(got, ref)
    wt = rng.standard_normal((3, 2, kh, kw))
    yt = K.conv_transpose2d_forward_reference(x, wt, b[:2], s, p)
    close(KT.conv_transpose2d_forward(x, wt, b[:2], stride, padding), yt)
    gt = rng.standard_normal(yt.shape)
    for got, ref in zip(KT.conv_transpose2d_backward(x, wt, gt, stride, padding),
                        K.conv_transpose2d_backward_reference(x, wt, gt, s, p)):
        close(got, ref)


@pytest.mark.parametrize("N,H,K_,T,budget", [
    (64, 8, 1152, 2, 4 << 20), (64, 16, 576, 2, 4 << 20), (3, 9, 18, 2, 1 << 20), (1, 64, 27, 2, 4 << 20),
    (2, 64, 1152, 2, 4 << 20), (5, 7, 9, 7, 64), (40, 4, 9, 3, 1 << 20)])
def test_plan_covers_every_row_once_within_budget(monkeypatch, N, H, K_, T, budget):
    monkeypatch.setattr(K, "_CHUNK_BYTES", budget)
    nb, band = K._plan(N, H, H, K_, 4, T)
    assert nb == 1 or band == H
    chunks = [K._chunk(t, N, nb, H, band) for t in range(-(-N // nb) * -(-H // band))]
    covered = np.zeros((N, H), int)
    for n0, mb, r0, nr in chunks:
        covered[n0 : n0 + mb, r0 : r0 + nr] += 1
    assert (covered == 1).all()
    assert len(chunks) >= min(T, N * H)
    assert nb * band * H * K_ * 4 <= max(budget, H * K_ * 4)  # one row is the smallest chunk
    if band == H and N >= T:  # whole images: the same number of chunks per thread, batched to the GEMM width
        assert len(chunks) % T == 0 or len(chunks) == N
        assert (nb - 1) * H * H < K._GEMM_WIDTH
    runs = [K._thread_chunks(t, T, N, nb, H, band) for t in range(T)]
    assert runs[0][0] == 0 and runs[-1][1] == len(chunks) and all(a[1] == b[0] for a, b in zip(runs, runs[1:]))

def test_float32_fast_path_matches_float64_reference():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 6, 10, 12)).astype(np.float32)
    w = rng.standard_normal((5, 6, 3, 3)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    out = KT.conv2d_forward(x, w, b, 1, 1)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    close(out, K.conv2d_forward_reference(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64),
                                          (1, 1), (1, 1)), np.float32)
    g = rng.standard_normal(out.shape).astype(np.float32)
    got = KT.conv2d_backward(x, w, g, 1, 1)
    ref = K.conv2d_backward_reference(*(a.astype(np.float64) for a in (x, w, g)), (1, 1), (1, 1))
    for a, r in zip(got, ref):
        assert a.dtype == np.float32
        close(a, r, np.float32)


def test_pointwise_conv_skips_im2col_and_matches_reference():
    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal((2, 5, 4, 3)), rng.standard_normal((7, 5, 1, 1)), rng.standard_normal(7)
    close(KT.conv2d_forward(x, w, b), K.conv2d_forward_reference(x, w, b))
    g = rng.standard_normal((2, 7, 4, 3))
    for got, ref in zip(KT.conv2d_backward(x, w, g), K.conv2d_backward_reference(x, w, g)):
        close(got, ref)


def test_backward_skips_unneeded_gradients():
    rng = np.random.default_rng(4)
    x, w, g = rng.standard_normal((1, 2, 5, 5)), rng.standard_normal((3, 2, 3, 3)), rng.standard_normal((1, 3, 5, 5))
    gx, gw, gb = KT.conv2d_backward(x, w, g, 1, 1, need_x=False, need_b=False)
    assert gx is None and gb is None
    close(gw, K.conv2d_backward_reference(x, w, g, (1, 1), (1, 1))[1])


# -- central differences (float64) through the autograd Functions -----------------


@pytest.mark.parametrize("stride,padding,groups", [(1, 1, 1), (2, (1, 0), 1), ((1, 2), 2, 2)])
def test_conv2d_gradients_central_differences(stride, padding, groups):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 4, 6, 5))
    w = rng.standard_normal((6, 4 // groups, 3, 2))
    b = rng.standard_normal(6)
    check_gradients(lambda x, w, b: F.conv2d(x, w, b, stride, padding, groups=groups), [x, w, b])


@pytest.mark.parametrize("stride,padding,output_padding", [(1, 0, 0), (2, 1, 1), ((2, 3), (0, 1), (1, 2))])
def test_conv_transpose2d_gradients_central_differences(stride, padding, output_padding):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 4, 5))[..., ::-1]  # non-contiguous
    w = rng.standard_normal((3, 2, 3, 4))
    b = rng.standard_normal(2)
    check_gradients(lambda x, w, b: F.conv_transpose2d(x, w, b, stride, padding, output_padding), [x, w, b])


# -- torch oracle (float32) ---------------------------------------------------------

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
    close(y.numpy(), yt.detach().numpy(), np.float32)
    for ours, theirs in ((xn, xt), (wn, wt), (bn, bt)):
        close(ours.grad.numpy(), theirs.grad.numpy(), np.float32)


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
    close(y.numpy(), yt.detach().numpy(), np.float32)
    for ours, theirs in ((xn, xt), (wn, wt), (bn, bt)):
        close(ours.grad.numpy(), theirs.grad.numpy(), np.float32)


# -- modules ------------------------------------------------------------------------


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
    close(m(nd.tensor(x)).numpy(), tm(torch.tensor(x)).detach().numpy(), np.float32)


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
    close(m(x).numpy(), tm(torch.tensor(x.numpy())).detach().numpy(), np.float32)


# -- bad input ------------------------------------------------------------------------


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
