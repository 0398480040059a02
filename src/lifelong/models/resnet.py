"""The reduced ResNet-18 of the continual-learning literature.

Lopez-Paz & Ranzato (2017, "Gradient episodic memory for continual learning") shrank ResNet-18
(He et al. 2016) for CIFAR-100 (their code: github.com/facebookresearch/GradientEpisodicMemory,
`model/common.py`, `ResNet18(nclasses, nf=20)`); A-GEM (Chaudhry et al. 2019) and ER (Chaudhry
et al. 2019, "On tiny episodic memories") use the same network, and DER (Buzzega et al. 2020;
github.com/aimagelab/mammoth, `backbone/ResNet18.py`) the same structure at nf = 64
(`width=64`: the CIFAR ResNet-18 of about 11M parameters). With nf = `width` (20 by default):

    conv 3x3, nf, stride 1 → BatchNorm → ReLU                  (no max-pool)
    4 stages of 2 BasicBlocks, widths nf, 2nf, 4nf, 8nf; the first block of stages 2-4 has
    stride 2 and a 1x1 conv + BatchNorm shortcut
    global average pool → Linear(8nf → outputs)

BasicBlock: conv 3x3 → BN → ReLU → conv 3x3 → BN, plus the shortcut, then ReLU. Convolutions
have no bias. At nf = 20 with 3 input channels and 100 outputs it has 1,109,240 parameters (the
"about 1.1M" quoted in the papers). The reference pools with a fixed 4x4 window, which on 32x32
inputs is the global average used here; the global pool also fits other sizes (28x28 leaves
4x4 maps too). `batch_norm=False` replaces every BatchNorm with an identity (convolutions then
get a bias): not the literature's network, but one without running statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .images import image_shape

Norm = Callable[[int], nn.Module]


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, norm: Norm, bias: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=bias)
        self.bn1 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=bias)
        self.bn2 = norm(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=bias), norm(planes))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))  # not in place: torch.func (per-sample) friendly


class ResNet18(nn.Module):
    """See the module docstring; `self.head` holds every output unit of the scenario."""

    def __init__(self, input_shape: Sequence[int], num_outputs: int, *, width: int = 20,
                 batch_norm: bool = True) -> None:
        super().__init__()
        channels, height, width_px = image_shape("resnet18", input_shape)
        self.image_shape = (channels, height, width_px)
        norm: Norm = nn.BatchNorm2d if batch_norm else (lambda _: nn.Identity())
        bias = not batch_norm
        self.conv1 = nn.Conv2d(channels, width, 3, stride=1, padding=1, bias=bias)
        self.bn1 = norm(width)
        stages = []
        in_planes = width
        for index, planes in enumerate((width, 2 * width, 4 * width, 8 * width)):
            first_stride = 1 if index == 0 else 2
            blocks = [BasicBlock(in_planes, planes, first_stride, norm, bias),
                      BasicBlock(planes, planes, 1, norm, bias)]
            stages.append(nn.Sequential(*blocks))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.head = nn.Linear(8 * width, num_outputs)

    def features(self, x: Tensor) -> Tensor:
        """The globally pooled 8·nf features, the input of the head."""
        out = F.relu(self.bn1(self.conv1(x.reshape(x.shape[0], *self.image_shape))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
