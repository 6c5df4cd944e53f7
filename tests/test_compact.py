"""npdg::compact / compact_many (the C++/CUDA extension) against plain PyTorch indexing.

Compaction only moves bytes, so results must be *equal* to ``npdg.reference`` (index_select), not
close. CUDA variants run under ``-m cuda`` on a GPU machine; CI sets NPDG_REQUIRE_EXT=1 so a missing
extension fails instead of skipping.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from npdg import _ext, ops, reference

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
SHAPES = [(7,), (6, 5), (8, 6, 3, 3), (5, 4, 1, 7), (3, 4, 2, 3, 2)]
HAS_CUDA = torch.cuda.is_available()
cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")


@pytest.fixture(scope="module")
def ext():
    if not _ext.available():
        pytest.skip(f"compaction extension not built: {_ext.how()}")
    return torch.ops.npdg


def _index(kind: str, n: int, gen: torch.Generator, device="cpu") -> torch.Tensor | None:
    if kind == "none":
        return None
    if kind == "empty":
        idx = torch.empty(0, dtype=torch.long)
    elif kind == "full":
        idx = torch.arange(n)
    elif kind == "subset":  # a pruning keep set: sorted, ~70 %
        idx = torch.randperm(n, generator=gen)[: max(1, (7 * n) // 10)].sort().values
    else:  # "shuffled": unsorted with repeats, which index_select allows too
        idx = torch.randint(0, n, (n + 2,), generator=gen)
    return idx.to(device)


def _make(shape, dtype, layout: str, gen, device="cpu") -> torch.Tensor:
    """A source of `shape` with the requested memory layout (values from fp64 randoms)."""
    if layout == "contiguous":
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
    elif layout == "transposed":  # dims 0 and 1 swapped in memory
        full = (shape[1], shape[0], *shape[2:]) if len(shape) > 1 else shape
        x = torch.randn(full, generator=gen, dtype=torch.float64)
        x = x.transpose(0, 1) if len(shape) > 1 else x
    elif layout == "sliced":  # every other element of the last dim
        x = torch.randn((*shape[:-1], 2 * shape[-1]), generator=gen, dtype=torch.float64)[..., ::2]
    else:  # "permuted": trailing dims reversed in memory (non-collapsible strides)
        x = torch.randn(tuple(reversed(shape)), generator=gen, dtype=torch.float64)
        x = x.permute(*reversed(range(len(shape))))
    return x.to(device=device, dtype=dtype)


def _check_compact(op, x, kinds, gen, device="cpu"):
    for out_kind in kinds:
        for in_kind in kinds if x.dim() >= 2 else ["none"]:
            oi = _index(out_kind, x.shape[0], gen, device)
            ii = _index(in_kind, x.shape[1], gen, device) if x.dim() >= 2 else None
            got = op(x, oi, ii)
            want = reference.compact(x, oi, ii)
            assert got.is_contiguous() and got.dtype == x.dtype and got.device == x.device
            assert got.shape == want.shape, (out_kind, in_kind)
            assert torch.equal(got, want), (out_kind, in_kind, tuple(x.shape), x.stride())
            if x.numel():
                assert got.data_ptr() != x.data_ptr()  # always a fresh tensor


KINDS = ["none", "empty", "full", "subset", "shuffled"]


# ------------------------------------------------------------------------------ environment


def test_extension_required_in_ci():
    if os.environ.get("NPDG_REQUIRE_EXT", "0") != "1":
        pytest.skip("set NPDG_REQUIRE_EXT=1 to require the compiled extension")
    assert _ext.available(), _ext.how()
    assert _ext.supports("cpu")


def test_no_ext_env_forces_reference(monkeypatch):
    calls = []
    monkeypatch.setenv("NPDG_NO_EXT", "1")
    monkeypatch.setattr(reference, "compact", lambda *a: calls.append(a) or a[0].clone())
    x = torch.randn(3, 4)
    ops.compact(x, torch.tensor([0]), None)
    assert not _ext.available() and len(calls) == 1


def test_missing_extension_warns_once_and_falls_back(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "npdg._C", None)  # makes `import npdg._C` raise ImportError
    monkeypatch.setattr(_ext, "_CSRC", str(tmp_path / "no-csrc"))  # and nothing to JIT-build from
    monkeypatch.setattr(_ext, "_loaded", None)
    monkeypatch.setattr(_ext, "_how", "")
    monkeypatch.setattr(_ext, "_on_load", [])
    monkeypatch.delenv("NPDG_NO_EXT", raising=False)
    with pytest.warns(RuntimeWarning, match=r"pip install -e \.") as record:
        assert _ext.available() is False
        assert _ext.available() is False  # cached: no second attempt, no second notice
    assert len(record) == 1 and "import npdg._C failed" in _ext.how()
    x = torch.randn(3, 4)
    assert torch.equal(ops.compact(x, torch.tensor([2]), None), x[[2]])  # reference path


@pytest.mark.slow
def test_jit_build_from_csrc(tmp_path):
    """Without npdg._C the ops are JIT-built from csrc/ (in a fresh process: the npdg namespace
    can only be registered once per process)."""
    code = (
        "import sys; sys.modules['npdg._C'] = None\n"
        "import torch; from npdg import _ext, ops\n"
        "assert _ext.available(), _ext.how(); assert _ext.how().startswith('jit'), _ext.how()\n"
        "x = torch.randn(4, 3); print(torch.equal(ops.compact(x, torch.tensor([2, 0]), None), x[[2, 0]]))\n"
    )
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path), MAX_JOBS="2")
    env.pop("NPDG_NO_EXT", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip() == "True", proc.stderr[-2000:]


# ------------------------------------------------------------------------------ correctness, CPU


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_compact_matches_indexing(ext, shape, dtype):
    gen = torch.Generator().manual_seed(hash((shape, str(dtype))) % 2**31)
    for layout in ["contiguous", "transposed", "sliced", "permuted"]:
        x = _make(shape, dtype, layout, gen)
        _check_compact(ext.compact, x, KINDS, gen)
    _check_compact(ops.compact, _make(shape, dtype, "contiguous", gen), ["none", "subset"], gen)


def test_compact_odd_sources(ext):
    gen = torch.Generator().manual_seed(0)
    _check_compact(ext.compact, torch.randn(4, 1, 3).expand(4, 6, 3), KINDS, gen)  # stride-0 dim
    _check_compact(ext.compact, torch.randn(0, 5, 3), ["none", "empty"], gen)  # no rows at all
    _check_compact(ext.compact, torch.randn(5, 4, 0), KINDS, gen)  # empty trailing dim
    x = torch.tensor(3.5)  # 0-D: only a copy
    assert torch.equal(ext.compact(x, None, None), x)
    for dtype in [torch.int64, torch.int8, torch.bool]:  # any 1/2/4/8-byte dtype is just bytes
        _check_compact(ext.compact, torch.randint(0, 2, (6, 5, 2)).to(dtype), ["subset"], gen)


@pytest.mark.parametrize("shape", [(256, 128, 3, 3), (1000, 333), (9000,)], ids=str)
def test_compact_large_spans_many_chunks(ext, shape):
    """Bigger than one CPU work chunk (16 K elements), with chunk edges mid-row."""
    gen = torch.Generator().manual_seed(1)
    for layout in ["contiguous", "permuted"]:
        x = _make(shape, torch.float32, layout, gen)
        _check_compact(ext.compact, x, ["none", "subset", "shuffled"], gen)


def test_gpu_index_math_on_cpu(ext, monkeypatch):
    """NPDG_COMPACT_GENERIC=1 makes the CPU path decode every element like the CUDA kernel does
    (csrc/compact_desc.h: locate), so this covers the GPU's index math on a machine without one."""
    monkeypatch.setenv("NPDG_COMPACT_GENERIC", "1")
    gen = torch.Generator().manual_seed(5)
    for shape in SHAPES + [(300, 70, 3, 3)]:
        for dtype in [torch.float32, torch.float16, torch.float64]:
            for layout in ["contiguous", "transposed", "sliced", "permuted"]:
                _check_compact(ext.compact, _make(shape, dtype, layout, gen), KINDS, gen)
    srcs, outs, ins = _param_list(gen)
    got = ext.compact_many(srcs, outs, ins)
    assert all(torch.equal(g, w) for g, w in zip(got, reference.compact_many(srcs, outs, ins), strict=True))


def _param_list(gen, device="cpu"):
    """A small network's worth of parameters: mixed shapes, dtypes, layouts, keep sets."""
    srcs = [
        torch.randn(16, 3, 7, 7, generator=gen), torch.randn(16, generator=gen),
        torch.randn(32, 16, 3, 3, generator=gen, dtype=torch.float64), torch.randn(32, generator=gen).half(),
        torch.randn(16, 32, generator=gen).t(), torch.randn(64, 32, 1, 1, generator=gen).bfloat16(),
        torch.randn(10, 64, generator=gen), torch.tensor(0.5), torch.randn(0, 4, generator=gen),
        torch.randn(40, 40, 3, 3, generator=gen)[:, ::2],
    ]
    srcs = [s.to(device) for s in srcs]
    out_kinds = ["subset", "subset", "none", "full", "shuffled", "empty", "none", "none", "empty", "subset"]
    in_kinds = ["none", "none", "subset", "none", "subset", "subset", "subset", "none", "full", "shuffled"]
    outs = [_index(k, s.shape[0], gen, device) if s.dim() else None
            for k, s in zip(out_kinds, srcs, strict=True)]
    ins = [_index(k, s.shape[1], gen, device) if s.dim() > 1 else None
           for k, s in zip(in_kinds, srcs, strict=True)]
    return srcs, outs, ins


def test_compact_many_matches_indexing(ext):
    srcs, outs, ins = _param_list(torch.Generator().manual_seed(2))
    want = reference.compact_many(srcs, outs, ins)
    for got in (ext.compact_many(srcs, outs, ins), ops.compact_many(srcs, outs, ins)):
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert g.dtype == w.dtype and g.is_contiguous() and torch.equal(g, w)
    assert ops.compact_many([], [], []) == []


# ------------------------------------------------------------------------------ bad arguments

_X = torch.randn(4, 5, 3)
_I = torch.tensor
BAD = [
    # (src, out_index, in_index, exception, message)
    (_X, _I([4]), None, IndexError, r"out_index: value 4 at position 0 is out of range for dim 0 of size 4"),
    (_X, _I([0, -1]), None, IndexError, r"out_index: value -1 at position 1 .*\(negative indices are not"),
    (_X, None, _I([0, 5]), IndexError, r"in_index: value 5 at position 1 is out of range for dim 1 of size"),
    (_X, _I([0], dtype=torch.int32), None, RuntimeError, r"out_index must be an int64 \(torch.long\) tensor"),
    (_X, None, _I([0.0]), RuntimeError, r"in_index must be an int64 .* got Float"),
    (_X, _I([[0]]), None, RuntimeError, r"out_index must be 1-D, got a 2-D tensor"),
    (_X, _I(0), None, RuntimeError, r"out_index must be 1-D, got a 0-D tensor"),
    (torch.randn(4), None, _I([0]), RuntimeError, r"in_index must be None: src is 1-D"),
    (torch.tensor(1.0), _I([0]), None, RuntimeError, r"out_index must be None: src is 0-D"),
    (torch.randn(2, 2, dtype=torch.complex128), None, None, RuntimeError, r"src: unsupported dtype Complex"),
]


@pytest.mark.parametrize("src, oi, ii, exc, match", BAD, ids=[b[-1][:40] for b in BAD])
def test_compact_bad_arguments_raise(ext, src, oi, ii, exc, match):
    with pytest.raises(exc, match="compact: " + match):
        ext.compact(src, oi, ii)
    with pytest.raises(exc, match="compact_many: " + re.sub(r"^(\w+)", r"\1\\[1\\]", match)):
        ext.compact_many([_X, src], [None, oi], [None, ii])


def test_compact_many_list_length_mismatch(ext):
    with pytest.raises(RuntimeError, match="compact_many: list lengths differ: 1 src, 2 out_index, 1 in_"):
        ext.compact_many([_X], [None, None], [None])
    with pytest.raises(ValueError, match="compact_many: list lengths differ"):
        ops.compact_many([_X], [None], [None, None])


def test_bad_index_in_empty_output_is_still_caught(ext):
    with pytest.raises(IndexError, match="in_index: value 7"):
        ext.compact(torch.randn(3, 5, 0), None, _I([7]))  # no output elements, index still checked


# ------------------------------------------------------------------------------ torch.library glue


OPCHECK_ARGS = [
    (torch.randn(6, 5, 3, 3, dtype=torch.float64, requires_grad=True), _I([3, 0, 3]), _I([4, 1])),
    (torch.randn(6, 5, requires_grad=True), None, _I([2])),
    (torch.randn(6, requires_grad=True), _I([5, 1]), None),
    (torch.randn(6, 5, 2).transpose(0, 1), None, None),
]


@pytest.mark.parametrize("args", OPCHECK_ARGS, ids=range(len(OPCHECK_ARGS)))
def test_opcheck_compact(ext, args):
    torch.library.opcheck(ext.compact.default, args)


def test_opcheck_compact_many(ext):
    a, b = torch.randn(6, 5, 3, 3, requires_grad=True), torch.randn(6, requires_grad=True)
    args = ([a, b, a.detach()], [_I([1, 4]), _I([0, 0]), None], [_I([3]), None, None])
    torch.library.opcheck(ext.compact_many.default, args)


def test_compact_backward_matches_reference(ext):
    x = torch.randn(6, 5, 3, dtype=torch.float64, requires_grad=True)
    oi, ii = _I([5, 0, 5]), _I([1, 1, 3])  # repeats must accumulate
    g = torch.randn(3, 3, 3, dtype=torch.float64)
    (got,) = torch.autograd.grad(ops.compact(x, oi, ii), x, g)
    (want,) = torch.autograd.grad(reference.compact(x, oi, ii), x, g)
    assert torch.equal(got, want)
    ys = ops.compact_many([x, x], [oi, None], [None, ii])
    (got,) = torch.autograd.grad(ys, x, [g.new_ones(3, 5, 3), g.new_ones(6, 3, 3)])
    (want,) = torch.autograd.grad(reference.compact_many([x, x], [oi, None], [None, ii]), x,
                                  [g.new_ones(3, 5, 3), g.new_ones(6, 3, 3)])
    assert torch.equal(got, want)


def test_compact_under_torch_compile_shapes(ext):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        out = ext.compact(torch.empty(8, 6, 3, 3), torch.empty(5, dtype=torch.long), None)
        many = ext.compact_many([torch.empty(8, 6), torch.empty(8)], [None, torch.empty(2, dtype=torch.long)],
                                [torch.empty(4, dtype=torch.long), None])
    assert out.shape == (5, 6, 3, 3) and [m.shape for m in many] == [(8, 4), (2,)]


# ------------------------------------------------------------------------------ CUDA


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_compact_cuda_matches_indexing(ext, dtype):
    assert _ext.supports("cuda"), "extension built without its CUDA kernels"
    gen = torch.Generator().manual_seed(3)
    for shape in SHAPES + [(256, 128, 3, 3)]:
        for layout in ["contiguous", "transposed", "sliced", "permuted"]:
            _check_compact(ext.compact, _make(shape, dtype, layout, gen, "cuda"), KINDS, gen, "cuda")


@pytest.mark.cuda
@cuda
def test_compact_many_cuda_one_launch(ext):
    srcs, outs, ins = _param_list(torch.Generator().manual_seed(4), "cuda")
    want = reference.compact_many(srcs, outs, ins)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        got = ext.compact_many(srcs, outs, ins)
        torch.cuda.synchronize()
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    launches = [e for e in prof.events() if "compact_many_kernel" in e.name]
    assert len(launches) == 1, [e.name for e in prof.events()]


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("src, oi, ii, exc, match", BAD[:9], ids=[b[-1][:40] for b in BAD[:9]])
def test_compact_cuda_bad_arguments_raise(ext, src, oi, ii, exc, match):
    src, oi, ii = (t.cuda() if t is not None else None for t in (src, oi, ii))
    with pytest.raises(exc, match="compact: " + match):
        ext.compact(src, oi, ii)
    x = torch.randn(3, 3, device="cuda")
    assert torch.equal(ext.compact(x, None, None), x)  # the context survived: no device assert


@pytest.mark.cuda
@cuda
def test_compact_cuda_device_mismatch(ext):
    x = torch.randn(4, 5, device="cuda")
    with pytest.raises(RuntimeError, match="compact: out_index is on cpu but src is on cuda:0"):
        ext.compact(x, _I([0]), None)
    with pytest.raises(RuntimeError, match="compact: in_index is on cuda:0 but src is on cpu"):
        ext.compact(x.cpu(), None, _I([0], device="cuda"))
    with pytest.raises(RuntimeError, match="all tensors must share one device"):
        ext.compact_many([x, x.cpu()], [None, None], [None, None])


@pytest.mark.cuda
@cuda
def test_opcheck_cuda(ext):
    x = torch.randn(6, 5, 3, 3, device="cuda", requires_grad=True)
    torch.library.opcheck(ext.compact.default, (x, _I([3, 0], device="cuda"), _I([4], device="cuda")))
    torch.library.opcheck(ext.compact_many.default, ([x, x[0, 0].detach()], [_I([1], device="cuda"), None],
                                                      [None, _I([2, 0], device="cuda")]))
