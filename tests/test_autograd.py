"""Autograd: every Tensor op's gradient against central differences (float64),
over hypothesis-generated shapes with broadcasting and non-contiguous inputs."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import npdiff as nd
from tests.gradcheck import check_gradients

dims = st.integers(1, 4)


@st.composite
def broadcast_pair(draw):
    """Two shapes that broadcast: the second drops leading axes and/or has 1s."""
    shape = draw(st.lists(dims, min_size=1, max_size=3))
    other = [1 if draw(st.booleans()) else s for s in shape]
    other = other[draw(st.integers(0, len(other) - 1)):]
    if draw(st.booleans()):
        shape, other = other, shape
    return tuple(shape), tuple(other)


@st.composite
def arrays(draw, shape, positive=False, noncontig=None):
    """float64 array of ``shape``; sometimes a non-contiguous (transposed or strided) view."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    noncontig = draw(st.booleans()) if noncontig is None else noncontig
    if noncontig and len(shape) >= 2:
        base = rng.standard_normal(tuple(reversed(shape)))
        a = base.T  # a transposed view
    elif noncontig:
        a = rng.standard_normal((shape[0] * 2,) + tuple(shape[1:]))[::2]
    else:
        a = rng.standard_normal(shape)
    if positive:
        a = np.abs(a) + 0.5
    return a


@given(broadcast_pair(), st.data())
def test_binary_ops_broadcast(shapes, data):
    sa, sb = shapes
    a = data.draw(arrays(sa))
    b = data.draw(arrays(sb, positive=True))
    check_gradients(lambda x, y: x + y, [a, b])
    check_gradients(lambda x, y: x - y, [a, b])
    check_gradients(lambda x, y: x * y, [a, b])
    check_gradients(lambda x, y: x / y, [a, b])
    check_gradients(lambda x, y: y ** x, [a, b])
    check_gradients(lambda x, y: nd.where(x.data > 0, x, y), [a, b])


@given(st.lists(dims, min_size=1, max_size=3).map(tuple), st.data())
def test_unary_ops(shape, data):
    a = data.draw(arrays(shape))
    p = data.draw(arrays(shape, positive=True))
    for fn, x in [
        (lambda t: -t, a), (nd.exp, a), (nd.tanh, a), (nd.sigmoid, a), (lambda t: t ** 3, a),
        (nd.log, p), (nd.sqrt, p), (nd.abs, p), (lambda t: 2.0 / t, p), (lambda t: 1.5 - t, a),
    ]:
        check_gradients(fn, [x])
    # clip: avoid sampling right at the bounds
    x = a[np.abs(np.abs(a) - 0.5) > 1e-3] if a.size else a
    if x.size:
        check_gradients(lambda t: nd.clip(t, -0.5, 0.5), [x])


@given(st.lists(dims, min_size=1, max_size=4).map(tuple), st.data())
def test_reductions(shape, data):
    a = data.draw(arrays(shape))
    axis = data.draw(st.one_of(st.none(), st.integers(-len(shape), len(shape) - 1)))
    keep = data.draw(st.booleans())
    check_gradients(lambda t: t.sum(axis, keep), [a])
    check_gradients(lambda t: t.mean(axis, keep), [a])
    check_gradients(lambda t: t.max(axis, keep), [a])
    n = a.size if axis is None else a.shape[axis]
    if n > 1:
        check_gradients(lambda t: t.var(axis, keep), [a])
        np.testing.assert_allclose(nd.tensor(a).var(axis, keep).numpy(), a.var(axis, keepdims=keep, ddof=1))


@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.integers(1, 3), st.data())
def test_matmul(batch, m, k, n, data):
    a = data.draw(arrays((batch, m, k)))
    b = data.draw(arrays((k, n)))
    check_gradients(lambda x, y: x @ y, [a, b])
    v = data.draw(arrays((k,), noncontig=False))
    check_gradients(lambda x, y: x @ y, [a, v])      # matrix @ vector
    check_gradients(lambda x, y: y @ x, [b, v])      # vector @ matrix
    np.testing.assert_allclose((nd.tensor(a) @ nd.tensor(b)).numpy(), a @ b)


@given(st.lists(st.integers(2, 4), min_size=2, max_size=4).map(tuple), st.data())
def test_shape_ops(shape, data):
    a = data.draw(arrays(shape))
    perm = tuple(data.draw(st.permutations(range(len(shape)))))
    check_gradients(lambda t: t.permute(*perm) * 1.0, [a])
    check_gradients(lambda t: t.reshape(-1, shape[-1]) ** 2, [a])
    check_gradients(lambda t: t.transpose(0, -1) ** 2, [a])
    check_gradients(lambda t: t[1:, ..., ::2] ** 2, [a])
    check_gradients(lambda t: nd.pad(t, [(1, 0)] + [(0, 2)] * (len(shape) - 1), value=3.0) ** 2, [a])
    check_gradients(lambda t: t.unsqueeze(1).expand(shape[0], 3, *shape[1:]) ** 2, [a])


@given(st.integers(1, 5), st.integers(1, 4), st.data())
def test_fancy_index_first_axis_accumulates(rows, dim, data):
    """Embedding-style lookup: repeated rows receive the sum of their gradients."""
    table = data.draw(arrays((rows, dim)))
    idx = np.array(data.draw(st.lists(st.integers(0, rows - 1), min_size=1, max_size=7)))
    check_gradients(lambda t: t[idx] ** 2, [table])
    t = nd.tensor(table, requires_grad=True)
    t[idx].sum().backward()
    np.testing.assert_array_equal(t.grad.numpy()[:, 0], np.bincount(idx, minlength=rows))


@given(st.lists(st.integers(1, 4), min_size=2, max_size=3).map(tuple), st.integers(1, 3), st.data())
def test_joins(shape, parts, data):
    axis = data.draw(st.integers(0, len(shape) - 1))
    xs = [data.draw(arrays(shape)) for _ in range(parts)]
    check_gradients(lambda *ts: nd.cat(ts, axis) ** 2, xs)
    check_gradients(lambda *ts: nd.stack(ts, axis) ** 2, xs)
    a = data.draw(arrays(shape))
    check_gradients(lambda t: nd.cat([p * (i + 1) for i, p in enumerate(nd.chunk(t, 2, axis))], axis), [a])
    check_gradients(lambda t: nd.cat([p ** 2 for p in nd.split(t, 1, axis)], axis), [a])


def test_split_and_chunk_sizes_match_torch_rules():
    t = nd.tensor(np.arange(7.0))
    assert [p.shape[0] for p in nd.split(t, 3)] == [3, 3, 1]
    assert [p.shape[0] for p in nd.split(t, [2, 5])] == [2, 5]
    assert [p.shape[0] for p in nd.chunk(t, 3)] == [3, 3, 1]
    with pytest.raises(ValueError, match="do not add up"):
        nd.split(t, [2, 2])


def test_gradient_accumulates_over_reuse_and_calls():
    x = nd.tensor(np.array([1.0, 2.0]), requires_grad=True)
    (x * x + x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * x.numpy() + 1)
    (x * 3).sum().backward()  # a second backward accumulates into .grad
    np.testing.assert_allclose(x.grad.numpy(), 2 * x.numpy() + 4)


def test_leaf_grads_share_memory_with_nothing():
    """.grad is updated in place by optimizers and clipping, so it must not alias another .grad, the
    upstream gradient passed to backward, or a saved array: the tape copies a gradient unless the
    node computed it itself (a group norm's dx is kept as is, a + b's shared g is copied)."""
    import npdiff.nn.functional as F

    rng = np.random.default_rng(0)
    a, b = (nd.tensor(rng.standard_normal((2, 4, 3, 3)), requires_grad=True) for _ in range(2))
    w, c = nd.tensor(np.ones(4), requires_grad=True), nd.tensor(np.zeros(4), requires_grad=True)
    g = rng.standard_normal((2, 4, 3, 3))
    (a + b).backward(g)
    assert not np.shares_memory(a.grad.data, b.grad.data) and not np.shares_memory(a.grad.data, g)
    a.grad = None
    y = F.group_norm(a, 2, w, c)
    y.backward(g)
    grads = [a.grad.data, w.grad.data, c.grad.data, g, a.data]
    assert not any(np.shares_memory(p, q) for i, p in enumerate(grads) for q in grads[i + 1 :])
    a.grad = None
    a.reshape(2, 36).backward(g.reshape(2, 36))  # a view of the upstream gradient: copied
    assert not np.shares_memory(a.grad.data, g)


def test_graph_is_freed_after_backward():
    x = nd.tensor(np.ones(3), requires_grad=True)
    y = (x * 2).exp()
    z = y.sum()
    z.backward()
    assert z.is_leaf and y.is_leaf  # saved arrays and input links are dropped
    g = x.grad.numpy().copy()
    with pytest.raises(RuntimeError, match="already freed"):
        z.backward()
    np.testing.assert_array_equal(x.grad.numpy(), g)
    # retain_graph keeps it for a second pass
    y = (x * 2).exp().sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), g * 3)


def test_long_chain_does_not_recurse():
    x = nd.tensor(np.ones(2), requires_grad=True)
    y = x
    for _ in range(5000):
        y = y * 1.0
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 1.0)


def test_no_grad_records_nothing():
    x = nd.tensor(np.ones(2), requires_grad=True)
    with nd.no_grad():
        y = x * 2
    assert not y.requires_grad and y.is_leaf


def test_dtype_policy():
    assert nd.tensor([1.0, 2.0]).dtype == np.float32
    assert nd.tensor(np.ones(2)).dtype == np.float64  # arrays keep their dtype
    x = nd.tensor(np.ones(2, np.float32), requires_grad=True)
    assert (x * 2.5 + 1).dtype == np.float32  # Python scalars do not upcast
    assert np.asarray(x).dtype == np.float32


@pytest.mark.parametrize(
    "op, match",
    [
        (lambda: nd.tensor(np.ones((2, 3))) + nd.tensor(np.ones((4, 3))), r"\(2, 3\) and \(4, 3\)"),
        (lambda: nd.tensor(np.ones((2, 3))) @ nd.tensor(np.ones((2, 3))), r"\(2, 3\) and \(2, 3\)"),
        (lambda: nd.tensor(np.ones((2, 3))).reshape(4, 2), r"\(2, 3\) into \(4, 2\)"),
        (lambda: nd.cat([nd.tensor(np.ones((2, 3))), nd.tensor(np.ones((2, 4)))], 0), r"\(2, 3\), \(2, 4\)"),
        (lambda: nd.tensor(np.ones((2, 3))).sum(axis=2), "axis 2"),
        (lambda: (nd.tensor(np.ones((2, 3)), requires_grad=True) * 2).backward(np.ones(3)), r"\(3,\).*\(2, 3\)"),
    ],
)
def test_bad_shapes_raise_valueerror_naming_them(op, match):
    with pytest.raises((ValueError, RuntimeError), match=match):
        op()


def test_contiguous_copies_a_strided_view_and_passes_the_gradient_through():
    x = nd.tensor(np.arange(24, dtype=np.float32).reshape(2, 3, 4), requires_grad=True)
    t = x.transpose(1, 2)  # (2, 4, 3), strided
    c = t.contiguous()
    assert c.data.flags.c_contiguous and not np.shares_memory(c.data, x.data)
    np.testing.assert_array_equal(c.data, t.data)
    assert c.contiguous() is c  # already contiguous: no new node, no copy
    g = np.random.default_rng(0).standard_normal(c.shape).astype(np.float32)
    c.backward(g)
    np.testing.assert_array_equal(x.grad.data, g.transpose(0, 2, 1))
