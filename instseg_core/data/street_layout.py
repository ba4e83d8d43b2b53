"""World layout of a synthetic street scene: camera, road, facades, street furniture, moving objects.

Everything is in world metres (X right, Y up, Z forward from the camera; flat ground Y = 0) and drawn from
one seed, so a scene can be rendered at any time of a sequence (synthetic.render). Object classes are
sampled with Cityscapes' instance frequencies; placement keeps objects' ground footprints apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Cityscapes (fine, train) instance counts: the class mix of generated scenes.
CLASS_FREQUENCY = {"car": 26963, "person": 17919, "bicycle": 3675, "rider": 1781, "motorcycle": 737,
                   "truck": 484, "bus": 385, "train": 171}


@dataclass(frozen=True)
class Camera:
    """Pinhole camera, no roll/pitch: image x = cx + f X / Z, y = cy + f (h - Y) / Z (pixels)."""

    width: int
    height: int
    focal: float
    cx: float
    cy: float
    mount_height: float

    def project(self, x: np.ndarray | float, y: np.ndarray | float, z: np.ndarray | float) -> tuple:
        return self.cx + self.focal * np.asarray(x) / z, self.cy + self.focal * (self.mount_height - np.asarray(y)) / z


@dataclass
class Actor:
    """A dynamic object: class (or 'persongroup'), world ground position and velocity (m, m/s), look."""

    kind: str
    x: float
    z: float
    vx: float = 0.0
    vz: float = 0.0
    view: str = "rear"
    flip: bool = False
    seed: int = 0
    bike: str = ""  # for riders: 'bicycle' or 'motorcycle'
    members: int = 0  # for person groups
    order: int = 0  # tie-break in drawing order (a bike before its rider)


@dataclass
class Facade:
    side: int  # -1 left, +1 right
    x: float
    z0: float
    z1: float
    height: float
    seed: int


@dataclass
class StreetThing:
    """Static object beside the road: 'tree', 'pole', 'sign' or 'light' (sign/light on their pole)."""

    kind: str
    x: float
    z: float
    height: float
    size: float
    seed: int
    shape: str = ""


@dataclass
class Scene:
    camera: Camera
    road: tuple[float, float]  # left and right road edge X
    sidewalk: tuple[float, float]  # widths
    lane_width: float
    facades: list[Facade]
    things: list[StreetThing]
    actors: list[Actor]
    look: dict[str, float]
    ego_hood: float  # fraction of image height covered by the ego vehicle, 0 = none
    ego_speed: float
    seed: int
    cache: dict = field(default_factory=dict, repr=False)


# --- layout -------------------------------------------------------------------------------------------

def make_scene(seed: int | np.random.SeedSequence, width: int = 1024, height: int = 512,
               ego_speed: float = 0.0) -> Scene:
    """Lay out a street scene from a seed (an int or a SeedSequence)."""
    sequence = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    rng = np.random.default_rng(sequence)
    focal = width * rng.uniform(1.0, 1.2)
    camera = Camera(width, height, focal, width * (0.5 + rng.uniform(-0.04, 0.04)),
                    height * rng.uniform(0.40, 0.48), rng.uniform(1.2, 1.7))
    lane_width = rng.uniform(3.0, 3.5)
    lanes_left, lanes_right = int(rng.integers(0, 3)), int(rng.integers(1, 3))
    ego_offset = rng.uniform(-0.4, 0.4)
    road = (-lane_width * (lanes_left + 0.5) + ego_offset, lane_width * (lanes_right - 0.5) + ego_offset)
    sidewalk = (rng.uniform(2.0, 5.0), rng.uniform(2.0, 5.0))
    seeds = iter(rng.integers(0, 2**31, size=10_000))
    facades = []
    for side in (-1, 1):
        edge = road[0] - sidewalk[0] if side < 0 else road[1] + sidewalk[1]
        z = rng.uniform(-5.0, 8.0)
        while z < 320.0:
            length = rng.uniform(8.0, 35.0)
            if rng.random() > 0.12:  # gaps show trees and sky
                facades.append(Facade(side, edge + side * rng.uniform(0.0, 1.5), z, z + length,
                                      rng.uniform(7.0, 28.0), int(next(seeds))))
            z += length + (rng.uniform(0.0, 6.0) if rng.random() < 0.3 else 0.0)
    things = []
    for side in (-1, 1):
        curb = road[0] if side < 0 else road[1]
        width_sw = sidewalk[0] if side < 0 else sidewalk[1]
        for z in np.cumsum(rng.uniform(8.0, 30.0, size=20)):
            x = curb + side * rng.uniform(0.4, 0.8)
            kind = rng.choice(["tree", "pole", "sign", "light"], p=[0.45, 0.2, 0.2, 0.15])
            if kind == "tree":
                things.append(StreetThing("tree", curb + side * width_sw * rng.uniform(0.5, 0.9), float(z),
                                          rng.uniform(4.0, 9.0), rng.uniform(1.5, 3.2), int(next(seeds))))
            else:
                pole_height = rng.uniform(3.0, 4.5) if kind != "pole" else rng.uniform(5.0, 8.0)
                things.append(StreetThing("pole", x, float(z), pole_height, 0.12, int(next(seeds))))
                if kind != "pole":
                    shape = str(rng.choice(["circle", "triangle", "square"])) if kind == "sign" else "box"
                    things.append(StreetThing(kind, x, float(z) - 0.05, pole_height, rng.uniform(0.55, 0.8),
                                              int(next(seeds)), shape))
    scene = Scene(camera, road, sidewalk, lane_width, facades, things, [], _make_look(rng),
                  float(rng.uniform(0.05, 0.1)) if rng.random() < 0.4 else 0.0, ego_speed, int(next(seeds)))
    scene.actors = _make_actors(rng, scene, seeds, lanes_left)
    return scene


def _make_look(rng: np.random.Generator) -> dict[str, float]:
    return {
        "exposure": rng.uniform(0.65, 1.3), "gamma": rng.uniform(0.8, 1.25), "temperature": rng.uniform(-0.08, 0.08),
        "vignette": rng.uniform(0.0, 0.35), "noise": rng.uniform(0.004, 0.025), "blur": rng.uniform(0.0, 1.1),
        "motion_blur": float(rng.integers(0, 6)) if rng.random() < 0.25 else 0.0,
        "jpeg": float(rng.integers(35, 96)) if rng.random() < 0.85 else 0.0,
        "sky": rng.uniform(0.0, 1.0), "clouds": rng.uniform(0.0, 0.9), "haze": rng.uniform(0.1, 0.5),
        "sun": rng.uniform(-1.0, 1.0),
    }


def _make_actors(rng: np.random.Generator, scene: Scene, seeds, lanes_left: int) -> list[Actor]:
    names = list(CLASS_FREQUENCY)
    weights = np.array([CLASS_FREQUENCY[n] for n in names], float)
    count = 4 + int(rng.poisson(10))
    road_l, road_r = scene.road
    lane_centres = np.arange(road_l + scene.lane_width / 2, road_r, scene.lane_width)
    occupied: list[tuple[float, float, float, float]] = []  # x0, x1, z0, z1 footprints

    def free(x: float, z: float, half_w: float, half_l: float) -> bool:
        return all(x + half_w < a or x - half_w > b or z + half_l < c or z - half_l > d for a, b, c, d in occupied)

    actors: list[Actor] = []
    for _ in range(count):
        kind = str(rng.choice(names, p=weights / weights.sum()))
        for _attempt in range(20):
            actor = _place(rng, kind, scene, lane_centres, lanes_left, int(next(seeds)))
            half_w, half_l = {"person": (0.3, 0.3), "bicycle": (0.9, 0.5), "motorcycle": (1.1, 0.6),
                              "rider": (1.1, 0.6)}.get(kind, (1.2, 3.0))
            if actor.view == "side" and kind not in ("person",):
                half_w, half_l = half_l + 2.0, half_w
            if free(actor.x, actor.z, half_w, half_l):
                occupied.append((actor.x - half_w, actor.x + half_w, actor.z - half_l, actor.z + half_l))
                if kind == "rider":
                    bike = Actor(actor.bike, actor.x, actor.z, actor.vx, actor.vz, "side", actor.flip,
                                 int(next(seeds)), order=0)
                    actor.order = 1
                    actors.append(bike)
                actors.append(actor)
                break
    if rng.random() < 0.3:  # a distant crowd, annotated as one "persongroup" polygon like Cityscapes does
        side = rng.choice([-1, 1])
        edge = road_l - scene.sidewalk[0] / 2 if side < 0 else road_r + scene.sidewalk[1] / 2
        actors.append(Actor("persongroup", edge, rng.uniform(35.0, 70.0), view="front", seed=int(next(seeds)),
                            members=int(rng.integers(3, 7))))
    return actors


def _place(rng: np.random.Generator, kind: str, scene: Scene, lanes: np.ndarray, lanes_left: int,
           seed: int) -> Actor:
    road_l, road_r = scene.road
    z = float(rng.uniform(5.0, 25.0) if rng.random() < 0.45 else rng.uniform(25.0, 90.0))
    flip = bool(rng.random() < 0.5)
    if kind in ("car", "truck", "bus"):
        roll = rng.random()
        if roll < 0.2 and kind == "car":  # parked at the curb
            side = rng.choice([-1, 1])
            x = (road_l + 1.1) if side < 0 else (road_r - 1.1)
            return Actor(kind, x, z, view="rear", flip=flip, seed=seed)
        if roll < 0.35:  # crossing at an intersection
            speed = rng.uniform(3.0, 10.0) * (1 if flip else -1)
            return Actor(kind, float(rng.uniform(road_l - 4, road_r + 4)), max(z, 12.0), vx=-speed, view="side",
                         flip=flip, seed=seed)
        lane = int(rng.integers(len(lanes)))
        oncoming = lane < lanes_left
        speed = rng.uniform(2.0, 14.0)
        return Actor(kind, float(lanes[lane] + rng.uniform(-0.3, 0.3)), z, vz=-speed if oncoming else speed,
                     view="front" if oncoming else "rear", flip=flip, seed=seed)
    if kind == "train":
        if rng.random() < 0.5:
            return Actor(kind, float(np.mean(scene.road)), max(z, 15.0), vz=-rng.uniform(3, 8), view="front",
                         seed=seed)
        return Actor(kind, float(np.mean(scene.road)), max(z, 20.0), vx=rng.uniform(-6, 6), view="side",
                     flip=flip, seed=seed)
    if kind == "person":
        side = rng.choice([-1, 1])
        if rng.random() < 0.15:  # crossing the road
            return Actor(kind, float(rng.uniform(road_l, road_r)), z, vx=1.3 * (-1 if flip else 1), view="side",
                         flip=flip, seed=seed)
        offset = rng.uniform(0.3, scene.sidewalk[0] if side < 0 else scene.sidewalk[1])
        edge = road_l - offset if side < 0 else road_r + offset
        if rng.random() < 0.6:
            toward = rng.random() < 0.5
            return Actor(kind, float(edge), z, vz=-1.3 if toward else 1.3, view="front" if toward else "back",
                         seed=seed)
        return Actor(kind, float(edge), z, vx=1.2 * (-1 if flip else 1), view="side", flip=flip, seed=seed)
    if kind == "rider":
        bike = "bicycle" if rng.random() < 0.7 else "motorcycle"
        speed = rng.uniform(3.0, 6.0) if bike == "bicycle" else rng.uniform(5.0, 10.0)
        side = rng.choice([-1, 1])
        in_bike_lane = rng.random() < 0.6
        x = float((road_l + 0.8 if side < 0 else road_r - 0.8) if in_bike_lane else rng.uniform(road_l, road_r))
        return Actor(kind, x, z, vx=speed * (-1 if flip else 1), view="side", flip=flip, seed=seed, bike=bike)
    # parked bicycle or motorcycle on the sidewalk
    side = rng.choice([-1, 1])
    x = road_l - rng.uniform(0.4, 1.2) if side < 0 else road_r + rng.uniform(0.4, 1.2)
    return Actor(kind, float(x), z, view="side", flip=flip, seed=seed)
