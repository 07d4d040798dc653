"""What the issue's ControlNet and LoRA targets measure, on the ``shapes`` data.

ControlNet (``controlnet_report``), on held-out conditions (the test split):
    iou        mean over images of |F ∩ M| / |F ∪ M|, F = the generated image's foreground
               (brightest channel > ½ in [0, 1]: every shapes colour has a channel ≥ 0.75, the
               backgrounds are dark grey), M = the condition's object mask; with the ControlNet
               and, from the same initial latents, without it (the base alone: the baseline)
    colour     the shapes attribute classifiers' colour accuracy at each asked-for object

LoRA (``lora_report``):
    concept    fraction of the concept's objects that a classifier fitted on the generator's
               ground truth (train split + concept set) calls the concept, at the asked-for
               quadrant: a colour concept by nearest centroid of the object's mean colour
               (``ColourCentroids``), a shape concept by an MLP on the quadrant's silhouette
               with the concept as a fifth object class (``ConceptShapeClassifier``)
    old        the shapes classifiers' all-attribute accuracy on old (test) prompts, without
               and with the LoRA (same latents), and the drop in points with its paired
               standard error std(before_i − after_i) / √n
    ceiling    the same concept classifier on the locked VAE's round trip decode(encode(x)) of
               the concept's ground-truth test images: the most any U-Net / text-encoder
               adapter can reach (a VAE trained on six colours may have no latent for a seventh)
    scale      the LoRA scale s of y = W x + s (α/r) B A x for all three (1: as trained)
    file_ratio size of the LoRA file / size of the U-Net's weights (float32)
    merged     max |merged − unmerged| / max |unmerged| of the U-Net's prediction
"""

from __future__ import annotations

import os

import numpy as np

from ..autograd import no_grad
from ..conditions import (CONCEPT_INDEX, CONCEPT_SHAPE_INDEX, concept_kind, control_condition, control_mask,
                          make_concept_shapes)
from ..data import make_shapes
from ..metrics import _quadrants, _silhouette, shapes_report


def foreground(images: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) images in [−1, 1] → (N, H, W) bool: brightest channel above ½ of [0, 1]."""
    return np.asarray(images).max(axis=1) > 0.0


def mask_iou(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-image intersection over union of two (N, H, W) bool masks (1 where both are empty)."""
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    inter = (pred & target).sum(axis=(1, 2))
    union = (pred | target).sum(axis=(1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def _draw(pipe, captions, n_batch, seed, steps, guidance, **kw) -> np.ndarray:
    """(N, 3, H, W) in [−1, 1], batch by batch, initial latents from ``seed`` (the same for any pipe)."""
    rng = np.random.default_rng(seed)
    f = pipe.vae_scale_factor
    size = pipe.unet.config.sample_size
    out = []
    for start in range(0, len(captions), n_batch):
        part = captions[start:start + n_batch]
        latents = rng.standard_normal((len(part), pipe.unet.config.in_channels, size, size)).astype(np.float32)
        extra = {k: v[start:start + n_batch] if isinstance(v, np.ndarray) else v for k, v in kw.items()}
        images = pipe(part, latents=latents, num_inference_steps=steps, guidance_scale=guidance,
                      generator=seed, output_type="np", height=size * f, width=size * f, **extra).images
        out.append(images.transpose(0, 3, 1, 2) * 2.0 - 1.0)
    return np.concatenate(out)


def controlnet_report(base, controlnet, control: str = "mask", n: int = 100, seed: int = 0, steps: int = 20,
                      guidance: float = 3.0, batch: int = 25, conditioning_scale: float = 1.0) -> dict:
    """IoU with and without the ControlNet, and colour accuracy (module docstring); the ControlNet's
    residuals are multiplied by ``conditioning_scale`` (diffusers' ``controlnet_conditioning_scale``)."""
    from ..pipelines import StableDiffusionControlNetPipeline

    test = make_shapes(n, "test", seed)
    cond = control_condition(control, test)
    target = control_mask(test.masks)[:, 0] > 0
    pipe = StableDiffusionControlNetPipeline(base.vae, base.text_encoder, base.tokenizer, base.unet, controlnet.eval(),
                                             base.scheduler)
    with_cn = _draw(pipe, test.captions, batch, seed, steps, guidance, image=cond,
                    controlnet_conditioning_scale=conditioning_scale)
    without = _draw(base, test.captions, batch, seed, steps, guidance)
    return {"control": control, "n_conditions": n,
            "iou_controlnet": float(mask_iou(foreground(with_cn), target).mean()),
            "iou_baseline": float(mask_iou(foreground(without), target).mean()),
            "colour_accuracy_controlnet": shapes_report(with_cn, test.attributes)["colour_accuracy"],
            "colour_accuracy_baseline": shapes_report(without, test.attributes)["colour_accuracy"],
            "controlnet_conditioning_scale": conditioning_scale, "steps": steps, "guidance_scale": guidance,
            "seed": seed}


def object_colours(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(N, K, 3) mean RGB in [−1, 1] of each object's mask pixels (NaN for an absent object)."""
    x = np.asarray(images, np.float64)
    out = np.full((len(x), masks.shape[1], 3), np.nan)
    for k in range(masks.shape[1]):
        m = masks[:, k]  # (N, H, W)
        count = m.sum(axis=(1, 2))
        total = np.einsum("nchw,nhw->nc", x, m.astype(np.float64))  # (N, 3)
        ok = count > 0
        out[ok, k] = total[ok] / count[ok, None]
    return out


class ColourCentroids:
    """Nearest-centroid colour classifier fitted on the generator's ground truth: the mean object
    colour of each colour name (six shapes colours + the concept at ``CONCEPT_INDEX``)."""

    def __init__(self, concept: str = "pink", replaces: str | None = None, seed: int = 0, n: int = 600):
        real = make_shapes(n, "train", seed + 1)
        new = make_concept_shapes(n // 3, "train", seed + 1, concept, replaces)
        colours = np.concatenate([object_colours(real.images, real.masks), object_colours(new.images, new.masks)])
        labels = np.concatenate([real.attributes[:, :, 1], new.attributes[:, :, 1]])
        keep = labels >= 0
        colours, labels = colours[keep], labels[keep]
        self.centroids = np.stack([colours[labels == c].mean(axis=0) for c in range(CONCEPT_INDEX + 1)])  # (7, 3)

    def predict(self, colours: np.ndarray) -> np.ndarray:
        """(..., 3) mean colours → (...) colour indices (−1 where NaN)."""
        d = ((colours[..., None, :] - self.centroids) ** 2).sum(axis=-1)  # (..., 7)
        return np.where(np.isnan(d).any(axis=-1), -1, np.nanargmin(np.nan_to_num(d, nan=np.inf), axis=-1))

    def concept_accuracy(self, images: np.ndarray, attributes: np.ndarray, masks: np.ndarray | None = None) -> float:
        """Fraction of the concept objects of ``attributes`` (N, 2, 4) whose mean colour in ``images``
        is nearest the concept's centroid; the object's pixels are ``masks`` (N, 2, H, W) or, for
        generated images, the foreground of its quadrant."""
        masks = _quadrant_masks(attributes, images) if masks is None else masks
        predicted = self.predict(object_colours(images, masks))  # (N, 2)
        asked = np.asarray(attributes)[:, :, 1]
        return float(np.mean(predicted[asked == CONCEPT_INDEX] == CONCEPT_INDEX))


def _quadrant_labels(attributes: np.ndarray) -> np.ndarray:
    """(N, 2, 4) attribute rows → (N, 4) object class per quadrant: 0 empty, else shape index + 1."""
    a = np.asarray(attributes)
    out = np.zeros((len(a), 4), np.int64)
    for k in range(2):
        has = a[:, k, 0] >= 0
        out[np.flatnonzero(has), a[has, k, 3]] = a[has, k, 0] + 1
    return out


class ConceptShapeClassifier:
    """Object classifier with the concept shape as a fifth class (empty, circle, square, triangle,
    concept), fitted on the generator's ground truth: the quadrants of ``n`` shapes images and of
    ``n // 3`` concept images (seed + 1: never the evaluated ones). Input, model and fit as the
    shapes classifiers' object model (metrics.ShapesClassifier): a scikit-learn MLP, one ReLU
    hidden layer, on the colour-blind silhouette (brightest channel) of each 16×16 quadrant."""

    def __init__(self, concept: str = "ring", replaces: str | None = None, seed: int = 0, n: int = 600):
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier
        from threadpoolctl import threadpool_limits

        from ..metrics import HIDDEN

        real = make_shapes(n, "train", seed + 1)
        new = make_concept_shapes(max(n // 3, 1), "train", seed + 1, concept, replaces)
        images = np.concatenate([real.images, new.images])
        labels = np.concatenate([_quadrant_labels(real.attributes), _quadrant_labels(new.attributes)]).ravel()
        self.model = MLPClassifier(hidden_layer_sizes=(HIDDEN,), alpha=1e-3, max_iter=300, random_state=0)
        with warnings.catch_warnings(), threadpool_limits(1):  # one BLAS thread: reproducible fits
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model.fit(_silhouette(_quadrants(images).reshape(-1, 3, 16, 16)), labels)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """(N, 3, 32, 32) images → (N, 4) object class per quadrant (``CONCEPT_SHAPE_INDEX + 1``: the concept)."""
        sil = _silhouette(_quadrants(images).reshape(-1, 3, 16, 16))  # (N·4, 256)
        return self.model.predict(sil).reshape(-1, 4)

    def concept_accuracy(self, images: np.ndarray, attributes: np.ndarray, masks: np.ndarray | None = None) -> float:
        """Fraction of the concept objects of ``attributes`` (N, 2, 4) whose quadrant is classified as
        the concept (``masks`` is unused: the quadrant is the object's place)."""
        a = np.asarray(attributes)
        predicted = self.predict(images)
        hits = [predicted[i, a[i, k, 3]] == CONCEPT_SHAPE_INDEX + 1
                for i, k in zip(*np.nonzero(a[:, :, 0] == CONCEPT_SHAPE_INDEX))]
        return float(np.mean(hits))


def concept_classifier(concept: str, replaces: str | None = None, seed: int = 0, n: int = 600):
    """The concept's ground-truth classifier: ``ColourCentroids`` or ``ConceptShapeClassifier``."""
    cls = ColourCentroids if concept_kind(concept) == "colour" else ConceptShapeClassifier
    return cls(concept, replaces, seed, n)


def _quadrant_masks(attributes: np.ndarray, images: np.ndarray) -> np.ndarray:
    """(N, 2, 32, 32): each asked-for object's quadrant ∧ the image's foreground (where it was drawn)."""
    fg = foreground(images)
    masks = np.zeros((len(images), 2, 32, 32), bool)
    for k in range(2):
        for i, (shape, _, _, position) in enumerate(attributes[:, k]):
            if shape < 0:
                continue
            r, c = divmod(int(position), 2)
            masks[i, k, 16 * r:16 * r + 16, 16 * c:16 * c + 16] = fg[i, 16 * r:16 * r + 16, 16 * c:16 * c + 16]
    return masks


def vae_concept_ceiling(vae, data, classifier, batch: int = 50) -> float:
    """Fraction of ``data``'s concept objects still called the concept by ``classifier``
    (``concept_classifier``) after the VAE's round trip decode(mode(encode(x))) of the
    ground-truth images (module docstring)."""
    from .vae_trainer import reconstruct

    return classifier.concept_accuracy(reconstruct(vae, data.images, batch, kl=False)[0], data.attributes, data.masks)


def lora_report(base, lora_file: str, n: int = 100, seed: int = 0, steps: int = 20, guidance: float = 3.0,
                batch: int = 25, concept: str = "ring", replaces: str | None = None, scale: float = 1.0,
                classifier=None) -> dict:
    """Concept accuracy, the old prompts' accuracy without / with the LoRA, file ratio, merged vs
    unmerged agreement (module docstring). ``base``'s models get the adapters (then merged).
    ``classifier``: the concept classifier (default ``concept_classifier(concept, replaces, seed)``,
    fitted here on 600 + 200 ground-truth images)."""
    from ..models.lora import load_lora_weights, merge_lora, set_lora_scale

    old = make_shapes(n, "test", seed)
    before = _all_correct(_draw(base, old.captions, batch, seed, steps, guidance), old.attributes)
    has_text = _file_has_text_encoder(lora_file)
    load_lora_weights(lora_file, unet=base.unet, text_encoder=base.text_encoder if has_text else None)
    for model in (base.unet, base.text_encoder) if has_text else (base.unet,):
        set_lora_scale(model, scale)
    after = _all_correct(_draw(base, old.captions, batch, seed, steps, guidance), old.attributes)
    change = before.astype(np.float64) - after  # (n,) paired: the same prompt and latents
    test = make_concept_shapes(n, "test", seed, concept, replaces)
    drawn = _draw(base, test.captions, batch, seed, steps, guidance)
    classifier = classifier or concept_classifier(concept, replaces, seed)
    concept_acc = classifier.concept_accuracy(drawn, test.attributes)
    ceiling = vae_concept_ceiling(base.vae, test, classifier)
    # merged vs unmerged: the U-Net's prediction on fixed inputs
    rng = np.random.default_rng(seed)
    cfg = base.unet.config
    x = rng.standard_normal((2, cfg.in_channels, cfg.sample_size, cfg.sample_size)).astype(np.float32)
    ids = base.tokenizer(test.captions[:2], padding="max_length", max_length=base.tokenizer.model_max_length,
                         truncation=True, return_tensors="np")["input_ids"]
    with no_grad():
        text = base.text_encoder(ids).last_hidden_state
        unmerged = base.unet(x, np.array([100, 700]), text).numpy()
        merge_lora(base.unet)
        merged = base.unet(x, np.array([100, 700]), text).numpy()
    unet_bytes = sum(v.nbytes for v in base.unet.state_dict().values())
    return {"concept": concept, "n_prompts": n, "concept_accuracy": concept_acc,
            "concept_accuracy_vae_ceiling": ceiling, "old_all_correct_base": float(before.mean()),
            "old_all_correct_lora": float(after.mean()), "old_accuracy_drop_points": 100.0 * float(change.mean()),
            "old_accuracy_drop_se_points": 100.0 * float(change.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
            "lora_file_bytes": os.path.getsize(lora_file), "unet_bytes": int(unet_bytes),
            "file_ratio": os.path.getsize(lora_file) / unet_bytes,
            "merged_vs_unmerged": float(np.abs(merged - unmerged).max() / np.abs(unmerged).max()),
            "lora_scale": scale, "steps": steps, "guidance_scale": guidance, "seed": seed}


def _all_correct(images: np.ndarray, attributes: np.ndarray) -> np.ndarray:
    """(N,) bool: each image's ``all_correct`` under the shapes classifiers (``shapes_report``)."""
    return np.array([shapes_report(images[i:i + 1], attributes[i:i + 1])["all_correct"] == 1.0
                     for i in range(len(images))])


def _file_has_text_encoder(path: str) -> bool:
    from ..models.lora import read_lora_file

    tensors, _ = read_lora_file(path)
    return any(k.startswith("text_encoder.") for k in tensors)
