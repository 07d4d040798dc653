"""CLIP's contrastive loss: properties, gradients, transformers' formula; the small CLIP model."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import npdiff as nd
from npdiff.models.clip import CLIPModel, contrastive_loss, normalize, zero_shot_classify
from tests.gradcheck import check_gradients

LOG100 = math.log(100.0)


def _embeds(n, e, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, e)), rng.standard_normal((n, e))


def _loss(v, t, s):
    return float(contrastive_loss(v, t, s).item())


@settings(max_examples=25)
@given(n=st.integers(1, 6), e=st.integers(2, 5), seed=st.integers(0, 10_000), s=st.floats(-2.0, 4.0),
       c=st.floats(0.01, 100.0))
def test_symmetric_scale_and_permutation_invariant(n, e, seed, s, c):
    v, t = _embeds(n, e, seed)
    base = _loss(v, t, s)
    tol = 1e-12 * max(1.0, abs(base)) * n * e + 1e-12
    assert abs(_loss(t, v, s) - base) <= tol  # images and captions play the same role
    assert abs(_loss(c * v, t, s) - base) <= 1e2 * tol  # only directions matter (cosine similarity)
    p = np.random.default_rng(seed + 1).permutation(n)
    assert abs(_loss(v[p], t[p], s) - base) <= tol  # the order of the pairs in the batch does not matter
    assert base >= 0.0


def test_bounds():
    # identical embeddings for every pair: no information, every softmax is uniform -> log N
    n = 5
    same = np.ones((n, 3))
    assert abs(_loss(same, same, 1.0) - math.log(n)) <= 1e-12
    # orthonormal pairs, temperature at its clip: loss = log(1 + (N − 1) e^{−100})
    eye = np.eye(n)
    assert abs(_loss(eye, eye, LOG100) - math.log1p((n - 1) * math.exp(-100.0))) <= 1e-12
    # swapped captions make the loss large: ≈ 100 (the margin) per mismatched pair
    assert _loss(eye, eye[::-1], LOG100) > 50.0


def test_temperature_is_clipped_at_100():
    v, t = _embeds(4, 3, 0)
    assert _loss(v, t, LOG100 + 2.0) == _loss(v, t, LOG100)
    s = nd.tensor(np.array(LOG100 + 1.0), requires_grad=True)
    contrastive_loss(v, t, s).backward()
    assert float(s.grad.numpy()) == 0.0
    s = nd.tensor(np.array(1.0), requires_grad=True)
    contrastive_loss(v, t, s).backward()
    assert float(s.grad.numpy()) != 0.0


def test_gradients_match_central_differences():
    v, t = _embeds(4, 3, 1)
    check_gradients(lambda a, b, s: contrastive_loss(a, b, s), [v, t, np.array(0.7)], n_samples=12)


def test_matches_transformers_formula():
    torch = pytest.importorskip("torch", reason="oracle tests need torch")
    tr = pytest.importorskip("transformers.models.clip.modeling_clip", reason="oracle tests need transformers")
    v, t = _embeds(6, 4, 2)
    vt, tt = torch.tensor(v, requires_grad=True), torch.tensor(t, requires_grad=True)
    st_ = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    vn, tn = vt / vt.norm(dim=-1, keepdim=True), tt / tt.norm(dim=-1, keepdim=True)
    ref = tr.image_text_contrastive_loss(tn @ vn.T * st_.exp())  # transformers: logits_per_text
    ref.backward()
    a, b, s = nd.tensor(v, requires_grad=True), nd.tensor(t, requires_grad=True), nd.tensor(np.array(1.3),
                                                                                           requires_grad=True)
    ours = contrastive_loss(a, b, s)
    ours.backward()
    assert abs(ours.item() - ref.item()) <= 1e-12 * abs(ref.item())
    for got, want in ((a.grad, vt.grad), (b.grad, tt.grad), (s.grad, st_.grad)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-10, atol=1e-13)


def test_clip_model_forward_backward_and_zero_shot():
    nd.manual_seed(0)
    text = dict(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=8, bos_token_id=38, eos_token_id=39, pad_token_id=39)
    m = CLIPModel(text, projection_dim=8, vision_channels=(8, 16))
    rng = np.random.default_rng(0)
    ids = np.array([[38, 5, 6, 39, 39, 39], [38, 7, 39, 39, 39, 39], [38, 9, 10, 11, 39, 39]])
    x = rng.standard_normal((3, 3, 16, 16)).astype(np.float32)
    out = m(ids, x, return_loss=True)
    assert out.logits_per_image.shape == (3, 3)
    np.testing.assert_array_equal(out.logits_per_text.numpy(), out.logits_per_image.numpy().T)
    np.testing.assert_allclose((out.image_embeds.numpy() ** 2).sum(1), 1.0, rtol=1e-5)
    assert abs(out.loss.item() - contrastive_loss(out.image_embeds, out.text_embeds, m.logit_scale).item()) < 1e-6
    out.loss.backward()
    assert m.logit_scale.grad is not None and m.visual_projection.weight.grad is not None
    assert m.text_model.embeddings.token_embedding.weight.grad is not None
    # zero-shot: the class whose prompt embedding is closest in angle
    classes = normalize(np.eye(3)[:, :3])
    imgs = np.array([[0.1, 2.0, 0.0], [5.0, 0.0, 1.0], [0.0, 0.1, 0.2]])
    np.testing.assert_array_equal(zero_shot_classify(imgs, classes), [1, 0, 2])
