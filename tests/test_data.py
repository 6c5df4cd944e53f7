"""Embedded synthetic benchmark, transforms, spec parsing and the export CLI."""

import numpy as np
import pytest
import torch
from PIL import Image

from npdg.data import (
    CLASSES,
    DOMAINS,
    TARGET_DOMAINS,
    SpecError,
    SyntheticSegmentation,
    build_dataset,
    parse_spec,
)
from npdg.data.__main__ import main as data_main
from npdg.data.transforms import TrainAugment, denormalize, gaussian_blur, normalize

SIZE = (48, 96)
ALL_KINDS = "synthetic, folder, cityscapes, gta5, bdd100k, mapillary, synthia"


def test_domains_listed():
    assert DOMAINS[0] == "source" and len(TARGET_DOMAINS) >= 4
    assert set(TARGET_DOMAINS) >= {"night", "fog", "rain", "snow", "painted"}


def test_deterministic_per_seed_index_split():
    a = SyntheticSegmentation("source", "train", SIZE, num=3, seed=5)
    b = SyntheticSegmentation("source", "train", SIZE, num=3, seed=5)
    for i in range(3):
        ia, la = a.raw(i)
        ib, lb = b.raw(i)
        assert np.array_equal(ia, ib) and np.array_equal(la, lb)
    # random access order does not matter
    fresh = SyntheticSegmentation("source", "train", SIZE, num=3, seed=5)
    assert np.array_equal(a.raw(2)[0], fresh.raw(2)[0])
    # other seed / split -> other scene
    other_seed = SyntheticSegmentation("source", "train", SIZE, num=3, seed=6)
    other_split = SyntheticSegmentation("source", "val", SIZE, num=3, seed=5)
    assert not np.array_equal(a.raw(0)[1], other_seed.raw(0)[1])
    assert not np.array_equal(a.raw(0)[1], other_split.raw(0)[1])


def test_train_and_val_scenes_are_disjoint():
    train = SyntheticSegmentation("source", "train", (16, 32), num=40)
    val = SyntheticSegmentation("source", "val", (16, 32), num=40)
    train_labels = {train.raw(i)[1].tobytes() for i in range(40)}
    assert not any(val.raw(i)[1].tobytes() in train_labels for i in range(40))


def test_class_coverage_and_label_values():
    ds = SyntheticSegmentation("source", "val", (96, 192), num=12)
    seen = set()
    for i in range(len(ds)):
        image, label = ds.raw(i)
        assert image.dtype == np.uint8 and image.shape == (96, 192, 3)
        assert label.dtype == np.uint8 and label.shape == (96, 192)
        assert label.max() < len(CLASSES)
        seen |= set(np.unique(label).tolist())
    names = {CLASSES[c] for c in seen}
    assert len(seen) >= 10, names
    assert {"road", "sidewalk", "building", "pole", "vegetation", "sky", "person", "car"} <= names


@pytest.mark.parametrize("domain", [d for d in DOMAINS if d != "source"])
def test_domains_share_labels_but_not_appearance(domain):
    src = SyntheticSegmentation("source", "val", SIZE, num=2)
    tgt = SyntheticSegmentation(domain, "val", SIZE, num=2)
    for i in range(2):
        (si, sl), (ti, tl) = src.raw(i), tgt.raw(i)
        assert np.array_equal(sl, tl)
        assert np.abs(si.astype(float) - ti.astype(float)).mean() > 10  # grey levels out of 255


def test_any_resolution_same_scene():
    small = SyntheticSegmentation("source", "val", (32, 64), num=1).raw(0)[1]
    large = SyntheticSegmentation("source", "val", (64, 128), num=1).raw(0)[1]
    assert large.shape == (64, 128)
    # the same scene: the large label map downsampled (nearest) mostly agrees with the small one
    assert (large[::2, ::2] == small).mean() > 0.9


def test_getitem_contract_and_normalization():
    ds = SyntheticSegmentation("fog", "val", SIZE, num=1)
    image, label = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, *SIZE)
    assert label.dtype == torch.int64 and label.shape == SIZE
    raw = torch.from_numpy(ds.raw(0)[0]).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(denormalize(image), raw, atol=1e-5, rtol=0)
    plain = SyntheticSegmentation("fog", "val", SIZE, num=1, normalize=False)[0][0]
    torch.testing.assert_close(plain, raw)
    torch.testing.assert_close(normalize(plain), image)
    with pytest.raises(IndexError):
        ds[1]


def test_train_augment_deterministic_and_label_safe():
    aug = TrainAugment((40, 60), scale_range=(0.5, 1.5), blur_prob=0.5, jitter=0.3)
    ds = SyntheticSegmentation("source", "train", SIZE, num=4, transform=aug, normalize=False)
    a = [ds[i] for i in range(4)]
    b = [ds[i] for i in range(4)]
    for (ia, la), (ib, lb) in zip(a, b, strict=True):
        assert ia.shape == (3, 40, 60) and la.shape == (40, 60)
        assert torch.equal(ia, ib) and torch.equal(la, lb)
        assert set(la.unique().tolist()) <= set(range(19)) | {255}  # nearest resize, 255 padding only
    ds.set_epoch(1)
    assert any(not torch.equal(a[i][0], ds[i][0]) for i in range(4))
    # small scale forces padding: padded label pixels are 255, padded image pixels 0
    img, lab = TrainAugment((64, 128), scale_range=(0.5, 0.5), flip=False)(
        torch.rand(3, 32, 64), torch.zeros(32, 64, dtype=torch.long), torch.Generator().manual_seed(0))
    assert (lab[16:] == 255).all() and (lab[:16, :32] == 0).all() and (img[:, 16:] == 0).all()


def test_gaussian_blur_preserves_mean_of_constant():
    img = torch.full((3, 10, 12), 0.4)
    torch.testing.assert_close(gaussian_blur(img, 1.5), img)


def test_spec_parsing_and_errors():
    assert parse_spec("folder:/x/y") == ("folder", "/x/y")
    assert parse_spec("synthetic:fog") == ("synthetic", "fog")
    for bad in ("nope:/x", "synthetic", "cityscapes:", "imagenet:/data"):
        with pytest.raises(SpecError, match=ALL_KINDS):
            parse_spec(bad)
    with pytest.raises(SpecError, match="painted"):
        build_dataset("synthetic:mars")
    ds = build_dataset("synthetic:snow", size=(16, 32), num=3)
    assert isinstance(ds, SyntheticSegmentation) and ds.split == "val" and len(ds) == 3


def test_export_cli_round_trip(tmp_path):
    out = tmp_path / "night"
    assert data_main(["export", "--domain", "night", "--split", "val", "--num", "3", "--out", str(out),
                      "--size", "24x40", "--seed", "3"]) == 0
    ds = SyntheticSegmentation("night", "val", (24, 40), num=3, seed=3)
    images = sorted((out / "images").glob("*.png"))
    labels = sorted((out / "labels").glob("*.png"))
    assert [p.name for p in images] == [p.name for p in labels] and len(images) == 3
    for i, (ip, lp) in enumerate(zip(images, labels, strict=True)):
        assert np.array_equal(np.asarray(Image.open(ip)), ds.raw(i)[0])
        assert np.array_equal(np.asarray(Image.open(lp)), ds.raw(i)[1])
    folder = build_dataset(f"folder:{out}")
    assert len(folder) == 3
    for i in range(3):
        torch.testing.assert_close(folder[i][0], ds[i][0])
        assert torch.equal(folder[i][1], ds[i][1])
    with pytest.raises(SystemExit):
        data_main(["export", "--domain", "mars", "--num", "1", "--out", str(out)])


def test_preview_cli(tmp_path):
    assert data_main(["preview", "--out", str(tmp_path / "p.png"), "--num", "2", "--size", "16x32"]) == 0
    assert Image.open(tmp_path / "p.png").size == (32 * (len(DOMAINS) + 1), 32)
