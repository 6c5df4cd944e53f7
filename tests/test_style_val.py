"""benches/style_val.py: finished runs scored on a style-shifted source val, paired by seed."""

import json
import sys
from pathlib import Path

import pytest

from npdg.train import main as train

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benches"))
from style_val import main  # noqa: E402
from test_train import TINY  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def test_style_val_scores_and_pairs_runs(tmp_path):
    for seed in (0, 1):
        train(TINY + ["--method=erm", "--iters=2", f"--seed={seed}", "--out", str(tmp_path / f"erm-s{seed}")])
    out = tmp_path / "sv.json"
    assert main(["--restyle", "0.5", "--out", str(out), f"a={tmp_path}/erm-s*", f"b={tmp_path}/erm-s*"]) == 0
    result = json.loads(out.read_text())
    for seed in ("0", "1"):
        run = result["runs"]["a"][seed]
        metrics = json.loads((tmp_path / f"erm-s{seed}" / "metrics.json").read_text())
        assert run["source"] == pytest.approx(metrics["final"]["miou"]["synthetic:source"])  # the run's own val
        assert 0 <= run["restyled_source"] <= 100
    stats = result["paired"]["b"]
    assert stats["seeds"] == [0, 1] and stats["restyled_source"]["mean_diff"] == 0.0
    with pytest.raises(SystemExit):
        main(["--out", str(out), f"a={tmp_path}/missing-*"])
