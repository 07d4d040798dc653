"""Oracle tests: npdiff schedulers against diffusers on whole sampling trajectories.

Both schedulers run side by side from the same x_T with the same deterministic fake model;
stochastic steps get the same noise (passed to npdiff as ``variance_noise`` and patched into
diffusers' ``randn_tensor``).

Tolerances follow from diffusers' float32 arithmetic (npdiff keeps its coefficients in
float64, so the difference is diffusers' rounding; u = 2⁻²⁴):
- one ``step()`` is ~20 float32 operations on O(scale) terms, so each output agrees to
  ``close``'s 2e-5 ≈ 335 u of the sample scale. The trajectories run in lockstep: at every
  step both sides start from diffusers' sample (and so keep the same model-output history),
  so the comparison bounds one step's rounding, not its amplification along a trajectory,
  which depends on the CPU's float32 exp/log.
- ᾱ_t is a float32 cumulative product: ``check_alphas_cumprod`` derives its bound.
"""

import importlib

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="oracle tests need torch (pip install npdiff[oracle])")
diffusers = pytest.importorskip("diffusers", reason="oracle tests need diffusers (pip install npdiff[oracle])")

import npdiff.schedulers as ours  # noqa: E402

SHAPE = (2, 3, 4, 4)


def close(a, b, what, rtol=2e-5):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b.detach().cpu().numpy() if hasattr(b, "detach") else b, dtype=np.float64)
    scale = max(1.0, float(np.max(np.abs(b)))) if b.size else 1.0
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale, err_msg=what)


def fake_model(x, t, channels_out=None):
    """Deterministic smooth 'network': depends on the sample and the timestep."""
    t = float(t)
    out = 0.4 * np.tanh(x) + 0.1 * np.cos(t / 97.0 + np.arange(x.shape[1]).reshape(1, -1, 1, 1))
    if channels_out is not None:  # learned variance: second half in [-1, 1]
        out = np.concatenate([out, np.tanh(x + t / 500.0)], axis=1)
    return out.astype(np.float32)


class PatchedNoise:
    """Replace ``randn_tensor`` in a diffusers scheduler module by a queue we fill per step."""

    def __init__(self, monkeypatch, module_name):
        self.next = None
        mod = importlib.import_module(f"diffusers.schedulers.{module_name}")
        monkeypatch.setattr(mod, "randn_tensor", lambda shape, **kw: torch.from_numpy(self.next.copy()))

    def draw(self, rng, shape=SHAPE):
        self.next = rng.standard_normal(shape).astype(np.float32)
        return self.next


U32 = 2.0 ** -24


def alphas_cumprod_error(mine):
    """Bound on |ᾱ_t(diffusers, float32) − ᾱ_t(exact)|. β_s is rounded (relative u, so
    u·β_s/α_s relative on α_s), 1 − β_s is rounded (u) and each product rounds (u):
    relative r_t = Σ_{s≤t} u·(2 + β_s/α_s). The zero-terminal-SNR rescale (Lin et al. 2024,
    Alg. 1) works on √ᾱ of size ≤ 1 (sqrt, shift, scale: ≤ 8u absolute), then squares:
    + 16u·√ᾱ_t absolute."""
    betas = np.asarray(mine.betas, np.float64)
    ab = np.asarray(mine.alphas_cumprod, np.float64)
    err = np.cumsum(U32 * (2.0 + betas / (1.0 - betas))) * ab
    if getattr(mine.config, "rescale_betas_zero_snr", False):
        err += 16 * U32 * np.sqrt(ab)
    return err


def check_alphas_cumprod(mine, ref):
    """ᾱ_t within ``alphas_cumprod_error``; λ_t = log √ᾱ_t − log √(1 − ᾱ_t) within
    ½·e_t/ᾱ_t + ½·e_t/(1 − ᾱ_t) (e_t that error) plus a few roundings of the two logs."""
    err = alphas_cumprod_error(mine)
    ab, ab_ref = np.asarray(mine.alphas_cumprod, np.float64), ref.alphas_cumprod.numpy().astype(np.float64)
    bad = np.abs(ab - ab_ref) > err
    assert not bad.any(), f"alphas_cumprod beyond its float32 bound at t = {np.flatnonzero(bad)[:5]}"
    if hasattr(mine, "lambda_t"):
        lam, lam_ref = np.asarray(mine.lambda_t, np.float64), ref.lambda_t.numpy().astype(np.float64)
        ok = ab > 0  # diffusers pins the zero-SNR end to ᾱ_T = 2⁻²⁴ on both sides
        bound = 0.5 * err / ab + 0.5 * err / (1.0 - ab) + 4 * U32 * (1.0 + np.abs(lam))
        bad = ok & (np.abs(lam - lam_ref) > bound)
        assert not bad.any(), f"lambda_t beyond its float32 bound at t = {np.flatnonzero(bad)[:5]}"


def check_tables(a, b, attrs):
    for name in attrs:
        if name == "alphas_cumprod" or name == "lambda_t":
            check_alphas_cumprod(a, b)
        else:
            close(getattr(a, name), getattr(b, name), name)


def run_pair(ref, mine, steps, *, noise=None, step_kwargs=None, learned=False, scaled=False, seed=0):
    """Run both schedulers for ``steps`` steps and compare all outputs."""
    rng = np.random.default_rng(seed)
    ref.set_timesteps(steps)
    mine.set_timesteps(steps)
    close(mine.timesteps, ref.timesteps, "timesteps")
    if hasattr(ref, "sigmas") and not isinstance(ref, diffusers.DDPMScheduler):
        close(mine.sigmas, ref.sigmas, "sigmas")
    close(mine.init_noise_sigma, float(ref.init_noise_sigma), "init_noise_sigma")
    x0 = rng.standard_normal(SHAPE).astype(np.float32)
    x_ref = torch.from_numpy(x0 * float(ref.init_noise_sigma))
    x_mine = x0 * np.float32(mine.init_noise_sigma)
    kw = step_kwargs or {}
    for i, t in enumerate(ref.timesteps):
        t_mine = mine.timesteps[i]
        in_ref = ref.scale_model_input(x_ref, t) if scaled else x_ref
        in_mine = mine.scale_model_input(x_mine, t_mine) if scaled else x_mine
        close(in_mine, in_ref, f"scale_model_input step {i}")
        co = 2 * SHAPE[1] if learned else None
        extra = {}
        if noise is not None:  # drawn first: diffusers reads it from the patched randn_tensor
            extra["variance_noise"] = noise.draw(rng)
        out_ref = ref.step(torch.from_numpy(fake_model(in_ref.numpy(), t, co)), t, x_ref, **kw)
        out_mine = mine.step(fake_model(in_mine, t_mine, co), t_mine, x_mine, **kw, **extra)
        close(out_mine.prev_sample, out_ref.prev_sample, f"prev_sample step {i} (t={t})")
        if getattr(out_ref, "pred_original_sample", None) is not None:
            close(out_mine.pred_original_sample, out_ref.pred_original_sample, f"pred_original_sample step {i}")
        assert out_mine.prev_sample.dtype == np.float32
        # lockstep: the next step starts from diffusers' sample on both sides
        x_ref = out_ref.prev_sample
        x_mine = x_ref.numpy().copy()


def check_add_noise(ref, mine, timesteps_ref, timesteps_mine):
    rng = np.random.default_rng(1)
    x0 = rng.standard_normal(SHAPE).astype(np.float32)
    eps = rng.standard_normal(SHAPE).astype(np.float32)
    got = mine.add_noise(x0, eps, timesteps_mine)
    want = ref.add_noise(torch.from_numpy(x0), torch.from_numpy(eps), timesteps_ref)
    close(got, want, "add_noise")


DDPM_CONFIGS = [
    dict(beta_schedule="linear", prediction_type="epsilon", variance_type="fixed_small"),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction",
         variance_type="fixed_large", timestep_spacing="trailing", clip_sample=False),
    dict(beta_schedule="squaredcos_cap_v2", prediction_type="sample", variance_type="fixed_small_log",
         timestep_spacing="linspace"),
    dict(beta_schedule="sigmoid", variance_type="learned_range", thresholding=True, sample_max_value=1.5),
    dict(beta_schedule="linear", variance_type="learned", steps_offset=1),
    dict(beta_schedule="linear", prediction_type="v_prediction", rescale_betas_zero_snr=True,
         timestep_spacing="trailing", clip_sample=False),
]


@pytest.mark.parametrize("cfg", DDPM_CONFIGS, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_ddpm_matches_diffusers(cfg, monkeypatch):
    ref, mine = diffusers.DDPMScheduler(**cfg), ours.DDPMScheduler(**cfg)
    check_tables(mine, ref, ["betas", "alphas_cumprod"])
    close(mine.timesteps, ref.timesteps, "initial timesteps")
    check_add_noise(ref, mine, torch.tensor([0, 500, 999]).repeat(1)[:2], np.array([0, 500])[:2])
    noise = PatchedNoise(monkeypatch, "scheduling_ddpm")
    learned = cfg.get("variance_type", "").startswith("learned")
    run_pair(ref, mine, 25, noise=noise, learned=learned)


def test_ddpm_custom_timesteps(monkeypatch):
    ref, mine = diffusers.DDPMScheduler(), ours.DDPMScheduler()
    ts = [900, 700, 400, 100, 3, 0]
    ref.set_timesteps(timesteps=ts)
    mine.set_timesteps(timesteps=ts)
    for t in ts:
        assert mine.previous_timestep(t) == int(ref.previous_timestep(t))


DDIM_CONFIGS = [
    (dict(), dict(eta=0.0)),
    (dict(timestep_spacing="trailing", prediction_type="v_prediction", clip_sample=False,
          rescale_betas_zero_snr=True, beta_schedule="scaled_linear"), dict(eta=0.0)),
    (dict(timestep_spacing="linspace", set_alpha_to_one=False), dict(eta=1.0)),
    (dict(prediction_type="sample", steps_offset=1), dict(eta=0.5, use_clipped_model_output=True)),
    (dict(thresholding=True, sample_max_value=2.0, beta_schedule="squaredcos_cap_v2"), dict(eta=0.3)),
]


@pytest.mark.parametrize("cfg,kw", DDIM_CONFIGS)
def test_ddim_matches_diffusers(cfg, kw):
    ref, mine = diffusers.DDIMScheduler(**cfg), ours.DDIMScheduler(**cfg)
    check_tables(mine, ref, ["betas", "alphas_cumprod", "final_alpha_cumprod"])
    check_add_noise(ref, mine, torch.tensor([10, 999]), np.array([10, 999]))

    class Noise:  # DDIM takes variance_noise itself; hand diffusers the same array
        def draw(self, rng):
            self.next = rng.standard_normal(SHAPE).astype(np.float32)
            return self.next

    noise = Noise() if kw.get("eta", 0) > 0 else None
    if noise is None:
        run_pair(ref, mine, 20, step_kwargs=kw)
        return
    # pass diffusers the same variance_noise explicitly
    rng = np.random.default_rng(0)
    ref.set_timesteps(20)
    mine.set_timesteps(20)
    x = rng.standard_normal(SHAPE).astype(np.float32)
    x_ref, x_mine = torch.from_numpy(x), x
    for t in ref.timesteps:
        z = rng.standard_normal(SHAPE).astype(np.float32)
        o_ref = ref.step(torch.from_numpy(fake_model(x_ref.numpy(), t)), t, x_ref, variance_noise=torch.from_numpy(z), **kw)
        o_mine = mine.step(fake_model(x_mine, int(t)), int(t), x_mine, variance_noise=z, **kw)
        close(o_mine.prev_sample, o_ref.prev_sample, f"ddim t={int(t)}")
        close(o_mine.pred_original_sample, o_ref.pred_original_sample, f"ddim x0 t={int(t)}")
        x_ref = o_ref.prev_sample  # lockstep (module docstring)
        x_mine = x_ref.numpy().copy()


@pytest.mark.parametrize("cfg", [dict(), dict(timestep_spacing="trailing", prediction_type="v_prediction",
                                               clip_sample=False, set_alpha_to_one=False)])
def test_ddim_inverse_matches_diffusers(cfg):
    ref, mine = diffusers.DDIMInverseScheduler(**cfg), ours.DDIMInverseScheduler(**cfg)
    check_tables(mine, ref, ["alphas_cumprod", "initial_alpha_cumprod"])
    run_pair(ref, mine, 20)


EULER_CONFIGS = [
    (dict(), {}),
    (dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, use_karras_sigmas=True,
          prediction_type="v_prediction"), {}),
    (dict(timestep_spacing="leading", steps_offset=1, final_sigmas_type="sigma_min"), {}),
    (dict(timestep_spacing="trailing", rescale_betas_zero_snr=True, prediction_type="v_prediction"), {}),
    (dict(use_karras_sigmas=True, sigma_min=0.05, sigma_max=20.0), dict(s_churn=1.0, s_tmin=0.1, s_tmax=10.0)),
]


@pytest.mark.parametrize("cfg,kw", EULER_CONFIGS)
def test_euler_matches_diffusers(cfg, kw, monkeypatch):
    ref, mine = diffusers.EulerDiscreteScheduler(**cfg), ours.EulerDiscreteScheduler(**cfg)
    check_tables(mine, ref, ["betas", "alphas_cumprod", "sigmas", "timesteps"])
    noise = PatchedNoise(monkeypatch, "scheduling_euler_discrete") if kw else None
    run_pair(ref, mine, 15, scaled=True, step_kwargs=kw, noise=noise)
    ref.set_timesteps(15)
    mine.set_timesteps(15)
    check_add_noise(ref, mine, ref.timesteps[[0, 7]], mine.timesteps[[0, 7]])


@pytest.mark.parametrize("cfg", [dict(), dict(timestep_spacing="leading", steps_offset=1,
                                              prediction_type="v_prediction", beta_schedule="scaled_linear"),
                                 dict(timestep_spacing="trailing", rescale_betas_zero_snr=True,
                                      prediction_type="v_prediction")])
def test_euler_ancestral_matches_diffusers(cfg, monkeypatch):
    ref, mine = diffusers.EulerAncestralDiscreteScheduler(**cfg), ours.EulerAncestralDiscreteScheduler(**cfg)
    check_tables(mine, ref, ["betas", "alphas_cumprod", "sigmas"])
    run_pair(ref, mine, 15, scaled=True, noise=PatchedNoise(monkeypatch, "scheduling_euler_ancestral_discrete"))


@pytest.mark.parametrize("cfg", [dict(), dict(use_karras_sigmas=True), dict(prediction_type="v_prediction",
                                 timestep_spacing="leading", steps_offset=1), dict(clip_sample=True,
                                 prediction_type="sample", timestep_spacing="trailing")])
def test_heun_matches_diffusers(cfg):
    ref, mine = diffusers.HeunDiscreteScheduler(**cfg), ours.HeunDiscreteScheduler(**cfg)
    check_tables(mine, ref, ["betas", "alphas_cumprod", "sigmas", "timesteps"])
    run_pair(ref, mine, 12, scaled=True)


DPM_CONFIGS = [
    (dict(), 20),
    (dict(solver_order=3), 20),
    (dict(solver_order=3), 10),
    (dict(solver_order=1, prediction_type="v_prediction"), 12),
    (dict(algorithm_type="dpmsolver", final_sigmas_type="sigma_min", solver_order=3), 20),
    (dict(algorithm_type="dpmsolver", final_sigmas_type="sigma_min", solver_type="heun"), 10),
    (dict(solver_type="heun", use_karras_sigmas=True, beta_schedule="scaled_linear"), 20),
    (dict(use_lu_lambdas=True, lower_order_final=False, timestep_spacing="trailing"), 12),
    (dict(thresholding=True, prediction_type="sample", timestep_spacing="leading", steps_offset=1), 15),
    (dict(lambda_min_clipped=-5.1, beta_schedule="squaredcos_cap_v2", euler_at_final=True), 16),
    (dict(rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing"), 20),
]


@pytest.mark.parametrize("cfg,steps", DPM_CONFIGS)
def test_dpmsolver_matches_diffusers(cfg, steps):
    ref, mine = diffusers.DPMSolverMultistepScheduler(**cfg), ours.DPMSolverMultistepScheduler(**cfg)
    check_tables(mine, ref, ["betas", "alphas_cumprod", "lambda_t"])
    run_pair(ref, mine, steps)
    ref.set_timesteps(steps)
    mine.set_timesteps(steps)
    check_add_noise(ref, mine, ref.timesteps[[0, 3]], mine.timesteps[[0, 3]])


@pytest.mark.parametrize("order,solver_type", [(1, "midpoint"), (2, "midpoint"), (2, "heun"), (3, "midpoint")])
def test_sde_dpmsolver_pp_matches_diffusers(order, solver_type):
    cfg = dict(algorithm_type="sde-dpmsolver++", solver_order=order, solver_type=solver_type)
    ref, mine = diffusers.DPMSolverMultistepScheduler(**cfg), ours.DPMSolverMultistepScheduler(**cfg)
    rng = np.random.default_rng(0)
    ref.set_timesteps(20)
    mine.set_timesteps(20)
    x = rng.standard_normal(SHAPE).astype(np.float32)
    x_ref, x_mine = torch.from_numpy(x), x
    for i, t in enumerate(ref.timesteps):
        z = rng.standard_normal(SHAPE).astype(np.float32)
        o_ref = ref.step(torch.from_numpy(fake_model(x_ref.numpy(), t)), t, x_ref, variance_noise=torch.from_numpy(z))
        o_mine = mine.step(fake_model(x_mine, mine.timesteps[i]), mine.timesteps[i], x_mine, variance_noise=z)
        close(o_mine.prev_sample, o_ref.prev_sample, f"sde-dpm++ step {i}")
        x_ref = o_ref.prev_sample  # lockstep (module docstring)
        x_mine = x_ref.numpy().copy()


def test_score_sde_ve_matches_diffusers(monkeypatch):
    cfg = dict(num_train_timesteps=50, sigma_max=50.0, snr=0.16, correct_steps=1)
    ref, mine = diffusers.ScoreSdeVeScheduler(**cfg), ours.ScoreSdeVeScheduler(**cfg)
    noise = PatchedNoise(monkeypatch, "scheduling_sde_ve")
    n = 30
    ref.set_timesteps(n)
    ref.set_sigmas(n)
    mine.set_timesteps(n)
    mine.set_sigmas(n)
    close(mine.timesteps, ref.timesteps, "timesteps")
    close(mine.sigmas, ref.sigmas, "sigmas")
    close(mine.discrete_sigmas, ref.discrete_sigmas, "discrete_sigmas")
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(SHAPE) * 50.0).astype(np.float32)
    x_ref, x_mine = torch.from_numpy(x), x
    for i, t in enumerate(ref.timesteps):
        score = lambda v, s: (-v / (1.0 + s**2)).astype(np.float32)  # noqa: E731
        sig = float(mine.sigmas[i])
        z = noise.draw(rng)
        c_ref = ref.step_correct(torch.from_numpy(score(x_ref.numpy(), sig)), x_ref).prev_sample
        c_mine = mine.step_correct(score(x_mine, sig), x_mine, variance_noise=z).prev_sample
        close(c_mine, c_ref, f"corrector {i}")
        z = noise.draw(rng)
        o_ref = ref.step_pred(torch.from_numpy(score(c_ref.numpy(), sig)), t, c_ref)
        o_mine = mine.step_pred(score(c_mine, sig), mine.timesteps[i], c_mine, variance_noise=z)
        close(o_mine.prev_sample, o_ref.prev_sample, f"predictor {i}")
        close(o_mine.prev_sample_mean, o_ref.prev_sample_mean, f"predictor mean {i}")
        x_ref = o_ref.prev_sample  # lockstep (module docstring)
        x_mine = x_ref.numpy().copy()
    x0 = rng.standard_normal(SHAPE).astype(np.float32)
    eps = rng.standard_normal(SHAPE).astype(np.float32)
    close(mine.add_noise(x0, eps, np.array([3, 17])),
          ref.add_noise(torch.from_numpy(x0), torch.from_numpy(eps), torch.tensor([3, 17])), "add_noise")


@pytest.mark.parametrize("name", sorted(ours.SCHEDULERS))
def test_from_config_round_trips_diffusers_config(name):
    """A diffusers config of another class (plus private keys) builds every scheduler."""
    ref_cfg = dict(diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                           prediction_type="v_prediction").config)
    cls = ours.SCHEDULERS[name]
    mine = cls.from_config(ref_cfg)
    ref = getattr(diffusers, cls.__name__).from_config(ref_cfg)
    for key, value in mine.config.items():
        want = ref.config[key]
        assert value == want or (value is None and want is None), f"{name}.config[{key!r}]: {value!r} != {want!r}"
    close(mine.alphas_cumprod, ref.alphas_cumprod, "alphas_cumprod")
