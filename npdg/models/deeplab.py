"""DeepLabV3+ (ASPP + low-level decoder) on ResNet or VGG-16-BN backbones.

Head layout (the same for every backbone; VGG-16 uses conv5_3 as the high-level and conv3_3 as the
low-level feature):

    high --ASPP--> 5 branches [1x1, 3x3 r1, 3x3 r2, 3x3 r3, image pool] (256 each) --concat-->
         project 1x1 (256) --upsample to low-level size--+
    low ---reduce 1x1 (48)-------------------------------+--concat--> fuse1 3x3 (256) -> fuse2 3x3 (256)
         -> classifier 1x1 -> bilinear upsample to the input size

Every conv of the head is followed by BN and is declared prunable; a branch feeding a concat declares
its consumer at its offset in the concatenated input. The image-pool branch's BN sees one value per
channel and sample, so training needs a batch of at least 2 (as in torchvision / mmseg DeepLab).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from npdg.models.base import SegmentationModel
from npdg.models.registry import register_model
from npdg.models.resnet import ResNet
from npdg.models.units import UnitGroup, channel_group, input_channels, sub_widths
from npdg.models.vgg import VGG16BN

ASPP_RATES = {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}  # keep the field of view per stride


class ConvBNReLU(nn.Module):
    def __init__(self, cin, cout, kernel=1, dilation=1):
        super().__init__()
        self.conv = nn.Conv2d(
            cin, cout, kernel, padding=dilation * (kernel // 2), dilation=dilation, bias=False
        )
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class ImagePooling(ConvBNReLU):
    def forward(self, x):
        pooled = super().forward(F.adaptive_avg_pool2d(x, 1))
        return pooled.expand(-1, -1, *x.shape[-2:])


class ASPP(nn.Module):
    def __init__(self, cin, rates, channels=256, widths=None):
        super().__init__()
        w = widths or {}
        branches = [ConvBNReLU(cin, w.get("branches.0.bn", channels), 1)]
        for i, r in enumerate(rates, start=1):
            branches.append(ConvBNReLU(cin, w.get(f"branches.{i}.bn", channels), 3, r))
        branches.append(ImagePooling(cin, w.get(f"branches.{len(rates) + 1}.bn", channels)))
        self.branches = nn.ModuleList(branches)
        concat = sum(b.bn.num_features for b in self.branches)
        self.project = ConvBNReLU(concat, w.get("project.bn", channels), 1)
        self.dropout = nn.Dropout(0.1)

    def forward(self, x):
        return self.dropout(self.project(torch.cat([b(x) for b in self.branches], dim=1)))

    def unit_groups(self, out_consumers) -> list[UnitGroup]:
        groups, offset = [], 0
        for b in self.branches:
            groups.append(channel_group(b.conv, b.bn, [input_channels(self.project.conv, offset)]))
            offset += b.bn.num_features
        groups.append(channel_group(self.project.conv, self.project.bn, out_consumers))
        return groups


class DeepLabV3PlusHead(nn.Module):
    def __init__(self, in_channels, low_channels, num_classes, rates, widths=None):
        super().__init__()
        w = widths or {}
        self.aspp = ASPP(in_channels, rates, widths=sub_widths(w, "aspp"))
        self.reduce = ConvBNReLU(low_channels, w.get("reduce.bn", 48), 1)
        concat = self.aspp.project.bn.num_features + self.reduce.bn.num_features
        self.fuse1 = ConvBNReLU(concat, w.get("fuse1.bn", 256), 3)
        self.fuse2 = ConvBNReLU(self.fuse1.bn.num_features, w.get("fuse2.bn", 256), 3)
        self.classifier = nn.Conv2d(self.fuse2.bn.num_features, num_classes, 1)

    def forward(self, low, high):
        x = self.aspp(high)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        x = torch.cat([x, self.reduce(low)], dim=1)
        return self.classifier(self.fuse2(self.fuse1(x)))

    def input_consumers(self):
        return [input_channels(b.conv) for b in self.aspp.branches]

    def low_level_consumers(self):
        return [input_channels(self.reduce.conv)]

    def unit_groups(self) -> list[UnitGroup]:
        high_width = self.aspp.project.bn.num_features
        groups = self.aspp.unit_groups([input_channels(self.fuse1.conv, 0)])
        groups.append(
            channel_group(self.reduce.conv, self.reduce.bn, [input_channels(self.fuse1.conv, high_width)])
        )
        groups.append(channel_group(self.fuse1.conv, self.fuse1.bn, [input_channels(self.fuse2.conv)]))
        groups.append(channel_group(self.fuse2.conv, self.fuse2.bn, [input_channels(self.classifier)]))
        return groups


class DeepLabV3Plus(SegmentationModel):
    def __init__(self, backbone: str, num_classes=19, output_stride=16, widths=None, input_norm=False):
        super().__init__(num_classes, widths, input_norm, output_stride=output_stride)  # backbone: implied by the name
        if output_stride not in ASPP_RATES:
            raise ValueError(f"output_stride must be one of {sorted(ASPP_RATES)}, got {output_stride}")
        bw = sub_widths(widths, "backbone")
        if backbone == "vgg16_bn":
            self.backbone = VGG16BN(output_stride, bw)
        else:
            self.backbone = ResNet(backbone, output_stride, bw)
        self.head = DeepLabV3PlusHead(
            self.backbone.out_channels,
            self.backbone.low_channels,
            num_classes,
            ASPP_RATES[output_stride],
            sub_widths(widths, "head"),
        )
        for m in self.head.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self._check_widths(widths)

    def forward(self, x):
        low, high = self.backbone(self.normalize_input(x))
        logits = self.head(low, high)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def supports_residual(self) -> bool:
        return isinstance(self.backbone, ResNet)  # VGG-16 has no residual streams

    def _unit_groups(self, residual: bool = False) -> list[UnitGroup]:
        backbone = self.backbone.unit_groups(self.head.low_level_consumers(), self.head.input_consumers())
        groups = backbone + self.head.unit_groups()
        if residual and self.supports_residual():  # coupled streams last: the default groups keep their order
            groups += self.backbone.stream_groups(self.head.low_level_consumers(), self.head.input_consumers())
        return groups

    @property
    def style_layer(self) -> nn.Module:
        return self.backbone.style_layer

    @property
    def style_channels(self) -> int:
        return self.backbone.style_channels


def _builder(backbone):
    def build(num_classes=19, output_stride=16, widths=None, input_norm=False):
        return DeepLabV3Plus(backbone, num_classes, output_stride, widths, input_norm)

    return build


for _name, _backbone in [
    ("deeplabv3plus_r18", "resnet18"),
    ("deeplabv3plus_r50", "resnet50"),
    ("deeplabv3plus_r101", "resnet101"),
    ("deeplab_vgg16", "vgg16_bn"),
]:
    register_model(_name, residual=_backbone != "vgg16_bn")(_builder(_backbone))
