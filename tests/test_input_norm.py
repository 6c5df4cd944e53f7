"""``input_norm``: the model standardises each input image per channel before its first layer.

With it, a per-image, per-channel affine change of the input (brightness, contrast, tint) leaves the logits
unchanged; it survives save/load, compaction, a training run and ONNX export; off, older arch configs rebuild
unchanged.
"""

from __future__ import annotations

import pytest
import torch
from helpers import randomize_, rel_max

from npdg.models import create_model
from npdg.pruning import compact, select_masks
from npdg.serialization import load_model, save_model

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")
MODELS = ["deeplabv3plus_r18", "deeplab_vgg16", "segformer_b0"]


def _images(seed=0, n=2, size=(48, 96)):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, *size, generator=gen, dtype=torch.float64)


def _affine(x, seed=1):
    """Each image and channel scaled by a in [0.5, 2] and shifted by b in [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    a = 0.5 + 1.5 * torch.rand(x.shape[0], 3, 1, 1, generator=gen, dtype=x.dtype)
    b = 2 * torch.rand(x.shape[0], 3, 1, 1, generator=gen, dtype=x.dtype) - 1
    return a * x + b


def _model(name, input_norm=True):
    torch.manual_seed(0)
    return randomize_(create_model(name, num_classes=5, input_norm=input_norm)).double().eval()


def test_normalize_input_matches_float64_reference():
    x = _images() * 3 + 0.7
    model = _model("deeplabv3plus_r18")
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = x.var(dim=(2, 3), unbiased=False, keepdim=True)
    expected = (x - mean) / (var + 1e-5).sqrt()
    assert torch.allclose(model.normalize_input(x), expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(_model("deeplabv3plus_r18", input_norm=False).normalize_input(x), x)


@pytest.mark.parametrize("name", MODELS)
def test_logits_invariant_to_per_channel_affine_input(name):
    x = _images()
    with torch.no_grad():
        on = _model(name)
        assert rel_max(on(_affine(x)), on(x)) < 1e-4
        off = _model(name, input_norm=False)  # the same check sees the shift without the normalisation
        assert rel_max(off(_affine(x)), off(x)) > 1e-2


def test_arch_config_save_load_and_compaction_keep_it(tmp_path):
    assert "input_norm" not in create_model("deeplabv3plus_r18", num_classes=5).arch_config()  # old configs
    model = _model("deeplabv3plus_r18")
    assert model.arch_config()["input_norm"] is True
    save_model(model.float(), tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt")
    assert loaded.input_norm
    gen = torch.Generator().manual_seed(3)
    scores = {g.name: torch.rand(g.size, generator=gen) for g in loaded.prunable_units()}
    small = compact(loaded, select_masks(loaded, ratio=0.3, scores=scores)).double().eval()
    assert small.input_norm and small.widths() != loaded.widths()
    x = _images()
    with torch.no_grad():
        assert rel_max(small(_affine(x)), small(x)) < 1e-4


def test_training_run_builds_the_model_with_it(tmp_path):
    from test_train import TINY

    from npdg.train import main

    main(TINY + ["--method=slimming", "--ratio=0.5", "--round_to=4", "--input_norm", "--out", str(tmp_path / "r")])
    for file in ("dense.pt", "final.pt"):
        assert load_model(tmp_path / "r" / file).input_norm


def test_onnx_export_keeps_it(tmp_path):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    import numpy as np
    import onnxruntime as ort

    from npdg import export as E

    model = _model("deeplabv3plus_r18").float()
    info = E.export_model(model, "onnx", tmp_path / "m.onnx", size=(48, 96))
    assert info["checks"][0]["ok"]
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    x = _images(n=1).float()
    (name,) = [i.name for i in session.get_inputs()]
    plain, shifted = (session.run(None, {name: v.numpy()})[0] for v in (x, _affine(x.double()).float()))
    assert np.abs(plain - shifted).max() <= 1e-3 * np.abs(plain).max()


@pytest.mark.parametrize("method, expected", [("npdg", True), ("erm", True), ("dsp", True), ("slimming", True)])
def test_method_default(method, expected):  # on for every method on a CNN since issue 32 (fair defaults)
    from npdg.config import load_config

    assert load_config(None, [f"--method={method}"]).input_norm is expected
    assert load_config(None, [f"--method={method}", "--input_norm=none"]).input_norm is expected
    assert load_config(None, [f"--method={method}", "--input_norm=false"]).input_norm is False
    assert load_config(None, [f"--method={method}", "--input_norm"]).input_norm is True
    mit = ["--model=segformer_b0", f"--method={method}"]  # off by default on a MiT model; on when asked
    assert load_config(None, mit).input_norm is False and load_config(None, mit + ["--input_norm"]).input_norm is True


def test_resume_of_a_run_from_before_the_key_keeps_it_off(tmp_path):
    from npdg import checkpoint
    from npdg.config import load_config
    from npdg.train import prepare_run_dir

    cfg = load_config(None, ["--method=npdg"])
    stored = {k: v for k, v in cfg.to_dict().items() if k != "input_norm"}  # a config.json from before the key
    torch.save({"format": checkpoint.RUN_FORMAT, "config": stored}, tmp_path / checkpoint.STATE)
    assert prepare_run_dir(cfg, str(tmp_path))[0].input_norm is False
    torch.save({"format": checkpoint.RUN_FORMAT, "config": cfg.to_dict()}, tmp_path / checkpoint.STATE)
    assert prepare_run_dir(cfg, str(tmp_path))[0].input_norm is True
