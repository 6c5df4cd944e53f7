"""sfp: Soft Filter Pruning (He et al., IJCAI 2018), on the project's unit groups.

Train with plain cross-entropy; every ``sfp_every`` steps (the paper: once per epoch) zero, in every unit group,
the fraction r of its units whose filters have the smallest L2 norm (the paper's criterion: for filter j of layer
i, ||F_ij||_p = (sum_n,k1,k2 |F_ij(n, k1, k2)|^p)^(1/p) with p = 2; the N_i+1 x P_i lowest of layer i are set to 0;
the paper's text was not at hand, so its equations are cited by content, not number). Zeroed
units stay trainable: the next steps update them like any other and they may come back (the "soft" of SFP). At
the end of the train stage a last zeroing picks the units the prune removes; they are removed through the unit
groups, the model compacted and fine-tuned like the other pruning methods.

r is one fraction for every group (the paper's uniform per-layer pruning rate P), kept counts rounded up by
round_to / min_keep as every prune here; by default (flops_target, npdg's 0.6 on a CNN) the smallest r whose
hard prune meets the FLOPs target (bisection, ``select_masks_for_flops``), else ``--ratio``. A soft prune zeroes a
unit's filter, its conv rows and conv bias (a MiT head's q / k / v rows, a Mix-FFN channel's fc1 row), as the
paper does, and leaves BatchNorm γ / β and gates: the gradient still reaches the zeroed filter through them (after
a zeroed conv a training BatchNorm outputs β; zeroing β as well would put the ReLU at 0, whose derivative is 0,
and the unit would never come back). Meanwhile the unit emits the constant ReLU(β); the last zeroing at the end of
the train stage also silences its units (γ = β = 0, ``apply_masks``), so removing them changes nothing.
"""

from __future__ import annotations

import math
import sys

import torch
from torch import nn

from npdg.methods.base import Pruning


def depthwise(module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1


def filters(group):
    """A unit group's filter slices: the weight / bias rows of its producer convs and linears (depthwise convs after
    the unit's first layer, MiT's Mix-FFN, aside)."""
    return [s for s in group.producers if s.attr in ("weight", "bias")
            and isinstance(s.module, (nn.Conv2d, nn.Linear)) and not depthwise(s.module)]


def filter_norms(model) -> dict[str, torch.Tensor]:
    """{group: (size,)}: each unit's L2 norm over the rows of its producer convs / linears (the paper's ||W_j||_2:
    a CNN channel's conv filter, a MiT head's q / k / v rows, a Mix-FFN channel's fc1 row; depthwise convs aside)."""
    out = {}
    for g in model.prunable_units():
        sq = torch.zeros(g.size, dtype=torch.float64, device=g.gamma().device)
        for s in filters(g):
            if s.attr == "weight":
                rows = s.tensor().detach().movedim(s.dim, 0).double().flatten(1).square().sum(1)
                sq += rows[s.offset: s.offset + g.size * s.unit_width].view(g.size, s.unit_width).sum(1)
        out[g.name] = sq.sqrt()
    return out


def layer_masks(model, ratio: float, norms: dict, round_to: int = 8, min_keep: int = 1) -> dict[str, torch.Tensor]:
    """{group: keep-mask}: every group drops round(ratio x size) of its units, the lowest ``norms`` first, its kept
    count rounded up as every prune here (round_to, min_keep; a stable sort keeps the lower index among equals)."""
    from npdg.pruning.select import _kept_count

    masks = {}
    for g in model.prunable_units():
        kept = _kept_count(g, math.floor(ratio * g.size + 0.5), round_to, min_keep)
        keep = torch.zeros(g.size, dtype=torch.bool, device=g.gamma().device)
        keep[torch.argsort(norms[g.name].cpu(), descending=True, stable=True)[:kept].to(keep.device)] = True
        masks[g.name] = keep
    return masks


@torch.no_grad()
def zero_filters_(model, masks: dict) -> None:
    """Zero, in place, the filters (:func:`filters`) of the units ``masks`` drops; everything else stays (the paper's
    soft prune: BatchNorm γ / β, gates untouched, so the gradient still reaches the zeroed filters)."""
    groups = {g.name: g for g in model.prunable_units()}
    for name, keep in masks.items():
        units = (~keep).nonzero().flatten()
        for s in filters(groups[name]):
            s.tensor().index_fill_(s.dim, s.positions(units).to(s.tensor().device), 0)


class SFP(Pruning):
    finetune_iters = 60  # SFP's own recipe ends with the zeroed filters already silent (it reports results without
    #   fine-tuning), so it needs little: 60 of the 260 budget steps, the train stage 200 (~20 zeroings)
    flops_target = 0.6  # npdg's: every pruning method to the same FLOPs, so the rows compare

    @classmethod
    def check(cls, cfg) -> None:
        from npdg.knobs import ConfigError

        if cfg.flops_target == 0 and not 0 < cfg.ratio < 1:
            raise ConfigError(f"ratio must be in (0, 1) for method=sfp, got {cfg.ratio}")
        for name in ("threshold", "prune_residual", "exact_ratio"):
            if getattr(cfg, name):
                raise ConfigError(f"{name}: not an sfp option (sfp zeroes a fraction of every group by filter norm)")
        if cfg.sfp_every < 1:
            raise ConfigError(f"sfp_every must be >= 1, got {cfg.sfp_every}")

    def __init__(self, ctx, model):
        super().__init__(ctx, model)
        self.ratio = None  # r, chosen on the first zeroing (it depends only on the architecture)
        self.masks = None  # the last zeroing's keep-masks (the prune removes what they drop)

    def choose_ratio(self, model) -> float:
        cfg = self.cfg
        if cfg.flops_target <= 0:
            return cfg.ratio
        from npdg.pruning import select_masks_for_flops
        from npdg.report import flops_size

        norms = filter_norms(model)
        _, ratio = select_masks_for_flops(
            model, cfg.flops_target, flops_size(cfg),
            select=lambda r: layer_masks(model, r, norms, cfg.round_to, cfg.min_keep))
        self.ctx.history["prune_ratio"] = ratio
        if self.ctx.main:
            print(f"sfp: per-group ratio {ratio:.4f} meets flops_target {cfg.flops_target}", file=sys.stderr)
        return ratio

    def zero_(self, model) -> None:
        """One soft prune: zero the fraction r of every group with the smallest filter norms."""
        if self.ratio is None:
            self.ratio = self.choose_ratio(model)
        self.masks = layer_masks(model, self.ratio, filter_norms(model), self.cfg.round_to, self.cfg.min_keep)
        zero_filters_(model, self.masks)

    def train_loss_fn(self, model):
        """Cross-entropy; before steps sfp_every + 1, 2 sfp_every + 1, ... the soft prune (no sparsity term)."""
        every = self.cfg.sfp_every

        def loss_fn(net, step, images, labels):
            if step > 1 and (step - 1) % every == 0:
                self.zero_(model)
            return self.task_loss(net, model, images, labels)

        return loss_fn

    def end_train(self, model) -> None:
        """The last soft prune, then its units silenced (γ and β 0, ``apply_masks``): dense.pt computes what the
        compacted model will, the units the prune removes output exactly 0."""
        from npdg.pruning import apply_masks

        self.zero_(model)
        apply_masks(model, self.masks, inplace=True)

    def keep_masks(self, model, sens) -> dict:
        if self.masks is None:
            self.zero_(model)
        return self.masks

    def state(self) -> dict:
        out = super().state()
        if self.masks is not None:
            out["sfp"] = {"ratio": self.ratio, "masks": {k: v.cpu() for k, v in self.masks.items()}}
        return out

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        if state.get("sfp"):
            self.ratio = state["sfp"]["ratio"]
            self.masks = {k: v.to(self.ctx.device) for k, v in state["sfp"]["masks"].items()}
