"""Image pyramid and VGG19 pyramid perceptual loss (FOMM Sec. 3.3; reused by MetaPortrait).

The loss is the official one: images (B, 3, H, W) in [0, 1] are normalised with ImageNet mean/std, passed
through the torchvision VGG19 `features` split at [0:2], [2:7], [7:12], [12:21], [21:30] (relu1_1 ...
relu5_1), and the per-layer mean L1 difference (target detached) is weighted and summed over the layers and
over the scales of an anti-aliased image pyramid (scales 1, 0.5, 0.25, 0.125).

`backbone` picks the five feature maps: "vgg19" (the official ImageNet VGG19; its file must be installed,
`mp-lightning weights`) or "st_lpips_vgg16" (the ImageNet VGG16 trunk of ST-LPIPS, relu1_2 ... relu5_3,
which ships in the stlpips-pytorch wheel of the `metrics` extra, so real perceptual features offline).
Random VGG19 weights (`pretrained=False`) are for unit tests only.

`SRPerceptualStyleLoss` is the SR stage's BasicSR-style loss: the same frozen VGG19, pre-ReLU features, no
pyramid, plus Gram-matrix style terms.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

import torch
from torch import nn
from torch.nn import functional as F

from mp_lightning.errors import ConfigError
from mp_lightning.networks.blocks import AntiAliasInterpolation2d
from mp_lightning.networks.discriminator import scale_key
from mp_lightning.state_dicts import load_strict, read_checkpoint, under_prefix

VGG_SLICES = ((0, 2), (2, 7), (7, 12), (12, 21), (21, 30))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision VGG19 `features` indices of the pre-ReLU outputs conv1_2, conv2_2, conv3_4, conv4_4, conv5_4 (SR loss)
VGG19_PRE_RELU = (2, 7, 16, 25, 34)


class ImagePyramid(nn.Module):
    """Anti-aliased image pyramid. forward(x (B, C, H, W)) -> {"prediction_<scale>": (B, C, H*s, W*s)}.

    Keys use `scale_key` ('1', '0.5', '0.25', '0.125'), the naming the discriminator expects.
    """

    def __init__(self, scales: Sequence[float] = (1, 0.5, 0.25, 0.125), num_channels: int = 3):
        super().__init__()
        self.scales = list(scales)
        self.downs = nn.ModuleDict(
            {scale_key(s).replace(".", "-"): AntiAliasInterpolation2d(num_channels, s) for s in self.scales}
        )

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {"prediction_" + scale_key(s): down(x) for s, down in zip(self.scales, self.downs.values())}


def vgg19_layers(pretrained: bool = True) -> nn.Sequential:
    """torchvision's VGG19 `features` (conv and ReLU layers); with `pretrained`, its ImageNet weights from
    `mp_lightning.io.weights.require("vgg19")` (a `MissingWeightsError` naming the file when it is absent)."""
    from torchvision.models.vgg import cfgs, make_layers

    from mp_lightning.io.weights import require

    features = make_layers(cfgs["E"], batch_norm=False)
    if pretrained:
        path = require("vgg19")
        load_strict(features, under_prefix(read_checkpoint(path), "features."), f"{path} ['features']")
    return features


class Vgg19Features(nn.Module):
    """Frozen VGG19 feature slices. forward(x (B, 3, H, W) in [0, 1]) -> 5 maps (relu1_1 ... relu5_1).

    `pretrained=True` loads torchvision's ImageNet weights from `mp_lightning.io.weights.require("vgg19")`
    (raises `MissingWeightsError` naming the file when it is absent); `pretrained=False` keeps a random
    init (tests, smoke runs).
    """

    def __init__(self, pretrained: bool = True):
        super().__init__()
        features = vgg19_layers(pretrained)
        self.slices = nn.ModuleList(
            nn.Sequential(*[features[i] for i in range(a, b)]) for a, b in VGG_SLICES
        )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        # frozen feature extractor: stays in eval mode whatever the parent does
        return super().train(False)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        h = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        outs = []
        for s in self.slices:
            h = s(h)
            outs.append(h)
        return outs


BACKBONES = ("vgg19", "st_lpips_vgg16")


def perceptual_features(backbone: str = "vgg19", pretrained: bool = True) -> nn.Module:
    """The frozen feature extractor of the perceptual loss: x (B, 3, H, W) in [0, 1] -> 5 feature maps."""
    if backbone == "vgg19":
        return Vgg19Features(pretrained=pretrained)
    if backbone == "st_lpips_vgg16":
        if not pretrained:
            raise ConfigError("model.perceptual: backbone st_lpips_vgg16 has no random variant; for random "
                              "weights (tests) set backbone=vgg19 pretrained=false")
        from mp_lightning.networks.st_lpips import StLpipsVgg16Features

        return StLpipsVgg16Features()
    raise ConfigError(f"model.perceptual.backbone must be one of {list(BACKBONES)}, got {backbone!r}")


class VGGPerceptualLoss(nn.Module):
    """Pyramid perceptual loss: sum over scales and layers of w_l * mean|VGG_l(pred_s) - VGG_l(target_s)|.

    forward(prediction, target) with (B, 3, H, W) images in [0, 1] -> scalar. Gradients flow to
    `prediction` only (VGG is frozen, the target features are detached). The pyramids can be passed
    instead of images via `forward_pyramids` (reuse them for the eye/mouth losses and the discriminator).
    """

    def __init__(
        self,
        scales: Sequence[float] = (1, 0.5, 0.25, 0.125),
        layer_weights: Sequence[float] = (10, 10, 10, 10, 10),
        pretrained: bool = True,
        num_channels: int = 3,
        backbone: str = "vgg19",
    ):
        super().__init__()
        if len(layer_weights) != len(VGG_SLICES):
            raise ValueError(f"layer_weights needs {len(VGG_SLICES)} values, got {len(layer_weights)}")
        self.layer_weights = [float(w) for w in layer_weights]
        self.pyramid = ImagePyramid(scales, num_channels)
        self.vgg = perceptual_features(backbone, pretrained)

    def forward_pyramids(self, pred_pyramid: Dict[str, torch.Tensor], target_pyramid: Dict[str, torch.Tensor]) -> torch.Tensor:
        total = 0.0
        for key, pred in pred_pyramid.items():
            if min(pred.shape[-2:]) < 16:
                # relu5_1 sits after four 2x2 max-pools: smaller inputs vanish inside VGG19
                raise ValueError(
                    f"perceptual loss: pyramid level {key} is {tuple(pred.shape[-2:])} px, VGG19 needs >= 16 px; "
                    "use fewer/larger scales for small images (e.g. scales [1, 0.5] at 64 px)"
                )
            x_vgg = self.vgg(pred)
            with torch.no_grad():
                y_vgg = self.vgg(target_pyramid[key])
            for w, a, b in zip(self.layer_weights, x_vgg, y_vgg):
                if w != 0:
                    total = total + w * (a - b.detach()).abs().mean()
        return total if isinstance(total, torch.Tensor) else torch.zeros((), device=next(iter(pred_pyramid.values())).device)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.forward_pyramids(self.pyramid(prediction), self.pyramid(target))


class SRPerceptualStyleLoss(nn.Module):
    """BasicSR-style perceptual + Gram style loss on frozen VGG19 pre-ReLU features.

    forward(pred, target) with (N, 3, H, W) in [0, 1] -> (perceptual, style) scalars: sums over layers of
    w_l * mean|phi_l(pred) - phi_l(target)| and w_l * mean|G_l(pred) - G_l(target)| with the Gram matrix
    G = phi phi^T / (C H W). The target features are computed without gradients.
    """

    def __init__(self, layer_weights=(0.1, 0.1, 1.0, 1.0, 1.0), pretrained: bool = True):
        super().__init__()
        if len(layer_weights) != len(VGG19_PRE_RELU):
            raise ConfigError(f"model.perceptual.layer_weights needs {len(VGG19_PRE_RELU)} values, got {len(layer_weights)}")
        features = vgg19_layers(pretrained)
        self.layer_weights = [float(w) for w in layer_weights]
        last = max(i for i, w in zip(VGG19_PRE_RELU, self.layer_weights) if w != 0) if any(self.layer_weights) else 0
        self.features = nn.Sequential(*[features[i] for i in range(last + 1)])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)  # frozen feature extractor

    def _features(self, x: torch.Tensor) -> List[torch.Tensor]:
        h = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        outs = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in VGG19_PRE_RELU:
                outs.append(h)
        return outs

    @staticmethod
    def gram(x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        f = x.reshape(n, c, h * w)
        return f @ f.transpose(1, 2) / (c * h * w)

    def forward(self, pred: torch.Tensor, target: torch.Tensor):
        pred_feats = self._features(pred)
        with torch.no_grad():
            target_feats = self._features(target)
        perceptual = pred.new_zeros(())
        style = pred.new_zeros(())
        for w, a, b in zip(self.layer_weights, pred_feats, target_feats):
            if w == 0:
                continue
            perceptual = perceptual + w * F.l1_loss(a, b)
            style = style + w * F.l1_loss(self.gram(a), self.gram(b))
        return perceptual, style
