"""ResNet-18/50/101 backbones (torchvision parameter names, so ImageNet weights load unchanged).

Output stride 16 or 8 by replacing the stride of layer4 (and layer3) with dilation, as DeepLab does.

Prunable units: only the channels INSIDE a residual block (BasicBlock: conv1; Bottleneck: conv1 and
conv2). The residual-stream channels (stem, block outputs, downsample) are summed across every block
of a stage, so pruning them would couple whole stages; like Network Slimming / Torch-Pruning on ResNet
we keep them dense. A ``widths`` entry ``"layer2.0.bn1"`` sets a block's inner width.
"""

from __future__ import annotations

from torch import nn

from npdg.models.units import UnitGroup, channel_group, input_channels, sub_widths


def _conv_bn(cin, cout, kernel, stride=1, dilation=1):
    pad = dilation * (kernel // 2)
    conv = nn.Conv2d(cin, cout, kernel, stride, pad, dilation=dilation, bias=False)
    return conv, nn.BatchNorm2d(cout)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride=1, dilation=1, downsample=None, widths=None):
        super().__init__()
        inner = (widths or {}).get("bn1", planes)
        self.conv1, self.bn1 = _conv_bn(cin, inner, 3, stride, dilation)
        self.conv2, self.bn2 = _conv_bn(inner, planes, 3, 1, dilation)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)

    def unit_groups(self) -> list[UnitGroup]:
        return [channel_group(self.conv1, self.bn1, [input_channels(self.conv2)])]


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride=1, dilation=1, downsample=None, widths=None):
        super().__init__()
        widths = widths or {}
        w1, w2 = widths.get("bn1", planes), widths.get("bn2", planes)
        self.conv1, self.bn1 = _conv_bn(cin, w1, 1)
        self.conv2, self.bn2 = _conv_bn(w1, w2, 3, stride, dilation)  # stride on the 3x3 (ResNet v1.5)
        self.conv3, self.bn3 = _conv_bn(w2, planes * self.expansion, 1)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)

    def unit_groups(self) -> list[UnitGroup]:
        return [
            channel_group(self.conv1, self.bn1, [input_channels(self.conv2)]),
            channel_group(self.conv2, self.bn2, [input_channels(self.conv3)]),
        ]


ARCHS = {  # name -> (block, blocks per stage)
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}


class ResNet(nn.Module):
    """Returns (low-level feature at stride 4 = layer1 output, high-level feature = layer4 output)."""

    def __init__(self, arch="resnet50", output_stride=16, widths=None):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        block, depths = ARCHS[arch]
        self.conv1, self.bn1 = _conv_bn(3, 64, 7, stride=2)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self._cin, self._dilation = 64, 1
        # Stages whose stride becomes dilation: layer4 for OS 16, layer3 + layer4 for OS 8.
        dilate = {32: (), 16: (4,), 8: (3, 4)}[output_stride]
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), depths, strict=True), start=1):
            stride = 1 if i == 1 else 2
            layer = self._make_layer(block, planes, n, stride, i in dilate, sub_widths(widths, f"layer{i}"))
            self.add_module(f"layer{i}", layer)
        self.low_channels = 64 * block.expansion
        self.out_channels = 512 * block.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block, planes, n, stride, dilate, widths):
        first_dilation = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self._cin != planes * block.expansion:
            downsample = nn.Sequential(*_conv_bn(self._cin, planes * block.expansion, 1, stride))
        blocks = []
        for j in range(n):
            blocks.append(
                block(
                    self._cin,
                    planes,
                    stride if j == 0 else 1,
                    first_dilation if j == 0 else self._dilation,
                    downsample if j == 0 else None,
                    sub_widths(widths, str(j)),
                )
            )
            self._cin = planes * block.expansion
        return nn.Sequential(*blocks)

    @property
    def style_layer(self) -> nn.Module:
        return self.layer1

    @property
    def style_channels(self) -> int:
        return self.low_channels

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        high = self.layer4(self.layer3(self.layer2(low)))
        return low, high

    def unit_groups(self, low_consumers=(), high_consumers=()) -> list[UnitGroup]:
        # The residual stream (low/high outputs) is not prunable, so their consumers are ignored.
        groups = []
        for i in range(1, 5):
            for blk in getattr(self, f"layer{i}"):
                groups += blk.unit_groups()
        return groups
