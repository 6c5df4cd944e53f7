"""A training step reads the device once (issue 33: "no host sync inside a step except the one that logs"): the
forward, the backward and the finiteness checks queue on the GPU without waiting; npdg.loop.read_back then reads
the loss, the checks and every log in one transfer. On the CPU a read is not a sync, but it is the same call, so
counting the calls that read a tensor's value (item, tolist, bool, float, int) during a step checks the GPU's path.
"""

from __future__ import annotations

import math

import pytest
import torch

import npdg.loop
import npdg.run
from npdg.loop import Context, read_back
from npdg.train import main

TINY = ["--iters=6", "--train_num=8", "--val_num=2", "--crop=40x72", "--eval_size=40x72", "--workers=0",
        "--batch_size=2", "--log_every=1", "--targets=synthetic:fog", "--finetune_iters=3", "--sens_every=1000",
        "--sens_batch=2", "--sens_k=2", "--ckpt_every=1000", "--device=cpu", "--dsp_warmup=0"]
READS = ("item", "tolist", "__bool__", "__float__", "__int__")


@pytest.mark.parametrize("method, extra", [("npdg", []), ("dsp", []), ("shade", ["--shade_k=4", "--shade_every=2"]),
                                           ("erm", []), ("sfp", []), ("slimming", [])])
def test_one_device_read_per_training_step(method, extra, tmp_path, monkeypatch):
    """Between a step's start (the loss function) and read_back, no tensor value is read: the step's one read
    is read_back's. A method's first step may read (npdg's first sensitivity pass, the D-VAE's first look at the
    source styles); every later step of every stage must not."""
    reads = [0]
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **k):
            reads[0] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    per_step = []  # (stage, step, reads between the loss function's start and read_back)
    original_fit, original_read_back = npdg.loop.fit, npdg.loop.read_back

    def fit(ctx, stage, model, dataset, loss_fn, *a, **k):
        def counted_loss(net, step, images, labels):
            reads[0] = 0
            per_step.append([stage, step, None])
            return loss_fn(net, step, images, labels)

        return original_fit(ctx, stage, model, dataset, counted_loss, *a, **k)

    def read_back_counted(*a, **k):
        per_step[-1][2] = reads[0]
        return original_read_back(*a, **k)

    monkeypatch.setattr(npdg.run, "fit", fit)
    monkeypatch.setattr(npdg.loop, "read_back", read_back_counted)
    main(TINY + [f"--method={method}", *extra, "--out", str(tmp_path / "r")])
    assert len(per_step) >= 6 and all(n is not None for _, _, n in per_step)
    later = [(stage, step, n) for stage, step, n in per_step if step > 1 and n]
    assert not later, f"tensor values read inside later steps (stage, step, reads): {later}"


def _ctx():
    return Context(npdg.config.Config(device="cpu"), torch.device("cpu"), 0, 1)


def _opt(grad):
    w = torch.nn.Parameter(torch.zeros(3))
    w.grad = torch.tensor(grad)
    return torch.optim.SGD([w], lr=0.1)


@pytest.mark.parametrize("loss, grad, bad", [(1.5, [0.0, 1.0, -2.0], None),
                                             (math.nan, [0.0, 1.0, 2.0], "loss"),
                                             (math.inf, [0.0, 1.0, 2.0], "loss"),
                                             (1.5, [0.0, math.inf, 2.0], "gradients"),
                                             (1.5, [math.nan, 1.0, 2.0], "gradients"),
                                             (math.nan, [math.nan, 1.0, 2.0], "loss")])
def test_read_back_names_what_became_non_finite(loss, grad, bad):
    value, got, logs = read_back(torch.tensor(loss), {"a": torch.tensor(2.5), "n": 3, "f": math.nan},
                                 _opt(grad), _ctx())
    assert got == bad
    assert value == loss or (math.isnan(value) and math.isnan(loss))
    assert logs["a"] == 2.5 and type(logs["a"]) is float and logs["n"] == 3 and math.isnan(logs["f"])


def test_read_back_without_gradients():
    value, bad, logs = read_back(torch.tensor(0.25), {}, torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=1),
                                 _ctx())
    assert (value, bad, logs) == (0.25, None, {})


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method, extra", [("npdg", []), ("shade", ["--shade_k=4", "--shade_every=2"])])
def test_no_gpu_sync_inside_a_later_step(method, extra, tmp_path, monkeypatch):
    """On CUDA, torch's sync debug mode (on from a step's loss function to its read_back) finds no synchronising
    call inside any step after the first: read_back's transfer is the step's one sync."""
    import warnings

    marks = []  # (stage, step, index of the first warning of the step, index at read_back)
    original_fit, original_read_back = npdg.loop.fit, npdg.loop.read_back

    def fit(ctx, stage, model, dataset, loss_fn, *a, **k):
        def watched_loss(net, step, images, labels):
            marks.append([stage, step, len(caught), None])
            torch.cuda.set_sync_debug_mode("warn")
            return loss_fn(net, step, images, labels)

        return original_fit(ctx, stage, model, dataset, watched_loss, *a, **k)

    def read_back_unwatched(*a, **k):
        torch.cuda.set_sync_debug_mode(0)
        marks[-1][3] = len(caught)
        return original_read_back(*a, **k)

    monkeypatch.setattr(npdg.run, "fit", fit)
    monkeypatch.setattr(npdg.loop, "read_back", read_back_unwatched)
    args = [a for a in TINY if a != "--device=cpu"] + ["--device=cuda", f"--method={method}", *extra]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            main(args + ["--out", str(tmp_path / "r")])
    finally:
        torch.cuda.set_sync_debug_mode(0)
    syncs = [(stage, step, [str(w.message)[:80] for w in caught[i:j] if "synchroniz" in str(w.message)])
             for stage, step, i, j in marks if step > 1]
    assert not [s for s in syncs if s[2]], f"synchronising calls inside later steps: {[s for s in syncs if s[2]]}"
