"""Prunable-unit declarations: the contract between architectures and the pruning code.

Every model returns ``model.prunable_units() -> list[UnitGroup]``; pruning, sensitivity and compaction
read only these declarations and never look at an architecture's classes.

A *unit* is one output channel (CNN, ``kind="channel"``), one attention head (``kind="head"``) or one
Mix-FFN hidden channel (``kind="hidden"``). A :class:`UnitGroup` is the set of units that share one
scaling module:

* ``scale_module`` has ``.weight`` of shape ``(size,)`` = the scaling factors γ, applied on dim 1 of its
  input: a BatchNorm2d (γ = BN weight) or a :class:`Gate` (a learnable multiplier, init 1).
  Its forward OUTPUT is the per-unit activation for sensitivity, always laid out with the unit axis at
  dim 1: channels / hidden -> ``(N, size, H, W)``; heads -> ``(N, heads, L, head_dim)``.
* ``producers``: every tensor whose entries along ``dim`` belong to units of this group (conv/linear
  rows, biases, BN weight/bias/running stats, the gate itself, depthwise-conv channels, q/k/v rows).
  A producer slice of a Linear that reads a LayerNorm may name it as ``input_norm`` (scale-free
  importance of gates, see :mod:`npdg.pruning.sparsity`); the gate group never slices that LayerNorm
  (a MiT residual-stream group does, see ``mit.py``).
* ``consumers``: tensors that read the group's output on an input axis (next conv's ``weight`` dim 1,
  ``proj`` columns), possibly at an ``offset`` into a concatenated input.

Unit ``u`` owns positions ``offset + u * unit_width + [0, unit_width)`` along a slice's ``dim``
(``unit_width`` = head_dim for head rows, 1 otherwise). All offsets are in the coordinates of the model
the declarations were read from, so a compaction must slice all groups of one dense model at once
(see :func:`compact_state_dict`).

Masking (``UnitGroup.mask_``) zeroes γ and, for BN, the bias β: the unit's output becomes exactly 0
after BN/ReLU or the gate, so removing it and its consumer columns leaves the model's output unchanged.
A group's ``name`` is the qualified module name of its scale module and is also the key of the
``widths`` dict every constructor accepts (unit group name -> kept unit count).

**Coupled groups** (:class:`CoupledGroup`, ``kind="residual"``): a residual stream, i.e. channels that
several BatchNorms write into one sum (a ResNet stage: the downsample BN and every block's last BN; the
stem BN where it feeds the stream directly), or a MiT stage's token stream (see ``mit.py``: scaled by
the stream's LayerNorms, written by the patch-embed conv and every block's ``proj`` / ``fc2``; masking
zeroes every writer's rows, ``zero_producers``). They are declared only on request,
``model.prunable_units(residual=True)``, and only by models whose ``supports_residual()`` is True. A
coupled group has several scale modules (``scale_modules``; ``scale_module`` is the first, for size and
device); masking zeroes γ and β of all of them, so every addend of the sum -- hence the sum and the ReLU
after it -- is exactly 0 on a pruned channel. Its name is ``<qualified name of anchor>.<label>``
(e.g. ``backbone.layer2.residual``), a ``widths`` key like any other; ``full_size`` is the dense width,
and ``SegmentationModel.widths()`` lists a coupled group only when it is narrower than that (so the
``arch_config`` / saved file of a model whose streams are dense is unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


class Gate(nn.Module):
    """Learnable per-unit multiplier on dim 1 (init 1, so an unpruned model is bit-identical)."""

    def __init__(self, size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Cast to x's dtype so a bf16/fp16 activation is not promoted to fp32 under autocast.
        return x * self.weight.to(x.dtype).view(1, -1, *([1] * (x.dim() - 2)))

    def extra_repr(self) -> str:
        return f"size={self.weight.numel()}"


@dataclass
class TensorSlice:
    """One axis of one parameter/buffer that loses entries when units are removed."""

    module: nn.Module = field(repr=False)
    attr: str  # "weight", "bias", "running_mean", "running_var"
    dim: int
    offset: int = 0  # where this group's block starts on the axis (concat inputs, the v half of kv)
    unit_width: int = 1  # entries per unit (head_dim for q/k/v rows and proj columns of a head)
    key: str = ""  # state-dict key, filled in by name_groups()
    # Producer rows (dim 0) of a Linear's weight / bias that read a LayerNorm's output: the gate importance
    # measures the effective rows W·diag(norm.weight) and bias b + W·norm.bias (npdg/pruning/sparsity.py).
    input_norm: nn.Module | None = field(default=None, repr=False)

    def tensor(self) -> torch.Tensor:
        return getattr(self.module, self.attr)

    def positions(self, units: torch.Tensor) -> torch.Tensor:
        """Indices along ``dim`` owned by the given unit indices (1-D long tensor)."""
        units = torch.as_tensor(units, dtype=torch.long).flatten()
        within = torch.arange(self.unit_width, dtype=torch.long, device=units.device)
        return (self.offset + units[:, None] * self.unit_width + within[None, :]).flatten()


@dataclass
class UnitGroup:
    """Units that share one scaling module; see the module docstring for the conventions."""

    kind: str  # "channel" | "head" | "hidden"
    scale_module: nn.Module = field(repr=False)
    producers: list[TensorSlice] = field(default_factory=list)
    consumers: list[TensorSlice] = field(default_factory=list)
    name: str = ""  # qualified name of scale_module, filled in by name_groups()
    min_size: int = 1  # a pruner must keep at least this many units

    @property
    def size(self) -> int:
        return self.scale_module.weight.numel()

    @property
    def activation_module(self) -> nn.Module:
        """Hook this module's forward output to capture the (N, size, ...) activations."""
        return self.scale_module

    def gamma(self) -> torch.Tensor:
        """γ of shape (size,), the live parameter (autograd flows into it for the sparsity loss)."""
        return self.scale_module.weight

    def slices(self) -> list[TensorSlice]:
        return self.producers + self.consumers

    @torch.no_grad()
    def mask_(self, pruned: torch.Tensor) -> None:
        """Silence units in place: zero γ (and the BN bias). ``pruned``: bool (size,) or indices."""
        pruned = torch.as_tensor(pruned, device=self.gamma().device)
        for t in (self.scale_module.weight, getattr(self.scale_module, "bias", None)):
            if t is not None:
                t[pruned] = 0

    def check(self) -> None:
        """Raise if a declared slice does not fit the tensor it points at."""
        for s in self.slices():
            extent = s.tensor().shape[s.dim]
            end = s.offset + self.size * s.unit_width
            if end > extent:
                raise AssertionError(f"{self.name}: {s.key} dim {s.dim} has {extent} < {end} entries")


@dataclass
class CoupledGroup(UnitGroup):
    """A residual stream: channels scaled by several BatchNorms whose outputs are summed, or by the
    LayerNorms of a MiT stage's token stream (module docstring).

    Importance (``npdg.pruning.sparsity``) = the MEAN of |γ| over ``scale_modules`` (the stream's BNs;
    for MiT its LayerNorms: patch-embed norm, every norm1 / norm2, the stage norm): on the scale of one
    norm's |γ| whatever the number of blocks, so streams of different depth rank together (kind "residual"
    is ranked separately from the block-inner "channel" units anyway). ``activation_module`` is where the
    stream is observed for style sensitivity: the stage output (the stream after its last block's ReLU).
    """

    scale_modules: list = field(default_factory=list, repr=False)
    anchor: nn.Module | None = field(default=None, repr=False)  # names the group: <anchor name>.<label>
    label: str = "residual"
    full_size: int = 0  # dense width of the stream
    observed_at: nn.Module | None = field(default=None, repr=False)
    # True: masking zeroes every producer slice's entries of the pruned channels (writer rows and biases,
    # LayerNorm γ/β; MiT streams), not only γ/β of the scale modules (BatchNorm streams)
    zero_producers: bool = False

    @property
    def activation_module(self) -> nn.Module:
        return self.observed_at if self.observed_at is not None else self.scale_module

    def gammas(self) -> list[torch.Tensor]:
        """Every γ that scales the group's channels (live parameters)."""
        return [m.weight for m in self.scale_modules]

    @torch.no_grad()
    def mask_(self, pruned: torch.Tensor) -> None:
        units = torch.as_tensor(pruned, device=self.gamma().device)
        index = units.nonzero().flatten() if units.dtype == torch.bool else units.long().flatten()
        hit = {}  # id(tensor) -> (tensor, bool mask of its entries): a LayerNorm γ that is both a scale module
        #   and a producer slice is zeroed once

        def mark(t, dim, pos):
            if id(t) not in hit:
                hit[id(t)] = (t, torch.zeros_like(t, dtype=torch.bool))
            hit[id(t)][1].index_fill_(dim, pos.to(t.device), True)

        if self.zero_producers:
            for s in self.producers:
                mark(s.tensor(), s.dim, s.positions(index))
        for m in self.scale_modules:
            for t in (m.weight, getattr(m, "bias", None)):
                if t is not None:
                    mark(t, 0, index)
        for t, where in hit.values():
            t[where] = 0


def coupled_channel_group(
    pairs: list, consumers: list[TensorSlice], anchor: nn.Module, label: str, full_size: int, observed_at=None
) -> CoupledGroup:
    """A residual stream written by the (conv, BN) ``pairs`` (each conv -> BN adds into the stream)."""
    producers = [s for conv, bn in pairs for s in bn_producers(conv, bn)]
    bns = [bn for _, bn in pairs]
    return CoupledGroup("residual", bns[0], producers, list(consumers), scale_modules=bns, anchor=anchor,
                        label=label, full_size=full_size, observed_at=observed_at)


def name_groups(model: nn.Module, groups: list[UnitGroup]) -> list[UnitGroup]:
    """Fill in group names and slice keys from the model's module names."""
    names = {id(m): n for n, m in model.named_modules()}
    for g in groups:
        if isinstance(g, CoupledGroup):
            base = names[id(g.anchor)]
            g.name = f"{base}.{g.label}" if base else g.label
        else:
            g.name = names[id(g.scale_module)]
        for s in g.slices():
            s.key = f"{names[id(s.module)]}.{s.attr}"
    return groups


def bn_producers(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> list[TensorSlice]:
    """Output-channel slices of a conv (+ its bias) followed by a BatchNorm."""
    out = [TensorSlice(conv, "weight", 0)]
    if conv.bias is not None:
        out.append(TensorSlice(conv, "bias", 0))
    out += [TensorSlice(bn, a, 0) for a in ("weight", "bias", "running_mean", "running_var")]
    return out


def channel_group(conv: nn.Conv2d, bn: nn.BatchNorm2d, consumers: list[TensorSlice]) -> UnitGroup:
    """The usual CNN unit group: conv -> BN (-> ReLU) feeding ``consumers``."""
    return UnitGroup("channel", bn, bn_producers(conv, bn), list(consumers))


def input_channels(conv: nn.Module, offset: int = 0) -> TensorSlice:
    """Consumer slice of a conv/linear reading a group's channels at ``offset`` of its input."""
    return TensorSlice(conv, "weight", 1, offset)


def sub_widths(widths: dict | None, prefix: str) -> dict:
    """The part of a ``widths`` dict under ``prefix.`` with the prefix stripped."""
    head = prefix + "."
    return {k[len(head) :]: v for k, v in (widths or {}).items() if k.startswith(head)}


def supports_residual(model: nn.Module) -> bool:
    """True if the model declares coupled residual-stream groups (``prunable_units(residual=True)``)."""
    return bool(getattr(model, "supports_residual", lambda: False)())


def groups_by_name(model: nn.Module, residual: bool = False, names=()) -> dict:
    """{name: group} of ``model.prunable_units()``; the coupled residual groups too when ``residual`` or
    when ``names`` (e.g. a masks dict) mention a group the default declarations lack."""
    if residual and supports_residual(model):  # (l1_penalty calls this every step: declare the groups once)
        return {g.name: g for g in model.prunable_units(residual=True)}
    groups = {g.name: g for g in model.prunable_units()}
    if set(names) - set(groups) and supports_residual(model):
        groups = {g.name: g for g in model.prunable_units(residual=True)}
    return groups


def kept_positions(
    model: nn.Module, keep: dict[str, torch.Tensor]
) -> tuple[dict[tuple[str, int], torch.Tensor], dict[str, int]]:
    """Per tensor axis, the indices that survive pruning; plus the new ``widths``.

    ``keep`` maps group name -> kept unit indices (groups not listed keep everything). Returns
    ``{(state-dict key, dim): sorted kept indices along dim}`` for every declared axis (a tensor may
    appear with dim 0 and dim 1, e.g. a conv that both produces and consumes pruned channels), and
    ``{group name: kept count}`` for every group.
    """
    groups = groups_by_name(model, names=keep)  # keep may name coupled groups
    unknown = set(keep) - set(groups)
    if unknown:
        raise KeyError(f"unknown unit groups {sorted(unknown)}")
    axis_mask: dict[tuple[str, int], torch.Tensor] = {}  # (key, dim) -> bool mask over the axis
    widths = {}
    for name, g in groups.items():
        kept = torch.as_tensor(keep.get(name, torch.arange(g.size)), dtype=torch.long).cpu()
        dropped = torch.ones(g.size, dtype=torch.bool)
        dropped[kept] = False
        widths[name] = int(g.size - dropped.sum())
        dropped = dropped.nonzero().flatten()
        for s in g.slices():
            extent = s.tensor().shape[s.dim]
            mask = axis_mask.setdefault((s.key, s.dim), torch.ones(extent, dtype=torch.bool))
            mask[s.positions(dropped)] = False
    return {axis: mask.nonzero().flatten() for axis, mask in axis_mask.items()}, widths


def compact_state_dict(model: nn.Module, keep: dict[str, torch.Tensor]) -> tuple[dict, dict[str, int]]:
    """Reference compaction: the model's state dict with every declared axis sliced to the kept units.

    Rebuild with ``create_model(name, **{**model.arch_config(), "widths": widths})`` and load the
    state dict. Plain PyTorch: for tests and as the oracle of the faster compaction in ``npdg.pruning``.
    """
    positions, widths = kept_positions(model, keep)
    state = dict(model.state_dict())
    for (key, dim), index in positions.items():
        state[key] = state[key].index_select(dim, index.to(state[key].device)).contiguous()
    return state, widths
