"""Truncated ResNet34 with torchvision-compatible parameter names.

Only ``conv1`` .. ``layer3`` exist: ``layer4`` is never run by Patch2Pix and is
ignored when a checkpoint stores it. The first block of ``layer3`` has stride 1
(the official ``change_stride``), so ``layer3`` stays at 1/8 resolution.
"""

from typing import List

import torch
from torch import nn

MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics of the backbone's inputs
STD = (0.229, 0.224, 0.225)


def normalize(image: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` RGB in [0, 1] (or ``(B, 1, H, W)`` gray, repeated to
    RGB) -> ImageNet-normalised ``(B, 3, H, W)``."""
    if image.shape[1] == 1:
        image = image.expand(-1, 3, -1, -1)
    mean = torch.tensor(MEAN, dtype=image.dtype, device=image.device)
    std = torch.tensor(STD, dtype=image.dtype, device=image.device)
    return (image - mean[:, None, None]) / std[:, None, None]


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1, downsample: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if downsample:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def _layer(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
    first = BasicBlock(cin, cout, stride, downsample=stride != 1 or cin != cout)
    return nn.Sequential(first, *[BasicBlock(cout, cout) for _ in range(blocks - 1)])


class ResNet34Features(nn.Module):
    """ResNet34 up to ``layer3`` with ``layer3`` at stride 8.

    ``forward`` returns the five Patch2Pix feature levels of an image batch
    ``(B, 3, H, W)``: ``[image (3, /1), conv1 (64, /2), layer1 (64, /4),
    layer2 (128, /8), layer3 (256, /8)]``.
    """

    channels = (3, 64, 64, 128, 256)
    strides = (1, 2, 4, 8, 8)

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = _layer(64, 64, 3, 1)
        self.layer2 = _layer(64, 128, 4, 2)
        self.layer3 = _layer(128, 256, 6, 1)  # stride changed from 2 to 1

    def forward(self, image: torch.Tensor) -> List[torch.Tensor]:
        f1 = self.relu(self.bn1(self.conv1(image)))
        # the max-pool is ~15x faster on channels-last memory (and exact);
        # the convolutions stay contiguous (their results depend on the layout)
        f1 = f1.contiguous(memory_format=torch.channels_last)
        f2 = self.layer1(self.maxpool(f1).contiguous())
        f3 = self.layer2(f2)
        f4 = self.layer3(f3)
        return [image, f1, f2, f3, f4]
