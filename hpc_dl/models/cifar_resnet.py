"""The CIFAR ResNets of He et al. 2016 (section 4.2): 6n+2 layers, three stages of n basic
blocks with 16, 32 and 64 channels on 32x32 input. ResNet-20 has about 0.27M parameters.
Shortcuts that change shape use a 1x1 convolution (the paper's option B)."""

import torch.nn.functional as F
from torch import nn


def blocks_per_stage(name: str) -> int:
    """``resnet<6n+2>`` -> n (resnet20 -> 3, resnet110 -> 18)."""
    layers = int(name.removeprefix("resnet"))
    if (layers - 2) % 6:
        raise ValueError(f"a CIFAR ResNet has 6n+2 layers, not {layers}")
    return (layers - 2) // 6


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x), inplace=True)


class CifarResNet(nn.Module):
    def __init__(self, depth_name: str, in_channels: int, num_outputs: int, width: int = 16):
        super().__init__()
        n = blocks_per_stage(depth_name)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(True)
        )
        layers, cin = [], width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                layers.append(BasicBlock(cin, cout, 2 if stage > 0 and i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_outputs))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.head(self.layers(self.stem(x)))
