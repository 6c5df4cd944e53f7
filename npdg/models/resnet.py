"""ResNet-18/50/101 backbones (torchvision parameter names, so ImageNet weights load unchanged).

Output stride 16 or 8 by replacing the stride of layer4 (and layer3) with dilation, as DeepLab does.

Prunable units: by default only the channels INSIDE a residual block (BasicBlock: conv1; Bottleneck:
conv1 and conv2). A ``widths`` entry ``"layer2.0.bn1"`` sets a block's inner width.

Residual streams (``unit_groups(..., residual=True)``, off by default): the channels a skip connection
adds are summed across every block of a stage, so each stream is ONE coupled group (``CoupledGroup``,
kind "residual"), written by the downsample conv+BN and every block's last conv+BN (conv2/bn2 of a
BasicBlock, conv3/bn3 of a Bottleneck) and read by the next blocks' conv1, the next stage's first conv1
and downsample conv, and the head (layer1 = the low-level feature, layer4 = the high-level feature).
Groups and ``widths`` keys: ``"layer{i}.residual"`` per stage; Bottleneck nets also ``"stem"`` (the stem
conv1/bn1, read by layer1's first conv1 and downsample). In BasicBlock nets layer1 has no downsample, so
the stem writes into layer1's stream: the stem BN is one of ``layer1.residual``'s scale modules.
Whether a block has a downsample depends only on the dense architecture, never on pruned widths.
"""

from __future__ import annotations

from torch import nn

from npdg.models.units import UnitGroup, channel_group, coupled_channel_group, input_channels, sub_widths


def _conv_bn(cin, cout, kernel, stride=1, dilation=1):
    pad = dilation * (kernel // 2)
    conv = nn.Conv2d(cin, cout, kernel, stride, pad, dilation=dilation, bias=False)
    return conv, nn.BatchNorm2d(cout)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride=1, dilation=1, downsample=None, widths=None, out=None):
        super().__init__()
        inner = (widths or {}).get("bn1", planes)
        self.conv1, self.bn1 = _conv_bn(cin, inner, 3, stride, dilation)
        self.conv2, self.bn2 = _conv_bn(inner, out or planes, 3, 1, dilation)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)

    def unit_groups(self) -> list[UnitGroup]:
        return [channel_group(self.conv1, self.bn1, [input_channels(self.conv2)])]

    def stream_writer(self):
        """(conv, BN) whose output is added into the residual stream."""
        return self.conv2, self.bn2


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride=1, dilation=1, downsample=None, widths=None, out=None):
        super().__init__()
        widths = widths or {}
        w1, w2 = widths.get("bn1", planes), widths.get("bn2", planes)
        self.conv1, self.bn1 = _conv_bn(cin, w1, 1)
        self.conv2, self.bn2 = _conv_bn(w1, w2, 3, stride, dilation)  # stride on the 3x3 (ResNet v1.5)
        self.conv3, self.bn3 = _conv_bn(w2, out or planes * self.expansion, 1)
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

    def stream_writer(self):
        """(conv, BN) whose output is added into the residual stream."""
        return self.conv3, self.bn3


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
        widths = widths or {}
        self._block = block
        # stream widths (dense unless a residual-pruned ``widths`` says otherwise); BasicBlock: stem = layer1
        stream = [widths.get(f"layer{i}.residual", 64 * 2 ** (i - 1) * block.expansion) for i in range(1, 5)]
        stem = stream[0] if block.expansion == 1 else widths.get("stem", 64)
        self.conv1, self.bn1 = _conv_bn(3, stem, 7, stride=2)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self._cin, self._dense_cin, self._dilation = stem, 64, 1
        # Stages whose stride becomes dilation: layer4 for OS 16, layer3 + layer4 for OS 8.
        dilate = {32: (), 16: (4,), 8: (3, 4)}[output_stride]
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), depths, strict=True), start=1):
            stride = 1 if i == 1 else 2
            layer = self._make_layer(block, planes, n, stride, i in dilate, sub_widths(widths, f"layer{i}"),
                                     stream[i - 1])
            self.add_module(f"layer{i}", layer)
        self.low_channels = stream[0]
        self.out_channels = stream[3]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block, planes, n, stride, dilate, widths, out):
        first_dilation = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self._dense_cin != planes * block.expansion:  # the dense architecture decides
            downsample = nn.Sequential(*_conv_bn(self._cin, out, 1, stride))
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
                    out,
                )
            )
            self._cin, self._dense_cin = out, planes * block.expansion
        return nn.Sequential(*blocks)

    @property
    def style_layer(self) -> nn.Module:
        return self.layer1

    @property
    def style_channels(self) -> int:
        return self.low_channels

    @property
    def deep_style_layers(self) -> list[nn.Module]:
        return [self.layer2, self.layer3]

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        high = self.layer4(self.layer3(self.layer2(low)))
        return low, high

    def unit_groups(self, low_consumers=(), high_consumers=(), residual=False) -> list[UnitGroup]:
        """Block-inner groups; with ``residual`` also one coupled group per residual stream (appended
        after them, stem first), whose consumers include ``low_consumers`` (readers of layer1's output)
        and ``high_consumers`` (readers of layer4's output)."""
        groups = []
        for i in range(1, 5):
            for blk in getattr(self, f"layer{i}"):
                groups += blk.unit_groups()
        if residual:
            groups += self.stream_groups(low_consumers, high_consumers)
        return groups

    def _readers(self, layer) -> list:
        """Input-channel slices of a stage's first block: its conv1 and its downsample conv."""
        first = layer[0]
        out = [input_channels(first.conv1)]
        if first.downsample is not None:
            out.append(input_channels(first.downsample[0]))
        return out

    def stream_groups(self, low_consumers=(), high_consumers=()) -> list[UnitGroup]:
        layers = [getattr(self, f"layer{i}") for i in range(1, 5)]
        basic = self._block.expansion == 1
        groups = []
        if not basic:  # the stem's 64 channels are their own stream, read by layer1's first block
            groups.append(coupled_channel_group([(self.conv1, self.bn1)], self._readers(layers[0]), self,
                                                "stem", 64, observed_at=self.maxpool))
        for i, layer in enumerate(layers, start=1):
            pairs = [(self.conv1, self.bn1)] if basic and i == 1 else []
            first = layer[0]
            if first.downsample is not None:
                pairs.append((first.downsample[0], first.downsample[1]))
            pairs += [blk.stream_writer() for blk in layer]
            readers = [input_channels(blk.conv1) for blk in layer[1:]]
            if basic and i == 1:
                readers = self._readers(layer) + readers
            readers += self._readers(layers[i]) if i < 4 else list(high_consumers)
            if i == 1:
                readers += list(low_consumers)
            full = 64 * 2 ** (i - 1) * self._block.expansion
            groups.append(coupled_channel_group(pairs, readers, layer, "residual", full, observed_at=layer))
        return groups
