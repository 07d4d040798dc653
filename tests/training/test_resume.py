"""Exact resume, Ctrl-C checkpoints and the NaN guard of the trainer (toy MLP, for speed)."""

import json
import os

import numpy as np
import pytest

from npdiff.io import load_safetensors
from npdiff.training import CHECKPOINT_NAME, TrainConfig, Trainer, TrainingDiverged, load_checkpoint, toy_defaults


def _toy_config(**changes) -> TrainConfig:
    base = toy_defaults("moons")
    base.update(steps=30, batch_size=32, toy_samples=512, warmup_steps=5, log_every=5, checkpoint_every=1000,
                sample_every=1000, sample_steps=3, hidden_dim=32, num_blocks=2)
    base.update(changes)
    return TrainConfig(**base)


def _labelled_points(tmp_path) -> str:
    """An .npz of 2-D points with 3 labels: exercises the class-conditional path and label dropout."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    x = rng.standard_normal((400, 2)) * 0.2 + np.stack([np.cos(2 * y), np.sin(2 * y)], 1)
    path = str(tmp_path / "points.npz")
    np.savez(path, x=x.astype(np.float32), y=y)
    return path


def _final_state(run_dir):
    return load_safetensors(os.path.join(run_dir, CHECKPOINT_NAME))


def _assert_same_state(a_dir, b_dir):
    a, b = _final_state(a_dir), _final_state(b_dir)
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    ma, mb = load_checkpoint(os.path.join(a_dir, CHECKPOINT_NAME)).meta, load_checkpoint(
        os.path.join(b_dir, CHECKPOINT_NAME)).meta
    for key in ("step", "trainer_rng", "loader", "lr_schedule", "optimizer_scalars", "ema_hyper", "global_rng"):
        assert ma[key] == mb[key], key


@pytest.mark.parametrize("conditional", [False, True])
def test_resume_is_exact(tmp_path, conditional):
    changes = {"prediction_type": "v_prediction", "snr_gamma": 5.0}
    if conditional:
        changes.update(data=_labelled_points(tmp_path), class_conditional=True, label_dropout=0.3)
    cfg = _toy_config(**changes)
    straight = Trainer(cfg, tmp_path / "straight", progress=False)
    if conditional:
        assert straight.info.null_class == 3 and straight.info.model_config["num_class_embeds"] == 4
    straight.train()
    first = Trainer(cfg, tmp_path / "split", progress=False)
    first.train(stop_after=13)
    assert load_checkpoint(str(tmp_path / "split" / CHECKPOINT_NAME)).step == 13
    resumed = Trainer.resume(tmp_path / "split", progress=False)
    assert resumed.step == 13
    resumed.train()
    assert resumed.step == straight.step == 30
    _assert_same_state(tmp_path / "straight", tmp_path / "split")
    # the log has one record per log_every steps, no duplicates across the resume
    steps = [json.loads(line)["step"] for line in open(tmp_path / "split" / "log.jsonl")]
    assert steps == [5, 10, 13, 15, 20, 25, 30]


def test_keyboard_interrupt_saves_checkpoint_and_resumes_exactly(tmp_path):
    cfg = _toy_config()
    Trainer(cfg, tmp_path / "straight", progress=False).train()

    def interrupt(trainer, record):
        if trainer.step == 11:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, tmp_path / "split", progress=False).train(callback=interrupt)
    assert load_checkpoint(str(tmp_path / "split" / CHECKPOINT_NAME)).step == 11
    Trainer.resume(tmp_path / "split", progress=False).train()
    _assert_same_state(tmp_path / "straight", tmp_path / "split")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = _toy_config(checkpoint_every=5)

    def poison(trainer, record):
        if trainer.step == 10:  # after the step-10 checkpoint: the next forward pass gives NaN
            trainer.model.output_proj.weight.data[...] = np.nan

    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 11.*last good checkpoint \(step 10\)"):
        Trainer(cfg, tmp_path / "run", progress=False).train(callback=poison)
    state = load_checkpoint(str(tmp_path / "run" / CHECKPOINT_NAME))
    assert state.step == 10
    assert all(np.all(np.isfinite(v)) for v in state.model.values())


def test_new_run_refuses_existing_run_and_resume_needs_a_run(tmp_path):
    cfg = _toy_config(steps=2)
    Trainer(cfg, tmp_path / "run", progress=False).train()
    with pytest.raises(ValueError, match="already holds a training run"):
        Trainer(cfg, tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="does not exist"):
        Trainer.resume(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="config.json is missing"):
        Trainer.resume(tmp_path / "empty")


def test_config_rejects_bad_values_and_unknown_keys():
    with pytest.raises(ValueError, match="prediction_type='eps'"):
        TrainConfig(prediction_type="eps")
    with pytest.raises(ValueError, match="label_dropout=1.5"):
        TrainConfig(label_dropout=1.5)
    with pytest.raises(ValueError, match=r"unknown training config keys \['stepz'\]"):
        TrainConfig.from_dict({"stepz": 3})
    assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="guidance_scale=.*finite scale >= 0"):
            TrainConfig(guidance_scale=bad)
    # a run saved under older defaults (2,000 steps, guidance 2) loads as it was trained
    old = TrainConfig.from_dict({**TrainConfig().to_dict(), "steps": 2000, "guidance_scale": 2.0})
    assert (old.steps, old.guidance_scale) == (2000, 2.0) != (TrainConfig().steps, TrainConfig().guidance_scale)


def test_resume_is_exact_tiny_unet(tmp_path):
    cfg = TrainConfig(image_size=8, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, steps=4,
                      batch_size=8, warmup_steps=2, log_every=2, checkpoint_every=100, sample_every=100,
                      sample_steps=2, label_dropout=0.5)
    straight = Trainer(cfg, tmp_path / "straight", progress=False)
    assert straight.info.model_class == "UNet2DModel" and straight.info.null_class == 10
    straight.train()
    Trainer(cfg, tmp_path / "split", progress=False).train(stop_after=2)
    Trainer.resume(tmp_path / "split", progress=False).train()
    _assert_same_state(tmp_path / "straight", tmp_path / "split")
