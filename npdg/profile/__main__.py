"""``python -m npdg.profile``: the command line (see the ``npdg.profile`` package docstring)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import npdg.profile as P
from npdg import checkpoint, cli
from npdg.profile.runtimes import RUNTIMES
from npdg.profile.timing import DTYPES, Settings, resolve_device

_positive_int = cli.int_at_least(1)
_non_negative_int = cli.int_at_least(0)


def _size(text):
    from npdg.data.spec import hw_arg

    return hw_arg(text)


def _round_tos(text):
    try:
        vals = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--round_to: expected comma-separated integers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"--round_to: every value must be >= 1, got {text!r}")
    return vals


def _parse_floats(text: str, what: str, lo: float, hi: float) -> list:
    try:
        vals = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what}: expected comma-separated numbers, got {text!r}") from None
    if not vals or any(not lo <= v < hi for v in vals):
        raise argparse.ArgumentTypeError(f"{what}: every value must be in [{lo}, {hi}), got {text!r}")
    return vals


def _runtimes(text):
    vals = [v.strip() for v in str(text).split(",") if v.strip()]
    bad = [v for v in vals if v not in RUNTIMES]
    if not vals or bad:
        raise argparse.ArgumentTypeError(f"--runtime: unknown runtime {', '.join(bad) or repr(text)} "
                                         f"(use {', '.join(RUNTIMES)})")
    return vals


def build_parser() -> argparse.ArgumentParser:
    p = cli.Parser(prog="python -m npdg.profile", description=P.__doc__.split("\n\n")[0],
                   formatter_class=argparse.RawDescriptionHelpFormatter,
                   epilog="Definitions (FLOPs reduction, speedup, efficiency, lost time): see the module docstring "
                          "(python -c 'import npdg.profile; help(npdg.profile)').")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", help="npdg model file (or training checkpoint), or a run directory "
                                           "(then dense.pt vs final.pt)")
    what.add_argument("--sweep", metavar="MODEL", help="random-γ prune MODEL at every --ratios x --round_to")
    p.add_argument("--compare", metavar="CKPT2", help="a second (pruned) model to compare with --checkpoint")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu | cuda[:i]")
    p.add_argument("--batch", type=_positive_int, nargs="+", default=[1], help="batch sizes (default 1)")
    p.add_argument("--size", type=_size, default=(512, 512), help="input HxW (default 512x512)")
    p.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    p.add_argument("--channels-last", action="store_true", help="channels_last models and inputs")
    p.add_argument("--cudnn-benchmark", "--cudnn_benchmark", dest="cudnn_benchmark",
                   action=argparse.BooleanOptionalAction, default=True,
                   help="CUDA: cuDNN times its convolution algorithms for each shape (default; as a fixed-shape "
                        "deployment would); --no-cudnn-benchmark: its heuristics")
    p.add_argument("--compile", action="store_true", help="torch.compile the models for the latency runs "
                                                          "(= --runtime compile)")
    p.add_argument("--runtime", type=_runtimes, nargs="+", default=None, metavar="RT",
                   help=f"runtimes, measured side by side in one run: {' | '.join(RUNTIMES)} (default eager; "
                        "several: --runtime eager onnxruntime)")
    p.add_argument("--warmup", type=_positive_int, default=3, help="untimed forwards per model (default 3)")
    p.add_argument("--runs", type=_non_negative_int, default=0,
                   help="timed rounds (default 0 = auto: >= --min-runs, until --min-time s per model)")
    p.add_argument("--min-runs", type=_positive_int, default=10)
    p.add_argument("--min-time", type=float, default=2.0, help="seconds of timed forwards per model (auto runs)")
    p.add_argument("--profile-runs", type=_non_negative_int, default=3,
                   help="profiled forwards per model for the per-layer table (0 = no table)")
    p.add_argument("--top", type=_positive_int, default=15, help="layers shown in the tables")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch intra-op threads (CPU)")
    p.add_argument("--ratios", type=lambda t: _parse_floats(t, "--ratios", 0.0, 1.0),
                   default=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6], help="sweep: unit ratios (default 0,0.1,...,0.6)")
    p.add_argument("--round_to", "--round-to", dest="round_to", type=_round_tos, default=[1, 8],
                   help="sweep: round_to values, one line each (default 1,8)")
    p.add_argument("--prune_residual", "--prune-residual", dest="prune_residual", action="store_true",
                   help="sweep: also prune the coupled residual streams at each ratio (DeepLabV3+ ResNets, "
                        "SegFormer; a model without them: error)")
    p.add_argument("--layers-at", type=lambda t: _parse_floats(t, "--layers-at", 0.0, 1.0)[0], default=None,
                   help="sweep: per-layer comparison of the dense model with the model at this ratio")
    p.add_argument("--seed", type=int, default=0, help="sweep: seed of the weights and the random scores")
    p.add_argument("--json", type=Path, help="write the full report (incl. every latency sample) as JSON")
    p.add_argument("--plot", type=Path, help="write a PNG plot")
    cli.add_debug(p)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.compare is not None and args.checkpoint is None:
        parser.error("--compare needs --checkpoint")
    if args.prune_residual and args.sweep is None:
        parser.error("--prune_residual needs --sweep (a checkpoint keeps the widths it was saved with)")
    return cli.guard(parser.prog, args.debug, lambda: _run(args))


def _run(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    s = Settings(device=args.device, size=tuple(args.size), batches=tuple(args.batch), dtype=args.dtype,
                 channels_last=args.channels_last, compile=args.compile, warmup=args.warmup, runs=args.runs,
                 min_runs=args.min_runs, min_time=args.min_time, profile_runs=args.profile_runs,
                 threads=args.threads or 0, cudnn_benchmark=args.cudnn_benchmark,
                 runtimes=tuple(rt for group in (args.runtime or [["eager"]]) for rt in group))
    s.device = str(resolve_device(args.device))
    if args.sweep is not None:
        report = P.sweep(args.sweep, args.ratios, args.round_to, s, seed=args.seed, layers_at=args.layers_at,
                         prune_residual=args.prune_residual)
    else:
        report = P.profile_checkpoints(P.checkpoint_pair(args.checkpoint, args.compare), s)
    print(P.format_report(report, args.top))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.write_json(args.json, report, indent=1)
    if args.plot:
        P.plot_report(report, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
