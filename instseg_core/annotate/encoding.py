"""Extreme points -> network input, and network output -> full-image mask (shared by training and inference).

Conventions:
- extreme points: (4, 2) float array of x, y in image pixels (pixel centres at integer coordinates), in
  the order left-most, top-most, right-most, bottom-most;
- crop box: the points' bounding box enlarged by a relaxation margin on each side (`relax_fraction` of
  the box size, at least `relax_min` pixels), in image pixel coordinates; it may extend past the image,
  and is filled with zeros there;
- the crop is resampled to 128 x 128 without keeping the aspect ratio (as in DEXTR), by an affine map
  sending box corner (x0, y0) to crop pixel (0, 0) and (x1, y1) to (127, 127);
- network input: (C, 128, 128) float32: RGB as (v / 255 - 0.5) / 0.25, then for the extreme-point model
  the point channel: 1.0 inside a filled circle of `radius` crop pixels around each point (paper), or
  DEXTR's Gaussians exp(-d^2 / (2 sigma^2)); then for the colour-prior model (5 channels) the colour prior in
  [0, 1] (`colour_prior`, its foreground region a model property: PRIOR_FOREGROUNDS); then for the correction-click
  model (7 channels) the positive and the negative correction clicks, each a channel of filled circles of
  CLICK_RADIUS crop pixels (as the extreme points; interactive segmentation's disk encoding, RITM). With no clicks
  both are zero, and the 7-channel network was started from the 5-channel one with zero filters on them.
- correction clicks: (K, 2) float arrays of x, y in image pixels like the points, K >= 0; positive clicks mark
  pixels that belong to the object, negative ones pixels that do not. A click outside the crop window draws
  nothing (the mask is empty there anyway).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import cv2
import numpy as np

CROP_SIZE = 128
RGB_MEAN, RGB_STD = 0.5, 0.25
POINT_RADIUS = 4.0
GAUSSIAN_SIGMA = 3.0
PRIOR_BINS = 16
# Where the colour prior reads its foreground colours (colour_prior); a model property, its manifest's
# `colour_prior_foreground` (default "box", what every model before it was trained and run with).
PRIOR_FOREGROUNDS = ("box", "hull", "box_and_hull")
# Network input channels -> what they carry (the segmenter and training pick the encoding by this count).
CHANNEL_LAYOUTS = {3: "RGB", 4: "RGB + extreme points", 5: "RGB + extreme points + colour prior",
                   7: "RGB + extreme points + colour prior + positive clicks + negative clicks"}
# The input channel count of a network that takes correction clicks (channels 5 and 6), and the clicks' disk radius.
CLICK_CHANNELS = 7
CLICK_RADIUS = POINT_RADIUS


@dataclass(frozen=True)
class CropBox:
    """Crop window in image pixel coordinates (inclusive corners)."""

    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def to_crop(self) -> np.ndarray:
        """(2, 3) affine matrix: image (x, y) -> crop (u, v)."""
        sx = (CROP_SIZE - 1) / max(self.x1 - self.x0, 1e-6)
        sy = (CROP_SIZE - 1) / max(self.y1 - self.y0, 1e-6)
        return np.array([[sx, 0.0, -self.x0 * sx], [0.0, sy, -self.y0 * sy]], np.float64)


def extreme_points_from_mask(mask: np.ndarray) -> np.ndarray:
    """(4, 2) int x, y of the left-, top-, right- and bottom-most pixels of a non-empty (H, W) mask.

    Where several pixels share the extreme coordinate, the median one along the other axis is taken.
    """
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        raise ValueError("empty mask has no extreme points")

    def median_of(select: np.ndarray, values: np.ndarray) -> int:
        chosen = np.sort(values[select])
        return int(chosen[len(chosen) // 2])

    left, right, top, bottom = xs.min(), xs.max(), ys.min(), ys.max()
    return np.array([
        [left, median_of(xs == left, ys)], [median_of(ys == top, xs), top],
        [right, median_of(xs == right, ys)], [median_of(ys == bottom, xs), bottom],
    ], dtype=np.int64)


# The 24 ways to assign 4 clicks to (left, top, right, bottom).
_ASSIGNMENTS = np.array(list(itertools.permutations(range(4))), np.int64)


def order_extreme_points(points: np.ndarray) -> np.ndarray:
    """(4, 2) float64: four clicks in any order, reordered to left, top, right, bottom.

    The assignment maximises (x_right - x_left) + (y_bottom - y_top) over the 24 permutations, so that a
    click that is both the leftmost and the topmost (a diagonal object) goes where it spans the box best."""
    array = np.asarray(points, np.float64).reshape(4, 2)
    chosen = array[_ASSIGNMENTS]  # (24, 4, 2): left, top, right, bottom of each assignment
    spread = chosen[:, 2, 0] - chosen[:, 0, 0] + chosen[:, 3, 1] - chosen[:, 1, 1]
    return chosen[int(np.argmax(spread))].copy()


def crop_box(points: np.ndarray, relax_fraction: float = 0.1, relax_min: float = 4.0) -> CropBox:
    """Bounding box of the points, enlarged by max(relax_fraction * size, relax_min) on every side."""
    points = np.asarray(points, np.float64)
    x0, y0 = points.min(axis=0)
    x1, y1 = points.max(axis=0)
    mx = max(relax_fraction * (x1 - x0), relax_min)
    my = max(relax_fraction * (y1 - y0), relax_min)
    return CropBox(x0 - mx, y0 - my, x1 + mx, y1 + my)


def crop(image: np.ndarray, box: CropBox, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Resample the box of an (H, W[, C]) image to (128, 128[, C]); zeros outside the image."""
    return cv2.warpAffine(image, box.to_crop, (CROP_SIZE, CROP_SIZE), flags=interpolation,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def points_in_crop(points: np.ndarray, box: CropBox) -> np.ndarray:
    """(K, 2) float32 crop coordinates of (K, 2) image points (the 4 extreme points, or correction clicks)."""
    points = np.asarray(points, np.float64).reshape(-1, 2)
    return (points @ box.to_crop[:, :2].T + box.to_crop[:, 2]).astype(np.float32)


def point_channel(crop_points: np.ndarray, mode: str = "circle", radius: float = POINT_RADIUS,
                  sigma: float = GAUSSIAN_SIGMA) -> np.ndarray:
    """(128, 128) float32 extreme-point channel: filled circles (paper) or Gaussians (DEXTR), max-combined."""
    channel = np.zeros((CROP_SIZE, CROP_SIZE), np.float32)
    if mode == "circle":
        for u, v in crop_points:
            cv2.circle(channel, (round(float(u) * 16), round(float(v) * 16)), round(radius * 16), 1.0, -1,
                       cv2.LINE_8, 4)
        return channel
    if mode == "gaussian":
        grid_v, grid_u = np.mgrid[0:CROP_SIZE, 0:CROP_SIZE].astype(np.float32)
        for u, v in crop_points:
            np.maximum(channel, np.exp(-((grid_u - u) ** 2 + (grid_v - v) ** 2) / (2 * sigma**2)), out=channel)
        return channel
    raise ValueError(f"point channel mode must be 'circle' or 'gaussian', got {mode!r}")


def outside_points_box(crop_points: np.ndarray) -> np.ndarray:
    """(128, 128) bool: crop pixels outside the points' box (the relaxation margin), with a 1-pixel tolerance."""
    points = np.asarray(crop_points, np.float64)
    (u0, v0), (u1, v1) = np.floor(points.min(axis=0)) - 1, np.ceil(points.max(axis=0)) + 1
    vs, us = np.ogrid[0:CROP_SIZE, 0:CROP_SIZE]
    return (us < u0) | (us > u1) | (vs < v0) | (vs > v1)


def colour_prior(crop_rgb: np.ndarray, crop_points: np.ndarray, bins: int = PRIOR_BINS,
                 foreground: str = "box") -> np.ndarray:
    """(128, 128) float32 in (0, 1): how much more often each pixel's colour occurs in the object's likely region
    than in the relaxation margin around the points' box, fg / (fg + bg) of the two normalised colour histograms
    (`bins` per RGB channel, add-one smoothed); 0 in the margin itself.

    It is the colour model GrabCut starts from, computed once (about 0.4 ms; 0.45 ms with the hull too): a cue of this
    image's own colours that does not depend on what the network learned about objects. Margin pixels that are
    exactly black are left out of the background histogram: they are mostly the zero fill past the image border.

    foreground (PRIOR_FOREGROUNDS) says where the foreground histogram is read: "box", the whole points' box
    (GrabCut's start); "hull", the quadrilateral the four points span, which leaves out the box's corners (a point
    lies on each side of the object, so the corners are often background); "box_and_hull", the mean of those two
    priors.
    """
    if foreground not in PRIOR_FOREGROUNDS:
        raise ValueError(f"the colour prior's foreground must be one of {', '.join(PRIOR_FOREGROUNDS)}, "
                         f"not {foreground!r}")
    quantised = (crop_rgb.astype(np.uint16) * bins // 256).astype(np.int32)
    index = (quantised[..., 0] * bins + quantised[..., 1]) * bins + quantised[..., 2]
    margin = outside_points_box(crop_points)
    background = margin & (crop_rgb.any(axis=2))
    size = bins**3
    outside = np.bincount(index[background], minlength=size) + 1.0
    outside /= outside.sum()

    def prior_of(region: np.ndarray) -> np.ndarray:
        inside = np.bincount(index[region], minlength=size) + 1.0
        inside /= inside.sum()
        return (inside / (inside + outside)).astype(np.float32)[index]

    if foreground == "box":
        prior = prior_of(~margin)
    else:
        hull = np.zeros(margin.shape, np.uint8)
        cv2.fillConvexPoly(hull, np.round(np.asarray(crop_points, np.float64)).astype(np.int32), 1)
        prior = prior_of(hull.astype(bool))
        if foreground == "box_and_hull":
            prior = 0.5 * (prior + prior_of(~margin))
    prior[margin] = 0.0
    return prior


def normalise_rgb(crop_rgb: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(128, 128, 3) uint8 RGB -> (3, 128, 128) float32 (v / 255 - RGB_MEAN) / RGB_STD, written into `out`
    when given."""
    if out is None:
        out = np.empty((3, *crop_rgb.shape[:2]), np.float32)
    np.multiply(crop_rgb.transpose(2, 0, 1), np.float32(1.0 / (255.0 * RGB_STD)), out=out, dtype=np.float32)
    out -= np.float32(RGB_MEAN / RGB_STD)
    return out


def encode(crop_rgb: np.ndarray, crop_points: np.ndarray | None, mode: str = "circle",
           channels: int | None = None, prior_foreground: str = "box", crop_positive: np.ndarray | None = None,
           crop_negative: np.ndarray | None = None) -> np.ndarray:
    """Network input (C, 128, 128) float32 (see CHANNEL_LAYOUTS): normalised RGB, the point channel unless
    points is None, the colour prior (its foreground read from `prior_foreground`, PRIOR_FOREGROUNDS) when
    `channels` is 5 or 7, and with 7 the positive and negative correction clicks ((K, 2) crop coordinates each,
    None or K = 0 for none; click_channel) (default channels: 3 without points, 4 with). Clicks given to a
    network without click channels are a ValueError."""
    channels = channels or (3 if crop_points is None else 4)
    if channels not in CHANNEL_LAYOUTS or (channels > 3) != (crop_points is not None):
        raise ValueError(f"cannot encode {channels} channels {'without' if crop_points is None else 'with'} points")
    has_clicks = any(c is not None and len(c) for c in (crop_positive, crop_negative))
    if has_clicks and channels != CLICK_CHANNELS:
        raise ValueError(f"a {channels}-channel network has no correction-click channels")
    encoded = np.empty((channels, *crop_rgb.shape[:2]), np.float32)
    normalise_rgb(crop_rgb, encoded[:3])
    if crop_points is not None:
        encoded[3] = point_channel(crop_points, mode)
        if channels >= 5:
            encoded[4] = colour_prior(crop_rgb, crop_points, foreground=prior_foreground)
        if channels == CLICK_CHANNELS:
            encoded[5] = click_channel(crop_positive)
            encoded[6] = click_channel(crop_negative)
    return encoded


def click_channel(crop_clicks: np.ndarray | None) -> np.ndarray:
    """(128, 128) float32: 1.0 inside a filled circle of CLICK_RADIUS crop pixels around each (K, 2) crop click,
    0 elsewhere (all 0 for None or K = 0)."""
    if crop_clicks is None or len(crop_clicks) == 0:
        return np.zeros((CROP_SIZE, CROP_SIZE), np.float32)
    return point_channel(np.asarray(crop_clicks, np.float64).reshape(-1, 2), "circle", CLICK_RADIUS)


def paste_back(probability: np.ndarray, box: CropBox, image_shape: tuple[int, int]) -> tuple[np.ndarray, tuple]:
    """Resample a (128, 128) probability map back into the image.

    Returns (region, (x0, y0)): the probabilities over the integer bounding box of the crop window
    clipped to the image, and that region's top-left corner; the rest of the image is 0.
    """
    height, width = image_shape
    x0, y0 = max(int(np.floor(box.x0)), 0), max(int(np.floor(box.y0)), 0)
    x1, y1 = min(int(np.ceil(box.x1)) + 1, width), min(int(np.ceil(box.y1)) + 1, height)
    if x1 <= x0 or y1 <= y0:
        return np.zeros((0, 0), np.float32), (x0, y0)
    forward = box.to_crop.copy()
    forward[:, 2] += forward[:, :2] @ np.array([x0, y0], np.float64)  # region pixel -> crop
    region = cv2.warpAffine(probability.astype(np.float32), forward, (x1 - x0, y1 - y0),
                            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
                            borderValue=0)
    return region, (x0, y0)
