"""Box2Pix (Uhrig et al. 2018): a GoogLeNet-v1 FCN predicting SSD boxes, per-pixel semantics and centre offsets.

Network (§III-A):
- GoogLeNet-v1 stem and inception 3a..5b (batch norm after every convolution, since we train from scratch);
  the final average pool is replaced by a 2-strided max pool, followed by inception 6a/6b (stride 64) and, after
  another 2-strided max pool, 7a/7b (stride 128), all with the parameters of 5a/5b. The "5x5" branches are real
  5x5 convolutions (the receptive fields below depend on it).
- SSD heads: 1x1 convolutions on 4e (stride 16), 5b (32), 6b (64) and 7b (128) predicting, per prior assigned
  to the layer, 4 box-corner regressions and n + 1 class logits (0 = background).
- FCN skip decoder starting at 6b: 1x1 convolutions to n + 3 channels (n + 1 semantic classes, 2 offsets),
  element-wise adds of the 1x1-projected 5b, 4e and 3b outputs, 2x deconvolutions (bilinear initialisation),
  output at stride 8; `upsample_dense` brings it to the input resolution (FCN-8s).

Input: (B, 3, H, W) float32 RGB in [0, 1] (`preprocess`), H and W multiples of 128 (`INPUT_MULTIPLE`).
Conventions: pixel (row i, column j) has its centre at (x, y) = (j + 0.5, i + 0.5); boxes are (x0, y0, x1, y1)
in pixels with x1/y1 exclusive; offsets are (dx, dy) in pixels from the pixel centre to its object's box centre
(the network predicts them divided by `OFFSET_SCALE`).

Priors (§III-A, Fig. 4): `PRIOR_SIZES` are 21 (width, height) sizes in input pixels, chosen for 1024 x 512
inputs (Cityscapes at half resolution, and our synthetic scenes). `assign_priors` puts each prior on the
first SSD layer whose theoretical receptive field (`receptive_field`, the paper's recursion) is at least twice
its larger side. `prior_boxes` lays them out on every cell of their layer's grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from instseg_core.models.spatial_embeddings import CITYSCAPES_INSTANCE_CLASSES
from instseg_core.models.spatial_embeddings import preprocess as preprocess  # same input convention: RGB / 255

INPUT_MULTIPLE = 128
OFFSET_SCALE = 128.0  # network offset output x OFFSET_SCALE = offset in pixels

# (name, kernel, stride) of every layer on the longest path, input to 7b; an inception module counts as its
# largest kernel (the 1x1 -> 5x5 branch). `SSD_LAYERS` name the heads.
LAYERS: tuple[tuple[str, int, int], ...] = (
    ("conv1", 7, 2), ("pool1", 3, 2), ("conv2", 1, 1), ("conv3", 3, 1), ("pool2", 3, 2),
    ("3a", 5, 1), ("3b", 5, 1), ("pool3", 3, 2),
    ("4a", 5, 1), ("4b", 5, 1), ("4c", 5, 1), ("4d", 5, 1), ("4e", 5, 1), ("pool4", 3, 2),
    ("5a", 5, 1), ("5b", 5, 1), ("pool5", 3, 2),
    ("6a", 5, 1), ("6b", 5, 1), ("pool6", 3, 2),
    ("7a", 5, 1), ("7b", 5, 1),
)
SSD_LAYERS = ("4e", "5b", "6b", "7b")
SSD_STRIDES = (16, 32, 64, 128)

# 21 prior sizes (width, height) in pixels of a 1024 x 512 input: persons/riders/bicycles (tall), cars (about
# square to 2:1), trucks/buses (large), spread so that most objects have a prior within d_change <= 0.7
# (`python -m training.box2pix coverage` reports it). By the receptive-field rule 15 land on 4e, 4 on 5b and
# one each on 6b and 7b (a bus filling most of the frame).
PRIOR_SIZES: tuple[tuple[int, int], ...] = (
    (8, 16), (12, 12), (16, 8), (14, 32), (24, 24), (32, 16), (24, 56), (44, 44), (64, 32),
    (40, 96), (80, 80), (120, 56), (72, 160), (144, 144), (208, 104), (120, 280), (240, 240), (352, 176),
    (320, 320), (480, 240), (800, 480),
)


def receptive_field(layers: Sequence[tuple[str, int, int]], up_to: str) -> int:
    """Theoretical receptive field (pixels) of layer `up_to`: the paper's recursion RF_in = (RF_out - 1) * s + k
    applied from that layer (RF 1) back to the input."""
    names = [name for name, _, _ in layers]
    rf = 1
    for _, kernel, stride in reversed(layers[: names.index(up_to) + 1]):
        rf = (rf - 1) * stride + kernel
    return rf


def assign_priors(prior_sizes: Sequence[tuple[int, int]] = PRIOR_SIZES) -> list[list[tuple[int, int]]]:
    """Prior sizes per SSD layer: each goes to the first layer with receptive field >= 2 x its larger side (the
    last layer takes whatever is larger still)."""
    fields = [receptive_field(LAYERS, name) for name in SSD_LAYERS]
    per_layer: list[list[tuple[int, int]]] = [[] for _ in SSD_LAYERS]
    for w, h in prior_sizes:
        layer = next((i for i, rf in enumerate(fields) if rf >= 2 * max(w, h)), len(fields) - 1)
        per_layer[layer].append((int(w), int(h)))
    return per_layer


def prior_boxes(height: int, width: int, priors_per_layer: Sequence[Sequence[tuple[int, int]]]) -> np.ndarray:
    """(P, 4) float32 prior boxes (x0, y0, x1, y1) for an input of (height, width), in the order of the network's
    flattened SSD output: layer by layer, then row, column, prior."""
    boxes = []
    for stride, sizes in zip(SSD_STRIDES, priors_per_layer, strict=True):
        if not sizes:
            continue
        rows, cols = height // stride, width // stride
        cy, cx = np.meshgrid((np.arange(rows) + 0.5) * stride, (np.arange(cols) + 0.5) * stride, indexing="ij")
        wh = np.asarray(sizes, np.float32)
        centre = np.stack([cx, cy], -1).reshape(-1, 1, 2)
        boxes.append(np.concatenate([centre - wh / 2, centre + wh / 2], -1).reshape(-1, 4))
    return np.concatenate(boxes).astype(np.float32)


def encode_boxes(gt: np.ndarray, priors: np.ndarray) -> np.ndarray:
    """(N, 4) box regression targets (the SSD heads' box output): corner deltas (gt - prior) / prior (w, h, w, h)."""
    wh = np.concatenate([priors[:, 2:] - priors[:, :2]] * 2, 1)
    return ((gt - priors) / wh).astype(np.float32)


def decode_boxes(deltas: np.ndarray, priors: np.ndarray) -> np.ndarray:
    """Inverse of encode_boxes: (N, 4) boxes (x0, y0, x1, y1) in pixels."""
    wh = np.concatenate([priors[:, 2:] - priors[:, :2]] * 2, 1)
    return priors + deltas * wh


@dataclass
class Box2PixConfig:
    classes: tuple[str, ...] = CITYSCAPES_INSTANCE_CLASSES
    prior_sizes: tuple[tuple[int, int], ...] = PRIOR_SIZES
    extra: dict = field(default_factory=dict)  # e.g. the decoding defaults stored at export

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def priors_per_layer(self) -> list[list[tuple[int, int]]]:
        return assign_priors(self.prior_sizes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["classes"], d["prior_sizes"] = list(self.classes), [list(s) for s in self.prior_sizes]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Box2PixConfig:
        return cls(classes=tuple(d["classes"]), prior_sizes=tuple(tuple(s) for s in d["prior_sizes"]),
                   extra=dict(d.get("extra", {})))


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class Inception(nn.Module):
    """GoogLeNet-v1 inception: 1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 | 3x3 max pool -> 1x1, concatenated."""

    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, cp: int) -> None:
        super().__init__()
        self.branch1 = ConvBNReLU(cin, c1, 1)
        self.branch3 = nn.Sequential(ConvBNReLU(cin, c3r, 1), ConvBNReLU(c3r, c3, 3))
        self.branch5 = nn.Sequential(ConvBNReLU(cin, c5r, 1), ConvBNReLU(c5r, c5, 5))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, 1, 1), ConvBNReLU(cin, cp, 1))
        self.out_channels = c1 + c3 + c5 + cp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)], 1)


# inception parameters (c1, c3 reduce, c3, c5 reduce, c5, pool proj) from GoogLeNet-v1 Table 1
_5A = (256, 160, 320, 32, 128, 128)
_5B = (384, 192, 384, 48, 128, 128)
_INCEPTIONS = {
    "3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64), "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64), "4e": (256, 160, 320, 32, 128, 128),
    "5a": _5A, "5b": _5B, "6a": _5A, "6b": _5B, "7a": _5A, "7b": _5B,
}


def _bilinear_kernel(channels: int, size: int = 4) -> torch.Tensor:
    factor = (size + 1) // 2
    centre = factor - 0.5
    og = torch.arange(size, dtype=torch.float32)
    filt = 1 - (og - centre).abs() / factor
    kernel = torch.zeros(channels, channels, size, size)
    kernel[range(channels), range(channels)] = filt[:, None] * filt[None, :]
    return kernel


class Box2Pix(nn.Module):
    """forward(x) -> (ssd_boxes (B, P, 4), ssd_logits (B, P, n + 1), dense (B, n + 3, H/8, W/8)).

    ssd_boxes are corner regressions relative to the priors (`encode_boxes`); dense holds the
    semantic logits (channels 0..n) and the offsets / OFFSET_SCALE (channels n+1, n+2: dx, dy)."""

    def __init__(self, config: Box2PixConfig | None = None) -> None:
        super().__init__()
        self.config = config or Box2PixConfig()
        n = self.config.n_classes
        self.stem = nn.Sequential(ConvBNReLU(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1), ConvBNReLU(64, 64, 1),
                                  ConvBNReLU(64, 192, 3), nn.MaxPool2d(3, 2, 1))
        self.pool = nn.MaxPool2d(3, 2, 1)
        channels = 192
        self.inceptions = nn.ModuleDict()
        self.out_channels: dict[str, int] = {}
        for name, params in _INCEPTIONS.items():
            module = Inception(channels, *params)
            self.inceptions[name] = module
            channels = self.out_channels[name] = module.out_channels
        self.priors_per_layer = self.config.priors_per_layer()
        self.box_heads = nn.ModuleList()
        self.class_heads = nn.ModuleList()
        for name, sizes in zip(SSD_LAYERS, self.priors_per_layer, strict=True):
            anchors = max(len(sizes), 1)  # a layer without priors keeps a (unused) head so the graph is fixed
            self.box_heads.append(nn.Conv2d(self.out_channels[name], anchors * 4, 1))
            self.class_heads.append(nn.Conv2d(self.out_channels[name], anchors * (n + 1), 1))
        dense = n + 3
        self.dense_projections = nn.ModuleDict({name: nn.Conv2d(self.out_channels[name], dense, 1)
                                                for name in ("6b", "5b", "4e", "3b")})
        self.deconvs = nn.ModuleList([nn.ConvTranspose2d(dense, dense, 4, 2, 1, bias=False) for _ in range(3)])
        self._init_weights()

    def _init_weights(self) -> None:
        n = self.config.n_classes
        for head in self.class_heads:  # focal-loss prior: background probability ~0.99 at the start
            nn.init.normal_(head.weight, std=0.01)
            nn.init.zeros_(head.bias)
            with torch.no_grad():
                head.bias.view(-1, n + 1)[:, 0] = np.log(0.99 * n / 0.01)
        for head in self.box_heads:
            nn.init.normal_(head.weight, std=0.01)
            nn.init.zeros_(head.bias)
        for deconv in self.deconvs:
            with torch.no_grad():
                deconv.weight.copy_(_bilinear_kernel(deconv.in_channels))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = {}
        x = self.stem(x)
        for name, module in self.inceptions.items():
            if name in ("4a", "5a", "6a", "7a"):
                x = self.pool(x)
            x = features[name] = module(x)
        n1 = self.config.n_classes + 1
        boxes, logits = [], []
        for name, sizes, box_head, class_head in zip(SSD_LAYERS, self.priors_per_layer, self.box_heads,
                                                     self.class_heads, strict=True):
            if not sizes:
                continue
            b, _, h, w = features[name].shape
            # (B, A*4, h, w) -> (B, h, w, A, 4) -> (B, h*w*A, 4): row, column, prior order (see prior_boxes)
            boxes.append(box_head(features[name]).permute(0, 2, 3, 1).reshape(b, h * w * len(sizes), 4))
            logits.append(class_head(features[name]).permute(0, 2, 3, 1).reshape(b, h * w * len(sizes), n1))
        dense = self.dense_projections["6b"](features["6b"])
        for deconv, skip in zip(self.deconvs, ("5b", "4e", "3b"), strict=True):
            dense = deconv(dense) + self.dense_projections[skip](features[skip])
        return torch.cat(boxes, 1), torch.cat(logits, 1), dense


def upsample_dense(dense: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Stride-8 dense output -> (B, n + 3, height, width), bilinear (FCN-8s's last step)."""
    return functional.interpolate(dense, size=(height, width), mode="bilinear", align_corners=False)


class Box2PixInference(nn.Module):
    """The deployed graph: forward(x) -> (detections (1, P, 4 + n + 1), semantic (1, H, W) uint8,
    offsets (1, 2, H, W) float32 pixels).

    detections: raw corner regressions then softmax class probabilities per prior (decoding against the priors,
    NMS and the pixel-to-box assignment run in instseg_core.postprocess.box_assignment); semantic: argmax class
    (0 = background, k = classes[k - 1]); offsets: (dx, dy) from each pixel's centre to its object's box centre."""

    def __init__(self, model: Box2Pix) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        boxes, logits, dense = self.model(x)
        dense = upsample_dense(dense, x.shape[2], x.shape[3])
        n1 = self.model.config.n_classes + 1
        semantic = dense[:, :n1].argmax(1).to(torch.uint8)
        return torch.cat([boxes, logits.softmax(-1)], -1), semantic, dense[:, n1:] * OFFSET_SCALE


def model_from_checkpoint(checkpoint: dict) -> Box2Pix:
    """Box2Pix in eval mode from a checkpoint dict {'model': state_dict, 'model_config': dict}."""
    model = Box2Pix(Box2PixConfig.from_dict(checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model"])
    return model.eval()


def ideal_output(instances: np.ndarray, labels: np.ndarray, n_classes: int,
                 priors_per_layer: Sequence[Sequence[tuple[int, int]]] | None = None, *, noise_px: float = 0.0,
                 rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What a perfect deployed network (Box2PixInference) would output for a labelled image, for tests and
    benchmarks: (detections (P, 4 + n + 1), semantic (H, W) uint8, offsets (2, H, W) float32), batch axis
    dropped. instances (H, W) int (0 background), labels (H, W) class index + 1; H, W multiples of 128.

    Each object's closest prior (d_change) predicts its exact box with probability 0.9 for its class (score 0.9);
    all other priors say background. Offsets point at the box centre, plus Gaussian noise of `noise_px`."""
    from instseg_core.losses.box2pix import dense_targets, relative_change

    rng = rng or np.random.default_rng(0)
    height, width = instances.shape
    priors = prior_boxes(height, width, priors_per_layer or assign_priors())
    target = dense_targets(instances, labels, np.zeros(instances.shape, bool))
    detections = np.zeros((len(priors), 4 + n_classes + 1), np.float32)
    detections[:, 4] = 1.0
    if len(target.boxes):
        best = relative_change(target.boxes, priors).argmin(1)
        detections[best, :4] = encode_boxes(target.boxes, priors[best])
        detections[best, 4] = 0.1
        detections[best, 4 + target.classes] = 0.9
    offsets = target.offsets * OFFSET_SCALE
    if noise_px:
        offsets[:, target.offset_valid] += rng.normal(0, noise_px, (2, int(target.offset_valid.sum())))
    return detections, labels.astype(np.uint8), offsets.astype(np.float32)
