"""Conv family, what the table harness (test_table.py) does not cover: the fast path's chunk plan,
row bands and image batches, thread partitions, the float32 path, 1×1 convs, skipped gradients."""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


# -- Winograd F(2×2, 3×3) and F(4×4, 3×3) --------------------------------------------------

W_ERR = K.winograd.ERROR_FACTOR
W4_ERR, W4_GW_ERR = K.winograd4.ERROR_FACTOR, K.winograd4.WEIGHT_GRAD_ERROR_FACTOR


@pytest.mark.parametrize("column", ["winograd", "winograd4", "winograd4_microgemm"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("N,C,O,H,W,padding", [(1, 1, 1, 1, 1, 1), (2, 3, 4, 5, 7, 1), (3, 2, 5, 6, 6, 0),
                                               (1, 4, 3, 4, 5, 2), (2, 5, 2, 9, 3, (2, 0)), (5, 3, 3, 3, 4, 1)])
def test_winograd_forward_and_gradients_match_the_reference(monkeypatch, column, N, C, O, H, W, padding, dtype):
    """Odd and even sizes (last tiles cut by the edge), paddings 0-2, batches over several chunks and threads
    (some idle); each winograd column against the reference, with the direct tolerance times its transforms'
    error factor (F(2×2): forward and grad-input, grad-weight by im2col; F(4×4): all three)."""
    monkeypatch.setattr(K.winograd4, "CHUNK_BYTES", 1)  # one tile row of one image per chunk
    monkeypatch.setattr(K.winograd4, "MICROGEMM_CHUNK_BYTES", 1)
    monkeypatch.setattr(K.winograd4, "num_threads", lambda: 3)
    rng = np.random.default_rng(N * 100 + H)
    x, w, b = rng.standard_normal((N, C, H, W)), rng.standard_normal((O, C, 3, 3)), rng.standard_normal(O)
    want = K.conv2d_forward_reference(x, w, b, (1, 1), pair(padding, "padding"))
    g = rng.standard_normal(want.shape)
    gx_want, gw_want, _ = K.conv2d_backward_reference(x, w, g, (1, 1), pair(padding, "padding"))
    with KT.use(column):
        y = KT.conv2d_forward(x.astype(dtype), w.astype(dtype), b.astype(dtype), 1, padding)
        gx, gw, _ = KT.conv2d_backward(x.astype(dtype), w.astype(dtype), g.astype(dtype), 1, padding)
    factor, gw_factor = (W_ERR, 1) if column == "winograd" else (W4_ERR, W4_GW_ERR)  # winograd4*: F(4×4)
    close(y, want, dtype, 9 * C * factor, f"{column} forward")  # sums of 9·C products
    close(gx, gx_want, dtype, 9 * O * factor, f"{column} grad-input")
    close(gw, gw_want, dtype, N * H * W * gw_factor, f"{column} grad-weight")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_winograd4_microgemm_whole_blocks_and_edges_match_the_reference(dtype):
    """Channels past microgemm's 4 × 32 register blocks (36 and 40: whole blocks and edge columns; the tile
    counts 2·3·2 = 12 and 2·9 = 18 rows: whole blocks and edge rows) through the forward, grad-input and
    grad-weight with the products always by ``microgemm.gemm``, against the reference."""
    rng = np.random.default_rng(5)
    N, C, O, H, W = 2, 36, 40, 9, 7
    x, w, b = rng.standard_normal((N, C, H, W)), rng.standard_normal((O, C, 3, 3)), rng.standard_normal(O)
    want = K.conv2d_forward_reference(x, w, b, (1, 1), (1, 1))
    g = rng.standard_normal(want.shape)
    gx_want, gw_want, _ = K.conv2d_backward_reference(x, w, g, (1, 1), (1, 1))
    with KT.use("winograd4_microgemm"):
        y = KT.conv2d_forward(x.astype(dtype), w.astype(dtype), b.astype(dtype), 1, 1)
        gx, gw, _ = KT.conv2d_backward(x.astype(dtype), w.astype(dtype), g.astype(dtype), 1, 1)
    close(y, want, dtype, 9 * C * W4_ERR, "forward")
    close(gx, gx_want, dtype, 9 * O * W4_ERR, "grad-input")
    close(gw, gw_want, dtype, N * H * W * W4_GW_ERR, "grad-weight")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N,C,O,H,W,k,stride,padding", [(3, 3, 9, 11, 7, 3, 1, 1), (2, 1, 4, 9, 9, 3, 2, 1),
                                                         (2, 2, 5, 8, 6, (3, 5), (1, 2), (2, 0)),
                                                         (1, 3, 2, 5, 5, 3, 1, 0)])
def test_taps_last_weight_grad_matches_the_reference(monkeypatch, dtype, N, C, O, H, W, k, stride, padding):
    """The pixels-major weight gradient of few-tap convs (C·kh·kw ≤ 32) through microgemm: bands of one output
    row (TAPS_LAST_PIXELS 1), 3 threads (one idle with N = 2, 1), strides, paddings, non-square kernels,
    fewer output channels than a register block's rows, against the reference."""
    monkeypatch.setattr(K, "TAPS_LAST_PIXELS", 1)
    monkeypatch.setattr(K, "num_threads", lambda: 3)
    rng = np.random.default_rng(N * 10 + C)
    s, p, (kh, kw) = pair(stride, "s"), pair(padding, "p"), pair(k, "k")
    x, w = rng.standard_normal((N, C, H, W)), rng.standard_normal((O, C, kh, kw))
    g = rng.standard_normal(K.conv2d_forward_reference(x, w, None, s, p).shape)
    _, want, _ = K.conv2d_backward_reference(x, w, g, s, p)
    got = K._weight_grad_taps_last(x.astype(dtype), g.astype(dtype), kh, kw, s, p).reshape(want.shape)
    close(got, want, dtype, N * g.shape[2] * g.shape[3], "taps-last grad-weight")


@settings(max_examples=25, deadline=None)
@given(R=st.integers(1, 9), K_=st.integers(1, 40), J=st.integers(1, 70), trans_a=st.booleans(),
       accumulate=st.booleans(), dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 99))
def test_microgemm_matches_the_product_within_its_rounding_bound(R, K_, J, trans_a, accumulate, dtype, seed):
    """out (+)= op(a) @ b for any sizes (whole 4 × 32 blocks, edge rows and columns, both forms of a), within
    the bound of a sum of K + 1 terms rounded once each (fused multiply-adds): (K + 1)·ε·Σ|terms|."""
    from npdiff.kernels import microgemm

    rng = np.random.default_rng(seed)
    a = rng.standard_normal((K_, R) if trans_a else (R, K_)).astype(dtype)
    b, out0 = rng.standard_normal((K_, J)).astype(dtype), rng.standard_normal((R, J)).astype(dtype)
    out = microgemm.matmul_blocked(a, b, out0.copy(), trans_a, accumulate)
    a64 = (a.T if trans_a else a).astype(np.float64)
    want = a64 @ b + (out0 if accumulate else 0)
    bound = (K_ + 1) * np.finfo(dtype).eps * (np.abs(a64) @ np.abs(b.astype(np.float64)) + np.abs(out0) * accumulate)
    assert np.all(np.abs(out - want) <= bound)


def test_microgemm_rule_follows_the_blas_and_the_host(monkeypatch):
    """microgemm replaces BLAS only where asked, or where the host has AVX-512 and the BLAS's kernel does not;
    in the F(4×4) driver only for products at least LANES columns wide; in im2col's forward also for fewer
    output channels than ROWS on an AVX-512 host; nowhere with NPDIFF_MICROGEMM=0."""
    from npdiff.kernels import microgemm

    def clear():
        microgemm.beats_blas.cache_clear()
        microgemm.host_has_avx512.cache_clear()

    for forced in ("0", "1"):
        monkeypatch.setenv("NPDIFF_MICROGEMM", forced)
        clear()
        assert microgemm.beats_blas() == (forced == "1")
        assert K.winograd4.own_gemm_pays(64) == (forced == "1") and not K.winograd4.own_gemm_pays(16)
        assert K.im2col_own_gemm_pays(64) == K.im2col_own_gemm_pays(3) == (forced == "1")  # 0: few rows too
        # the stems' pixels-major weight gradient: 2 to 3 channels of 3×3 taps (≤ 32), at least 4 outputs
        assert K.taps_last_pays(3, 3, 3, 64) == K.taps_last_pays(2, 3, 3, 4) == (forced == "1")
        assert not (K.taps_last_pays(1, 3, 3, 32) or K.taps_last_pays(4, 3, 3, 64) or K.taps_last_pays(3, 3, 3, 3))
        # im2col's grad-input: while a chunk's g fits in 512 KB (not the 3 -> 64 stem's 64 × 4096 floats)
        assert K.input_grad_own_gemm_pays(32, 256, 4) == K.input_grad_own_gemm_pays(3, 1024, 4) == (forced == "1")
        assert not K.input_grad_own_gemm_pays(64, 4096, 4)
    monkeypatch.delenv("NPDIFF_MICROGEMM")
    clear()
    import llvmlite.binding as llvm
    from threadpoolctl import threadpool_info

    host_avx512 = "+avx512f" in llvm.get_host_cpu_features().flatten().split(",")
    archs = {str(i.get("architecture", "")).lower() for i in threadpool_info() if i.get("user_api") == "blas"}
    assert microgemm.beats_blas() == (host_avx512 and bool(archs) and not archs & set(microgemm.WIDE_OPENBLAS))
    assert K.im2col_own_gemm_pays(3) == host_avx512  # fewer output channels than a register block's rows
    assert K.input_grad_own_gemm_pays(3, 1024, 4) == host_avx512
    clear()


@pytest.mark.parametrize("N,C,O,th,tw,budget,T", [(32, 64, 32, 8, 8, 512 << 10, 2), (64, 64, 64, 4, 4, 512 << 10, 2),
                                                   (5, 8, 8, 3, 3, 1 << 30, 2), (3, 16, 16, 5, 2, 1, 4)])
def test_winograd4_chunks_are_whole_images_or_bands_within_budget(N, C, O, th, tw, budget, T):
    """A chunk's V + M stays within the budget (or is one tile row): whole images where one fits, with a
    multiple of T chunks while N allows, else bands of tile rows of one image."""
    nb, bt = K.winograd4._chunk_plan(N, C, O, th, tw, 4, T, budget)
    per_row = 36 * (C + O) * tw * 4
    assert 1 <= bt <= th and 1 <= nb <= N and (bt == th or nb == 1)
    assert nb * bt * per_row <= budget or (nb, bt) == (1, 1)
    if bt == th:
        chunks = -(-N // nb)
        assert chunks % T == 0 or chunks == N


def test_toom_cook_transforms_compute_the_correlation():
    """F(4, 3) from the points: y = Aᵀ[(G g) ⊙ (Bᵀ d)] is the 3-tap correlation of 6 inputs, exactly up to
    float64 rounding, for the points in use and the usual (0, ±1, ±2); ours have the smaller error factor,
    for the forward and the weight gradient; repeated or missing points are refused."""
    rng = np.random.default_rng(0)
    d, g = rng.standard_normal((6, 50)), rng.standard_normal((3, 50))
    want = np.stack([np.einsum("kn,kn->n", d[i : i + 3], g) for i in range(4)])
    usual = K.winograd4.toom_cook(tuple(Fraction(p) for p in (0, 1, -1, 2, -2)))
    for a_t, gm, b_t in (usual, (K.winograd4.A_T, K.winograd4.G, K.winograd4.B_T)):
        np.testing.assert_allclose(a_t @ ((gm @ g) * (b_t @ d)), want, rtol=0, atol=1e-12)
    assert W4_ERR < K.winograd4.error_factor(*usual) and W4_GW_ERR < K.winograd4.weight_grad_error_factor(*usual)
    # F(2, 3) by the same construction on (0, 1, −1) has winograd.py's factor
    assert K.winograd4.error_factor(*K.winograd4.toom_cook((0, 1, -1), m=2)) == pytest.approx(64 / 9)
    with pytest.raises(ValueError, match="distinct"):
        K.winograd4.toom_cook((0, 1, 1, 2, -2))
    with pytest.raises(ValueError, match="5 distinct"):
        K.winograd4.toom_cook((0, 1, -1))


def _patches(a, padding, th, tw):
    """(N, C, th, tw, 6, 6): the 6×6 patches at (4i, 4j) of a zero-padded by ``padding`` (and past the edge)."""
    N, C, H, W = a.shape
    ap = np.zeros((N, C, 4 * th + 2, 4 * tw + 2))
    ap[:, :, padding : padding + H, padding : padding + W] = a
    return np.stack([np.stack([ap[:, :, 4 * i : 4 * i + 6, 4 * j : 4 * j + 6] for j in range(tw)], 2)
                     for i in range(th)], 2)


def _winograd4_abs(x, w, g, padding):
    """(forward, grad-weight) of F(4×4, 3×3) with |Aᵀ|, |G|, |Bᵀ| on |x|, |w|, |g|, in float64: per output,
    the sum of the absolute values of every product the algorithm adds (the bounds' right-hand sides)."""
    W4 = K.winograd4
    A, Gm, B = np.abs(W4.A_T), np.abs(W4.G), np.abs(W4.B_T)
    Ho, Wo = g.shape[2], g.shape[3]
    th, tw = -(-Ho // 4), -(-Wo // 4)
    v = np.einsum("ar,nctwrs,bs->nctwab", B, _patches(np.abs(x), padding, th, tw), B, optimize=True)
    u = np.einsum("au,ocuv,bv->ocab", Gm, np.abs(w), Gm, optimize=True)
    y = np.einsum("ia,notwab,jb->notiwj", A, np.einsum("nctwab,ocab->notwab", v, u, optimize=True), A, optimize=True)
    y = y.reshape(g.shape[0], w.shape[0], 4 * th, 4 * tw)[:, :, :Ho, :Wo]
    gy = np.zeros((g.shape[0], g.shape[1], 4 * th, 4 * tw))
    gy[:, :, :Ho, :Wo] = np.abs(g)
    gy = gy.reshape(g.shape[0], g.shape[1], th, 4, tw, 4)  # (N, O, ti, i, tj, j)
    gm = np.einsum("ia,notiwj,jb->notwab", A, gy, A, optimize=True)
    gw = np.einsum("au,nctwab,notwab,bv->ocuv", Gm, v, gm, Gm, optimize=True)
    return y, gw


@settings(max_examples=6, deadline=None)
@given(C=st.sampled_from([8, 32, 64]), H=st.integers(4, 13), padding=st.integers(0, 2), seed=st.integers(0, 99))
def test_winograd_error_against_float64_is_within_its_bound(C, H, padding, seed):
    """float32 F(4×4, 3×3) against float64, forward and grad-weight, within the bound derived from its
    arithmetic: an output is a chain of roundings, 6 + 6 deep in the input transform (two 6-term
    combinations), 1 + 9 for U (G ⊗ G rounded to float32, a 9-term float32 sum), C + 1 in the GEMM,
    6 + 6 in the output transform, 1 for the bias, so |y₃₂ − y| ≤ (C + 36)·ε·S, with S the sum of the
    absolute values of every product the algorithm adds (the same pipeline on |x|, |w|, |Aᵀ|, |G|, |Bᵀ|:
    ``_winograd4_abs``); the weight gradient 12 (V) + 8 (A g Aᵀ) + 1 + tiles + T (threads' partial sums)
    + 1 + 36 (the adjoint transform) deep. And the F(2×2, 3×3) and im2col paths within theirs
    (ε·Σ|x||w| times 9C, times winograd.ERROR_FACTOR for Winograd)."""
    rng = np.random.default_rng(seed)
    N, O, eps = 2, C, np.finfo(np.float32).eps
    x, w = rng.standard_normal((N, C, H, H)), rng.standard_normal((O, C, 3, 3)) / np.sqrt(9 * C)
    Ho, pad = H + 2 * padding - 2, (padding, padding)
    g = rng.standard_normal((N, O, Ho, Ho))

    def fwd(x, w, algo="im2col"):  # float64 im2col: exact to ~1e-16 relative, far below float32's rounding
        return K.conv2d_forward_cpu(x, w, None, (1, 1), pad, np.empty((N, O, Ho, Ho), x.dtype), algorithm=algo)

    exact, scale = fwd(x, w), fwd(np.abs(x), np.abs(w))  # y, and Σ|x||w| per output
    x32, w32 = x.astype(np.float32), w.astype(np.float32)

    s_y, s_gw = _winograd4_abs(x, w, g, padding)
    assert np.all(np.abs(fwd(x32, w32, "winograd4") - exact) <= (C + 36) * eps * s_y)
    assert np.all(np.abs(fwd(x32, w32, "winograd") - exact) <= 9 * C * W_ERR * eps * scale)
    assert np.all(np.abs(fwd(x32, w32) - exact) <= 9 * C * eps * scale)
    gw_exact = K.conv2d_backward_cpu(x, w, g, (1, 1), pad, False, True, False, algorithm="im2col")[1]
    gw = K.winograd4.winograd4_weight_grad(x32, g.astype(np.float32), pad)
    tiles = N * (-(-Ho // 4)) ** 2
    assert np.all(np.abs(gw - gw_exact) <= (tiles + K.winograd4.num_threads() + 58) * eps * s_gw)


def test_winograd4_choice_rule():
    """F(4×4, 3×3) where it measured faster (output ≥ 4×4 with ≥ 16 channels in and out), and only where
    it computes the conv (3×3, stride 1, padding ≤ 2)."""
    assert K.winograd_applies(3, 3, (1, 1), (1, 1)) and K.winograd_applies(3, 3, (1, 1), (2, 0))
    assert not K.winograd_applies(3, 3, (2, 2), (1, 1)) and not K.winograd_applies(1, 1, (1, 1), (0, 0))
    assert not K.winograd_applies(3, 3, (1, 1), (3, 3)) and not K.winograd_applies(5, 5, (1, 1), (2, 2))
    for c_in, c_out, h in [(64, 64, 16), (128, 128, 8), (32, 64, 32), (96, 32, 16), (128, 64, 4), (16, 16, 16)]:
        assert K.winograd4_pays(c_in, c_out, h, h) and K.winograd4_pays(c_out, c_in, h, h)
    for c_in, c_out, h in [(3, 64, 64), (8, 32, 16), (64, 64, 2), (1, 32, 16)]:
        assert not K.winograd4_pays(c_in, c_out, h, h) and not K.winograd4_pays(c_out, c_in, h, h)
    # memory: 36·C_in·C_out floats of transformed weights (per thread for the weight gradient)
    assert K.winograd4_pays(640, 640, 8, 8) and not K.winograd4_pays(1280, 1280, 8, 8)
    assert K.winograd4_pays(320, 320, 8, 8, 4, 2) and not K.winograd4_pays(960, 960, 8, 8, 4, 2)


def test_the_fast_column_takes_winograd4_where_it_pays(monkeypatch):
    """The numba column calls the F(4×4, 3×3) kernels exactly when the rule says so: forward and grad-input
    (one kernel) and grad-weight, on 4×4 planes before the batch-last path; never F(2×2, 3×3)."""
    calls = []
    fwd, wgrad, f2 = K.winograd4.winograd4_conv3x3, K.winograd4.winograd4_weight_grad, K.winograd.winograd_conv3x3
    monkeypatch.setattr(K.winograd4, "winograd4_conv3x3",
                        lambda *a, **k: calls.append(("f4", a[0].shape)) or fwd(*a, **k))
    monkeypatch.setattr(K.winograd4, "winograd4_weight_grad", lambda *a: calls.append(("gw", a[0].shape)) or wgrad(*a))
    monkeypatch.setattr(K.winograd, "winograd_conv3x3", lambda *a: calls.append(("f2", a[0].shape)) or f2(*a))
    rng = np.random.default_rng(0)
    for C, H in [(96, 8), (8, 8), (32, 4), (32, 2)]:
        x, w = rng.standard_normal((2, C, H, H)), rng.standard_normal((32, C, 3, 3))
        y = KT.conv2d_forward(x, w, None, 1, 1)
        KT.conv2d_backward(x, w, np.ones_like(y), 1, 1)
    assert calls == [("f4", (2, 96, 8, 8)), ("f4", (2, 32, 8, 8)), ("gw", (2, 96, 8, 8)),
                     ("f4", (2, 32, 4, 4)), ("f4", (2, 32, 4, 4)), ("gw", (2, 32, 4, 4))]
