"""Normalisation kernels: group norm, layer norm, batch norm — forward and backward.

All three normalise ``x`` by a mean μ and a reciprocal standard deviation
ρ = 1/√(σ² + ε) computed over some set of elements (the *statistics set*), then
apply a learned affine map:

    x̂ = (x − μ)·ρ,        y = x̂·w + b

| op          | x shape         | statistics set (one μ, ρ per ...)        | w, b shape        |
|-------------|-----------------|------------------------------------------|-------------------|
| group norm  | (N, C, *)       | (n, group): C/G channels × all of *      | (C,)              |
| layer norm  | (..., *D)       | each leading index: all of the trailing D | D (= normalized)  |
| batch norm  | (N, C, *)       | each channel c: all n and all of *       | (C,)              |

σ² is the biased variance (divide by the set size M), as torch does when it
normalises. (Batch norm's *running* variance uses the unbiased one; that update
lives in ``npdiff.nn.functional.batch_norm``, kernels are pure.)

Backward, the closed form (Ioffe & Szegedy 2015, sec. 3; the same algebra holds
for any statistics set of size M). With ĝ = g·w (gradient wrt x̂):

    ∂L/∂x = ρ · ( ĝ − mean(ĝ) − x̂ · mean(ĝ · x̂) )          means over the set
    ∂L/∂w = Σ g · x̂,      ∂L/∂b = Σ g                       sums over everything but w's axes

The fast kernels write this per element as ``dx = A·g + B·(x − μ) + C`` with
A = ρ·w, B = −ρ²·mean(ĝx̂), C = −ρ·mean(ĝ), which needs only two sums per
channel of a set, Σg and Σg(x − μ) — one read of g and x, one write of dx.
Batch norm in eval mode uses fixed (running) statistics, so mean(ĝ) and
mean(ĝx̂) drop out (B = C = 0).

File layout: reference (loops; their backwards follow from the forward by the chain
rule written out, an independent route to the closed form above) → numba (CPU) →
xp-vectorised (numpy or cupy). Each op's columns are registered in ``table.py``; the
one dispatch validates (``checks.py``) and picks the column.

Statistics are accumulated in float64 whatever the input dtype: a constant input gives σ² = 0
exactly and ρ = 1/√ε, finite. Layer and batch norm take two passes (mean, then Σ(x − μ)²); the
group-norm kernel one, shifted by the slab's first element, with the second pass only where the
shift could cost accuracy (see ``_group_norm_forward_fast``). The forward returns μ and ρ (dtype of x)
for the backward.

GPU twin: ``npdiff/kernels/cuda/norm.py`` (the table's ``cuda`` column: block reductions per
statistics set, then one thread per element).
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import get_array_module
from .checks import normalized_shape as _normalized_shape
from .elementwise import _XP as _ACTIVATIONS_XP
from .elementwise import neg_abs, silu, silu_grad, unary_backward_reference, unary_forward_reference
from .vexp import exp_constants, vexp
from .config import jit_helper, jit_reduce, jit_serial, num_threads, parallel_for

# ---------------------------------------------------------------------------
# reference versions: loops straight from the definition


def group_norm_forward_reference(x, num_groups, weight=None, bias=None, eps=1e-5):
    """Group norm (Wu & He 2018, eq. 1-3), by loops.

    Shapes: x (N, C, *), weight/bias (C,) or None → y like x, mean/rstd (N, G).
    Definition: for each n and group g (channels c ∈ [g·C/G, (g+1)·C/G)),
        μ = mean of x[n, c, s] over the group's channels and all positions s,
        σ² = mean of (x − μ)²,  ρ = 1/√(σ² + ε),
        y[n, c, s] = (x[n, c, s] − μ)·ρ·w[c] + b[c].
    Loop: over n, over g; statistics of the group's slab; then each element.
    """
    N, C = x.shape[:2]
    G, Cg = num_groups, C // num_groups
    xs = x.reshape(N, C, -1).astype(np.float64)  # (N, C, S)
    y = np.empty(xs.shape)
    mean, rstd = np.empty((N, G)), np.empty((N, G))
    for n in range(N):
        for g in range(G):
            slab = xs[n, g * Cg : (g + 1) * Cg]  # (Cg, S)
            mu = slab.sum() / slab.size
            var = ((slab - mu) ** 2).sum() / slab.size
            rho = 1.0 / math.sqrt(var + eps)
            mean[n, g], rstd[n, g] = mu, rho
            for c in range(g * Cg, (g + 1) * Cg):
                w = 1.0 if weight is None else float(weight[c])
                b = 0.0 if bias is None else float(bias[c])
                for s in range(xs.shape[2]):
                    y[n, c, s] = (xs[n, c, s] - mu) * rho * w + b
    return y.reshape(x.shape).astype(x.dtype), mean.astype(x.dtype), rstd.astype(x.dtype)


def _set_backward_by_chain_rule(x, g, w, mu, rho, stats_depend_on_x=True):
    """Reverse mode over the forward's loops for ONE statistics set; returns dx (float64, like x).

    Derived from the forward graph, not from the closed form (which the fast paths use):
        μ = Σ_i x_i / M,   d_i = x_i − μ,   σ² = Σ_i d_i² / M,   ρ = (σ² + ε)^(−1/2),   y_i = d_i ρ w_i + b_i
    walked backwards one node at a time:
        d̄_i = g_i w_i ρ                 (y_i through d_i)
        ρ̄   = Σ_i g_i w_i d_i            (y_i through ρ)
        σ̄²  = ρ̄ · (−½) ρ³                (dρ/dσ² = −½ (σ² + ε)^(−3/2) = −½ ρ³)
        d̄_i += σ̄² · 2 d_i / M           (σ² through d_i)
        μ̄   = −Σ_i d̄_i                   (d_i = x_i − μ)
        x̄_i = d̄_i + μ̄ / M               (x_i directly and through μ)
    With fixed statistics (batch norm in eval mode) only the first line remains.
    x, g, w: 1-D float64 over the set (w[i] = the weight that element i is scaled by).
    """
    M = x.shape[0]
    dd = np.empty(M)
    rho_bar = 0.0
    for i in range(M):
        d = x[i] - mu
        dd[i] = g[i] * w[i] * rho
        rho_bar += g[i] * w[i] * d
    if not stats_depend_on_x:
        return dd
    var_bar = rho_bar * -0.5 * rho**3
    for i in range(M):
        dd[i] += var_bar * 2.0 * (x[i] - mu) / M
    mu_bar = -sum(dd[i] for i in range(M))
    return np.array([dd[i] + mu_bar / M for i in range(M)])


def _affine_grads_by_loops(g, x, mu, rho):
    """Σ over a set of g·x̂ and of g: the weight and bias gradients' contributions (y = x̂·w + b)."""
    dw = db = 0.0
    for i in range(x.shape[0]):
        dw += g[i] * (x[i] - mu) * rho
        db += g[i]
    return dw, db


def group_norm_backward_reference(g, x, mean, rstd, num_groups, weight=None):
    """Gradients of group norm by the chain rule over the forward's loops, one (n, group) set at a time.

    Shapes: g, x (N, C, *); mean, rstd (N, G); weight (C,) or None
    → dx like x, dw (C,), db (C,) (dw/db are returned even without weight).
    Derivation: ``_set_backward_by_chain_rule`` (independent of the closed form
    dx = ρ(ĝ − mean ĝ − x̂ mean(ĝx̂)) that the fast paths use, which the tests compare it with).
    """
    N, C = x.shape[:2]
    G, Cg = num_groups, C // num_groups
    xs = x.reshape(N, C, -1).astype(np.float64)  # (N, C, S)
    gs = g.reshape(N, C, -1).astype(np.float64)
    S = xs.shape[2]
    w = np.ones(C) if weight is None else weight.astype(np.float64)
    dx = np.empty(xs.shape)
    dw, db = np.zeros(C), np.zeros(C)
    for n in range(N):
        for grp in range(G):
            cs = slice(grp * Cg, (grp + 1) * Cg)
            mu, rho = float(mean[n, grp]), float(rstd[n, grp])
            wset = np.repeat(w[cs], S)  # the weight of each element of the set, (Cg·S,)
            dx[n, cs] = _set_backward_by_chain_rule(xs[n, cs].ravel(), gs[n, cs].ravel(), wset, mu, rho).reshape(Cg, S)
            for c in range(cs.start, cs.stop):
                a, b = _affine_grads_by_loops(gs[n, c], xs[n, c], mu, rho)
                dw[c] += a
                db[c] += b
    wdt = x.dtype if weight is None else weight.dtype
    return dx.reshape(x.shape).astype(x.dtype), dw.astype(wdt), db.astype(wdt)



def _group_norm_output(x, mean, rstd, num_groups, weight, bias):
    """z = (x − μ)·ρ·w + b from the saved statistics, (N, C, *) like x (float64 loops' inputs)."""
    N, C = x.shape[:2]
    xg = x.reshape(N, num_groups, -1)  # (N, G, Cg·S)
    z = ((xg - mean[..., None]) * rstd[..., None]).reshape(x.shape)
    shape = (1, C) + (1,) * (x.ndim - 2)
    z = z * (1 if weight is None else weight.reshape(shape)) + (0 if bias is None else bias.reshape(shape))
    return z.astype(x.dtype)


def group_norm_silu_forward_reference(x, num_groups, weight=None, bias=None, eps=1e-5):
    """y = silu(group_norm(x)) (the ResNet block's norm → activation), composed of the two references.

    Shapes: as group norm -> (y like x, mean (N, G), rstd (N, G)); silu(z) = z·σ(z).
    """
    z, mean, rstd = group_norm_forward_reference(x, num_groups, weight, bias, eps)
    return unary_forward_reference("silu", z), mean, rstd


def group_norm_silu_backward_reference(g, x, mean, rstd, num_groups, weight=None, bias=None):
    """(dx, dw, db) by the chain rule: z recomputed from the statistics, dz = g·silu'(z), then the
    group-norm reference backward of dz."""
    z = _group_norm_output(x, mean, rstd, num_groups, weight, bias)
    dz = unary_backward_reference("silu", g, z)
    return group_norm_backward_reference(dz, x, mean, rstd, num_groups, weight)


def layer_norm_forward_reference(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Layer norm (Ba et al. 2016, eq. 4), by loops over rows.

    Shapes: x (..., *D) with D = normalized_shape; weight/bias D or None
    → y like x, mean/rstd x.shape[:-len(D)].
    Definition: for each leading index r, μ = mean of x[r, d] over d ∈ D, σ² = mean (x − μ)²,
        y[r, d] = (x[r, d] − μ)/√(σ² + ε) · w[d] + b[d].
    """
    ns = _normalized_shape(normalized_shape)
    lead = x.shape[: x.ndim - len(ns)]
    D = int(np.prod(ns))
    xs = x.reshape(-1, D).astype(np.float64)  # (R, D)
    w = np.ones(D) if weight is None else weight.reshape(D).astype(np.float64)
    b = np.zeros(D) if bias is None else bias.reshape(D).astype(np.float64)
    y = np.empty(xs.shape)
    mean, rstd = np.empty(len(xs)), np.empty(len(xs))
    for r in range(len(xs)):
        mu = xs[r].sum() / D
        rho = 1.0 / math.sqrt(((xs[r] - mu) ** 2).sum() / D + eps)
        mean[r], rstd[r] = mu, rho
        for d in range(D):
            y[r, d] = (xs[r, d] - mu) * rho * w[d] + b[d]
    return y.reshape(x.shape).astype(x.dtype), mean.reshape(lead).astype(x.dtype), rstd.reshape(lead).astype(x.dtype)


def layer_norm_backward_reference(g, x, mean, rstd, normalized_shape, weight=None):
    """Gradients of layer norm by the chain rule over the forward's loops (one statistics set
    per row, a weight per position d): ``_set_backward_by_chain_rule``.

    Shapes: g, x (..., *D); mean, rstd x.shape[:-len(D)] → dx like x, dw D, db D.
    """
    ns = _normalized_shape(normalized_shape)
    D = int(np.prod(ns))
    xs = x.reshape(-1, D).astype(np.float64)  # (R, D)
    gs = g.reshape(-1, D).astype(np.float64)
    mu_all, rho_all = mean.reshape(-1).astype(np.float64), rstd.reshape(-1).astype(np.float64)
    w = np.ones(D) if weight is None else weight.reshape(D).astype(np.float64)
    dx = np.empty(xs.shape)
    dw, db = np.zeros(D), np.zeros(D)
    for r in range(len(xs)):
        dx[r] = _set_backward_by_chain_rule(xs[r], gs[r], w, mu_all[r], rho_all[r])
        for d in range(D):
            dw[d] += gs[r, d] * (xs[r, d] - mu_all[r]) * rho_all[r]
            db[d] += gs[r, d]
    wdt = x.dtype if weight is None else weight.dtype
    return dx.reshape(x.shape).astype(x.dtype), dw.reshape(ns).astype(wdt), db.reshape(ns).astype(wdt)


def batch_norm_forward_reference(x, weight=None, bias=None, running_mean=None, running_var=None, training=True,
                                 eps=1e-5):
    """Batch norm (Ioffe & Szegedy 2015, Alg. 1), by loops over channels.

    Shapes: x (N, C, *); weight/bias/mean/var (C,) or None → y like x, mean (C,), rstd (C,),
    var (C,) (biased batch variance; the given ``var`` in eval mode).
    Training: μ_c = mean of x[n, c, s] over n and s, σ²_c = mean (x − μ_c)² (the running
    statistics are not read). Eval: μ_c, σ²_c are the given running statistics.
        y[n, c, s] = (x[n, c, s] − μ_c)/√(σ²_c + ε) · w[c] + b[c].
    """
    mean, var = (None, None) if training else (running_mean, running_var)
    N, C = x.shape[:2]
    xs = x.reshape(N, C, -1).astype(np.float64)
    y = np.empty(xs.shape)
    mu_out, var_out, rho_out = np.empty(C), np.empty(C), np.empty(C)
    for c in range(C):
        col = xs[:, c]  # (N, S)
        if mean is None:
            mu = col.sum() / col.size
            v = ((col - mu) ** 2).sum() / col.size
        else:
            mu, v = float(mean[c]), float(var[c])
        rho = 1.0 / math.sqrt(v + eps)
        mu_out[c], var_out[c], rho_out[c] = mu, v, rho
        w = 1.0 if weight is None else float(weight[c])
        b = 0.0 if bias is None else float(bias[c])
        for n in range(N):
            for s in range(xs.shape[2]):
                y[n, c, s] = (xs[n, c, s] - mu) * rho * w + b
    dt = x.dtype
    return y.reshape(x.shape).astype(dt), mu_out.astype(dt), rho_out.astype(dt), var_out.astype(dt)


def batch_norm_backward_reference(g, x, mean, rstd, weight=None, training=True):
    """Gradients of batch norm by the chain rule over the forward's loops, one channel at a time.

    Shapes: g, x (N, C, *); mean, rstd (C,) → dx like x, dw (C,), db (C,).
    Training: the statistics set of channel c is (all n, all s) (``_set_backward_by_chain_rule``).
    Eval: the statistics are constants, so only y's direct dependence on x remains: dx = g·w·ρ.
    """
    N, C = x.shape[:2]
    xs = x.reshape(N, C, -1).astype(np.float64)  # (N, C, S)
    gs = g.reshape(N, C, -1).astype(np.float64)
    w = np.ones(C) if weight is None else weight.astype(np.float64)
    dx = np.empty(xs.shape)
    dw, db = np.zeros(C), np.zeros(C)
    for c in range(C):
        mu, rho = float(mean[c]), float(rstd[c])
        col_x, col_g = xs[:, c].ravel(), gs[:, c].ravel()  # (N·S,)
        dx[:, c] = _set_backward_by_chain_rule(col_x, col_g, np.full(col_x.size, w[c]), mu, rho,
                                               stats_depend_on_x=training).reshape(N, -1)
        dw[c], db[c] = _affine_grads_by_loops(col_g, col_x, mu, rho)
    wdt = x.dtype if weight is None else weight.dtype
    return dx.reshape(x.shape).astype(x.dtype), dw.astype(wdt), db.astype(wdt)


# ---------------------------------------------------------------------------
# fast CPU versions (Numba)
#
# Row sums are float64 accumulations written as plain loops and compiled with ``jit_reduce``
# (``config.py``: LLVM's ``reassoc`` alone, so that it keeps vector partial sums in registers; 4×
# faster than 32 float64 lanes kept in a scratch array, which these helpers used before).
#
# The helpers take a 2-D array and a row index, (a, r), not the row as a view a[r]: inside a
# kernel called from Python, every view made in the loop takes and drops a reference on the
# array's memory record (Numba's NRT, atomic), one shared by all threads. Measured on the group
# norm forward, (64, 128, 16, 16), one thread: 0.42-0.50 ms with views per channel row, 0.355 ms
# with (a, r) pairs, as fast as the prange kernel it replaces (whose slab views carried no
# reference). The arithmetic is the same.


@jit_reduce
def _row_sum(a, r):
    """Σ_i a[r, i] in float64 (a: 2-D C-contiguous)."""
    t = 0.0
    for i in range(a.shape[1]):
        t += a[r, i]
    return t


@jit_reduce
def _row_sqdev(a, r, mu):
    """Σ_i (a[r, i] − μ)² in float64 (μ float64)."""
    t = 0.0
    for i in range(a.shape[1]):
        d = a[r, i] - mu
        t += d * d
    return t


@jit_reduce
def _row_grad_sums(g, rg, v, rv, mu):
    """(Σ_i g[rg, i], Σ_i g[rg, i]·(v[rv, i] − μ)) in float64 (μ float64)."""
    s = 0.0
    p = 0.0
    for i in range(v.shape[1]):
        gi = np.float64(g[rg, i])
        s += gi
        p += gi * (v[rv, i] - mu)
    return s, p


@jit_helper
def _row_affine(v, rv, mu, a, b, out, ro):
    """out[ro, i] = (v[rv, i] − μ)·a + b (a, b, μ already in the array's precision)."""
    for i in range(v.shape[1]):
        out[ro, i] = (v[rv, i] - mu) * a + b


@jit_helper
def _row_grad_input(g, rg, v, rv, mu, A, B, C, out, ro):
    """out[ro, i] = A·g[rg, i] + B·(v[rv, i] − μ) + C."""
    for i in range(v.shape[1]):
        out[ro, i] = A * g[rg, i] + B * (v[rv, i] - mu) + C


@jit_reduce
def _row_shifted_sums(a, r, k):
    """(Σ_i d_i, Σ_i d_i²) with d_i = a[r, i] − k, in float64 (k float64): one pass for both."""
    s = 0.0
    q = 0.0
    for i in range(a.shape[1]):
        d = a[r, i] - k
        s += d
        q += d * d
    return s, q


@jit_helper
def _row_affine_silu(v, rv, mu, a, b, out, ro, C, fast):
    """out[ro, i] = silu(z), z = (v[rv, i] − μ)·a + b: the exponential (``vexp``) inlined, so the
    affine map, e^{−|z|} and z·σ(z) are one vectorised pass (C: ``ExpConstants``)."""
    for i in range(v.shape[1]):
        z = (v[rv, i] - mu) * a + b
        out[ro, i] = silu(z, vexp(neg_abs(z), C, fast), C.one)


@jit_helper
def _row_silu_grad(g, rg, v, rv, mu, a, b, C, fast, out, ro):
    """out[ro, i] = g[rg, i]·silu'(z), z = (v[rv, i] − μ)·a + b recomputed (one pass, ``vexp`` inlined)."""
    for i in range(v.shape[1]):
        z = (v[rv, i] - mu) * a + b
        out[ro, i] = g[rg, i] * silu_grad(z, vexp(neg_abs(z), C, fast), C.one)


# Short rows (S = H·W < SHORT_ROW: the U-Net's 4×4 and 2×2 maps): a loop over S = 16 elements is too
# short for LLVM's vector loop, which takes 16 lanes × 4 interleaved = 64 elements a trip and leaves
# shorter loops to its scalar remainder (measured, one thread: group norm 0.54 ns an element forward at
# S = 16 against 0.13 at S = 1024; the fused GN + SiLU backward 2.2 against 0.6). There the kernels run
# the elementwise passes over the whole slab (M = C/G·S elements, one long loop) with the per-channel
# factors spread over the slab once per call, wg[g, j·S + s] = w[g·C/G + j] (and bg likewise):
#     z = (x − μ)·(ρ·wg) + bg,   dx = (ρ·wg)·ĝ − ρ²m₂(x − μ) − ρm₁
# (the product ρ·wg rounded in x's dtype, where the row form rounds ρ·w[c] from float64: one rounding
# of the scale either way). The per-channel sums of the backward stay per row.
SHORT_ROW = 64


@jit_helper
def _slab_affine(v, rv, mu, rho, wg, bg, gi, out, ro, act, C, fast):
    """out[ro, i] = z (or silu(z) with ``act``), z = (v[rv, i] − μ)·(ρ·wg[gi, i]) + bg[gi, i]: a whole slab."""
    if act:
        for i in range(v.shape[1]):
            z = (v[rv, i] - mu) * (rho * wg[gi, i]) + bg[gi, i]
            out[ro, i] = silu(z, vexp(neg_abs(z), C, fast), C.one)
    else:
        for i in range(v.shape[1]):
            out[ro, i] = (v[rv, i] - mu) * (rho * wg[gi, i]) + bg[gi, i]


@jit_helper
def _slab_silu_grad(g, rg, v, rv, mu, rho, wg, bg, gi, C, fast, out, ro):
    """out[ro, i] = g[rg, i]·silu'(z), z as in ``_slab_affine``: a whole slab."""
    for i in range(v.shape[1]):
        z = (v[rv, i] - mu) * (rho * wg[gi, i]) + bg[gi, i]
        out[ro, i] = g[rg, i] * silu_grad(z, vexp(neg_abs(z), C, fast), C.one)


@jit_helper
def _slab_grad_input(g, rg, v, rv, mu, rho, wg, gi, B, Cc, out, ro):
    """out[ro, i] = (ρ·wg[gi, i])·g[rg, i] + B·(v[rv, i] − μ) + C: a whole slab."""
    for i in range(v.shape[1]):
        out[ro, i] = (rho * wg[gi, i]) * g[rg, i] + B * (v[rv, i] - mu) + Cc


# The group-norm kernels (forward and backward, each with SiLU fused in under ``act``) are serial
# functions over a range [lo, hi) of the N·G (n, group) slabs, run by ``config.parallel_for`` as
# every other family's. They were Numba ``prange`` kernels, whose parfor build cost 1.0 and 1.55 s of
# CPU at the first run (now 0.3 and 0.45 s); what prange used to gain over a serial loop was, measured
# on the forward, the row views of the serial form (see above), not the loop (docs/kernels.md,
# Normalisation).
#
# Passes over memory (a slab of (64, 64, 32, 32) is 8 KB, of (64, 128, 16, 16) 8 KB: it stays in L1
# between the passes over it, so only the first read and the last write of each slab reach memory):
#   forward   read x (one pass: Σd and Σd², d = x − x₀) → write y (with SiLU: the same pass)
#   backward  read g, x (Σg, Σg(x − μ); with SiLU dz = g·silu'(z) first, into an L1 row) → write dx
# The statistics are one pass over the slab, shifted by its first element x₀ (float64):
#     m = Σd/M,   μ = x₀ + m,   σ² = Σd²/M − m²
# instead of the textbook two (mean, then Σ(x − μ)²). Error: d is exact in float64 (a difference
# of two float32), and the sums' rounding errors are at most γ·Σ|d| and γ·Σd², γ = M·u, u = 2⁻⁵³;
# with Σ|d|/M ≤ √(Σd²/M) (Cauchy–Schwarz) and Σd²/M = σ² + m² that leaves
#     |Δσ²| ≤ 3γ(σ² + m²),   relative  3Mu(1 + m²/σ²).
# The shift keeps m small: m = μ − x₀, typically about σ. Whenever 3Mu(1 + m²/σ²) could exceed
# 2⁻²⁷ (an eighth of float32's unit roundoff), i.e. m² > σ²·(2²⁶/(3M) − 1), the kernel takes the
# textbook second pass Σ(x − μ)² instead: x₀ was an outlier, or the slab has more than ~2·10⁷
# elements. So σ² is always within 2⁻²⁷ relative of its float64 two-pass value (docs/kernels.md,
# Normalisation; tests/kernels/test_norm.py). A constant slab gives d = 0 exactly, σ² = 0, ρ = 1/√ε.
@jit_serial
def _group_norm_forward_fast(lo, hi, x3, x2, w, b, wg, bg, eps, act, C, fast, out3, out2, mean, rstd):
    """Slabs r in [lo, hi) of the N·G (n, g) slabs. Views of contiguous memory: x3 and out3 (N·G, M),
    one row per slab; x2 and out2 (N·C, S), one row per channel (slab r's channel j is row r·Cg + j).
    With ``act``, y = silu((x − μ)ρw + b) (GroupNorm + SiLU fused: y is written once). wg, bg (G, M):
    w and b spread over a slab when its rows are short (S < SHORT_ROW), else empty."""
    R, M = x3.shape
    Cg = x2.shape[0] // R
    G = mean.shape[1]
    cast = out2.dtype.type
    one_pass_limit = 2.0**26 / (3.0 * max(M, 1)) - 1.0  # largest (μ − x₀)²/σ² the one-pass σ² may see (above)
    for r in range(lo, hi):  # parallel_for's share of [0, N·G)
        n = r // G
        g = r - n * G
        # 1. statistics of the (n, g) slab, one pass shifted by its first element (see above)
        k = np.float64(x3[r, 0]) if M > 0 else 0.0
        s, q = _row_shifted_sums(x3, r, k)
        m = s / M
        var = q / M - m * m
        mu = k + m
        if not m * m <= var * one_pass_limit:  # x₀ far from μ (an outlier): the textbook second pass
            var = _row_sqdev(x3, r, mu) / M
        rho = 1.0 / np.sqrt(var + eps)
        mean[n, g] = mu
        rstd[n, g] = rho
        # 2. y = (x − μ)·(ρ w[c]) + b[c] (then SiLU), arithmetic in x's dtype so it vectorises
        if wg.shape[0] > 0:  # short rows: one pass over the whole slab
            _slab_affine(x3, r, cast(mu), cast(rho), wg, bg, g, out3, r, act, C, fast)
            continue
        for j in range(Cg):
            c = g * Cg + j
            if act:
                _row_affine_silu(x2, r * Cg + j, cast(mu), cast(rho * w[c]), cast(b[c]), out2, r * Cg + j, C, fast)
            else:
                _row_affine(x2, r * Cg + j, cast(mu), cast(rho * w[c]), cast(b[c]), out2, r * Cg + j)


@jit_serial
def _group_norm_backward_fast(lo, hi, g3, g2, x3, x2, mean, rstd, w, b, wg, bg, act, C, fast, dx3, dx2, sg, sgx):
    """Slabs r in [lo, hi) of the N·G (n, g) slabs: Σg and ρΣg(x−μ) per channel (→ sg, sgx (N, C)
    partials of db, dw), then dx. g2, x2, dx2 (N·C, S): one row per channel, as in the forward.
    With ``act`` the upstream gradient of the norm is first dz = g·silu'(z), z recomputed from x, μ,
    ρ (the fused GroupNorm + SiLU: z is never stored; dz lives in a (Cg, S) scratch, allocated once
    per range, that stays in cache for the dx pass). g3, x3, dx3 (N·G, M) and wg (G, M) as in the
    forward: short rows (wg not empty) take the slab-long dz and dx passes."""
    R = mean.shape[0] * mean.shape[1]
    Cg = x2.shape[0] // R
    S = x2.shape[1]
    G = mean.shape[1]
    dz = np.empty((Cg if act else 0, S), dx2.dtype)
    cast = dx2.dtype.type
    ga = dz if act else g2  # the norm's upstream gradient, chosen once (an array assigned in the loop is a reference taken)
    ga3 = dz.reshape((1, Cg * S)) if act else g3  # the same, one row per slab
    short = wg.shape[0] > 0
    for r in range(lo, hi):  # parallel_for's share of [0, N·G)
        n = r // G
        grp = r - n * G
        mu = mean[n, grp]
        rho = rstd[n, grp]
        g0 = 0 if act else r * Cg  # slab r's rows of ga: g0 + j
        if act and short:  # dz = g·silu'(z) for the whole slab, into the scratch
            _slab_silu_grad(g3, r, x3, r, cast(mu), cast(rho), wg, bg, grp, C, fast, ga3, 0)
        # 1. mean(ĝ) = Σ_c w[c] Σ_s g / M,  mean(ĝ x̂) = Σ_c w[c] ρ Σ_s g (x − μ) / M
        m1 = 0.0
        m2 = 0.0
        for j in range(Cg):
            c = grp * Cg + j
            if act and not short:  # dz = g·silu'(z) for this row, into the scratch row j (then read from L1)
                _row_silu_grad(g2, r * Cg + j, x2, r * Cg + j, cast(mu), cast(rho * w[c]), cast(b[c]), C, fast, dz, j)
            s_g, s_gx = _row_grad_sums(ga, g0 + j, x2, r * Cg + j, mu)
            sg[n, c] = s_g
            sgx[n, c] = s_gx * rho
            m1 += w[c] * s_g
            m2 += w[c] * s_gx * rho
        m1 /= Cg * S
        m2 /= Cg * S
        # 2. dx = ρ w g − ρ² m2 (x − μ) − ρ m1, in x's dtype
        if short:
            _slab_grad_input(ga3, 0 if act else r, x3, r, cast(mu), cast(rho), wg, grp, cast(-rho * rho * m2),
                             cast(-rho * m1), dx3, r)
            continue
        for j in range(Cg):
            c = grp * Cg + j
            _row_grad_input(ga, g0 + j, x2, r * Cg + j, cast(mu), cast(rho * w[c]), cast(-rho * rho * m2),
                            cast(-rho * m1), dx2, r * Cg + j)


@jit_serial
def _layer_norm_forward_fast(lo, hi, x2, w, b, eps, out, mean, rstd):
    R, D = x2.shape
    for r in range(lo, hi):  # parallel_for's share of [0, R)
        mu = _row_sum(x2, r) / D
        rho = 1.0 / np.sqrt(_row_sqdev(x2, r, mu) / D + eps)
        mean[r] = mu
        rstd[r] = rho
        for d in range(D):
            out[r, d] = (x2[r, d] - mu) * rho * w[d] + b[d]


@jit_serial
def _layer_norm_backward_fast(lo, hi, g2, x2, mean, rstd, w, nchunks, dx, dw_part, db_part):
    """Chunks [lo, hi) of rows; each chunk owns one row of dw_part/db_part (no race)."""
    R, D = x2.shape
    per = (R + nchunks - 1) // nchunks
    for t in range(lo, hi):  # parallel_for's share of [0, nchunks)
        for r in range(t * per, min(R, (t + 1) * per)):
            mu = mean[r]
            rho = rstd[r]
            m1 = 0.0
            m2 = 0.0
            for d in range(D):
                gh = g2[r, d] * w[d]
                xh = (x2[r, d] - mu) * rho
                m1 += gh
                m2 += gh * xh
                dw_part[t, d] += g2[r, d] * xh
                db_part[t, d] += g2[r, d]
            m1 /= D
            m2 /= D
            for d in range(D):
                xh = (x2[r, d] - mu) * rho
                dx[r, d] = rho * (g2[r, d] * w[d] - m1 - xh * m2)


@jit_serial
def _batch_norm_stats_fast(lo, hi, x3, mean, var):
    """Per channel c in [lo, hi): μ_c and biased σ²_c over (n, s), two passes, float64."""
    N, C, S = x3.shape
    x2 = x3.reshape((N * C, S))  # row n·C + c: (n, c)
    for c in range(lo, hi):  # parallel_for's share of [0, C)
        tot = 0.0
        for n in range(N):
            tot += _row_sum(x2, n * C + c)
        mu = tot / (N * S)
        q = 0.0
        for n in range(N):
            q += _row_sqdev(x2, n * C + c, mu)
        mean[c] = mu
        var[c] = q / (N * S)


@jit_serial
def _channel_affine_fast(lo, hi, x3, mu, scale, shift, out):
    """out[n, c, :] = (x[n, c, :] − μ_c)·scale_c + shift_c, (n, c) rows [lo, hi)."""
    N, C, S = x3.shape
    x2 = x3.reshape((N * C, S))  # row r = n·C + c
    out2 = out.reshape((N * C, S))
    for r in range(lo, hi):  # parallel_for's share of [0, N * C)
        c = r % C
        _row_affine(x2, r, mu[c], scale[c], shift[c], out2, r)


@jit_serial
def _batch_norm_backward_fast(lo, hi, g3, x3, mean, rstd, w, training, dx, dw, db):
    """Per channel c in [lo, hi): Σg, Σg x̂ over (n, s), then dx over the channel's rows."""
    N, C, S = x3.shape
    M = N * S
    g2 = g3.reshape((N * C, S))  # row n·C + c: (n, c)
    x2 = x3.reshape((N * C, S))
    dx2 = dx.reshape((N * C, S))
    for c in range(lo, hi):  # parallel_for's share of [0, C)
        mu = mean[c]
        rho = rstd[c]
        s_g = 0.0
        s_gx = 0.0
        for n in range(N):
            a, p = _row_grad_sums(g2, n * C + c, x2, n * C + c, mu)
            s_g += a
            s_gx += p
        db[c] = s_g
        dw[c] = s_gx * rho
        m1 = w[c] * s_g / M if training else 0.0
        m2 = w[c] * s_gx * rho / M if training else 0.0
        for n in range(N):
            _row_grad_input(g2, n * C + c, x2, n * C + c, mu, rho * w[c], -rho * rho * m2, -rho * m1, dx2, n * C + c)


def _ones_zeros(weight, bias, n, dtype):
    w = np.ones(n, dtype) if weight is None else np.ascontiguousarray(weight).reshape(n)
    b = np.zeros(n, dtype) if bias is None else np.ascontiguousarray(bias).reshape(n)
    return w, b


def _spread_over_slabs(w, b, G, S, dtype):
    """(wg, bg) of shape (G, C/G·S) in ``dtype``: w[c] and b[c] repeated over channel c's S positions of
    its group's slab, for short rows (S < SHORT_ROW); empty (0, 0) arrays otherwise (the row form)."""
    if S >= SHORT_ROW:
        return np.empty((0, 0), dtype), np.empty((0, 0), dtype)
    return (np.repeat(np.asarray(w, dtype), S).reshape(G, -1), np.repeat(np.asarray(b, dtype), S).reshape(G, -1))


def group_norm_forward_numba(x, num_groups, weight=None, bias=None, eps=1e-5, act=False):
    """Group norm on the CPU. Same contract as ``group_norm_forward_reference``.

    Fast path: x is viewed as (N, G, C/G, S); the N·G (n, group) slabs are split
    over threads (``parallel_for``). Per slab: Σd and Σd² (d = x − x₀, x₀ the slab's first element)
    in float64, one vectorised reduction (``jit_reduce``), give μ and σ²; then
    y = (x − μ)·ρw[c] + b[c] in x's dtype (vectorised), the slab still in cache. One read of x from
    memory, one write of y. ``act``: SiLU in the same pass as the affine map, its exponential
    inlined (``group_norm_silu_forward``).
    """
    N, C = x.shape[:2]
    G = num_groups
    x2 = np.ascontiguousarray(x).reshape(N * C, -1)  # (N·C, S): one row per channel
    x3 = x2.reshape(N * G, -1)  # (N·G, M): the same memory, one row per slab
    w, b = _ones_zeros(weight, bias, C, x.dtype)
    wg, bg = _spread_over_slabs(w, b, G, x2.shape[1], x.dtype)
    out = np.empty(x.shape, x.dtype)
    mean = np.empty((N, G))
    rstd = np.empty((N, G))
    parallel_for(_group_norm_forward_fast, N * G, x3, x2, w, b, wg, bg, float(eps), bool(act), exp_constants(x.dtype),
                 x.dtype == np.float32, out.reshape(x3.shape), out.reshape(x2.shape), mean, rstd)
    return out, mean.astype(x.dtype), rstd.astype(x.dtype)


def group_norm_backward_numba(g, x, mean, rstd, num_groups, weight=None, bias=None, act=False):
    """Group norm gradients on the CPU; contract of ``group_norm_backward_reference``.

    Fast path: (n, group) slabs split over threads (``parallel_for``); per channel of the slab one pass
    computes Σg and Σg(x − μ) (float64), which give mean(ĝ), mean(ĝx̂) and the
    per-(n, c) partial sums of db and dw; a second pass (slab in cache) writes
    dx = A·g + B·(x − μ) + C. dw, db: the (N, C) partials summed over n.
    ``act`` (``group_norm_silu_backward``): g is first replaced, row by row, by
    dz = g·silu'(z) with z recomputed from x, μ, ρ, w, b (one pass, the exponential inlined) into
    a scratch that stays in cache for the sums and the dx pass.
    """
    N, C = x.shape[:2]
    G = num_groups
    x2 = np.ascontiguousarray(x).reshape(N * C, -1)  # (N·C, S): one row per channel
    g2 = np.ascontiguousarray(g, dtype=x.dtype).reshape(x2.shape)
    w = np.ones(C) if weight is None else np.ascontiguousarray(weight, dtype=np.float64)
    b = np.zeros(C) if bias is None else np.ascontiguousarray(bias, dtype=np.float64)
    dx = np.empty(x.shape, x.dtype)  # returned as is (a reshaped view would be copied by the tape)
    sg = np.empty((N, C))
    sgx = np.empty((N, C))
    wg, bg = _spread_over_slabs(w, b, G, x2.shape[1], x.dtype)
    M = x2.size // max(N * G, 1)
    parallel_for(_group_norm_backward_fast, N * G, g2.reshape(N * G, M), g2, x2.reshape(N * G, M), x2,
                 np.asarray(mean, np.float64), np.asarray(rstd, np.float64), w, b, wg, bg, bool(act),
                 exp_constants(x.dtype), x.dtype == np.float32, dx.reshape(N * G, M), dx.reshape(x2.shape), sg, sgx)
    wdt = x.dtype if weight is None else weight.dtype
    return dx, sgx.sum(0).astype(wdt), sg.sum(0).astype(wdt)


def group_norm_silu_forward_numba(x, num_groups, weight=None, bias=None, eps=1e-5):
    """numba column of ``group_norm_silu_forward``: the group-norm kernel with SiLU fused in."""
    return group_norm_forward_numba(x, num_groups, weight, bias, eps, act=True)


def group_norm_silu_backward_numba(g, x, mean, rstd, num_groups, weight=None, bias=None):
    """numba column of ``group_norm_silu_backward``: one kernel, dz = g·silu'(z) never stored."""
    return group_norm_backward_numba(g, x, mean, rstd, num_groups, weight, bias, act=True)


def layer_norm_forward_numba(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Layer norm on the CPU; contract of ``layer_norm_forward_reference``.

    Fast path: x viewed as (R, D); rows split over threads, two-pass float64 statistics
    per row, then the row's y.
    """
    ns = _normalized_shape(normalized_shape)
    D = int(np.prod(ns))
    lead = x.shape[: x.ndim - len(ns)]
    x2 = np.ascontiguousarray(x).reshape(-1, D)  # (R, D)
    w, b = _ones_zeros(weight, bias, D, x.dtype)
    out = np.empty_like(x2)
    mean = np.empty(len(x2))
    rstd = np.empty(len(x2))
    parallel_for(_layer_norm_forward_fast, len(x2), x2, w, b, float(eps), out, mean, rstd)
    return out.reshape(x.shape), mean.reshape(lead).astype(x.dtype), rstd.reshape(lead).astype(x.dtype)


def layer_norm_backward_numba(g, x, mean, rstd, normalized_shape, weight=None):
    """Layer norm gradients on the CPU; contract of ``layer_norm_backward_reference``.

    Fast path: rows split into one chunk per thread (parallel_for over chunks); each
    chunk accumulates its own dw/db partial row (float64), summed afterwards —
    threads never write the same element.
    """
    ns = _normalized_shape(normalized_shape)
    D = int(np.prod(ns))
    x2 = np.ascontiguousarray(x).reshape(-1, D)  # (R, D)
    g2 = np.ascontiguousarray(g, dtype=x.dtype).reshape(x2.shape)
    w = np.ones(D) if weight is None else np.ascontiguousarray(weight, dtype=np.float64).reshape(D)
    nchunks = max(1, min(len(x2), 4 * num_threads()))
    dx = np.empty_like(x2)
    dw_part = np.zeros((nchunks, D))
    db_part = np.zeros((nchunks, D))
    parallel_for(
        _layer_norm_backward_fast, nchunks, g2, x2, np.asarray(mean, np.float64).reshape(-1),
        np.asarray(rstd, np.float64).reshape(-1),
        w, nchunks, dx, dw_part, db_part,
    )
    wdt = x.dtype if weight is None else weight.dtype
    return dx.reshape(x.shape), dw_part.sum(0).reshape(ns).astype(wdt), db_part.sum(0).reshape(ns).astype(wdt)


def batch_norm_forward_numba(x, weight, bias, running_mean, running_var, training, eps):
    """Batch norm on the CPU; contract of ``batch_norm_forward_reference``.

    Fast path: training statistics with channels split over threads (two float64
    passes over the channel's N rows); then y with (n, c) rows split over threads.
    """
    N, C = x.shape[:2]
    x3 = np.ascontiguousarray(x).reshape(N, C, -1)  # (N, C, S)
    w, b = _ones_zeros(weight, bias, C, np.float64)
    mean, var = (None, None) if training else (running_mean, running_var)
    if mean is None:
        mu = np.empty(C)
        v = np.empty(C)
        parallel_for(_batch_norm_stats_fast, C, x3, mu, v)
    else:
        mu, v = np.asarray(mean, np.float64), np.asarray(var, np.float64)
    rho = 1.0 / np.sqrt(v + eps)
    out = np.empty_like(x3)
    dt = x.dtype
    scale = (rho * w).astype(dt)
    parallel_for(_channel_affine_fast, N * C, x3, mu.astype(dt), scale, b.astype(dt), out)
    return out.reshape(x.shape), mu.astype(dt), rho.astype(dt), v.astype(dt)


def batch_norm_backward_numba(g, x, mean, rstd, weight=None, training=True):
    """Batch norm gradients on the CPU; contract of ``batch_norm_backward_reference``.

    Fast path: channels split over threads; each channel's Σg and Σg(x − μ) over its N
    rows, then its dx rows. Each thread owns whole channels: dw[c], db[c] race-free.
    """
    N, C = x.shape[:2]
    x3 = np.ascontiguousarray(x).reshape(N, C, -1)  # (N, C, S)
    g3 = np.ascontiguousarray(g, dtype=x.dtype).reshape(x3.shape)
    w = np.ones(C) if weight is None else np.ascontiguousarray(weight, dtype=np.float64)
    dx = np.empty_like(x3)
    dw = np.empty(C)
    db = np.empty(C)
    parallel_for(
        _batch_norm_backward_fast, C, g3, x3, np.asarray(mean, np.float64), np.asarray(rstd, np.float64), w,
        bool(training), dx, dw, db
    )
    wdt = x.dtype if weight is None else weight.dtype
    return dx.reshape(x.shape), dw.astype(wdt), db.astype(wdt)


# ---------------------------------------------------------------------------
# xp-vectorised versions (numpy or cupy): the closed forms as array expressions


def _affine_xp(xp, y, weight, bias, shape):
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


def group_norm_forward_xp(x, num_groups, weight=None, bias=None, eps=1e-5):
    """Vectorised group norm (runs on cupy arrays on a GPU); contract of the reference."""
    xp = get_array_module(x)
    N, C = x.shape[:2]
    xg = x.reshape(N, num_groups, -1)  # (N, G, Cg·S)
    mu = xg.mean(-1, keepdims=True, dtype=xp.float64)
    var = ((xg - mu) ** 2).mean(-1, keepdims=True)
    rho = 1.0 / xp.sqrt(var + eps)
    y = ((xg - mu) * rho).astype(x.dtype).reshape(x.shape)
    y = _affine_xp(xp, y, weight, bias, (1, C) + (1,) * (x.ndim - 2))
    return y, mu[..., 0].astype(x.dtype), rho[..., 0].astype(x.dtype)


def group_norm_backward_xp(g, x, mean, rstd, num_groups, weight=None):
    """Vectorised group norm gradients; contract of the reference."""
    N, C = x.shape[:2]
    G = num_groups
    bshape = (1, C) + (1,) * (x.ndim - 2)
    xhat = ((x.reshape(N, G, -1) - mean[..., None]) * rstd[..., None]).reshape(x.shape)  # (N, C, *)
    ghat = g if weight is None else g * weight.reshape(bshape)
    ghat_g = ghat.reshape(N, G, -1)  # (N, G, Cg·S)
    m1 = ghat_g.mean(-1, keepdims=True)
    m2 = (ghat_g * xhat.reshape(N, G, -1)).mean(-1, keepdims=True)
    dx = (rstd[..., None] * (ghat_g - m1 - xhat.reshape(N, G, -1) * m2)).reshape(x.shape)
    red = (0,) + tuple(range(2, x.ndim))
    wdt = x.dtype if weight is None else weight.dtype
    return dx.astype(x.dtype), (g * xhat).sum(red).astype(wdt), g.sum(red).astype(wdt)



def group_norm_silu_forward_xp(x, num_groups, weight=None, bias=None, eps=1e-5):
    """silu(group_norm(x)) with array-module ops (two passes over memory; the fusion is the numba column's)."""
    z, mean, rstd = group_norm_forward_xp(x, num_groups, weight, bias, eps)
    return _ACTIVATIONS_XP["silu"][0](get_array_module(x), z).astype(x.dtype, copy=False), mean, rstd


def group_norm_silu_backward_xp(g, x, mean, rstd, num_groups, weight=None, bias=None):
    """dz = g·silu'(z), z recomputed from the statistics, then the group-norm backward."""
    z = _group_norm_output(x, mean, rstd, num_groups, weight, bias)
    dz = (g * _ACTIVATIONS_XP["silu"][1](get_array_module(x), z)).astype(x.dtype, copy=False)
    return group_norm_backward_xp(dz, x, mean, rstd, num_groups, weight)


def layer_norm_forward_xp(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Vectorised layer norm; contract of the reference."""
    xp = get_array_module(x)
    ns = _normalized_shape(normalized_shape)
    axes = tuple(range(x.ndim - len(ns), x.ndim))
    mu = x.mean(axes, keepdims=True, dtype=xp.float64)
    rho = 1.0 / xp.sqrt(((x - mu) ** 2).mean(axes, keepdims=True) + eps)
    y = ((x - mu) * rho).astype(x.dtype)
    y = _affine_xp(xp, y, weight, bias, ns)
    lead = x.shape[: x.ndim - len(ns)]
    return y, mu.reshape(lead).astype(x.dtype), rho.reshape(lead).astype(x.dtype)


def layer_norm_backward_xp(g, x, mean, rstd, normalized_shape, weight=None):
    """Vectorised layer norm gradients; contract of the reference."""
    ns = _normalized_shape(normalized_shape)
    k = len(ns)
    axes = tuple(range(x.ndim - k, x.ndim))
    mu = mean.reshape(mean.shape + (1,) * k)
    rho = rstd.reshape(rstd.shape + (1,) * k)
    xhat = (x - mu) * rho
    ghat = g if weight is None else g * weight
    m1 = ghat.mean(axes, keepdims=True)
    m2 = (ghat * xhat).mean(axes, keepdims=True)
    dx = rho * (ghat - m1 - xhat * m2)
    lead_axes = tuple(range(x.ndim - k))
    wdt = x.dtype if weight is None else weight.dtype
    return dx.astype(x.dtype), (g * xhat).sum(lead_axes).astype(wdt), g.sum(lead_axes).astype(wdt)


def batch_norm_forward_xp(x, weight, bias, running_mean, running_var, training, eps):
    """Vectorised batch norm; contract of the reference."""
    xp = get_array_module(x)
    mean, var = (None, None) if training else (running_mean, running_var)
    C = x.shape[1]
    red = (0,) + tuple(range(2, x.ndim))
    bshape = (1, C) + (1,) * (x.ndim - 2)
    if mean is None:
        mu = x.mean(red, dtype=xp.float64)
        v = ((x - mu.reshape(bshape)) ** 2).mean(red)
    else:
        mu, v = mean.astype(xp.float64), var.astype(xp.float64)
    rho = 1.0 / xp.sqrt(v + eps)
    y = ((x - mu.reshape(bshape)) * rho.reshape(bshape)).astype(x.dtype)
    y = _affine_xp(xp, y, weight, bias, bshape)
    return y, mu.astype(x.dtype), rho.astype(x.dtype), v.astype(x.dtype)


def batch_norm_backward_xp(g, x, mean, rstd, weight=None, training=True):
    """Vectorised batch norm gradients; contract of the reference."""
    C = x.shape[1]
    red = (0,) + tuple(range(2, x.ndim))
    bshape = (1, C) + (1,) * (x.ndim - 2)
    rho = rstd.reshape(bshape)
    xhat = (x - mean.reshape(bshape)) * rho
    ghat = g if weight is None else g * weight.reshape(bshape)
    if training:
        dx = rho * (ghat - ghat.mean(red, keepdims=True) - xhat * (ghat * xhat).mean(red, keepdims=True))
    else:
        dx = rho * ghat
    wdt = x.dtype if weight is None else weight.dtype
    return dx.astype(x.dtype), (g * xhat).sum(red).astype(wdt), g.sum(red).astype(wdt)
