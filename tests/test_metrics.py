"""Property tests of the sample-quality metrics in npdiff.metrics."""

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from npdiff import metrics
from npdiff.data import make_toy

# ----------------------------------------------------------------------------
# Fréchet distance
# ----------------------------------------------------------------------------


def _random_spd(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T + (0.0 if rank else 0.1) * np.eye(d)


def _fd_with_scipy_sqrtm(mu1, s1, mu2, s2):
    """The textbook formula with scipy.linalg.sqrtm of the (non-symmetric) product."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2.0 * covmean.real))


@settings(deadline=None, max_examples=25)
@given(d=st.integers(1, 12), seed=st.integers(0, 2**31 - 1))
def test_fd_gaussians_matches_scipy_sqrtm(d, seed):
    rng = np.random.default_rng(seed)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    got = metrics.frechet_distance_gaussians(mu1, s1, mu2, s2)
    assert got == pytest.approx(_fd_with_scipy_sqrtm(mu1, s1, mu2, s2), rel=1e-6, abs=1e-8)
    assert got == pytest.approx(metrics.frechet_distance_gaussians(mu2, s2, mu1, s1), rel=1e-9, abs=1e-10)
    assert metrics.frechet_distance_gaussians(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8 * np.trace(s1))


def test_fd_gaussians_closed_form_for_commuting_covariances():
    # Diagonal Σ commute: d² = ‖Δμ‖² + Σ_i (σ1_i − σ2_i)², with σ the standard deviations.
    var1, var2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mu1, mu2 = np.zeros(3), np.array([1.0, -2.0, 0.5])
    expected = 1 + 4 + 0.25 + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    got = metrics.frechet_distance_gaussians(mu1, np.diag(var1), mu2, np.diag(var2))
    assert got == pytest.approx(expected, rel=1e-12)


def test_fd_of_samples_approaches_the_gaussian_closed_form():
    rng = np.random.default_rng(0)
    shift = np.array([1.0, -0.5, 0.0, 2.0])
    a = rng.standard_normal((20000, 4))
    b = 2.0 * rng.standard_normal((20000, 4)) + shift  # N(shift, 4 I)
    expected = shift @ shift + 4 * (1.0 - 2.0) ** 2
    fd = metrics.frechet_distance(a, b)
    assert fd == pytest.approx(expected, rel=0.03)
    assert metrics.frechet_distance(b, a) == pytest.approx(fd, rel=1e-9)
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    assert metrics.frechet_distance(a, a + 0.1) > 0


def test_fd_handles_singular_covariances_without_complex_values():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((10, 30)), rng.standard_normal((12, 30))  # N < D: rank-deficient Σ
    a[:, 5] = 0.0  # a dead feature, as a ReLU unit can give
    fd = metrics.frechet_distance(a, b)
    assert isinstance(fd, float) and np.isfinite(fd) and fd > 0
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)


def test_fd_bad_shapes():
    with pytest.raises(ValueError, match=r"\(5, 3\) and \(5, 4\)"):
        metrics.frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="same D"):
        metrics.frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))


# ----------------------------------------------------------------------------
# MMD and energy distance
# ----------------------------------------------------------------------------


def test_mmd_biased_is_zero_on_identical_samples_and_grows_with_shift():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 2))
    y = rng.standard_normal((400, 2))
    assert metrics.mmd_rbf(x, x) == pytest.approx(0.0, abs=1e-12)
    values = [metrics.mmd_rbf(x, y + [s, 0.0]) for s in (0.0, 0.5, 1.0, 2.0, 4.0)]
    assert all(v >= 0 for v in values)
    assert values == sorted(values) and values[-1] > 20 * values[0]
    assert metrics.mmd_rbf(y, x) == pytest.approx(values[0], rel=1e-9)


def test_mmd_unbiased_is_centred_and_can_be_negative():
    rng = np.random.default_rng(1)
    vals = [metrics.mmd_rbf(rng.standard_normal((100, 2)), rng.standard_normal((100, 2)), unbiased=True)
            for _ in range(20)]
    assert min(vals) < 0 < max(vals)
    assert abs(np.mean(vals)) < 3 * np.std(vals) / np.sqrt(len(vals)) + 1e-4
    # the biased V-statistic sits above the unbiased one on the same data
    x, y = rng.standard_normal((100, 2)), rng.standard_normal((100, 2))
    assert metrics.mmd_rbf(x, y) > metrics.mmd_rbf(x, y, unbiased=True)


def test_mmd_median_bandwidth_and_bad_bandwidths():
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((200, 2)), rng.standard_normal((200, 2)) + 1.0
    assert metrics.mmd_rbf(x, y, bandwidths="median") > metrics.mmd_rbf(x, x, bandwidths="median")
    # one bandwidth reproduces the direct formula
    k = lambda a, b: np.exp(-np.sum((a[:, None] - b[None]) ** 2, -1) / 2.0)  # noqa: E731 (σ = 1)
    direct = k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()
    assert metrics.mmd_rbf(x, y, bandwidths=(1.0,)) == pytest.approx(direct, rel=1e-9)
    with pytest.raises(ValueError, match="positive"):
        metrics.mmd_rbf(x, y, bandwidths=(0.0,))
    with pytest.raises(ValueError, match="median"):
        metrics.mmd_rbf(x, y, bandwidths="silverman")


def test_energy_distance_matches_scipy_in_1d_and_is_nonnegative():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal(150), rng.standard_normal(90) * 2 + 0.3
    assert metrics.energy_distance(a[:, None], b[:, None]) == pytest.approx(scipy.stats.energy_distance(a, b), rel=1e-9)
    x = rng.standard_normal((300, 2))
    assert metrics.energy_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    dists = [metrics.energy_distance(x, rng.standard_normal((300, 2)) + s) for s in (0.0, 1.0, 3.0)]
    assert all(d >= 0 for d in dists) and dists == sorted(dists)


# ----------------------------------------------------------------------------
# nearest neighbour
# ----------------------------------------------------------------------------


def test_nearest_neighbour_distance():
    train = np.array([[0.0, 0.0], [10.0, 0.0]])
    samples = np.array([[3.0, 4.0], [10.0, 1.0]])
    assert metrics.nearest_neighbour_distance(samples, train) == pytest.approx((5.0 + 1.0) / 2)
    rng = np.random.default_rng(0)
    imgs = rng.standard_normal((50, 1, 4, 4))
    assert metrics.nearest_neighbour_distance(imgs[:7], imgs, chunk=3) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="one shape"):
        metrics.nearest_neighbour_distance(imgs, np.zeros((5, 3)))


# ----------------------------------------------------------------------------
# the floor (mean over seeded subsets) and the FD's sampling spread
# ----------------------------------------------------------------------------


def _gaussian_features(seed, n, d=8, shift=0.0):
    return np.random.default_rng(seed).standard_normal((n, d)) + shift


def test_fd_floor_of_the_whole_reference_is_zero_and_subsets_are_seeded():
    ref = _gaussian_features(0, 300)
    whole = metrics.fd_floor(ref, ref, n=10_000, draws=3)  # n capped at the pool: every draw is ref itself
    # FD of identical sets is zero in exact arithmetic; the draws' permutations only reorder the sums
    assert whole["n"] == 300 and whole["mean"] == pytest.approx(0.0, abs=1e-9 * 8) and whole["sd"] < 1e-9 * 8
    pool = _gaussian_features(1, 600)
    a, b = metrics.fd_floor(pool, ref, 100, draws=5), metrics.fd_floor(pool, ref, 100, draws=5)
    assert a == b  # fixed draws: a property of (pool, ref, n), not of the caller's seed
    assert metrics.fd_floor(pool, ref, 100, draws=5, seed=1)["mean"] != a["mean"]
    assert a["se"] == pytest.approx(a["sd"] / np.sqrt(5), rel=1e-12)
    with pytest.raises(ValueError, match="draws >= 1 and n >= 2"):
        metrics.fd_floor(pool, ref, 100, draws=0)
    with pytest.raises(ValueError, match="one D"):
        metrics.fd_floor(pool, ref[:, :3], 100)


def test_fd_floor_mean_over_draws_shrinks_the_spread_as_its_se_says():
    """The floor from K subsets varies across seeds like sd / √K: the reported se predicts it."""
    ref, pool = _gaussian_features(0, 400), _gaussian_features(1, 2000)
    spread = {}
    for k in (1, 16):
        floors = [metrics.fd_floor(pool, ref, 60, draws=k, seed=s) for s in range(24)]
        spread[k] = np.std([f["mean"] for f in floors], ddof=1)
    one_sd = np.mean([metrics.fd_floor(pool, ref, 60, draws=16, seed=s)["sd"] for s in range(3)])
    # the sd of a mean of 24 seeds' estimates has ~15 % relative error: factor-2 bands hold by a wide margin
    assert 0.5 * one_sd < spread[1] < 2.0 * one_sd
    assert 0.5 * one_sd / 4 < spread[16] < 2.0 * one_sd / 4
    assert spread[16] < 0.5 * spread[1]


def test_fd_bootstrap_sd_estimates_the_spread_between_independent_sets():
    """One set's bootstrap sd against the sd of FD over fresh sets of the same generator:
    close far from the floor, conservative (larger) near it."""
    ref = _gaussian_features(0, 3000)
    for shift, lo, hi in ((0.5, 0.7, 1.5), (0.0, 0.8, 2.5)):
        fresh = [metrics.frechet_distance(_gaussian_features(100 + i, 200, shift=shift), ref) for i in range(60)]
        true_sd = np.std(fresh, ddof=1)
        boot = [metrics.fd_bootstrap_sd(_gaussian_features(500 + i, 200, shift=shift), ref, draws=60, seed=i)
                for i in range(4)]
        assert lo * true_sd < np.mean(boot) < hi * true_sd, (shift, true_sd, boot)
    with pytest.raises(ValueError, match="draws >= 2"):
        metrics.fd_bootstrap_sd(ref[:10], ref, draws=1)


def test_ratio_se_propagates_relative_errors():
    assert metrics.ratio_se(2.0, 0.0, 1.0, 0.0) == 0.0
    assert metrics.ratio_se(3.0, 0.3, 1.5, 0.0) == pytest.approx(0.2, rel=1e-12)  # 10 % of r = 2
    assert metrics.ratio_se(3.0, 0.3, 1.5, 0.15) == pytest.approx(2.0 * np.hypot(0.1, 0.1), rel=1e-12)


# ----------------------------------------------------------------------------
# digits report (trains the fixed classifier once per process, a few seconds)
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clf():
    return metrics.digits_classifier(16)


def test_digits_classifier_is_accurate_and_cached(clf):
    assert clf.test_accuracy > 0.93
    assert metrics.digits_classifier(16) is clf
    assert clf.features(clf.test_images[:5]).shape == (5, metrics.HIDDEN)


def test_digits_report_on_real_and_corrupted_images(clf):
    # real held-out images: the classifier's test accuracy, an FD at the floor
    held_out = metrics.digits_report(clf.test_images, clf.test_labels)
    assert held_out["conditional_accuracy"] == pytest.approx(clf.test_accuracy)
    assert held_out["classifier_test_accuracy"] == clf.test_accuracy
    assert held_out["nn_distance"] == pytest.approx(held_out["nn_distance_test"])
    assert held_out["n_samples"] == len(clf.test_images)
    # real training images: FD near the floor, but copies of the training set (NN distance 0)
    real = metrics.digits_report(clf.train_images[-360:], clf.train_labels[-360:])
    assert 0.5 < real["fd_ratio"] < 2.0 and real["conditional_accuracy"] > 0.97
    # the floor is the mean over fixed subsets (not the caller's seed); the ratio's se includes both sides
    assert real["fd_floor_draws"] == metrics.FLOOR_DRAWS and real["fd_floor_sd"] > 0
    assert real["fd_floor"] == metrics.digits_report(clf.train_images[-360:], seed=5)["fd_floor"]
    assert real["fd_ratio_se"] == pytest.approx(metrics.ratio_se(real["fd"], real["fd_sd"], real["fd_floor"],
                                                                 real["fd_floor_se"]), rel=1e-12)
    assert "Fréchet ratio" in metrics.format_fd_summary(real)
    assert real["nn_distance"] == pytest.approx(0.0, abs=1e-6) and real["nn_distance_test"] > 1.0
    assert metrics.digits_report(clf.train_images[:300])["conditional_accuracy"] is None
    # noise: far from the data in every measure
    rng = np.random.default_rng(0)
    noise = metrics.digits_report(rng.uniform(-1, 1, (300, 1, 16, 16)), rng.integers(0, 10, 300))
    assert noise["fd_ratio"] > 10 and noise["conditional_accuracy"] < 0.3
    assert noise["nn_distance"] > 2 * real["nn_distance_test"]
    # one class only: mode collapse shows up in the FD and the class counts
    threes = clf.train_images[clf.train_labels == 3]
    collapsed = metrics.digits_report(threes, np.full(len(threes), 3))
    assert collapsed["conditional_accuracy"] > 0.95 and collapsed["fd_ratio"] > 10
    assert collapsed["predicted_class_counts"][3] >= 0.95 * len(threes)


def test_conditional_accuracy_bad_input(clf):
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        metrics.conditional_accuracy(clf.test_images[:4], [1, 2])
    with pytest.raises(ValueError, match=r"\(N, 1, S, S\)"):
        metrics.conditional_accuracy(np.zeros((4, 3, 16, 16)), [0, 1, 2, 3])


# ----------------------------------------------------------------------------
# toy report
# ----------------------------------------------------------------------------


def test_toy_report_fresh_data_is_at_the_floor_and_shifted_data_is_not():
    good = metrics.toy_report(make_toy("moons", 1000, 123), "moons", seed=0)
    assert good["n_samples"] == 1000 and good["mmd2_floor"] > 0
    assert good["mmd2_ratio"] < 3.0 and good["energy_ratio"] < 3.0
    bad = metrics.toy_report(make_toy("moons", 1000, 123) + 0.5, "moons", seed=0)
    assert bad["mmd2_ratio"] > 10 and bad["energy_ratio"] > 3
    wrong = metrics.toy_report(make_toy("8gaussians", 1000, 123), "moons", seed=0)
    assert wrong["mmd2_ratio"] > 10
    big = metrics.toy_report(make_toy("moons", 3000, 1), "moons", max_n=500)
    assert big["n_samples"] == 500
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        metrics.toy_report(np.zeros((10, 3)), "moons")
    with pytest.raises(ValueError, match="NaN"):
        metrics.toy_report(np.full((10, 2), np.nan), "moons")
