"""ArcFace face embedder (IResNet backbone, insightface's `arcface_torch` layout) for CSIM-style identity metrics.

Published talking-head identity numbers (CSIM) are cosine similarities of ArcFace embeddings; FaceNet
(`networks/identity.py`) and dlib measure on other scales. The weights (an IResNet-100 trained on MS1MV3,
insightface's model zoo, no direct public link) are not shipped: put the backbone file where
`mp-lightning weights` says (`arcface_r100`), and the `id_similarity_arcface` / `aed_arcface` metrics turn on.

The input is a 112x112 RGB face normalised to [-1, 1]. Talking-head frames are face-centred crops, so a fixed
central crop stands in for ArcFace's 5-point alignment (as the FaceNet embedder's `align="center"` does); the
embedding is L2-normalised.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mp_lightning.networks.identity import center_crop

EMBEDDING_DIM = 512
CROP_SIZE = 112
DEPTHS = {"r50": (3, 4, 14, 3), "r100": (3, 13, 30, 3)}


class IBasicBlock(nn.Module):
    """Pre-activation residual block: BN, conv3x3, BN, PReLU, conv3x3 (stride), BN, plus the shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes, eps=1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    """(B, 3, 112, 112) in [-1, 1] -> (B, 512) (not normalised); state-dict keys as insightface's backbones."""

    def __init__(self, depth: str = "r100"):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        inplanes = 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), DEPTHS[depth]), start=1):
            layer = [IBasicBlock(inplanes, planes, stride=2)] + [IBasicBlock(planes, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*layer))
            inplanes = planes
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(p=0.0)
        self.fc = nn.Linear(512 * 7 * 7, EMBEDDING_DIM)
        self.features = nn.BatchNorm1d(EMBEDDING_DIM, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.features(self.fc(self.dropout(torch.flatten(self.bn2(x), 1))))


class ArcFaceEmbedder(nn.Module):
    """(B, 3, H, W) in [0, 1] -> (B, 512) L2-normalised ArcFace embeddings (frozen, eval mode)."""

    kind = "arcface-r100-ms1mv3"

    def __init__(self, depth: str = "r100", center_fraction: float = 0.8, weights_path=None):
        super().__init__()
        from mp_lightning.io.weights import require
        from mp_lightning.state_dicts import load_strict, own_copies, read_state_dict, strip_ddp_prefix

        self.center_fraction = center_fraction
        self.net = IResNet(depth)
        path = weights_path or require("arcface_r100")
        load_strict(self.net, own_copies(strip_ddp_prefix(read_state_dict(path))), str(path),
                    hint="an insightface arcface_torch IResNet backbone of the same depth is expected")
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "ArcFaceEmbedder":
        return super().train(False)  # BatchNorm statistics are the released ones, always

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        crops = center_crop(x, self.center_fraction, CROP_SIZE) * 2 - 1
        return F.normalize(self.net(crops), dim=-1)
