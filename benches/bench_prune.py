"""Prune a whole network: ``select_masks`` + ``npdg.pruning.compact`` vs the plain-PyTorch path a user
would write (``select_masks`` + ``compact_state_dict`` + ``create_model`` + ``load_state_dict``), same
model, same masks, same run.

Full mode: DeepLabV3+ R101 (every prunable group at ratio 0.3, round_to 8) on the bench device (the CPU
on a CPU machine). Quick mode: DeepLabV3+ R18. ``compact`` slices every declared tensor in one
``compact_many`` call and skips the rebuilt model's random init (a strict load overwrites it); the
reference slices with one ``index_select`` per axis and draws the init, which is most of its CPU time.
"""

from __future__ import annotations

import pytest
import torch

from benches.conftest import env_info, sync
from npdg import _ext
from npdg.models import compact_state_dict, create_model
from npdg.pruning import compact, params, select_masks

RATIO = 0.3  # the paper's safe default


def compact_reference(model, masks):
    state, widths = compact_state_dict(model, {n: m.nonzero().flatten() for n, m in masks.items()})
    small = create_model(model.registry_name, **{**model.arch_config(), "widths": widths})
    small.load_state_dict(state)
    return small.to(next(model.parameters()).device)


PROVIDERS = {"npdg": compact, "reference": compact_reference}


@pytest.fixture(scope="module")
def dense(bench_device, quick):
    torch.manual_seed(0)
    model = create_model("deeplabv3plus_r18" if quick else "deeplabv3plus_r101", num_classes=19)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for g in model.prunable_units():  # distinct γ, as after sparse training
            g.gamma().copy_(torch.rand(g.size, generator=gen))
    return model.eval().to(bench_device)


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_select_and_compact(benchmark, provider, dense, bench_device, quick):
    fn = PROVIDERS[provider]

    def run():
        small = fn(dense, select_masks(dense, ratio=RATIO, round_to=8))
        sync(bench_device)
        return small

    for _ in range(0 if quick else 1):  # warm-up: extension load, allocator
        run()
    benchmark.group = f"select_masks + compact {dense.registry_name}"  # before the run: recorded there
    small = benchmark(run)

    benchmark.extra_info.update(env_info(bench_device))
    benchmark.extra_info.update(model=dense.registry_name, provider=provider, ratio=RATIO,
                                params_dense=params(dense), params_pruned=params(small),
                                extension=_ext.how() if provider == "npdg" else None,
                                threads=torch.get_num_threads())
    want = compact_reference(dense, select_masks(dense, ratio=RATIO, round_to=8)).state_dict()
    assert all(torch.equal(v, want[k]) for k, v in small.state_dict().items())
