"""prune_fade (issue 16): the units the prune will remove are chosen before the train stage ends and fade out,
so the prune cuts units that are already 0."""

import pytest
import torch
from helpers import random_scores, stream_groups

from npdg.config import ConfigError, load_config
from npdg.loop import Context
from npdg.methods import build_method
from npdg.models import create_model
from npdg.models.units import CoupledGroup
from npdg.pruning import apply_masks, compact, scale_masked_, select_masks

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


@pytest.mark.parametrize("name", ["deeplabv3plus_r18", "segformer_b0"])
def test_scale_masked_scales_exactly_what_masking_zeroes(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5).eval()
    masks = select_masks(model, ratio=0.3, round_to=1, prune_residual=True, scores=random_scores(model, True))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    zeroed = apply_masks(model, masks).state_dict()
    scale_masked_(model, masks, 0.25)
    after = model.state_dict()
    touched = 0
    for k, v in before.items():
        if not v.is_floating_point():  # (BN's num_batches_tracked)
            continue
        masked = zeroed[k] != v  # the entries masking changes
        torch.testing.assert_close(after[k][masked], v[masked] * 0.25)
        torch.testing.assert_close(after[k][~masked], v[~masked])
        touched += int(masked.sum())
    assert touched > 0
    if name == "segformer_b0":  # the MiT streams' writer rows are among them
        assert any(isinstance(g, CoupledGroup) and g.zero_producers for g in stream_groups(model))
    scale_masked_(model, masks, 0.0)  # factor 0 is the mask
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, zeroed[k])


def test_fade_shrinks_linearly_then_the_stage_end_zeroes():
    cfg = load_config(None, ["--method=slimming", "--iters=4", "--prune_fade=0.5", "--sparsity=0", "--ratio=0.3",
                             "--round_to=1"])
    model = create_model("deeplabv3plus_r18", num_classes=cfg.num_classes)
    recipe = build_method(Context(cfg=cfg, device=torch.device("cpu")), model)
    loss_fn = recipe.train_loss_fn(model)
    gammas = {g.name: g.gamma() for g in model.prunable_units()}
    with torch.no_grad():
        for g in gammas.values():
            g.copy_(torch.rand(g.shape, generator=torch.Generator().manual_seed(g.numel())) + 0.5)
    start = {k: v.detach().clone() for k, v in gammas.items()}
    images, labels = torch.randn(2, 3, 40, 72), torch.randint(0, cfg.num_classes, (2, 40, 72))
    seen = []
    for step in range(1, 5):  # no optimiser step: only the fade moves γ
        loss_fn(model, step, images, labels)
        masks = recipe.fade_masks
        seen.append(None if masks is None else
                    torch.cat([(gammas[n][~m] / start[n][~m]) for n, m in masks.items()]).detach())
    assert seen[0] is None and seen[1] is None  # steps 1-2: no fade yet (it covers the last half, steps 3-4)
    torch.testing.assert_close(seen[2], torch.full_like(seen[2], 2 / 3))
    torch.testing.assert_close(seen[3], torch.full_like(seen[3], 1 / 3))  # linear: 1 - k/3 after k of 2 steps
    expected = select_masks(model, ratio=0.3, round_to=1)  # chosen by the prune's own rule
    assert all(torch.equal(recipe.fade_masks[n], expected[n]) for n in expected)
    kept = torch.cat([gammas[n][m] / start[n][m] for n, m in recipe.fade_masks.items()]).detach()
    torch.testing.assert_close(kept, torch.ones_like(kept))


def test_prune_fade_run_prunes_the_faded_units_at_no_cost(tmp_path):
    import npdg
    from npdg.train import main

    out = tmp_path / "run"
    main(["--method=npdg", "--iters=4", "--prune_fade=0.5", "--train_num=4", "--val_num=2", "--crop=40x72",
          "--eval_size=40x72", "--workers=0", "--batch_size=2", "--targets=synthetic:fog", "--finetune_iters=1",
          "--sens_every=1", "--sens_batch=2", "--sens_k=2", "--log_every=1", "--out", str(out)])
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    masks = state["fade_masks"]  # kept with the run: a resume after the fade began prunes the same units
    dense = npdg.load_model(out / "dense.pt").eval()
    groups = {g.name: g for g in dense.prunable_units()}
    assert sum(int((~m).sum()) for m in masks.values()) > 0
    for name, keep in masks.items():
        assert torch.all(groups[name].gamma()[~keep] == 0)
    small = compact(dense, masks).eval().double()
    x = torch.randn(2, 3, 40, 72, dtype=torch.float64)
    with torch.no_grad():  # float64: only summation order differs, so the prune removed nothing alive
        torch.testing.assert_close(small(x), dense.double()(x), rtol=1e-10, atol=1e-10)
    final = npdg.load_model(out / "final.pt")
    widths = {g.name: g.size for g in final.prunable_units()}
    assert widths == {n: int(m.sum()) for n, m in masks.items()}


def test_prune_fade_is_range_checked():
    for bad in ("-0.1", "1", "1.5"):
        with pytest.raises(ConfigError, match="prune_fade"):
            load_config(None, [f"--prune_fade={bad}"])
