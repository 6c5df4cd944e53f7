"""``python -m npdg.predict``: a trained model on the user's own images."""

import numpy as np
import pytest
import torch
from helpers import randomize_, run_main
from PIL import Image

import npdg
from npdg.data.labels import PALETTE
from npdg.models import create_model
from npdg.predict import main

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

SIZES = [(24, 40), (40, 72), (32, 48), (24, 40), (36, 64)]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Two tiny models (different weights and BN statistics) saved with npdg.save_model."""
    root = tmp_path_factory.mktemp("models")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = randomize_(create_model("deeplabv3plus_r18", num_classes=19), seed=seed).eval()
        npdg.save_model(model, root / f"m{seed}.pt")
        paths.append(root / f"m{seed}.pt")
    return paths


def write_images(folder, n, sizes=SIZES, seed=0):
    """n smooth random images cycling through ``sizes``, alternately PNG and JPEG -> {stem: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = np.random.default_rng(seed)
    files = {}
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        coarse = gen.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((w, h), Image.BILINEAR)
        path = folder / f"img{i:02d}.{'png' if i % 2 == 0 else 'jpg'}"
        image.save(path)
        files[path.stem] = path
    return files


def rgb(path):
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


def reference_colours(ckpt, path):
    """Cityscapes colours of argmax(model(image)), computed here without npdg.predict / npdg.eval."""
    x = torch.from_numpy(rgb(path)).permute(2, 0, 1).double() / 255
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    with torch.no_grad():
        logits = npdg.load_model(ckpt).eval()(x[None].float())
    assert logits.shape[-2:] == x.shape[-2:]
    ids = logits.argmax(1)[0].numpy()
    assert len(np.unique(ids)) > 1  # several classes: the colour check means something
    return PALETTE[ids]


def test_folder_of_mixed_images(ckpts, tmp_path, capsys):
    files = write_images(tmp_path / "in", 20)
    out = tmp_path / "out"
    code, stdout, _ = run_main(main, [str(ckpts[0]), str(tmp_path / "in"), "--out", str(out), "--batch_size", "3",
                                      "--alpha", "0.25", "--device", "cpu"], capsys)
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}_{k}.png" for s in files for k in ("pred", "overlay"))
    for stem, path in files.items():
        image, pred, overlay = rgb(path), rgb(out / f"{stem}_pred.png"), rgb(out / f"{stem}_overlay.png")
        assert pred.shape == overlay.shape == image.shape  # at the image's own size
        want = 0.75 * image + 0.25 * pred
        assert np.abs(overlay - want).max() <= 0.51
    for stem in ("img00", "img03"):  # one PNG, one JPEG, in batches with other images
        np.testing.assert_array_equal(rgb(out / f"{stem}_pred.png"), reference_colours(ckpts[0], files[stem]))
    assert stdout.strip().splitlines()[-1].startswith("wrote 20 of 20 images (40 files")
    assert str(out) in stdout


def test_size_resizes_every_image(ckpts, tmp_path, capsys):
    files = write_images(tmp_path / "in", 3)
    out = tmp_path / "out"
    code, _, _ = run_main(main, [str(ckpts[0]), *map(str, files.values()), "--out", str(out), "--size", "20x36"],
                          capsys)
    assert code == 0 and len(list(out.iterdir())) == 6
    assert {Image.open(p).size for p in out.iterdir()} == {(36, 20)}


def test_compare_writes_side_by_side_and_names_stay_unique(ckpts, tmp_path, capsys):
    a = write_images(tmp_path / "a", 2)
    write_images(tmp_path / "b", 1, seed=1)  # b/img00.png: the same stem as a/img00.png
    out = tmp_path / "out"
    code, _, _ = run_main(main, [str(ckpts[0]), str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out),
                                 "--compare", str(ckpts[1])], capsys)
    assert code == 0
    names = {"img00", "img01", "img00-2"}
    assert {p.name for p in out.iterdir()} == {f"{n}_{k}.png" for n in names for k in ("pred", "overlay", "compare")}
    image = rgb(a["img00"])
    w = image.shape[1]
    side = rgb(out / "img00_compare.png")
    assert side.shape == (image.shape[0], 3 * w, 3)
    np.testing.assert_array_equal(side[:, :w], image)
    np.testing.assert_array_equal(side[:, w:2 * w], rgb(out / "img00_overlay.png"))
    assert not np.array_equal(side[:, 2 * w:], side[:, w:2 * w])  # the second model predicts differently
    np.testing.assert_array_equal(rgb(out / "img00-2_compare.png")[:, :w], rgb(tmp_path / "b" / "img00.png"))


def test_run_dir_uses_final_then_dense(ckpts, tmp_path, capsys):
    files = write_images(tmp_path / "in", 1)
    run = tmp_path / "run"
    run.mkdir()
    (run / "dense.pt").symlink_to(ckpts[1])
    code, _, _ = run_main(main, [str(run), str(files["img00"]), "--out", str(tmp_path / "dense")], capsys)
    assert code == 0
    (run / "final.pt").symlink_to(ckpts[0])
    for src, out in ((run, "final"), (ckpts[0], "direct")):
        code, _, _ = run_main(main, [str(src), str(files["img00"]), "--out", str(tmp_path / out)], capsys)
        assert code == 0
    pred = {d: (tmp_path / d / "img00_pred.png").read_bytes() for d in ("dense", "final", "direct")}
    assert pred["final"] == pred["direct"] != pred["dense"]


def test_unreadable_images_are_skipped_with_a_warning(ckpts, tmp_path, capsys):
    files = write_images(tmp_path / "in", 4)
    (tmp_path / "in" / "bad.png").write_bytes(b"not an image at all")
    data = (tmp_path / "in" / "img00.png").read_bytes()
    (tmp_path / "in" / "cut.png").write_bytes(data[: len(data) // 2])  # intact header, truncated pixels
    out = tmp_path / "out"
    code, stdout, stderr = run_main(main, [str(ckpts[0]), str(tmp_path / "in"), "--out", str(out)], capsys)
    assert code == 2  # documented: the others are written, the exit code tells scripts something was skipped
    warnings = [ln for ln in stderr.splitlines() if "warning" in ln]
    assert len(warnings) == 2
    assert any("bad.png" in ln for ln in warnings) and any("cut.png" in ln for ln in warnings)
    assert {p.name for p in out.iterdir()} == {f"{s}_{k}.png" for s in files for k in ("pred", "overlay")}
    assert "wrote 4 of 6 images" in stdout and "2 unreadable" in stdout


def test_existing_output_is_never_overwritten(ckpts, tmp_path, capsys):
    write_images(tmp_path / "in", 2)
    out = tmp_path / "out"
    out.mkdir()
    (out / "img01_overlay.png").write_bytes(b"keep me")
    code, stdout, stderr = run_main(main, [str(ckpts[0]), str(tmp_path / "in"), "--out", str(out)], capsys)
    assert code == 2 and not stdout
    assert len(stderr.strip().splitlines()) == 1 and str(out / "img01_overlay.png") in stderr
    assert (out / "img01_overlay.png").read_bytes() == b"keep me"
    assert [p.name for p in out.iterdir()] == ["img01_overlay.png"]  # no work done


@pytest.mark.parametrize("case", ["missing_ckpt", "run_dir_without_model", "no_images", "out_is_a_file",
                                  "missing_input"])
def test_errors_are_one_line(ckpts, tmp_path, capsys, case):
    write_images(tmp_path / "in", 1)
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    ckpt, inputs, out = str(ckpts[0]), str(tmp_path / "in"), str(tmp_path / "out")
    ckpt = {"missing_ckpt": str(tmp_path / "nope.pt"), "run_dir_without_model": str(tmp_path / "empty")}.get(case, ckpt)
    inputs = {"no_images": str(tmp_path / "empty"), "missing_input": str(tmp_path / "gone")}.get(case, inputs)
    out = str(tmp_path / "file") if case == "out_is_a_file" else out
    code, stdout, stderr = run_main(main, [ckpt, inputs, "--out", out], capsys)
    assert code == 2 and not stdout
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m npdg.predict: error:")
    assert {"missing_ckpt": "nope.pt", "run_dir_without_model": "final.pt", "no_images": "no PNG/JPEG",
            "out_is_a_file": "is a file", "missing_input": "gone"}[case] in lines[0]
    assert not (tmp_path / "out").exists()
