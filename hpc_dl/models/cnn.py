from torch import nn

from hpc_dl.errors import ConfigError


class SmallCNN(nn.Module):
    """Conv-pool blocks (conv, [BatchNorm], ReLU, 2x2 max-pool) and a classifier head."""

    def __init__(self, input_shape, num_outputs, channels, kernel_size=3, batch_norm=True, hidden=128, dropout=0.0):
        super().__init__()
        if len(input_shape) != 3:
            raise ConfigError(f"model.name = 'cnn' needs image input (C, H, W); the data gives shape {input_shape}")
        c, h, w = input_shape
        if min(h, w) >> len(channels) < 1:
            raise ConfigError(
                f"model.channels = {channels}: {len(channels)} pooling blocks halve {h}x{w} input below 1 pixel"
            )
        blocks: list[nn.Module] = []
        for out in channels:
            blocks += [nn.Conv2d(c, out, kernel_size, padding=kernel_size // 2, bias=not batch_norm)]
            blocks += [nn.BatchNorm2d(out)] if batch_norm else []
            blocks += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c, h, w = out, h // 2, w // 2
        self.features = nn.Sequential(*blocks)
        flat = c * h * w
        head: list[nn.Module] = [nn.Flatten()]
        if hidden:
            head += [nn.Linear(flat, hidden), nn.ReLU(inplace=True)]
            flat = hidden
        head += [nn.Dropout(dropout), nn.Linear(flat, num_outputs)]
        self.classifier = nn.Sequential(*head)

    def forward(self, x):
        return self.classifier(self.features(x))
