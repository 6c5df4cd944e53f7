"""Per-dataset evaluation protocols (npdg.data.protocol) and that a training run scores each SPEC with its own."""

import json

import pytest
import torch

from npdg.config import ConfigError, load_config
from npdg.data.__main__ import export
from npdg.data.labels import IGNORE_INDEX
from npdg.data.protocol import NATIVE_PROTOCOL, Protocol, ProtocolError, parse_overrides, protocol_for
from npdg.train import main

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


@pytest.mark.parametrize("text", ["native", "size:32x64", "height:1536+crop:1536x1536",
                                  "native+sliding:768x768", "height:512+sliding:512x512/256x256"])
def test_parse_and_print_round_trip(text):
    assert str(Protocol.parse(text)) == text


@pytest.mark.parametrize("text", ["", "size:32", "height:x", "height:0", "crop:0x4", "zoom:2", "size:4x4+height:4",
                                  "sliding:4x4+sliding:8x8"])
def test_bad_protocol_is_an_error_naming_it(text):
    with pytest.raises(ProtocolError):
        Protocol.parse(text)


def test_defaults_follow_the_dg_literature():
    # RobustNet's evaluation: whole images at native size; Mapillary resized to height 1536, centre 1536x1536
    for kind in ("cityscapes", "bdd100k", "gta5", "synthia", "folder"):
        assert str(protocol_for(f"{kind}:/d")) == "native"
    assert protocol_for("mapillary:/d") == Protocol(height=1536, crop=(1536, 1536))
    assert protocol_for("synthetic:fog", eval_size=(96, 192)) == Protocol(size=(96, 192))
    assert set(NATIVE_PROTOCOL) | {"synthetic"} == {"cityscapes", "bdd100k", "gta5", "synthia", "folder",
                                                     "mapillary", "synthetic"}


def test_overrides_spec_beats_kind_beats_star():
    over = parse_overrides(["*=size:8x8", "cityscapes=native+sliding:4x4", "cityscapes:/a=height:16"])
    assert protocol_for("cityscapes:/a", overrides=over) == Protocol(height=16)
    assert protocol_for("cityscapes:/b", overrides=over) == Protocol(window=(4, 4))
    assert protocol_for("bdd100k:/c", overrides=over) == Protocol(size=(8, 8))
    assert protocol_for("synthetic:fog", (10, 20), over) == Protocol(size=(10, 20))  # * is on-disk only


def test_height_resize_then_centre_crop_pads_labels_with_ignore():
    proto = Protocol.parse("height:20+crop:16x48")
    image = torch.arange(40 * 60, dtype=torch.float32).reshape(1, 40, 60).expand(3, 40, 60) / 2400
    label = torch.zeros(40, 60, dtype=torch.long)
    out_image, out_label = proto.transform()(image, label)
    assert out_image.shape == (3, 16, 48) and out_label.shape == (16, 48)
    # 40x60 -> height 20 keeps the aspect: 20x30; crop 16 rows from the centre, pad 30 -> 48 columns (9 + 9)
    assert proto.output_size((40, 60)) == (16, 48)
    assert (out_label[:, :9] == IGNORE_INDEX).all() and (out_label[:, -9:] == IGNORE_INDEX).all()
    assert (out_label[:, 9:-9] == 0).all()
    assert (out_image[:, :, :9] == 0).all() and out_image[:, :, 9:-9].gt(0).all()


def test_config_rejects_bad_protocol_before_work():
    with pytest.raises(ConfigError, match="eval_protocol"):
        load_config(None, ["--eval_protocol=cityscapes=zoom:2"])
    assert load_config(None, ["--eval_protocol=mapillary=height:64+crop:64x64"]).eval_protocol == [
        "mapillary=height:64+crop:64x64"]


def test_training_run_scores_each_spec_with_its_protocol(tmp_path):
    """An on-disk target is scored at its native size, not at eval_size; metrics.json says so."""
    export("fog", "val", 2, tmp_path / "fog", size=(40, 88), progress=False)
    out = tmp_path / "run"
    main(["--method=erm", "--iters=2", "--train_num=4", "--val_num=2", "--crop=32x64", "--eval_size=32x64",
          "--workers=0", "--batch_size=2", f"--targets=folder:{tmp_path / 'fog'},synthetic:night",
          "--eval_protocol=synthetic:night=size:24x48", "--out", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    folder = f"folder:{tmp_path / 'fog'}"
    assert metrics["eval_protocol"] == {"synthetic:source": "size:32x64", folder: "native",
                                        "synthetic:night": "size:24x48"}
    assert metrics["eval_sizes"] == {"synthetic:source": [[32, 64]], folder: [[40, 88]],
                                     "synthetic:night": [[24, 48]]}
