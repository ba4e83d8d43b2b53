"""ESPNetv2 semantic segmentation (Mehta et al., "ESPNetv2: A Light-weight, Power Efficient, and General Purpose
Convolutional Neural Network", CVPR 2019), written here so that the EdgeNets model zoo's Cityscapes weights load
with `strict=True` (module and parameter names as in its segmentation network over the EESP encoder).

Structure (s = channel scale; channels per level `ESPNETV2_CHANNELS[s]`):

- encoder `base_net`: `level1` 3x3 stride-2 conv (1/2), `level2_0` down-sampler (1/4), `level3_0` down-sampler +
  3 EESP blocks (1/8), `level4_0` down-sampler + 7 EESP blocks (1/16). An EESP block reduces the channels with a
  grouped 1x1 convolution (4 groups), runs 4 depth-wise 3x3 convolutions with growing dilation, adds them up
  hierarchically (HFF), concatenates, batch-norm + PReLU, expands with a grouped 1x1 convolution and adds the input
  (residual). A down-sampler concatenates a 3x3 average pool of its input with a stride-2 EESP and adds a projection
  of the input image pooled to the same size ("input reinforcement").
- decoder: efficient pyramid pooling (`EfficientPyrPool`: a 1x1 projection, depth-wise 3x3 convolutions at the
  scales 2, 1.5, 1, 0.5, 0.1 of the feature map, channel shuffle, a grouped 3x3 and a 1x1 convolution) at 1/16,
  then three times: upsample x2 (bilinear, corners aligned), add the encoder's level projected by
  `EfficientPWConv` (a grouped 3x3 conv gated by a channel attention), BN + PReLU, pyramid pooling; the last one
  outputs the class logits at 1/2, upsampled bilinearly to the input.

Input of `ESPNetv2Segmentation.forward`: (B, 3, H, W) float32, RGB / 255 normalised with the ImageNet mean and
std (`IMAGENET_MEAN`, `IMAGENET_STD`); H and W multiples of 16 (any size works, the zoo trained at 1024x512).
Output: (B, classes, H, W) float32 logits; for the Cityscapes weights, 20 channels: the 19 train ids
(road ... bicycle; person 11, rider 12, car 13, truck 14, bus 15, train 16, motorcycle 17, bicycle 18), then a
background channel trained with weight 0.

Exporting: the pyramid pooling resizes by data-dependent sizes; `adaptive_average_pool` computes PyTorch's
adaptive average pooling exactly with cumulative sums and gathers, so that the ONNX graph keeps dynamic height
and width (PyTorch's own operator exports only to fixed, divisible sizes).
"""

from __future__ import annotations

import math
import os
from typing import cast

import torch
from torch import nn
from torch.nn import functional

from instseg_core.base.classes import CLASSES_BY_NAME, INSTANCE_CLASSES

# Output channels per level (level1 .. level5, classifier) for each scale s, as in the model zoo.
ESPNETV2_CHANNELS: dict[float, tuple[int, ...]] = {
    0.5: (16, 32, 64, 128, 256, 1024),
    1.0: (32, 64, 128, 256, 512, 1024),
    1.25: (32, 80, 160, 320, 640, 1024),
    1.5: (32, 96, 192, 384, 768, 1024),
    2.0: (32, 128, 256, 512, 1024, 1280),
}
EESP_REPEATS = (3, 7)  # EESP blocks at 1/8 and 1/16
RECEPTIVE_LIMITS = (13, 11, 9, 7, 5)  # largest effective kernel per level
BRANCHES = 4
REINFORCEMENT_CHANNELS = 3
PYRAMID_SCALES = (2.0, 1.5, 1.0, 0.5, 0.1)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CITYSCAPES_OUTPUTS = 20  # 19 train ids + an untrained background channel
# the instance classes' Cityscapes train ids (person 11 .. bicycle 18), the output channel of each
CITYSCAPES_TRAIN_IDS = {name: CLASSES_BY_NAME[name].train_id for name in INSTANCE_CLASSES}


def adaptive_average_pool(x: torch.Tensor, height: torch.Tensor | int, width: torch.Tensor | int) -> torch.Tensor:
    """PyTorch's `adaptive_avg_pool2d(x, (height, width))`, exactly (bins [floor(i n / m), ceil((i + 1) n / m))),
    written with cumulative sums and gathers so that traced sizes stay dynamic in ONNX. x: (B, C, H, W)."""
    return _pool_axis(_pool_axis(x, 2, height), 3, width)


def _pool_axis(x: torch.Tensor, dim: int, size: torch.Tensor | int) -> torch.Tensor:
    length = x.shape[dim]
    index = torch.arange(size, device=x.device)  # type: ignore[arg-type]  # a traced size is a tensor
    start = torch.div(index * length, size, rounding_mode="floor")
    end = torch.div((index + 1) * length + size - 1, size, rounding_mode="floor")
    padding = [0, 0] * (x.dim() - 1 - dim) + [1, 0]  # one zero before the first element along dim
    sums = functional.pad(torch.cumsum(x, dim), padding)
    counts = (end - start).to(x.dtype)
    shape = [1] * x.dim()
    shape[dim] = -1
    return (sums.index_select(dim, end) - sums.index_select(dim, start)) / counts.reshape(shape)


def _scaled(size: torch.Tensor | int, scale: float) -> torch.Tensor | int:
    """max(5, ceil(size * scale)) for the pyramid scales, in integer arithmetic (traceable)."""
    numerator, denominator = {2.0: (2, 1), 1.5: (3, 2), 1.0: (1, 1), 0.5: (1, 2), 0.1: (1, 10)}[scale]
    scaled = (size * numerator + denominator - 1) // denominator
    if isinstance(scaled, torch.Tensor):
        return torch.clamp(scaled, min=5)
    return max(5, scaled)


class ConvBnPrelu(nn.Module):
    """Convolution (no bias), batch norm, PReLU; 'same' padding. Parameter names conv/bn/act as in the zoo."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride, (kernel - 1) // 2, bias=False, groups=groups)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class ConvBn(nn.Module):
    """Convolution (no bias) and batch norm; 'same' padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, 1, (kernel - 1) // 2, bias=False, groups=groups)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class BnPrelu(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(x))


class DilatedConv(nn.Module):
    """Depth-wise 3x3 convolution with dilation (no bias)."""

    def __init__(self, channels: int, stride: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride, dilation, dilation=dilation, groups=channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class EESP(nn.Module):
    """Extremely efficient spatial pyramid block: (B, in, H, W) -> (B, out, H / stride, W / stride).

    With `strided_average` (inside a down-sampler) it returns the expanded features before the residual and the
    activation, which the down-sampler adds itself."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, branches: int = BRANCHES,
                 receptive_limit: int = 7, strided_average: bool = False) -> None:
        super().__init__()
        width = out_channels // branches
        if width * branches != out_channels:
            raise ValueError(f"EESP output channels {out_channels} must be a multiple of {branches}")
        self.proj_1x1 = ConvBnPrelu(in_channels, width, 1, groups=branches)
        kernels = sorted(k if k <= receptive_limit else 3 for k in (3 + 2 * i for i in range(branches)))
        self.spp_dw = nn.ModuleList(DilatedConv(width, stride, (k - 1) // 2) for k in kernels)
        self.conv_1x1_exp = ConvBn(out_channels, out_channels, 1, groups=branches)
        self.br_after_cat = BnPrelu(out_channels)
        self.module_act = nn.PReLU(out_channels)
        self.strided_average = strided_average

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.proj_1x1(x)
        outputs = [self.spp_dw[0](reduced)]
        for branch in list(self.spp_dw)[1:]:  # hierarchical feature fusion
            outputs.append(branch(reduced) + outputs[-1])
        expanded = self.conv_1x1_exp(self.br_after_cat(torch.cat(outputs, 1)))
        if self.strided_average:
            return expanded
        if expanded.shape == x.shape:
            expanded = expanded + x
        return self.module_act(expanded)


class DownSampler(nn.Module):
    """(B, in, H, W) and the normalised image -> (B, out, H/2, W/2): [3x3 average pool, strided EESP] plus the
    image average-pooled `image_pools` times and projected (input reinforcement), PReLU."""

    def __init__(self, in_channels: int, out_channels: int, receptive_limit: int, image_pools: int) -> None:
        super().__init__()
        self.eesp = EESP(in_channels, out_channels - in_channels, 2, BRANCHES, receptive_limit, strided_average=True)
        self.avg = nn.AvgPool2d(3, stride=2, padding=1)
        self.inp_reinf = nn.Sequential(ConvBnPrelu(3, REINFORCEMENT_CHANNELS, 3),
                                       ConvBn(REINFORCEMENT_CHANNELS, out_channels, 1))
        self.act = nn.PReLU(out_channels)
        self.image_pools = image_pools

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        output = torch.cat([self.avg(x), self.eesp(x)], 1)
        for _ in range(self.image_pools):
            image = functional.avg_pool2d(image, 3, stride=2, padding=1)
        return self.act(output + self.inp_reinf(image))


class EESPNetEncoder(nn.Module):
    """The ESPNetv2 encoder up to 1/16 (the classification network without level 5 and its classifier)."""

    def __init__(self, scale: float = 2.0) -> None:
        super().__init__()
        if scale not in ESPNETV2_CHANNELS:
            raise ValueError(f"ESPNetv2 scale {scale} not one of {sorted(ESPNETV2_CHANNELS)}")
        channels = ESPNETV2_CHANNELS[scale]
        self.config = channels
        self.level1 = ConvBnPrelu(3, channels[0], 3, stride=2)
        self.level2_0 = DownSampler(channels[0], channels[1], RECEPTIVE_LIMITS[0], image_pools=2)
        self.level3_0 = DownSampler(channels[1], channels[2], RECEPTIVE_LIMITS[1], image_pools=3)
        self.level3 = nn.ModuleList(EESP(channels[2], channels[2], 1, BRANCHES, RECEPTIVE_LIMITS[2])
                                    for _ in range(EESP_REPEATS[0]))
        self.level4_0 = DownSampler(channels[2], channels[3], RECEPTIVE_LIMITS[2], image_pools=4)
        self.level4 = nn.ModuleList(EESP(channels[3], channels[3], 1, BRANCHES, RECEPTIVE_LIMITS[3])
                                    for _ in range(EESP_REPEATS[1]))

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Normalised image -> features at 1/2, 1/4, 1/8, 1/16 (channels config[0..3])."""
        level1 = self.level1(image)
        level2 = self.level2_0(level1, image)
        level3 = self.level3_0(level2, image)
        for block in self.level3:
            level3 = block(level3)
        level4 = self.level4_0(level3, image)
        for block in self.level4:
            level4 = block(level4)
        return [level1, level2, level3, level4]


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        x = x.reshape(batch, self.groups, channels // self.groups, height, width).transpose(1, 2)
        return x.reshape(batch, channels, height, width)


class ConvBnPreluSequential(nn.Module):
    """ConvBnPrelu with the decoder's parameter names (cbr.0 conv, cbr.1 bn, cbr.2 PReLU)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, groups: int = 1) -> None:
        super().__init__()
        self.cbr = nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, 1, (kernel - 1) // 2, bias=False,
                                           groups=groups),
                                 nn.BatchNorm2d(out_channels), nn.PReLU(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.cbr(x))


class BnPreluSequential(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.br = nn.Sequential(nn.BatchNorm2d(channels), nn.PReLU(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.br(x))


class EfficientPyrPool(nn.Module):
    """Efficient pyramid pooling: (B, in, H, W) -> (B, out, H, W)."""

    def __init__(self, in_channels: int, projected: int, out_channels: int, last_layer_br: bool = True) -> None:
        super().__init__()
        self.projection_layer = ConvBnPreluSequential(in_channels, projected, 1)
        self.stages = nn.ModuleList(nn.Conv2d(projected, projected, 3, 1, 1, bias=False, groups=projected)
                                    for _ in PYRAMID_SCALES)
        count = len(PYRAMID_SCALES)
        self.merge_layer = nn.Sequential(BnPreluSequential(projected * count), ChannelShuffle(count),
                                         ConvBnPreluSequential(projected * count, projected, 3, groups=projected),
                                         nn.Conv2d(projected, out_channels, 1, bias=not last_layer_br))
        self.br = BnPreluSequential(out_channels) if last_layer_br else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.projection_layer(x)
        height, width = x.shape[2], x.shape[3]
        pyramid = []
        for scale, stage in zip(PYRAMID_SCALES, self.stages, strict=True):
            scaled_h, scaled_w = _scaled(height, scale), _scaled(width, scale)
            if scale < 1.0:
                level = stage(adaptive_average_pool(x, scaled_h, scaled_w))
                level = functional.interpolate(level, (height, width), mode="bilinear", align_corners=True)
            elif scale > 1.0:
                level = functional.interpolate(x, (scaled_h, scaled_w),  # type: ignore[arg-type]  # traced sizes
                                               mode="bilinear", align_corners=True)
                level = stage(level)
                # scale 2: bins of exactly 2x2, a plain average pool (cheaper, the same numbers)
                level = (functional.avg_pool2d(level, 2) if scale == 2.0
                         else adaptive_average_pool(level, height, width))
            else:
                level = stage(x)
            pyramid.append(level)
        out = self.merge_layer(torch.cat(pyramid, 1))
        return out if self.br is None else self.br(out)


class EfficientPWConv(nn.Module):
    """Grouped 3x3 convolution (groups = gcd(in, out)) gated by a per-channel sigmoid of the global average."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.wt_layer = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                      nn.Sigmoid())
        self.expansion_layer = ConvBnPreluSequential(in_channels, out_channels, 3,
                                                     groups=math.gcd(in_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expansion_layer(x) * self.wt_layer(x)


class ESPNetv2Segmentation(nn.Module):
    """(B, 3, H, W) ImageNet-normalised RGB -> (B, classes, H, W) logits (see the module docstring).

    `decode_features` returns the decoder's intermediate features as well, for heads built on top."""

    def __init__(self, scale: float = 2.0, classes: int = CITYSCAPES_OUTPUTS, decoder_base: int = 16) -> None:
        super().__init__()
        self.scale = scale
        self.base_net = EESPNetEncoder(scale)
        channels = self.base_net.config
        planes = (4 * decoder_base, 3 * decoder_base, 2 * decoder_base, classes)
        projected = min(classes // 2, decoder_base)
        self.decoder_planes = planes
        self.bu_dec_l1 = EfficientPyrPool(channels[3], projected, planes[0])
        self.bu_dec_l2 = EfficientPyrPool(planes[0], projected, planes[1])
        self.bu_dec_l3 = EfficientPyrPool(planes[1], projected, planes[2])
        self.bu_dec_l4 = EfficientPyrPool(planes[2], projected, planes[3], last_layer_br=False)
        self.merge_enc_dec_l2 = EfficientPWConv(channels[2], planes[0])
        self.merge_enc_dec_l3 = EfficientPWConv(channels[1], planes[1])
        self.merge_enc_dec_l4 = EfficientPWConv(channels[0], planes[2])
        self.bu_br_l2 = nn.Sequential(nn.BatchNorm2d(planes[0]), nn.PReLU(planes[0]))
        self.bu_br_l3 = nn.Sequential(nn.BatchNorm2d(planes[1]), nn.PReLU(planes[1]))
        self.bu_br_l4 = nn.Sequential(nn.BatchNorm2d(planes[2]), nn.PReLU(planes[2]))

    @staticmethod
    def _upsample(x: torch.Tensor) -> torch.Tensor:
        return functional.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)

    def decode_features(self, image: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """(encoder features at 1/2 .. 1/16, decoder features at 1/8, 1/4, 1/2 (planes[0..2] channels, after the
        merge's BN + PReLU), logits at 1/2)."""
        encoder = self.base_net(image)
        decoded = self.bu_dec_l1(encoder[3])
        merged = []
        stages = ((self.merge_enc_dec_l2, self.bu_br_l2, self.bu_dec_l2, encoder[2]),
                  (self.merge_enc_dec_l3, self.bu_br_l3, self.bu_dec_l3, encoder[1]),
                  (self.merge_enc_dec_l4, self.bu_br_l4, self.bu_dec_l4, encoder[0]))
        for merge, activation, pyramid, skip in stages:
            up = self._upsample(decoded)
            # the decoder may be one pixel larger than the skip at odd sizes (ceil vs floor): crop to the skip
            up = up[:, :, :skip.shape[2], :skip.shape[3]]
            features = activation(merge(skip) + up)
            merged.append(features)
            decoded = pyramid(features)
        return encoder, merged, decoded

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        _, _, logits = self.decode_features(image)
        return functional.interpolate(logits, size=(image.shape[2], image.shape[3]), mode="bilinear",
                                      align_corners=True)


def normalise_unit_rgb(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> ImageNet-normalised, as the zoo's weights expect."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=rgb.dtype, device=rgb.device).reshape(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=rgb.dtype, device=rgb.device).reshape(1, 3, 1, 1)
    return (rgb - mean) / std


def load_espnetv2_cityscapes(path: str | os.PathLike, scale: float = 2.0) -> ESPNetv2Segmentation:
    """The network with a zoo state dict (float32 or float16 tensors) loaded strictly, in eval mode.
    ValueError naming the file when it is not a state dict of this network at this scale."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state dict")
    network = ESPNetv2Segmentation(scale)
    try:
        network.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()},
                                strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path} is not an ESPNetv2 s={scale} Cityscapes state dict: {str(exc)[:300]}") from exc
    return network.eval()
