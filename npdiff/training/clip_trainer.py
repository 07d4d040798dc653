"""CLIP pre-training on captioned data, on the shared loop (Radford et al. 2021, with hard negatives).

One training step:

    1. images x, item indices i ← next batch                    (seeded, resumable DataLoader)
    2. captions c_i = caption of item i;  hard negatives c⁻_i = c_i with the shape of one
       object changed, c⁼_i = c_i with ONE attribute (shape, colour, size or position) of one
       object changed (the trainer's generator), never naming a colour–shape pair that the
       training captions do not contain
    3. v = normalise(W_v · image_encoder(x)),  t = normalise(W_t · text_encoder(c)),
       t⁻, t⁼ the same for c⁻, c⁼                                (N, E) each
    4. L = ½ [CE(S_img, diag) + CE(S_txtᵀ, diag)],  S_img = e^s V [T; T⁻; T⁼]ᵀ (N, 3N),
       S_txt = e^s V Tᵀ (N, N)                                   (``contrastive_loss``)
    5.-6. NaN/Inf stop, backward, clip, AdamW, LR schedule, EMA   (``BaseTrainer._optimise``)

Why the hard negatives: with in-batch negatives only, a random batch of 128 captions is
already told apart by colour, size and position, so the loss barely rewards seeing the
shape; a scratch run without them stalled at 72–76 % zero-shot shape accuracy while the
other attributes reached 100 %. A negative that differs from the true caption in exactly
one attribute (NegCLIP, Yuksekgonul et al. 2023) makes every attribute, and its binding to
the right object, necessary. Zero-shot classification is scored the same way: for each
object and attribute, which of the captions that differ only in that attribute has the
largest cosine similarity with the image (``zero_shot_report``).

The run folder holds, besides the shared files, ``clip/`` (the EMA CLIPModel),
``text_encoder/`` (its text half as a transformers ``CLIPTextModel`` folder) and
``tokenizer/`` (our BPE vocabulary of the captions, CLIP's vocab.json + merges.txt format):
what latent diffusion (``latent_trainer.py``) and ``StableDiffusionPipeline`` load.
"""

from __future__ import annotations

import os

import numpy as np

from .. import backend
from .. import io as nd_io
from ..autograd import no_grad
from ..data import COLOUR_NAMES, POSITION_NAMES, SHAPE_NAMES, SIZE_NAMES, Dataset, shapes_caption
from .run import RunInfo, load_train_data
from .trainer import BaseTrainer

ATTRIBUTE_VALUES = {"shape": len(SHAPE_NAMES), "colour": len(COLOUR_NAMES), "size": len(SIZE_NAMES),
                    "position": len(POSITION_NAMES)}  # columns of ShapesData.attributes, in order
ATTRIBUTE_COLUMNS = {name: k for k, name in enumerate(ATTRIBUTE_VALUES)}
EXTRA_TOKENS = 2  # BOS and EOS around the caption's word tokens


def _captioned(dataset: Dataset, what: str) -> None:
    if dataset.captions is None or dataset.attributes is None:
        raise ValueError(f"{what} needs captioned data with ground-truth attributes (--data shapes); "
                         f"{dataset.name!r} has none")


def build_tokenizer(dataset: Dataset):
    """Our BPE vocabulary of the captions (``build_clip_vocab``) and a tokenizer whose
    ``model_max_length`` fits the longest caption (+ BOS/EOS, rounded up to a multiple of 8)."""
    from ..models import CLIPTokenizer, build_clip_vocab

    vocab, merges = build_clip_vocab(dataset.captions)
    tok = CLIPTokenizer(vocab, merges)
    longest = max(len(tok.encode(c)) for c in set(dataset.captions))
    tok.model_max_length = int(-(-longest // 8) * 8)
    return tok


def text_config(config, tokenizer) -> dict:
    """transformers' CLIPTextConfig keys: width ``hidden_dim``, ``num_blocks`` layers, heads of 32,
    4× MLP, positions = the tokenizer's length, EOS = padding (CLIP's convention)."""
    width = config.hidden_dim
    return dict(vocab_size=tokenizer.vocab_size, hidden_size=width, intermediate_size=4 * width,
                projection_dim=width, num_hidden_layers=config.num_blocks,
                num_attention_heads=max(1, width // 32), max_position_embeddings=tokenizer.model_max_length,
                hidden_act="quick_gelu", bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def plan_clip(config, dataset: Dataset) -> RunInfo:
    """A CLIPModel for the run's captions: text encoder as ``text_config``, image encoder
    ``block_out_channels`` with ``layers_per_block`` ResNets per level."""
    _captioned(dataset, "CLIP training")
    tok = build_tokenizer(dataset)
    c = dataset.sample_shape[0]
    model_config = dict(text_config=text_config(config, tok), projection_dim=config.hidden_dim,
                        vision_channels=list(config.block_out_channels), in_channels=c,
                        vision_layers_per_block=config.layers_per_block,
                        vision_norm_num_groups=config.norm_num_groups,
                        vision_pooling="attention" if config.attention else "mean",
                        image_size=dataset.sample_shape[-1])
    return RunInfo("CLIPModel", model_config, None, dataset.sample_shape, 0, None, None)


# ----------------------------------------------------------------------------
# captions that differ from the truth in one attribute
# ----------------------------------------------------------------------------


def attribute_variants(attributes: np.ndarray, obj: int, attribute: str) -> tuple[list, int]:
    """All (2, 4) attribute arrays equal to ``attributes`` except for ``attribute`` of object
    ``obj``, which takes every allowed value (a position another object occupies is not
    allowed). Returns (list of arrays, index of the true one)."""
    col = ATTRIBUTE_COLUMNS[attribute]
    true = int(attributes[obj, col])
    taken = {int(p) for k, p in enumerate(attributes[:, 3]) if k != obj and attributes[k, 0] >= 0}
    out, index = [], -1
    for value in range(ATTRIBUTE_VALUES[attribute]):
        if attribute == "position" and value in taken:
            continue
        a = attributes.copy()
        a[obj, col] = value
        if value == true:
            index = len(out)
        out.append(a)
    return out, index


def colour_shape_pairs(attributes: np.ndarray) -> set:
    """The (colour, shape) index pairs that occur in (N, 2, 4) attributes."""
    a = attributes.reshape(-1, 4)
    a = a[a[:, 0] >= 0]
    return set(zip(a[:, 1].tolist(), a[:, 0].tolist()))


def hard_negative(attributes: np.ndarray, rng: np.random.Generator, attribute: str | None = None,
                  allowed_pairs: set | None = None) -> np.ndarray:
    """A copy of one image's (2, 4) attributes with one attribute of one object changed
    (object, attribute — unless given — and new value drawn uniformly from ``rng``).

    ``allowed_pairs``: only negatives whose every object is a (colour, shape) pair of this set.
    A pair that never occurs in training (the held-out red triangle …) must not appear as a
    negative either: seen only as a wrong answer, it is learnt as "never true", and zero-shot
    accuracy on unseen combinations collapses (shape 39 % in a run without this rule)."""
    objects = np.flatnonzero(attributes[:, 0] >= 0)
    obj = int(objects[rng.integers(len(objects))])
    if attribute is None:
        attribute = list(ATTRIBUTE_VALUES)[rng.integers(len(ATTRIBUTE_VALUES))]
    variants, true = attribute_variants(attributes, obj, attribute)
    others = [v for k, v in enumerate(variants) if k != true
              and (allowed_pairs is None or colour_shape_pairs(v) <= allowed_pairs)]
    if not others:  # e.g. no other shape makes a seen pair with this colour: change the size
        return hard_negative(attributes, rng, "size", allowed_pairs)
    return others[rng.integers(len(others))]


class TextCache:
    """Token ids of captions, computed once per distinct caption: (B, L) int64."""

    def __init__(self, tokenizer):
        self.tokenizer, self.cache = tokenizer, {}

    def __call__(self, captions) -> np.ndarray:
        missing = [c for c in dict.fromkeys(captions) if c not in self.cache]
        if missing:
            ids = self.tokenizer(missing, padding="max_length", truncation=True,
                                 max_length=self.tokenizer.model_max_length, return_tensors="np")["input_ids"]
            self.cache.update(zip(missing, np.asarray(ids, dtype=np.int64)))
        return np.stack([self.cache[c] for c in captions])


def _embed(features, inputs: np.ndarray, batch: int) -> np.ndarray:
    """normalise(features(inputs)) in batches, without a tape: (N, E)."""
    from ..models.clip import normalize

    with no_grad():
        return np.concatenate([normalize(features(inputs[s:s + batch])).numpy() for s in range(0, len(inputs), batch)])


def embed_texts(model, ids: np.ndarray, batch: int = 512) -> np.ndarray:
    """Normalised text embeddings (N, E) of token ids (N, L)."""
    return _embed(model.get_text_features, ids, batch)


def embed_images(model, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """Normalised image embeddings (N, E) of images (N, C, H, W)."""
    return _embed(model.get_image_features, images, batch)


def zero_shot_report(model, tokenizer, images: np.ndarray, attributes: np.ndarray) -> dict:
    """Zero-shot accuracy per attribute: for every object of every image and every attribute,
    is the true caption the most similar (cosine) among the captions that differ from it
    only in that attribute? (``attribute_variants``; chance is 1/3 for shape, 1/6 colour,
    1/2 size, 1/4 or 1/3 position.) Also ``caption_retrieval``: the image's own caption
    ranks first among the N captions of the set. Returns {"<attribute>_accuracy": …}."""
    texts = TextCache(tokenizer)
    v = embed_images(model, images)  # (N, E)
    groups, owners, truths = [], [], []
    for i, a in enumerate(attributes):
        for obj in np.flatnonzero(a[:, 0] >= 0):
            for name in ATTRIBUTE_VALUES:
                variants, true = attribute_variants(a, int(obj), name)
                groups.append((name, [shapes_caption(x) for x in variants]))
                owners.append(i)
                truths.append(true)
    distinct = list(dict.fromkeys(c for _, caps in groups for c in caps))
    index = {c: k for k, c in enumerate(distinct)}
    t = embed_texts(model, texts(distinct))  # (K, E)
    hits = {name: [] for name in ATTRIBUTE_VALUES}
    for (name, caps), i, true in zip(groups, owners, truths):
        sims = t[[index[c] for c in caps]] @ v[i]  # (variants,)
        hits[name].append(int(np.argmax(sims)) == true)
    report = {f"{name}_accuracy": float(np.mean(h)) for name, h in hits.items()}
    own = embed_texts(model, texts([shapes_caption(a) for a in attributes]))  # (N, E)
    report["caption_retrieval"] = float(np.mean(np.argmax(v @ own.T, axis=1) == np.arange(len(v))))
    report["n_images"] = int(len(images))
    return report


# ----------------------------------------------------------------------------
# the trainer
# ----------------------------------------------------------------------------


class CLIPTrainer(BaseTrainer):
    """Contrastive pre-training of ``CLIPModel`` (``TrainConfig.model == "clip"``); see the module docstring."""

    devices = ("cpu", "cuda")
    model_folder = "clip"
    divergence_hint = "Try a lower --lr or a smaller --grad-clip."
    n_monitor = 200  # held-out images scored by zero-shot_report at each sample_every

    def __init__(self, config, run_dir, *, progress: bool = True, _resuming: bool = False):
        super().__init__(config, run_dir, progress=progress, _resuming=_resuming)
        from ..data import DataLoader

        self.tokenizer = build_tokenizer(self.dataset)
        self.texts = TextCache(self.tokenizer)
        self.pairs = colour_shape_pairs(self.dataset.attributes)  # negatives only use pairs seen in training
        # the loader yields (images, item indices): an item's caption and attributes are looked up
        self.loader = DataLoader(self.dataset.images, np.arange(len(self.dataset)),
                                 min(config.batch_size, len(self.dataset)), shuffle=True, drop_last=True,
                                 seed=config.seed)

    def loss_title(self) -> str:
        return "CLIP loss (symmetric cross-entropy, hard negatives)"

    def train_step(self, x: np.ndarray, idx: np.ndarray) -> dict:
        attrs = self.dataset.attributes[idx]  # (N, 2, 4)
        positives = self.texts([self.dataset.captions[i] for i in idx])  # 2.
        # two negatives per image: its shape changed (the attribute a batch's captions least
        # force the encoder to see), and any one attribute changed
        negatives = self.texts([shapes_caption(hard_negative(a, self.rng, "shape", self.pairs)) for a in attrs]
                               + [shapes_caption(hard_negative(a, self.rng, None, self.pairs)) for a in attrs])
        # 3.-4. on the run's device (the token ids are sent by the embedding, the images here)
        out = self.model(positives, self.to_device(x), return_loss=True, negative_input_ids=negatives)
        xp = backend.get_array_module(self.model.logit_scale.data)
        return self._optimise(out.loss, temperature=xp.exp(-self.model.logit_scale.data).reshape(()))  # 5.-6.

    # -- the exported folders --------------------------------------------------------
    def export_ema_model(self, folder: str) -> None:
        """``clip/`` (the EMA CLIPModel), ``text_encoder/`` and ``tokenizer/`` next to it."""
        model = self.ema_model()
        model.save_pretrained(folder)
        model.text_model.save_pretrained(self.path("text_encoder"))
        self.tokenizer.save_pretrained(self.path("tokenizer"))

    # -- pictures --------------------------------------------------------------------
    def _held_out(self):
        if getattr(self, "_test", None) is None:
            self._test = load_train_data(self.config, "test")
        return self._test

    def sample_grid(self, n: int = 16) -> str:
        """``samples/similarity_step_*.png``: the cosine similarities of the first ``n`` held-out
        images (rows) with their captions (columns), a bright diagonal when CLIP has learnt; and
        the zero-shot accuracies of ``n_monitor`` held-out images appended to ``samples/zero_shot.jsonl``."""
        model = self.ema_model()
        test = self._held_out()
        v = embed_images(model, test.images[:n])
        t = embed_texts(model, self.texts(test.captions[:n]))
        sims = v @ t.T  # (n, n) in [-1, 1]
        path = self.path(os.path.join("samples", f"similarity_step_{self.step:06d}.png"))
        nd_io.save_image_grid(path, sims[None, None].astype(np.float32), nrow=1, padding=0, scale=8)
        m = min(self.n_monitor, len(test))
        report = zero_shot_report(model, self.tokenizer, test.images[:m], test.attributes[:m])
        nd_io.append_jsonl(self.path(os.path.join("samples", "zero_shot.jsonl")), {"step": self.step, **report})
        return path
