"""Property tests of the schedulers: DDIM ↔ DDPM, DDIM inversion, reproducibility, option lists."""

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import npdiff.diffusion as D
import npdiff.schedulers as S

DOCS = Path(__file__).resolve().parents[2] / "docs" / "math.md"


@st.composite
def ddim_grids(draw):
    """(T, n) with n dividing T: the grids on which DDIM's previous timestep t − T/n is the next
    timestep of the schedule, so that the DDIM η = 1 step and the DDPM step can be compared at
    every step. ("linspace" spacing is never such a grid: its steps are (T − 1)/(n − 1) apart.)"""
    T = draw(st.sampled_from([1000, 200, 64]))
    n = draw(st.sampled_from([d for d in range(2, min(T, 100) + 1) if T % d == 0]))
    return T, n


@settings(max_examples=20, deadline=None)
@given(st.sampled_from(D.BETA_SCHEDULES), st.sampled_from(["leading", "trailing"]), ddim_grids(), st.integers(0, 1000))
def test_ddim_eta1_is_ddpm_posterior(name, spacing, grid, seed):
    """DDIM with η = 1 has σ_t² = β̃_t and takes exactly the DDPM step (Song et al. 2021a, §4.1)."""
    T, steps = grid
    cfg = dict(num_train_timesteps=T, beta_schedule=name, timestep_spacing=spacing, clip_sample=False)
    ddim, ddpm = S.DDIMScheduler(**cfg), S.DDPMScheduler(**cfg)
    ddim.set_timesteps(steps)
    ddpm.set_timesteps(steps)
    np.testing.assert_array_equal(ddim.timesteps, ddpm.timesteps)
    assert len(ddim.timesteps) == steps
    rng = np.random.default_rng(seed)
    compared = 0
    for t in ddim.timesteps:
        prev = int(t) - T // steps  # DDIM's previous timestep (negative after the last step: ᾱ = 1)
        prev_ddpm = ddpm.previous_timestep(t)
        assert prev == prev_ddpm or (prev < 0 and prev_ddpm < 0), (t, prev, prev_ddpm)
        x, eps, z = rng.standard_normal((3, 2, 3))
        assert ddim._get_variance(t, prev) == pytest.approx(ddpm._variance_terms(t, prev_ddpm)[3], rel=1e-9)
        a = ddim.step(eps, t, x, eta=1.0, variance_noise=z).prev_sample
        b = ddpm.step(eps, t, x, variance_noise=z).prev_sample
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)
        compared += 1
    assert compared == steps


def test_ddim_eta0_is_deterministic():
    s = S.DDIMScheduler(clip_sample=False)
    s.set_timesteps(10)
    x = np.random.default_rng(0).standard_normal((2, 3))
    outs = [s.step(0.5 * x, 500, x, generator=np.random.default_rng(k)).prev_sample for k in range(3)]
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])


@settings(max_examples=20, deadline=None)
@given(st.sampled_from(D.BETA_SCHEDULES), st.sampled_from(["leading", "trailing"]), st.integers(2, 60),
       st.sampled_from(D.PREDICTION_TYPES), st.integers(0, 1000))
def test_ddim_inverse_inverts_each_step(name, spacing, steps, kind, seed):
    """Given the same model output, DDIMInverseScheduler.step undoes DDIMScheduler.step (η = 0)."""
    cfg = dict(beta_schedule=name, timestep_spacing=spacing, clip_sample=False, prediction_type=kind)
    fwd, inv = S.DDIMScheduler(**cfg), S.DDIMInverseScheduler(**cfg)
    fwd.set_timesteps(steps)
    inv.set_timesteps(steps)
    np.testing.assert_array_equal(inv.timesteps, fwd.timesteps[::-1])
    rng = np.random.default_rng(seed)
    for t in fwd.timesteps:
        if kind == "sample" and t - 1000 // steps < 0:
            continue  # from clean data (ᾱ = 1) an x₀-prediction carries no ε to re-noise with
        x, out = rng.standard_normal((2, 4, 3))
        x_prev = fwd.step(out, t, x).prev_sample
        # the inverse sees the output as predicted at t' (for ε this is the same array)
        eps = D.model_output_to_x0_eps(out, x, fwd.alphas_cumprod[t], kind)[1]
        ab_prev = fwd.alphas_cumprod[t - 1000 // steps] if t - 1000 // steps >= 0 else 1.0
        x0 = D.predict_x0_from_eps(x_prev, eps, ab_prev)
        out_prev = {"epsilon": eps, "sample": x0, "v_prediction": D.predict_v(x0, eps, ab_prev)}[kind]
        np.testing.assert_allclose(inv.step(out_prev, t, x_prev).prev_sample, x, rtol=1e-7, atol=1e-7)


def test_ddim_inversion_round_trip_with_exact_model():
    """Sample x_T → x_0 with DDIM η = 0, then invert x_0 → x_T, with the exact ε of a point-mass datum."""
    target = np.array([[0.3, -0.8, 0.5]])
    fwd, inv = S.DDIMScheduler(clip_sample=False), S.DDIMInverseScheduler(clip_sample=False)
    fwd.set_timesteps(40)
    inv.set_timesteps(40)
    eps_fn = lambda x, ab: (x - np.sqrt(ab) * target) / np.sqrt(1 - ab)  # noqa: E731
    x_T = np.random.default_rng(0).standard_normal(target.shape)
    x = x_T
    for t in fwd.timesteps:
        x = fwd.step(eps_fn(x, fwd.alphas_cumprod[t]), t, x).prev_sample
    np.testing.assert_allclose(x, target, atol=1e-8)
    ratio = 1000 // 40
    for t in inv.timesteps:
        ab_from = inv.alphas_cumprod[t - ratio] if t - ratio >= 0 else 1.0
        eps = eps_fn(x, ab_from) if ab_from < 1.0 else eps_fn(x_T, fwd.alphas_cumprod[fwd.timesteps[0]])
        x = inv.step(eps, t, x).prev_sample
    np.testing.assert_allclose(x, x_T, atol=1e-6)


@pytest.mark.parametrize("name", sorted(S.SCHEDULERS))
def test_generator_reproducibility_and_noise_arguments(name):
    cls = S.SCHEDULERS[name]
    runs = []
    for _ in range(2):
        s = cls()
        s.set_timesteps(6)
        rng = np.random.default_rng(7)
        x = rng.standard_normal((2, 3, 2, 2)) * s.init_noise_sigma
        for t in s.timesteps:
            inp = s.scale_model_input(x, t)
            kw = {"generator": rng} if "generator" in s.step.__code__.co_varnames else {}
            x = s.step(0.1 * inp, t, x, **kw).prev_sample
        runs.append(x)
    np.testing.assert_array_equal(runs[0], runs[1])
    s = cls()
    s.set_timesteps(6)
    t = s.timesteps[0]
    x = np.zeros((2, 3, 2, 2), np.float32)
    s.scale_model_input(x, t)
    with pytest.raises(ValueError, match="shape"):
        s.step(np.zeros((2, 5)), t, x)


def test_variance_noise_is_used_and_conflicts_with_generator():
    s = S.DDPMScheduler(clip_sample=False)
    s.set_timesteps(10)
    x = np.zeros((1, 1, 2, 2))
    z = np.ones_like(x)
    out = s.step(np.zeros_like(x), 900, x, variance_noise=z).prev_sample
    np.testing.assert_allclose(out, s._variance_terms(900, 800)[3] ** 0.5)
    with pytest.raises(ValueError, match="either generator or variance_noise"):
        s.step(np.zeros_like(x), 900, x, variance_noise=z, generator=np.random.default_rng(0))


# 6. documented option lists equal the implemented ones ------------------------------------------

OPTION_LISTS = {
    "beta_schedule": D.BETA_SCHEDULES,
    "prediction_type": D.PREDICTION_TYPES,
    "timestep_spacing": S.TIMESTEP_SPACINGS,
    "variance_type": D.VARIANCE_TYPES,
}


def documented(text, option):
    """The backticked values on the line documenting ``option`` (``- option: one of `a`, `b` …``)."""
    line = next(ln for ln in text.splitlines() if re.match(rf"\s*- `?{option}`?:", ln))
    return tuple(re.findall(r"`([^`]+)`", line.split(":", 1)[1].split(";")[0]))


def test_docs_option_lists_equal_implemented():
    text = DOCS.read_text()
    for option, values in OPTION_LISTS.items():
        assert documented(text, option) == values, option
    assert documented(text, "algorithm_type") == S.dpmsolver.ALGORITHM_TYPES


CLASSES = [S.DDPMScheduler, S.DDIMScheduler, S.EulerDiscreteScheduler, S.EulerAncestralDiscreteScheduler,
           S.HeunDiscreteScheduler, S.DPMSolverMultistepScheduler]


@pytest.mark.parametrize("cls", CLASSES)
def test_class_docstring_options_are_accepted_and_others_rejected(cls):
    for option, values in OPTION_LISTS.items():
        if f"- {option}:" not in cls.__doc__:
            continue
        assert documented(cls.__doc__, option) == values, (cls.__name__, option)
        for v in values:
            s = cls(**{option: v})
            if option == "timestep_spacing":
                s.set_timesteps(7)
                assert len(s.timesteps) == (7 if cls is not S.HeunDiscreteScheduler else 13)
        with pytest.raises(ValueError, match=option):
            cls(**{option: "no_such_value"})


def test_from_config_ignores_foreign_keys_and_warns_on_unknown():
    cfg = dict(num_train_timesteps=500, beta_schedule="scaled_linear", prediction_type="v_prediction",
               use_karras_sigmas=True, solver_order=3, _class_name="DDIMScheduler", _diffusers_version="0.30")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name, cls in S.SCHEDULERS.items():
            s = cls.from_config(cfg)
            assert s.config.num_train_timesteps == 500 and s.config.prediction_type == "v_prediction", name
            assert len(s.alphas_cumprod) == 500
    with pytest.warns(UserWarning, match="not_a_key"):
        S.DDIMScheduler.from_config({"not_a_key": 1})
    with pytest.raises(TypeError):
        S.DDIMScheduler(solver_order=2)  # like diffusers: the constructor is strict, from_config is lenient
    assert S.DDPMScheduler.from_config(S.DDPMScheduler(beta_end=0.03).config).config.beta_end == 0.03


def test_set_timesteps_rejects_bad_counts():
    with pytest.raises(ValueError, match="num_inference_steps"):
        S.DDIMScheduler().set_timesteps(2000)
    with pytest.raises(ValueError, match="descending"):
        S.DDPMScheduler().set_timesteps(timesteps=[10, 20])
    with pytest.raises(ValueError, match="sigma_min"):
        S.DPMSolverMultistepScheduler(algorithm_type="dpmsolver")


@pytest.mark.parametrize("algorithm_type", ["dpmsolver++", "sde-dpmsolver++", "dpmsolver"])
@pytest.mark.parametrize("solver_order", [2, 3])
def test_dpmsolver_steps_over_a_repeated_timestep(algorithm_type, solver_order):
    """1,000 linspace steps repeat t = 500 (rounding of 999·k/1000): the zero-length interval is the
    identity and the multistep differences across it drop to the order the distinct λ's support,
    so the whole loop stays finite (diffusers' own scheduler returns NaN here)."""
    sched = S.DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear",
                                          prediction_type="v_prediction", algorithm_type=algorithm_type,
                                          solver_order=solver_order,
                                          final_sigmas_type="sigma_min" if algorithm_type == "dpmsolver" else "zero")
    sched.set_timesteps(1000)
    ts = np.asarray(sched.timesteps)
    repeated = np.flatnonzero(np.diff(ts) == 0)
    assert repeated.size == 1  # the case this test is about
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 1, 4, 4))
    for i, t in enumerate(ts):
        before = x
        x = sched.step(0.1 * x, t, x, generator=rng).prev_sample
        if i == repeated[0]:  # the step from the first t = 500 to the second: nothing moves
            np.testing.assert_array_equal(x, before)
    assert np.isfinite(x).all()
