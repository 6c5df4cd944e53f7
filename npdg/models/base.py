"""What every segmentation model in the registry offers beyond ``forward``.

* ``forward(x (N, 3, H, W)) -> logits (N, num_classes, H, W)`` for any H, W.
* ``prunable_units(residual=False) -> list[UnitGroup]`` (see ``units.py``); ``residual=True`` adds the
  coupled residual-stream groups of models whose ``supports_residual()`` is True
  (DeepLabV3+ ResNet, SegFormer).
* ``style_layer``: the early backbone module (after the stem / first stage, output stride 4; a MiT built with
  ``style_point="embed"``: an identity on stage 1's patch embedding, before its blocks) whose
  output (N, ``style_channels``, H/4, W/4) a forward hook may replace to perturb feature style, e.g.
  ``model.style_layer.register_forward_hook(lambda m, i, out: adain(out, mu, sigma))``.
* ``deep_style_layers``: the backbone modules after ``style_layer`` whose outputs (N, C, h, w) feed the next
  stage -- every stage output after the style point but the last (ResNet layer2, layer3; VGG pool3, pool4;
  MiT the stage outputs up to stage 3); SHADE's retrospection consistency (``npdg.methods.shade``) compares the
  features of the last of them.
* ``arch_config()``: the plain-data constructor kwargs (incl. current ``widths``) that rebuild this
  architecture via ``create_model(model.registry_name, **cfg)``; ``save_model`` stores them.
* ``input_norm=True`` (every model): ``forward`` first standardises each image per channel over its pixels
  (:meth:`normalize_input`, instance normalisation without affine), so a per-channel affine change of the
  image's colours (brightness, contrast, tint) does not reach the first layer. Part of the model: stored in
  ``arch_config()`` (only when on, so older checkpoints rebuild unchanged), kept by compaction, exported.
"""

from __future__ import annotations

import numbers

from torch import nn
from torch.nn import functional as F

from npdg.models.units import CoupledGroup, UnitGroup, name_groups


class SegmentationModel(nn.Module):
    registry_name: str = ""  # set by create_model

    def __init__(self, num_classes: int, widths: dict | None = None, input_norm: bool = False, **arch_kwargs):
        super().__init__()
        bad = {k: v for k, v in (widths or {}).items() if not isinstance(v, numbers.Integral) or v < 1}
        if bad:
            raise ValueError(f"invalid widths (each group keeps at least 1 unit): {bad}")
        self.num_classes = num_classes
        # Plain constructor kwargs except widths (those are read back from the live modules).
        self._arch_kwargs = {"num_classes": num_classes, **arch_kwargs}
        self.input_norm = bool(input_norm)

    def normalize_input(self, x):
        """``forward``'s first step: with ``input_norm`` each image (N, C, H, W) minus its per-channel mean over
        H x W, divided by its per-channel std (biased, eps 1e-5 on the variance); without, ``x`` itself."""
        return F.instance_norm(x, eps=1e-5) if self.input_norm else x

    def _check_widths(self, widths: dict | None) -> None:
        """Subclasses call this last in __init__: a misspelt group name must not build a dense model."""
        built = self._all_widths()
        unknown = sorted(set(widths or {}) - set(built))
        if unknown:
            raise ValueError(
                f"widths for unknown unit groups {unknown[:5]}; groups are e.g. {list(built)[:3]}"
            )
        wrong = {k: (v, built[k]) for k, v in (widths or {}).items() if built[k] != v}
        if wrong:
            raise AssertionError(f"widths not honoured by the constructor (asked, built): {wrong}")

    # Subclasses return unnamed groups; names/keys are filled in from the module tree.
    # A subclass with coupled groups overrides supports_residual() and accepts ``residual=True`` here.
    def _unit_groups(self) -> list[UnitGroup]:
        raise NotImplementedError

    def supports_residual(self) -> bool:
        """True if ``prunable_units(residual=True)`` declares coupled residual-stream groups."""
        return False

    def prunable_units(self, residual: bool = False) -> list[UnitGroup]:
        """The unit groups; ``residual=True`` adds the coupled residual streams (where the model has any;
        a model without them returns the same groups as ``residual=False``)."""
        if residual and self.supports_residual():
            return name_groups(self, self._unit_groups(residual=True))
        return name_groups(self, self._unit_groups())

    def _all_widths(self) -> dict[str, int]:
        return {g.name: g.size for g in self.prunable_units(residual=True)}

    def widths(self) -> dict[str, int]:
        """Current unit count of every group (group name -> size); a coupled residual group only when it
        is narrower than dense (so models with dense streams describe themselves as before)."""
        if not self.supports_residual():
            return {g.name: g.size for g in self.prunable_units()}
        return {g.name: g.size for g in self.prunable_units(residual=True)
                if not isinstance(g, CoupledGroup) or g.size != g.full_size}

    def arch_config(self) -> dict:
        norm = {"input_norm": True} if self.input_norm else {}  # only when on: older checkpoints rebuild unchanged
        return {**self._arch_kwargs, **norm, "widths": self.widths()}

    @property
    def style_layer(self) -> nn.Module:
        raise NotImplementedError

    @property
    def style_channels(self) -> int:
        raise NotImplementedError

    @property
    def deep_style_layers(self) -> list[nn.Module]:
        return self.backbone.deep_style_layers
