"""Sample-quality metrics: how close are generated samples to the real data?

Digits (``digits_report``)
    A fixed classifier — scikit-learn's ``MLPClassifier`` with one hidden layer of
    ``HIDDEN`` ReLU units, trained once per process on the real training split with
    ``random_state=0`` — plays the role Inception-v3 plays for FID (Heusel et al.
    2017): its class prediction scores class-conditional samples, and its hidden
    activations are the features for the Fréchet distance. Numbers are only
    comparable with this same classifier; they are not FID values. The classifier
    uses the split of ``load_digits(seed=0)`` (the default), so a generator trained
    on that training split never sees the test images the FD is measured against.
    The Fréchet ratio divides the samples' FD by the *floor*: the expected FD of as
    many real training images, estimated by the mean over ``FLOOR_DRAWS`` seeded
    subsets (``fd_floor``), because one subset's FD varies by ±18 % at n = 500.

Shapes (``shapes_report``)
    Fixed attribute classifiers (``ShapesClassifier``), trained once per process on the
    generator's ground truth of the ``shapes`` training split, read each quadrant of a
    32×32 image: is there an object, which shape, size and colour. A generated image is
    scored against the attributes its caption asked for; the classifiers' own accuracy
    on real test and unseen-combination images is their ceiling.

Reconstructions (``reconstruction_report``, for the VAE)
    PSNR and SSIM (Wang et al. 2004) of reconstructions against their originals, and the
    digits classifier's accuracy on the reconstructions (how much of the class survives).

2-D toys (``toy_report``)
    Squared MMD with an RBF kernel (Gretton et al. 2012) and the energy distance
    (Székely & Rizzo 2013) against fresh samples of the true distribution, next to
    the same quantity between two fresh samples (the floor that finite samples set).

All inputs are numpy arrays: images (N, C, H, W) in [-1, 1], points (N, 2).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .data import load_digits, make_shapes, make_toy

HIDDEN = 64  # width of the digits classifier's hidden layer = feature dimension for the FD


# ----------------------------------------------------------------------------
# Fréchet distance
# ----------------------------------------------------------------------------


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative rounding-error eigenvalues clipped)."""
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance_gaussians(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet (2-Wasserstein²) distance between N(mu1, sigma1) and N(mu2, sigma2).

    Definition (Dowson & Landau 1982; Heusel et al. 2017, eq. 6):
        d² = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^{1/2})
    Computation: (Σ₁Σ₂)^{1/2} is not symmetric, and ``scipy.linalg.sqrtm`` of it can
    return small imaginary parts or fail on singular Σ. Only its trace is needed,
    and Σ₁Σ₂ is similar to the symmetric PSD matrix M = Σ₁^{1/2} Σ₂ Σ₁^{1/2}, so
    Tr (Σ₁Σ₂)^{1/2} = Σ_i sqrt(λ_i(M)), computed with ``eigh`` in real arithmetic.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"expected means (D,) and covariances (D, D) of one D; got {mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}"
        )
    s1, s2 = (s1 + s1.T) / 2.0, (s2 + s2.T) / 2.0  # symmetrise against rounding
    r1 = _sqrt_psd(s1)
    eig = np.linalg.eigvalsh(r1 @ s2 @ r1)
    tr_covmean = np.sum(np.sqrt(np.clip(eig, 0.0, None)))
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean, 0.0))


def frechet_distance(feats_a, feats_b) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets.

    Shapes: feats_a (N_a, D), feats_b (N_b, D), N ≥ 2. Means and (N − 1)-normalised
    covariances are estimated from each set, then ``frechet_distance_gaussians``.
    The estimate is biased upwards for small N; compare values computed with
    similar sample counts.
    """
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise ValueError(f"features must be (N, D) with the same D and N >= 2, got {a.shape} and {b.shape}")
    return frechet_distance_gaussians(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


FLOOR_DRAWS = 50  # seeded real subsets whose mean FD is the floor (its standard error: sd / √50 ≈ 2.5 %)
FLOOR_SEED = 0  # the floor's draws are fixed: a property of (n, classifier, splits), not of the eval's seed
BOOTSTRAP_DRAWS = 100  # resamples of the generated features for the FD's sampling spread


def fd_floor(pool_feats, ref_feats, n: int, draws: int = FLOOR_DRAWS, seed: int = FLOOR_SEED) -> dict:
    """Expected Fréchet distance between ``n`` real items and a reference set: the floor.

    Shapes: pool_feats (M, D) real items the generator may have seen (the train split),
    ref_feats (R, D) the reference set (the test split).
    Definition: floor(n) = E_S[FD(S, ref)] over subsets S of n items of the pool drawn
    without replacement (n is capped at M). An FD from n items is biased upwards by a term
    that shrinks like 1/n, so the floor is taken at the samples' own n; and one subset's FD
    is a noisy draw (digits, n = 500: 0.72–1.37 over 20 subsets), so the floor is the mean
    over ``draws`` subsets, subset k drawn from ``np.random.default_rng([seed, k])``.
    The draws are independent given the pool, so the mean's standard error is sd / √draws.
    Returns {"mean", "sd" (between draws, ddof 1; 0 for one draw), "se", "draws", "n"}.
    """
    pool, ref = np.asarray(pool_feats, np.float64), np.asarray(ref_feats, np.float64)
    if pool.ndim != 2 or ref.ndim != 2 or pool.shape[1] != ref.shape[1]:
        raise ValueError(f"fd_floor: features must be (M, D) and (R, D) with one D, got {pool.shape} and {ref.shape}")
    if int(draws) < 1 or int(n) < 2:
        raise ValueError(f"fd_floor: need draws >= 1 and n >= 2, got draws={draws}, n={n}")
    from threadpoolctl import threadpool_limits

    n = min(int(n), len(pool))
    with threadpool_limits(1):  # 64×64 eigh: threads only add overhead (10× on a busy 2-core machine)
        values = np.array([frechet_distance(pool[np.random.default_rng([seed, k]).permutation(len(pool))[:n]], ref)
                           for k in range(int(draws))])
    sd = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return {"mean": float(values.mean()), "sd": sd, "se": float(sd / np.sqrt(len(values))), "draws": int(draws),
            "n": n}


def fd_bootstrap_sd(feats, ref_feats, draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> float:
    """Sampling spread of FD(feats, ref): the standard deviation of FD(feats*, ref) over
    ``draws`` bootstrap resamples feats* (N rows drawn with replacement; Efron 1979).

    Shapes: feats (N, D) one set of generated items, ref_feats (R, D). It estimates how much
    the FD would move between independent sets of N items from the same generator (another
    sample seed) without drawing them; the reference set is held fixed, as in the ratio.
    Measured against independent sets (tests/test_metrics.py, docs/quality.md) it is about
    right far from the floor and up to ~1.5× too large near it (a resample's duplicated
    rows add spread to the small-sample bias term): a conservative spread.
    """
    from threadpoolctl import threadpool_limits

    a, ref = np.asarray(feats, np.float64), np.asarray(ref_feats, np.float64)
    if int(draws) < 2:
        raise ValueError(f"fd_bootstrap_sd: need draws >= 2, got {draws}")
    rng = np.random.default_rng(seed)
    with threadpool_limits(1):
        values = [frechet_distance(a[rng.integers(0, len(a), len(a))], ref) for _ in range(int(draws))]
    return float(np.std(values, ddof=1))


def ratio_se(num: float, num_sd: float, den: float, den_se: float) -> float:
    """Standard error of num / den from independent errors (first-order propagation):
    se(r) = r · √((sd_num / num)² + (se_den / den)²)."""
    if num <= 0 or den <= 0:
        return float("inf") if den <= 0 else 0.0
    return float(num / den * np.hypot(num_sd / num, den_se / den))


# ----------------------------------------------------------------------------
# digits: the fixed classifier and what it measures
# ----------------------------------------------------------------------------


class DigitsClassifier:
    """The fixed digits classifier: one ReLU hidden layer, trained on the real training split.

    ``predict(images)`` gives class indices, ``features(images)`` the hidden-layer
    activations relu(x W₁ + b₁), shape (N, HIDDEN). ``test_accuracy`` is its
    accuracy on the real test split. Images are (N, 1, size, size) in [-1, 1];
    values outside are clipped first.
    """

    def __init__(self, size: int = 16, seed: int = 0):
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier
        from threadpoolctl import threadpool_limits

        self.size = size
        x, y = load_digits(size, "train", seed=seed)
        xt, yt = load_digits(size, "test", seed=seed)
        self.train_images, self.train_labels = x, y
        self.test_images, self.test_labels = xt, yt
        self.model = MLPClassifier(hidden_layer_sizes=(HIDDEN,), alpha=0.1, max_iter=1000, random_state=0)
        # One BLAS thread: the matrices are tiny, so threads only add overhead (4× slower
        # on a busy 2-core machine), and a single thread makes the fit bit-reproducible.
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model.fit(self._flat(x), y)
        self.test_accuracy = float(np.mean(self.predict(xt) == yt))

    def _flat(self, images) -> np.ndarray:
        x = np.asarray(images, dtype=np.float64)
        if x.ndim == 3:
            x = x[:, None]  # (N, 1, H, W)
        if x.ndim != 4 or x.shape[1:] != (1, self.size, self.size):
            raise ValueError(f"digit images must be (N, 1, {self.size}, {self.size}), got shape {x.shape}")
        return np.clip(x, -1.0, 1.0).reshape(len(x), -1)  # (N, size²)

    def predict(self, images) -> np.ndarray:
        return self.model.predict(self._flat(images)).astype(np.int64)

    def features(self, images) -> np.ndarray:
        w, b = self.model.coefs_[0], self.model.intercepts_[0]
        return np.maximum(self._flat(images) @ w + b, 0.0)  # (N, HIDDEN)


@lru_cache(maxsize=4)
def digits_classifier(size: int = 16) -> DigitsClassifier:
    """The classifier for ``size`` × ``size`` digits, trained on first use and cached in-process."""
    return DigitsClassifier(int(size))


def _image_size(samples) -> int:
    s = np.shape(samples)
    if len(s) != 4 or s[1] != 1 or s[2] != s[3]:
        raise ValueError(f"digit samples must be (N, 1, S, S), got shape {s}")
    return int(s[2])


def conditional_accuracy(samples, labels) -> float:
    """Fraction of ``samples`` (N, 1, S, S) that the fixed classifier assigns to the asked-for ``labels`` (N,)."""
    labels = np.asarray(labels)
    if labels.shape != (len(samples),):
        raise ValueError(f"labels must have shape ({len(samples)},), got {labels.shape}")
    clf = digits_classifier(_image_size(samples))
    return float(np.mean(clf.predict(samples) == labels))


def nearest_neighbour_distance(samples, train, chunk: int = 1024) -> float:
    """Mean over samples of the L2 distance to the closest training item (memorisation check).

    Shapes: samples (N, ...), train (M, ...) with the same item shape; items are
    flattened. A model that copies its training set scores near 0; compare with the
    same number for real held-out images.
    """
    a = np.asarray(samples, np.float64).reshape(len(samples), -1)  # (N, D)
    b = np.asarray(train, np.float64).reshape(len(train), -1)  # (M, D)
    if a.shape[1] != b.shape[1] or len(a) == 0 or len(b) == 0:
        raise ValueError(
            f"samples and train must hold non-empty items of one shape, got {np.shape(samples)} and {np.shape(train)}"
        )
    b2 = np.sum(b * b, axis=1)
    nearest = np.empty(len(a))
    for start in range(0, len(a), chunk):
        x = a[start : start + chunk]
        # ‖x − y‖² = ‖x‖² + ‖y‖² − 2 x·y, clipped at 0 against cancellation
        d2 = np.sum(x * x, axis=1)[:, None] + b2[None, :] - 2.0 * x @ b.T  # (chunk, M)
        nearest[start : start + len(x)] = np.sqrt(np.clip(d2.min(axis=1), 0.0, None))
    return float(nearest.mean())


def digits_report(samples, labels=None, seed: int = 0, floor_draws: int = FLOOR_DRAWS) -> dict:
    """All digits metrics for generated ``samples`` (N, 1, S, S) in [-1, 1].

    Keys:
      classifier_test_accuracy  the fixed classifier on the real test split
      conditional_accuracy      fraction classified as ``labels`` (None without labels)
      predicted_class_counts    how many samples fall in each class (mode coverage)
      fd                        FD(samples, real test split) in classifier features
      fd_sd                     its sampling spread: bootstrap sd over resampled samples
                                (``fd_bootstrap_sd``, resamples drawn from ``seed``)
      fd_floor                  the floor: mean FD(real train images, real test split) over
                                ``floor_draws`` fixed seeded subsets of as many train images as
                                ``samples`` (at most the whole split), so both sides carry the same
                                small-sample bias (``fd_floor``; independent of ``seed``)
      fd_floor_sd, fd_floor_se  the spread of one subset's FD, and the floor's standard error
      fd_floor_draws            how many subsets
      fd_ratio                  fd / fd_floor
      fd_ratio_se               its standard error from fd_sd and fd_floor_se (``ratio_se``)
      nn_distance               mean L2 distance of samples to their nearest train image
      nn_distance_test          the same for real test images (what a non-copying model gets)
      n_samples
    (Figures before the floor was a mean — README and docs say which — used one subset drawn
    with the eval's seed.)
    """
    samples = np.asarray(samples)
    clf = digits_classifier(_image_size(samples))
    test_feats = clf.features(clf.test_images)
    feats = clf.features(samples)
    fd = frechet_distance(feats, test_feats)
    fd_sd = fd_bootstrap_sd(feats, test_feats, seed=seed)
    floor = fd_floor(clf.features(clf.train_images), test_feats, len(samples), draws=floor_draws)
    return {
        "classifier_test_accuracy": clf.test_accuracy,
        "conditional_accuracy": None if labels is None else conditional_accuracy(samples, labels),
        "predicted_class_counts": np.bincount(clf.predict(samples), minlength=10).tolist(),
        "fd": fd,
        "fd_sd": fd_sd,
        "fd_floor": floor["mean"],
        "fd_floor_sd": floor["sd"],
        "fd_floor_se": floor["se"],
        "fd_floor_draws": floor["draws"],
        "fd_ratio": fd / floor["mean"] if floor["mean"] > 0 else float("inf"),
        "fd_ratio_se": ratio_se(fd, fd_sd, floor["mean"], floor["se"]),
        "nn_distance": nearest_neighbour_distance(samples, clf.train_images),
        "nn_distance_test": nearest_neighbour_distance(clf.test_images, clf.train_images),
        "n_samples": int(len(samples)),
    }


def format_fd_summary(report: dict) -> str:
    """Two readable lines of a ``digits_report``: the FD with its spread, the floor (mean ± sd of
    one draw, and the mean's se) and the ratio ± se."""
    r = report
    return (f"Fréchet distance {r['fd']:.3f} ± {r['fd_sd']:.3f} (bootstrap sd, n = {r['n_samples']}); "
            f"floor {r['fd_floor']:.3f} (mean of {r['fd_floor_draws']} real subsets: one subset "
            f"{r['fd_floor']:.2f} ± {r['fd_floor_sd']:.2f} sd; mean ± {r['fd_floor_se']:.3f} se)\n"
            f"Fréchet ratio {r['fd_ratio']:.2f} ± {r['fd_ratio_se']:.2f}")


# ----------------------------------------------------------------------------
# shapes: fixed attribute classifiers and what they measure
# ----------------------------------------------------------------------------

SHAPES_CLASSIFIER_TRAIN_N = 1500  # training images (× 4 quadrants) for the attribute classifiers


def _quadrants(images) -> np.ndarray:
    """(N, 3, 32, 32) in [-1, 1] -> (N, 4, 3, 16, 16) crops in POSITION_NAMES order (clipped)."""
    x = np.clip(np.asarray(images, dtype=np.float64), -1.0, 1.0)
    if x.ndim != 4 or x.shape[1:] != (3, 32, 32):
        raise ValueError(f"shapes images must be (N, 3, 32, 32), got shape {x.shape}")
    q = x.reshape(len(x), 3, 2, 16, 2, 16).transpose(0, 2, 4, 1, 3, 5)  # (N, row, col, 3, 16, 16)
    return q.reshape(len(x), 4, 3, 16, 16)


def _silhouette(crops) -> np.ndarray:
    """Colour-blind features of crops (..., 3, 16, 16): the brightest channel per pixel.
    Every shapes colour has one channel >= 0.75 and backgrounds are dark grey, so this map
    shows an object's outline whatever its colour (the shape and size classifiers never
    see the colour, and so do not fail on unseen colour-shape pairs)."""
    return crops.max(axis=-3).reshape(crops.shape[:-3] + (-1,))  # (..., 256)


class ShapesClassifier:
    """Per-quadrant attribute classifiers for the shapes dataset (scikit-learn MLPs,
    one ReLU hidden layer of ``HIDDEN`` units, ``random_state=0``), trained on the ground
    truth of ``make_shapes(SHAPES_CLASSIFIER_TRAIN_N, "train")``:

      object  (empty, circle, square, triangle)  from the silhouette of a quadrant
      size    (small, large)                     from the silhouette, objects only
      colour  (six colours)                      from the RGB crop, objects only

    ``predict(images)`` -> (N, 4 quadrants, 3) int64: object class (0 = empty, else
    shape index + 1), size and colour indices (−1 in empty quadrants).
    ``test_report`` / ``unseen_report``: ``shapes_report`` of the real test and
    unseen-combination images (the ceiling for generated ones).
    """

    def __init__(self, seed: int = 0):
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier
        from threadpoolctl import threadpool_limits

        d = make_shapes(SHAPES_CLASSIFIER_TRAIN_N, "train", seed)
        crops = _quadrants(d.images)  # (N, 4, 3, 16, 16)
        obj = np.zeros((len(d), 4), dtype=np.int64)  # 0 = empty, else shape + 1
        size = np.full((len(d), 4), -1, dtype=np.int64)
        colour = np.full((len(d), 4), -1, dtype=np.int64)
        for k in range(2):
            a = d.attributes[:, k]  # (N, 4): shape, colour, size, position
            has = a[:, 0] >= 0
            rows, pos = np.flatnonzero(has), a[has, 3]
            obj[rows, pos], colour[rows, pos], size[rows, pos] = a[has, 0] + 1, a[has, 1], a[has, 2]
        crops, obj, size, colour = crops.reshape(-1, 3, 16, 16), obj.ravel(), size.ravel(), colour.ravel()
        full = obj > 0

        def mlp():
            return MLPClassifier(hidden_layer_sizes=(HIDDEN,), alpha=1e-3, max_iter=300, random_state=0)

        self.object_model, self.size_model, self.colour_model = mlp(), mlp(), mlp()
        # one BLAS thread: tiny matrices, reproducible fits (as for the digits classifier)
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("ignore", ConvergenceWarning)
            sil = _silhouette(crops)
            self.object_model.fit(sil, obj)
            self.size_model.fit(sil[full], size[full])
            self.colour_model.fit(crops[full].reshape(int(full.sum()), -1), colour[full])
        test, unseen = make_shapes(None, "test", seed), make_shapes(None, "unseen", seed)
        self.test_report = shapes_report(test.images, test.attributes, classifier=self)
        self.unseen_report = shapes_report(unseen.images, unseen.attributes, classifier=self)

    def predict(self, images) -> np.ndarray:
        crops = _quadrants(images).reshape(-1, 3, 16, 16)  # (N·4, 3, 16, 16)
        out = np.full((len(crops), 3), -1, dtype=np.int64)
        out[:, 0] = self.object_model.predict(_silhouette(crops))
        full = out[:, 0] > 0
        if full.any():
            out[full, 1] = self.size_model.predict(_silhouette(crops[full]))
            out[full, 2] = self.colour_model.predict(crops[full].reshape(int(full.sum()), -1))
        return out.reshape(-1, 4, 3)


@lru_cache(maxsize=2)
def shapes_classifier(seed: int = 0) -> ShapesClassifier:
    """The shapes attribute classifiers, trained on first use and cached in-process."""
    return ShapesClassifier(seed)


def shapes_report(samples, attributes, classifier: ShapesClassifier | None = None) -> dict:
    """How many of the asked-for attributes the images (N, 3, 32, 32) show.

    ``attributes`` (N, 2, 4): what each image's caption asked for (ShapesData's format).
    Per object (at its quadrant): ``shape_accuracy``, ``colour_accuracy``,
    ``size_accuracy``, ``position_accuracy`` (an object is seen in that quadrant at all);
    per image: ``count_accuracy`` (exactly the asked-for quadrants are occupied) and
    ``all_correct`` (every attribute of every object right and nothing else drawn).
    """
    clf = shapes_classifier() if classifier is None else classifier
    attributes = np.asarray(attributes)
    if attributes.shape != (len(samples), 2, 4):
        raise ValueError(f"attributes must have shape ({len(samples)}, 2, 4), got {attributes.shape}")
    pred = clf.predict(samples)  # (N, 4, 3)
    want_occupied = np.zeros((len(samples), 4), dtype=bool)
    per_object = {"shape": [], "colour": [], "size": [], "position": []}
    image_ok = np.ones(len(samples), dtype=bool)
    for k in range(2):
        a = attributes[:, k]
        has = a[:, 0] >= 0
        rows, pos = np.flatnonzero(has), a[has, 3]
        want_occupied[rows, pos] = True
        p = pred[rows, pos]  # (M, 3): object class, size, colour at the object's quadrant
        ok = {"shape": p[:, 0] == a[has, 0] + 1, "size": p[:, 1] == a[has, 2], "colour": p[:, 2] == a[has, 1],
              "position": p[:, 0] > 0}
        for key, v in ok.items():
            per_object[key].append(v)
        image_ok[rows] &= ok["shape"] & ok["size"] & ok["colour"]
    layout_ok = np.all((pred[:, :, 0] > 0) == want_occupied, axis=1)
    report = {f"{key}_accuracy": float(np.mean(np.concatenate(v))) for key, v in per_object.items()}
    report.update(count_accuracy=float(np.mean(layout_ok)), all_correct=float(np.mean(image_ok & layout_ok)),
                  n_samples=int(len(samples)))
    return report


def shapes_features(images, classifier: ShapesClassifier | None = None) -> np.ndarray:
    """Fixed features of shapes images (N, 3, 32, 32) for Fréchet distances: per quadrant, the
    object classifier's hidden ReLU activations of the silhouette and the crop's mean RGB
    (N, 4·(HIDDEN + 3)), so both the drawn shapes and their colours count."""
    clf = shapes_classifier() if classifier is None else classifier
    crops = _quadrants(images)  # (N, 4, 3, 16, 16)
    sil = _silhouette(crops.reshape(-1, 3, 16, 16))  # (N·4, 256)
    w, b = clf.object_model.coefs_[0], clf.object_model.intercepts_[0]
    hidden = np.maximum(sil @ w + b, 0.0)  # (N·4, HIDDEN)
    rgb = crops.reshape(-1, 3, 256).mean(axis=2)  # (N·4, 3)
    return np.concatenate([hidden, rgb], axis=1).reshape(len(crops), -1)


def shapes_fd_ratio(samples, real, floor_images) -> dict:
    """FD(samples, real) in ``shapes_features`` over the floor FD(floor_images, real) of as many
    other real images: 1 means as close to ``real`` as fresh real data is."""
    n = min(len(samples), len(floor_images))
    real_f = shapes_features(real)
    fd = frechet_distance(shapes_features(samples), real_f)
    floor = frechet_distance(shapes_features(floor_images[:n]), real_f)
    return {"fd": fd, "fd_floor": floor, "fd_ratio": fd / floor if floor > 0 else float("inf")}


# ----------------------------------------------------------------------------
# reconstructions: PSNR, SSIM
# ----------------------------------------------------------------------------


def _image_pair(x, y, what: str):
    a, b = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if a.shape != b.shape or a.ndim != 4 or len(a) == 0:
        raise ValueError(f"{what}: images must be two (N, C, H, W) arrays of one shape, got {a.shape} and {b.shape}")
    return a, b


def psnr(x, y, data_range: float = 2.0) -> np.ndarray:
    """Peak signal-to-noise ratio of each image pair, in dB: (N,).

    Definition: PSNR = 10 log₁₀(R² / MSE), MSE the mean over (C, H, W) of (x − y)² and R
    the data range (2 for images in [−1, 1]). Identical images give +inf.
    """
    a, b = _image_pair(x, y, "psnr")
    mse = np.mean((a - b) ** 2, axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(data_range**2 / mse)


def _gaussian_window(size: int, sigma: float) -> np.ndarray:
    g = np.exp(-0.5 * ((np.arange(size) - (size - 1) / 2) / sigma) ** 2)
    g /= g.sum()
    return np.outer(g, g)  # (size, size), sums to 1


def ssim(x, y, data_range: float = 2.0, window: int = 7, sigma: float = 1.5) -> np.ndarray:
    """Structural similarity of each image pair (Wang et al. 2004, eq. 13), averaged over channels
    and window positions: (N,).

    With w a normalised Gaussian window (``window`` × ``window``, std ``sigma``; the paper's is
    11 × 11, 7 suits 16 × 16 images), local statistics μ_x = w∗x, σ_x² = w∗x² − μ_x²,
    σ_xy = w∗(xy) − μ_x μ_y over every fully-inside window position ("valid"), and
    C₁ = (0.01 R)², C₂ = (0.03 R)²:
        SSIM = mean over positions of (2 μ_x μ_y + C₁)(2 σ_xy + C₂) / ((μ_x² + μ_y² + C₁)(σ_x² + σ_y² + C₂))
    """
    a, b = _image_pair(x, y, "ssim")
    if min(a.shape[2:]) < window:
        raise ValueError(f"ssim: images {a.shape[2:]} are smaller than the {window}×{window} window")
    from numpy.lib.stride_tricks import sliding_window_view

    w = _gaussian_window(window, sigma)

    def local_mean(img):  # (N, C, H, W) -> (N, C, H−window+1, W−window+1)
        patches = sliding_window_view(img, (window, window), axis=(2, 3))  # (N, C, H', W', window, window)
        return np.einsum("ncijpq,pq->ncij", patches, w)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = local_mean(a), local_mean(b)
    var_a = local_mean(a * a) - mu_a**2
    var_b = local_mean(b * b) - mu_b**2
    cov = local_mean(a * b) - mu_a * mu_b
    s = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean(axis=(1, 2, 3))


def reconstruction_report(originals, reconstructions, labels=None) -> dict:
    """PSNR / SSIM (means over images, reconstructions clipped to [−1, 1]) and, for
    (N, 1, S, S) digits with ``labels``, the fixed classifier's accuracy on the
    reconstructions next to its accuracy on the originals. Keys: psnr, ssim,
    recon_accuracy, original_accuracy (None without labels), n_images."""
    a = np.asarray(originals)
    r = np.clip(np.asarray(reconstructions), -1.0, 1.0)
    report = {"psnr": float(np.mean(psnr(a, r))), "ssim": float(np.mean(ssim(a, r))),
              "recon_accuracy": None, "original_accuracy": None, "n_images": int(len(a))}
    if labels is not None:
        report["recon_accuracy"] = conditional_accuracy(r, labels)
        report["original_accuracy"] = conditional_accuracy(a, labels)
    return report


# ----------------------------------------------------------------------------
# 2-D toys: kernel two-sample statistics
# ----------------------------------------------------------------------------


def _pairwise_sq_dists(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    d2 = np.sum(x * x, 1)[:, None] + np.sum(y * y, 1)[None, :] - 2.0 * x @ y.T  # (N, M)
    return np.clip(d2, 0.0, None)


def _check_pair(x, y, what: str):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or len(x) < 2 or len(y) < 2:
        raise ValueError(f"{what}: x and y must be (N, D) and (M, D) with N, M >= 2, got {x.shape} and {y.shape}")
    return x, y


DEFAULT_BANDWIDTHS = (0.1, 0.2, 0.5, 1.0, 2.0)


def mmd_rbf(x, y, bandwidths=DEFAULT_BANDWIDTHS, unbiased: bool = False) -> float:
    """Squared maximum mean discrepancy with a mixture of RBF kernels.

    Shapes: x (N, D), y (M, D). Kernel k(a, b) = mean_σ exp(−‖a − b‖² / (2σ²)) over
    ``bandwidths`` (the defaults suit data of unit std), or ``bandwidths="median"``
    for one σ = the median pairwise distance of the pooled sample.
    Definition (Gretton et al. 2012, eq. 5 biased / eq. 3 unbiased):
        MMD² = E k(x, x') + E k(y, y') − 2 E k(x, y)
    Default ``unbiased=False``: the V-statistic, averaging over all pairs including
    i = j. It is ≥ 0 and exactly 0 when x and y are the same sample, but is biased
    upwards by O(1/N). ``unbiased=True`` drops the i = j terms (U-statistic): zero
    mean under x ~ y, but it can be negative. Memory is O((N + M)²) floats: keep
    N, M to a few thousand.
    """
    x, y = _check_pair(x, y, "mmd_rbf")
    dxx, dyy, dxy = _pairwise_sq_dists(x, x), _pairwise_sq_dists(y, y), _pairwise_sq_dists(x, y)
    if isinstance(bandwidths, str):
        if bandwidths != "median":
            raise ValueError(f"bandwidths must be a sequence of positive floats or 'median', got {bandwidths!r}")
        pooled = np.concatenate([x, y])
        if len(pooled) > 1000:  # the median of a seeded 1000-point subset is plenty, at 1/N² the memory
            pooled = pooled[np.random.default_rng(0).permutation(len(pooled))[:1000]]
        d = np.sqrt(_pairwise_sq_dists(pooled, pooled))
        bandwidths = (float(np.median(d[np.triu_indices(len(pooled), 1)])),)
    bandwidths = tuple(float(s) for s in np.atleast_1d(bandwidths))
    if not bandwidths or min(bandwidths) <= 0:
        raise ValueError(f"bandwidths must be positive, got {bandwidths}")

    def k(d2):
        return sum(np.exp(-d2 / (2.0 * s * s)) for s in bandwidths) / len(bandwidths)

    kxx, kyy, kxy = k(dxx), k(dyy), k(dxy)
    n, m = len(x), len(y)
    if unbiased:
        # k(a, a) = 1 on the diagonal; drop it from the within-sample means
        exx = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
        eyy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    else:
        exx, eyy = kxx.mean(), kyy.mean()
    return float(exx + eyy - 2.0 * kxy.mean())


def energy_distance(x, y) -> float:
    """Energy distance between two samples (Székely & Rizzo 2013).

    Shapes: x (N, D), y (M, D).
    Definition: sqrt(2 E‖X − Y‖ − E‖X − X'‖ − E‖Y − Y'‖) with all expectations as
    V-statistics (all pairs, i = j included), which makes the quantity under the
    root ≥ 0; for D = 1 this equals ``scipy.stats.energy_distance``.
    """
    x, y = _check_pair(x, y, "energy_distance")
    exy = np.sqrt(_pairwise_sq_dists(x, y)).mean()
    exx = np.sqrt(_pairwise_sq_dists(x, x)).mean()
    eyy = np.sqrt(_pairwise_sq_dists(y, y)).mean()
    return float(np.sqrt(max(2.0 * exy - exx - eyy, 0.0)))


def toy_report(samples, name: str, seed: int = 0, max_n: int = 2000) -> dict:
    """MMD² and energy distance of (N, 2) ``samples`` from toy ``name`` versus fresh data.

    The reference and the floor are fresh samples of the same size as ``samples``
    (capped at ``max_n``; larger inputs are subsampled with ``seed``), drawn from two
    independent streams of ``seed``. Keys: mmd2, mmd2_floor (between the two fresh
    samples), mmd2_ratio, energy, energy_floor, energy_ratio, n_samples.
    """
    pts = np.asarray(samples, np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"toy samples must have shape (N, 2), got {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise ValueError("toy samples contain NaN or Inf")
    if len(pts) > max_n:
        pts = pts[np.random.default_rng([seed, 0]).permutation(len(pts))[:max_n]]
    n = len(pts)
    ref = make_toy(name, n, np.random.default_rng([seed, 1]))
    other = make_toy(name, n, np.random.default_rng([seed, 2]))
    mmd2, mmd2_floor = mmd_rbf(pts, ref), mmd_rbf(other, ref)
    energy, energy_floor = energy_distance(pts, ref), energy_distance(other, ref)
    return {
        "mmd2": mmd2,
        "mmd2_floor": mmd2_floor,
        "mmd2_ratio": mmd2 / mmd2_floor if mmd2_floor > 0 else float("inf"),
        "energy": energy,
        "energy_floor": energy_floor,
        "energy_ratio": energy / energy_floor if energy_floor > 0 else float("inf"),
        "n_samples": n,
    }
