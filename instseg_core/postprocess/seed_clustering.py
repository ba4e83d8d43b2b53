"""Spatial Embeddings post-processing: sequential clustering around seeds (Neven et al., §3.6, Eq. 11).

Per class, on the pixels whose seediness exceeds `foreground_threshold`:
    1. take the unclustered pixel with the highest seediness; stop when it is below `seed_threshold`;
    2. its embedding is the centre C and its sigma raw value s the bandwidth b = exp(10 s);
    3. the proposal is every foreground pixel with phi = exp(-sum_d (e_d - C_d)^2 b_d) > 0.5,
       i.e. sum_d (e_d - C_d)^2 b_d < ln 2;
    4. keep it if it has more than `min_pixels` pixels and more than `min_unclustered` of them were
       unclustered; score = the seed's seediness;
    5. mark the proposal (and the seed) clustered, go to 1.
Proposals of all classes are then painted into one id image in decreasing score order (instances never
overlap; see instseg_core.base.instances).

Input: the network's raw output (2 + n_sigma + n_classes, H, W) float32 (instseg_core.networks.spatial_embeddings
explains the channels and the coordinate convention). Two implementations with the same result:

- `cluster_seeds` (NumPy, CPU): activations (tanh) only on foreground pixels, comparisons in logit
  space, the bandwidth only at seeds, classes in parallel threads, and a spatial index so that step 3
  looks only at candidate pixels: foreground pixels are listed tile by tile (tiles of `tile` x `tile`
  pixels) with the bounding box of their embeddings per tile, and a proposal examines only tiles whose
  box meets the ellipse's bounding box. Exact: a pixel with phi > 0.5 always lies in such a tile.
- `cluster_seeds_torch` (any torch device, e.g. CUDA): the same steps on all foreground pixels at once.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from instseg_core.base.instances import InstanceBuilder, Instances
from instseg_core.networks.embedding_coding import PIXEL_SPACING, SIGMA_SCALE

LN2 = math.log(2.0)


@dataclass(frozen=True)
class ClusteringParams:
    """seed_threshold: least seediness that starts an instance (its score); foreground_threshold:
    least seediness of a pixel that takes part; min_pixels: least proposal size in network-input pixels;
    min_unclustered: least fraction of a proposal not claimed before; margin_scale: the clustering margin
    sqrt(ln 2 / b) multiplied by this (1: the paper's; > 1 gathers pixels whose embeddings miss the centre by
    more, for offsets less precise than the training data taught, e.g. on real photographs); threads: classes
    clustered in parallel (NumPy version); tile: spatial-index tile size (a power of
    two; the largest one <= tile dividing H and W is used)."""

    seed_threshold: float = 0.5
    foreground_threshold: float = 0.5
    min_pixels: int = 64
    min_unclustered: float = 0.5
    margin_scale: float = 1.0
    tile: int = 32
    threads: int = 2

    def __post_init__(self) -> None:
        for name in ("seed_threshold", "foreground_threshold"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {value}")
        if (self.min_pixels < 0 or not 0.0 <= self.min_unclustered <= 1.0 or self.tile < 1 or self.threads < 1
                or self.margin_scale <= 0):
            raise ValueError(f"invalid clustering parameters {self}")


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _tile_size(height: int, width: int, wanted: int) -> int:
    """The largest power of two <= wanted dividing both height and width."""
    tile = 1
    while tile * 2 <= wanted and height % (tile * 2) == 0 and width % (tile * 2) == 0:
        tile *= 2
    return tile


def _check(raw_shape: tuple[int, ...], n_sigma: int) -> tuple[int, int, int]:
    if len(raw_shape) != 3 or n_sigma not in (1, 2) or raw_shape[0] < 3 + n_sigma:
        raise ValueError(f"expected raw output (2 + n_sigma + n_classes, H, W) with n_sigma 1 or 2, "
                         f"got shape {raw_shape} and n_sigma {n_sigma}")
    return raw_shape[0] - 2 - n_sigma, raw_shape[1], raw_shape[2]


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + n) for each (s, n)."""
    total = int(lengths.sum())
    offsets = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return np.arange(total) + offsets


def _cluster_class(raw: np.ndarray, n_sigma: int, seed_channel: int, params: ClusteringParams,
                   tile: int) -> list[tuple[float, np.ndarray]]:
    """(score, flat pixel indices) of the accepted proposals of one class."""
    _, height, width = raw.shape
    logits = raw[seed_channel]
    foreground = logits > _logit(params.foreground_threshold)
    if np.count_nonzero(foreground) <= params.min_pixels:
        return []
    tiles_x = width // tile
    shift = tile.bit_length() - 1  # tile is a power of two
    # Foreground pixels listed tile by tile (row-major within a tile): flatnonzero of a transposed view.
    tile_major = np.flatnonzero(foreground.reshape(height // tile, tile, tiles_x, tile).transpose(0, 2, 1, 3))
    tile_major = tile_major.astype(np.int32 if height * width < 2**31 else np.int64)
    tile_index = tile_major >> (2 * shift)
    within = tile_major & (tile * tile - 1)
    rows = (tile_index // tiles_x) * tile + (within >> shift)
    cols = (tile_index % tiles_x) * tile + (within & (tile - 1))
    flat = rows * width + cols
    embedding_x = np.tanh(raw[0].ravel()[flat]) + cols.astype(np.float32) * np.float32(PIXEL_SPACING)
    embedding_y = np.tanh(raw[1].ravel()[flat]) + rows.astype(np.float32) * np.float32(PIXEL_SPACING)
    sigma_x, sigma_y = raw[2].ravel(), raw[1 + n_sigma].ravel()  # the same channel when n_sigma == 1
    seeds = logits.ravel()[flat]
    unclustered = np.ones(flat.size, bool)
    # Tile index: first element and count of each non-empty tile, and the bounding box of its embeddings.
    tile_starts = np.flatnonzero(np.r_[True, tile_index[1:] != tile_index[:-1]])
    tile_counts = np.diff(np.r_[tile_starts, flat.size])
    box_x0, box_x1 = np.minimum.reduceat(embedding_x, tile_starts), np.maximum.reduceat(embedding_x, tile_starts)
    box_y0, box_y1 = np.minimum.reduceat(embedding_y, tile_starts), np.maximum.reduceat(embedding_y, tile_starts)
    seed_logit = _logit(params.seed_threshold)
    proposals = []
    while True:
        k = int(seeds.argmax())
        if seeds[k] < seed_logit:
            break
        score = _sigmoid(float(seeds[k]))
        cx, cy = embedding_x[k], embedding_y[k]
        bx = math.exp(SIGMA_SCALE * float(sigma_x[flat[k]])) / params.margin_scale**2
        by = math.exp(SIGMA_SCALE * float(sigma_y[flat[k]])) / params.margin_scale**2
        rx, ry = math.sqrt(LN2 / bx), math.sqrt(LN2 / by)
        hit = (box_x0 <= cx + rx) & (box_x1 >= cx - rx) & (box_y0 <= cy + ry) & (box_y1 >= cy - ry)
        candidates = _ranges(tile_starts[hit], tile_counts[hit])
        dx = embedding_x[candidates]
        dx -= cx
        dx *= dx
        dx *= np.float32(bx)
        dy = embedding_y[candidates]
        dy -= cy
        dy *= dy
        dy *= np.float32(by)
        dx += dy
        members = candidates[dx < LN2]
        seeds[k] = -np.inf
        unclustered[k] = False
        if (members.size > params.min_pixels
                and np.count_nonzero(unclustered[members]) > params.min_unclustered * members.size):
            proposals.append((score, flat[members]))
        unclustered[members] = False
        seeds[members] = -np.inf
    return proposals


def _build(height: int, width: int, proposals: list[tuple[float, int, np.ndarray]], min_pixels: int) -> Instances:
    builder = InstanceBuilder(height, width, min_pixels=max(min_pixels, 1))
    for score, class_index, members in sorted(proposals, key=lambda p: -p[0]):
        builder.add(members, class_index, score)
    return builder.build()


def cluster_seeds(raw: np.ndarray, n_sigma: int, params: ClusteringParams | None = None) -> Instances:
    """NumPy clustering of one image's raw output (2 + n_sigma + n_classes, H, W) float32 -> Instances."""
    n_classes, height, width = _check(raw.shape, n_sigma)
    params = params or ClusteringParams()
    raw = np.ascontiguousarray(raw, dtype=np.float32)
    tile = _tile_size(height, width, params.tile)

    def one_class(class_index: int) -> list[tuple[float, int, np.ndarray]]:
        return [(score, class_index, members)
                for score, members in _cluster_class(raw, n_sigma, 2 + n_sigma + class_index, params, tile)]

    if params.threads > 1 and n_classes > 1:
        per_class = list(_executor(params.threads).map(one_class, range(n_classes)))
    else:
        per_class = [one_class(c) for c in range(n_classes)]
    return _build(height, width, [p for proposals in per_class for p in proposals], params.min_pixels)


_EXECUTORS: dict[int, ThreadPoolExecutor] = {}


def _executor(threads: int) -> ThreadPoolExecutor:
    """A shared pool per thread count (NumPy releases the GIL in its loops, so classes run in parallel)."""
    if threads not in _EXECUTORS:
        _EXECUTORS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="seed-clustering")
    return _EXECUTORS[threads]


@torch.no_grad()
def cluster_seeds_torch(raw: torch.Tensor, n_sigma: int, params: ClusteringParams | None = None) -> Instances:
    """The same clustering with torch on raw's device (e.g. CUDA); raw (2 + n_sigma + n_classes, H, W)."""
    n_classes, height, width = _check(tuple(raw.shape), n_sigma)
    params = params or ClusteringParams()
    raw = raw.float()
    seed_logit = _logit(params.seed_threshold)
    proposals = []
    for class_index in range(n_classes):
        logits = raw[2 + n_sigma + class_index].reshape(-1)
        flat = torch.nonzero(logits > _logit(params.foreground_threshold)).squeeze(1)
        if flat.numel() <= params.min_pixels:
            continue
        rows = torch.div(flat, width, rounding_mode="floor")
        cols = flat - rows * width
        embedding_x = torch.tanh(raw[0].reshape(-1)[flat]) + cols.float() * PIXEL_SPACING
        embedding_y = torch.tanh(raw[1].reshape(-1)[flat]) + rows.float() * PIXEL_SPACING
        bandwidth = torch.exp(SIGMA_SCALE * raw[2:2 + n_sigma].reshape(n_sigma, -1)[:, flat]) / params.margin_scale**2
        seeds = logits[flat].clone()
        unclustered = torch.ones(flat.numel(), dtype=torch.bool, device=raw.device)
        while True:
            k = int(seeds.argmax())
            seed_value = float(seeds[k])
            if seed_value < seed_logit:
                break
            dx = embedding_x - embedding_x[k]
            dy = embedding_y - embedding_y[k]
            member = dx * dx * bandwidth[0, k].float() + dy * dy * bandwidth[-1, k].float() < LN2
            seeds[k] = -math.inf
            unclustered[k] = False
            count = int(member.sum())
            if count > params.min_pixels and int(unclustered[member].sum()) > params.min_unclustered * count:
                proposals.append((_sigmoid(seed_value), class_index, flat[member].cpu().numpy()))
            unclustered[member] = False
            seeds[member] = -math.inf
    return _build(height, width, proposals, params.min_pixels)
