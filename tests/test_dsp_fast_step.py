"""Issue 33's step levers: the restyled copies branch off at the style point (``dsp_branch``) and the adversary
ascends at a lower resolution (``adv_scale``).

- Where the math is unchanged the branched step equals the copied one in float64 (loss and every gradient within
  1e-9 relative): with BatchNorm normalising by its running statistics, the only place the two differ (the layers
  before the style point normalise over N distinct images instead of N + n rows) is gone.
- In train mode the layers before the style point see each clean image once (the copied path runs n of them
  twice), and the batch that reaches the layers after it is the same N + n rows.
- adv_scale < 1: the ascent's forward sees resized inputs (labels nearest, ignore kept); 1 changes nothing.
- Bad combinations are one-line config errors.
"""

import pytest
import torch
from helpers import randomize_

from npdg.config import ConfigError, load_config
from npdg.dsp.perturb import FeatureDSP, resized
from npdg.models import create_model

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")
MODELS = ["deeplabv3plus_r18", "deeplab_vgg16", "segformer_b0"]


def _step(model, images, labels, seed, **kw):
    """(loss, {param: grad}) of one FeatureDSP step (p 0.5, copies weighted 0.5, one ascent step) + the D-VAE's."""
    torch.manual_seed(seed)
    dsp = FeatureDSP(model.style_channels, latent=8, hidden=16, p=0.5, adv_steps=1, copy=True, restyled_weight=0.5,
                     **kw)  # (the D-VAE runs in fp32 on every path; its inputs are the same float64 statistics)
    model.zero_grad(set_to_none=True)
    loss, _ = dsp.task_loss(model, model, images, labels)
    loss.backward()
    params = [*model.named_parameters(), *(("dvae." + k, p) for k, p in dsp.named_parameters())]
    return loss.detach(), {k: p.grad.clone() for k, p in params if p.grad is not None}


@pytest.mark.parametrize("name", MODELS)
def test_branched_copies_equal_copied_inputs_in_float64(name):
    torch.manual_seed(0)
    model = randomize_(create_model(name, num_classes=5)).double().eval()  # BN by running statistics
    images = torch.randn(4, 3, 32, 64, dtype=torch.float64)
    labels = torch.randint(0, 5, (4, 32, 64))
    labels[:, :3] = 255
    loss_a, grads_a = _step(model, images, labels, seed=7)
    loss_b, grads_b = _step(model, images, labels, seed=7, branch=True)
    assert torch.isfinite(loss_a) and abs(loss_a - loss_b) <= 1e-9 * abs(loss_a)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    for k in grads_a:
        scale = grads_a[k].abs().max().clamp_min(1e-300)
        assert (grads_a[k] - grads_b[k]).abs().max() <= 1e-9 * scale, k


@pytest.mark.parametrize("branch", [False, True])
def test_layers_before_the_style_point_see_each_clean_image_once_when_branched(branch):
    torch.manual_seed(0)
    model = create_model("deeplabv3plus_r18", num_classes=5).train()
    images, labels = torch.randn(4, 3, 32, 64), torch.randint(0, 5, (4, 32, 64))
    first, after = [], []
    hooks = [model.backbone.conv1.register_forward_hook(lambda m, i, o: first.append(o.shape[0])),
             model.backbone.layer2.register_forward_hook(lambda m, i, o: after.append(o.shape[0]))]
    try:
        dsp = FeatureDSP(model.style_channels, latent=8, hidden=16, p=0.5, adv_steps=1, copy=True, branch=branch)
        loss, _ = dsp.task_loss(model, model, images, labels)
    finally:
        for h in hooks:
            h.remove()
    # the ascent pass (2 restyled copies), then the training pass: 4 clean rows before the style point when
    # branched (6 = 2 copies + 4 when the inputs are copied); 6 rows after it either way
    assert first == [2, 4 if branch else 6] and after == [2, 6]
    assert torch.isfinite(loss)


def test_adv_scale_resizes_the_ascent_and_keeps_the_training_pass():
    torch.manual_seed(0)
    model = create_model("deeplabv3plus_r18", num_classes=5).train()
    images, labels = torch.randn(4, 3, 32, 64), torch.randint(0, 5, (4, 32, 64))
    seen = []
    handle = model.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    try:
        FeatureDSP(model.style_channels, latent=8, hidden=16, p=0.5, adv_steps=1, copy=True,
                   adv_scale=0.5).task_loss(model, model, images, labels)
    finally:
        handle.remove()
    assert seen == [(2, 3, 16, 32), (6, 3, 32, 64)]


def test_resized_keeps_ignore_labels_and_is_the_identity_at_scale_1():
    images = torch.randn(2, 3, 8, 12)
    labels = torch.randint(0, 3, (2, 8, 12))
    labels[:, ::2, ::2] = 255
    same_i, same_l = resized(images, labels, 1.0)
    assert same_i is images and same_l is labels
    small_i, small_l = resized(images, labels, 0.5)
    assert small_i.shape == (2, 3, 4, 6) and small_l.shape == (2, 4, 6) and small_l.dtype == torch.long
    assert set(small_l.unique().tolist()) <= {0, 1, 2, 255} and (small_l == 255).all()  # nearest: the even grid


@pytest.mark.parametrize("overrides, message", [
    (["--adv_scale=0"], r"adv_scale must be in \(0, 1\]"),
    (["--adv_scale=1.5"], r"adv_scale must be in \(0, 1\]"),
    (["--dsp_branch", "--dsp_copy=false"], "dsp_branch: .* needs dsp_copy=true"),
    (["--dsp_level=image", "--adv_scale=0.5"], "adv_scale: feature-level DSP only"),
])
def test_bad_combinations_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
    assert load_config(None, ["--dsp_branch", "--adv_scale=0.5"]).dsp_branch is True


@pytest.mark.parametrize("branch", [False, True])
def test_the_ascent_sees_the_same_rows_either_way_with_one_copy(branch):
    """Batch 2, p 0.5: one copy; the ascent runs >= 2 rows through BN: the copy's image twice (the copied path's
    first two rows), on both paths."""
    torch.manual_seed(0)
    model = create_model("deeplabv3plus_r18", num_classes=5).train()
    images, labels = torch.randn(2, 3, 32, 64), torch.randint(0, 5, (2, 32, 64))
    seen = []
    handle = model.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    try:
        FeatureDSP(model.style_channels, latent=8, hidden=16, p=0.5, adv_steps=1, copy=True,
                   branch=branch).task_loss(model, model, images, labels)
    finally:
        handle.remove()
    ascent = seen[0]
    assert ascent.shape[0] == 2 and torch.equal(ascent[0], images[0]) and torch.equal(ascent[1], images[0])
