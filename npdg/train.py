"""Train on one source domain, prune what reacts to style, fine-tune, evaluate on unseen domains.

    python -m npdg.train                                  # NPDG on the embedded benchmark (defaults)
    python -m npdg.train --method slimming --ratio 0.4 --out runs/slim
    python -m npdg.train --preset quick --method erm      # every method end to end in ~2 minutes
    python -m npdg.train --resume runs/slim               # continue an interrupted run
    torchrun --standalone --nproc_per_node=8 -m npdg.train --device=cuda --batch_size=8

A method is a unit of npdg/methods/ (one file each, behind npdg.methods.base.Method): which stages run,
which loss terms a step adds, how it prunes and what it keeps for a resume. Run's stages call only that interface.

    erm       train (cross-entropy)                                   -> evaluate
    dsp       train (cross-entropy on style-perturbed batches)        -> evaluate
    slimming  train (+ s·Σ|γ|) -> prune + compact -> fine-tune        -> evaluate
    npdg      train (DSP + s·Σ w·|γ|, w = style sensitivity) -> prune + compact -> fine-tune (DSP) -> evaluate
    sfp       train (smallest-norm filters zeroed every sfp_every steps) -> prune + compact -> fine-tune -> evaluate
    shade     train (CE on clean + style-hallucinated rows + JSD consistency) -> evaluate

The run directory holds config.json (resolved), train_log.jsonl, checkpoint.pt (resumable state,
written atomically every ckpt_every steps and between stages), dense.pt (before pruning), final.pt (the
model to take away), metrics.json, report.md and its plots. DDP: launched by torchrun, every rank runs
every stage; rank 0 selects the pruning masks and broadcasts them, logs, evaluates and writes files.
"""

from __future__ import annotations

import os

# CPU training shares the cores with DataLoader workers (and often other jobs): OpenMP threads that
# spin-wait for a descheduled sibling stall every op. Measured on the 2-core EPYC, one R18 step (batch 8,
# 96x192) with the machine loaded: 6.8 s with the default wait policy, 3.0 s with PASSIVE. Must be set
# before torch loads OpenMP, hence here, above the imports; an explicit OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import sys  # noqa: E402

from npdg import cli  # noqa: E402
from npdg.builders import build_model, eval_datasets, eval_protocols, train_dataset  # noqa: E402
from npdg.config import load_config  # noqa: E402
from npdg.run import Run, lr_factor, prepare_run_dir, setup_distributed, train  # noqa: E402

__all__ = ["Run", "build_model", "eval_datasets", "eval_protocols", "lr_factor", "main", "prepare_run_dir",
           "setup_distributed", "train", "train_dataset"]


def main(argv: list[str] | None = None) -> dict:
    import argparse

    from npdg import config, knobs

    parser = cli.Parser(prog="python -m npdg.train", description=__doc__.split("\n\n")[0],
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog=lambda: "config keys (--key=value or --key value, a YAML file with --config; "
                               "npdg/config.py):\n\n" + cli.keys_help(config.Config, config.__file__)
                               + "\n\nthe recipe's rarer knobs (method internals, the paper's switches): --help_all")
    parser.add_argument("--help_all", action="store_true", help="also list the recipe's rarer knobs (npdg/knobs.py)")
    parser.add_argument("--config", help="YAML file of config keys")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run with its own config")
    parser.add_argument("--dry_run", "--dry-run", action="store_true",
                        help="check every file the config names, run a few real steps of every stage on this "
                             "machine and print what the full budget will cost (see npdg.dryrun); writes nothing")
    parser.add_argument("--dry_run_batch", type=cli.int_at_least(2), default=None, metavar="N",
                        help="batch of the dry run's steps (default: the config's on CUDA, 2 on CPU)")
    cli.add_debug(parser)
    args, overrides = parser.parse_known_args(argv)
    if args.help_all:
        parser.print_help()
        print("\nthe recipe's rarer knobs (npdg/knobs.py):\n\n" + cli.keys_help(knobs.Knobs, knobs.__file__))
        sys.exit(0)
    if args.resume and (args.config or overrides):
        parser.error("--resume continues a run with the config it was started with; drop the other options")
    if args.resume and args.dry_run:
        parser.error("--dry_run checks a new run's config; it does not combine with --resume")

    def run():
        cfg = None
        if not args.resume:
            cfg = load_config(args.config, overrides)
            cfg.check_files()
            if args.dry_run:
                from npdg.dryrun import dry_run

                return dry_run(cfg, batch=args.dry_run_batch)
        return train(cfg, args.resume)

    result = cli.guard(parser.prog, args.debug, run)
    if isinstance(result, int):
        sys.exit(result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
