"""What perfect networks would output for a labelled image: inputs for tests and benchmarks of the decoders.

Test helpers only (nothing in the product imports this package). Labelled images are given as
instances (H, W) int (0 = background, k = object k) and labels (H, W) class index + 1 on instance pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from instseg_core.losses.box2pix import dense_targets, relative_change
from instseg_core.networks.box_priors import OFFSET_SCALE, assign_priors, encode_boxes, prior_boxes
from instseg_core.networks.embedding_coding import PIXEL_SPACING, margin_to_sigma_raw


def ideal_spatial_embeddings_output(instances: np.ndarray, labels: np.ndarray, n_classes: int, n_sigma: int = 2,
                                    *, margin_px: float = 8.0, noise_px: float = 0.0,
                                    rng: np.random.Generator | None = None) -> np.ndarray:
    """What a perfect network would output for a labelled image, for tests and benchmarks.

    instances (H, W) int, 0 = background; labels (H, W) class index + 1 on instance pixels. Every instance
    pixel's offset points at its instance's centroid (plus Gaussian noise of `noise_px` pixels), sigma
    gives a margin of `margin_px` pixels, and the seediness of the instance's class is what training
    regresses it to, phi of the pixel's embedding (Eq. 5/10: ~1 on the centroid, 0.5 at the margin;
    0.0025 elsewhere). Returns (2 + n_sigma + n_classes, H, W) float32 raw.
    """
    rng = rng or np.random.default_rng(0)
    height, width = instances.shape
    raw = np.zeros((2 + n_sigma + n_classes, height, width), np.float32)
    raw[2 + n_sigma:] = -6.0
    raw[2:2 + n_sigma] = margin_to_sigma_raw(margin_px)
    count = int(instances.max())
    if count == 0:
        return raw
    rows, cols = np.nonzero(instances)
    index = instances[rows, cols] - 1
    area = np.maximum(np.bincount(index, minlength=count), 1)
    center_x = np.bincount(index, cols, count) / area
    center_y = np.bincount(index, rows, count) / area
    noise_x, noise_y = rng.normal(0, noise_px, cols.size), rng.normal(0, noise_px, rows.size)
    offset_x = (center_x[index] - cols + noise_x) * PIXEL_SPACING
    offset_y = (center_y[index] - rows + noise_y) * PIXEL_SPACING
    raw[0, rows, cols] = np.arctanh(np.clip(offset_x, -0.999, 0.999))
    raw[1, rows, cols] = np.arctanh(np.clip(offset_y, -0.999, 0.999))
    distance = np.hypot(noise_x, noise_y) / margin_px  # of the embedding from the centre, in margins
    phi = np.clip(np.exp2(-distance**2), 0.0025, 0.9975)  # Eq. 5 for this margin: 0.5 at the margin
    raw[2 + n_sigma + labels[rows, cols].astype(np.int64) - 1, rows, cols] = np.log(phi / (1 - phi))
    return raw


def ideal_box2pix_output(instances: np.ndarray, labels: np.ndarray, n_classes: int,
                         priors_per_layer: Sequence[Sequence[tuple[int, int]]] | None = None, *,
                         noise_px: float = 0.0, rng: np.random.Generator | None = None
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What a perfect deployed network (Box2PixInference) would output for a labelled image, for tests and
    benchmarks: (detections (P, 4 + n + 1), semantic (H, W) uint8, offsets (2, H, W) float32), batch axis
    dropped. instances (H, W) int (0 background), labels (H, W) class index + 1; H, W multiples of 128.

    Each object's closest prior (d_change) predicts its exact box with probability 0.9 for its class (score 0.9);
    all other priors say background. Offsets point at the box centre, plus Gaussian noise of `noise_px`."""
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


def ideal_dcme_output(instances: np.ndarray, labels: np.ndarray, classes: Sequence[str], *, noise_px: float = 0.0,
                      rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """What a perfect deployed DCME network (DcmeInference) would output for a labelled image, for tests and
    benchmarks: (dense (3, H, W) float32: vectors to the centre of mass plus Gaussian noise of `noise_px` pixels,
    foreground probability 1 on objects and 0 elsewhere; class probabilities (n + 1, H/16, W/16): one-hot of the
    block classes of the priority list). instances (H, W) int (0 background), labels (H, W) class index + 1; H, W
    multiples of 16. Batch axis dropped."""
    from instseg_core.losses.dcme import IGNORE_BLOCK, dcme_targets

    rng = rng or np.random.default_rng(0)
    targets = dcme_targets(instances, labels, np.zeros(instances.shape, bool), classes)
    vectors = targets.vectors
    if noise_px:
        on = targets.foreground == 1
        vectors[:, on] += rng.normal(0, noise_px, (2, int(on.sum()))).astype(np.float32)
    dense = np.concatenate([vectors, (targets.foreground == 1)[None].astype(np.float32)])
    grid = np.where(targets.grid == IGNORE_BLOCK, 0, targets.grid)
    probabilities = np.eye(len(classes) + 1, dtype=np.float32)[grid].transpose(2, 0, 1)
    return dense, np.ascontiguousarray(probabilities)
