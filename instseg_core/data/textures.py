"""Textures for the synthetic scenes: procedural noise and real photographs.

The photographs are the ones that ship inside installed packages (scikit-image's skimage/data, scikit-learn's
sample images, matplotlib's sample data), read straight from the package directories, so nothing is ever
downloaded. All randomness comes from the numpy Generator passed in. Images are float32 RGB in [0, 1],
shape (H, W, 3), unless stated.

Two disjoint pools serve the extreme-point model: TRAINING_PHOTOS texture its randomised training objects;
HELD_OUT_PHOTOS are the photographs of its real and cut-and-paste evaluation sets and are never used to
train it. (The street generator's billboards predate that split and show some held-out photographs as flat
pictures on walls; no object of theirs is ever textured with one.)
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

# name -> (package, file inside the package's data folder). scikit-image's are its "legacy" data set,
# shipped in the wheel (no fetch needed).
PHOTOS = {
    "brick": ("skimage", "brick.png"), "grass": ("skimage", "grass.png"), "gravel": ("skimage", "gravel.png"),
    "coffee": ("skimage", "coffee.png"), "astronaut": ("skimage", "astronaut.png"),
    "chelsea": ("skimage", "chelsea.png"), "rocket": ("skimage", "rocket.jpg"), "camera": ("skimage", "camera.png"),
    "coins": ("skimage", "coins.png"), "page": ("skimage", "page.png"),
    "hubble": ("skimage", "hubble_deep_field.jpg"), "horse": ("skimage", "horse.png"),
    "motorcycle": ("skimage", "motorcycle_left.png"), "moon": ("skimage", "moon.png"),
    "ihc": ("skimage", "ihc.png"), "retina": ("skimage", "retina.jpg"), "cell": ("skimage", "cell.png"),
    "color": ("skimage", "color.png"), "text": ("skimage", "text.png"),
    "china": ("sklearn", "china.jpg"), "flower": ("sklearn", "flower.jpg"),
    "grace_hopper": ("matplotlib", "grace_hopper.jpg"), "present": ("matplotlib", "Minduka_Present_Blue_Pack.png"),
}
BILLBOARD_PHOTOS = ("coffee", "astronaut", "chelsea", "rocket", "hubble", "camera", "page", "coins")
TRAINING_PHOTOS = ("brick", "grass", "gravel", "coins", "page", "hubble", "moon", "ihc", "retina", "cell", "color",
                   "text", "china", "flower", "present")
HELD_OUT_PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket", "motorcycle", "grace_hopper")


_DATA_FOLDERS = {"skimage": "data", "sklearn": "datasets/images", "matplotlib": "mpl-data/sample_data"}


def package_data_dir(package: str) -> Path:
    """The folder of an installed package's bundled sample images (found without importing the package)."""
    if package not in _DATA_FOLDERS:
        raise ValueError(f"no photographs known in package {package!r}")
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"package {package} is not installed; run make setup")
    return Path(spec.origin).parent / _DATA_FOLDERS[package]


def photo_path(name: str) -> Path:
    package, file = PHOTOS[name]
    return package_data_dir(package) / file


@cache
def photo(name: str) -> np.ndarray:
    """A packaged photograph as float32 RGB in [0, 1] (grey ones replicated to 3 channels)."""
    path = photo_path(name)
    if not path.is_file():
        raise FileNotFoundError(f"photograph {path} is missing; reinstall {PHOTOS[name][0]} (make setup)")
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


def photo_window(rng: np.random.Generator, name: str, height: int, width: int, scale: float = 1.0) -> np.ndarray:
    """(H, W, 3) float32 window of a photograph seen at `scale` (any float): the matching region of the original,
    mirror-tiled where the photograph is too small, resized to the window. Caches nothing but the original."""
    source = photo(name)
    src_h, src_w = source.shape[:2]
    region_h, region_w = max(1, round(height / scale)), max(1, round(width / scale))
    y0, x0 = int(rng.integers(0, 2 * src_h)), int(rng.integers(0, 2 * src_w))
    region = source[np.ix_(_mirror_indices(y0, region_h, src_h), _mirror_indices(x0, region_w, src_w))]
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(region, (int(width), int(height)), interpolation=interpolation)


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
