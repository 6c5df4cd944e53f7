"""Every method's default run is a fair comparison (issue 32): on a given model the same total optimiser steps
and the same input pipeline (input_norm, crop, batch, data), so `python -m npdg.train --method erm` with no other
flag is the baseline NPDG is compared to; the paper presets keep the paper's settings."""

import pytest

from npdg.config import BUDGET, METHODS, load_config

MODELS = ("deeplabv3plus_r18", "deeplab_vgg16", "segformer_b0")
PIPELINE = ("input_norm", "crop", "batch_size", "source", "targets", "train_num", "val_num", "eval_size", "seed",
            "lr", "optimizer")


def total_steps(cfg):
    return cfg.iters + (cfg.finetune_iters if cfg.prunes else 0)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("preset", ["", "quick"])
def test_every_method_default_spends_the_same_steps_on_the_same_inputs(model, preset):
    extra = [f"--preset={preset}"] if preset else []
    cfgs = {m: load_config(None, extra + [f"--method={m}", f"--model={model}"]) for m in METHODS}
    erm = cfgs["erm"]
    assert total_steps(erm) == (BUDGET if not preset else erm.budget) and erm.budget > 0
    for method, cfg in cfgs.items():
        assert total_steps(cfg) == total_steps(erm), method
        for key in PIPELINE:
            assert getattr(cfg, key) == getattr(erm, key), (method, key)


def test_the_default_input_pipeline_is_the_one_npdg_was_measured_with():
    assert load_config(None, ["--method=erm"]).input_norm is True  # the per-image standardisation, for every method
    assert load_config(None, ["--method=erm", "--model=segformer_b0"]).input_norm is False  # off on MiT for all
    npdg = load_config(None, [])
    assert (npdg.iters, npdg.finetune_iters, npdg.budget) == (60, 200, BUDGET)


def test_pruning_methods_prune_to_the_same_flops_by_default():
    for model, target in (("deeplabv3plus_r18", 0.6), ("segformer_b0", 0.75)):
        assert {load_config(None, [f"--method={m}", f"--model={model}"]).flops_target
                for m in ("slimming", "npdg")} == {target}


def test_a_given_iters_turns_the_default_budget_off_and_the_paper_presets_keep_theirs():
    cfg = load_config(None, ["--method=erm", "--iters=30"])
    assert (cfg.budget, cfg.iters) == (0, 30)
    for preset in ("gta5_cityscapes_r50", "gta5_cityscapes_r101", "gta5_cityscapes_vgg16", "gta5_cityscapes_mitb5"):
        for method in METHODS:
            cfg = load_config(None, [f"--preset={preset}", f"--method={method}"])
            assert cfg.budget == 0 and cfg.iters == 40000 and cfg.input_norm is False, (preset, method)
