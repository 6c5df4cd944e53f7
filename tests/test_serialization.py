"""npdg.save_model / load_model: the one-file format, pruned widths, training checkpoints."""

from __future__ import annotations

import pytest
import torch

import npdg
from npdg.models import create_model
from npdg.serialization import model_payload

ODD = (33, 45)


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def test_pruned_widths_survive_save_load_and_training_checkpoint(tmp_path):
    m = create_model("segformer_b0", num_classes=3)
    widths = m.widths()
    widths["backbone.stages.1.blocks.0.attn.head_gate"] = 1
    widths["backbone.stages.0.blocks.1.mlp.hidden_gate"] = 40
    widths["head.fuse.bn"] = 24
    small = create_model("segformer_b0", num_classes=3, widths=widths).eval()
    assert small.widths() == widths
    ckpt = {"model": model_payload(small), "optimizer": {}, "step": 7, "config": {"a": 1}}
    torch.save(ckpt, tmp_path / "ckpt.pt")
    loaded = npdg.load_model(tmp_path / "ckpt.pt").eval()
    assert loaded.widths() == widths
    x = torch.randn(1, 3, *ODD)
    with torch.no_grad():
        assert torch.equal(loaded(x), small(x))


def test_pruned_resnet_round_trip(tmp_path):
    widths = {
        "backbone.layer1.0.bn1": 8,
        "backbone.layer4.1.bn1": 16,
        "head.aspp.branches.4.bn": 8,
        "head.reduce.bn": 16,
    }
    m = create_model("deeplabv3plus_r18", num_classes=4, output_stride=8, widths=widths).eval()
    assert {k: m.widths()[k] for k in widths} == widths
    npdg.save_model(m, tmp_path / "m.pt")
    loaded = npdg.load_model(tmp_path / "m.pt").eval()
    assert loaded.arch_config() == m.arch_config()
    x = torch.randn(1, 3, *ODD)
    with torch.no_grad():
        assert torch.equal(loaded(x), m(x))


def test_rejects_foreign_files(tmp_path):
    torch.save({"weight": torch.zeros(1)}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="npdg-model/1"):
        npdg.load_model(tmp_path / "x.pt")
    with pytest.raises(ValueError, match="registry_name"):
        model_payload(torch.nn.Linear(1, 1))
