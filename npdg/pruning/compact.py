"""Physical compaction: the masked model rebuilt as a plain, smaller model of the same architecture.

All declared tensor axes of all groups are sliced in ONE ``npdg.ops.compact_many`` call (one kernel
launch on CUDA; the compiled extension on CPU) from the index sets of
:func:`npdg.models.units.kept_positions`; the model is rebuilt from its registry name and the new
``widths`` and gets the sliced state dict. ``npdg.models.units.compact_state_dict`` is the plain-PyTorch
reference of the same thing (tests and benches compare against it).

The rebuilt model's random initialisation is skipped: a strict load replaces every parameter and buffer
anyway, and drawing the random init was most of the time of a CPU compaction (~1.3 s of ~2.2 s for
DeepLabV3+ R101). Skipping it also leaves the global RNG untouched by ``compact``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from npdg import ops
from npdg.models.registry import create_model
from npdg.models.units import kept_positions
from npdg.pruning.masks import PruningError, validate_masks

_RANDOM_INITS = ("uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_",
                 "xavier_uniform_", "xavier_normal_", "orthogonal_", "sparse_")


class _SkipRandomFills(TorchFunctionMode):
    """Make the random fills of ``torch.nn.init`` (and ``Tensor.uniform_`` / ``normal_``) no-ops.

    Both levels are listed because a mode does not see the calls made inside a call it intercepted.
    Torch function modes are thread-local, so a model built concurrently in another thread is unaffected.
    """

    _SKIPPED = frozenset(
        [torch.Tensor.uniform_, torch.Tensor.normal_, *(getattr(torch.nn.init, n) for n in _RANDOM_INITS)]
    )

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._SKIPPED:
            return args[0] if args else kwargs["tensor"]  # init functions pass the tensor by keyword
        return func(*args, **kwargs)


def compact(model: nn.Module, masks: dict) -> nn.Module:
    """A new model, physically without the pruned units, whose output equals ``apply_masks(model, masks)``.

    Same registry name, ``arch_config()`` with the kept ``widths`` (so ``npdg.save_model`` round-trips
    it), same device, dtypes and train/eval mode; built on the model's device, with no tensor shared with
    ``model``. ``masks``: {group name: bool keep-mask}; groups not listed keep every unit.
    """
    validate_masks(model, masks)
    name = getattr(model, "registry_name", "")
    if not name:
        raise PruningError("model has no registry_name; build it with npdg.models.create_model")
    keep = {n: m.nonzero().flatten().cpu() for n, m in masks.items()}
    positions, widths = kept_positions(model, keep)

    state = model.state_dict()
    axes: dict[str, list] = {}  # key -> [out_index, in_index], None = keep that dim whole
    for (key, dim), index in positions.items():
        if dim not in (0, 1):
            raise PruningError(f"{key}: only dims 0 and 1 can be sliced, a unit group declares dim {dim}")
        src = state[key]
        entry = axes.setdefault(key, [None, None])
        if index.numel() != src.shape[dim]:  # a full axis needs no gather
            entry[dim] = index.to(src.device)
    keys = list(axes)
    sliced = ops.compact_many([state[k] for k in keys], [axes[k][0] for k in keys], [axes[k][1] for k in keys])
    new_state = {k: v.clone() for k, v in state.items() if k not in axes}  # untouched: copied as they are
    new_state.update(zip(keys, sliced, strict=True))

    device = next((t.device for t in state.values()), torch.device("cpu"))
    # parameters are created on the device (not filled on CPU and moved), without their random init
    with torch.device(device), _SkipRandomFills():
        small = create_model(name, **{**model.arch_config(), "widths": widths})
    # assign: the sliced tensors become the parameters (keeping their dtype), no second copy
    small.load_state_dict(new_state, strict=True, assign=True)
    return small.to(device).train(model.training)
