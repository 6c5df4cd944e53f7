"""On-disk loaders: tiny fixture trees in every supported layout, plus the bad-data cases."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from npdg.data import DatasetError, build_dataset
from npdg.data import synthia as synthia_mod
from npdg.data.labels import MAPILLARY_CLASSES, MAPILLARY_PALETTE

H, W = 6, 8
RNG = np.random.default_rng(0)


def write_image(path, h=H, w=W):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(img).save(path, quality=95) if path.suffix == ".jpg" else Image.fromarray(img).save(path)
    return img


def write_ids(path, ids, palette=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(np.asarray(ids, np.uint8))
    if palette:
        im = im.convert("P")  # 'L' -> 'P' keeps indices (greyscale palette)
        assert np.array_equal(np.asarray(im), np.asarray(ids, np.uint8))
    im.save(path)


def png16(values):
    """Encode (H, W, C) uint16 values as a 16-bit PNG using every filter type (exercises unfiltering)."""
    h, w, c = values.shape
    raw = values.astype(">u2").view(np.uint8).reshape(h, w * c * 2).astype(np.int32)
    bpp, rows = 2 * c, []
    for r in range(h):
        x, b = raw[r], raw[r - 1] if r else np.zeros_like(raw[0])
        a = np.concatenate([np.zeros(bpp, np.int32), x[:-bpp]])
        cc = np.concatenate([np.zeros(bpp, np.int32), b[:-bpp]])
        p = a + b - cc
        pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - cc)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, cc))
        f = r % 5
        pred = [0 * x, a, b, (a + b) // 2, paeth][f]
        rows.append(bytes([f]) + ((x - pred) & 255).astype(np.uint8).tobytes())

    def chunk(kind, data):
        crc = struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + kind + data + crc

    ctype = {1: 0, 3: 2, 4: 6}[c]
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b""))


def check(ds, expected_labels):
    assert len(ds) == len(expected_labels)
    for i, expected in enumerate(expected_labels):
        image, label = ds[i]
        assert image.shape == (3, H, W) and label.shape == (H, W)
        assert np.array_equal(label.numpy(), expected)


# --- happy paths -------------------------------------------------------------------------------------

def test_cityscapes(tmp_path):
    ids = np.full((H, W), 7)
    ids[0, :4] = [26, 0, 33, 11]  # car, unlabeled, bicycle, building
    for city, name in (("aachen", "aachen_000000_000019"), ("bonn", "bonn_000001_000019")):
        write_image(tmp_path / "leftImg8bit" / "val" / city / f"{name}_leftImg8bit.png")
        write_ids(tmp_path / "gtFine" / "val" / city / f"{name}_gtFine_labelIds.png", ids)
    expected = np.zeros((H, W))
    expected[0, :4] = [13, 255, 18, 2]
    ds = build_dataset(f"cityscapes:{tmp_path}")
    check(ds, [expected, expected])
    assert ds.name(0) == "aachen_000000_000019_leftImg8bit"


def test_gta5_with_split_list(tmp_path):
    ids = np.full((H, W), 23)  # sky
    ids[1, 1] = 34  # stray id: GTA5 convention -> ignore
    for n in ("00001", "00002"):
        write_image(tmp_path / "images" / f"{n}.png")
        write_ids(tmp_path / "labels" / f"{n}.png", ids, palette=True)
    expected = np.full((H, W), 10)
    expected[1, 1] = 255
    check(build_dataset(f"gta5:{tmp_path}"), [expected, expected])
    (tmp_path / "val.txt").write_text("00002.png\n")
    assert len(build_dataset(f"gta5:{tmp_path}", split="val")) == 1
    with pytest.raises(DatasetError, match="train.txt"):
        build_dataset(f"gta5:{tmp_path}", split="train")


@pytest.mark.parametrize("old_layout", [False, True])
def test_bdd100k(tmp_path, old_layout):
    ids = RNG.integers(0, 19, (H, W))
    ids[0, 0] = 255
    if old_layout:
        write_image(tmp_path / "seg" / "images" / "val" / "a1.jpg")
        write_ids(tmp_path / "seg" / "labels" / "val" / "a1_train_id.png", ids)
    else:
        write_image(tmp_path / "images" / "10k" / "val" / "a1.jpg")
        write_ids(tmp_path / "labels" / "sem_seg" / "masks" / "val" / "a1.png", ids)
    check(build_dataset(f"bdd100k:{tmp_path}"), [ids])


def test_mapillary_ids_and_colours(tmp_path):
    names = [n for n, _ in MAPILLARY_CLASSES]
    ids = np.full((H, W), names.index("construction--flat--road"))
    first = ("object--vehicle--car", "construction--barrier--curb", "nature--sand",
             "object--traffic-sign--back", "human--rider--motorcyclist")
    ids[0, :5] = [names.index(n) for n in first]
    write_image(tmp_path / "validation" / "images" / "a.jpg")
    write_ids(tmp_path / "validation" / "labels" / "a.png", ids, palette=True)
    write_image(tmp_path / "validation" / "images" / "b.jpg")
    Image.fromarray(MAPILLARY_PALETTE[ids]).save(tmp_path / "validation" / "labels" / "b.png")  # RGB-coded
    expected = np.zeros((H, W))
    expected[0, :5] = [13, 1, 9, 255, 12]
    check(build_dataset(f"mapillary:{tmp_path}", split="val"), [expected, expected])


@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize("force_fallback", [False, True])
def test_synthia_16bit_labels(tmp_path, monkeypatch, channels, force_fallback):
    if force_fallback:
        monkeypatch.setattr(synthia_mod, "_pillow_bytes", lambda *a: None)
    cls = RNG.choice([0, 1, 2, 3, 8, 10, 13, 21], (H, W))
    values = np.zeros((H, W, channels), np.uint16)
    values[..., 0] = cls
    values[..., 1] = RNG.integers(0, 60000, (H, W))  # instance ids, must not leak into the class
    write_image(tmp_path / "RGB" / "0000001.png")
    (tmp_path / "GT" / "LABELS").mkdir(parents=True)
    (tmp_path / "GT" / "LABELS" / "0000001.png").write_bytes(png16(values))
    np.testing.assert_array_equal(synthia_mod.read_png16(tmp_path / "GT" / "LABELS" / "0000001.png"), values)
    lut = {0: 255, 1: 10, 2: 2, 3: 0, 8: 13, 10: 11, 13: 255, 21: 3}
    check(build_dataset(f"synthia:{tmp_path}"), [np.vectorize(lut.get)(cls)])


def test_folder_num_and_size(tmp_path):
    for n in ("a", "b", "c"):
        write_image(tmp_path / "images" / f"{n}.png")
        write_ids(tmp_path / "labels" / f"{n}.png", np.full((H, W), 5))
    ds = build_dataset(f"folder:{tmp_path}", num=2, size=(12, 16))
    assert len(ds) == 2 and ds.name(1) == "b"
    image, label = ds[0]
    assert image.shape == (3, 12, 16) and (label == 5).all()


# --- bad data ----------------------------------------------------------------------------------------

def make_folder(root, n=1):
    for i in range(n):
        write_image(root / "images" / f"s{i}.png")
        write_ids(root / "labels" / f"s{i}.png", np.zeros((H, W)))
    return root


def test_missing_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_dataset(f"folder:{tmp_path / 'nowhere'}")
    (tmp_path / "x" / "images").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="labels"):
        build_dataset(f"folder:{tmp_path / 'x'}")
    for kind in ("cityscapes", "gta5", "bdd100k", "mapillary", "synthia"):
        with pytest.raises(FileNotFoundError, match=kind.upper() if kind == "gta5" else "does not exist|no "):
            build_dataset(f"{kind}:{tmp_path / 'x'}")


def test_empty_and_unlabelled(tmp_path):
    (tmp_path / "e" / "images").mkdir(parents=True)
    (tmp_path / "e" / "labels").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        build_dataset(f"folder:{tmp_path / 'e'}")
    root = make_folder(tmp_path / "f", 2)
    (root / "labels" / "s1.png").unlink()
    with pytest.raises(DatasetError, match=r"s1\.png has no label \(expected .*labels/s1\.png\)"):
        build_dataset(f"folder:{root}")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_files(tmp_path, damage):
    root = make_folder(tmp_path, 1)
    for sub in ("images", "labels"):
        path = root / sub / "s0.png"
        data = path.read_bytes()
        path.write_bytes(b"not a png at all" if damage == "garbage" else data[: len(data) // 2])
        with pytest.raises(DatasetError, match=rf"{sub}/s0\.png: cannot read"):
            build_dataset(f"folder:{root}")[0]
        path.write_bytes(data)


def test_label_size_mismatch(tmp_path):
    root = make_folder(tmp_path, 1)
    write_ids(root / "labels" / "s0.png", np.zeros((H + 1, W)))
    with pytest.raises(DatasetError, match=r"s0\.png: label size 8x7 \(WxH\) does not match image .*8x6"):
        build_dataset(f"folder:{root}")[0]


def test_ids_outside_mapping(tmp_path):
    root = make_folder(tmp_path / "folder", 1)
    write_ids(root / "labels" / "s0.png", np.full((H, W), 19))
    with pytest.raises(DatasetError, match=r"s0\.png: label ids \[19\] are not defined"):
        build_dataset(f"folder:{root}")[0]
    cs = tmp_path / "cs"
    write_image(cs / "leftImg8bit" / "val" / "c" / "c_1_leftImg8bit.png")
    write_ids(cs / "gtFine" / "val" / "c" / "c_1_gtFine_labelIds.png", np.full((H, W), 40))
    with pytest.raises(DatasetError, match=r"gtFine_labelIds\.png: label ids \[40\]"):
        build_dataset(f"cityscapes:{cs}")[0]
    mp = tmp_path / "mp"
    write_image(mp / "validation" / "images" / "a.jpg")
    write_ids(mp / "validation" / "labels" / "a.png", np.full((H, W), 66), palette=True)
    with pytest.raises(DatasetError, match=r"a\.png: label ids \[66\]"):
        build_dataset(f"mapillary:{mp}")[0]
    Image.fromarray(np.full((H, W, 3), 7, np.uint8)).save(mp / "validation" / "labels" / "a.png")
    with pytest.raises(DatasetError, match="outside the Mapillary v1.2 palette"):
        build_dataset(f"mapillary:{mp}")[0]
    sy = tmp_path / "sy"
    write_image(sy / "RGB" / "1.png")
    (sy / "GT" / "LABELS").mkdir(parents=True)
    (sy / "GT" / "LABELS" / "1.png").write_bytes(png16(np.full((H, W, 3), 300, np.uint16)))
    with pytest.raises(DatasetError, match=r"1\.png: label ids \[300\]"):
        build_dataset(f"synthia:{sy}")[0]


def test_colour_label_rejected_where_ids_expected(tmp_path):
    root = make_folder(tmp_path, 1)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(root / "labels" / "s0.png")
    with pytest.raises(DatasetError, match="single-channel"):
        build_dataset(f"folder:{root}")[0]
