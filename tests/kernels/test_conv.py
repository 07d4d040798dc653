"""Conv family, what the table harness (test_table.py) does not cover: the fast path's chunk plan,
row bands and image batches, thread partitions, the float32 path, 1×1 convs, skipped gradients."""

import numpy as np
import pytest

from npdiff import kernels as KT
from npdiff.kernels import conv as K
from npdiff.kernels.checks import pair
from tests.kernels.harness import close

TERMS = 1024  # the longest sum below: gw over N·Ho·Wo ≤ 5·11·6 products, or x.size + w.size


# -- fast and xp vs reference ---------------------------------------------------


@pytest.mark.parametrize("chunk_bytes", [64, 3000, 1 << 20])
@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1), (1, 0)])
def test_chunking_row_bands_and_image_batches(monkeypatch, chunk_bytes, stride, padding):
    """Tiny budgets split images into bands of output rows; large ones batch several images."""
    monkeypatch.setattr(K, "_CHUNK_BYTES", chunk_bytes)
    monkeypatch.setattr(K, "SMALL_PLANE", 0)  # every plane through im2col's chunks
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 2, 9, 7))
    w = rng.standard_normal((4, 2, 3, 3))
    b = rng.standard_normal(4)
    want = K.conv2d_forward_reference(x, w, b, (stride,) * 2, (padding,) * 2)
    close(KT.conv2d_forward(x, w, b, stride, padding), want, np.float64, TERMS)
    g = rng.standard_normal(want.shape)
    for got, ref in zip(KT.conv2d_backward(x, w, g, stride, padding),
                        K.conv2d_backward_reference(x, w, g, (stride,) * 2, (padding,) * 2)):
        close(got, ref, np.float64, TERMS)
    wt = rng.standard_normal((2, 4, 3, 3))
    close(KT.conv_transpose2d_forward(x, wt, b, stride, padding),
          K.conv_transpose2d_forward_reference(x, wt, b, (stride,) * 2, (padding,) * 2), np.float64, TERMS)


@pytest.mark.parametrize("threads", [1, 3, 7])
@pytest.mark.parametrize("N,stride,padding,k", [(1, 1, 1, 3), (2, 2, 1, 3), (5, 1, 2, 4), (3, (1, 2), (2, 0), (5, 2)),
                                                 (1, 3, 1, 1)])  # stride > kernel: a band of gx rows no window reaches
def test_thread_partition_row_bands_halo_and_idle_threads(monkeypatch, threads, N, stride, padding, k):
    """Any worker count: chunks split evenly or not, threads left without a chunk (their weight-gradient
    accumulator must be zero), and fewer images than threads (bands of rows; grad-input bands
    recompute their halo of g rows and write only their own gx rows, zeros where no window reaches)."""
    monkeypatch.setattr(K, "num_threads", lambda: threads)
    monkeypatch.setattr(K, "SMALL_PLANE", 0)  # every plane through im2col's chunks
    rng = np.random.default_rng(11)
    s, p = pair(stride, "s"), pair(padding, "p")
    kh, kw = pair(k, "k")
    x = rng.standard_normal((N, 3, 11, 6))
    w = rng.standard_normal((4, 3, kh, kw))
    b = rng.standard_normal(4)
    want = K.conv2d_forward_reference(x, w, b, s, p)
    close(KT.conv2d_forward(x, w, b, stride, padding), want, np.float64, TERMS)
    g = rng.standard_normal(want.shape)
    for got, ref in zip(KT.conv2d_backward(x, w, g, stride, padding), K.conv2d_backward_reference(x, w, g, s, p)):
        close(got, ref, np.float64, TERMS)
    wt = rng.standard_normal((3, 2, kh, kw))
    yt = K.conv_transpose2d_forward_reference(x, wt, b[:2], s, p)
    close(KT.conv_transpose2d_forward(x, wt, b[:2], stride, padding), yt, np.float64, TERMS)
    gt = rng.standard_normal(yt.shape)
    for got, ref in zip(KT.conv_transpose2d_backward(x, wt, gt, stride, padding),
                        K.conv_transpose2d_backward_reference(x, wt, gt, s, p)):
        close(got, ref, np.float64, TERMS)


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
                                          (1, 1), (1, 1)), np.float32, TERMS)
    g = rng.standard_normal(out.shape).astype(np.float32)
    got = KT.conv2d_backward(x, w, g, 1, 1)
    ref = K.conv2d_backward_reference(*(a.astype(np.float64) for a in (x, w, g)), (1, 1), (1, 1))
    for a, r in zip(got, ref):
        assert a.dtype == np.float32
        close(a, r, np.float32, TERMS)


def test_pointwise_conv_skips_im2col_and_matches_reference():
    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal((2, 5, 4, 3)), rng.standard_normal((7, 5, 1, 1)), rng.standard_normal(7)
    close(KT.conv2d_forward(x, w, b), K.conv2d_forward_reference(x, w, b), np.float64, TERMS)
    g = rng.standard_normal((2, 7, 4, 3))
    for got, ref in zip(KT.conv2d_backward(x, w, g), K.conv2d_backward_reference(x, w, g)):
        close(got, ref, np.float64, TERMS)


def test_backward_skips_unneeded_gradients():
    rng = np.random.default_rng(4)
    x, w, g = rng.standard_normal((1, 2, 5, 5)), rng.standard_normal((3, 2, 3, 3)), rng.standard_normal((1, 3, 5, 5))
    gx, gw, gb = KT.conv2d_backward(x, w, g, 1, 1, need_x=False, need_b=False)
    assert gx is None and gb is None
    close(gw, K.conv2d_backward_reference(x, w, g, (1, 1), (1, 1))[1], np.float64, TERMS)


# -- small planes: batch last, one GEMM ------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("N,C,O,H,W,k,stride,padding", [
    (3, 4, 5, 4, 4, 3, 1, 1), (2, 3, 2, 8, 8, 3, 2, 1), (1, 2, 3, 3, 5, (2, 3), (1, 2), (2, 0)),
    (4, 5, 3, 2, 2, 3, 1, 2), (2, 1, 1, 1, 1, 1, 1, 1), (5, 3, 4, 7, 6, 3, 3, 0)])
def test_batch_last_path_matches_the_reference(N, C, O, H, W, k, stride, padding, dtype):
    """The small-plane path (forced with algorithm="batch_last"): odd sizes, strides 1-3, paddings 0-2,
    non-square kernels, gx and gw, against the float64 reference (sums of C·kh·kw products forward,
    O·kh·kw into gx, N·Ho·Wo into gw)."""
    rng = np.random.default_rng(N * 10 + H)
    s, p, (kh, kw) = pair(stride, "s"), pair(padding, "p"), pair(k, "k")
    x, w, b = rng.standard_normal((N, C, H, W)), rng.standard_normal((O, C, kh, kw)), rng.standard_normal(O)
    want = K.conv2d_forward_reference(x, w, b, s, p)
    g = rng.standard_normal(want.shape)
    gx_want, gw_want, _ = K.conv2d_backward_reference(x, w, g, s, p)
    x_, w_, b_, g_ = (a.astype(dtype) for a in (x, w, b, g))
    y = K.conv2d_forward_cpu(x_, w_, b_, s, p, np.empty(want.shape, dtype), algorithm="batch_last")
    gx, gw, _ = K.conv2d_backward_cpu(x_, w_, g_, s, p, need_b=False, algorithm="batch_last")
    close(y, want, dtype, C * kh * kw + 1, "batch-last forward")
    close(gx, gx_want, dtype, O * kh * kw, "batch-last grad-input")
    close(gw, gw_want, dtype, N * want.shape[2] * want.shape[3], "batch-last grad-weight")
    assert gx.flags.c_contiguous and gw.shape == w.shape and y.dtype == gx.dtype == gw.dtype == dtype


def test_small_planes_take_the_batch_last_path(monkeypatch):
    """The fast column takes it for outputs of at most SMALL_PLANE pixels (4×4, and 8×8 at stride 2),
    not for larger ones nor for 1×1 convs (their own stacked matmul)."""
    assert K.small_plane_pays(4, 4) and K.small_plane_pays(2, 8) and not K.small_plane_pays(5, 4)
    calls = []
    real = K._forward_batch_last
    monkeypatch.setattr(K, "_forward_batch_last", lambda x, *a: calls.append(x.shape) or real(x, *a))
    rng = np.random.default_rng(0)
    for H, stride, k in [(4, 1, 3), (8, 2, 3), (8, 1, 3), (4, 1, 1)]:
        x, w = rng.standard_normal((2, 3, H, H)), rng.standard_normal((4, 3, k, k))
        KT.conv2d_forward(x, w, None, stride, k // 2)
    assert calls == [(2, 3, 4, 4), (2, 3, 8, 8)]


# -- Winograd F(2×2, 3×3) --------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("N,C,O,H,W,padding", [(1, 1, 1, 1, 1, 1), (2, 3, 4, 5, 7, 1), (3, 2, 5, 6, 6, 0),
                                               (1, 4, 3, 4, 5, 2), (2, 5, 2, 9, 3, (2, 0)), (5, 3, 3, 3, 4, 1)])
def test_winograd_forward_and_grad_input_match_the_reference(N, C, O, H, W, padding, dtype):
    """Odd and even sizes (a last half tile), paddings 0-2, batches over several chunks; the winograd
    column against the reference, with the direct tolerance times winograd.ERROR_FACTOR."""
    rng = np.random.default_rng(N * 100 + H)
    x, w, b = rng.standard_normal((N, C, H, W)), rng.standard_normal((O, C, 3, 3)), rng.standard_normal(O)
    want = K.conv2d_forward_reference(x, w, b, (1, 1), pair(padding, "padding"))
    g = rng.standard_normal(want.shape)
    gx_want, gw_want, _ = K.conv2d_backward_reference(x, w, g, (1, 1), pair(padding, "padding"))
    with KT.use("winograd"):
        y = KT.conv2d_forward(x.astype(dtype), w.astype(dtype), b.astype(dtype), 1, padding)
        gx, gw, _ = KT.conv2d_backward(x.astype(dtype), w.astype(dtype), g.astype(dtype), 1, padding)
    terms = 9 * C * W_ERR  # sums of 9·C products, the Winograd bound
    close(y, want, dtype, terms, "winograd forward")
    close(gx, gx_want, dtype, 9 * O * W_ERR, "winograd grad-input")
    close(gw, gw_want, dtype, N * H * W, "grad-weight (im2col)")


W_ERR = K.winograd.ERROR_FACTOR


def test_winograd_error_against_float64_is_within_its_bound():
    """float32 Winograd and float32 im2col against float64 on UNet-like data (C = 64, unit normal x,
    w scaled by 1/√(9C)): both within their bounds (ε·Σ|x||w| per output; Winograd: times
    ERROR_FACTOR); the measured ratio is the number quoted in docs/kernels.md."""
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((4, 64, 16, 16)), rng.standard_normal((64, 64, 3, 3)) / np.sqrt(9 * 64)
    exact = K.conv2d_forward_cpu(x, w, None, (1, 1), (1, 1), np.empty((4, 64, 16, 16)), algorithm="im2col")  # float64
    scale = K.conv2d_forward_cpu(np.abs(x), np.abs(w), None, (1, 1), (1, 1), np.empty((4, 64, 16, 16)),
                                 algorithm="im2col")  # Σ|x||w| per output
    x32, w32 = x.astype(np.float32), w.astype(np.float32)
    errs = {}
    for algo in ("im2col", "winograd"):
        y = K.conv2d_forward_cpu(x32, w32, None, (1, 1), (1, 1), np.empty((4, 64, 16, 16), np.float32),
                                 algorithm=algo)
        errs[algo] = float(np.max(np.abs(y - exact) / scale)) / np.finfo(np.float32).eps
    assert errs["im2col"] <= 9 * 64  # n·ε·Σ|x||w| for a sum of n = 9C terms (any order)
    assert errs["winograd"] <= W_ERR * 9 * 64
    assert errs["winograd"] > 0 and errs["im2col"] > 0


def test_winograd_choice_rule():
    """Winograd where it measured faster (≥ 8×8 with ≥ 32 channels in and out; grad-input also
    C_in·C_out ≥ 96·32), and only where it computes the conv (3×3, stride 1, padding ≤ 2)."""
    assert K.winograd_applies(3, 3, (1, 1), (1, 1)) and K.winograd_applies(3, 3, (1, 1), (2, 0))
    assert not K.winograd_applies(3, 3, (2, 2), (1, 1)) and not K.winograd_applies(1, 1, (1, 1), (0, 0))
    assert not K.winograd_applies(3, 3, (1, 1), (3, 3)) and not K.winograd_applies(5, 5, (1, 1), (2, 2))
    for gi in (False, True):
        assert K.winograd_pays(64, 64, 16, 16, gi) and K.winograd_pays(128, 128, 8, 8, gi)
        assert K.winograd_pays(96, 32, 16, 16, gi) and K.winograd_pays(128, 64, 8, 8, gi)
        assert not K.winograd_pays(3, 64, 64, 64, gi) and not K.winograd_pays(64, 64, 4, 4, gi)
    # the forward from C_in·C_out = 32·32, the grad-input from 96·32 (measured after the L2-sized chunks)
    assert K.winograd_pays(32, 64, 32, 32) and K.winograd_pays(32, 32, 16, 16)
    assert not K.winograd_pays(32, 64, 32, 32, True) and not K.winograd_pays(32, 32, 16, 16, True)
    assert not K.winograd_pays(16, 64, 16, 16) and not K.winograd_pays(32, 32, 4, 4)


def test_the_fast_column_takes_winograd_where_it_pays(monkeypatch):
    """The numba column calls the Winograd kernel exactly when the rule says so."""
    calls = []
    real = K.winograd.winograd_conv3x3
    monkeypatch.setattr(K.winograd, "winograd_conv3x3", lambda *a: calls.append(a[0].shape) or real(*a))
    rng = np.random.default_rng(0)
    for C, H in [(96, 8), (16, 8), (96, 4)]:
        x, w = rng.standard_normal((2, C, H, H)), rng.standard_normal((32, C, 3, 3))
        KT.conv2d_forward(x, w, None, 1, 1)
    assert calls == [(2, 96, 8, 8)]
