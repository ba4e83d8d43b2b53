"""Real context for the synthetic training windows of the streaming networks (issue 35).

Every draw comes from the numpy Generator passed in, so a run's windows are reproducible from its seed.

- `negative_window`: a window of a real photograph that holds no person and no vehicle (the packaged photographs
  of `NEGATIVE_PHOTOS`: bricks, grass, gravel, a temple among trees, a cat, coins, text, ...), at a random scale,
  with empty targets: the network must stay silent there.
- `with_real_background`: a synthetic window whose background pixels (no object, no group region) are replaced by
  a real photograph, so the objects stand on real textures.
- `mixed_window`: what a training step draws: a synthetic window from the crop sampler, seen at a scale drawn
  log-uniformly from `scale_range` (a window of (H / s, W / s) resized to H x W: s > 1 zooms in, so objects appear
  as large as in close-up photographs, where a person can fill the frame), replaced by a negative window with
  probability `negative_fraction`, given a real background with probability `background_fraction`, then
  photometric jitter (colour, contrast, gamma, blur, noise, resolution loss, JPEG) with probability
  `photometric`.

A window is the crop sampler's tuple: image (H, W, 3) uint8 RGB, instances (H, W) int32, labels (H, W) uint8,
ignore (H, W) bool (instseg_core.data.instance_training).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from instseg_core.data.instance_training import CropSampler
from instseg_core.data.randomised_objects import photometric_jitter
from instseg_core.data.textures import photo_window

# Packaged photographs with no person, rider or vehicle in them (textures.PHOTOS names); astronaut, camera,
# grace_hopper (people), motorcycle and rocket (vehicles) are left out.
NEGATIVE_PHOTOS = ("brick", "grass", "gravel", "coffee", "chelsea", "coins", "page", "hubble", "horse", "moon",
                   "ihc", "retina", "cell", "color", "text", "china", "flower", "present")

Window = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class RealContextMix:
    """Probabilities per window (see the module docstring); all 0: plain synthetic windows."""

    negative_fraction: float = 0.0
    background_fraction: float = 0.0
    photometric: float = 0.0
    scale_range: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        if not 0.0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"scale range {self.scale_range} must be 0 < low <= high")
        for name in ("negative_fraction", "background_fraction", "photometric"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} {value} is not in [0, 1]")


def _photo_window(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 window of a random negative photograph at a random scale (0.5-2), maybe mirrored."""
    name = NEGATIVE_PHOTOS[int(rng.integers(len(NEGATIVE_PHOTOS)))]
    patch = photo_window(rng, name, height, width, scale=float(rng.uniform(0.5, 2.0)))
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    return np.clip(patch * 255 + 0.5, 0, 255).astype(np.uint8)


def negative_window(rng: np.random.Generator, height: int, width: int) -> Window:
    """A real photograph without people or vehicles and empty targets."""
    return (_photo_window(rng, height, width), np.zeros((height, width), np.int32),
            np.zeros((height, width), np.uint8), np.zeros((height, width), bool))


def with_real_background(rng: np.random.Generator, window: Window) -> Window:
    """The window with its background pixels taken from a real photograph (objects and group regions kept)."""
    image, instances, labels, ignore = window
    keep = (instances > 0) | ignore
    real = _photo_window(rng, image.shape[0], image.shape[1])
    return np.where(keep[..., None], image, real), instances, labels, ignore


def scaled_window(sampler: CropSampler, height: int, width: int, rng: np.random.Generator,
                  scale_range: tuple[float, float]) -> Window:
    """A sampler window seen at a scale drawn log-uniformly from `scale_range` (1: the sampler's own window)."""
    low, high = scale_range
    if low == high == 1.0:
        return sampler.crop(height, width, rng)
    scale = float(np.exp(rng.uniform(np.log(low), np.log(high))))
    source_h, source_w = max(1, round(height / scale)), max(1, round(width / scale))
    image, instances, labels, ignore = sampler.crop(source_h, source_w, rng)
    size = (width, height)
    smooth = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return (cv2.resize(image, size, interpolation=smooth),
            cv2.resize(instances, size, interpolation=cv2.INTER_NEAREST),
            cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST),
            cv2.resize(ignore.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool))


def mixed_window(sampler: CropSampler, height: int, width: int, rng: np.random.Generator,
                 mix: RealContextMix) -> Window:
    """One training window (see the module docstring)."""
    if mix.negative_fraction and rng.random() < mix.negative_fraction:
        window = negative_window(rng, height, width)
    else:
        window = scaled_window(sampler, height, width, rng, mix.scale_range)
        if mix.background_fraction and rng.random() < mix.background_fraction:
            window = with_real_background(rng, window)
    if mix.photometric and rng.random() < mix.photometric:
        window = (photometric_jitter(rng, window[0]), *window[1:])
    return window
