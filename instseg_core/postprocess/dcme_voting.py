"""DCME decoding: from the vector field and the class grid to instances, vectorised (NumPy; torch for GPU outputs).

Input (the deployed graph's output, instseg_core.networks.dcme.DcmeInference, batch axis dropped):
dense (3, H, W) float32 (dx, dy in pixels to the pixel's centre of mass; foreground probability) and class_probs
(n + 1, H/16, W/16) float32 (0 = background).

1. Foreground: pixels with probability >= `foreground_threshold`.
2. Votes: each foreground pixel votes for the point its vector reaches, (x + 0.5 + dx, y + 0.5 + dy), counted in a
   histogram of `bin_px`-pixel cells (np.bincount).
3. Centres: the cells whose 3 x 3-cell vote count (a box filter) is the maximum of its `peak_window` neighbourhood
   and at least `min_votes` pixels; touching maxima are one centre (connected components).
4. Grouping: every cell takes the nearest centre (cv2.distanceTransformWithLabels over the cell grid, so the work
   is per cell, not per pixel and centre); a pixel joins the centre of the cell its vote fell in, unless that cell
   is further than `max_distance_px` from every centre.
4b. Fragments (not in the paper; `fragment_offset` > 0): the votes of a big object scatter over several peaks and
   split it. A group of pixels that is a whole object points at its own centre of mass; a fragment points outside
   itself, at the centre of the whole. So each group's offset |centre of mass of its pixels - mean of their vote
   targets| / sqrt(pixels) is measured, and a group whose offset is at least `fragment_offset` joins the group
   (with a centre of mass within 3 sqrt(pixels) of its mean vote target) whose union has the smallest offset,
   when that union's offset is below half its own; repeated until nothing joins. The sums are additive, so each
   test is O(1) on per-group sums. Two whole objects side by side are never joined (neither has an offset).
5. Class and score (§III): the class is the encoder's class of the grid block holding the centre of mass (Eq. 2),
   the most probable object class there; score = that class's probability among the object classes x the block's
   object probability (1 - background) x the instance's mean foreground probability. Where the encoder calls that
   block background (object probability < 0.5: the centre of mass of an object split by an occluder, or of a
   ring, lies outside its pixels), the class probabilities of the blocks under the instance's pixels, weighted by
   pixel count, decide instead (not in the paper). Instances with fewer than
   `min_pixels` pixels are dropped; the rest are sorted by score.
Steps 1-2 run where the output is (torch on a GPU); the centre finding runs on the small cell grid on the CPU.
Ids of the result are at the input's resolution (H, W), uint16.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from instseg_core.base.instances import Instances, instances_from_labels
from instseg_core.networks.dcme import GRID_SIZE


@dataclass
class VotingParams:
    foreground_threshold: float = 0.5
    bin_px: int = 4  # vote histogram cell size, pixels
    peak_window: int = 5  # cells: a centre is the maximum of its peak_window x peak_window neighbourhood
    min_votes: float = 40.0  # pixels voting within a centre's 3 x 3 cells
    max_distance_px: float = 32.0  # votes further than this from every centre are left out
    min_pixels: int = 32
    fragment_offset: float = 0.0  # step 4b: join groups whose offset / sqrt(pixels) is at least this (0: off)


FRAGMENT_SEARCH = 3.0  # step 4b: candidate groups have their centre of mass within this many sqrt(pixels)
FRAGMENT_GAIN = 0.5  # step 4b: a union must at least halve the fragment's offset


@dataclass
class Centres:
    """Centres found on the vote grid: `cell_label` (cells,) int32 centre index per cell (-1: too far from every
    centre), `positions` (K, 2) float64 (x, y) pixels, `votes` the (cells_h, cells_w) float32 vote histogram."""

    cell_label: np.ndarray
    positions: np.ndarray
    votes: np.ndarray


def find_centres(votes: np.ndarray, params: VotingParams) -> Centres:
    """Centres from the (cells_h, cells_w) float32 vote histogram (steps 3-4 of the module docstring)."""
    support = cv2.boxFilter(votes, -1, (3, 3), normalize=False, borderType=cv2.BORDER_CONSTANT)
    window = np.ones((params.peak_window, params.peak_window), np.uint8)
    peaks = ((support >= cv2.dilate(support, window)) & (support >= params.min_votes)).astype(np.uint8)
    count, components, _, centroids = cv2.connectedComponentsWithStats(peaks, connectivity=8)
    if count <= 1:
        return Centres(np.full(votes.size, -1, np.int32), np.zeros((0, 2)), votes)
    # nearest centre of every cell: distance transform to the peak pixels, labelled by the peak component
    distance, nearest = cv2.distanceTransformWithLabels(1 - peaks, cv2.DIST_L2, cv2.DIST_MASK_5,
                                                        labelType=cv2.DIST_LABEL_PIXEL)
    # DIST_LABEL_PIXEL numbers the zero pixels (the peak cells) in row-major order: map them to components
    peak_rows, peak_cols = np.nonzero(peaks)
    pixel_to_component = np.concatenate([[0], components[peak_rows, peak_cols]]).astype(np.int32)
    cell_label = pixel_to_component[nearest.ravel()] - 1
    cell_label[distance.ravel() * params.bin_px > params.max_distance_px] = -1
    positions = (centroids[1:] + 0.5) * params.bin_px  # component centroid in cells -> pixels
    return Centres(cell_label.astype(np.int32), positions, votes)


def _offsets(sums: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Step 4b's offset of groups from their sums (..., 4) (sum of x, y, vote x, vote y) and sizes (...)."""
    mean = sums / sizes[..., None]
    return np.hypot(mean[..., 0] - mean[..., 2], mean[..., 1] - mean[..., 3]) / np.sqrt(sizes)


def join_fragments(sizes: np.ndarray, pixel_sums: np.ndarray, vote_sums: np.ndarray, min_offset: float) -> np.ndarray:
    """Step 4b on the groups' sums: (K,) int64 group each of K groups ends in (itself when not joined). `sizes` (K,)
    pixels per group; `pixel_sums` (K, 2) the sums of its pixels' centres (x, y) and `vote_sums` (K, 2) of their
    vote targets, pixels. Groups are joined on copies of the sums, which add up."""
    count = len(sizes)
    root = np.arange(count)
    if count < 2 or min_offset <= 0:
        return root
    sizes = np.asarray(sizes, np.float64).copy()
    sums = np.concatenate([pixel_sums, vote_sums], 1).astype(np.float64)
    alive = sizes > 0
    while True:
        groups = np.flatnonzero(alive)
        offsets = _offsets(sums[groups], sizes[groups])
        joined = False
        for fragment in groups[np.argsort(-offsets, kind="stable")]:
            offset = _offsets(sums[fragment], sizes[fragment])
            if offset < min_offset:
                break
            others = groups[groups != fragment]
            target = sums[fragment, 2:] / sizes[fragment]
            centres = sums[others, :2] / sizes[others, None]
            reach = FRAGMENT_SEARCH * np.sqrt(np.maximum(sizes[others], sizes[fragment]))
            others = others[np.hypot(*(centres - target).T) < reach]
            if others.size == 0:
                continue
            union = _offsets(sums[others] + sums[fragment], sizes[others] + sizes[fragment])
            best = int(union.argmin())
            if union[best] < FRAGMENT_GAIN * offset:
                into = others[best]
                sums[into] += sums[fragment]
                sizes[into] += sizes[fragment]
                alive[fragment] = False
                root[root == fragment] = into
                joined = True
                break
        if not joined:
            return root


def _group_sums(labels: np.ndarray, rows: np.ndarray, cols: np.ndarray, centres: Centres, count: int,
                bin_px: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sizes (K,), pixel_sums (K, 2), vote_sums (K, 2)) of the groups for step 4b. A pixel's group is the label of
    its vote cell, so the vote sums come from the vote histogram over the cells (each cell's centre times its
    votes: the targets to within bin_px / 2), not from another pass over the pixels."""
    sizes = np.bincount(labels, minlength=count).astype(np.float64)
    half = 0.5 * sizes  # pixel centres
    pixel_sums = np.stack([np.bincount(labels, cols, count) + half, np.bincount(labels, rows, count) + half], 1)
    cells = np.flatnonzero((centres.votes.ravel() > 0) & (centres.cell_label >= 0))
    cell_y, cell_x = np.divmod(cells, centres.votes.shape[1])
    votes = centres.votes.ravel()[cells].astype(np.float64)
    cell_groups = centres.cell_label[cells]
    vote_sums = np.stack([np.bincount(cell_groups, votes * (cell_x + 0.5) * bin_px, count),
                          np.bincount(cell_groups, votes * (cell_y + 0.5) * bin_px, count)], 1)
    return sizes, pixel_sums, vote_sums


def _classify(positions: np.ndarray, class_probs: np.ndarray, grid: int, pixel_blocks: Callable[[], np.ndarray],
              labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(class index (K,) int64, class confidence (K,)) from the block holding each centre of mass (Eq. 2), or,
    where that block is background, from the blocks under the instance's pixels (`pixel_blocks()` (M,) flat block
    index of each labelled pixel, computed only then; `labels` (M,) its instance)."""
    n1, rows, cols = class_probs.shape
    count = len(positions)
    gx = np.clip((positions[:, 0] // grid).astype(np.int64), 0, cols - 1)
    gy = np.clip((positions[:, 1] // grid).astype(np.int64), 0, rows - 1)
    block = class_probs[:, gy, gx]  # (n + 1, K)
    outside = block[0] > 0.5
    if outside.any():
        pixels = np.bincount(labels * (rows * cols) + pixel_blocks(), minlength=count * rows * cols)
        mass = pixels.reshape(count, rows * cols) @ class_probs.reshape(n1, -1).T  # (K, n + 1) summed probs
        block[:, outside] = (mass[outside] / np.maximum(mass[outside].sum(1, keepdims=True), 1e-6)).T
    objects = block[1:]
    index = objects.argmax(0)
    confidence = objects.max(0) / np.maximum(objects.sum(0), 1e-6) * (1.0 - block[0])
    return index.astype(np.int64), confidence


def _instances(foreground: np.ndarray, rows: np.ndarray, cols: np.ndarray, cells: np.ndarray, fg_prob: np.ndarray,
               centres: Centres, class_probs: np.ndarray, height: int, width: int, params: VotingParams) -> Instances:
    """Step 5 from the foreground pixels (flat indices, rows, columns), their vote cells and foreground
    probabilities."""
    count = len(centres.positions)
    if count == 0:
        return Instances.empty(height, width)
    labels = centres.cell_label[cells]
    kept = labels >= 0
    labels, foreground, rows, cols, fg_prob = (a[kept] for a in (labels, foreground, rows, cols, fg_prob))
    positions = centres.positions
    if params.fragment_offset > 0 and count > 1:
        weights, pixel_sums, vote_sums = _group_sums(labels, rows, cols, centres, count, params.bin_px)
        root = join_fragments(weights, pixel_sums, vote_sums, params.fragment_offset)
        if (root != np.arange(count)).any():
            roots, labels_of_root = np.unique(root, return_inverse=True)
            weight_sum = np.maximum(np.bincount(labels_of_root, weights, len(roots)), 1.0)
            # a joined group's centre: the members' vote peaks weighted by their pixels (Eq. 2 classifies there)
            positions = np.stack([np.bincount(labels_of_root, weights * positions[:, i], len(roots)) / weight_sum
                                  for i in (0, 1)], 1)
            labels = labels_of_root[labels]
            count = len(roots)
    sums = np.bincount(labels, fg_prob, count)
    sizes = np.maximum(np.bincount(labels, minlength=count), 1)
    classes, confidence = _classify(positions, class_probs, GRID_SIZE,
                                    lambda: (rows // GRID_SIZE) * class_probs.shape[2] + cols // GRID_SIZE, labels)
    scores = (confidence * sums / sizes).astype(np.float32)
    order = np.argsort(-scores, kind="stable")
    rank = np.empty(count, np.int64)
    rank[order] = np.arange(count)
    return instances_from_labels(foreground, rank[labels], height, width, classes[order], scores[order],
                                 params.min_pixels, rows, cols)


def _cells(rows: np.ndarray, cols: np.ndarray, dx: np.ndarray, dy: np.ndarray, height: int, width: int,
           params: VotingParams) -> tuple[np.ndarray, int, int]:
    """(flat vote cell per pixel (M,) int64, cells_h, cells_w): the cell the pixel's vector points into."""
    cells_w, cells_h = -(-width // params.bin_px), -(-height // params.bin_px)
    scale = np.float32(1.0 / params.bin_px)
    cell_x = ((cols.astype(np.float32) + np.float32(0.5) + dx) * scale).astype(np.int32)
    cell_y = ((rows.astype(np.float32) + np.float32(0.5) + dy) * scale).astype(np.int32)
    np.clip(cell_x, 0, cells_w - 1, out=cell_x)
    np.clip(cell_y, 0, cells_h - 1, out=cell_y)
    return cell_y.astype(np.int64) * cells_w + cell_x, cells_h, cells_w


def decode_dcme(dense: np.ndarray, class_probs: np.ndarray, params: VotingParams | None = None) -> Instances:
    """Instances at (H, W) from dense (3, H, W) and class_probs (n + 1, H/16, W/16), NumPy (see the module
    docstring)."""
    params = params or VotingParams()
    _, height, width = dense.shape
    mask = dense[2] >= params.foreground_threshold
    rows, cols = np.nonzero(mask)
    foreground = rows * width + cols
    cells, cells_h, cells_w = _cells(rows, cols, dense[0][mask], dense[1][mask], height, width, params)
    votes = np.bincount(cells, minlength=cells_h * cells_w).astype(np.float32).reshape(cells_h, cells_w)
    centres = find_centres(votes, params)
    return _instances(foreground, rows, cols, cells, dense[2][mask], centres, class_probs, height, width, params)


def decode_dcme_torch(dense: Any, class_probs: Any, params: VotingParams | None = None) -> Instances:
    """decode_dcme for torch tensors on any device: foreground and votes on the device, the centres on the CPU
    (the cell grid is 1/16 of the pixels), then the instances from the pixels' labels."""
    import torch

    params = params or VotingParams()
    _, height, width = dense.shape
    dense = dense.float()
    mask = dense[2] >= params.foreground_threshold
    rows, cols = torch.nonzero(mask, as_tuple=True)
    cells_w, cells_h = -(-width // params.bin_px), -(-height // params.bin_px)
    cell_x = ((cols + 0.5 + dense[0][mask]) / params.bin_px).long().clamp(0, cells_w - 1)
    cell_y = ((rows + 0.5 + dense[1][mask]) / params.bin_px).long().clamp(0, cells_h - 1)
    cells = cell_y * cells_w + cell_x
    votes = torch.bincount(cells, minlength=cells_h * cells_w).float().reshape(cells_h, cells_w)
    centres = find_centres(votes.cpu().numpy(), params)
    rows_np, cols_np = rows.cpu().numpy(), cols.cpu().numpy()
    return _instances(rows_np * width + cols_np, rows_np, cols_np, cells.cpu().numpy(), dense[2][mask].cpu().numpy(),
                      centres, class_probs.float().cpu().numpy(), height, width, params)
