"""SegFormer-B0..B5: MiT encoder + all-MLP decoder.

Decoder: each stage feature -> 1x1 projection to ``embed_dim`` -> bilinear to stride 4 -> concat
(stage 4, 3, 2, 1 order, as SegFormer) -> fuse 1x1 conv + BN + ReLU -> dropout -> 1x1 classifier ->
bilinear upsample to the input size. Prunable: every attention head and Mix-FFN hidden channel of the
encoder (see ``mit.py``) and the fuse channels of the decoder (BN γ); with ``prunable_units(residual=True)``
also each stage's residual stream (``backbone.stages.{i}.residual``, see ``mit.py``), whose readers include
the decoder's ``linear_c[i]`` input columns.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from npdg.models.base import SegmentationModel
from npdg.models.deeplab import ConvBNReLU
from npdg.models.mit import MixVisionTransformer
from npdg.models.registry import register_model
from npdg.models.units import TensorSlice, UnitGroup, channel_group, input_channels, sub_widths

VARIANTS = {  # name -> (stage widths, stage depths, decoder embed dim)
    "b0": ((32, 64, 160, 256), (2, 2, 2, 2), 256),
    "b1": ((64, 128, 320, 512), (2, 2, 2, 2), 256),
    "b2": ((64, 128, 320, 512), (3, 4, 6, 3), 768),
    "b3": ((64, 128, 320, 512), (3, 4, 18, 3), 768),
    "b4": ((64, 128, 320, 512), (3, 8, 27, 3), 768),
    "b5": ((64, 128, 320, 512), (3, 6, 40, 3), 768),
}


class SegFormerHead(nn.Module):
    def __init__(self, in_dims, embed_dim, num_classes, widths=None):
        super().__init__()
        self.linear_c = nn.ModuleList(nn.Conv2d(c, embed_dim, 1) for c in in_dims)
        self.fuse = ConvBNReLU(embed_dim * len(in_dims), (widths or {}).get("fuse.bn", embed_dim), 1)
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Conv2d(self.fuse.bn.num_features, num_classes, 1)

    def forward(self, feats):
        size = feats[0].shape[-2:]
        projected = [
            F.interpolate(proj(f), size=size, mode="bilinear", align_corners=False)
            for proj, f in zip(self.linear_c, feats, strict=True)
        ]
        x = self.fuse(torch.cat(projected[::-1], dim=1))
        return self.classifier(self.dropout(x))

    def unit_groups(self) -> list[UnitGroup]:
        return [channel_group(self.fuse.conv, self.fuse.bn, [input_channels(self.classifier)])]

    def input_consumers(self) -> list[list[TensorSlice]]:
        """Per input feature: the slices reading its channels (the 1x1 projection's input columns)."""
        return [[input_channels(proj)] for proj in self.linear_c]


class SegFormer(SegmentationModel):
    def __init__(self, variant="b0", num_classes=19, drop_path_rate=0.1, widths=None, input_norm=False,
                 style_point="stage"):
        # variant: implied by the name; style_point stored only when not the default (older checkpoints rebuild)
        point = {"style_point": style_point} if style_point != "stage" else {}
        super().__init__(num_classes, widths, input_norm, drop_path_rate=drop_path_rate, **point)
        dims, depths, embed_dim = VARIANTS[variant]
        self.backbone = MixVisionTransformer(
            dims, depths, drop_path_rate=drop_path_rate, widths=sub_widths(widths, "backbone"),
            style_point=style_point,
        )
        self.head = SegFormerHead(self.backbone.out_channels, embed_dim, num_classes, sub_widths(widths, "head"))
        for m in self.head.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self._check_widths(widths)

    def forward(self, x):
        logits = self.head(self.backbone(self.normalize_input(x)))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def supports_residual(self) -> bool:
        return True

    def _unit_groups(self, residual: bool = False) -> list[UnitGroup]:
        groups = self.backbone.unit_groups() + self.head.unit_groups()
        if residual:  # coupled streams last: the default groups keep their order
            groups += self.backbone.stream_groups(self.head.input_consumers())
        return groups

    @property
    def style_layer(self) -> nn.Module:
        return self.backbone.style_layer

    @property
    def style_channels(self) -> int:
        return self.backbone.out_channels[0]


def _builder(variant):
    def build(num_classes=19, drop_path_rate=0.1, widths=None, input_norm=False, style_point="stage"):
        return SegFormer(variant, num_classes, drop_path_rate, widths, input_norm, style_point)

    return build


for _variant in VARIANTS:
    register_model(f"segformer_{_variant}", residual=True)(_builder(_variant))
