"""Object silhouettes for the synthetic street scenes: cars, trucks, buses, trains, people, riders, bikes.

Each builder draws one object from primitives given in metres (x to the right of the object's ground
centre, y up) onto a small local canvas at `scale` pixels per metre, and returns a Sprite: the painted
RGB, which pixels were painted, and the object's outline polygon (the largest outer contour of its
silhouette), in canvas pixels. The scene code projects sprites into the image and turns outlines into
Cityscapes polygons; unpainted pixels inside an outline (between bicycle spokes) stay see-through.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from instseg_core.data.textures import fractal_noise

Colour = tuple[float, float, float]
SHIFT = 4  # cv2 fixed-point bits: sub-pixel accurate primitives
ONE = 1 << SHIFT

TYRE: Colour = (0.05, 0.05, 0.06)
RIM: Colour = (0.55, 0.56, 0.58)
GLASS: Colour = (0.12, 0.15, 0.19)
DARK: Colour = (0.16, 0.16, 0.17)
RED_LIGHT: Colour = (0.75, 0.06, 0.05)
HEAD_LIGHT: Colour = (0.95, 0.93, 0.82)
PLATE: Colour = (0.92, 0.92, 0.88)
SKIN_TONES: tuple[Colour, ...] = ((0.94, 0.78, 0.66), (0.80, 0.60, 0.45), (0.55, 0.38, 0.26), (0.36, 0.24, 0.16))
CAR_PAINTS: tuple[Colour, ...] = (
    (0.92, 0.92, 0.92), (0.08, 0.08, 0.09), (0.62, 0.63, 0.65), (0.38, 0.39, 0.41), (0.12, 0.22, 0.48),
    (0.62, 0.08, 0.07), (0.14, 0.30, 0.20), (0.78, 0.72, 0.58), (0.90, 0.55, 0.12), (0.35, 0.55, 0.75),
)
CAR_PAINT_WEIGHTS = np.array([20, 18, 18, 12, 8, 7, 4, 5, 2, 6], float)


@dataclass
class Sprite:
    """A drawn object. rgb (h, w, 3) float32 [0, 1]; painted (h, w) bool; outline (N, 2) float32 canvas
    pixels (x, y), or an empty array when nothing was drawn; anchor (x, y): the ground centre in canvas
    pixels, which the scene places at the object's projected ground point."""

    rgb: np.ndarray
    painted: np.ndarray
    outline: np.ndarray
    anchor: tuple[float, float]


class Canvas:
    """Local drawing surface: metres (x right, y up, origin at the ground centre) -> pixels."""

    def __init__(self, width_m: float, height_m: float, scale: float, margin: int = 3) -> None:
        self.scale = float(scale)
        self.width = math.ceil(width_m * scale) + 2 * margin
        self.height = math.ceil(height_m * scale) + 2 * margin
        self.origin = (self.width / 2.0, self.height - margin)
        self.rgb = np.zeros((self.height, self.width, 3), np.float32)
        self.mask = np.zeros((self.height, self.width), np.uint8)
        self.painted = np.zeros((self.height, self.width), np.uint8)

    def _px(self, points: Sequence[tuple[float, float]]) -> np.ndarray:
        ox, oy = self.origin
        return np.array([[(ox + x * self.scale) * ONE, (oy - y * self.scale) * ONE] for x, y in points],
                        dtype=np.int32)

    def _draw(self, draw: Callable[[np.ndarray, object], None], colour: Colour, solid: bool) -> None:
        draw(self.rgb, tuple(float(c) for c in colour))
        draw(self.painted, 1)
        if solid:
            draw(self.mask, 255)

    def polygon(self, points: Sequence[tuple[float, float]], colour: Colour, solid: bool = True) -> None:
        pts = self._px(points)
        self._draw(lambda img, c: cv2.fillPoly(img, [pts], c, cv2.LINE_8, SHIFT), colour, solid)

    def rect(self, x0: float, y0: float, x1: float, y1: float, colour: Colour, solid: bool = True) -> None:
        self.polygon([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], colour, solid)

    def circle(self, cx: float, cy: float, radius: float, colour: Colour, solid: bool = True,
               ring: float = 0.0) -> None:
        (center,) = self._px([(cx, cy)])
        r = max(1, int(radius * self.scale * ONE))
        thickness = -1 if ring <= 0 else max(1, round(ring * self.scale))
        self._draw(lambda img, c: cv2.circle(img, tuple(int(v) for v in center), r, c, thickness,
                                             cv2.LINE_8, SHIFT), colour, solid)

    def line(self, p0: tuple[float, float], p1: tuple[float, float], width: float, colour: Colour,
             solid: bool = True) -> None:
        a, b = self._px([p0, p1])
        thickness = max(1, round(width * self.scale))
        self._draw(lambda img, c: cv2.line(img, tuple(int(v) for v in a), tuple(int(v) for v in b), c,
                                           thickness, cv2.LINE_8, SHIFT), colour, solid)

    def finish(self, rng: np.random.Generator, texture: float = 0.12, flip: bool = False) -> Sprite:
        """Add paint texture and top-lit shading, extract the outline, optionally mirror."""
        noise = fractal_noise(rng, self.height, self.width, octaves=3, base_cells=3)
        rows = np.linspace(1.08, 0.85, self.height, dtype=np.float32)[:, None]
        self.rgb *= (1.0 + texture * (noise - 0.5) * 2.0)[..., None] * rows[..., None]
        np.clip(self.rgb, 0.0, 1.0, out=self.rgb)
        rgb, painted, mask = self.rgb, self.painted.astype(bool), self.mask
        anchor_x = self.origin[0]
        if flip:
            rgb, painted, mask = rgb[:, ::-1].copy(), painted[:, ::-1].copy(), mask[:, ::-1].copy()
            anchor_x = self.width - anchor_x
        return Sprite(rgb, painted, outline_of(mask), (anchor_x, self.origin[1]))


def outline_of(mask: np.ndarray, epsilon: float = 0.6) -> np.ndarray:
    """Largest outer contour of a uint8 mask as (N, 2) float32 x, y (N >= 3), or (0, 2) if none."""
    closed = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
    contours, _ = cv2.findContours(closed, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return np.zeros((0, 2), np.float32)
    largest = max(contours, key=cv2.contourArea)
    simplified = cv2.approxPolyDP(largest, epsilon, True).reshape(-1, 2)
    if len(simplified) < 3 or cv2.contourArea(simplified) < 2.0:
        return np.zeros((0, 2), np.float32)
    return simplified.astype(np.float32)


def random_paint(rng: np.random.Generator) -> Colour:
    index = rng.choice(len(CAR_PAINTS), p=CAR_PAINT_WEIGHTS / CAR_PAINT_WEIGHTS.sum())
    return CAR_PAINTS[index]


def _pick(rng: np.random.Generator, palette: Sequence[Colour]) -> Colour:
    """One colour of a palette, uniformly."""
    return palette[int(rng.integers(len(palette)))]


def _clothing(rng: np.random.Generator) -> Colour:
    if rng.random() < 0.6:  # dark, muted clothes are most common
        v = rng.uniform(0.05, 0.35)
        return (v * rng.uniform(0.8, 1.2), v * rng.uniform(0.8, 1.2), v * rng.uniform(0.8, 1.3))
    return tuple(float(c) for c in rng.uniform(0.15, 0.95, 3))  # type: ignore[return-value]


# --- vehicles -------------------------------------------------------------------------------------------

def car(rng: np.random.Generator, scale: float, view: str = "rear", flip: bool = False) -> Sprite:
    """A passenger car: 'rear'/'front' view (1.8 m wide, 1.5 m high) or 'side' view (4.3 m long)."""
    paint = random_paint(rng)
    size = rng.uniform(0.92, 1.08)
    if view == "side":
        c = Canvas(4.4 * size, 1.5 * size, scale)
        s = size
        c.polygon([(-2.15 * s, 0.3 * s), (2.15 * s, 0.3 * s), (2.18 * s, 0.72 * s), (1.95 * s, 0.9 * s),
                   (1.05 * s, 0.97 * s), (0.55 * s, 1.45 * s), (-1.2 * s, 1.45 * s), (-1.85 * s, 0.98 * s),
                   (-2.12 * s, 0.92 * s)], paint)
        c.polygon([(0.5 * s, 1.0 * s), (0.95 * s, 1.0 * s), (0.5 * s, 1.38 * s)], GLASS)
        c.polygon([(-0.05 * s, 1.0 * s), (0.4 * s, 1.0 * s), (0.4 * s, 1.38 * s), (-0.05 * s, 1.38 * s)], GLASS)
        c.polygon([(-1.65 * s, 1.0 * s), (-0.15 * s, 1.0 * s), (-0.15 * s, 1.38 * s), (-1.15 * s, 1.38 * s)], GLASS)
        c.line((-0.1 * s, 0.35 * s), (-0.1 * s, 0.95 * s), 0.02, DARK, solid=False)
        c.rect(1.95 * s, 0.65 * s, 2.15 * s, 0.78 * s, HEAD_LIGHT, solid=False)
        c.rect(-2.12 * s, 0.68 * s, -2.0 * s, 0.8 * s, RED_LIGHT, solid=False)
        for x in (-1.35 * s, 1.35 * s):
            c.circle(x, 0.36 * s, 0.4 * s, DARK)
            c.circle(x, 0.33 * s, 0.33 * s, TYRE)
            c.circle(x, 0.33 * s, 0.17 * s, RIM)
        return c.finish(rng, flip=flip)
    c = Canvas(1.85 * size, 1.55 * size, scale)
    s = size
    for x0, x1 in ((-0.88, -0.56), (0.56, 0.88)):
        c.rect(x0 * s, 0.0, x1 * s, 0.42 * s, TYRE)
    c.rect(-0.9 * s, 0.25 * s, 0.9 * s, 0.98 * s, paint)
    c.polygon([(-0.82 * s, 0.96 * s), (0.82 * s, 0.96 * s), (0.66 * s, 1.5 * s), (-0.66 * s, 1.5 * s)], paint)
    c.polygon([(-0.72 * s, 1.02 * s), (0.72 * s, 1.02 * s), (0.6 * s, 1.42 * s), (-0.6 * s, 1.42 * s)], GLASS)
    light = RED_LIGHT if view == "rear" else HEAD_LIGHT
    c.rect(-0.86 * s, 0.72 * s, -0.58 * s, 0.85 * s, light)
    c.rect(0.58 * s, 0.72 * s, 0.86 * s, 0.85 * s, light)
    c.rect(-0.9 * s, 0.25 * s, 0.9 * s, 0.36 * s, DARK)
    c.rect(-0.24 * s, 0.42 * s, 0.24 * s, 0.53 * s, PLATE)
    return c.finish(rng, flip=flip)


def truck(rng: np.random.Generator, scale: float, view: str = "rear", flip: bool = False) -> Sprite:
    """A lorry: 'rear'/'front' (2.5 x 3.5 m) or 'side' (7.5 m long) view."""
    body = _pick(rng, [(0.9, 0.9, 0.88), (0.7, 0.7, 0.72), (0.2, 0.35, 0.6),
                                                 (0.75, 0.15, 0.1), (0.95, 0.8, 0.2)])
    if view == "side":
        c = Canvas(7.7, 3.6, scale)
        c.rect(-3.75, 0.45, 3.75, 0.75, DARK)
        c.rect(-3.75, 0.7, 2.15, 3.5, body)
        c.polygon([(2.25, 0.55), (3.75, 0.55), (3.75, 2.3), (3.45, 3.0), (2.25, 3.0)], random_paint(rng))
        c.polygon([(2.95, 1.9), (3.6, 1.9), (3.4, 2.8), (2.95, 2.8)], GLASS)
        for x in (-2.8, -1.75, 2.9):
            c.circle(x, 0.5, 0.5, TYRE)
            c.circle(x, 0.5, 0.25, RIM)
        return c.finish(rng, flip=flip)
    c = Canvas(2.55, 3.55, scale)
    for x0, x1 in ((-1.2, -0.6), (0.6, 1.2)):
        c.rect(x0, 0.0, x1, 0.6, TYRE)
    if view == "front":
        c.rect(-1.25, 0.45, 1.25, 3.0, random_paint(rng))
        c.rect(-1.1, 1.9, 1.1, 2.8, GLASS)
        c.rect(-1.1, 0.7, -0.8, 0.85, HEAD_LIGHT)
        c.rect(0.8, 0.7, 1.1, 0.85, HEAD_LIGHT)
        c.rect(-1.25, 3.0, 1.25, 3.5, body)
    else:
        c.rect(-1.27, 0.5, 1.27, 3.5, body)
        c.line((0.0, 0.6), (0.0, 3.4), 0.03, DARK, solid=False)
        c.rect(-1.2, 0.55, -0.95, 0.7, RED_LIGHT)
        c.rect(0.95, 0.55, 1.2, 0.7, RED_LIGHT)
    return c.finish(rng, flip=flip)


def bus(rng: np.random.Generator, scale: float, view: str = "rear", flip: bool = False) -> Sprite:
    """A city bus: 'rear'/'front' (2.55 x 3.1 m) or 'side' (12 m long) view."""
    body = _pick(rng, [(0.85, 0.75, 0.1), (0.8, 0.1, 0.1), (0.9, 0.9, 0.9),
                                                 (0.1, 0.4, 0.7), (0.2, 0.55, 0.3)])
    if view == "side":
        c = Canvas(12.1, 3.2, scale)
        c.polygon([(-6.0, 0.3), (6.0, 0.3), (6.0, 2.9), (5.8, 3.1), (-5.8, 3.1), (-6.0, 2.9)], body)
        for k in range(9):
            x0 = -5.6 + k * 1.25
            c.rect(x0, 1.45, x0 + 1.05, 2.7, GLASS)
        for x0 in (-3.1, 3.4):
            c.rect(x0, 0.35, x0 + 1.1, 2.7, DARK)
        for x in (-3.9, 3.9):
            c.circle(x, 0.5, 0.5, TYRE)
            c.circle(x, 0.5, 0.24, RIM)
        return c.finish(rng, flip=flip)
    c = Canvas(2.6, 3.2, scale)
    for x0, x1 in ((-1.15, -0.65), (0.65, 1.15)):
        c.rect(x0, 0.0, x1, 0.5, TYRE)
    c.polygon([(-1.27, 0.3), (1.27, 0.3), (1.27, 2.95), (1.1, 3.1), (-1.1, 3.1), (-1.27, 2.95)], body)
    c.rect(-1.1, 1.6 if view == "front" else 1.9, 1.1, 2.9, GLASS)
    light = HEAD_LIGHT if view == "front" else RED_LIGHT
    c.rect(-1.15, 0.5, -0.85, 0.7, light)
    c.rect(0.85, 0.5, 1.15, 0.7, light)
    c.rect(-0.9, 2.92, 0.9, 3.05, (0.95, 0.6, 0.1))
    return c.finish(rng, flip=flip)


def train(rng: np.random.Generator, scale: float, view: str = "front", flip: bool = False) -> Sprite:
    """A tram: 'front' view (2.65 x 3.6 m with pantograph) or 'side' view (18-26 m long)."""
    body = _pick(rng, [(0.85, 0.85, 0.82), (0.8, 0.12, 0.12), (0.95, 0.8, 0.15)])
    if view == "side":
        length = float(rng.uniform(18.0, 26.0))
        c = Canvas(length + 0.2, 4.2, scale)
        half = length / 2
        c.polygon([(-half, 0.4), (half - 0.8, 0.4), (half, 1.2), (half, 3.0), (half - 0.6, 3.5), (-half, 3.5)], body)
        for x0 in np.arange(-half + 0.6, half - 1.5, 1.6):
            c.rect(x0, 1.6, x0 + 1.2, 2.9, GLASS)
        for x0 in (-half / 2, half / 2):
            c.rect(x0 - 0.6, 0.5, x0 + 0.6, 2.9, DARK)
            c.rect(x0 - 1.5, 0.0, x0 + 1.5, 0.45, TYRE)
        c.line((-1.0, 3.5), (0.0, 4.1), 0.05, DARK)
        c.line((0.0, 4.1), (1.0, 3.5), 0.05, DARK)
        return c.finish(rng, flip=flip)
    c = Canvas(2.7, 4.2, scale)
    c.polygon([(-1.32, 0.2), (1.32, 0.2), (1.32, 3.2), (1.0, 3.6), (-1.0, 3.6), (-1.32, 3.2)], body)
    c.polygon([(-1.15, 1.6), (1.15, 1.6), (1.05, 3.1), (-1.05, 3.1)], GLASS)
    c.rect(-1.1, 0.7, -0.8, 0.9, HEAD_LIGHT)
    c.rect(0.8, 0.7, 1.1, 0.9, HEAD_LIGHT)
    c.line((-0.6, 3.6), (0.0, 4.15), 0.05, DARK)
    c.line((0.0, 4.15), (0.6, 3.6), 0.05, DARK)
    return c.finish(rng, flip=flip)


# --- people and two-wheelers --------------------------------------------------------------------------

@dataclass(frozen=True)
class BikeGeometry:
    """Where a rider touches a two-wheeler, in the bike's metres: seat (hip), handlebar grip, pedal."""

    seat: tuple[float, float]
    grip: tuple[float, float]
    pedal: tuple[float, float]
    length: float
    height: float


BICYCLE = BikeGeometry(seat=(-0.2, 0.95), grip=(0.42, 1.02), pedal=(0.02, 0.22), length=1.8, height=1.1)
MOTORCYCLE = BikeGeometry(seat=(-0.25, 0.82), grip=(0.48, 1.05), pedal=(0.05, 0.35), length=2.15, height=1.2)


def bicycle(rng: np.random.Generator, scale: float, flip: bool = False) -> Sprite:
    """A bicycle in side view (1.8 m long); its wheels are rings, see-through inside."""
    frame = _clothing(rng)
    c = Canvas(BICYCLE.length, BICYCLE.height + 0.05, scale)
    rear, front, crank = (-0.55, 0.34), (0.55, 0.34), (0.0, 0.3)
    seat_post, head = (-0.17, 0.88), (0.42, 0.85)
    for hub in (rear, front):
        c.circle(*hub, 0.34, TYRE, ring=0.05)
        c.circle(*hub, 0.03, RIM)
        c.line(hub, (hub[0], hub[1] + 0.3), 0.012, RIM, solid=False)
    for a, b in ((rear, crank), (rear, seat_post), (crank, seat_post), (seat_post, head), (crank, head),
                 (head, front)):
        c.line(a, b, 0.04, frame)
    c.line(seat_post, BICYCLE.seat, 0.03, DARK)
    c.line((BICYCLE.seat[0] - 0.1, BICYCLE.seat[1]), (BICYCLE.seat[0] + 0.08, BICYCLE.seat[1]), 0.05, DARK)
    c.line(head, BICYCLE.grip, 0.035, DARK)
    c.line(crank, BICYCLE.pedal, 0.03, DARK)
    return c.finish(rng, texture=0.05, flip=flip)


def motorcycle(rng: np.random.Generator, scale: float, flip: bool = False) -> Sprite:
    """A motorcycle in side view (2.15 m long)."""
    paint = random_paint(rng)
    c = Canvas(MOTORCYCLE.length, MOTORCYCLE.height + 0.05, scale)
    for x in (-0.72, 0.72):
        c.circle(x, 0.31, 0.31, TYRE)
        c.circle(x, 0.31, 0.17, RIM)
    c.polygon([(-0.55, 0.35), (0.4, 0.35), (0.55, 0.7), (0.3, 0.92), (-0.1, 0.9), (-0.75, 0.82),
               (-0.85, 0.7)], paint)
    c.polygon([(-0.2, 0.35), (0.25, 0.35), (0.2, 0.62), (-0.15, 0.62)], DARK)
    c.line((-0.6, 0.4), (-0.95, 0.5), 0.07, RIM)
    c.line((0.55, 0.7), (0.72, 0.31), 0.06, RIM)
    c.line((0.5, 0.8), MOTORCYCLE.grip, 0.05, DARK)
    c.circle(0.6, 0.78, 0.08, HEAD_LIGHT)
    return c.finish(rng, texture=0.08, flip=flip)


def _person_colours(rng: np.random.Generator) -> tuple[Colour, Colour, Colour, Colour]:
    skin = SKIN_TONES[int(rng.integers(len(SKIN_TONES)))]
    hair = (0.08, 0.06, 0.05) if rng.random() < 0.7 else (0.55, 0.42, 0.25)
    return skin, hair, _clothing(rng), _clothing(rng)


def person(rng: np.random.Generator, scale: float, view: str = "front", phase: float = 0.0,
           height: float | None = None, flip: bool = False) -> Sprite:
    """A pedestrian 1.55-1.95 m tall with head, torso, arms and legs.

    view 'front'/'back' (legs apart a little) or 'side' (walking: legs and arms swing with `phase`, in
    radians, so a sequence can animate the gait).
    """
    tall = float(height if height is not None else rng.uniform(1.55, 1.95))
    skin, hair, shirt, trousers = _person_colours(rng)
    c = Canvas(0.9, tall + 0.05, scale)
    hip_y, shoulder_y = 0.52 * tall, 0.81 * tall
    swing = math.sin(phase)
    side = view == "side"
    half_torso = 0.12 if side else 0.2
    # legs (far one first, darker)
    for k, sign in enumerate((-1.0, 1.0)):
        stride = 0.28 * swing * sign if side else 0.05 * sign
        hip = (0.0 if side else 0.09 * sign, hip_y)
        foot = (hip[0] + stride, 0.04)
        shade = 0.8 if k == 0 else 1.0
        colour = (trousers[0] * shade, trousers[1] * shade, trousers[2] * shade)
        c.line(hip, foot, 0.13, colour)
        c.line(foot, (foot[0] + (0.12 if side else 0.0), 0.03), 0.07, DARK)
    c.polygon([(-half_torso, shoulder_y), (half_torso, shoulder_y), (half_torso * 0.85, hip_y - 0.03),
               (-half_torso * 0.85, hip_y - 0.03)], shirt)
    for sign in (-1.0, 1.0):
        shoulder = (0.0 if side else half_torso * sign, shoulder_y - 0.03)
        hand = (shoulder[0] + (-0.22 * swing * sign if side else 0.06 * sign), 0.47 * tall)
        c.line(shoulder, hand, 0.085, shirt)
        c.circle(*hand, 0.045, skin)
    c.line((0.0, shoulder_y), (0.0, shoulder_y + 0.06), 0.08, skin)
    head_y = tall - 0.115
    c.circle(0.0, head_y, 0.11, skin)
    c.polygon([(-0.11, head_y + 0.01), (0.11, head_y + 0.01), (0.08, tall), (-0.08, tall)]
              if view != "front" or rng.random() < 0.3 else
              [(-0.11, head_y + 0.05), (0.11, head_y + 0.05), (0.07, tall), (-0.07, tall)], hair)
    return c.finish(rng, texture=0.1, flip=flip)


def rider(rng: np.random.Generator, scale: float, bike: BikeGeometry, flip: bool = False) -> Sprite:
    """A person riding `bike` (side view), drawn in the bike's frame so the two sprites line up."""
    skin, hair, shirt, trousers = _person_colours(rng)
    c = Canvas(bike.length, bike.height + 0.85, scale)
    hip = bike.seat
    shoulder = (hip[0] + 0.25, hip[1] + 0.55)
    knee = (hip[0] + 0.42, hip[1] - 0.12)
    c.line(hip, knee, 0.14, trousers)
    c.line(knee, bike.pedal, 0.11, trousers)
    c.line((bike.pedal[0] - 0.02, bike.pedal[1]), (bike.pedal[0] + 0.12, bike.pedal[1]), 0.07, DARK)
    c.line(hip, shoulder, 0.24, shirt)
    c.line(shoulder, bike.grip, 0.08, shirt)
    c.circle(*bike.grip, 0.045, skin)
    head = (shoulder[0] + 0.08, shoulder[1] + 0.2)
    c.circle(*head, 0.11, skin)
    helmet = hair
    if rng.random() >= 0.5:
        r, g, b = (float(v) for v in rng.uniform(0.1, 0.9, 3))
        helmet = (r, g, b)
    c.polygon([(head[0] - 0.12, head[1]), (head[0] + 0.12, head[1]), (head[0] + 0.08, head[1] + 0.13),
               (head[0] - 0.08, head[1] + 0.13)], helmet)
    return c.finish(rng, texture=0.1, flip=flip)
