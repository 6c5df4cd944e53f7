"""Methods are units (issue 34): one class per method behind npdg.methods.base.Method, found through the registry;
the trainer's stage machine calls only that interface, so a method registered from outside runs end to end."""

import json

import pytest
from helpers import interrupt_fit_at

import npdg.methods
from npdg.config import METHODS, load_config
from npdg.methods import REGISTRY, method_class
from npdg.methods.base import Method
from npdg.train import main

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def test_every_registered_method_is_a_method_with_its_stages():
    assert METHODS == tuple(REGISTRY) == ("erm", "slimming", "dsp", "npdg", "sfp", "shade")
    for name in METHODS:
        cls = method_class(name)
        assert issubclass(cls, Method)
        assert cls.stages() == (("train", "prune", "finetune", "evaluate") if cls.prunes else ("train", "evaluate"))
        assert load_config(None, [f"--method={name}"]).prunes == cls.prunes
    assert [n for n in METHODS if method_class(n).prunes] == ["slimming", "npdg", "sfp"]
    assert [n for n in METHODS if method_class(n).uses_dsp] == ["dsp", "npdg"]


class Halved(Method):
    """A toy method from outside the package: half the cross-entropy, a counter as its resumable state."""

    iters = 3

    def __init__(self, ctx, model):
        super().__init__(ctx, model)
        self.calls = 0

    def train_loss_fn(self, model):
        def loss_fn(net, step, images, labels):
            self.calls += 1
            loss, logs = self.task_loss(net, model, images, labels)
            return loss / 2, {**logs, "calls": self.calls}
        return loss_fn

    def state(self):
        return {"halved": self.calls}


def test_a_method_registered_from_outside_runs_end_to_end(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(REGISTRY, "halved", "test_methods:Halved")
    monkeypatch.setattr(npdg.config, "METHODS", (*METHODS, "halved"))
    monkeypatch.setitem(sys.modules, "test_methods", sys.modules[__name__])
    out = tmp_path / "run"
    main(["--method=halved", "--budget=0", "--train_num=4", "--val_num=2", "--crop=40x72", "--eval_size=40x72",
          "--workers=0", "--batch_size=2", "--log_every=1", "--targets=synthetic:fog", "--out", str(out)])
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["calls"] for r in rows if "loss" in r] == [1, 2, 3]  # iters: the class's default with budget 0
    assert json.loads((out / "metrics.json").read_text())["method"] == "halved"


class _Interrupt(BaseException):
    pass


@pytest.mark.parametrize("method, stage, cut_at, extra", [
    ("sfp", "train", 5, ["--sfp_every=2"]),  # a checkpoint at step 4, soft prunes at steps 3 and 5
    ("sfp", "finetune", 2, ["--sfp_every=2"]),  # the removed units and r come back from the state
    ("shade", "train", 5, ["--shade_every=2", "--shade_k=3"]),  # the style bank and the basis come back
])
def test_a_resumed_run_reproduces_the_uninterrupted_one(tmp_path, monkeypatch, method, stage, cut_at, extra):
    import torch

    from npdg import load_model

    args = ["--iters=6", "--finetune_iters=2", "--budget=0", "--train_num=8", "--val_num=2", "--crop=40x72",
            "--eval_size=40x72", "--workers=0", "--batch_size=2", "--log_every=2", "--targets=synthetic:fog",
            "--ckpt_every=2", f"--method={method}", *extra]
    main(args + ["--out", str(tmp_path / "whole")])
    interrupt_fit_at(monkeypatch, stage, cut_at, _Interrupt)
    with pytest.raises(_Interrupt):
        main(args + ["--out", str(tmp_path / "cut")])
    monkeypatch.undo()
    main(["--resume", str(tmp_path / "cut")])
    a, b = (load_model(tmp_path / d / "final.pt").state_dict() for d in ("whole", "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "the resumed run differs"


@pytest.mark.parametrize("method", ["sfp", "shade"])
def test_the_dry_run_measures_the_methods_own_steps(method, monkeypatch, capsys):
    from npdg.dryrun import dry_run
    from npdg.methods.shade import SHADE

    rows = []
    hallucinate = SHADE.hallucinate

    def spy(self, f):
        out = hallucinate(self, f)
        rows.append(out.shape[0])
        return out

    monkeypatch.setattr(SHADE, "hallucinate", spy)
    cfg = load_config(None, [f"--method={method}", "--train_num=4", "--val_num=1", "--crop=40x72",
                             "--eval_size=40x72", "--workers=0", "--targets=synthetic:fog"])
    result = dry_run(cfg, batch=2)
    assert result["train_step_s"] > 0 and ("finetune_step_s" in result) == (method == "sfp")
    if method == "shade":  # the second measured step hallucinates (a basis from the first step's styles)
        assert rows == [2, 4]
