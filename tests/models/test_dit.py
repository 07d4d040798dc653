"""DiTTransformer2DModel: adaLN-Zero identity at init, config refusals, and diffusers as the oracle
(same parameters, forward, gradients, the null class, folders both ways).

Tiny configs (width 16-24, 2 blocks, 8×8 inputs, batch 3) covering patch 1/2/4, in ≠ out
channels, exact and tanh GELU, attention bias on/off, an affine norm3 and an input larger
than sample_size (the position code is recomputed for the larger grid).
"""

import numpy as np
import pytest

import npdiff as nd
from npdiff.models import DiTTransformer2DModel
from npdiff.models.dit import get_2d_sincos_pos_embed
from tests.oracle import assert_close, assert_grads_close, assert_same_parameters, diffusers_pair

CONFIGS = {
    "patch2": dict(num_attention_heads=2, attention_head_dim=8, in_channels=3, out_channels=2, num_layers=2,
                   sample_size=8, patch_size=2, num_embeds_ada_norm=10),
    "patch4_gelu_affine": dict(num_attention_heads=3, attention_head_dim=8, in_channels=1, num_layers=2,
                               sample_size=8, patch_size=4, num_embeds_ada_norm=3, activation_fn="gelu",
                               attention_bias=False, norm_elementwise_affine=True, norm_eps=1e-6),
    "patch1": dict(num_attention_heads=1, attention_head_dim=16, in_channels=2, num_layers=1, sample_size=4,
                   patch_size=1, num_embeds_ada_norm=0),
}
SIZES = {"patch2": 8, "patch4_gelu_affine": 16, "patch1": 4}  # patch4 runs 16×16 on an 8×8 model


def _inputs(name, seed):
    cfg = CONFIGS[name]
    rng = np.random.default_rng(seed)
    s = SIZES[name]
    x = rng.standard_normal((3, cfg["in_channels"], s, s)).astype(np.float32)
    t = np.array([0, 417, 999])
    K = cfg["num_embeds_ada_norm"]
    y = np.array([K, min(1, K), 0])  # includes the null class K
    return x, t, y


def _perturb(model, seed, scale=0.1):
    """Random non-zero weights (the zero-initialised layers would make outputs trivially 0)."""
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p.data[...] += scale * rng.standard_normal(p.shape).astype(p.dtype)


def test_zero_adaln_blocks_are_identity():
    """At initialisation every block returns its input exactly (α₁ = α₂ = 0) and the output is 0."""
    nd.manual_seed(0)
    model = DiTTransformer2DModel(**CONFIGS["patch2"])
    x, t, y = _inputs("patch2", 0)
    with nd.no_grad():
        h = model.pos_embed(nd.tensor(x))
        for block in model.transformer_blocks:
            out = block(h, timestep=t, class_labels=y)
            np.testing.assert_array_equal(out.numpy(), h.numpy())
            h = out
        assert np.abs(h.numpy()).max() > 0.1  # the identity is not the trivial zero map
        np.testing.assert_array_equal(model(x, t, class_labels=y).numpy(), 0.0)
    # once the modulation is non-zero, blocks do change their input
    _perturb(model, 1)
    with nd.no_grad():
        h = model.pos_embed(nd.tensor(x))
        assert np.abs(model.transformer_blocks[0](h, timestep=t, class_labels=y).numpy() - h.numpy()).max() > 1e-3


def test_position_code_is_a_fixed_buffer():
    model = DiTTransformer2DModel(**CONFIGS["patch2"])
    assert not any("pos_embed.pos_embed" in k for k in model.state_dict())
    assert [k for k, _ in model.named_buffers()] == ["pos_embed.pos_embed"]
    pos = model.pos_embed.pos_embed  # (1, 16, 16): 4×4 patches of width 16
    assert pos.shape == (1, 16, 16) and pos.dtype == np.float32
    # token (i, j) = row-major patch index; first half codes the column j, second half the row i
    want = get_2d_sincos_pos_embed(16, 4, base_size=4)
    np.testing.assert_array_equal(pos[0], want)
    i, j = 2, 3
    np.testing.assert_allclose(want[4 * i + j, 0:4], np.sin(j / 10000 ** (np.arange(4) / 4)), rtol=1e-6)
    np.testing.assert_allclose(want[4 * i + j, 8:12], np.sin(i / 10000 ** (np.arange(4) / 4)), rtol=1e-6)


@pytest.mark.parametrize("key, value, match", [
    ("norm_type", "ada_norm_single", "norm_type"),
    ("num_embeds_ada_norm", None, "num_embeds_ada_norm"),
    ("sample_size", 7, "sample_size"),
    ("activation_fn", "geglu-fast", "activation_fn"),
    ("attention_head_dim", 7, "divisible by 4"),
])
def test_unsupported_config_is_refused_by_name(key, value, match):
    with pytest.raises(ValueError, match=match):
        DiTTransformer2DModel(**{**CONFIGS["patch2"], key: value})


def test_bad_inputs_are_refused():
    model = DiTTransformer2DModel(**CONFIGS["patch2"])
    x, t, y = _inputs("patch2", 0)
    with pytest.raises(ValueError, match="hidden_states"):
        model(x[:, :2], t, class_labels=y)
    with pytest.raises(ValueError, match="hidden_states"):
        model(x[..., :7], t, class_labels=y)
    with pytest.raises(ValueError, match="class_labels must lie in"):
        model(x, t, class_labels=np.array([0, 1, 11]))
    with pytest.raises(ValueError, match="timestep"):
        model(x, class_labels=y)


def test_null_class_and_scalar_timestep():
    """class_labels=None is the null class ∅ = num_embeds_ada_norm for every sample; a scalar t broadcasts."""
    nd.manual_seed(0)
    model = DiTTransformer2DModel(**CONFIGS["patch2"])
    _perturb(model, 2)
    x, _, _ = _inputs("patch2", 3)
    K = CONFIGS["patch2"]["num_embeds_ada_norm"]
    with nd.no_grad():
        null = model(x, np.full(3, 250), class_labels=np.full(3, K)).numpy()
        np.testing.assert_array_equal(model(x, 250, class_labels=None).numpy(), null)
        cond = model(x, 250, class_labels=np.array([1, 2, 3])).numpy()
    assert np.abs(cond - null).max() > 1e-3 * np.abs(null).max()  # the label matters


# ---------------------------------------------------------------- oracle: diffusers
def _oracle():
    torch = pytest.importorskip("torch", reason="oracle tests need torch")
    diffusers = pytest.importorskip("diffusers", reason="oracle tests need diffusers")
    return torch, diffusers


@pytest.mark.parametrize("name", list(CONFIGS))
def test_same_parameters_output_and_gradients(name, tmp_path):
    torch, diffusers = _oracle()
    ref, ours = diffusers_pair(diffusers.DiTTransformer2DModel, DiTTransformer2DModel, CONFIGS[name], tmp_path, seed=4)
    assert_same_parameters(ours, ref)
    np.testing.assert_array_equal(ours.pos_embed.pos_embed, ref.pos_embed.pos_embed.numpy())
    x, t, y = _inputs(name, 5)
    tt, ty = torch.from_numpy(t), torch.from_numpy(y)
    with torch.no_grad():
        want = ref(torch.from_numpy(x), tt, ty).sample.numpy()
    with nd.no_grad():
        got = ours(x, t, class_labels=y).numpy()
    assert_close(got, want, f"{name}: forward")

    # gradients of sum(out · R) with respect to the input and every parameter
    R = np.random.default_rng(6).standard_normal(want.shape).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_(True)
    (ref(xt, tt, ty).sample * torch.from_numpy(R)).sum().backward()
    xn = nd.tensor(x, requires_grad=True)
    (ours(xn, t, class_labels=y) * R).sum().backward()
    assert_close(xn.grad.numpy(), xt.grad.numpy(), f"{name}: d/d hidden_states")
    assert_grads_close(ours, ref, name)


def test_null_class_matches_diffusers(tmp_path):
    """The null class row (index num_embeds_ada_norm) is diffusers' CFG row: force_drop_ids there
    equals passing the index here, and classifier-free guidance built from it agrees."""
    torch, diffusers = _oracle()
    ref, ours = diffusers_pair(diffusers.DiTTransformer2DModel, DiTTransformer2DModel, CONFIGS["patch2"], tmp_path)
    x, t, y = _inputs("patch2", 7)
    K = CONFIGS["patch2"]["num_embeds_ada_norm"]
    y = np.array([3, 5, 9])
    with torch.no_grad():
        xt, tt = torch.from_numpy(x), torch.from_numpy(t)
        cond_ref = ref(xt, tt, torch.from_numpy(y)).sample.numpy()
        null_ref = ref(xt, tt, torch.full((3,), K)).sample.numpy()
        emb = ref.transformer_blocks[0].norm1.emb.class_embedder
        np.testing.assert_array_equal(emb(torch.from_numpy(y), force_drop_ids=np.ones(3)).numpy(),
                                      emb.embedding_table.weight[K].expand(3, -1).numpy())
    with nd.no_grad():
        cond, null = ours(x, t, class_labels=y).numpy(), ours(x, t, class_labels=None).numpy()
        np.testing.assert_array_equal(
            ours.transformer_blocks[0].norm1.emb.class_embedder(y, force_drop_ids=np.ones(3)).numpy(),
            np.broadcast_to(ours.transformer_blocks[0].norm1.emb.class_embedder.embedding_table.weight.numpy()[K],
                            (3, 16)))
    assert_close(null, null_ref, "null-class forward")
    w = 4.0  # ε̂ = ε(∅) + w (ε(y) − ε(∅))
    assert_close(null + w * (cond - null), null_ref + w * (cond_ref - null_ref), "guided prediction")


def test_folders_round_trip_both_ways(tmp_path):
    torch, diffusers = _oracle()
    nd.manual_seed(0)
    cfg = CONFIGS["patch4_gelu_affine"]
    ours = DiTTransformer2DModel(**cfg)
    _perturb(ours, 8)
    ours.save_pretrained(tmp_path / "ours")
    ref = diffusers.DiTTransformer2DModel.from_pretrained(tmp_path / "ours").eval()
    x, t, y = _inputs("patch4_gelu_affine", 9)
    with torch.no_grad():
        want = ref(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y)).sample.numpy()
    with nd.no_grad():
        got = ours(x, t, class_labels=y).numpy()
    assert np.abs(want).max() > 1e-2
    assert_close(got, want, "diffusers loading npdiff's folder")
    # and back: diffusers saves, npdiff loads the same function
    ref.save_pretrained(tmp_path / "theirs")
    again = DiTTransformer2DModel.from_pretrained(tmp_path / "theirs")
    assert dict(again.config) == dict(ours.config)
    with nd.no_grad():
        np.testing.assert_array_equal(again(x, t, class_labels=y).numpy(), got)


def test_erratum_E15_patch_size_is_small():
    """E15: DiT's patches are p ∈ {2, 4, 8} latent pixels (DiT-XL/2: p = 2), not 16×16 pixels;
    the default here, as in diffusers, is p = 2 on a 32×32 latent (256 tokens)."""
    import inspect

    params = inspect.signature(DiTTransformer2DModel.__init__).parameters
    assert params["patch_size"].default == 2 and params["sample_size"].default == 32
    torch, diffusers = _oracle()
    theirs = inspect.signature(diffusers.DiTTransformer2DModel.__init__).parameters
    assert {k: v.default for k, v in params.items() if k != "self"} == \
        {k: v.default for k, v in theirs.items() if k != "self"}


def test_erratum_E21_conditioning_modulates_and_adds_no_tokens():
    """E21: t and y are not put into the token sequence (nor is any text): the blocks see
    L = (H/p)² tokens only, and t, y act solely through the adaLN regression c -> (β, γ, α): with
    its weight zero (its bias random, so the block is not the identity) the block output does
    not depend on t or y at all."""
    nd.manual_seed(0)
    model = DiTTransformer2DModel(**CONFIGS["patch2"])
    _perturb(model, 3)
    for block in model.transformer_blocks:  # cut c out of the modulation; everything else random
        block.norm1.linear.weight.data[...] = 0
    x, t, y = _inputs("patch2", 0)
    with nd.no_grad():
        h = model.pos_embed(nd.tensor(x))
        assert h.shape == (3, (8 // 2) ** 2, 16)
        a = model.transformer_blocks[0](h, timestep=t, class_labels=y).numpy()
        b = model.transformer_blocks[0](h, timestep=t[::-1].copy(), class_labels=np.array([5, 6, 7])).numpy()
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - h.numpy()).max() > 1e-3  # the block does transform its input
