"""Profile segmentation models: FLOPs, params, latency -- and where FLOPs savings did not become time.

    python -m npdg.profile --checkpoint runs/x                   # a run directory: dense.pt vs final.pt
    python -m npdg.profile --checkpoint dense.pt --compare pruned.pt --batch 1 8 --size 512x1024 \\
        --device cuda --dtype bf16 --channels-last --json prof.json --plot prof.png
    python -m npdg.profile --checkpoint final.pt                 # one model: latency + per-layer shares
    python -m npdg.profile --sweep deeplabv3plus_r50 --size 256x512 --ratios 0,0.1,0.2,0.3,0.4,0.5 \\
        --round_to 1,8 --plot sweep.png --json sweep.json        # random-γ prune + compact at each ratio
    python -m npdg.profile --sweep deeplabv3plus_r50 --ratios 0,0.3 --prune_residual   # residual streams too
    python -m npdg.profile --checkpoint runs/x --runtime eager onnxruntime   # the same, in two runtimes
    python -m npdg.profile --sweep deeplabv3plus_r50 --ratios 0,0.3 --round_to 1,8,16,32 --runtime eager onnxruntime

Definitions, per batch size B, for a dense model D and a pruned model P:
    FLOPs reduction factor  R = FLOPs(D) / FLOPs(P)   (``npdg.pruning.flops``: one forward at --size, a
                                                        multiply-add = 2 FLOPs, matrix ops only)
    wall-clock speedup      S = median latency(D) / median latency(P)
    efficiency              E = S / R -- 1.0: every FLOP saved became time saved (time proportional to
                            FLOPs); 0.8 = the pruned model runs 0.8x as fast as its FLOPs promise. A
                            pruned model that saves no time at all still gets E = 1 / R (not 0), so the
                            report also gives the time-savings efficiency (1 - 1/S) / (1 - 1/R): the
                            fraction of the FLOPs saving realised as time (0 = none, 1 = all).
    S_paired / E_paired     the same from the median of per-round ratios (see Latency): robust to load
                            that drifts during the run (a busy shared machine).

Latency: the models of one comparison are measured in the same run, interleaved: after --warmup calls
each, every round times one forward (``torch.inference_mode``) of every model, in a rotating order, so
slow drifts of the machine hit all models alike. CPU: ``time.perf_counter``; CUDA: CUDA events around
each forward, synchronized before it. --runs N rounds, or by default as many as make the slowest model's
timed total reach --min-time seconds (at least --min-runs). Reported: median, p10/p25/p75/p90, min,
IQR in % of the median, images/s = B / median. --compile (torch.compile) compiles during warm-up.

Runtimes (--runtime, several at once; ``npdg.profile.runtimes``): eager PyTorch, compile (torch.compile),
onnxruntime (the model exported to ONNX by ``npdg.export`` at the measured shape, its logits checked
against PyTorch's, run by ONNX Runtime with as many intra-op threads as torch), openvino (the same ONNX
file, OpenVINO on the CPU). Every model x runtime is measured in the same interleaved run with the
protocol above; S and E of a runtime compare its dense and pruned models; "x <first runtime>" is the
first runtime's median / this runtime's median for the same model (> 1: faster). A runtime whose
package is missing is one line, exit 2, naming the pip package (onnxruntime, onnx, onnxscript, openvino).
The ONNX runtimes measure fp32 only; the per-layer table is always of the eager model.

Per-layer table (torch.profiler): every module's forward is wrapped in a profiler range
(``record_function("npdg.layer:<module path>")``) by forward hooks; a layer's *self* time is its range
minus the ranges of the modules it calls (so a block's residual add or a decoder's interpolate stay with
the block), CPU wall time on CPU, kernel time on CUDA, averaged over --profile-runs forwards of the eager
model (also with --compile). Self FLOPs come from ``FlopCounterMode`` read at the same hooks; they sum to
``npdg.pruning.flops``. Zero-FLOP layers (BatchNorm, ReLU, pooling, interpolation, adds) count 0 FLOPs.
In a comparison (profiled totals T_D, T_P; FLOPs per image f_D, f_P of a layer, F_D, F_P of the model):
    lost time   = (f_D - f_P) * T_D / F_D - (t_D - t_P): the time the layer's FLOPs saving should have
                  saved at the dense model's average cost per FLOP, minus the time it did save. The lost
                  times of all layers sum to T_P - T_D / R = T_P (1 - E), the whole gap; an unpruned
                  layer's is t_P - t_D (noise), a zero-FLOP layer that got faster has a negative one.
    own E       = (t_D / t_P) / (f_D / f_P) for a layer whose FLOPs changed: 1 = its time shrank with its
                  own FLOPs. Large lost time with own E ~ 1: the saved FLOPs were cheap ones (the layer runs
                  more FLOPs per ms than the model average); own E < 1: the pruned shape runs less efficiently.
The rows with the largest lost time are where FLOPs savings did not become time.

Sweep: the model is built with random weights, every prunable unit gets a random score (one draw, shared
by every ratio and round_to), and ``npdg.pruning.select_masks(scores=..., ratio=r, round_to=k)`` +
``npdg.pruning.compact`` build each pruned model; all of them are then measured together with the dense
one. The plot shows speedup S against the FLOPs reduction factor R, one line per round_to (and batch),
with the ideal diagonal S = R and the E = 0.8 line. --layers-at r adds the per-layer comparison of the
dense model with the ratio-r model of every round_to.

On CPU, denormal floats are flushed to zero while measuring (random weights can produce them; trained
models rarely do, and both sides of a comparison get the same treatment).

Bad input (a file that is not an npdg model, an unknown model name, --device cuda without CUDA, a
non-positive size or batch, a runtime that is not installed): one line on stderr, exit code 2.

The package: ``timing`` (settings, inputs, the latency protocol, ratios), ``layers`` (per-layer
attribution), ``runtimes``, ``modes`` (checkpoints and sweep), ``report`` (text), ``plots``, ``__main__``
(the CLI).
"""

from __future__ import annotations

from npdg.profile.layers import (
    LAYER_PREFIX,
    ROOT,
    _LayerHooks,
    _self_times,
    by_type,
    compare_layers,
    layer_profile,
    single_layers,
)
from npdg.profile.modes import profile_checkpoints, runtimes_of, sweep
from npdg.profile.plots import plot_report
from npdg.profile.report import format_report
from npdg.profile.runtimes import RUNTIMES, build_runners, check_runtimes
from npdg.profile.timing import (
    DTYPES,
    ProfileError,
    Settings,
    _Measuring,
    _percentile,
    _timer,
    checkpoint_pair,
    count,
    environment,
    load_checkpoint,
    make_input,
    measure,
    prepare,
    ratios,
    resolve_device,
    summarize,
)


def build_parser():
    from npdg.profile.__main__ import build_parser

    return build_parser()


def main(argv=None) -> int:
    """The CLI (``npdg.profile.__main__``, imported on call: ``python -m npdg.profile`` runs it as __main__)."""
    from npdg.profile.__main__ import main

    return main(argv)


__all__ = [
    "DTYPES", "LAYER_PREFIX", "ROOT", "RUNTIMES", "ProfileError", "Settings", "_LayerHooks", "_Measuring",
    "_percentile", "_self_times", "_timer", "build_parser", "build_runners", "by_type", "check_runtimes",
    "checkpoint_pair", "compare_layers", "count", "environment", "format_report", "layer_profile",
    "load_checkpoint", "main", "make_input", "measure", "plot_report", "prepare", "profile_checkpoints",
    "ratios", "resolve_device", "runtimes_of", "single_layers", "summarize", "sweep",
]
