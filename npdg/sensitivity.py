"""Style sensitivity of every prunable unit (DESIGN §2.2): which filters / heads move with style.

    sens = compute_sensitivity(model, images, dsp, k=4, lam=0.4)
    penalty = npdg.pruning.l1_penalty(model, sens.weights)   # s * sum_i w_i |gamma_i|
    sens.save(run_dir / "sensitivity.json"); plot_sensitivity(sens, run_dir / "sensitivity.png")

One forward in eval mode under no_grad: a hook on ``model.style_layer`` turns the clean features f (N, ...)
into K style variants ``cat([f, restyle_1(f), ..., restyle_{K-1}(f)])`` (K*N, ...): variant 0 is the
source style itself, variants 1..K-1 are D-VAE styles of the same content (``FeatureDSP.random_restyle``:
a posterior draw moved ``dsp.reach`` source spreads along a random latent direction; random, not
adversarial, so no labels are needed, but as far from the source as the training perturbations go).
Hooks on every group's ``activation_module`` view its output as A (K, N, C, L) (heads: (N, heads, L, d)
-> C = heads, L*d samples) and call ``npdg.ops.style_sensitivity`` at once, keeping only per-unit scores,
so no two layers' activations are ever alive together.

Scores: unary[c] = Var_k = Cov[c, c]; binary[c] = sum_{j != c} |Cov[c, j]| (units that move together).
Weights: each normalised by its layer mean (layers of different scale compare), mixed
w = lam * unary + (1 - lam) * binary and rescaled to mean 1 over all units, so a style-sensitive unit gets
a LARGER coefficient in the sparsity term. A zero layer mean (no unit varies, or binary of a one-unit layer)
counts as the neutral 1. Units upstream of the perturbation point (e.g. ResNet layer1's inner channels,
SegFormer stage-1 blocks with ``style_point="stage"``: computed before ``style_layer`` returns, so they cannot
see the perturbation; ``"embed"``, npdg's MiT default, puts it before them)
are reported with unary = binary = 0 and get the neutral weight 1 before the global rescale.

Scale: the activations are the groups' γ-scaled outputs, so unary/binary grow with |γ| -- the magnitude the
prune ranks by. Every pass therefore also computes **scale-free** scores: each unit's covariances divided by
the unit's own total variance over all K·N·L samples, unary_rel[c] = Var_k[c] / Var[c] (the fraction of the
unit's variation that style explains, in [0, 1]) and binary_rel[c] = sum_{j != c} |Cov[c, j]| / sqrt(Var[c]
Var[j]), mixed the same way into ``relative`` weights. ``scale="relative"`` makes those the sparsity weights;
:func:`pruned_vs_kept` always compares the scale-free ones (a γ-scaled weight would just restate |γ|).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from npdg import ops
from npdg.dsp.perturb import perturbation


@dataclass
class Sensitivity:
    """Per prunable group (by name): raw unary / binary scores and the final weights, each (size,)."""

    unary: dict[str, Tensor]
    binary: dict[str, Tensor]
    weights: dict[str, Tensor]
    upstream: list[str] = field(default_factory=list)  # groups before the perturbation point (weight 1)
    k: int = 0
    lam: float = 0.0
    relative: dict[str, Tensor] | None = None  # scale-free weights (module docstring); None: not computed
    scale: str = "output"  # which scores ``weights`` were mixed from: output (γ-scaled) | relative

    @property
    def scale_free(self) -> dict[str, Tensor]:
        """The scale-free weights (falls back to ``weights`` for files written before they existed)."""
        return self.relative if self.relative is not None else self.weights

    def to_dict(self) -> dict:
        def plain(d):
            return {name: t.detach().cpu().tolist() for name, t in d.items()}

        return {"k": self.k, "lam": self.lam, "scale": self.scale, "upstream": list(self.upstream),
                "unary": plain(self.unary), "binary": plain(self.binary), "weights": plain(self.weights),
                **({"relative": plain(self.relative)} if self.relative is not None else {})}

    def save(self, path) -> None:
        from npdg.checkpoint import write_json

        write_json(path, self.to_dict(), indent=None)

    @classmethod
    def load(cls, path) -> Sensitivity:
        d = json.loads(Path(path).read_text())

        def tensors(m):
            return {name: torch.tensor(v, dtype=torch.float32) for name, v in m.items()}

        return cls(tensors(d["unary"]), tensors(d["binary"]), tensors(d["weights"]), list(d.get("upstream", [])),
                   int(d.get("k", 0)), float(d.get("lam", 0.0)),
                   tensors(d["relative"]) if "relative" in d else None, str(d.get("scale", "output")))


def pruned_vs_kept(sens: Sensitivity, masks: dict[str, Tensor]) -> dict | None:
    """Did the prune remove the style-sensitive units? The mean scale-free weight (:attr:`Sensitivity.scale_free`
    of ``sens``, e.g. the last pass of the train stage) of the units ``masks`` removes and of those it keeps,
    over the groups downstream of the perturbation (upstream ones all weigh 1 and say nothing). None when no
    such unit was removed."""
    pruned, kept = [], []
    for name, w in sens.scale_free.items():
        if name in sens.upstream or name not in masks:
            continue
        keep = masks[name].to(torch.bool).cpu()
        pruned.append(w.cpu()[~keep])
        kept.append(w.cpu()[keep])
    pruned = torch.cat(pruned) if pruned else torch.zeros(0)
    if pruned.numel() == 0:
        return None
    kept = torch.cat(kept)
    return {"pruned": pruned.mean().item(), "kept": kept.mean().item() if kept.numel() else float("nan"),
            "units_pruned": pruned.numel(), "units_kept": kept.numel()}


def _layer_normalised(t: Tensor) -> Tensor:
    mean = t.mean()
    return t / mean if mean > 0 else torch.ones_like(t)


def sensitivity_weights(unary: dict[str, Tensor], binary: dict[str, Tensor], lam: float,
                        upstream=()) -> dict[str, Tensor]:
    """lam * unary/mean_layer + (1 - lam) * binary/mean_layer per group (1 for upstream groups), rescaled
    to mean 1 over all units. (Each layer already averages 1 after its own normalisation, so the rescale
    only guards the invariant: the weights move penalty between the units of a layer, not between layers.)"""
    w = {name: torch.ones_like(u) if name in upstream
         else lam * _layer_normalised(u) + (1 - lam) * _layer_normalised(binary[name])
         for name, u in unary.items()}
    total = torch.cat([v.flatten() for v in w.values()]).mean()
    return {name: v / total for name, v in w.items()}


@torch.no_grad()
def compute_sensitivity(model, images: Tensor, dsp, k: int = 4, lam: float = 0.4, precision: str = "ieee",
                        generator: torch.Generator | None = None, scale: str = "output",
                        residual: bool = False) -> Sensitivity:
    """Unary / binary style sensitivity and sparsity weights of every group of ``model.prunable_units()``.

    ``residual`` (default False): also the coupled residual streams (``prunable_units(residual=True)``).
    A stream is observed at ONE position, its ``activation_module`` = the stage output (the stream after
    the stage's last block; the R50/R101 stem at the max-pool), not mixed over every block that adds into
    it: a simpler choice, and the stage output is what the next stage and the head read. Streams
    computed before the perturbation point (the stem, and layer1 whose output is the perturbed feature
    itself: its hook runs before the perturbation's) are upstream (neutral weight 1).

    images (N, 3, H, W) is the content batch; dsp a :class:`npdg.dsp.perturb.FeatureDSP` whose D-VAE makes
    the K - 1 new styles (an untrained D-VAE borrows a standardiser from this batch and forgets it, so
    eval-mode statistics never enter training); generator seeds those styles. precision is passed to
    ``npdg.ops.style_sensitivity``; scale which scores make ``weights`` (output | relative, see the module
    docstring; both are computed). The model's train/eval mode is restored afterwards.
    """
    if scale not in ("output", "relative"):
        raise ValueError(f"compute_sensitivity: scale must be output or relative, got {scale!r}")
    if k < 2:
        raise ValueError(f"compute_sensitivity: k must be >= 2 style variants, got {k}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"compute_sensitivity: lam must be in [0, 1], got {lam}")
    n = images.shape[0]
    groups = model.prunable_units(residual=residual)
    unary, binary, upstream = {}, {}, []
    unary_rel, binary_rel = {}, {}
    styled = [False]

    def style_hook(f):
        styled[0] = True
        return torch.cat([f, dsp.random_restyle(f.repeat(k - 1, *([1] * (f.dim() - 1))), generator)])

    def unit_hook(name):
        def hook(module, inputs, out):
            if name in unary:
                raise RuntimeError(f"compute_sensitivity: {name} ran twice in one forward")
            if not styled[0]:  # computed before the perturbation: identical across styles
                upstream.append(name)
                unary[name] = binary[name] = out.new_zeros(out.shape[1], dtype=torch.float32)
                unary_rel[name] = binary_rel[name] = unary[name]
                return
            if out.shape[0] != k * n:
                raise RuntimeError(f"compute_sensitivity: {name} saw batch {out.shape[0]}, expected {k}x{n}")
            acts = out.reshape(k, n, out.shape[1], -1)
            var, cov = ops.style_sensitivity(acts, precision=precision)
            unary[name] = var.float()
            binary[name] = cov.float().abs().fill_diagonal_(0).sum(1)
            # scale-free: relative to each unit's own variance over all K*N*L samples (a dead unit: 0)
            total = acts.float().var(dim=(0, 1, 3), unbiased=False)
            inv = torch.where(total > 0, total.clamp_min(1e-30).rsqrt(), torch.zeros_like(total))
            rel = cov.float().abs() * inv[:, None] * inv[None, :]
            unary_rel[name] = rel.diagonal().clone()
            binary_rel[name] = rel.fill_diagonal_(0).sum(1)

        return hook

    was_training = model.training
    handles = [g.activation_module.register_forward_hook(unit_hook(g.name)) for g in groups]
    try:
        model.eval()
        with perturbation(model, style_hook), dsp.provisional_standardiser():
            model(images)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    missing = [g.name for g in groups if g.name not in unary]
    if missing:
        raise RuntimeError(f"compute_sensitivity: groups never ran in the forward: {missing[:5]}")
    names = [g.name for g in groups]
    unary, binary = {m: unary[m] for m in names}, {m: binary[m] for m in names}
    relative = sensitivity_weights({m: unary_rel[m] for m in names}, {m: binary_rel[m] for m in names}, lam,
                                   set(upstream))
    weights = relative if scale == "relative" else sensitivity_weights(unary, binary, lam, set(upstream))
    return Sensitivity(unary, binary, weights, upstream, k, lam, relative, scale)


def plot_sensitivity(sens: Sensitivity, path) -> None:
    """PNG, one column per layer (group): mean unary and mean binary score (log scale), and the spread of
    the weights (box: quartiles, whiskers: min / max; per-layer normalisation makes every mean ~1).
    Upstream groups (neutral weight) are grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(sens.weights)
    colours = ["0.7" if name in sens.upstream else "C0" for name in names]
    fig, axes = plt.subplots(3, 1, figsize=(max(8, 0.18 * len(names)), 9), sharex=True)
    for ax, title, values in ((axes[0], "mean unary (variance across styles)", sens.unary),
                              (axes[1], "mean binary (sum of |cov| with the layer's other units)", sens.binary)):
        means = [float(values[name].float().mean()) for name in names]
        ax.bar(range(len(names)), means, color=colours)
        if any(m > 0 for m in means):
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
    box = axes[2].boxplot([sens.weights[name].float().cpu().numpy() for name in names],
                          positions=range(len(names)), whis=(0, 100), widths=0.6, patch_artist=True)
    for patch, colour in zip(box["boxes"], colours, strict=True):
        patch.set_facecolor(colour)
    axes[2].axhline(1.0, color="k", lw=0.6, ls="--")
    axes[2].set_title(f"weights (lam={sens.lam:g}; larger = pruned harder)", fontsize=9)
    axes[2].set_xticks(range(len(names)), names, rotation=90, fontsize=5)
    fig.tight_layout()
    from npdg.checkpoint import save_figure

    save_figure(fig, path, dpi=120)
    plt.close(fig)
