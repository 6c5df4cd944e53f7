"""The field's numbers (issue 32): ``npdg.eval`` equals the official Cityscapes scripts (cityscapesscripts'
``evalPixelLevelSemanticLabeling``) on the same predictions, overall and per class, for a model that predicts
classes absent from the labels; ``--save_pred`` writes the predictions in the dataset's own encoding, which
cityscapesscripts scores from the files alone; bad ``--save_pred`` input is refused before any work."""

import json
from pathlib import Path

import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as cs_eval  # a test dependency (install.sh)
import numpy as np
import pytest
import torch
from helpers import randomize_, run_main
from PIL import Image

import npdg
from npdg.data.export import export_layout
from npdg.data.labels import CITYSCAPES_LUT, CLASSES, TRAIN_TO_CITYSCAPES_ID
from npdg.eval import main as eval_main
from npdg.models import create_model

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

SIZE = (48, 96)


@pytest.fixture(scope="module")
def tree_and_model(tmp_path_factory):
    """A Cityscapes-layout tree of six fog scenes and a random model (it predicts classes the labels lack)."""
    root = tmp_path_factory.mktemp("cs")
    export_layout("cityscapes", "fog", "val", 6, root / "cs", size=SIZE, progress=False)
    torch.manual_seed(0)
    model = randomize_(create_model("deeplabv3plus_r18", num_classes=19), seed=3).eval()
    save_model = root / "model.pt"
    npdg.save_model(model, save_model)
    return root / "cs", save_model


def cityscapes_scores(pred_dir: Path, gt_root: Path) -> dict:
    """cityscapesscripts' own evaluation of the PNGs under pred_dir against gt_root's gtFine labels."""
    args = cs_eval.args
    args.predictionPath, args.predictionWalk = str(pred_dir), None
    args.evalInstLevelScore, args.JSONOutput, args.quiet, args.evalPixelAccuracy = False, False, True, False
    gts = sorted(str(p) for p in gt_root.glob("gtFine/val/*/*_gtFine_labelIds.png"))
    preds = [cs_eval.getPrediction(args, gt) for gt in gts]
    return cs_eval.evaluateImgLists(preds, gts, args)


def test_eval_equals_cityscapesscripts_overall_and_per_class(tree_and_model, tmp_path, capsys):
    root, ckpt = tree_and_model
    out = tmp_path / "preds"
    code, _, err = run_main(eval_main, ["--checkpoint", str(ckpt), "--data", f"cityscapes:{root}",
                                        "--save_pred", str(out), "--json", str(tmp_path / "m.json")], capsys)
    assert code == 0, err
    ours = json.loads((tmp_path / "m.json").read_text())[f"cityscapes:{root}"]
    assert ours["miou_definition"] == "standard"
    files = sorted(out.rglob("*.png"))
    assert len(files) == 6 and all(f.name.endswith("_leftImg8bit.png") for f in files)

    theirs = cityscapes_scores(out, root)
    labels_present = set()
    predicted = set()
    for gt in root.glob("gtFine/val/*/*_gtFine_labelIds.png"):
        labels_present |= {int(t) for t in np.unique(CITYSCAPES_LUT[np.asarray(Image.open(gt))]) if t != 255}
    for f in files:
        predicted |= set(np.unique(np.asarray(Image.open(f))).tolist())
    absent_but_predicted = {c for c in range(19) if TRAIN_TO_CITYSCAPES_ID[c] in predicted} - labels_present
    assert absent_but_predicted, "the model must predict a class the labels lack, or this test proves nothing"
    for c, name in enumerate(CLASSES):
        theirs_c = theirs["classScores"][name]
        ours_c = ours["per_class"][name]
        if np.isnan(theirs_c):
            assert ours_c is None, name
        else:
            assert ours_c is not None and abs(ours_c / 100 - theirs_c) <= 1e-6, (name, ours_c, theirs_c)
        if c in absent_but_predicted:
            assert ours_c == 0.0
    assert abs(ours["miou"] / 100 - theirs["averageScoreClasses"]) <= 1e-6
    # the legacy mean over the classes in the labels alone would differ: this set tells the two apart
    legacy = np.mean([ours["per_class"][CLASSES[c]] for c in sorted(labels_present)])
    assert abs(legacy - ours["miou"]) > 0.1


def test_save_pred_round_trip_from_the_files_alone(tree_and_model, tmp_path, capsys):
    """Predictions written for the tree, read back by cityscapesscripts alone (no npdg code), give npdg.eval's
    mIoU; the encoding is the label ids, and predictions.json says so."""
    root, ckpt = tree_and_model
    out = tmp_path / "p"
    code, stdout, err = run_main(eval_main, ["--checkpoint", str(ckpt), "--data", f"cityscapes:{root}",
                                             "--save_pred", str(out), "--json", str(tmp_path / "m.json")], capsys)
    assert code == 0, err
    index = json.loads((out / "predictions.json").read_text())
    entry = index[f"cityscapes:{root}"]
    assert entry["encoding"] == "cityscapes_label_ids" and len(entry["files"]) == 6
    values = set()
    for name in entry["files"]:
        im = Image.open(out / entry["folder"] / name)
        assert im.mode == "L" and im.size == (SIZE[1], SIZE[0])
        values |= set(np.unique(np.asarray(im)).tolist())
    assert values <= set(TRAIN_TO_CITYSCAPES_ID.tolist())  # label ids, never train ids like 1 or 2
    ours = json.loads((tmp_path / "m.json").read_text())[f"cityscapes:{root}"]["miou"]
    assert abs(cityscapes_scores(out, root)["averageScoreClasses"] - ours / 100) <= 1e-6


def test_synthetic_and_folder_predictions_are_train_ids(tree_and_model, tmp_path, capsys):
    _, ckpt = tree_and_model
    out = tmp_path / "s"
    code, _, err = run_main(eval_main, ["--checkpoint", str(ckpt), "--data", "synthetic:fog", "--num", "3",
                                        "--size", "32x64", "--save_pred", str(out)], capsys)
    assert code == 0, err
    entry = json.loads((out / "predictions.json").read_text())["synthetic:fog"]
    assert entry["encoding"] == "train_ids" and entry["folder"] == "synthetic_fog"
    model = npdg.load_model(ckpt).eval()
    from npdg.data import build_dataset

    ds = build_dataset("synthetic:fog", size=(32, 64), num=3)
    with torch.no_grad():
        expect = model(ds[1][0][None]).argmax(1)[0].numpy()
    got = np.asarray(Image.open(out / "synthetic_fog" / f"{ds.name(1)}.png"))
    assert np.array_equal(got, expect)


@pytest.mark.parametrize("case", ["nonempty", "mapillary", "resize", "file"])
def test_save_pred_bad_input_is_one_line_exit_2_before_any_work(tree_and_model, tmp_path, capsys, case):
    root, ckpt = tree_and_model
    out = tmp_path / "out"
    data = f"cityscapes:{root}"
    extra = []
    if case == "nonempty":
        out.mkdir()
        (out / "old.png").write_bytes(b"keep")
    elif case == "file":
        out.write_text("keep")
    elif case == "mapillary":
        mroot = tmp_path / "mv"
        export_layout("mapillary", "fog", "val", 1, mroot, size=(32, 64), progress=False, fixed_size=True)
        data = f"mapillary:{mroot}"
    elif case == "resize":
        extra = ["--size", "24x48"]
    code, _, err = run_main(eval_main, ["--checkpoint", str(ckpt), "--data", data, "--save_pred", str(out),
                                        *extra], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(out) in err, err
    if case == "nonempty":
        assert sorted(p.name for p in out.iterdir()) == ["old.png"] and (out / "old.png").read_bytes() == b"keep"
    elif case == "file":
        assert out.read_text() == "keep"
    else:
        assert not out.exists()
