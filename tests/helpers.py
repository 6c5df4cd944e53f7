"""Helpers shared by test modules (import as ``from helpers import ...``; pytest puts tests/ on sys.path)."""

import json
import os
import subprocess
import sys


def run_compiled(script: str) -> list:
    """Run `script` in a fresh interpreter without TRITON_INTERPRET (compiled kernels), parse its JSON."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the launch default; silences triton 3.9's notice
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def randomize_(model, seed=0, gates=False):
    """BN statistics/affine (and, with ``gates``, every gate γ) far from their init, so masking and slicing
    mistakes show."""
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
        for g in model.prunable_units() if gates else ():
            g.gamma().copy_(torch.rand(g.size, generator=gen) + 0.5)
    return model


def run_main(main, argv, capsys):
    """(exit code, stdout, stderr) of a CLI ``main(argv)`` that returns its code or raises SystemExit."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def rel_max(a, b) -> float:
    """max |a - b| / max |b|, in float64."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max()).item()


def random_scores(model, residual=True, seed=1):
    """Uniform random importance for every unit group (the residual streams too)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return {g.name: torch.rand(g.size, generator=gen) for g in model.prunable_units(residual=residual)}


def tiny_npdg_runs_with_and_without_residual(tmp_path, model: str, *extra: str) -> dict:
    """{"false" / "true": final model} of two tiny npdg runs of `model`, without / with --prune_residual."""
    import npdg
    from npdg.train import main

    tiny = ["--iters=2", "--train_num=4", "--val_num=2", "--crop=40x72", "--eval_size=40x72", "--workers=0",
            "--batch_size=2", "--log_every=1", "--targets=synthetic:fog", "--finetune_iters=1", "--sens_every=1",
            "--sens_batch=2", "--sens_k=2", "--ckpt_every=2", f"--model={model}", "--method=npdg", "--prune_sens=1",
            *extra]
    finals = {}
    for flag in ("false", "true"):
        main(tiny + [f"--prune_residual={flag}", "--out", str(tmp_path / flag)])
        finals[flag] = npdg.load_model(tmp_path / flag / "final.pt")
    return finals


def stream_groups(model) -> list:
    """The model's coupled residual-stream groups (``prunable_units(residual=True)``)."""
    from npdg.models.units import CoupledGroup

    return [g for g in model.prunable_units(residual=True) if isinstance(g, CoupledGroup)]


def check_compacted_equals_masked(dense, masks, small, x):
    """Every residual stream loses channels; the compacted model computes what the masked one does
    (<= 1e-5 relative) and its widths are the masks' counts. Returns (streams, widths)."""
    import torch

    from npdg.pruning import apply_masks

    streams = stream_groups(dense)
    assert streams and all(not bool(masks[g.name].all()) for g in streams)
    masked = apply_masks(dense, masks)
    with torch.no_grad():
        want = masked(x)
        assert rel_max(dense(x), want) > 1e-3
        assert rel_max(small(x), want) <= 1e-5
    widths = {g.name: g.size for g in small.prunable_units(residual=True)}
    assert widths == {n: int(m.sum()) for n, m in masks.items()}
    return streams, widths


def interrupt_fit_at(monkeypatch, stage: str, step: int, exc: type[BaseException]) -> None:
    """Make the stage machine's fit raise ``exc`` at ``step`` of ``stage`` (after the checkpoint at step - 1): a kill
    in the middle of a run, for the resume tests; ``monkeypatch.undo()`` restores fit."""
    import npdg.loop
    import npdg.run

    original_fit = npdg.loop.fit

    def fit(ctx, name, model, dataset, loss_fn, *a, **k):
        def interrupted(net, s, images, labels):
            if name == stage and s == step:
                raise exc
            return loss_fn(net, s, images, labels)

        return original_fit(ctx, name, model, dataset, interrupted, *a, **k)

    monkeypatch.setattr(npdg.run, "fit", fit)  # (the stage machine calls fit)
