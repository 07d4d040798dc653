"""CLIP's contrastive step on the simulated device: a tiny ``CLIPModel`` (one 4-wide text layer, one
level of 2 channels on 4×4 images) with hard negatives, its loss and every gradient on the cuda
column as on the CPU. ``npdiff train --model clip --device cuda`` runs this forward and backward
inside ``CLIPTrainer``'s step; the trainer itself is not run here, as the shapes data is 32×32 and
one such step costs the simulator minutes (docs/device.md gives the command of that check)."""

import numpy as np

import npdiff as nd
from npdiff import backend
from npdiff.models.clip import CLIPModel
from tests.kernels.harness import close
from tests.models.test_unet_2d_reference_kernels import TERMS, _record_columns

TEXT = dict(vocab_size=12, hidden_size=4, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1,
            max_position_embeddings=5, bos_token_id=10, eos_token_id=11, pad_token_id=11)


def _step(model, ids, x, negatives):
    out = model(ids, x, return_loss=True, negative_input_ids=negatives)
    out.loss.backward()
    return backend.to_device(out.loss.data, "cpu"), {n: backend.to_device(p.grad.data, "cpu")
                                                     for n, p in model.named_parameters()}


def test_a_clip_loss_and_its_gradients_on_the_device_equal_the_cpu_ones():
    nd.manual_seed(0)
    rng = np.random.default_rng(0)
    ids = np.array([[10, 3, 4, 11, 11], [10, 5, 11, 11, 11]])
    negatives = np.array([[10, 6, 4, 11, 11], [10, 7, 11, 11, 11]])
    x = rng.standard_normal((2, 1, 4, 4)).astype(np.float32)
    config = dict(text_config=TEXT, projection_dim=4, vision_channels=(2,), in_channels=1,
                  vision_norm_num_groups=2, image_size=4)
    cpu = CLIPModel(**config)
    gpu = CLIPModel(**config)
    gpu.load_state_dict(cpu.state_dict())
    want = _step(cpu, ids, x, negatives)
    calls, undo = _record_columns()
    try:
        got = _step(gpu.to("cuda"), ids, backend.to_device(x, "cuda"), negatives)
    finally:
        undo()
    assert {column for _, column in calls} == {"cuda"}
    close(got[0], want[0], np.float32, TERMS, "loss")
    for name, g in want[1].items():
        close(got[1][name], g, np.float32, TERMS, name)
