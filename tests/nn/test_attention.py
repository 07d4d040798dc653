"""F.scaled_dot_product_attention: torch with masks of every kind, fully masked rows, bad input."""

import numpy as np
import pytest

import npdiff as nd
import npdiff.kernels as KT
import npdiff.nn.functional as F


@pytest.mark.parametrize(
    "shape_q, shape_k, dv, mask_shape, mask_kind",
    [
        ((2, 3, 17, 8), (2, 3, 33, 8), 8, None, None),
        ((2, 4, 70, 32), (2, 4, 150, 32), 24, (2, 1, 70, 150), "bool"),
        ((1, 2, 9, 64), (1, 2, 200, 64), 64, (9, 200), "float"),
        ((3, 40, 8), (3, 300, 8), 5, (3, 40, 300), "bool"),
    ],
)
def test_matches_torch(shape_q, shape_k, dv, mask_shape, mask_kind):
    torch = pytest.importorskip("torch", reason="torch is the oracle for attention")
    rng = np.random.default_rng(4)
    q = rng.standard_normal(shape_q).astype(np.float32)
    k = rng.standard_normal(shape_k).astype(np.float32)
    v = rng.standard_normal(shape_k[:-1] + (dv,)).astype(np.float32)
    g = rng.standard_normal(shape_q[:-1] + (dv,)).astype(np.float32)
    mask = None
    if mask_kind == "bool":
        mask = rng.random(mask_shape) < 0.6
        mask.reshape(-1, mask_shape[-1])[::4] = False  # some fully masked rows
    elif mask_kind == "float":
        mask = rng.standard_normal(mask_shape).astype(np.float32)
    ours = [nd.tensor(a, requires_grad=True) for a in (q, k, v)]
    out = F.scaled_dot_product_attention(*ours, attn_mask=mask)
    out.backward(g)
    theirs = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    tmask = None if mask is None else torch.tensor(mask)
    tout = torch.nn.functional.scaled_dot_product_attention(*theirs, attn_mask=tmask)
    tout.backward(torch.tensor(g))
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=1e-4, atol=1e-5)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_fully_masked_row_is_zero_with_zero_gradient():
    q = nd.tensor(np.ones((1, 2, 4)), requires_grad=True)
    kv = nd.tensor(np.ones((1, 3, 4)), requires_grad=True)
    mask = np.array([[True, False, True], [False, False, False]])
    out = F.scaled_dot_product_attention(q, kv, kv, attn_mask=mask)
    np.testing.assert_array_equal(out.numpy()[0, 1], 0)
    out.sum().backward()
    np.testing.assert_array_equal(q.grad.numpy()[0, 1], 0)


def test_bad_inputs_name_the_shapes():
    q, k, v = np.zeros((2, 3, 4)), np.zeros((2, 5, 4)), np.zeros((2, 5, 6))
    with pytest.raises(ValueError, match=r"\(2, 5, 3\)"):
        F.scaled_dot_product_attention(q, np.zeros((2, 5, 3)), v)
    with pytest.raises(ValueError, match=r"\(2, 4, 6\)"):
        F.scaled_dot_product_attention(q, k, np.zeros((2, 4, 6)))
    with pytest.raises(ValueError, match="batch dims"):
        F.scaled_dot_product_attention(q, np.zeros((3, 5, 4)), np.zeros((3, 5, 6)))
    with pytest.raises(ValueError, match="rank"):
        F.scaled_dot_product_attention(np.zeros(4), np.zeros(4), np.zeros(4))
    with pytest.raises(ValueError, match=r"\(3, 4\)"):
        F.scaled_dot_product_attention(q, k, v, attn_mask=np.ones((3, 4), bool))
    with pytest.raises(ValueError, match="empty"):
        F.scaled_dot_product_attention(np.zeros((2, 0, 4)), k, v)
    with pytest.raises(ValueError, match="attention shapes"):
        KT.attention_forward(q, np.zeros((2, 5, 3)), v)
