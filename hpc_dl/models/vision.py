"""torchvision's classic ImageNet architectures, with their stems adapted on request.

``small_input`` replaces the first convolution by a 3x3 stride-1 one and drops the
early pooling, the usual change for 32x32 images (CIFAR), so the feature maps do not
shrink to nothing; otherwise the architectures are torchvision's own. The first
convolution also takes the data's channel count (e.g. 1 for grey digits).
"""

import re

from torch import nn


def _resnet(model, c, small):
    if small:
        model.conv1 = nn.Conv2d(c, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    elif c != 3:
        model.conv1 = nn.Conv2d(c, 64, 7, 2, 3, bias=False)


def _vgg(model, c, small):
    if c != 3:
        model.features[0] = nn.Conv2d(c, 64, 3, padding=1)
    if small:  # five poolings leave 1x1; the 7x7-pooled 4096-wide head would be 100M parameters of padding
        num_classes = model.classifier[-1].out_features
        model.avgpool = nn.AdaptiveAvgPool2d(1)
        model.classifier = nn.Sequential(
            nn.Linear(512, 512), nn.ReLU(True), nn.Dropout(0.5), nn.Linear(512, num_classes)
        )


def _alexnet(model, c, small):
    if small:
        model.features[0] = nn.Conv2d(c, 64, 3, 1, 1)
    elif c != 3:
        model.features[0] = nn.Conv2d(c, 64, 11, 4, 2)


def _googlenet(model, c, small):
    from torchvision.models.googlenet import BasicConv2d

    if small:
        model.conv1 = BasicConv2d(c, 64, kernel_size=3, stride=1, padding=1)
        model.maxpool1 = nn.Identity()
        model.maxpool2 = nn.Identity()
    elif c != 3:
        model.conv1 = BasicConv2d(c, 64, kernel_size=7, stride=2, padding=3)


STEMS = {"resnet": _resnet, "vgg": _vgg, "alexnet": _alexnet, "googlenet": _googlenet}  # by family


def stem(name: str):
    """The stem adapter of a torchvision model's family (``resnet50`` -> ``_resnet``)."""
    return STEMS[re.match(r"[a-z]+", name).group()]


def build(name: str, in_channels: int, num_outputs: int, small_input: bool) -> nn.Module:
    import torchvision  # here, not at import: torchvision takes a second to load

    extra = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    model = torchvision.models.get_model(name, weights=None, num_classes=num_outputs, **extra)
    stem(name)(model, in_channels, small_input)
    return model
