"""PIRender (PIRenderer, ICCV 2021): mapping, warping and editing networks, `config/face.yaml` layout.

A 3DMM motion descriptor window (B, 73, 27) (64 expression + 3 angles + 3 translation + 3 crop
parameters per frame, 27 frames centred on the driving frame) is mapped to a 256-d code; an AdaIN
hourglass predicts a flow at 1/4 resolution that warps the source; an AdaIN decoder refines the warped
image. Images are in [-1, 1] here, as in the official code (the stage converts from [0, 1]).

State-dict keys, shapes and order equal the official `FaceGenerator` (reference `pirender/net_G.tsv`),
including the spelling `warpping_net`. Shared with the other methods: `ADAIN` (keys `mlp_shared.0`,
`mlp_gamma`, `mlp_beta`; its instance norm has no parameters), `LayerNorm2d` ((C, 1, 1) affine, the
same file layout), the coordinate grid and `warp` (grid_sample, align_corners=False, zero padding,
bilinear resize of a coarser grid). The convolution blocks here use LeakyReLU(0.1), strided 4x4 convs
and transposed convs, so they are not the ReLU/pooling blocks of `networks.blocks`.

Official quirk kept by default (`official_res_block=True`): the editing decoder's residual block
computes its first branch (`conv1`, `norm1`) and discards it, returning `x + norm2(conv2(x))`. Its
`conv1`/`norm1` weights are in the checkpoint but never affect the output; they are frozen
(`requires_grad=False`) so DDP does not wait for gradients that never come.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from mp_lightning.networks.blocks import ADAIN, LayerNorm2d, make_coordinate_grid, warp

NUM_COEFFS = 73  # 64 expression + 3 angles + 3 translation + 3 crop
LEAKY_SLOPE = 0.1


@dataclass
class PIRenderNetConfig:
    """Sizes of the generator; defaults are the official `config/face.yaml` (22,519,109 parameters)."""

    coeff_nc: int = NUM_COEFFS  # descriptor channels per frame
    descriptor_nc: int = 256  # mapping-net code size (AdaIN conditioning)
    mapping_layers: int = 3  # dilated residual layers after the first conv (each trims 6 frames)
    semantic_radius: int = 13  # window = 2 * radius + 1 frames; the mapping net needs 7 + 6 * layers <= window
    image_nc: int = 3
    max_nc: int = 256  # channel cap of every hourglass level
    warp_base_nc: int = 32
    warp_encoder_layers: int = 5
    warp_decoder_layers: int = 3  # flow at 1 / 2^(encoder - decoder + 1) of the image size (1/4 officially)
    edit_base_nc: int = 64
    edit_layers: int = 3
    edit_num_res_blocks: int = 2
    official_res_block: bool = True  # keep the released code's residual block that ignores conv1/norm1
    init_std: float = 0.02  # official init: Conv/Linear weights N(0, std), biases 0

    @property
    def window(self) -> int:
        return 2 * self.semantic_radius + 1


def _lrelu() -> nn.Module:
    return nn.LeakyReLU(LEAKY_SLOPE)


# ----------------------------------------------------------------------------------------------------
# mapping network
# ----------------------------------------------------------------------------------------------------
class MappingNet(nn.Module):
    """Motion descriptor window (B, coeff_nc, T) -> code (B, descriptor_nc, 1).

    A valid conv of width 7, then `layers` residual blocks [LeakyReLU, valid conv k3 dilation 3], each
    added to its input cropped by 3 frames per side, then the mean over the remaining frames.
    """

    def __init__(self, coeff_nc: int = NUM_COEFFS, descriptor_nc: int = 256, layers: int = 3):
        super().__init__()
        self.layers = layers
        self.first = nn.Sequential(nn.Conv1d(coeff_nc, descriptor_nc, kernel_size=7, padding=0, bias=True))
        for i in range(layers):
            block = nn.Sequential(_lrelu(), nn.Conv1d(descriptor_nc, descriptor_nc, kernel_size=3, padding=0, dilation=3))
            setattr(self, f"encoder{i}", block)
        self.pooling = nn.AdaptiveAvgPool1d(1)
        self.output_nc = descriptor_nc

    def min_window(self) -> int:
        return 7 + 6 * self.layers

    def forward(self, semantics: torch.Tensor) -> torch.Tensor:
        if semantics.shape[-1] < self.min_window():
            raise ValueError(f"the mapping net needs windows of >= {self.min_window()} frames, got {semantics.shape[-1]}")
        out = self.first(semantics)
        for i in range(self.layers):
            out = getattr(self, f"encoder{i}")(out) + out[:, :, 3:-3]
        return self.pooling(out)


# ----------------------------------------------------------------------------------------------------
# warping network: AdaIN hourglass
# ----------------------------------------------------------------------------------------------------
class AdaINConvs(nn.Module):
    """What every AdaIN block of PIRender holds: convolutions, an AdaIN of `code` per convolution, one LeakyReLU.

    `convs` maps the official state-dict names to the convolutions, `norms` the AdaINs' names to their
    channels; they are registered in that order (convs, norms, `actvn`), as the official modules are.
    """

    def __init__(self, convs: Dict[str, nn.Module], norms: Dict[str, int], feature_nc: int):
        super().__init__()
        for name, conv in convs.items():
            self.add_module(name, conv)
        for name, nc in norms.items():
            self.add_module(name, ADAIN(nc, feature_nc))
        self.actvn = _lrelu()


class ADAINEncoderBlock(AdaINConvs):
    """AdaIN -> LReLU -> conv4x4 s2 (`conv_0`), AdaIN -> LReLU -> conv3x3 (`conv_1`). (B, in, H, W) -> (B, out, H/2, W/2)."""

    def __init__(self, in_nc: int, out_nc: int, feature_nc: int):
        super().__init__({"conv_0": nn.Conv2d(in_nc, out_nc, kernel_size=4, stride=2, padding=1),
                          "conv_1": nn.Conv2d(out_nc, out_nc, kernel_size=3, stride=1, padding=1)},
                         {"norm_0": in_nc, "norm_1": out_nc}, feature_nc)

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        x = self.conv_0(self.actvn(self.norm_0(x, code)))
        return self.conv_1(self.actvn(self.norm_1(x, code)))


class ADAINDecoderBlock(AdaINConvs):
    """Residual up block. main: AdaIN -> LReLU -> conv3x3 (`conv_0`) -> AdaIN -> LReLU -> ConvT3x3 s2 (`conv_1`);
    shortcut: AdaIN -> LReLU -> ConvT3x3 s2 (`conv_s`). (B, in, H, W) -> (B, out, 2H, 2W)."""

    def __init__(self, in_nc: int, out_nc: int, hidden_nc: int, feature_nc: int):
        up = dict(kernel_size=3, stride=2, padding=1, output_padding=1)
        super().__init__({"conv_0": nn.Conv2d(in_nc, hidden_nc, kernel_size=3, stride=1, padding=1),
                          "conv_1": nn.ConvTranspose2d(hidden_nc, out_nc, **up),
                          "conv_s": nn.ConvTranspose2d(in_nc, out_nc, **up)},
                         {"norm_0": in_nc, "norm_1": hidden_nc, "norm_s": in_nc}, feature_nc)

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        shortcut = self.conv_s(self.actvn(self.norm_s(x, code)))
        dx = self.conv_0(self.actvn(self.norm_0(x, code)))
        dx = self.conv_1(self.actvn(self.norm_1(dx, code)))
        return shortcut + dx


class ADAINEncoder(nn.Module):
    """`input_layer` conv7x7 then `layers` ADAINEncoderBlocks; returns every level's output, input layer first."""

    def __init__(self, image_nc: int, feature_nc: int, base_nc: int, max_nc: int, layers: int):
        super().__init__()
        self.layers = layers
        self.input_layer = nn.Conv2d(image_nc, base_nc, kernel_size=7, stride=1, padding=3)
        for i in range(layers):
            cin = min(base_nc * 2 ** i, max_nc)
            cout = min(base_nc * 2 ** (i + 1), max_nc)
            setattr(self, f"encoder{i}", ADAINEncoderBlock(cin, cout, feature_nc))

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> List[torch.Tensor]:
        out = self.input_layer(x)
        outs = [out]
        for i in range(self.layers):
            out = getattr(self, f"encoder{i}")(out, code)
            outs.append(out)
        return outs


class ADAINDecoder(nn.Module):
    """Decoder levels encoder_layers-1 ... encoder_layers-decoder_layers (`decoder4, decoder3, decoder2`
    officially), each output concatenated with the encoder skip of its resolution."""

    def __init__(self, feature_nc: int, base_nc: int, max_nc: int, encoder_layers: int, decoder_layers: int):
        super().__init__()
        self.levels = list(range(encoder_layers - 1, encoder_layers - decoder_layers - 1, -1))
        out_nc = base_nc
        for i in self.levels:
            in_nc = min(base_nc * 2 ** (i + 1), max_nc)
            in_nc = in_nc if i == encoder_layers - 1 else 2 * in_nc
            out_nc = min(base_nc * 2 ** i, max_nc)
            setattr(self, f"decoder{i}", ADAINDecoderBlock(in_nc, out_nc, out_nc, feature_nc))
        self.output_nc = 2 * out_nc

    def forward(self, skips: List[torch.Tensor], code: torch.Tensor) -> torch.Tensor:
        skips = list(skips)
        out = skips.pop()
        for i in self.levels:
            out = getattr(self, f"decoder{i}")(out, code)
            out = torch.cat([out, skips.pop()], dim=1)
        return out


class ADAINHourglass(nn.Module):
    def __init__(self, image_nc: int, feature_nc: int, base_nc: int, max_nc: int, encoder_layers: int,
                 decoder_layers: int):
        super().__init__()
        self.encoder = ADAINEncoder(image_nc, feature_nc, base_nc, max_nc, encoder_layers)
        self.decoder = ADAINDecoder(feature_nc, base_nc, max_nc, encoder_layers, decoder_layers)
        self.output_nc = self.decoder.output_nc

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x, code), code)


def flow_to_grid(flow: torch.Tensor) -> torch.Tensor:
    """Flow in pixels (B, 2, h, w), channel 0 = x, -> sampling grid (B, h, w, 2) in [-1, 1] (official
    `convert_flow_to_deformation`: identity grid with align_corners=True spacing + 2 * flow / (size - 1))."""
    b, _, h, w = flow.shape
    flow_norm = 2 * torch.cat([flow[:, :1] / (w - 1), flow[:, 1:] / (h - 1)], dim=1)
    grid = make_coordinate_grid((h, w), dtype=flow.dtype, device=flow.device)
    return grid.unsqueeze(0) + flow_norm.permute(0, 2, 3, 1)


class WarpingNet(nn.Module):
    """(image (B, 3, H, W) in [-1, 1], code (B, D, 1)) -> {"flow_field": (B, 2, h, w) in pixels of the flow map,
    "warp_image": (B, 3, H, W) the image resampled with the flow (bilinearly upsampled grid)}."""

    def __init__(self, image_nc: int, descriptor_nc: int, base_nc: int, max_nc: int, encoder_layers: int,
                 decoder_layers: int):
        super().__init__()
        self.hourglass = ADAINHourglass(image_nc, descriptor_nc, base_nc, max_nc, encoder_layers, decoder_layers)
        nc = self.hourglass.output_nc
        self.flow_out = nn.Sequential(LayerNorm2d(nc), _lrelu(), nn.Conv2d(nc, 2, kernel_size=7, stride=1, padding=3))

    def forward(self, image: torch.Tensor, code: torch.Tensor) -> Dict[str, torch.Tensor]:
        flow = self.flow_out(self.hourglass(image, code))
        grid = flow_to_grid(flow)
        # official `warp_image`: grid_sample defaults of torch >= 1.3 (align_corners=False, zero padding)
        return {"flow_field": flow, "warp_image": warp(image, grid, align_corners=False, padding_mode="zeros")}


# ----------------------------------------------------------------------------------------------------
# editing network
# ----------------------------------------------------------------------------------------------------
class FineBlock(nn.Module):
    """`model` = conv [-> LayerNorm2d -> LReLU] [-> AvgPool2]; optional nearest x2 before the conv.

    One class for the official FirstBlock2d (k7), DownBlock2d (pool), UpBlock2d (upsample), Jump and
    FinalBlock2d (k7, conv only); the Sequential keeps their `model.0` (conv) / `model.1` (norm) keys.
    """

    def __init__(self, in_nc: int, out_nc: int, kernel_size: int = 3, norm: bool = True, pool: bool = False,
                 upsample: bool = False):
        super().__init__()
        layers: List[nn.Module] = [nn.Conv2d(in_nc, out_nc, kernel_size=kernel_size, stride=1, padding=kernel_size // 2)]
        if norm:
            layers += [LayerNorm2d(out_nc), _lrelu()]
        if pool:
            layers.append(nn.AvgPool2d(kernel_size=(2, 2), stride=(2, 2)))
        self.model = nn.Sequential(*layers)
        self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2)
        return self.model(x)


class FineADAINResBlock(AdaINConvs):
    """Residual AdaIN block at constant width. Official (`official=True`): x + norm2(conv2(x)), the
    `conv1`/`norm1` branch computed and discarded; otherwise x + norm2(conv2(LReLU(norm1(conv1(x)))))."""

    def __init__(self, nc: int, feature_nc: int, official: bool = True):
        super().__init__({"conv1": nn.Conv2d(nc, nc, kernel_size=3, stride=1, padding=1),
                          "conv2": nn.Conv2d(nc, nc, kernel_size=3, stride=1, padding=1)},
                         {"norm1": nc, "norm2": nc}, feature_nc)
        self.official = official
        if official:
            # no path from conv1/norm1 to the output: frozen, so no optimizer or DDP bucket waits for them
            self.conv1.requires_grad_(False)
            self.norm1.requires_grad_(False)

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        if self.official:
            return x + self.norm2(self.conv2(x), code)
        dx = self.actvn(self.norm1(self.conv1(x), code))
        return x + self.norm2(self.conv2(dx), code)


class FineADAINResBlocks(nn.Module):
    def __init__(self, num_blocks: int, nc: int, feature_nc: int, official: bool = True):
        super().__init__()
        self.num_blocks = num_blocks
        for i in range(num_blocks):
            setattr(self, f"res{i}", FineADAINResBlock(nc, feature_nc, official))

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        for i in range(self.num_blocks):
            x = getattr(self, f"res{i}")(x, code)
        return x


class FineEncoder(nn.Module):
    def __init__(self, in_nc: int, base_nc: int, max_nc: int, layers: int):
        super().__init__()
        self.layers = layers
        self.first = FineBlock(in_nc, base_nc, kernel_size=7)
        for i in range(layers):
            cin, cout = min(base_nc * 2 ** i, max_nc), min(base_nc * 2 ** (i + 1), max_nc)
            setattr(self, f"down{i}", FineBlock(cin, cout, pool=True))

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = self.first(x)
        outs = [x]
        for i in range(self.layers):
            x = getattr(self, f"down{i}")(x)
            outs.append(x)
        return outs


class FineDecoder(nn.Module):
    """For level i = layers-1 ... 0: res blocks at the input width, up (x2), plus jump(skip of that level);
    then a 7x7 conv to the image and tanh."""

    def __init__(self, image_nc: int, feature_nc: int, base_nc: int, max_nc: int, layers: int, num_res_blocks: int,
                 official_res_block: bool = True):
        super().__init__()
        self.layers = layers
        out_nc = base_nc
        # registered from the deepest level: the official checkpoint's key order
        for i in reversed(range(layers)):
            in_nc, out_nc = min(base_nc * 2 ** (i + 1), max_nc), min(base_nc * 2 ** i, max_nc)
            setattr(self, f"up{i}", FineBlock(in_nc, out_nc, upsample=True))
            setattr(self, f"res{i}", FineADAINResBlocks(num_res_blocks, in_nc, feature_nc, official_res_block))
            setattr(self, f"jump{i}", FineBlock(out_nc, out_nc))
        self.final = FineBlock(min(base_nc, max_nc), image_nc, kernel_size=7, norm=False)

    def forward(self, skips: List[torch.Tensor], code: torch.Tensor) -> torch.Tensor:
        skips = list(skips)
        out = skips.pop()
        for i in reversed(range(self.layers)):
            out = getattr(self, f"res{i}")(out, code)
            out = getattr(self, f"up{i}")(out)
            out = getattr(self, f"jump{i}")(skips.pop()) + out
        return torch.tanh(self.final(out))


class EditingNet(nn.Module):
    """(image, warped image (B, 3, H, W) in [-1, 1], code (B, D, 1)) -> refined image (B, 3, H, W) in [-1, 1]."""

    def __init__(self, image_nc: int, descriptor_nc: int, base_nc: int, max_nc: int, layers: int, num_res_blocks: int,
                 official_res_block: bool = True):
        super().__init__()
        self.encoder = FineEncoder(2 * image_nc, base_nc, max_nc, layers)
        self.decoder = FineDecoder(image_nc, descriptor_nc, base_nc, max_nc, layers, num_res_blocks, official_res_block)

    def forward(self, image: torch.Tensor, warped: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(torch.cat([image, warped], dim=1)), code)


# ----------------------------------------------------------------------------------------------------
# generator
# ----------------------------------------------------------------------------------------------------
class PIRenderGenerator(nn.Module):
    """The official `FaceGenerator`. forward(image (B, 3, H, W) in [-1, 1], semantics (B, 73, T), stage=None) ->
    {"descriptor": (B, D, 1), "flow_field": (B, 2, h, w), "warp_image": (B, 3, H, W) in [-1, 1] (zero outside),
    "fake_image": (B, 3, H, W) in [-1, 1] (absent with stage="warp", which skips the editing net)}."""

    def __init__(self, config: Optional[PIRenderNetConfig] = None):
        super().__init__()
        cfg = config or PIRenderNetConfig()
        self.config = cfg
        self.mapping_net = MappingNet(cfg.coeff_nc, cfg.descriptor_nc, cfg.mapping_layers)
        if self.mapping_net.min_window() > cfg.window:
            raise ValueError(f"semantic_radius {cfg.semantic_radius} gives {cfg.window}-frame windows; "
                             f"{cfg.mapping_layers} mapping layers need >= {self.mapping_net.min_window()}")
        self.warpping_net = WarpingNet(cfg.image_nc, cfg.descriptor_nc, cfg.warp_base_nc, cfg.max_nc,
                                       cfg.warp_encoder_layers, cfg.warp_decoder_layers)
        self.editing_net = EditingNet(cfg.image_nc, cfg.descriptor_nc, cfg.edit_base_nc, cfg.max_nc, cfg.edit_layers,
                                      cfg.edit_num_res_blocks, cfg.official_res_block)
        init_official_(self, cfg.init_std)

    def warp_parameters(self) -> List[nn.Parameter]:
        return list(self.mapping_net.parameters()) + list(self.warpping_net.parameters())

    def forward(self, image: torch.Tensor, semantics: torch.Tensor, stage: Optional[str] = None) -> Dict[str, torch.Tensor]:
        code = self.mapping_net(semantics)
        out = self.warpping_net(image, code)
        out["descriptor"] = code
        if stage != "warp":
            out["fake_image"] = self.editing_net(image, out["warp_image"], code)
        return out


def init_official_(module: nn.Module, std: float = 0.02) -> None:
    """Official `weights_init('normal', 0.02)`: Conv*/Linear weights N(0, std), biases 0 (LayerNorm keeps 1/0)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
