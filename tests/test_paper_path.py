"""The paper's setting walked end to end on CPU: every gta5_cityscapes_* preset, on small real-layout trees
exported by ``npdg.data.export`` (GTA5 -> Cityscapes / BDD100K / Mapillary), with steps, batch and crop
overridden down to seconds -- train -> prune -> compact -> fine-tune -> evaluate, each target at the size
its protocol says; plus the dry run and its one-line failures."""

import json

import pytest
import torch

from npdg.data.export import export_layout
from npdg.eval import main as eval_main
from npdg.models import create_model
from npdg.train import main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_intra_op_thread")]

PRESET_MODELS = {"gta5_cityscapes_r50": "deeplabv3plus_r50", "gta5_cityscapes_r101": "deeplabv3plus_r101",
                 "gta5_cityscapes_vgg16": "deeplab_vgg16", "gta5_cityscapes_mitb5": "segformer_b5"}
GTA5, CS, BDD, MAP = (48, 96), (40, 80), (36, 64), (40, 60)
SMALL = ["--device=cpu", "--iters=2", "--finetune_iters=1", "--batch_size=2", "--crop=32x32", "--workers=0",
         "--sens_every=1", "--sens_batch=2", "--sens_k=2", "--log_every=1", "--ckpt_every=100"]


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper_trees")
    export_layout("gta5", "source", "train", 4, root / "gta5", size=GTA5, progress=False)
    export_layout("gta5", "source", "val", 2, root / "gta5", size=GTA5, progress=False)
    export_layout("cityscapes", "night", "val", 2, root / "cityscapes", size=CS, progress=False)
    export_layout("bdd100k", "fog", "val", 2, root / "bdd100k", size=BDD, progress=False)
    export_layout("mapillary", "rain", "validation", 2, root / "mapillary", size=MAP, progress=False)
    return root


def _data_args(trees, weights):
    return [f"--source=gta5:{trees / 'gta5'}",
            f"--targets=cityscapes:{trees / 'cityscapes'},bdd100k:{trees / 'bdd100k'},mapillary:{trees / 'mapillary'}",
            f"--pretrained={weights}"]


def _weights(tmp_path, model):
    path = tmp_path / f"{model}_backbone.pth"
    torch.save(create_model(model).backbone.state_dict(), path)
    return path


@pytest.mark.parametrize("preset", sorted(PRESET_MODELS))
def test_paper_preset_end_to_end(preset, trees, tmp_path):
    out = tmp_path / "run"
    # the preset's own protocol, with Mapillary's 1536 resize scaled down to these tiny trees
    protocol = "--eval_protocol=gta5=native,cityscapes=native,bdd100k=native,mapillary=height:32+crop:32x48"
    main(["--preset", preset, *_data_args(trees, _weights(tmp_path, PRESET_MODELS[preset])), *SMALL, protocol,
          "--out", str(out)])
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == "npdg" and m["model"] == PRESET_MODELS[preset]
    specs = {"source": f"gta5:{trees / 'gta5'}", "cs": f"cityscapes:{trees / 'cityscapes'}",
             "bdd": f"bdd100k:{trees / 'bdd100k'}", "map": f"mapillary:{trees / 'mapillary'}"}
    # every SPEC scored at its protocol's size -- the native sizes of the trees, never eval_size (96x192)
    assert m["eval_sizes"] == {specs["source"]: [list(GTA5)], specs["cs"]: [list(CS)], specs["bdd"]: [list(BDD)],
                               specs["map"]: [[32, 48]]}
    assert m["eval_protocol"][specs["map"]] == "height:32+crop:32x48"
    assert m["eval_protocol"][specs["cs"]] == "native"
    assert set(m["final"]["miou"]) == set(specs.values())
    assert m["final"]["flops"] < m["dense"]["flops"] and m["final"]["params"] < m["dense"]["params"]
    assert (out / "final.pt").is_file() and m["final"]["sensitivity_pruned_vs_kept"]


def test_cityscapes_at_native_1024x2048_by_eval_and_by_training(tmp_path):
    root = tmp_path / "cs"
    export_layout("cityscapes", "fog", "val", 1, root, progress=False)  # native size: 1024x2048
    spec = f"cityscapes:{root}"
    out = tmp_path / "run"
    main(["--method=erm", "--model=deeplabv3plus_r18", "--iters=1", "--train_num=4", "--val_num=1", "--workers=0",
          "--batch_size=2", "--crop=32x64", "--eval_size=32x64", f"--targets={spec}", "--out", str(out)])
    m = json.loads((out / "metrics.json").read_text())
    assert m["eval_sizes"][spec] == [[1024, 2048]] and m["eval_protocol"][spec] == "native"
    assert eval_main(["--checkpoint", str(out / "final.pt"), "--data", spec, "--json", str(tmp_path / "e.json")]) == 0
    res = json.loads((tmp_path / "e.json").read_text())[spec]
    assert res["sizes"] == [[1024, 2048]] and res["protocol"] == "native"
    assert res["miou"] == pytest.approx(m["final"]["miou"][spec])


def test_dry_run_checks_and_prices_the_preset(trees, tmp_path, capsys):
    weights = _weights(tmp_path, "deeplabv3plus_r50")
    result = main(["--preset", "gta5_cityscapes_r50", *_data_args(trees, weights), "--crop=64x64", "--dry_run"])
    assert result["batch"] == 2 and result["config_batch"] == 16
    assert result["train_step_s"] > 0 and result["finetune_step_s"] > 0 and result["sensitivity_s"] > 0
    # each target evaluated at its protocol's size (Mapillary: height 1536, centre 1536x1536)
    assert result["eval"][f"cityscapes:{trees / 'cityscapes'}"]["size"] == list(CS)
    assert result["eval"][f"mapillary:{trees / 'mapillary'}"]["size"] == [1536, 1536]
    p = result["projection_s"]
    assert p["train"] == pytest.approx(40000 * result["train_step_s"] * 16 / 2)
    assert p["total"] > p["train"] and result["memory_estimate_bytes"]["activations"] > 0
    out = capsys.readouterr().out
    assert "every check passed" in out and "budget on this device" in out


@pytest.mark.parametrize("breakage", ["missing_root", "wrong_weights", "label_encoding", "missing_split_file"])
def test_dry_run_fails_in_one_line(breakage, trees, tmp_path, capsys):
    args = _data_args(trees, _weights(tmp_path, "deeplabv3plus_r50"))
    if breakage == "missing_root":
        args[1] = f"--targets=cityscapes:{tmp_path / 'nowhere'}"
        expect = "nowhere"
    elif breakage == "wrong_weights":
        args[2] = f"--pretrained={_weights(tmp_path, 'deeplab_vgg16')}"
        expect = "deeplab_vgg16_backbone.pth"
    elif breakage == "missing_split_file":
        args[0] = f"--source=gta5:{tmp_path / 'gta5'}"
        export_layout("gta5", "source", "all", 2, tmp_path / "gta5", size=GTA5, progress=False)
        expect = "train.txt"
    else:  # GTA5 labels that decode to nothing (train-id PNGs where Cityscapes label ids belong)
        import shutil

        from PIL import Image

        shutil.copytree(trees / "gta5", tmp_path / "gta5")
        for lab in (tmp_path / "gta5" / "labels").glob("*.png"):
            with Image.open(lab) as im:
                Image.new("L", im.size, 255).save(lab)
        args[0] = f"--source=gta5:{tmp_path / 'gta5'}"
        expect = "another encoding"
    with pytest.raises(SystemExit) as exit_info:
        main(["--preset", "gta5_cityscapes_r50", *args, "--crop=64x64", "--dry_run"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0], err
