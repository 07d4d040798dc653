"""The text-to-image stack end to end on tiny settings: each stage learns, resumes exactly, and the
CLI trains, samples, evaluates and draws attention maps (training/stack.py, clip_trainer.py,
latent_trainer.py, t2i_eval.py, pipelines/attention_maps.py)."""

import json
import os

import numpy as np
import pytest

from npdiff.autograd import Tensor

from npdiff import cli
from npdiff.training import TrainConfig, load_checkpoint
from npdiff.training import stack as stack_module

COMMON = dict(data="shapes", image_size=None, class_conditional=False, log_every=1, seed=0, subset=64)


def tiny_configs(out):
    vae = TrainConfig(**COMMON, model="vae", block_out_channels=(8, 16, 16), norm_num_groups=4, steps=3, batch_size=8,
                      warmup_steps=1, sample_every=100, checkpoint_every=100)
    clip = TrainConfig(**COMMON, model="clip", block_out_channels=(8, 16), norm_num_groups=4, attention=False,
                       hidden_dim=32, num_blocks=1, steps=3, batch_size=16, warmup_steps=1, sample_every=100,
                       checkpoint_every=100)
    unet = TrainConfig(**COMMON, model="ldm", vae=os.path.join(out, "vae"), text_encoder=os.path.join(out, "clip"),
                       block_out_channels=(16, 32), norm_num_groups=8, steps=4, batch_size=8, warmup_steps=1,
                       sample_every=100, checkpoint_every=2, sample_steps=2, guidance_scale=2.0)
    return {"vae": vae, "clip": clip, "unet": unet}


def train_tiny_stack(out) -> int:
    """`npdiff train --data shapes -o out` with the tiny stage configs (and a small CLIP monitor)."""
    from npdiff.training.clip_trainer import CLIPTrainer

    original, monitor = stack_module.shapes_stack_configs, CLIPTrainer.n_monitor
    stack_module.shapes_stack_configs, CLIPTrainer.n_monitor = (lambda o, seed=0: tiny_configs(o)), 16
    try:
        return cli.main(["train", "--data", "shapes", "-o", out, "--quiet"])
    finally:
        stack_module.shapes_stack_configs, CLIPTrainer.n_monitor = original, monitor


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("t2i") / "stack")
    assert train_tiny_stack(out) == 0
    return out


def test_stack_writes_each_stage_and_reuses_them(stack, capsys):
    for stage, folder in (("vae", "vae"), ("clip", "clip"), ("unet", "pipeline")):
        assert os.path.isfile(os.path.join(stack, stage, "checkpoint.safetensors"))
        assert os.path.isdir(os.path.join(stack, stage, folder))
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert os.path.isdir(os.path.join(stack, "unet", "pipeline", sub))
    record = json.load(open(os.path.join(stack, "stack.json")))
    assert set(record) == {"vae", "clip", "unet"}
    ceiling = record["vae"]["attribute_ceiling"]  # printed and recorded after the VAE stage
    assert ceiling["n_samples"] == 500 and 0.0 <= ceiling["all_correct"] <= ceiling["count_accuracy"] <= 1.0
    # the frozen VAE's scaling factor is measured from the data (not the default 1)
    vae_cfg = json.load(open(os.path.join(stack, "unet", "pipeline", "vae", "config.json")))
    assert vae_cfg["scaling_factor"] != 1.0
    # a second call finds every stage finished and trains nothing
    assert train_tiny_stack(stack) == 0
    assert capsys.readouterr().out.count("reused") == 3


def test_stack_refuses_per_stage_flags(tmp_path, capsys):
    assert cli.main(["train", "--data", "shapes", "--steps", "5", "-o", str(tmp_path / "x")]) == 2
    assert "--steps" in capsys.readouterr().err


def test_cross_attention_levels(stack):
    """cross_attention_max_tokens picks the levels that read the text (the lowest one always does)."""
    from npdiff.training import load_train_data
    from npdiff.training.latent_trainer import plan_latent

    cfg = tiny_configs(stack)["unet"]  # 8×8 latents, two levels: 8×8 (64 positions) and 4×4 (16)
    data = load_train_data(cfg)
    for limit, want in ((64, ["CrossAttnDownBlock2D"] * 2), (63, ["DownBlock2D", "CrossAttnDownBlock2D"]),
                        (1, ["DownBlock2D", "CrossAttnDownBlock2D"])):
        config = plan_latent(cfg.replace(cross_attention_max_tokens=limit), data).model_config
        assert config["down_block_types"] == want, limit
        assert config["up_block_types"] == [t.replace("Down", "Up") for t in reversed(want)]
    with pytest.raises(ValueError, match="cross_attention_max_tokens"):
        cfg.replace(cross_attention_max_tokens=0)


def test_latent_resume_is_exact(stack, tmp_path):
    """N steps straight == N/2, then resume, N/2 more (the latent U-Net; the frozen parts are data)."""
    from npdiff.training import resume, trainer_class

    cfg = tiny_configs(stack)["unet"].replace(checkpoint_every=100)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    trainer_class(cfg)(cfg, a, progress=False).train()
    trainer_class(cfg)(cfg, b, progress=False).train(stop_after=2)
    resume(b, progress=False).train()
    sa, sb = load_checkpoint(os.path.join(a, "checkpoint.safetensors")), load_checkpoint(os.path.join(b, "checkpoint.safetensors"))
    assert sa.step == sb.step == cfg.steps
    for k in sa.model:
        np.testing.assert_array_equal(sa.model[k], sb.model[k], err_msg=k)
    for k in sa.ema:
        np.testing.assert_array_equal(sa.ema[k], sb.ema[k], err_msg=k)


def test_sample_prompt_and_errors(stack, tmp_path, capsys):
    out = str(tmp_path / "p.png")
    assert cli.main(["sample", "--run", stack, "--prompt", "a large red circle at the top left", "--n", "2",
                     "--steps", "2", "--guidance-scale", "3", "--negative-prompt", "a blue square", "--out", out]) == 0
    assert os.path.isfile(out)
    assert cli.main(["sample", "--run", stack, "--n", "2"]) == 2
    assert "--prompt" in capsys.readouterr().err
    assert cli.main(["sample", "--run", os.path.join(stack, "vae"), "--prompt", "a red circle"]) == 2
    assert "text-to-image" in capsys.readouterr().err


def test_viz_attention(stack, tmp_path, capsys):
    out = str(tmp_path / "a.png")
    assert cli.main(["viz", "attention", "--run", stack, "--prompt", "a small blue circle at the top left",
                     "--steps", "2", "--out", out]) == 0
    assert os.path.isfile(out)
    assert "'circle'" in capsys.readouterr().out
    assert cli.main(["viz", "attention", "--run", stack, "--prompt", "a red circle", "--word", "dog"]) == 2


def test_eval_clip_run(stack):
    assert cli.main(["eval", "--run", os.path.join(stack, "clip"), "--n", "8"]) == 0
    report = json.load(open(os.path.join(stack, "clip", "eval.json")))
    for split in ("test", "unseen"):
        for attr in ("shape", "colour", "size", "position"):
            assert 0.0 <= report[f"{split}_{attr}_accuracy"] <= 1.0


def test_eval_vae_run_reports_its_attribute_ceiling(stack, capsys):
    assert cli.main(["eval", "--run", os.path.join(stack, "vae"), "--n", "16"]) == 0
    ceiling = json.load(open(os.path.join(stack, "vae", "eval.json")))["attribute_ceiling"]
    assert ceiling["n_samples"] == 16 and ceiling["real"]["all_correct"] > 0.9
    assert 0.0 <= ceiling["all_correct"] <= ceiling["shape_accuracy"] <= 1.0
    assert "VAE attribute ceiling" in capsys.readouterr().out


def test_eval_text_to_image(stack, capsys):
    assert cli.main(["eval", "--run", stack, "--n", "4", "--steps", "2", "--guidance-scale", "2"]) == 0
    report = json.load(open(os.path.join(stack, "unet", "eval.json")))
    row = report["guidance"]["2"]
    for split in ("seen", "unseen"):
        assert set(row[split]) >= {"all_correct", "shape_accuracy", "colour_accuracy", "size_accuracy",
                                   "position_accuracy"}
    assert np.isfinite(row["fd_ratio"]) and row["fd_ratio"] > 0
    assert "clip_zero_shot" in report
    ceiling = report["vae_ceiling"]  # the frozen VAE's round trip, beside the real images
    assert ceiling["real"]["all_correct"] > 0.95 and 0.0 <= ceiling["all_correct"] <= 1.0
    out = capsys.readouterr().out
    assert "| 2 |" in out and "VAE attribute ceiling" in out


def test_latent_unet_learns(stack, tmp_path):
    """40 steps on 64 captioned images: the v-prediction loss at fixed (z₀, t, ε, caption) falls by a third."""
    from npdiff.autograd import no_grad
    from npdiff.training import trainer_class

    cfg = tiny_configs(stack)["unet"].replace(steps=40, lr=3e-3, checkpoint_every=1000, label_dropout=0.0)
    trainer = trainer_class(cfg)(cfg, str(tmp_path / "u"), progress=False)
    trainer.sample_grid = lambda: None
    rng = np.random.default_rng(7)
    idx = np.arange(32)
    mean, _ = np.split(trainer.loader.data[idx], 2, axis=1)
    z0 = (trainer.scaling_factor * mean).astype(np.float32)
    t = rng.integers(0, cfg.num_train_timesteps, 32)
    noise = rng.standard_normal(z0.shape).astype(np.float32)
    z_t = trainer.schedule.q_sample(z0, t, noise).astype(np.float32)

    def fixed_loss():
        from npdiff.diffusion import diffusion_loss

        with no_grad():
            out = trainer.model(Tensor(z_t), t, Tensor(trainer.hidden[idx]))
            return float(diffusion_loss(trainer.schedule, out, z0, noise, t, cfg.prediction_type).mean().item())

    before = fixed_loss()
    trainer.train()
    assert fixed_loss() < 0.67 * before


def test_class_conditional_latent_digits(tmp_path):
    """--model ldm on labelled data: a class-conditional UNet2DModel on the digits VAE's latents;
    sample and eval decode through the run's VAE."""
    from npdiff.training import load_run

    vae, ldm = str(tmp_path / "vae"), str(tmp_path / "ldm")
    assert cli.main(["train", "--model", "vae", "--steps", "2", "--batch-size", "8", "--sample-every", "100",
                     "-o", vae, "--quiet"]) == 0
    assert cli.main(["train", "--model", "ldm", "--vae", vae, "--channels", "16,32", "--steps", "2",
                     "--batch-size", "8", "--sample-every", "100", "-o", ldm, "--quiet"]) == 0
    run = load_run(ldm)
    assert run.info.model_class == "UNet2DModel" and run.info.null_class == 10
    assert run.info.sample_shape == (4, 4, 4)  # 16×16 digits, f = 4, 4 latent channels
    out = str(tmp_path / "s.png")
    assert cli.main(["sample", "--run", ldm, "--n", "4", "--steps", "2", "--out", out, "--npy"]) == 0
    assert np.load(out.replace(".png", ".npy")).shape == (4, 1, 16, 16)  # decoded to pixels
    assert cli.main(["eval", "--run", ldm, "--n", "20", "--steps", "2"]) == 0
    assert 0.0 <= json.load(open(os.path.join(ldm, "eval.json")))["conditional_accuracy"] <= 1.0


def test_stack_time_benchmark_counts_only_the_steps(stack, tmp_path, monkeypatch):
    """benchmarks/t2i_stack_time.py: seconds per step are read between step callbacks, so a step that
    sleeps 0.2 s (no CPU) gives wall ≥ 0.2 s and CPU ≪ wall; the checkpoint written when train()
    returns is not counted."""
    import importlib.util
    import time

    from npdiff.training.latent_trainer import LatentTrainer

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    spec = importlib.util.spec_from_file_location("t2i_stack_time", os.path.join(root, "benchmarks", "t2i_stack_time.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    real = LatentTrainer.train_step

    def slow_step(self, *args):
        time.sleep(0.2)
        return real(self, *args)

    monkeypatch.setattr(LatentTrainer, "train_step", slow_step)
    r = bench.time_stage(tiny_configs(stack)["unet"], str(tmp_path / "u"), steps=3, warmup=1)
    assert r["setup"] > 0
    assert r["wall"] >= 0.2
    assert r["cpu"] <= r["wall"] - 0.15
