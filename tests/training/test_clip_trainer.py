"""CLIP pre-training pieces: captions with one attribute changed, the loss with hard negatives,
attention pooling, the trainer learning, and the cross-attention probe of the latent U-Net."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import npdiff as nd
from npdiff.autograd import Tensor
from npdiff.data import make_shapes
from npdiff.models.clip import CLIPImageEncoder, contrastive_loss
from npdiff.training.clip_trainer import ATTRIBUTE_VALUES, attribute_variants, colour_shape_pairs, hard_negative

DATA = make_shapes(64, "train", seed=3)


@settings(deadline=None, max_examples=40)
@given(i=st.integers(0, 63), seed=st.integers(0, 2**16))
def test_hard_negative_changes_exactly_one_attribute(i, seed):
    a = DATA.attributes[i]
    neg = hard_negative(a, np.random.default_rng(seed))
    assert np.sum(neg != a) == 1  # one field of one object
    present = neg[:, 0] >= 0
    assert len(set(neg[present, 3])) == int(present.sum())  # two objects never share a quadrant
    assert np.array_equal(neg[:, 0] >= 0, a[:, 0] >= 0)  # no object appears or vanishes


@settings(deadline=None, max_examples=40)
@given(i=st.integers(0, 63), seed=st.integers(0, 2**16), attribute=st.sampled_from([None, "shape", "colour"]))
def test_hard_negatives_never_name_an_unseen_pair(i, seed, attribute):
    allowed = colour_shape_pairs(DATA.attributes)
    assert len(allowed) == 15  # 6 colours × 3 shapes − the 3 held-out pairs
    neg = hard_negative(DATA.attributes[i], np.random.default_rng(seed), attribute, allowed)
    assert colour_shape_pairs(neg[None]) <= allowed
    assert np.sum(neg != DATA.attributes[i]) == 1


@pytest.mark.parametrize("attribute", list(ATTRIBUTE_VALUES))
def test_attribute_variants_list_every_allowed_value_once(attribute):
    for a in DATA.attributes[:16]:
        for obj in np.flatnonzero(a[:, 0] >= 0):
            variants, true = attribute_variants(a, int(obj), attribute)
            assert np.array_equal(variants[true], a)
            col = list(ATTRIBUTE_VALUES).index(attribute)
            values = [int(v[obj, col]) for v in variants]
            assert len(set(values)) == len(values)
            others = int((a[:, 0] >= 0).sum()) - 1
            expected = ATTRIBUTE_VALUES[attribute] - (others if attribute == "position" else 0)
            assert len(values) == expected


def test_contrastive_loss_with_negatives_matches_its_formula():
    rng = np.random.default_rng(0)
    n, m, e, s = 5, 7, 4, 1.3
    v, t, tn = rng.standard_normal((n, e)), rng.standard_normal((n, e)), rng.standard_normal((m, e))
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    logits = np.exp(s) * unit(v) @ unit(np.concatenate([t, tn])).T  # (N, N + M)
    i2t = -np.mean(np.diag(logits[:, :n]) - np.log(np.exp(logits).sum(1)))
    t2i = -np.mean(np.diag(logits[:, :n]) - np.log(np.exp(logits[:, :n]).sum(0)))
    got = contrastive_loss(Tensor(v), Tensor(t), s, negative_text_embeds=Tensor(tn)).item()
    assert abs(got - 0.5 * (i2t + t2i)) <= 1e-12 * 20 * (n + m) * max(1.0, abs(got))
    # negatives far below every positive change nothing; none given is the plain CLIP loss
    plain = contrastive_loss(Tensor(v), Tensor(t), s).item()
    assert got > plain


def test_attention_pooling_sees_position():
    """Mean pooling is blind to where a feature is (up to padding); attention pooling is not."""
    nd.manual_seed(0)
    enc = CLIPImageEncoder(3, (8, 16), norm_num_groups=4, pooling="attention", image_size=16)
    x = np.zeros((2, 3, 16, 16), dtype=np.float32)
    x[0, :, 2:6, 2:6] = 1.0
    x[1, :, 10:14, 10:14] = 1.0  # the same square, moved
    out = enc(Tensor(x)).numpy()
    assert out.shape == (2, 16)
    assert np.abs(out[0] - out[1]).max() > 1e-3
    with pytest.raises(ValueError, match="image_size"):
        CLIPImageEncoder(3, (8, 16), norm_num_groups=4, pooling="attention", image_size=15)


def test_clip_trainer_learns(tmp_path):
    """256 captioned images, 40 steps: the contrastive loss falls from chance (log-sum of the candidates)."""
    from npdiff.training import TrainConfig, trainer_class

    cfg = TrainConfig(data="shapes", image_size=None, model="clip", subset=256, block_out_channels=(16, 32),
                      norm_num_groups=4, attention=False, hidden_dim=32, num_blocks=1, steps=40, batch_size=32,
                      lr=3e-3, warmup_steps=3, sample_every=1000, checkpoint_every=1000, log_every=5,
                      class_conditional=False)
    losses = []
    trainer = trainer_class(cfg)(cfg, str(tmp_path / "clip"), progress=False)
    trainer.sample_grid = lambda: None  # pictures are tested by the stack test
    trainer.train(callback=lambda tr, rec: losses.append(rec["loss"]))
    # chance: each image picks among 3N captions, each caption among N images
    chance = 0.5 * (np.log(3 * 32) + np.log(32))
    assert np.mean(losses[:3]) > 0.9 * chance
    assert np.mean(losses[-8:]) < np.mean(losses[:5]) - 0.25, losses
