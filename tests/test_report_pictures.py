"""The prediction grid of a run's report (npdg.report.prediction_grid): input | ground truth | dense | final."""

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import randomize_
from PIL import Image

from npdg.data import build_dataset
from npdg.data.labels import colorize
from npdg.models import create_model
from npdg.report import PREDICTIONS, prediction_grid

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

SIZE = (32, 64)


def _model(seed):
    torch.manual_seed(seed)
    return randomize_(create_model("deeplabv3plus_r18", num_classes=19), seed=seed)


@pytest.fixture(scope="module")
def models():
    return _model(0), _model(1)


@pytest.fixture(scope="module")
def val_sets():
    return {spec: build_dataset(spec, split="val", size=SIZE, num=2) for spec in ("synthetic:source", "synthetic:fog")}


def _png_size(path):
    with Image.open(path) as im:
        return im.size  # (width, height)


def _prediction(model, x):
    with torch.no_grad():
        out = model(x)
    if out.shape[-2:] != x.shape[-2:]:
        out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return colorize(out.argmax(1)[0].numpy())


def test_panels_are_the_input_the_truth_and_each_models_prediction(tmp_path, models, val_sets):
    dense, final = models
    dense.train()
    final.eval()
    rows = prediction_grid(tmp_path / "p.png", val_sets, dense, final)
    assert (tmp_path / "p.png").is_file()
    assert [name for name, _ in rows] == ["source #0", "source #1", "fog #0", "fog #1"]  # source first, then targets
    assert dense.training and not final.training  # the modes the models came with
    image, label = val_sets["synthetic:fog"][1]
    shown, truth, dense_panel, final_panel = rows[3][1]
    # the input un-normalised by hand with the ImageNet statistics (what the dataset normalised with)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    want = ((image * std[:, None, None] + mean[:, None, None]).clamp(0, 1) * 255).round().byte().permute(1, 2, 0)
    assert np.abs(shown.astype(int) - want.numpy().astype(int)).max() <= 1
    assert truth.shape == (*SIZE, 3) and np.array_equal(truth, colorize(label.numpy()))
    assert (truth[label.numpy() == 255] == 0).all()  # ignore pixels black
    dense.eval()
    assert np.array_equal(dense_panel, _prediction(dense, image[None]))
    assert np.array_equal(final_panel, _prediction(final, image[None]))
    assert not np.array_equal(dense_panel, final_panel)  # two models, two panels


def test_png_grows_with_rows_and_columns_and_skips_empty_sets(tmp_path, models, val_sets):
    dense, final = models
    one = {"synthetic:source": val_sets["synthetic:source"]}
    rows = prediction_grid(tmp_path / "a.png", one, dense, n=1)
    assert len(rows) == 1 and len(rows[0][1]) == 3  # no prune: one "final = dense" column
    assert len(prediction_grid(tmp_path / "b.png", one, dense, final, n=1)[0][1]) == 4
    short = {**val_sets, "synthetic:night": torch.utils.data.Subset(val_sets["synthetic:fog"], [0])}
    rows = prediction_grid(tmp_path / "c.png", short, dense, final, n=3)  # each set shows what it has
    assert [name for name, _ in rows] == ["source #0", "source #1", "fog #0", "fog #1", "night #0"]
    (wa, ha), (wb, hb), (wc, hc) = (_png_size(tmp_path / f"{k}.png") for k in "abc")
    assert wb > wa and hb == ha  # a fourth column widens it
    assert wc == wb and hc > 3 * hb  # five rows instead of one
    empty = {"synthetic:fog": torch.utils.data.Subset(val_sets["synthetic:fog"], [])}
    assert prediction_grid(tmp_path / "d.png", {**one, **empty}, dense, n=1)[0][0] == "source #0"
    assert prediction_grid(tmp_path / "e.png", empty, dense) == [] and not (tmp_path / "e.png").exists()


def test_a_tiny_runs_report_shows_the_predictions(tmp_path):
    from npdg.train import main

    out = tmp_path / "run"
    start = time.perf_counter()
    main(["--iters=1", "--train_num=2", "--val_num=1", "--crop=40x72", "--eval_size=40x72", "--workers=0",
          "--batch_size=2", "--log_every=1", "--targets=synthetic:fog", "--finetune_iters=1", "--ckpt_every=1",
          "--method=slimming", "--ratio=0.5", "--out", str(out)])
    print(f"tiny run: {time.perf_counter() - start:.1f} s")
    report = (out / "report.md").read_text()
    assert PREDICTIONS in report and report.index("(kept.png)") < report.index(PREDICTIONS)
    w, h = _png_size(out / "predictions.png")
    assert w > h  # 2 rows (source, fog) of 4 wide panels
