"""Domain-randomised object crops for the extreme-point model: objects, not our renderer.

Each sample is one object on a canvas of its own, rendered so that nothing but the object's outline tells
it from its surroundings:

- the silhouette is one of the street classes' shapes (instseg_core.data.shapes), a random blob, a
  compound of blobs, a piece of "furniture" (boxes on thin legs), a thin structure (sticks, poles,
  branches), a shape with holes, or scikit-image's horse;
- the object is textured in 1-4 parts (a random partition of its box) with patches of real photographs,
  recoloured, or with noisy flat colours, so that inner edges are as strong as the outline; a sprite keeps
  its own drawing (windows, wheels) blended under the photograph; a light gradient shades it;
- the background is another photograph, noise or a smooth gradient; clutter shapes are drawn around the
  border, some with the object's own texture (the same colour as the object right at its edge), a
  cast shadow may darken the ground beside it, occluders may cross it;
- optionally (`neighbours`), one or two other objects of the same family and about the same size stand right
  beside it, behind it or in front of it (a pedestrian in a group, cars in a row, people at a table), some in
  the same appearance: only the four points tell which one is meant;
- the edge is blended over 0-1.5 pixels, and the whole canvas gets colour, contrast and gamma changes,
  blur, sensor noise, JPEG artefacts or a loss of resolution.

The target mask is what stays visible of the object (occluders removed); a sprite's see-through gaps
(between bicycle spokes) belong to the object, as in the street data's filled polygons. Crops come out
of the same pipeline as at inference (extreme points of the mask -> crop box with the 10 % relaxation
-> 128 x 128, training.extreme_point_crops.randomised_crops), so a CropSet of these trains the model unchanged.

Only the training photographs (TRAINING_PHOTOS) are used: the photographs of the real and cut-and-paste
evaluation sets (instseg_core.data.textures.HELD_OUT_PHOTOS) never appear. Every random choice comes from
the Generator of one sample, seeded from (seed, index), so a sample is reproducible on its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from instseg_core.data import shapes
from instseg_core.data.textures import TRAINING_PHOTOS, fractal_noise, photo, photo_patch

MIN_VISIBLE_PIXELS = 150


@dataclass
class RandomisedObject:
    """One rendered sample: image (H, W, 3) uint8 RGB; mask (H, W) bool, the visible object; full
    (H, W) bool, the object before occlusion; kind: the silhouette family."""

    image: np.ndarray
    mask: np.ndarray
    full: np.ndarray
    kind: str


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The Generator of sample `index` of a set drawn with `seed`."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


# --- silhouettes ----------------------------------------------------------------------------------------
# Each returns (rgb (h, w, 3) float32 or None, mask (h, w) bool) for a target box of about h x w pixels.

def _blob_polygon(rng: np.random.Generator, cx: float, cy: float, rx: float, ry: float,
                  harmonics: int = 5, roughness: float = 0.25, points: int = 72) -> np.ndarray:
    angles = np.linspace(0, 2 * np.pi, points, endpoint=False)
    radius = np.ones(points)
    for k in range(2, 2 + harmonics):
        radius += rng.uniform(0, roughness) / k * np.cos(k * angles + rng.uniform(0, 2 * np.pi))
    radius = np.clip(radius, 0.35, None)
    return np.stack([cx + rx * radius * np.cos(angles), cy + ry * radius * np.sin(angles)], 1)


def _fill(mask: np.ndarray, polygon: np.ndarray, value: int = 1) -> None:
    cv2.fillPoly(mask, [np.round(polygon * 16).astype(np.int32)], value, cv2.LINE_8, 4)


def _blob(rng: np.random.Generator, h: int, w: int) -> tuple[None, np.ndarray]:
    mask = np.zeros((h, w), np.uint8)
    _fill(mask, _blob_polygon(rng, w / 2, h / 2, w * 0.42, h * 0.42, roughness=rng.uniform(0.1, 0.6)))
    return None, mask.astype(bool)


def _compound(rng: np.random.Generator, h: int, w: int) -> tuple[None, np.ndarray]:
    """2-5 overlapping blobs and ellipses (animals, bags, plants)."""
    mask = np.zeros((h, w), np.uint8)
    cx, cy = w / 2, h / 2
    for part in range(int(rng.integers(2, 6))):
        rx, ry = w * rng.uniform(0.12, 0.35), h * rng.uniform(0.12, 0.35)
        px = cx if part == 0 else float(np.clip(cx + rng.normal(0, w * 0.2), rx, w - rx))
        py = cy if part == 0 else float(np.clip(cy + rng.normal(0, h * 0.2), ry, h - ry))
        _fill(mask, _blob_polygon(rng, px, py, rx, ry, roughness=rng.uniform(0.05, 0.4)))
    return None, mask.astype(bool)


def _furniture(rng: np.random.Generator, h: int, w: int) -> tuple[None, np.ndarray]:
    """A box (table top, seat, cabinet) on 2-4 thin legs, sometimes with a back rest."""
    mask = np.zeros((h, w), np.uint8)
    top = int(h * rng.uniform(0.1, 0.6))
    thickness = max(3, int(h * rng.uniform(0.06, 0.35)))
    cv2.rectangle(mask, (0, top), (w - 1, min(h - 1, top + thickness)), 1, -1)
    if rng.random() < 0.5:  # back rest
        x = 0 if rng.random() < 0.5 else w - max(3, w // 8)
        cv2.rectangle(mask, (x, 0), (x + max(3, w // 8), top), 1, -1)
    legs = int(rng.integers(2, 5))
    leg_width = max(2, int(w * rng.uniform(0.02, 0.08)))
    for x in np.linspace(0, w - leg_width, legs):
        cv2.rectangle(mask, (int(x), top), (int(x) + leg_width, h - 1), 1, -1)
    return None, mask.astype(bool)


def _thin(rng: np.random.Generator, h: int, w: int) -> tuple[None, np.ndarray]:
    """Sticks and branches: a random polyline tree, 2-8 % of the box wide, sometimes with a blob on it."""
    mask = np.zeros((h, w), np.uint8)
    width = max(2, int(min(h, w) * rng.uniform(0.03, 0.1)))
    ends = [(w * rng.uniform(0.3, 0.7), h - 1.0)]
    for _ in range(int(rng.integers(2, 6))):
        start = ends[int(rng.integers(len(ends)))]
        end = (float(rng.uniform(0, w - 1)), float(rng.uniform(0, h * 0.8)))
        cv2.line(mask, tuple(int(v * 16) for v in start), tuple(int(v * 16) for v in end), 1, width, cv2.LINE_8, 4)
        ends.append(end)
    if rng.random() < 0.5:
        x, y = ends[-1]
        _fill(mask, _blob_polygon(rng, x, y, w * 0.15, h * 0.15))
    return None, mask.astype(bool)


def _holed(rng: np.random.Generator, h: int, w: int) -> tuple[None, np.ndarray]:
    """A blob or ring with 1-3 holes the background shows through."""
    _, mask = _blob(rng, h, w)
    cut = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        _fill(cut, _blob_polygon(rng, w * rng.uniform(0.35, 0.65), h * rng.uniform(0.35, 0.65),
                                 w * rng.uniform(0.06, 0.18), h * rng.uniform(0.06, 0.18)))
    return None, mask & ~cut.astype(bool)


def _horse(rng: np.random.Generator, h: int, w: int) -> tuple[None, np.ndarray]:
    """scikit-image's horse silhouette (a real animal's outline), mirrored at random."""
    silhouette = photo("horse")[..., 0] < 0.5
    ys, xs = np.nonzero(silhouette)
    silhouette = silhouette[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    if rng.random() < 0.5:
        silhouette = silhouette[:, ::-1]
    return None, cv2.resize(silhouette.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)


def _sprite(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A street class's drawing, resized to the box; the mask is its filled outline."""
    kind = rng.choice(["car", "truck", "bus", "person", "person", "person", "bicycle", "motorcycle", "rider",
                       "group"])
    flip = bool(rng.random() < 0.5)
    scale = 40.0
    if kind in ("car", "truck", "bus"):
        view = str(rng.choice(["rear", "front", "side"]))
        sprite = {"car": shapes.car, "truck": shapes.truck, "bus": shapes.bus}[kind](rng, scale, view, flip)
    elif kind == "person":
        sprite = shapes.person(rng, scale, str(rng.choice(["front", "back", "side"])), rng.uniform(0, 6.3),
                               flip=flip)
    elif kind == "bicycle":
        sprite = shapes.bicycle(rng, scale, flip)
    elif kind == "motorcycle":
        sprite = shapes.motorcycle(rng, scale, flip)
    elif kind == "rider":
        geometry = shapes.BICYCLE if rng.random() < 0.6 else shapes.MOTORCYCLE
        bike = (shapes.bicycle if geometry is shapes.BICYCLE else shapes.motorcycle)(rng, scale, flip)
        person = shapes.rider(rng, scale, geometry, flip)
        sprite = _stack_sprites(bike, person)
    else:
        people = [shapes.person(rng, scale, str(rng.choice(["front", "back", "side"])), rng.uniform(0, 6.3))
                  for _ in range(int(rng.integers(2, 4)))]
        sprite = people[0]
        for other in people[1:]:
            sprite = _stack_sprites(sprite, other, offset=int(rng.uniform(0.3, 0.6) * scale))
    ys, xs = np.nonzero(sprite.painted)
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    filled = np.zeros(sprite.painted.shape, np.uint8)
    if len(sprite.outline) >= 3:
        cv2.fillPoly(filled, [np.round(sprite.outline).astype(np.int32)], 1)
    filled = (filled.astype(bool) | sprite.painted)[box]
    rgb = cv2.resize(sprite.rgb[box], (w, h), interpolation=cv2.INTER_AREA)
    return rgb, cv2.resize(filled.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)


def _stack_sprites(below: shapes.Sprite, above: shapes.Sprite, offset: int = 0) -> shapes.Sprite:
    """`above` drawn over `below`, bottoms aligned, `above` shifted right by `offset` pixels."""
    height = max(below.rgb.shape[0], above.rgb.shape[0])
    width = max(below.rgb.shape[1], above.rgb.shape[1] + offset)
    rgb = np.zeros((height, width, 3), np.float32)
    painted = np.zeros((height, width), bool)
    for sprite, x0 in ((below, 0), (above, offset)):
        h, w = sprite.painted.shape
        region = sprite.painted
        rgb[height - h:, x0:x0 + w][region] = sprite.rgb[region]
        painted[height - h:, x0:x0 + w] |= region
    return shapes.Sprite(rgb, painted, shapes.outline_of(painted.astype(np.uint8) * 255), (width / 2, height))


def _box(rng: np.random.Generator, h: int, w: int) -> tuple[None, np.ndarray]:
    """A rotated rectangle or rounded box (signs, screens, bags, cabinets)."""
    mask = np.zeros((h, w), np.uint8)
    angle = rng.uniform(-30, 30) if rng.random() < 0.5 else 0.0
    rect = ((w / 2, h / 2), (w * rng.uniform(0.6, 0.98), h * rng.uniform(0.6, 0.98)), angle)
    cv2.fillPoly(mask, [np.round(cv2.boxPoints(rect) * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    return None, mask.astype(bool)


# family -> (probability weight, builder)
SILHOUETTES: dict[str, tuple[float, Callable[[np.random.Generator, int, int], tuple]]] = {
    "sprite": (0.38, _sprite), "blob": (0.1, _blob), "compound": (0.14, _compound), "furniture": (0.1, _furniture),
    "thin": (0.08, _thin), "holed": (0.08, _holed), "horse": (0.05, _horse), "box": (0.07, _box),
}


# --- appearance -----------------------------------------------------------------------------------------

def _photo_texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) float32: a patch of a training photograph, rescaled, rotated in 90 degree steps, recoloured."""
    name = TRAINING_PHOTOS[int(rng.integers(len(TRAINING_PHOTOS)))]
    patch = photo_patch(rng, name, h, w, scale=float(rng.choice([0.25, 0.5, 0.75, 1.0, 1.5])))
    if rng.random() < 0.5:
        patch = patch[:, :, rng.permutation(3)]
    if rng.random() < 0.3:  # towards one colour, keeping the photograph's shading
        colour = rng.uniform(0, 1, 3).astype(np.float32)
        luminance = patch.mean(axis=2, keepdims=True)
        patch = np.clip(colour * luminance / max(float(luminance.mean()), 1e-3), 0, 1)
    return np.ascontiguousarray(patch, np.float32)


def _flat_texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    noise = fractal_noise(rng, h, w, octaves=3, base_cells=int(rng.integers(2, 8)))
    shade = 1.0 + rng.uniform(0.05, 0.5) * (noise[..., None] - 0.5) * 2.0
    return np.clip(rng.uniform(0, 1, 3).astype(np.float32) * shade, 0, 1).astype(np.float32)


def _gradient_texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    a, b = rng.uniform(0, 1, 3).astype(np.float32), rng.uniform(0, 1, 3).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (xs * math.cos(angle) + ys * math.sin(angle))
    t = (t - t.min()) / max(float(np.ptp(t)), 1.0)
    return (a + (b - a) * t[..., None]).astype(np.float32)


def _texture(rng: np.random.Generator, h: int, w: int, photo_share: float = 0.65) -> np.ndarray:
    roll = rng.random()
    if roll < photo_share:
        return _photo_texture(rng, h, w)
    if roll < photo_share + (1 - photo_share) * 0.7:
        return _flat_texture(rng, h, w)
    return _gradient_texture(rng, h, w)


def _parts(rng: np.random.Generator, h: int, w: int, count: int) -> np.ndarray:
    """(h, w) int labels 0..count-1: a Voronoi partition of the box around random seeds."""
    if count == 1:
        return np.zeros((h, w), np.int64)
    seeds = rng.uniform(0, 1, (count, 2)) * (w, h)
    ys, xs = np.mgrid[0:h, 0:w]
    distance = (xs[None] - seeds[:, 0, None, None]) ** 2 + (ys[None] - seeds[:, 1, None, None]) ** 2
    return np.argmin(distance, axis=0)


def _object_appearance(rng: np.random.Generator, drawing: np.ndarray | None, h: int, w: int) -> np.ndarray:
    """(h, w, 3) float32: the object's pixels (1-4 textured parts over its drawing, shaded)."""
    count = int(rng.choice([1, 1, 2, 3, 4]))
    labels = _parts(rng, h, w, count)
    rgb = np.empty((h, w, 3), np.float32)
    for part in range(count):
        rgb[labels == part] = _texture(rng, h, w)[labels == part]
    if drawing is not None:
        keep = rng.uniform(0.3, 1.0) if rng.random() < 0.7 else 1.0
        rgb = keep * drawing + (1 - keep) * rgb
    light = _gradient_texture(rng, h, w).mean(axis=2, keepdims=True)
    rgb *= rng.uniform(0.6, 1.0) + rng.uniform(0.0, 0.5) * light
    return np.clip(rgb, 0, 1)


def _place(canvas: np.ndarray, mask_canvas: np.ndarray | None, rgb: np.ndarray, mask: np.ndarray, x: int, y: int,
           alpha_sigma: float = 0.0) -> np.ndarray:
    """Composite `rgb` where `mask` (h, w) is set at (x, y) of the canvas (clipped); returns the object's
    (H, W) bool footprint on the canvas. With alpha_sigma > 0 the edge is blended over that many pixels."""
    height, width = canvas.shape[:2]
    h, w = mask.shape
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
    footprint = np.zeros((height, width), bool)
    if x1 <= x0 or y1 <= y0:
        return footprint
    sub_mask = mask[y0 - y:y1 - y, x0 - x:x1 - x]
    alpha = sub_mask.astype(np.float32)
    if alpha_sigma > 0:
        alpha = cv2.GaussianBlur(alpha, (0, 0), alpha_sigma)
    region = canvas[y0:y1, x0:x1]
    region += alpha[..., None] * (rgb[y0 - y:y1 - y, x0 - x:x1 - x] - region)
    footprint[y0:y1, x0:x1] = sub_mask
    if mask_canvas is not None:
        mask_canvas |= footprint
    return footprint


def _shape(rng: np.random.Generator, h: int, w: int) -> tuple[str, np.ndarray | None, np.ndarray]:
    """(family, drawing or None, (h, w) bool mask) of a random silhouette family."""
    names = list(SILHOUETTES)
    weights = np.array([SILHOUETTES[n][0] for n in names])
    kind = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    return (kind, *SILHOUETTES[kind][1](rng, h, w))


def photometric_jitter(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Colour, contrast, gamma, blur, noise, resolution loss, JPEG on an (H, W, 3) image, float32 in [0, 1]
    or uint8 -> uint8. Geometry is untouched, so masks stay valid."""
    if image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    image = image * rng.uniform(0.75, 1.25, 3).astype(np.float32)  # white balance
    mean = image.mean()
    image = (image - mean) * rng.uniform(0.6, 1.4) + mean * rng.uniform(0.7, 1.3)
    grey = image.mean(axis=2, keepdims=True)
    image = grey + (image - grey) * rng.uniform(0.3, 1.5)  # saturation
    image = np.clip(image, 0, 1) ** rng.uniform(0.7, 1.4)
    height, width = image.shape[:2]
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, 1.8))
    if rng.random() < 0.25:
        factor = rng.uniform(0.3, 0.7)
        small = cv2.resize(image, (max(8, int(width * factor)), max(8, int(height * factor))),
                           interpolation=cv2.INTER_AREA)
        image = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.6:
        image = image + rng.normal(0, rng.uniform(0.005, 0.04), image.shape).astype(np.float32)
    out = np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        ok, encoded = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(25, 95))])
        decoded = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED) if ok else None
        if decoded is not None:
            out = decoded
    return out


def render_object(rng: np.random.Generator, truncate: float = 0.0, neighbours: float = 0.0) -> RandomisedObject:
    """One randomised object on its own canvas; see the module docstring. With probability `truncate` the
    canvas ends inside the object (5-45 % of its extent cut off on one side), as for objects at the border of
    a camera image: the crop then reaches past the canvas and is zero there, as at inference. With
    probability `neighbours` one or two objects of the same family stand beside it (behind or in front).
    Retries internally until the visible object has at least MIN_VISIBLE_PIXELS pixels. With both
    probabilities 0 no random number is drawn for them, so older sets render unchanged."""
    while True:
        sample = _render_once(rng, neighbours)
        if truncate > 0 and rng.random() < truncate:
            sample = _truncated(rng, sample)
        if np.count_nonzero(sample.mask) >= MIN_VISIBLE_PIXELS:
            return sample


def _truncated(rng: np.random.Generator, sample: RandomisedObject) -> RandomisedObject:
    """The sample with its canvas cut through the object on a random side."""
    ys, xs = np.nonzero(sample.mask)
    if xs.size == 0:
        return sample
    fraction = rng.uniform(0.05, 0.45)
    side = int(rng.integers(4))
    rows, cols = slice(None), slice(None)
    if side == 0:
        cols = slice(int(xs.min() + fraction * (xs.max() - xs.min())), None)
    elif side == 1:
        cols = slice(None, int(xs.max() - fraction * (xs.max() - xs.min())) + 1)
    elif side == 2:
        rows = slice(int(ys.min() + fraction * (ys.max() - ys.min())), None)
    else:
        rows = slice(None, int(ys.max() - fraction * (ys.max() - ys.min())) + 1)
    return RandomisedObject(np.ascontiguousarray(sample.image[rows, cols]), sample.mask[rows, cols].copy(),
                            sample.full[rows, cols].copy(), sample.kind)


@dataclass
class _Neighbour:
    """An object of the target's family beside it: its colours (h, w, 3), mask (h, w), canvas position."""

    rgb: np.ndarray
    mask: np.ndarray
    x: int
    y: int
    in_front: bool


def _neighbours(rng: np.random.Generator, kind: str, appearance: np.ndarray, ox: int, oy: int, h: int,
                w: int) -> list[_Neighbour]:
    """1-2 objects of family `kind`, 0.7-1.25 times the target's (h, w), their centres 0.35-0.95 of its width
    to the left or right (a third of them: of its height above or below), half of them in front of it; a
    quarter have the target's own appearance."""
    found = []
    for _ in range(int(rng.integers(1, 3))):
        nh, nw = max(8, int(h * rng.uniform(0.7, 1.25))), max(8, int(w * rng.uniform(0.7, 1.25)))
        drawing, mask = SILHOUETTES[kind][1](rng, nh, nw)
        same = rng.random() < 0.25
        rgb = cv2.resize(appearance, (nw, nh)) if same else _object_appearance(rng, drawing, nh, nw)
        side = float(rng.choice([-1.0, 1.0]))
        if rng.random() < 2 / 3:
            cx = ox + w / 2 + side * w * rng.uniform(0.35, 0.95)
            cy = oy + h / 2 + h * rng.uniform(-0.15, 0.15)
        else:
            cx = ox + w / 2 + w * rng.uniform(-0.15, 0.15)
            cy = oy + h / 2 + side * h * rng.uniform(0.35, 0.95)
        found.append(_Neighbour(rgb, mask, int(cx - nw / 2), int(cy - nh / 2), bool(rng.random() < 0.5)))
    return found


def _render_once(rng: np.random.Generator, neighbours: float = 0.0) -> RandomisedObject:
    long_side = float(np.exp(rng.uniform(np.log(24), np.log(320))))
    aspect = float(np.exp(rng.uniform(np.log(0.3), np.log(3.0))))
    h = max(8, int(long_side if aspect < 1 else long_side / aspect))
    w = max(8, int(long_side * aspect if aspect < 1 else long_side))
    kind, drawing, mask = _shape(rng, h, w)
    margin_x, margin_y = int(w * 0.4) + 8, int(h * 0.4) + 8
    height, width = h + 2 * margin_y, w + 2 * margin_x
    canvas = _texture(rng, height, width, photo_share=0.7)
    ox, oy = margin_x + int(rng.integers(-margin_x // 3, margin_x // 3 + 1)), margin_y + int(
        rng.integers(-margin_y // 3, margin_y // 3 + 1))
    appearance = _object_appearance(rng, drawing, h, w)
    # clutter behind the object, around its border; some share its appearance
    for _ in range(int(rng.integers(0, 5))):
        ch, cw = int(h * rng.uniform(0.2, 0.9)) + 4, int(w * rng.uniform(0.2, 0.9)) + 4
        _, _, clutter = _shape(rng, ch, cw)
        same = rng.random() < 0.35
        look = cv2.resize(appearance, (cw, ch)) if same else _object_appearance(rng, None, ch, cw)
        angle = rng.uniform(0, 2 * np.pi)
        cx = ox + w / 2 + math.cos(angle) * w * rng.uniform(0.35, 0.7) - cw / 2
        cy = oy + h / 2 + math.sin(angle) * h * rng.uniform(0.35, 0.7) - ch / 2
        _place(canvas, None, look, clutter, int(cx), int(cy))
    beside = (_neighbours(rng, kind, appearance, ox, oy, h, w)
              if neighbours > 0 and rng.random() < neighbours else [])
    edge_sigma = float(rng.choice([0, 0, 0.5, 1.0, 1.5])) if beside else 0.0
    for neighbour in beside:
        if not neighbour.in_front:
            _place(canvas, None, neighbour.rgb, neighbour.mask, neighbour.x, neighbour.y, edge_sigma)
    if rng.random() < 0.3:  # cast shadow on the ground beside the object
        shadow = np.zeros((height, width), np.float32)
        shift = int(rng.uniform(-0.4, 0.4) * w)
        cv2.fillPoly(shadow, [np.round(np.array([[ox + shift, oy + h * 0.7], [ox + w + shift, oy + h * 0.7],
                                                 [ox + w + 2 * shift, oy + h * 1.1], [ox + 2 * shift, oy + h * 1.1]]
                                                )).astype(np.int32)], 1.0)
        shadow = cv2.GaussianBlur(shadow, (0, 0), max(1.0, h * 0.03))
        canvas *= (1 - rng.uniform(0.3, 0.7) * shadow)[..., None]
    full = _place(canvas, None, appearance, mask, ox, oy, alpha_sigma=float(rng.choice([0, 0, 0.5, 1.0, 1.5])))
    visible = full.copy()
    for neighbour in beside:
        if neighbour.in_front:
            visible &= ~_place(canvas, None, neighbour.rgb, neighbour.mask, neighbour.x, neighbour.y, edge_sigma)
    if rng.random() < 0.35:  # occluders crossing the object
        for _ in range(int(rng.integers(1, 3))):
            kh, kw = int(h * rng.uniform(0.15, 0.6)) + 4, int(w * rng.uniform(0.15, 0.6)) + 4
            _, drawing_k, occluder = _shape(rng, kh, kw)
            look = _object_appearance(rng, drawing_k, kh, kw)
            kx = int(ox + rng.uniform(-0.2, 1.0) * w - kw / 2)
            ky = int(oy + rng.uniform(-0.2, 1.0) * h - kh / 2)
            covered = _place(canvas, None, look, occluder, kx, ky)
            visible &= ~covered
    if np.count_nonzero(visible) < 0.4 * np.count_nonzero(full):
        visible = np.zeros_like(full)  # mostly hidden: rejected by render_object
    image = photometric_jitter(rng, canvas)
    return RandomisedObject(image, visible, full, kind)

