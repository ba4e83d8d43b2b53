"""Box2Pix decoding (Uhrig et al. 2018, §III-D): SSD detections -> NMS -> pixel-to-box assignment -> Instances.

Inputs are the deployed network's outputs (instseg_core.networks.box2pix.Box2PixInference) at network resolution:
- detections (P, 4 + n + 1) float32: per prior, corner regressions then class probabilities (0 = background);
- semantic (H, W) uint8: argmax class per pixel (0 = background, k = class index k - 1);
- offsets (2, H, W) float32: (dx, dy) in pixels from each pixel's centre (j + 0.5, i + 0.5) to its object's box
  centre.

1. Each prior keeps its best non-background class (a prior location predicts one object); detections above
   `detection_threshold` go through non-maximum suppression (IoU `nms_iou`, OpenCV's NMSBoxes).
2. Every foreground pixel goes to the box of least cost
       d_off (its predicted centre to the box centre) + d_out (its distance to the box, 0 inside)
       + class_mismatch_penalty (pixel class != box class) + score_penalty * (1 - score) * image diagonal.
   The paper adds a "sufficiently large number" for a class mismatch and still assigns; by default we leave
   pixels whose class has no box unassigned instead (`assign_mismatched=True` is the paper's behaviour).
   Pixels are processed in groups of one class and one image tile (a mismatched box can never win while a
   matching one exists), over `threads` threads, keeping a running minimum over boxes instead of a pixels x
   boxes matrix; within a group, boxes whose lower bound of the cost exceeds every pixel's best cost so far are
   skipped, which keeps the result exact.
3. Instances take the box's class and score; boxes that got fewer than `min_pixels` pixels are dropped.
NumPy (`assign_pixels`) and torch (`assign_pixels_torch`, for GPU backends) give the same assignment.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from instseg_core.base.instances import Instances, instances_from_labels
from instseg_core.networks.box_priors import decode_boxes


@dataclass
class AssignmentParams:
    # defaults chosen on 15 synthetic *training* images with the Box2Pix demo model (AP50 0.241 -> 0.271 for
    # score_penalty 0.02 -> 0.1; detection_threshold 0.1..0.3 made no difference)
    detection_threshold: float = 0.2    # lowest class probability of a detection entering NMS
    nms_iou: float = 0.5
    top_k: int = 4000                   # most detections entering NMS (highest scores); each object has dozens
    max_detections: int = 100           # most boxes kept after NMS
    class_mismatch_penalty: float = 1e4  # pixels
    score_penalty: float = 0.1          # x (1 - score) x image diagonal, in pixels
    min_pixels: int = 32
    assign_mismatched: bool = False
    threads: int = 1                    # >1 splits the groups over threads; measured no faster (GIL-bound)
    tile: int = 128                     # pixels are processed in (tile x tile, class) groups


@dataclass
class Detections:
    """After NMS, highest score first: boxes (N, 4) float32 (x0, y0, x1, y1) pixels, classes (N,) int64 class
    index, scores (N,) float32."""

    boxes: np.ndarray
    classes: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def decode_detections(detections: np.ndarray, priors: np.ndarray, height: int, width: int,
                      params: AssignmentParams) -> Detections:
    """Raw detections (P, 4 + n + 1) and priors (P, 4) -> NMS'd Detections clipped to the image."""
    probabilities = detections[:, 5:]
    classes = probabilities.argmax(1)
    scores = probabilities[np.arange(len(classes)), classes]
    keep = np.flatnonzero(scores >= params.detection_threshold)
    keep = keep[np.argsort(-scores[keep], kind="stable")[: params.top_k]]
    if keep.size == 0:
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32))
    boxes = decode_boxes(detections[keep, :4], priors[keep])
    boxes = np.clip(boxes, 0, [width, height, width, height]).astype(np.float32)
    valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    keep, boxes = keep[valid], boxes[valid]
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1)
    selected = np.asarray(cv2.dnn.NMSBoxes(xywh.tolist(), scores[keep].tolist(), params.detection_threshold,
                                           params.nms_iou), np.int64).reshape(-1)
    selected = selected[np.argsort(-scores[keep][selected], kind="stable")][: params.max_detections]
    return Detections(boxes[selected], classes[keep][selected].astype(np.int64),
                      scores[keep][selected].astype(np.float32))


def _box_terms(detections: Detections, height: int, width: int, params: AssignmentParams) -> np.ndarray:
    """(N, 7) float32 per box: x0, y0, x1, y1, centre x, centre y, constant cost (score penalty)."""
    boxes = detections.boxes
    diagonal = float(np.hypot(height, width))
    constant = params.score_penalty * (1 - detections.scores) * diagonal
    return np.concatenate([boxes, (boxes[:, :2] + boxes[:, 2:]) / 2, constant[:, None]], 1).astype(np.float32)


def _norm(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """sqrt(x^2 + y^2), overwriting x and y: ~9x faster than np.hypot on float32 here (NumPy's hypot calls the C
    library per element), and as exact for distances in pixels (no overflow below 1e19)."""
    x *= x
    y *= y
    x += y
    return np.sqrt(x, out=x)


def _assign_group(px: np.ndarray, py: np.ndarray, cx: np.ndarray, cy: np.ndarray, terms: np.ndarray,
                  box_ids: np.ndarray, extra: float) -> np.ndarray:
    """Best box (from box_ids) of pixels at (px, py) predicting centres (cx, cy): exact argmin of the cost.

    Boxes are visited by increasing lower bound of their cost over the group (distance between the group's
    pixel rectangle and the box, plus between its predicted-centre rectangle and the box centre); once a bound
    exceeds the worst pixel's best cost so far, no later box can win for any pixel of the group."""
    t = terms[box_ids]
    extent = px.min(), py.min(), px.max(), py.max()  # of the pixels still in the working set
    out_x = np.maximum(np.maximum(t[:, 0] - extent[2], extent[0] - t[:, 2]), 0)
    out_y = np.maximum(np.maximum(t[:, 1] - extent[3], extent[1] - t[:, 3]), 0)
    off_x = np.maximum(np.maximum(cx.min() - t[:, 4], t[:, 4] - cx.max()), 0)
    off_y = np.maximum(np.maximum(cy.min() - t[:, 5], t[:, 5] - cy.max()), 0)
    lower_bound = _norm(out_x, out_y) + _norm(off_x, off_y) + t[:, 6] + extra
    result = np.full(px.shape, -1, np.int32)
    position = np.arange(px.size)
    best_cost = np.full(px.shape, np.inf, np.float32)
    best_box = result.copy()
    worst = np.inf
    for j in np.argsort(lower_bound, kind="stable"):
        if lower_bound[j] > worst:
            break
        open_pixels = best_cost >= lower_bound[j]  # the others already have a box this one cannot beat
        if open_pixels.sum() * 2 < open_pixels.size:  # drop settled pixels from the working set
            result[position] = best_box
            px, py, cx, cy, position, best_cost, best_box = (
                a[open_pixels] for a in (px, py, cx, cy, position, best_cost, best_box))
            extent = px.min(), py.min(), px.max(), py.max()
        x0, y0, x1, y1, bx, by, constant = t[j]
        cost = _norm(cx - bx, cy - by)
        if not (x0 <= extent[0] and y0 <= extent[1] and extent[2] <= x1 and extent[3] <= y1):
            cost += _norm(np.maximum(np.maximum(x0 - px, px - x1), 0), np.maximum(np.maximum(y0 - py, py - y1), 0))
        # else every pixel of the working set lies inside the box: d_out = 0
        cost += constant + extra
        box_id = box_ids[j]
        better = cost < best_cost
        ties = cost == best_cost
        if ties.any():  # ties go to the lower box index, as in the torch version
            better |= ties & (box_id < best_box)
        np.copyto(best_cost, cost, where=better)
        np.copyto(best_box, box_id, where=better)
        worst = best_cost.max()
    result[position] = best_box
    return result


def _foreground_assignment(semantic: np.ndarray, offsets: np.ndarray, detections: Detections,
                           params: AssignmentParams) -> tuple[np.ndarray, np.ndarray]:
    """(foreground flat pixel indices (M,) int64, their box index (M,) int32, -1 = unassigned)."""
    height, width = semantic.shape
    flat_semantic = semantic.ravel()
    foreground = np.flatnonzero(flat_semantic > 0)  # on a bool array: 6x faster than on the uint8 one
    best = np.full(foreground.size, -1, np.int32)
    if len(detections) == 0 or foreground.size == 0:
        return foreground, best
    terms = _box_terms(detections, height, width, params)
    # group pixels by (tile, class): sort them once by a uint16 key (radix sort), then each group is a slice
    pixel_class = flat_semantic[foreground]
    n_classes = int(pixel_class.max())
    tile = max(int(params.tile), 1)
    rows, cols = np.divmod(foreground, width)
    key = ((rows // tile) * -(-width // tile) + cols // tile) * (n_classes + 1) + pixel_class
    order = np.argsort(key.astype(np.uint16) if key.max() < 1 << 16 else key, kind="stable")
    sorted_key = key[order]
    sorted_pixels = foreground[order]
    px = cols[order].astype(np.float32) + 0.5
    py = rows[order].astype(np.float32) + 0.5
    cx = px + offsets[0].ravel()[sorted_pixels]
    cy = py + offsets[1].ravel()[sorted_pixels]
    sorted_best = np.full(foreground.size, -1, np.int32)
    starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
    ends = np.append(starts[1:], order.size)
    boxes_of_class = {c: np.flatnonzero(detections.classes == c - 1) for c in range(1, n_classes + 1)}
    all_boxes = np.arange(len(detections))

    def run(group: tuple[int, int]) -> None:
        start, end = group
        box_ids, extra = boxes_of_class[int(sorted_key[start] % (n_classes + 1))], 0.0
        if box_ids.size == 0:
            if not params.assign_mismatched:
                return
            box_ids, extra = all_boxes, params.class_mismatch_penalty
        window = slice(start, end)
        sorted_best[window] = _assign_group(px[window], py[window], cx[window], cy[window], terms, box_ids, extra)

    groups = list(zip(starts.tolist(), ends.tolist(), strict=True))
    threads = max(1, min(int(params.threads), len(groups)))
    if threads > 1:  # one contiguous run of groups per thread, split by pixel count
        bounds = np.searchsorted(ends, np.arange(1, threads) * order.size / threads)
        runs = [groups[a:b] for a, b in zip([0, *bounds.tolist()], [*bounds.tolist(), len(groups)], strict=True)]
        with ThreadPoolExecutor(threads) as pool:
            def run_all(run_groups: list[tuple[int, int]]) -> None:
                for group in run_groups:
                    run(group)

            list(pool.map(run_all, runs))
    else:
        for group in groups:
            run(group)
    best[order] = sorted_best
    return foreground, best


def assign_pixels(semantic: np.ndarray, offsets: np.ndarray, detections: Detections,
                  params: AssignmentParams) -> np.ndarray:
    """(H, W) int32 index into `detections` of each pixel's box, -1 for background and unassigned pixels."""
    foreground, best = _foreground_assignment(semantic, offsets, detections, params)
    assignment = np.full(semantic.size, -1, np.int32)
    assignment[foreground] = best
    return assignment.reshape(semantic.shape)


def assign_pixels_torch(semantic: Any, offsets: Any, detections: Detections, params: AssignmentParams) -> Any:
    """assign_pixels on torch tensors (any device): semantic (H, W) uint8, offsets (2, H, W) float32 ->
    (H, W) int32 tensor on the same device."""
    import torch

    height, width = semantic.shape
    device = semantic.device
    assignment = torch.full((height * width,), -1, dtype=torch.int32, device=device)
    if len(detections) == 0:
        return assignment.view(height, width)
    terms = torch.from_numpy(_box_terms(detections, height, width, params)).to(device)
    box_classes = torch.from_numpy(detections.classes).to(device)
    flat_semantic = semantic.reshape(-1).long()
    foreground = torch.nonzero(flat_semantic, as_tuple=True)[0]
    pixel_class = flat_semantic[foreground] - 1
    px = (foreground % width).float() + 0.5
    py = torch.div(foreground, width, rounding_mode="floor").float() + 0.5
    cx = px + offsets[0].reshape(-1)[foreground]
    cy = py + offsets[1].reshape(-1)[foreground]
    best_cost = torch.full_like(px, float("inf"))
    best_box = torch.full(px.shape, -1, dtype=torch.int32, device=device)
    for box_id in range(len(detections)):
        x0, y0, x1, y1, bx, by, constant = terms[box_id]
        cost = torch.hypot(cx - bx, cy - by)
        out_x = torch.clamp(torch.maximum(x0 - px, px - x1), min=0)
        out_y = torch.clamp(torch.maximum(y0 - py, py - y1), min=0)
        cost = cost + torch.hypot(out_x, out_y) + constant
        mismatch = pixel_class != box_classes[box_id]
        cost = torch.where(mismatch, cost + params.class_mismatch_penalty, cost)
        better = cost < best_cost
        best_cost = torch.where(better, cost, best_cost)
        best_box = torch.where(better, torch.full_like(best_box, box_id), best_box)
    if not params.assign_mismatched:  # no box of the pixel's class: leave it unassigned
        has_box = torch.zeros(int(flat_semantic.max()) + 1, dtype=torch.bool, device=device)
        has_box[box_classes + 1] = True
        best_box = torch.where(has_box[pixel_class + 1], best_box, torch.full_like(best_box, -1))
    assignment[foreground] = best_box
    return assignment.view(height, width)


def instances_from_assignment(foreground: np.ndarray, best: np.ndarray, height: int, width: int,
                              detections: Detections, min_pixels: int) -> Instances:
    """Instances (highest score first) from the foreground pixels' (flat indices (M,)) box index (M,) int32
    (-1 = none); boxes with fewer than `min_pixels` pixels are dropped. Instance boxes are the masks' extents."""
    return instances_from_labels(foreground, best, height, width, detections.classes, detections.scores, min_pixels)


def decode_box2pix(detections: np.ndarray, semantic: np.ndarray, offsets: np.ndarray, priors: np.ndarray,
                   params: AssignmentParams) -> Instances:
    """The whole §III-D decoding in NumPy for one image (shapes in the module docstring)."""
    height, width = semantic.shape
    boxes = decode_detections(detections, priors, height, width, params)
    foreground, best = _foreground_assignment(semantic, offsets, boxes, params)
    return instances_from_assignment(foreground, best, height, width, boxes, params.min_pixels)
