"""Helpers shared by the oracle tests (npdiff vs torch / diffusers / transformers)."""

import numpy as np


def randomise(model, seed, scale=0.1):
    """Perturb every parameter of a torch model so that norms, biases and zero-initialised
    layers all matter."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def assert_close(ours, theirs, what, tol=2e-4, floor=0.0):
    """max |ours − theirs| <= tol · max(max |theirs|, floor). ``floor`` keeps quantities that
    are zero in exact arithmetic (the key bias gradient of softmax attention) from dividing
    noise by noise."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} != {theirs.shape}"
    scale = max(np.abs(theirs).max(initial=0.0), floor) + 1e-12
    err = np.abs(ours - theirs).max(initial=0.0) / scale
    assert err <= tol, f"{what}: max |diff| / max |ref| = {err:.2e}"


def assert_same_parameters(ours, ref):
    """Same parameter names, shapes, order and count as the torch model."""
    ref_params = [(k, tuple(v.shape)) for k, v in ref.named_parameters()]
    assert [(k, tuple(v.shape)) for k, v in ours.named_parameters()] == ref_params
    assert ours.num_parameters() == sum(p.numel() for p in ref.parameters())


def assert_grads_close(ours, ref, what):
    """Every parameter gradient of ``ours`` against ``ref`` (after both ran backward), with an
    absolute floor of 1e-3 · the largest reference gradient."""
    ref_grads = {k: p.grad.numpy() for k, p in ref.named_parameters()}
    floor = 1e-3 * max(np.abs(g).max() for g in ref_grads.values())
    for k, p in ours.named_parameters():
        assert_close(p.grad.numpy(), ref_grads[k], f"{what}: d/d {k}", floor=floor)


def diffusers_pair(ref_cls, ours_cls, config, folder, seed=0):
    """A randomised diffusers model saved to ``folder`` and npdiff's ``from_pretrained`` of it."""
    import torch

    torch.manual_seed(seed)
    ref = ref_cls(**config)
    randomise(ref, seed)
    ref.eval()
    ref.save_pretrained(folder)
    return ref, ours_cls.from_pretrained(folder)
