from torch import nn


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al., 1998) on 32x32 input: C1 conv5x5 (6 maps) -> S2 avg-pool ->
    C3 conv5x5 (16) -> S4 avg-pool -> C5 conv5x5 (120) -> F6 (84) -> output, tanh throughout.
    With one input channel and 10 classes it has 61,706 parameters. (C3 is fully connected
    to S2 here, as in most modern re-implementations, not the paper's sparse table.)"""

    def __init__(self, in_channels: int = 1, num_outputs: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5), nn.Tanh(), nn.AvgPool2d(2),  # 32 -> 28 -> 14
            nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2),  # 14 -> 10 -> 5
            nn.Conv2d(16, 120, 5), nn.Tanh(),  # 5 -> 1
        )  # fmt: skip
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(120, 84), nn.Tanh(), nn.Linear(84, num_outputs))

    def forward(self, x):
        return self.classifier(self.features(x))
