"""UNet2DModel against diffusers' UNet2DModel: same parameters, same function, same gradients.

Each config is tiny (channels 8-32, 8×8 images, batch 2) and together they cover
every supported option: block types, mid block on/off, add_attention, attention
head width (int, None, not dividing the channels), both time-scale-shift modes,
the three class-embedding kinds, center_input_sample, flip_sin_to_cos, freq_shift,
mid_block_scale_factor, downsample_padding 0/1, act_fn, dropout (eval), norm_eps,
time_embedding_dim, attn_norm_num_groups, layers_per_block 1/2.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="oracle tests need torch")
diffusers = pytest.importorskip("diffusers", reason="oracle tests need diffusers")

import npdiff as nd  # noqa: E402
from npdiff.models import UNet2DModel  # noqa: E402
from npdiff.optim import AdamW  # noqa: E402
from tests.oracle import assert_close as _close  # noqa: E402
from tests.oracle import assert_grads_close, assert_same_parameters, diffusers_pair, randomise  # noqa: E402

CONFIGS = {
    "plain": dict(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
                  down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                  norm_num_groups=8, attention_head_dim=8),
    "class_scale_shift": dict(sample_size=8, in_channels=1, out_channels=2, block_out_channels=(8, 16, 16),
                              layers_per_block=2, norm_num_groups=4, attention_head_dim=None,
                              down_block_types=("AttnDownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                              up_block_types=("AttnUpBlock2D", "UpBlock2D", "AttnUpBlock2D"),
                              resnet_time_scale_shift="scale_shift", center_input_sample=True,
                              flip_sin_to_cos=False, freq_shift=1, mid_block_scale_factor=1.414,
                              downsample_padding=0, num_class_embeds=5, norm_eps=1e-6, dropout=0.1),
    "timestep_class_no_mid": dict(sample_size=8, in_channels=2, out_channels=2, block_out_channels=(16, 16),
                                  layers_per_block=1, norm_num_groups=8, attention_head_dim=4,
                                  down_block_types=("AttnDownBlock2D", "AttnDownBlock2D"),
                                  up_block_types=("UpBlock2D", "AttnUpBlock2D"), mid_block_type=None,
                                  class_embed_type="timestep", time_embedding_dim=24, act_fn="gelu"),
    "identity_class_no_attn": dict(sample_size=8, in_channels=3, out_channels=1, block_out_channels=(12, 24),
                                   layers_per_block=1, norm_num_groups=4, attention_head_dim=8,
                                   down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                   up_block_types=("AttnUpBlock2D", "UpBlock2D"), add_attention=False,
                                   class_embed_type="identity", resnet_time_scale_shift="scale_shift",
                                   attn_norm_num_groups=4),
    "mid_attn_groups": dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                            layers_per_block=1, norm_num_groups=4, attention_head_dim=8,
                            down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                            resnet_time_scale_shift="scale_shift", attn_norm_num_groups=2, act_fn="relu"),
}


def _inputs(cfg, seed):
    rng = np.random.default_rng(seed)
    B = 2
    x = rng.standard_normal((B, cfg["in_channels"], 8, 8)).astype(np.float32)
    t = np.array([3, 771])
    labels = None
    E = cfg.get("time_embedding_dim") or 4 * cfg["block_out_channels"][0]
    if cfg.get("num_class_embeds"):
        labels = np.array([4, 1])
    elif cfg.get("class_embed_type") == "timestep":
        labels = np.array([10, 250])
    elif cfg.get("class_embed_type") == "identity":
        labels = rng.standard_normal((B, E)).astype(np.float32)
    return x, t, labels


def _pair(name, tmp_path, seed=0):
    ref, ours = diffusers_pair(diffusers.UNet2DModel, UNet2DModel, CONFIGS[name], tmp_path / name, seed)
    return CONFIGS[name], ref, ours


@pytest.mark.parametrize("name", list(CONFIGS))
def test_same_parameters_output_and_gradients(name, tmp_path):
    cfg, ref, ours = _pair(name, tmp_path)
    assert_same_parameters(ours, ref)

    x, t, labels = _inputs(cfg, 1)
    tlab = None if labels is None else torch.from_numpy(labels)
    # forward (eval: dropout off on both sides)
    with torch.no_grad():
        want = ref(torch.from_numpy(x), torch.from_numpy(t), class_labels=tlab).sample.numpy()
    with nd.no_grad():
        got = ours(x, t, class_labels=labels)
    _close(got.numpy(), want, f"{name}: forward")

    # gradients of sum(out * R) with respect to the input and every parameter
    R = np.random.default_rng(2).standard_normal(want.shape).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_(True)
    (ref(xt, torch.from_numpy(t), class_labels=tlab).sample * torch.from_numpy(R)).sum().backward()
    xn = nd.tensor(x, requires_grad=True)
    (ours(xn, t, class_labels=labels) * R).sum().backward()
    _close(xn.grad.numpy(), xt.grad.numpy(), f"{name}: d/d input")
    assert_grads_close(ours, ref, name)


def test_scalar_and_fractional_timesteps(tmp_path):
    cfg, ref, ours = _pair("plain", tmp_path)
    x, _, _ = _inputs(cfg, 3)
    with torch.no_grad():
        want_scalar = ref(torch.from_numpy(x), torch.tensor(500)).sample.numpy()
        want_frac = ref(torch.from_numpy(x), torch.tensor([12.25, 640.5])).sample.numpy()
    with nd.no_grad():
        _close(ours(x, 500).numpy(), want_scalar, "scalar timestep")
        _close(ours(x, nd.tensor(np.array([12.25, 640.5], np.float32))).numpy(), want_frac, "fractional timesteps")


def test_adamw_steps_match():
    """Three DDPM-style training steps (MSE to the noise) give the same losses and weights.

    Run in float64 on both sides. In float32 a parameter whose exact gradient is tiny (or
    zero, like the attention key bias) has a gradient made of rounding noise of size
    ~ n·2⁻²⁴·max|g|, which depends on the CPU's summation order; Adam divides by √v and turns
    that noise into lr-sized steps of arbitrary sign, so the comparison would measure BLAS
    kernels, not npdiff. In float64 the noise is ~ n·2⁻⁵³·max|g| ≪ Adam's ε = 1e-8, so an
    update differs between the two sides by at most lr·(gradient error)/ε per step. The
    float32 forward and gradients are compared in ``test_same_parameters_output_and_gradients``.
    """
    cfg = dict(CONFIGS["class_scale_shift"], dropout=0.0)
    steps, lr, adam_eps = 3, 1e-3, 1e-8
    torch.manual_seed(4)
    ref = diffusers.UNet2DModel(**cfg)
    randomise(ref, 4)
    ref.double().train()
    ours = UNet2DModel(**cfg).double()
    ours.load_state_dict({k: v.detach().numpy() for k, v in ref.state_dict().items()})
    ours.train()
    assert all(p.dtype == np.float64 for p in ours.parameters())
    # Both libraries compute the sinusoidal timestep code in float32 (whatever the model's
    # dtype), with their own float32 exp/sin/cos, which may differ by an ulp and do so
    # differently on each CPU. Feed torch npdiff's code so that both float64 networks see the
    # same input; the code itself is compared in float32 by the tests above.
    ref.time_proj.register_forward_hook(
        lambda module, args, out: torch.from_numpy(np.asarray(ours.time_proj(args[0].numpy()).data)).to(out.dtype))
    opt_ref = torch.optim.AdamW(ref.parameters(), lr=lr, eps=adam_eps, weight_decay=1e-2)
    opt = AdamW(ours.parameters(), lr=lr, eps=adam_eps, weight_decay=1e-2)
    rng = np.random.default_rng(5)
    max_grad = 0.0
    for step in range(steps):
        x = rng.standard_normal((2, 1, 8, 8))
        noise = rng.standard_normal((2, 2, 8, 8))
        t = rng.integers(0, 1000, size=2)
        y = rng.integers(0, 5, size=2)
        opt_ref.zero_grad()
        loss_ref = torch.nn.functional.mse_loss(
            ref(torch.from_numpy(x), torch.from_numpy(t), class_labels=torch.from_numpy(y)).sample,
            torch.from_numpy(noise))
        loss_ref.backward()
        max_grad = max(max_grad, max(float(p.grad.abs().max()) for p in ref.parameters()))
        opt_ref.step()
        opt.zero_grad()
        diff = ours(x, t, class_labels=y) - noise
        loss = (diff * diff).mean()
        assert loss.dtype == np.float64
        loss.backward()
        opt.step()
        # the loss is a mean of O(1) terms: float64 rounding over the network is ~1e-13
        assert abs(loss.item() - loss_ref.item()) <= 1e-9 * abs(loss_ref.item()), (step, loss.item(), loss_ref.item())
    # gradient error per element ≤ n·2⁻⁵³·max|g| with n ≤ 1e4 terms in a sum (≈ 1e-12·max|g|);
    # each Adam step then moves a parameter by at most lr·err/ε more or less than torch does.
    grad_err = 1e4 * 2.0 ** -53 * max_grad
    atol = steps * lr * min(1.0, grad_err / adam_eps) + 1e-12
    ref_state = ref.state_dict()
    for k, v in ours.state_dict().items():
        d = float(np.abs(np.asarray(v, np.float64) - ref_state[k].numpy()).max())
        assert d <= atol, f"after AdamW: {k}: max |diff| = {d:.2e} > {atol:.2e}"


def test_diffusers_loads_what_npdiff_saves(tmp_path):
    nd.manual_seed(0)
    ours = UNet2DModel(**CONFIGS["class_scale_shift"]).eval()
    ours.save_pretrained(tmp_path / "ours")
    ref = diffusers.UNet2DModel.from_pretrained(tmp_path / "ours").eval()
    x, t, labels = _inputs(CONFIGS["class_scale_shift"], 6)
    with torch.no_grad():
        want = ref(torch.from_numpy(x), torch.from_numpy(t), class_labels=torch.from_numpy(labels)).sample.numpy()
    with nd.no_grad():
        _close(ours(x, t, class_labels=labels).numpy(), want, "diffusers loading npdiff's folder")
