"""Physical channel compaction of a whole network: ``compact_many`` (one call, one CUDA launch) vs a
plain-PyTorch ``index_select`` loop (``npdg.reference.compact_many``), same shapes, same run.

Full mode: every conv / BN (weight, bias, running stats) / fc tensor of ResNet-101 (44.5 M fp32
elements), 30 % of the channels of every prunable group removed. Quick mode: ResNet-18 layout.
Rows record bytes moved (kept elements read + written) and the resulting GB/s.
"""

from __future__ import annotations

import pytest
import torch

from benches.conftest import env_info, sync
from npdg import _ext, reference

KEEP = 0.7  # the paper's ~30 % pruning ratio


def resnet_layout(blocks=(3, 4, 23, 3), bottleneck=True):
    """[(name, shape, out_group, in_group)] of a torchvision-style ResNet; a group names the channel
    set a keep mask applies to (a residual stage shares one group: its adds tie the channels)."""
    entries = []

    def conv(name, cout, cin, k, og, ig):
        entries.append((name + ".weight", (cout, cin, k, k), og, ig))

    def bn(name, c, g):
        stats = ("weight", "bias", "running_mean", "running_var")
        entries.extend((f"{name}.{p}", (c,), g, None) for p in stats)

    conv("conv1", 64, 3, 7, "stem", None)
    bn("bn1", 64, "stem")
    inplanes, in_group = 64, "stem"
    for s, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks, strict=True), start=1):
        width, group = planes * (4 if bottleneck else 1), f"layer{s}"
        for b in range(n):
            p = f"layer{s}.{b}"
            if bottleneck:
                conv(p + ".conv1", planes, inplanes, 1, p + ".a", in_group)
                bn(p + ".bn1", planes, p + ".a")
                conv(p + ".conv2", planes, planes, 3, p + ".b", p + ".a")
                bn(p + ".bn2", planes, p + ".b")
                conv(p + ".conv3", width, planes, 1, group, p + ".b")
                bn(p + ".bn3", width, group)
            else:
                conv(p + ".conv1", planes, inplanes, 3, p + ".a", in_group)
                bn(p + ".bn1", planes, p + ".a")
                conv(p + ".conv2", width, planes, 3, group, p + ".a")
                bn(p + ".bn2", width, group)
            if b == 0 and (inplanes != width or s > 1):
                conv(p + ".downsample.0", width, inplanes, 1, group, in_group)
                bn(p + ".downsample.1", width, group)
            inplanes, in_group = width, group
    entries.append(("fc.weight", (1000, inplanes), None, in_group))
    entries.append(("fc.bias", (1000,), None, None))
    return entries


def compaction_problem(layout, device, seed=0):
    """Random fp32 tensors for `layout` plus one random 70 % keep set per channel group."""
    gen = torch.Generator().manual_seed(seed)
    sizes = {og: shape[0] for _, shape, og, _ in layout if og is not None}
    keep = {g: torch.randperm(n, generator=gen)[: round(KEEP * n)].sort().values.to(device)
            for g, n in sizes.items()}
    srcs = [torch.randn(shape, generator=gen).to(device) for _, shape, _, _ in layout]
    outs = [keep[og] if og else None for _, _, og, _ in layout]
    ins = [keep[ig] if ig else None for _, _, _, ig in layout]
    return srcs, outs, ins


PROVIDERS = {
    "npdg_ext": lambda s, o, i: torch.ops.npdg.compact_many(s, o, i),
    "torch_loop": reference.compact_many,
}


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_compact_many_resnet(benchmark, provider, bench_device, quick):
    if provider == "npdg_ext" and not _ext.supports(bench_device):
        pytest.skip(f"extension has no {bench_device.type} kernels ({_ext.how()})")
    arch = "resnet18" if quick else "resnet101"
    layout = resnet_layout((2, 2, 2, 2), bottleneck=False) if quick else resnet_layout()
    srcs, outs, ins = compaction_problem(layout, bench_device)
    fn = PROVIDERS[provider]
    expected = reference.compact_many(srcs, outs, ins)
    moved = 2 * sum(t.numel() * t.element_size() for t in expected)  # gather: read kept + write
    del expected

    def run():
        result = fn(srcs, outs, ins)
        sync(bench_device)
        return result

    for _ in range(0 if quick else 2):  # warm-up: allocator, thread pool
        run()
    benchmark.group = f"compact_many {arch}"  # before the run: pytest-benchmark records it there
    result = benchmark(run)

    benchmark.extra_info.update(env_info(bench_device))
    benchmark.extra_info.update(arch=arch, provider=provider, tensors=len(srcs),
                                src_elements=sum(s.numel() for s in srcs), bytes_moved=moved,
                                threads=torch.get_num_threads())
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["gbps"] = moved / benchmark.stats.stats.median / 1e9
    want = reference.compact_many(srcs[:3], outs[:3], ins[:3])
    assert all(torch.equal(a, b) for a, b in zip(result[:3], want, strict=True))
