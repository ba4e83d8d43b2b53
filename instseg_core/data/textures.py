"""Textures for the synthetic street scenes: procedural noise and real photographs.

The photographs are the ones scikit-image ships inside its package (skimage/data/*.png, *.jpg), read
straight from the installed package directory, so nothing is ever downloaded. All randomness comes
from the numpy Generator passed in. Images are float32 RGB in [0, 1], shape (H, W, 3), unless stated.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

# Photographs shipped in scikit-image's wheel (its "legacy" data set; no fetch needed).
PHOTOS = {
    "brick": "brick.png", "grass": "grass.png", "gravel": "gravel.png", "coffee": "coffee.png",
    "astronaut": "astronaut.png", "chelsea": "chelsea.png", "rocket": "rocket.jpg", "camera": "camera.png",
    "coins": "coins.png", "page": "page.png", "hubble": "hubble_deep_field.jpg",
}
BILLBOARD_PHOTOS = ("coffee", "astronaut", "chelsea", "rocket", "hubble", "camera", "page", "coins")


def _skimage_data_dir() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data"


@cache
def photo(name: str) -> np.ndarray:
    """A scikit-image photograph as float32 RGB in [0, 1] (grey ones replicated to 3 channels)."""
    path = _skimage_data_dir() / PHOTOS[name]
    if not path.is_file():
        raise FileNotFoundError(f"scikit-image photograph {path} is missing; reinstall scikit-image")
    with Image.open(path) as image:  # PIL, not OpenCV: libpng warns about these files' ICC profiles
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def fractal_noise(rng: np.random.Generator, height: int, width: int, octaves: int = 4,
                  base_cells: int = 4, persistence: float = 0.5) -> np.ndarray:
    """(H, W) float32 value noise in [0, 1]: octaves of bicubically upsampled random grids."""
    height, width = max(1, int(height)), max(1, int(width))
    total = np.zeros((height, width), np.float32)
    amplitude, norm = 1.0, 0.0
    for octave in range(octaves):
        cells = base_cells * 2**octave
        grid_h = max(2, round(cells * height / max(height, width)))
        grid_w = max(2, round(cells * width / max(height, width)))
        grid = rng.random((grid_h, grid_w), dtype=np.float32)
        total += amplitude * cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
        norm += amplitude
        amplitude *= persistence
    return np.clip(total / norm, 0.0, 1.0)


def photo_patch(rng: np.random.Generator, name: str, height: int, width: int, scale: float = 1.0) -> np.ndarray:
    """(H, W, 3) crop of a photograph resized by `scale`, mirror-tiled where the photograph is too small."""
    source = _scaled_photo(name, round(float(scale), 2))
    src_h, src_w = source.shape[:2]
    y0, x0 = int(rng.integers(0, 2 * src_h)), int(rng.integers(0, 2 * src_w))
    return source[np.ix_(_mirror_indices(y0, int(height), src_h), _mirror_indices(x0, int(width), src_w))]


@cache
def _scaled_photo(name: str, scale: float) -> np.ndarray:
    source = photo(name)
    if scale == 1.0:
        return source
    size = (max(8, int(source.shape[1] * scale)), max(8, int(source.shape[0] * scale)))
    return cv2.resize(source, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def _mirror_indices(start: int, count: int, size: int) -> np.ndarray:
    """Indices start..start+count-1 folded into [0, size) by mirroring (size, size-1, ... then back up)."""
    index = np.arange(start, start + count) % (2 * size)
    return np.where(index < size, index, 2 * size - 1 - index)


def tinted(texture: np.ndarray, colour: tuple[float, float, float], strength: float = 0.8) -> np.ndarray:
    """Texture recoloured towards `colour` (RGB in [0, 1]) keeping its luminance variation."""
    luminance = texture.mean(axis=2, keepdims=True)
    contrast = luminance / max(float(luminance.mean()), 1e-3)
    colourised = np.asarray(colour, np.float32)[None, None, :] * contrast
    return np.clip(strength * colourised + (1.0 - strength) * texture, 0.0, 1.0)


def noisy_colour(rng: np.random.Generator, height: int, width: int, colour: tuple[float, float, float],
                 amount: float = 0.15, cells: int = 4) -> np.ndarray:
    """(H, W, 3) flat colour modulated by fractal noise (paint, clothing, plaster)."""
    noise = fractal_noise(rng, height, width, octaves=3, base_cells=cells)
    shade = 1.0 + amount * (noise[..., None] - 0.5) * 2.0
    return np.clip(np.asarray(colour, np.float32)[None, None, :] * shade, 0.0, 1.0)
