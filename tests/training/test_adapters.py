"""ControlNet and LoRA training on a locked base: every base parameter bit for bit unchanged,
optimiser state only for the adapter, exported results that load, exact resume.

The base is the tiny Stable Diffusion stack at the shapes size (32×32 images, 16×16 latents);
a few steps on a handful of shapes images."""

import numpy as np
import pytest

from npdiff.models import ControlNetModel
from npdiff.models.lora import load_lora_weights, lora_layers, token_adapters
from npdiff.training.adapters import AdapterConfig, AdapterTrainer
from tests.pipelines.sd_stack import tiny_pipeline_32

SMALL = dict(train_examples=12, examples=12, prior_examples=4, batch_size=4, steps=3, log_every=1, sample_every=1000,
             checkpoint_every=1000, sample_steps=2, warmup_steps=1, lr=1e-2, conditioning_embedding_out_channels=(4, 8))


def _base_state(pipe):
    return {f"{name}.{k}": v.copy() for name in ("vae", "text_encoder", "unet")
            for k, v in getattr(pipe, name).state_dict().items() if not _adapter_key(k)}


def _adapter_key(key):
    return ".lora_" in key or ".token_adapter." in key


def _train(kind, tmp_path, **changes):
    pipe = tiny_pipeline_32()
    before = _base_state(pipe)
    trainer = AdapterTrainer(AdapterConfig(kind=kind, **{**SMALL, **changes}), tmp_path / kind, pipeline=pipe,
                             progress=False)
    trainer.train()
    return pipe, before, trainer


def _assert_base_locked(pipe, before, trainer):
    after = _base_state(pipe)
    assert after.keys() == before.keys()
    for k, v in before.items():
        np.testing.assert_array_equal(after[k], v, err_msg=k)
    adapter = {id(p) for p in trainer.model.parameters()}
    assert {id(p) for p in trainer.optimizer.params} == adapter
    for name in ("vae", "text_encoder", "unet"):
        for k, p in getattr(pipe, name).named_parameters():
            if not _adapter_key(k):
                assert id(p) not in adapter and p.grad is None, f"{name}.{k} got a gradient"
    state = trainer.optimizer.state_dict()["state"]
    n_adapter = len(list(trainer.model.parameters()))
    assert {int(key.split(".")[0]) for key in state} == set(range(n_adapter))  # optimiser state: adapter only


def test_controlnet_training_locks_the_base(tmp_path):
    pipe, before, trainer = _train("controlnet", tmp_path)
    _assert_base_locked(pipe, before, trainer)
    cn = trainer.controlnet
    assert np.abs(cn.controlnet_mid_block.weight.numpy()).max() > 0  # the zero convs moved
    saved = ControlNetModel.from_pretrained(tmp_path / "controlnet" / "controlnet")  # run folder / EMA export
    assert saved.config.conditioning_channels == 1
    assert (tmp_path / "controlnet" / "samples" / "step_000003.png").is_file()


def test_lora_training_locks_the_base_and_trains_the_text_encoder(tmp_path):
    pipe, before, trainer = _train("lora", tmp_path, rank=2)
    _assert_base_locked(pipe, before, trainer)
    for model in (pipe.unet, pipe.text_encoder):
        layers = lora_layers(model)
        assert layers and max(np.abs(m.lora_B.weight.numpy()).max() for m in layers.values()) > 0
    fresh = tiny_pipeline_32()
    loaded = load_lora_weights(tmp_path / "lora" / "pytorch_lora_weights.safetensors", unet=fresh.unet,
                               text_encoder=fresh.text_encoder)
    assert loaded["unet"]["r"] == 2 and loaded["text_encoder"]["r"] == 2


@pytest.mark.parametrize("kind", ["controlnet", "lora"])
def test_resume_is_exact(kind, tmp_path):
    _, _, straight = _train(kind, tmp_path / "a", steps=4)
    half = AdapterTrainer(AdapterConfig(kind=kind, **{**SMALL, "steps": 4}), tmp_path / "b",
                          pipeline=tiny_pipeline_32(), progress=False)
    half.train(stop_after=2)
    resumed = AdapterTrainer.resume(tmp_path / "b", pipeline=tiny_pipeline_32(), progress=False)
    assert resumed.step == 2
    resumed.train()
    for (k, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=k)


def test_lora_data_mixes_the_concept_with_the_prior(tmp_path):
    """Prior preservation: the LoRA set is the concept images followed by the base's own (shapes
    train) images, with their captions; prior_examples=0 leaves the concept alone."""
    from npdiff.conditions import make_concept_shapes
    from npdiff.data import make_shapes

    pipe = tiny_pipeline_32()
    config = AdapterConfig(kind="lora", **{**SMALL, "examples": 6, "prior_examples": 5})
    trainer = AdapterTrainer(config, tmp_path / "a", pipeline=pipe, progress=False)
    concept, prior = make_concept_shapes(6, "train", 0, "ring"), make_shapes(5, "train", 0)
    assert trainer.data.captions == concept.captions + prior.captions
    np.testing.assert_array_equal(trainer.data.images, np.concatenate([concept.images, prior.images]))
    assert len(trainer.latents) == len(trainer.ids) == 11
    alone = AdapterTrainer(AdapterConfig(kind="lora", **{**SMALL, "examples": 6, "prior_examples": 0}),
                           tmp_path / "b", pipeline=tiny_pipeline_32(), progress=False)
    assert alone.data.captions == concept.captions


def test_prior_target_is_the_base_prediction(tmp_path):
    """prior_target "base": the target of a prior item is the locked base's own U-Net output (a fresh
    copy of the base computes the same numbers bit for bit), while the adapted model, after a few
    steps, predicts something else; the adapters are back at scale 1 afterwards."""
    from npdiff.autograd import Tensor, no_grad

    pipe = tiny_pipeline_32()
    config = AdapterConfig(kind="lora", **{**SMALL, "lr": 5e-2, "prior_target": "base"})
    trainer = AdapterTrainer(config, tmp_path / "a", pipeline=pipe, progress=False)
    trainer.train()
    rng = np.random.default_rng(3)
    z = rng.standard_normal((2,) + trainer.latents.shape[1:]).astype(np.float32)
    t, ids = np.array([50, 700]), trainer.ids[-2:]
    got = trainer._base_prediction(z, t, ids)
    fresh = tiny_pipeline_32()
    with no_grad():
        want = fresh.unet(Tensor(z), t, fresh.text_encoder(ids).last_hidden_state).numpy()
        adapted = pipe.unet(Tensor(z), t, pipe.text_encoder(ids).last_hidden_state).numpy()
    np.testing.assert_array_equal(got, want)
    assert np.abs(adapted - want).max() > 1e-4 * np.abs(want).max()
    assert all(layer.scale == 1.0 for layer in lora_layers(pipe.unet).values())


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="kind"):
        AdapterConfig(kind="dreambooth")
    with pytest.raises(ValueError, match="control"):
        AdapterConfig(control="depth")
    with pytest.raises(ValueError, match="unknown adapter config keys \\['rnak'\\]"):
        AdapterConfig.from_dict({"rnak": 4})
    with pytest.raises(ValueError, match="a shape concept \\('ring'\\) replaces one of the shapes"):
        AdapterConfig(kind="lora", concept="ring", replaces="red")
    with pytest.raises(ValueError, match="concept must be one of"):
        AdapterConfig(kind="lora", concept="mauve")
    with pytest.raises(ValueError, match="prior_target"):
        AdapterConfig(kind="lora", prior_target="samples")
    with pytest.raises(ValueError, match="prior_examples"):
        AdapterConfig(kind="lora", prior_examples=-1)
    assert AdapterConfig.from_dict({"kind": "lora", "concept": "pink"}).prior_examples == 0  # a run from before
    with pytest.raises(ValueError, match="prior_distillation"):
        AdapterConfig(kind="lora", prior_distillation=-1.0)
    assert AdapterConfig(kind="lora").prior_distillation == 1.0
    assert AdapterConfig.from_dict({"kind": "lora", "concept_tokens": True}).prior_distillation == 0.0  # written before


@pytest.mark.parametrize("kind", ["controlnet", "lora"])
def test_training_lowers_the_loss_on_its_data(kind, tmp_path):
    """A learning check of the whole path (data, conditions, locked base, adapter, AdamW): 25 steps on 8
    images lower the denoising loss on those images at fixed timesteps and noise by a clear margin (the
    base is random: nothing here says the adapters learn the task, only that the whole path trains)."""
    import npdiff.nn.functional as F
    from npdiff.autograd import Tensor, no_grad

    pipe = tiny_pipeline_32()
    cfg = AdapterConfig(kind=kind, **{**SMALL, "train_examples": 8, "examples": 8, "prior_examples": 0, "batch_size": 8,
                                      "steps": 25, "lr": 1e-2, "caption_dropout": 0.0, "ema_decay": 0.0, "rank": 4})
    trainer = AdapterTrainer(cfg, tmp_path / kind, pipeline=pipe, progress=False)
    rng = np.random.default_rng(7)
    t = rng.integers(100, 900, 8)
    noise = rng.standard_normal(trainer.latents.shape).astype(np.float32)
    z_t = Tensor(trainer.schedule.q_sample(trainer.latents, t, noise).astype(np.float32))

    def loss():
        with no_grad():
            text = trainer.pipe.text_encoder(trainer.ids).last_hidden_state
            if kind == "controlnet":
                down, mid = trainer.controlnet(z_t, t, text, trainer.conditions)
                out = pipe.unet(z_t, t, text, down_block_additional_residuals=down, mid_block_additional_residual=mid)
            else:
                out = pipe.unet(z_t, t, text)
            return float(F.mse_loss(out, noise).item())  # the tiny base predicts ε

    before = loss()
    trainer.train()
    # measured here: ControlNet 0.48, LoRA (attention only, the text encoder's too) 0.82 of the loss before
    assert loss() < {"controlnet": 0.7, "lora": 0.9}[kind] * before


def test_concept_tokens_leave_old_prompts_alone(tmp_path):
    """Concept tokens alone (no text-encoder LoRA): the word's rows move at their own learning rate,
    every prompt without them is encoded bit for bit as by the base; the text penalty of a
    text-encoder LoRA is the mean squared distance of the prior items' text states from the base's."""
    pipe, before, trainer = _train("lora", tmp_path, rank=2, text_encoder=False, concept_tokens=True,
                                   concept_token_lr=0.05)
    _assert_base_locked(pipe, before, trainer)
    ids = trainer.concept_token_ids
    assert not any(t in trainer.ids[trainer.n_concept:] for t in ids)  # no prior caption holds them
    emb = token_adapters(pipe.text_encoder)["embeddings.token_embedding"]
    moved = np.abs(emb.token_adapter.trainable_tokens_delta.numpy() - emb.weight.numpy()[emb.token_indices]).max()
    assert moved > 0.05 * 3 * 0.5  # 3 steps at lr 0.05 (warm-up 1), Adam's steps ≈ lr each: not the 1e-2 of the rest
    # base_text was encoded before training in batches of 256 of all captions: encode them again the same way
    # (a GEMM's rounding may depend on its row count and a row's place in it, not on the other rows' values)
    now = np.concatenate([trainer._embed(trainer.ids[i:i + 256]) for i in range(0, len(trainer.ids), 256)])
    np.testing.assert_array_equal(now[trainer.n_concept:], trainer.base_text[trainer.n_concept:])
    fresh = tiny_pipeline_32()
    load_lora_weights(tmp_path / "lora" / "pytorch_lora_weights.safetensors", unet=fresh.unet,
                      text_encoder=fresh.text_encoder)
    assert token_adapters(fresh.text_encoder)["embeddings.token_embedding"].token_indices.tolist() == sorted(ids)


def test_text_preservation_penalty(tmp_path):
    """loss = diffusion loss + λ · mean ‖e_adapted − e_base‖² over the batch's prior items (their
    captions, or "" where dropped), computed here by hand before the step."""
    pipe = tiny_pipeline_32()
    trainer = AdapterTrainer(AdapterConfig(kind="lora", **{**SMALL, "rank": 2, "text_preservation": 2.0,
                                                           "prior_distillation": 0.0}),
                             tmp_path / "lora", pipeline=pipe, progress=False)
    for layer in lora_layers(pipe.text_encoder).values():  # move the text encoder off the base
        layer.lora_B.weight.data = np.full(layer.lora_B.weight.shape, 0.05, np.float32)
    index = np.array([0, 1, trainer.n_concept, trainer.n_concept + 1])  # two concept, two prior items
    state = trainer.rng.bit_generator.state
    trainer.rng.integers(0, trainer.schedule.num_train_timesteps, size=4)  # the step's draws: t, ε, dropout
    trainer.rng.standard_normal((4,) + trainer.latents.shape[1:], dtype=np.float32)
    drop = trainer.rng.random(4) < trainer.config.caption_dropout
    trainer.rng.bit_generator.state = state
    prior = index[2:]
    ids = np.where(drop[2:, None], trainer.empty_ids[None], trainer.ids[prior])
    base = np.where(drop[2:, None, None], trainer.empty_text[None], trainer.base_text[prior])
    expected = np.mean((trainer._embed(ids).astype(np.float64) - base) ** 2)
    record = trainer.train_step(None, index)
    assert expected > 0
    assert float(record["text_penalty"]) == pytest.approx(expected, rel=1e-5)
    assert float(record["loss"]) == pytest.approx(float(record["diffusion_loss"]) + 2.0 * expected, rel=1e-5)


def _step_draws(trainer, b):
    """The timesteps, noise and caption-dropout draws the next ``train_step`` on ``b`` items makes
    (the trainer's generator is put back, so the step draws them again)."""
    state = trainer.rng.bit_generator.state
    t = trainer.rng.integers(0, trainer.schedule.num_train_timesteps, size=b)
    noise = trainer.rng.standard_normal((b,) + trainer.latents.shape[1:], dtype=np.float32)
    drop = trainer.rng.random(b) < trainer.config.caption_dropout
    trainer.rng.bit_generator.state = state
    return t, noise, drop


def test_prior_distillation_penalty(tmp_path):
    """Output distillation: with every LoRA B zero and the token rows untouched the penalty is exactly 0;
    after the adapters move it is mean ‖ŷ_adapted − ŷ_base‖² over the old-prompt items (prior items and
    dropped captions, not the concept items), ŷ_base computed here by a fresh copy of the base."""
    from npdiff.autograd import Tensor, no_grad

    pipe = tiny_pipeline_32()
    config = AdapterConfig(kind="lora", **{**SMALL, "rank": 2, "prior_distillation": 3.0, "caption_dropout": 0.5,
                                           "text_preservation": 0.0})
    trainer = AdapterTrainer(config, tmp_path / "lora", pipeline=pipe, progress=False)
    n = trainer.n_concept
    index = np.array([0, 1, 2, 3, 4, 5, 6, 7, n, n + 1])  # eight concept items, two prior items
    record = trainer.train_step(None, index)  # step 1: B = 0, rows as the base's
    assert float(record["distillation"]) == 0.0
    assert float(record["loss"]) == float(record["diffusion_loss"])
    for model in (pipe.unet, pipe.text_encoder):  # move the adapters off the base
        for layer in lora_layers(model).values():
            layer.lora_B.weight.data = np.full(layer.lora_B.weight.shape, 0.05, np.float32)
    t, noise, drop = _step_draws(trainer, len(index))
    old = np.flatnonzero((index >= n) | drop)
    assert 0 < drop[:8].sum() < 8 and len(old) < len(index)  # some concept items dropped to "", some not
    z_t = trainer.schedule.q_sample(trainer.latents[index], t, noise).astype(np.float32)[old]
    ids = np.where(drop[:, None], trainer.empty_ids[None], trainer.ids[index])[old]
    fresh = tiny_pipeline_32()
    with no_grad():
        want = fresh.unet(Tensor(z_t), t[old], fresh.text_encoder(ids).last_hidden_state).numpy()
        adapted = pipe.unet(Tensor(z_t), t[old], pipe.text_encoder(ids).last_hidden_state).numpy()
    expected = np.mean((adapted.astype(np.float64) - want) ** 2)
    record = trainer.train_step(None, index)
    assert expected > 0
    assert float(record["distillation"]) == pytest.approx(expected, rel=1e-5)
    assert float(record["loss"]) == pytest.approx(float(record["diffusion_loss"]) + 3.0 * expected, rel=1e-5)


def test_prior_distillation_gradient_matches_finite_differences(tmp_path):
    """float64: the autograd gradient of the distillation penalty with respect to a U-Net and a text-encoder
    LoRA B (through the adapted text states) equals central differences; the base prediction is a constant."""
    from npdiff.autograd import Tensor, no_grad
    from tests.gradcheck import numeric_grad

    pipe = tiny_pipeline_32()
    config = AdapterConfig(kind="lora", **{**SMALL, "rank": 2, "prior_distillation": 1.0})
    trainer = AdapterTrainer(config, tmp_path / "lora", pipeline=pipe, progress=False)
    for model in (pipe.unet, pipe.text_encoder):
        model.double()
    rng = np.random.default_rng(5)
    for model in (pipe.unet, pipe.text_encoder):
        for layer in lora_layers(model).values():
            layer.lora_B.weight.data = 0.05 * rng.standard_normal(layer.lora_B.weight.shape)
    z = rng.standard_normal((2,) + trainer.latents.shape[1:])
    t, ids = np.array([80, 640]), trainer.ids[trainer.n_concept:trainer.n_concept + 2]
    base = trainer._base_prediction(z, t, ids)

    def penalty():
        out = pipe.unet(Tensor(z), t, pipe.text_encoder(ids).last_hidden_state)
        return trainer.distillation_penalty(out, base)

    def value():
        with no_grad():
            return float(penalty().item())

    unet_b = next(iter(lora_layers(pipe.unet).values())).lora_B.weight
    text_b = next(iter(lora_layers(pipe.text_encoder).values())).lora_B.weight
    penalty().backward()
    for param in (unet_b, text_b):
        analytic = param.grad.numpy()
        for idx in [(0, 0), (param.shape[0] - 1, 1), (param.shape[0] // 2, 0)]:
            numeric = numeric_grad(value, param.data, idx, eps=1e-6)
            # central differences of an O(1e-3) penalty: truncation ~ eps², rounding ~ 1e-16 / eps
            assert analytic[idx] == pytest.approx(numeric, rel=1e-5, abs=1e-9), idx
