"""ControlNet and LoRA training on a locked text-to-image model (the shared ``BaseTrainer`` loop).

Both teach a trained ``StableDiffusionPipeline`` (the *base*: VAE, CLIP text encoder,
latent U-Net, scheduler) something new without changing one of its weights.

ControlNet (Zhang et al. 2023): a trainable copy of the U-Net's encoder reads a condition
image (the target's mask, outline or Sobel edge map, ``npdiff.conditions``) and adds
residuals to the locked U-Net's skips. One step:

    1. x₀, i ← next batch; caption_i, cond_i                 (seeded, resumable DataLoader over indices)
    2. z₀ = s · mode q(z | x₀)                                (locked VAE; s = scaling_factor; computed
                                                               once for the whole set, as is the locked
                                                               text encoder's output)
    3. t ~ U{0…T−1}, ε ~ N(0, I); caption ← "" with prob. p   (the trainer's generator)
    4. z_t = √ᾱ_t z₀ + √(1−ᾱ_t) ε;  e = text_encoder(caption) (locked)
    5. r = controlnet(z_t, t, e, cond);  ŷ = unet(z_t, t, e, + r)   (U-Net locked: gradients flow
       through its activations to r, never into its weights)
    6. L = ‖ŷ − target‖² / D, target ε or v as the base scheduler's prediction_type
    7. NaN stop, backward, clip, AdamW on the ControlNet's parameters only, EMA

LoRA (Hu et al. 2021): rank-r adapters on the U-Net's attention projections (to_q, to_k,
to_v, to_out.0) and, by default, the text encoder's (q_proj, k_proj, v_proj, out_proj),
trained on a few hundred images of a concept the base never saw (``make_concept_shapes``:
a new shape or colour word) mixed with ``prior_examples`` images of the base's own data
(prior preservation, after DreamBooth, Ruiz et al. 2023, §3.3). With ``prior_target="base"``
the target of those items is the locked base's own prediction at the same z_t, t and caption
(the adapters at scale 0), so their loss ‖ŷ_LoRA − ŷ_base‖² measures how far the adapted model
has moved from the base on old prompts, exactly what must stay small; ``"data"`` uses the
data's ε / v as for the concept items (DreamBooth's form with ground-truth images), which
also pulls the model towards the data where the base misses it. ``prior_distillation`` λ_d adds,
whatever the target, an output-distillation penalty on every old-prompt item of the batch (prior
items and items whose caption was dropped to ""):

    L = mean_i ‖ŷ_i − target_i‖² / D  +  λ_d · mean_{old items j} ‖ŷ_j − ŷ_base,j‖² / D

with ŷ_base,j the locked base's prediction at the same z_t, t and caption (one more no-grad forward
of the same U-Net with every adapter at scale 0: no second model in memory). It pins the adapted
model's output on old prompts, including the unconditional one that guidance subtracts, to the
base's. Steps 1-7 with no ControlNet, and the text encoder on the tape; only the adapters' A and B
(and the concept word's token rows) get gradients and optimiser state.

The base is locked three ways: its parameters have ``requires_grad = False`` (no gradient
is even computed for them), the optimiser holds only the adapter's parameters, and the
checkpoint holds only those (a test checks every base parameter bit for bit after training).

A run folder holds ``config.json`` ({"adapter": AdapterConfig}), ``checkpoint.safetensors``
(adapter weights, EMA, optimiser, RNG states), ``log.jsonl``, ``loss.png``, ``samples/`` and
the EMA result: ``controlnet/`` (a diffusers ControlNetModel folder) or
``pytorch_lora_weights.safetensors`` (a diffusers LoRA file).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np

from .. import backend, nn
from .. import io as nd_io
from ..autograd import Tensor, no_grad
from ..conditions import CONTROL_KINDS, concept_replaces, control_condition, make_concept_shapes
from ..data import DataLoader, ShapesData, make_shapes
from ..diffusion import NoiseSchedule, simple_loss, training_target
from ..optim import EMA, AdamW, cosine_with_warmup
from ..pipelines.latents import encode_images
from .checkpoint import CHECKPOINT_NAME, CONFIG_NAME, rng_state, save_checkpoint
from .distributed import get_world
from .trainer import BaseTrainer

ADAPTER_KINDS = ("controlnet", "lora")
PRIOR_TARGETS = ("base", "data")
DEFAULT_STEPS = {"controlnet": 600, "lora": 900}
CONTROLNET_FOLDER = "controlnet"
LORA_FILE = "pytorch_lora_weights.safetensors"


@dataclass
class AdapterConfig:
    """A ControlNet or LoRA run on a locked base pipeline.

      kind               "controlnet" or "lora".
      base               the base: a pipeline folder (``model_index.json``), or a run / stack
                         folder holding one in ``pipeline/`` or ``unet/pipeline/``.
    ControlNet
      control            the condition: "mask", "outline" or "edge" (``npdiff.conditions``).
      train_examples     shapes training images used.
      conditioning_embedding_out_channels   None: 16 · 2^i per VAE level (the embedding
                         downsamples by the VAE's factor).
    LoRA
      concept, replaces  the new word (a shape or colour, ``npdiff.conditions.CONCEPTS``) and the
                         shape or colour whose objects become it (None: circle / red).
      examples           concept images (a few hundred).
      prior_examples     images of the base's data (shapes train split) mixed into the concept
                         set (prior preservation); 0: the concept images alone.
      prior_target       "data" (ε / v of the data) or "base" (the locked base's prediction: one
                         more no-grad forward per step, ~30 % longer; the same drop within noise).
      rank, alpha        adapter rank r and α (None: α = r).
      text_encoder       also LoRA on the text encoder's attention projections (changes every prompt).
      concept_tokens     learn the token-embedding rows of the concept word's pieces (textual
                         inversion on existing rows, ``add_trainable_tokens``): the new word gets a
                         meaning, and a prompt without those pieces is encoded exactly as by the base.
      concept_token_lr   peak learning rate of those rows (None: lr); the rows are O(1) per
                         coordinate, so they need a larger step than the adapters' B matrices.
      text_preservation  λ of a penalty λ · mean ‖e_adapted(c) − e_base(c)‖² on the prior items'
                         text states (their captions, or "" where dropped): keeps the adapted text
                         encoder's output on old prompts at the base's (0: off).
      prior_distillation λ_d of an output-distillation penalty λ_d · mean ‖ŷ_adapted − ŷ_base‖² / D on
                         the batch's old-prompt items (prior items, and every item whose caption was
                         dropped: "" is an old prompt too), ŷ_base the locked base's prediction at the
                         same z_t, t and caption (all adapters at scale 0, no grad): keeps the adapted
                         U-Net's output on old prompts at the base's (0: off; one more no-grad U-Net
                         forward per step).
      unet_targets       the U-Net layers that get LoRA (None: to_q, to_k, to_v, to_out.0 of every
                         attention; ("attn2.to_k", "attn2.to_v"): the cross-attention's text path).
    Both
      caption_dropout    probability of training on the empty caption (keeps guidance working).
      steps              None: 600 (ControlNet) or 900 (LoRA).
      batch_size, lr, weight_decay, warmup_steps, min_lr_ratio, grad_clip, ema_decay,
      log_every, sample_every, checkpoint_every, sample_steps, guidance_scale, seed: as TrainConfig.
    """

    kind: str = "controlnet"
    base: str = ""
    control: str = "mask"
    train_examples: int = 2000
    conditioning_embedding_out_channels: tuple | None = None
    concept: str = "ring"
    replaces: str | None = None
    examples: int = 300
    prior_examples: int = 450
    prior_target: str = "data"
    rank: int = 8
    alpha: float | None = None
    text_encoder: bool = True
    concept_tokens: bool = True
    concept_token_lr: float | None = 0.02
    text_preservation: float = 1.0
    prior_distillation: float = 1.0
    unet_targets: tuple | None = None
    caption_dropout: float = 0.1
    steps: int | None = None
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.99
    log_every: int = 25
    sample_every: int = 200
    checkpoint_every: int = 200
    sample_steps: int = 20
    guidance_scale: float = 3.0
    seed: int = 0

    def __post_init__(self):
        if self.steps is None:  # what meets the targets in ≤ 10 min (docs/controlnet_lora.md)
            self.steps = DEFAULT_STEPS.get(self.kind, 600)
        if self.unet_targets is not None:
            self.unet_targets = (self.unet_targets,) if isinstance(self.unet_targets, str) else tuple(self.unet_targets)
        if self.conditioning_embedding_out_channels is not None:
            self.conditioning_embedding_out_channels = tuple(int(c) for c in self.conditioning_embedding_out_channels)
        self.validate()

    def validate(self) -> None:
        if self.kind not in ADAPTER_KINDS:
            raise ValueError(f"kind must be one of {ADAPTER_KINDS}, got {self.kind!r}")
        if self.control not in CONTROL_KINDS:
            raise ValueError(f"control must be one of {CONTROL_KINDS}, got {self.control!r}")
        for key in ("train_examples", "examples", "rank", "steps", "batch_size", "log_every", "sample_every",
                    "checkpoint_every", "sample_steps"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)!r}")
        if self.prior_target not in PRIOR_TARGETS:
            raise ValueError(f"prior_target must be one of {PRIOR_TARGETS}, got {self.prior_target!r}")
        if int(self.prior_examples) < 0:
            raise ValueError(f"prior_examples must be >= 0, got {self.prior_examples!r}")
        concept_replaces(self.concept, self.replaces)  # a known concept, and a colour / shape of its kind
        if self.unet_targets is not None and (not self.unet_targets or not all(
                isinstance(t, str) and t for t in self.unet_targets)):
            raise ValueError(f"unet_targets must be non-empty layer names, got {self.unet_targets!r}")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1), got {self.caption_dropout!r}")
        if not self.text_preservation >= 0:
            raise ValueError(f"text_preservation must be >= 0, got {self.text_preservation!r}")
        if not self.prior_distillation >= 0:
            raise ValueError(f"prior_distillation must be >= 0, got {self.prior_distillation!r}")
        if self.concept_token_lr is not None and not self.concept_token_lr > 0:
            raise ValueError(f"concept_token_lr must be > 0 (or None: lr), got {self.concept_token_lr!r}")
        if not self.lr > 0 or not 0.0 <= self.ema_decay <= 1.0:
            raise ValueError(f"need lr > 0 and ema_decay in [0, 1], got lr={self.lr!r}, ema_decay={self.ema_decay!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AdapterConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown adapter config keys {unknown}; known: {sorted(known)}")
        if "prior_examples" not in d:  # a run written before prior preservation trained on the concept alone
            d = {**d, "prior_examples": 0, "prior_target": "data"}
        if "concept_tokens" not in d:  # written before concept tokens and the text penalty: trained without
            d = {**d, "concept_tokens": False, "concept_token_lr": None, "text_preservation": 0.0}
        if "prior_distillation" not in d:  # written before the output distillation: trained without
            d = {**d, "prior_distillation": 0.0}
        return cls(**d)


def load_base_pipeline(path: str):
    """The base ``StableDiffusionPipeline`` from a pipeline folder, a latent-diffusion run folder
    (``pipeline/``) or a text-to-image stack folder (``unet/pipeline/``)."""
    from ..pipelines import StableDiffusionPipeline

    path = os.fspath(path)
    for folder in (path, os.path.join(path, "pipeline"), os.path.join(path, "unet", "pipeline")):
        if os.path.isfile(os.path.join(folder, "model_index.json")):
            return StableDiffusionPipeline.from_pretrained(folder)
    raise ValueError(f"{path!r} holds no pipeline folder (model_index.json in it, in pipeline/ or in "
                     "unet/pipeline/): train a text-to-image model first (npdiff train --data shapes)")


def concept_token_ids(tokenizer, word: str, old_captions=()) -> list[int]:
    """The token ids of ``word``'s BPE pieces (no BOS / EOS): the rows ``concept_tokens`` learns.
    Raises if one of them occurs in ``old_captions`` (the prior set): learning it would change
    those prompts too."""
    ids = list(dict.fromkeys(tokenizer.encode(word, add_special_tokens=False)))
    if not ids:
        raise ValueError(f"concept word {word!r} has no tokens")
    if len(old_captions):
        seen = {t for caption in old_captions for t in tokenizer.encode(caption)}
        shared = [t for t in ids if t in seen]
        if shared:
            pieces = tokenizer.convert_ids_to_tokens(shared)
            raise ValueError(f"concept_tokens: the pieces {pieces} of {word!r} also occur in the base's captions; "
                             "learning them would change those prompts (use LoRA on the text encoder instead)")
    return ids


class AdapterParameters(nn.Module):
    """The LoRA adapters of several models as one module, keyed as the LoRA file keys them
    (``unet.<path>.lora_A.weight``): what the optimiser, EMA and checkpoint see."""

    def __init__(self, **models):
        super().__init__()
        from ..models.lora import lora_layers, token_adapters

        for prefix, model in models.items():
            for path, layer in lora_layers(model).items():
                self._modules[f"{prefix}.{path}.lora_A"] = layer.lora_A
                self._modules[f"{prefix}.{path}.lora_B"] = layer.lora_B
            for path, emb in token_adapters(model).items():
                self._modules[f"{prefix}.{path}.token_adapter"] = emb.token_adapter


class AdapterTrainer(BaseTrainer):
    """Trains a ControlNet or LoRA adapters on a locked base (see the module docstring).

    ``AdapterTrainer(config, run_dir, pipeline=None)``: ``pipeline`` is the base (default:
    loaded from ``config.base``). ``AdapterTrainer.resume(run_dir)`` continues a run exactly."""

    model_folder = CONTROLNET_FOLDER

    def __init__(self, config: AdapterConfig, run_dir: str, *, pipeline=None, progress: bool = True,
                 _resuming: bool = False):
        self.config, self.run_dir, self.progress = config, os.fspath(run_dir), progress
        self.dist = dist = get_world()  # one rank, or this process's place under mpiexec (distributed.py)
        exists = os.path.exists(os.path.join(self.run_dir, CHECKPOINT_NAME))
        if not _resuming and dist.broadcast_flag(exists, "the run-folder check"):
            raise ValueError(f"{self.run_dir!r} already holds a training run; resume it or choose another folder")
        self.pipe = load_base_pipeline(config.base) if pipeline is None else pipeline
        pipe = self.pipe
        # 1. lock the base
        for model in (pipe.vae, pipe.text_encoder, pipe.unet):
            model.eval()
            model.requires_grad_(False)
        # the forward process the base was trained with: its scheduler's own betas (any schedule, rescaling)
        self.schedule = NoiseSchedule(trained_betas=np.asarray(pipe.scheduler.betas, dtype=np.float64))
        self.prediction_type = pipe.scheduler.config.get("prediction_type", "epsilon")
        # 2. data: images, captions (as token ids), conditions
        if config.kind == "controlnet":
            data = make_shapes(config.train_examples, "train", config.seed)
            self.conditions = control_condition(config.control, data)
        else:
            data = make_concept_shapes(config.examples, "train", config.seed, config.concept, config.replaces)
            self.n_concept = len(data)  # items from here on are prior-preservation items
            if config.prior_examples:  # prior preservation: the base's own data in the same batches
                prior = make_shapes(config.prior_examples, "train", config.seed)
                data = ShapesData(np.concatenate([data.images, prior.images]), data.captions + prior.captions,
                                  np.concatenate([data.attributes, prior.attributes]),
                                  np.concatenate([data.masks, prior.masks]))
            self.conditions = None
        self.data = data
        self.ids = self._tokens(list(data.captions))
        self.empty_ids = self._tokens([""])[0]
        # the locked VAE's latents (posterior mode, deterministic) once, not every step; the same for
        # the text when the text encoder is locked
        self.latents = np.concatenate([encode_images(pipe.vae, data.images[i:i + 256])
                                       for i in range(0, len(data), 256)])  # (N, c, h, w)
        self.text = None
        base_text = np.concatenate([self._embed(self.ids[i:i + 256]) for i in range(0, len(data), 256)])
        self.empty_text = self._embed(self.empty_ids[None])[0]  # (Lk, D)
        if not (config.kind == "lora" and (config.text_encoder or config.concept_tokens)):
            self.text = base_text  # (N, Lk, D)
        elif config.text_preservation:  # the base's text states: the preservation penalty's target
            self.base_text = base_text
        # 3. the adapter
        backend.manual_seed(config.seed)
        if config.kind == "controlnet":
            from ..models import ControlNetModel

            levels = len(pipe.vae.config.block_out_channels)
            channels = config.conditioning_embedding_out_channels or tuple(16 * 2 ** i for i in range(levels))
            self.controlnet = ControlNetModel.from_unet(pipe.unet, conditioning_embedding_out_channels=channels,
                                                        conditioning_channels=1)
            self.model = self.controlnet
        else:
            from ..models.lora import TEXT_ENCODER_TARGETS, UNET_TARGETS, add_lora, add_trainable_tokens

            add_lora(pipe.unet, config.rank, config.alpha, target_modules=config.unet_targets or UNET_TARGETS)
            adapted = {"unet": pipe.unet}
            if config.text_encoder:
                add_lora(pipe.text_encoder, config.rank, config.alpha, target_modules=TEXT_ENCODER_TARGETS)
                adapted["text_encoder"] = pipe.text_encoder
            if config.concept_tokens:
                self.concept_token_ids = concept_token_ids(pipe.tokenizer, config.concept,
                                                           make_shapes(500, "train", config.seed).captions)
                add_trainable_tokens(pipe.text_encoder, self.concept_token_ids)
                adapted["text_encoder"] = pipe.text_encoder
            self.model = AdapterParameters(**adapted)
        self.model.train()
        params = list(self.model.parameters())
        dist.broadcast_arrays([p.data for p in params])  # rank 0's initial adapter
        self.optimizer = AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        if config.kind == "lora" and config.concept_tokens and config.concept_token_lr is not None:
            rows = {id(p) for name, p in self.model.named_parameters() if name.endswith("trainable_tokens_delta")}
            self.optimizer.lr_scales = {i: config.concept_token_lr / config.lr
                                        for i, p in enumerate(params) if id(p) in rows}
        self.lr_schedule = cosine_with_warmup(self.optimizer, config.warmup_steps, config.steps,
                                              min_lr=config.min_lr_ratio * config.lr)
        self.ema = EMA(params, decay=config.ema_decay, warmup=True)
        n = dist.world_size  # this rank's shard of global batches of ranks × batch_size, as BaseTrainer's
        self.loader = DataLoader(data.images, np.arange(len(data)), min(config.batch_size, len(data) // n or 1),
                                 shuffle=True, drop_last=True, seed=config.seed, num_replicas=n, rank=dist.rank)
        self.rng = dist.sharded(np.random.default_rng([config.seed, 1]))
        self.step = 0
        self._stop_requested = False
        self._stop_agreed = False

    def _embed(self, ids: np.ndarray) -> np.ndarray:
        with no_grad():
            return np.asarray(self.pipe.text_encoder(ids).last_hidden_state.data)

    def _tokens(self, texts: list[str]) -> np.ndarray:
        tok = self.pipe.tokenizer
        return tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                   return_tensors="np")["input_ids"]

    # -- run folder ----------------------------------------------------------------------
    def write_config(self) -> None:
        if self.dist.is_root:  # rank 0 alone writes
            nd_io.save_json(self.path(CONFIG_NAME), {"adapter": self.config.to_dict()})

    def save(self) -> None:
        if not self.dist.is_root:
            return
        meta = {"step": self.step, "world_size": self.dist.world_size, "lr_schedule": self.lr_schedule.state_dict(), "trainer_rng": rng_state(self.rng),
                "loader": self.loader.state_dict(), "global_rng": backend.get_rng_state()}
        save_checkpoint(self.path(CHECKPOINT_NAME), model=self.model, ema=self.ema, optimizer=self.optimizer, meta=meta)
        self.export_ema_model(self.run_dir)
        self.plot_loss()

    def export_ema_model(self, folder: str) -> None:
        """The EMA adapter: ``controlnet/`` (diffusers folder) or ``pytorch_lora_weights.safetensors``."""
        from ..models.lora import save_lora_weights

        with self.ema_weights():
            if self.config.kind == "controlnet":
                self.controlnet.save_pretrained(os.path.join(folder, CONTROLNET_FOLDER))
            else:
                text = self.config.text_encoder or self.config.concept_tokens
                save_lora_weights(os.path.join(folder, LORA_FILE), unet=self.pipe.unet,
                                  text_encoder=self.pipe.text_encoder if text else None)

    def ema_weights(self):
        """Context manager: the adapter holds its EMA weights inside, its live weights after."""
        import contextlib

        @contextlib.contextmanager
        def swap():
            self.ema.store()
            self.ema.copy_to()
            try:
                yield
            finally:
                self.ema.restore()

        return swap()

    def loss_title(self) -> str:
        return f"{self.config.kind} training loss ({self.prediction_type})"

    @classmethod
    def resume(cls, run_dir: str, *, steps: int | None = None, progress: bool = True,
               pipeline=None) -> "AdapterTrainer":
        """Rebuild the trainer from ``run_dir`` and its checkpoint, exactly where it stopped."""
        run_dir = os.fspath(run_dir)
        path = os.path.join(run_dir, CONFIG_NAME)
        if not os.path.isfile(path):
            raise ValueError(f"{run_dir!r} is not an adapter run folder: {CONFIG_NAME} is missing")
        raw = nd_io.load_json(path)
        if "adapter" not in raw:
            raise ValueError(f"{path}: not a ControlNet / LoRA run (no 'adapter' section)")
        config = AdapterConfig.from_dict(raw["adapter"])
        if steps is not None:
            config = dataclasses.replace(config, steps=int(steps))
        trainer = cls(config, run_dir, pipeline=pipeline, progress=progress, _resuming=True)
        trainer.restore(run_dir)
        return trainer

    # -- one step -----------------------------------------------------------------------------
    def train_step(self, x0: np.ndarray, index: np.ndarray) -> dict:
        """Steps 2-7 of the module docstring on one batch (``index``: the items' dataset indices)."""
        cfg, pipe, b = self.config, self.pipe, len(index)
        # 2. latents of the locked VAE (computed once in __init__: z₀ = s · mode q(z | x₀))
        z0 = self.latents[index]  # (b, c, h, w)
        # 3. timesteps, noise, caption dropout
        t = self.rng.integers(0, self.schedule.num_train_timesteps, size=b)
        noise = self.rng.standard_normal(z0.shape, dtype=np.float32)
        drop = self.rng.random(b) < cfg.caption_dropout
        # 4. forward process and text
        z_t = Tensor(self.schedule.q_sample(z0, t, noise).astype(np.float32))
        if self.text is None:  # LoRA on the text encoder: on the tape, its adapters train
            ids = np.where(drop[:, None], self.empty_ids[None], self.ids[index])  # (b, Lk)
            text = pipe.text_encoder(ids).last_hidden_state
        else:  # locked text encoder: its precomputed output
            text = Tensor(np.where(drop[:, None, None], self.empty_text[None], self.text[index]))  # (b, Lk, D)
        # 5. prediction through the locked U-Net
        if cfg.kind == "controlnet":
            down, mid = self.controlnet(z_t, t, text, self.conditions[index])
            out = pipe.unet(z_t, t, text, down_block_additional_residuals=down, mid_block_additional_residual=mid)
        else:
            out = pipe.unet(z_t, t, text)
        # 6. target: ε or v of the data; prior-preservation items with prior_target "base": the base's
        #    own prediction (module docstring)
        target = training_target(z0, noise, self.schedule.alphas_cumprod[t], self.prediction_type)
        lora = cfg.kind == "lora"
        prior = index >= self.n_concept if lora and cfg.prior_target == "base" else np.zeros(b, bool)
        old = (index >= self.n_concept) | drop if lora and cfg.prior_distillation else np.zeros(b, bool)
        # the items whose base prediction is needed, computed once; with the distillation on, the whole
        # batch: the same batch as the adapted forward, so at B = 0 both agree bit for bit (a sub-batch
        # can round differently in the GEMMs) and the penalty is exactly 0
        need = np.arange(b) if old.any() else np.flatnonzero(prior)
        if len(need):
            base_out = np.zeros(out.shape, np.float32)
            caption = ids if self.text is None else text.data
            base_out[need] = self._base_prediction(z_t.data[need], t[need], caption[need])
        if prior.any():
            target = np.array(target, dtype=np.float32)
            target[prior] = base_out[prior]
        # 7. loss (+ the output distillation on old-prompt items, + the text-preservation penalty on prior
        #    items), NaN stop, backward, clip, AdamW on the adapter only, EMA
        loss = simple_loss(out, target).mean()
        total, terms = loss, {}
        if old.any():
            k = np.flatnonzero(old)
            distillation = self.distillation_penalty(out[k], base_out[k])
            total = total + distillation * cfg.prior_distillation
            terms["distillation"] = distillation.data
        old_text = np.flatnonzero(index >= self.n_concept) if self.text is None and cfg.text_preservation else []
        if len(old_text):
            base = np.where(drop[old_text, None, None], self.empty_text[None],
                            self.base_text[index[old_text]])  # (k, Lk, D)
            penalty = ((text[old_text] - Tensor(base)) ** 2).mean()
            total = total + penalty * cfg.text_preservation
            terms["text_penalty"] = penalty.data
        if terms:
            return self._optimise(total, diffusion_loss=loss.data, **terms)
        return self._optimise(loss)

    @staticmethod
    def distillation_penalty(out, base_out: np.ndarray):
        """mean ‖ŷ_adapted − ŷ_base‖² / D over items and elements: the adapted model's prediction
        ``out`` (a Tensor on the tape, (k, c, h, w)) against the locked base's ``base_out`` (the same
        z_t, t and caption, ``_base_prediction``). Zero exactly while every LoRA B is zero and the
        token rows are untouched (old prompts do not hold them)."""
        return ((out - Tensor(base_out)) ** 2).mean()

    def _base_prediction(self, z_t: np.ndarray, t: np.ndarray, caption: np.ndarray) -> np.ndarray:
        """The locked base's U-Net output (every LoRA at scale 0: exactly the base) for noisy latents,
        timesteps and token ids (text encoder adapted) or text states (text encoder locked)."""
        from ..models.lora import set_lora_scale

        pipe = self.pipe
        adapted = [pipe.unet] + ([pipe.text_encoder] if self.text is None else [])
        for model in adapted:
            set_lora_scale(model, 0.0)
        try:
            with no_grad():
                text = pipe.text_encoder(caption).last_hidden_state if self.text is None else Tensor(caption)
                return np.asarray(pipe.unet(Tensor(z_t), t, text).data)
        finally:
            for model in adapted:
                set_lora_scale(model, 1.0)

    # -- pictures -------------------------------------------------------------------------------
    def sample_grid(self, n: int = 8) -> str:
        """EMA samples for held-out prompts: ControlNet rows condition | sample; LoRA concept prompts."""
        cfg = self.config
        path = self.path(os.path.join("samples", f"step_{self.step:06d}.png"))
        gen = np.random.default_rng([cfg.seed, 2])
        with self.ema_weights():
            if cfg.kind == "controlnet":
                from ..pipelines import StableDiffusionControlNetPipeline

                test = make_shapes(n, "test", cfg.seed)
                cond = control_condition(cfg.control, test)
                pipe = StableDiffusionControlNetPipeline(self.pipe.vae, self.pipe.text_encoder, self.pipe.tokenizer,
                                                         self.pipe.unet, self.controlnet, self.pipe.scheduler)
                self.controlnet.eval()
                images = pipe(test.captions, image=cond, num_inference_steps=cfg.sample_steps,
                              guidance_scale=cfg.guidance_scale, generator=gen, output_type="np").images
                self.controlnet.train()
                shown = np.concatenate([np.repeat(cond * 2.0 - 1.0, 3, axis=1),
                                        images.transpose(0, 3, 1, 2) * 2.0 - 1.0])  # row 1: conditions, row 2: samples
            else:
                test = make_concept_shapes(n, "test", cfg.seed, cfg.concept, cfg.replaces)
                images = self.pipe(test.captions, num_inference_steps=cfg.sample_steps,
                                   guidance_scale=cfg.guidance_scale, generator=gen, output_type="np").images
                shown = np.concatenate([test.images, images.transpose(0, 3, 1, 2) * 2.0 - 1.0])  # real | drawn
        nd_io.save_image_grid(path, shown, nrow=n, scale=2)
        return path
