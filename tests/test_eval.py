"""evaluate() and the ``python -m npdg.eval`` CLI."""

import json

import pytest
import torch
from torch import nn

import npdg
from npdg.data import CLASSES, build_dataset
from npdg.data.__main__ import export
from npdg.eval import evaluate, main, sliding_logits
from npdg.metrics import ConfusionMatrix

SIZE = (32, 64)


class Oracle(nn.Module):
    """Predicts a fixed label map (as one-hot logits) whatever the input: a known-answer model."""

    def __init__(self, labels):
        super().__init__()
        self.labels = labels

    def forward(self, x):
        idx = self.labels[: x.shape[0]].clamp(max=18)
        return nn.functional.one_hot(idx, 19).permute(0, 3, 1, 2).float()


def test_evaluate_matches_confusion_matrix_and_restores_mode():
    ds = build_dataset("synthetic:rain", size=SIZE, num=5)
    labels = torch.stack([ds[i][1] for i in range(5)])
    noisy = labels.clone()
    noisy[:, :8] = 0  # top rows wrongly called road
    model = Oracle(noisy).train()
    result = evaluate(model, ds, batch_size=5, progress=False)
    cm = ConfusionMatrix().update(noisy.clamp(max=18), labels)
    assert result["miou"] == pytest.approx(100 * cm.miou())
    assert list(result["per_class"]) == list(CLASSES)
    assert result["per_class"]["train"] is None  # never in the synthetic scenes
    assert model.training
    perfect = evaluate(Oracle(labels), ds, batch_size=5, progress=False)
    assert perfect["miou"] == pytest.approx(100.0)


def test_sliding_window_equals_whole_image_for_pointwise_model():
    torch.manual_seed(0)
    model = nn.Conv2d(3, 19, 1)
    images = torch.randn(2, 3, 21, 30)
    whole = model(images)
    for window, stride in (((12, 16), (9, 14)), ((21, 30), (21, 30)), ((32, 40), (16, 16))):  # incl. larger
        torch.testing.assert_close(sliding_logits(model, images, window, stride, 19), whole)
    ds = build_dataset("synthetic:fog", size=SIZE, num=3)
    a = evaluate(model, ds, batch_size=2, progress=False)
    b = evaluate(model, ds, batch_size=3, progress=False, sliding=True, window=(16, 24), stride=(8, 12))
    assert a == b


def test_variable_size_samples_are_batched_by_shape():
    class Mixed(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            h = 8 if i < 2 else 10
            return torch.zeros(3, h, 12), torch.full((h, 12), i % 2, dtype=torch.long)

    model = nn.Conv2d(3, 19, 1)
    nn.init.zeros_(model.weight)
    with torch.no_grad():
        model.bias.copy_(torch.arange(19.0).neg())  # always predicts class 0
    result = evaluate(model, Mixed(), batch_size=3, progress=False)
    assert result["per_class"]["road"] == pytest.approx(100 * (8 * 12 + 10 * 12) / (2 * 8 * 12 + 10 * 12))
    assert result["per_class"]["sidewalk"] == 0.0


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    from npdg.models import create_model

    torch.manual_seed(0)
    model = create_model("segformer_b0", num_classes=19).eval()
    path = tmp_path_factory.mktemp("model") / "model.pt"
    npdg.save_model(model, path)
    return model, path


def test_cli_folder_round_trip_equals_direct_evaluation(tmp_path, saved_model, capsys):
    model, path = saved_model
    export("painted", "val", 2, tmp_path / "painted", size=SIZE, progress=False)
    out = tmp_path / "res" / "eval.json"
    assert main(["--checkpoint", str(path), "--data", f"folder:{tmp_path / 'painted'}", "--data",
                 "synthetic:painted", "--size", "32x64", "--num", "2", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    folder, synthetic = results[f"folder:{tmp_path / 'painted'}"], results["synthetic:painted"]
    assert set(folder) == {"miou", "per_class", "protocol", "sizes", "miou_definition"}
    assert list(folder["per_class"]) == list(CLASSES)
    assert folder["protocol"] == "size:32x64" and folder["sizes"] == [[32, 64]]
    assert folder == synthetic  # exported PNGs are bit-exact, so identical numbers
    direct = evaluate(model, build_dataset("synthetic:painted", size=SIZE, num=2), progress=False)
    assert synthetic["miou"] == pytest.approx(direct["miou"])
    table = capsys.readouterr().out
    assert "mIoU (%)" in table and "road" in table


def test_cli_accepts_training_checkpoint(tmp_path, saved_model):
    from npdg.serialization import model_payload

    model, _ = saved_model
    ckpt = tmp_path / "checkpoint.pt"
    torch.save({"model": model_payload(model), "step": 1, "config": {}}, ckpt)
    out = tmp_path / "r.json"
    assert main(["--checkpoint", str(ckpt), "--data", "synthetic:source", "--size", "32x64", "--num", "1",
                 "--sliding", "--window", "32x32", "--stride", "32x32", "--json", str(out)]) == 0
    assert 0 <= json.loads(out.read_text())["synthetic:source"]["miou"] <= 100


def test_cli_bad_spec_lists_kinds(tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "none.pt"), "--data", "kitti:/x"]) == 2
    err = capsys.readouterr().err
    assert "synthetic, folder, cityscapes, gta5, bdd100k, mapillary, synthia" in err
    assert main(["--checkpoint", str(tmp_path / "none.pt"), "--data", "synthetic:source"]) == 2
    assert "none.pt does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--checkpoint", "x", "--data", "synthetic:source", "--sliding"])  # no --window
    with pytest.raises(SystemExit):
        main(["--checkpoint", "x", "--data", "synthetic:source", "--size", "big"])


def _dist_worker(rank, world, init_file, out_dir):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                         world_size=world)
    try:
        torch.manual_seed(0)
        model = nn.Conv2d(3, 19, 1)
        ds = build_dataset("synthetic:night", size=(16, 32), num=5)
        result = evaluate(model, ds, batch_size=2, progress=False, distributed=True)
        (out_dir / f"{rank}.json").write_text(json.dumps(result))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_distributed_evaluation_sums_shards(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_dist_worker, args=(2, str(tmp_path / "init"), tmp_path), nprocs=2, join=True)
    torch.manual_seed(0)
    expected = evaluate(nn.Conv2d(3, 19, 1), build_dataset("synthetic:night", size=(16, 32), num=5),
                        progress=False)
    for rank in range(2):
        assert json.loads((tmp_path / f"{rank}.json").read_text()) == expected


def test_restyled_split_gives_each_image_a_fixed_rgb_style():
    from npdg.dsp.perturb import pixel_restyle
    from npdg.eval import Restyled

    base = build_dataset("synthetic:source", split="val", size=SIZE, num=3, seed=0)
    styled = Restyled(base, 0.5, seed=4)
    assert len(styled) == 3
    for i in range(3):
        image, label = base[i]
        a, b = styled[i], styled[i]
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], label)  # the same style every time; labels unchanged
        torch.manual_seed(4 * 1_000_003 + i)  # the draws pixel_restyle makes, seeded by (seed, index)
        torch.testing.assert_close(a[0], pixel_restyle(image[None], 0.5)[0])
        assert (a[0] - image).abs().amax() > 0.1
    assert not torch.equal(styled[0][0], Restyled(base, 0.5, seed=5)[0][0])  # another seed, other styles
    torch.manual_seed(123)
    state = torch.get_rng_state()
    styled[1]
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left as it was


def test_cli_restyle_scores_the_restyled_images(tmp_path, saved_model):
    model, path = saved_model
    out = tmp_path / "r.json"
    args = ["--checkpoint", str(path), "--data", "synthetic:source", "--size", "32x64", "--num", "2", "--json",
            str(out)]
    assert main(args + ["--restyle", "0.5"]) == 0
    got = json.loads(out.read_text())["synthetic:source"]
    from npdg.eval import Restyled

    direct = evaluate(model, Restyled(build_dataset("synthetic:source", split="val", size=(32, 64), num=2, seed=0),
                                      0.5), progress=False)
    assert got["restyle"] == 0.5 and got["miou"] == pytest.approx(direct["miou"])
    assert main(args) == 0 and "restyle" not in json.loads(out.read_text())["synthetic:source"]
    for bad in ("-1", "nan", "x"):
        with pytest.raises(SystemExit):
            main(args + ["--restyle", bad])


def test_cli_restyle_notes_an_input_norm_model_is_invariant(tmp_path, capsys):
    from helpers import randomize_

    from npdg.models import create_model
    from npdg.serialization import save_model

    torch.manual_seed(0)
    save_model(randomize_(create_model("deeplabv3plus_r18", input_norm=True)).eval(), tmp_path / "m.pt")
    args = ["--checkpoint", str(tmp_path / "m.pt"), "--data", "synthetic:source", "--size", "32x64", "--num", "2",
            "--json", str(tmp_path / "r.json")]
    assert main(args + ["--restyle", "0.5"]) == 0
    assert "undoes --restyle" in capsys.readouterr().err
    restyled = json.loads((tmp_path / "r.json").read_text())["synthetic:source"]["miou"]
    assert main(args) == 0 and "undoes" not in capsys.readouterr().err
    assert restyled == pytest.approx(json.loads((tmp_path / "r.json").read_text())["synthetic:source"]["miou"],
                                     abs=0.5)
