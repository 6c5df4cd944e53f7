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
