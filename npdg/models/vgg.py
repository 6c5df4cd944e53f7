"""VGG-16 with BatchNorm as a segmentation backbone (torchvision ``vgg16_bn`` ``features.*`` names).

``features`` keeps torchvision's flat indexing (conv, BN, ReLU, ..., MaxPool) so ImageNet weights load
unchanged; the pools that DeepLab removes for a finer output stride become ``nn.Identity`` (they hold
no parameters, so indices and keys stay put). OS 16: pool5 removed; OS 8: pool4 too, and conv5_x
dilated by 2. The classifier (fc6-8) is dropped. Pools round up (``ceil_mode``) so any input size,
however small or odd, keeps at least one pixel (same weights as torchvision, which rounds down).

Every conv is a plain chain link, so every conv's output channels are prunable; the ``widths`` key of
conv k is the name of its BN, e.g. ``"features.1"`` for conv1_1.
"""

from __future__ import annotations

from torch import nn

from npdg.models.units import UnitGroup, channel_group, input_channels

VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
LOW_LEVEL_CONV = 6  # conv3_3: stride 4, 256 channels, feeds the DeepLabV3+ decoder
STYLE_POOL = 1  # pool2 output (stride 4) is the style-perturbation point


class VGG16BN(nn.Module):
    """Returns (low-level feature = conv3_3 output at stride 4, high-level feature = conv5_3 output)."""

    def __init__(self, output_stride=16, widths=None):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        widths = widths or {}
        removed_pools = {32: (), 16: (4,), 8: (3, 4)}[output_stride]  # 0-based pool numbers
        layers, self._convs, self._bns, self._pools = [], [], [], []
        cin, dilation = 3, 1
        for v in VGG16_CFG:
            if v == "M":
                removed = len(self._pools) in removed_pools
                self._pools.append(len(layers))
                layers.append(nn.Identity() if removed else nn.MaxPool2d(2, 2, ceil_mode=True))
                if removed and len(self._pools) == 4:  # pool4 gone: conv5_x keep their field of view
                    dilation = 2
                continue
            cout = widths.get(f"features.{len(layers) + 1}", v)
            self._convs.append(len(layers))
            self._bns.append(len(layers) + 1)
            layers += [
                nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
            ]
            cin = cout
        self.features = nn.Sequential(*layers)
        self._low_index = self._convs[LOW_LEVEL_CONV] + 2  # its ReLU
        self.low_channels = self.features[self._convs[LOW_LEVEL_CONV] + 1].num_features
        self.out_channels = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    @property
    def style_layer(self) -> nn.Module:
        return self.features[self._pools[STYLE_POOL]]

    @property
    def deep_style_layers(self) -> list[nn.Module]:
        """pool3 and pool4 (an identity where the output stride removed the pool)."""
        return [self.features[i] for i in self._pools[STYLE_POOL + 1:-1]]

    @property
    def style_channels(self) -> int:
        return self.features[self._pools[STYLE_POOL] - 2].num_features

    def forward(self, x):
        low = None
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i == self._low_index:
                low = x
        return low, x

    def unit_groups(self, low_consumers=(), high_consumers=()) -> list[UnitGroup]:
        groups = []
        for k, (ci, bi) in enumerate(zip(self._convs, self._bns, strict=True)):
            if k + 1 < len(self._convs):
                consumers = [input_channels(self.features[self._convs[k + 1]])]
            else:
                consumers = list(high_consumers)
            if k == LOW_LEVEL_CONV:
                consumers += list(low_consumers)
            groups.append(channel_group(self.features[ci], self.features[bi], consumers))
        return groups
