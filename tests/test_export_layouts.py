"""``python -m npdg.data export --layout ...``: the synthetic benchmark in every real dataset's on-disk layout
reads back through that dataset's loader as the same train ids (and images), at the requested sizes."""

import numpy as np
import pytest
from PIL import Image

import npdg.data.export as ex
from npdg.data import build_dataset
from npdg.data.__main__ import main as data_main
from npdg.data.export import MAPILLARY_SIZES, NATIVE_SIZE, export_layout, image_sizes
from npdg.data.labels import CITYSCAPES_ID_TO_TRAIN
from npdg.data.synthetic import SyntheticSegmentation
from npdg.data.synthia import read_png16

SIZE = (32, 64)
JPEG = {"bdd100k", "mapillary"}
SPLIT = {"cityscapes": "val", "gta5": "val", "bdd100k": "val", "mapillary": "validation", "synthia": "val",
         "folder": None}
REAL = ("cityscapes", "gta5", "bdd100k", "mapillary", "synthia")


def _check_round_trip(ds, layout, sizes, domain, seed, split="val"):
    assert len(ds) == len(sizes)
    for i, size in enumerate(sizes):
        image, label = ds.raw(i)
        ref_image, ref_label = SyntheticSegmentation(domain, split, size=size, num=len(sizes), seed=seed).raw(i)
        assert image.shape == (*size, 3) and label.shape == size
        assert np.array_equal(label, ref_label), f"{layout} sample {i}: train ids differ"
        if layout in JPEG:
            assert np.abs(image.astype(int) - ref_image).mean() < 8, f"{layout} sample {i}: JPEG too far off"
        else:
            assert np.array_equal(image, ref_image), f"{layout} sample {i}: PNG image differs"


@pytest.mark.parametrize("layout", ex.LAYOUTS)
def test_round_trip_every_layout(tmp_path, layout):
    root = export_layout(layout, "fog", "val", 2, tmp_path / layout, size=SIZE, seed=3, progress=False)
    ds = build_dataset(f"{layout}:{root}", split=SPLIT[layout])
    sizes = image_sizes(layout, 2, SIZE)
    if layout != "mapillary":
        assert sizes == [SIZE, SIZE]
    _check_round_trip(ds, layout, sizes, "fog", 3)


def test_on_disk_encoding(tmp_path):
    """Each layout's files carry the dataset's own encoding, not train ids."""
    root = tmp_path / "cs"
    export_layout("cityscapes", "source", "train", 2, root, size=SIZE, progress=False)
    files = sorted((root / "gtFine" / "train").rglob("*_gtFine_labelIds.png"))
    assert [f.parent.name for f in files] == ["aachen", "jena"]  # real city folders, in export order
    raw = np.asarray(Image.open(files[0]))
    assert Image.open(files[0]).mode == "L" and 7 in raw  # road is label id 7
    assert set(np.unique(raw).tolist()) <= set(CITYSCAPES_ID_TO_TRAIN)
    export_layout("bdd100k", "source", "val", 1, tmp_path / "b", size=SIZE, progress=False)
    assert [p.suffix for p in (tmp_path / "b" / "images" / "10k" / "val").iterdir()] == [".jpg"]
    assert Image.open(next((tmp_path / "b" / "labels" / "sem_seg" / "masks" / "val").iterdir())).mode == "L"
    export_layout("gta5", "source", "val", 1, tmp_path / "g", size=SIZE, progress=False)
    assert Image.open(tmp_path / "g" / "labels" / "30001.png").mode == "P"
    assert (tmp_path / "g" / "val.txt").read_text() == "30001.png\n"
    export_layout("mapillary", "source", "val", 1, tmp_path / "m", size=SIZE, progress=False)
    m = Image.open(next((tmp_path / "m" / "validation" / "labels").glob("*.png")))
    assert m.mode == "P" and np.asarray(m).max() < 66
    export_layout("synthia", "source", "all", 1, tmp_path / "s", size=SIZE, progress=False)
    assert not list((tmp_path / "s").glob("*.txt"))
    path = tmp_path / "s" / "GT" / "LABELS" / "0000000.png"
    with Image.open(path) as im:
        assert im.mode == "RGB" and im.tile[0][3] == "RGB;16B"  # a real 16-bit colour PNG
    values = read_png16(path)
    assert values.shape == (*SIZE, 3) and values[..., 0].max() <= 22 and values[..., 1].max() > 255
    assert not values[..., 2].any()


def test_write_png16_exact(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.integers(0, 65536, (7, 11, 3))
    ex.write_png16(tmp_path / "a.png", values)
    assert np.array_equal(read_png16(tmp_path / "a.png"), values)


class _AllIds(SyntheticSegmentation):
    """Synthetic samples whose label also holds every train id and ignore (the generator never draws
    rider / train / motorcycle / bicycle / 255)."""

    def load(self, index):
        image, label = super().load(index)
        label = label.copy()
        label[0, :20] = [*range(19), 255]
        return image, label


@pytest.mark.parametrize("layout", REAL)
def test_every_train_id_and_ignore_round_trip(tmp_path, monkeypatch, layout):
    monkeypatch.setattr(ex, "SyntheticSegmentation", _AllIds)
    root = export_layout(layout, "source", "val", 1, tmp_path, size=SIZE, progress=False, fixed_size=True)
    label = build_dataset(f"{layout}:{root}", split=SPLIT[layout]).raw(0)[1]
    assert label[0, :20].tolist() == [*range(19), 255]
    assert np.array_equal(label, _AllIds("source", "val", size=SIZE, num=1).raw(0)[1])


def test_mapillary_sizes_vary(tmp_path):
    sizes = image_sizes("mapillary", 6, SIZE)
    assert len(set(sizes)) == 5 and sizes[0] == SIZE and sizes[5] == SIZE
    assert any(h > SIZE[0] for h, _ in sizes) and any(h / w != SIZE[0] / SIZE[1] for h, w in sizes)
    assert image_sizes("mapillary", 3, SIZE, fixed_size=True) == [SIZE] * 3
    assert image_sizes("mapillary", 7) == [*MAPILLARY_SIZES, *MAPILLARY_SIZES[:2]]
    assert image_sizes("mapillary", 1, fixed_size=True) == [NATIVE_SIZE["mapillary"]]
    root = export_layout("mapillary", "rain", "train", 5, tmp_path, size=SIZE, seed=1, progress=False)
    ds = build_dataset(f"mapillary:{root}", split="train")
    assert len({ds.raw(i)[0].shape for i in range(5)}) == 5  # the loader returns each at its own size
    _check_round_trip(ds, "mapillary", image_sizes("mapillary", 5, SIZE), "rain", 1, split="train")


def test_gta5_splits_share_a_root(tmp_path):
    export_layout("gta5", "night", "train", 2, tmp_path, size=SIZE, progress=False)
    export_layout("gta5", "night", "val", 1, tmp_path, size=SIZE, progress=False)
    assert len(build_dataset(f"gta5:{tmp_path}")) == 3  # split='all': every pair
    for split, n in (("train", 2), ("val", 1)):
        ds = build_dataset(f"gta5:{tmp_path}", split=split)
        _check_round_trip(ds, "gta5", [SIZE] * n, "night", 0, split=split)


def test_native_sizes():
    assert NATIVE_SIZE == {"folder": (128, 256), "cityscapes": (1024, 2048), "gta5": (1052, 1914),
                           "bdd100k": (720, 1280), "mapillary": (2448, 3264), "synthia": (760, 1280)}
    for layout in ex.LAYOUTS:
        if layout != "mapillary":
            assert image_sizes(layout, 2) == [NATIVE_SIZE[layout]] * 2


def test_cli_default_is_native_size(tmp_path, capsys):
    """One real 1024x2048 Cityscapes image (about 1 s) through the CLI and the loader."""
    assert data_main(["export", "--layout", "cityscapes", "--domain", "source", "--num", "1",
                      "--out", str(tmp_path)]) == 0
    ds = build_dataset(f"cityscapes:{tmp_path}", split="val")
    _check_round_trip(ds, "cityscapes", [(1024, 2048)], "source", 0)


def test_cli_folder_default_unchanged(tmp_path):
    assert data_main(["export", "--domain", "snow", "--num", "1", "--out", str(tmp_path)]) == 0
    ds = build_dataset(f"folder:{tmp_path}")
    _check_round_trip(ds, "folder", [(128, 256)], "snow", 0)


@pytest.mark.parametrize("argv", [
    ["--layout", "kitti"],
    ["--layout", "cityscapes", "--split", "all"],
    ["--layout", "mapillary", "--split", "all"],
    ["--layout", "gta5", "--split", "training"],
    ["--layout", "bdd100k", "--split", "validation"],
    ["--split", "all"],  # folder
    ["--layout", "synthia", "--size", "4x4"],
])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys, argv):
    with pytest.raises(SystemExit) as info:
        data_main(["export", "--domain", "fog", "--num", "1", "--out", str(tmp_path / "o"), *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "error" in err
    assert not (tmp_path / "o").exists()


def test_api_bad_input():
    with pytest.raises(ex.DatasetError, match="cityscapes has no split 'all'"):
        export_layout("cityscapes", "fog", "all", 1, "unused")
    with pytest.raises(ex.DatasetError, match="unknown layout"):
        export_layout("kitti", "fog", "val", 1, "unused")
    assert ex.resolve_split("mapillary", "val") == "validation"
