"""Deterministic synthetic street scenes, annotated exactly like Cityscapes.

A scene is laid out in world metres (X right, Y up, Z forward from the camera; flat ground Y = 0), so
that sizes follow depth and a sequence stays coherent while the camera and the objects move:

- a pinhole camera 1.2-1.7 m above the road (focal length about 1.1 image widths, as Cityscapes');
- road with lane markings, sidewalks, terrain, building facades (brick photographs or plaster, window
  grids, shop fronts with real photographs), trees, poles with traffic signs and lights, sky with clouds;
- instances of the 8 Cityscapes instance classes with their silhouettes (shapes.py), sampled with
  Cityscapes' class frequencies (cars and persons common, trains rare), riders on bicycles and
  motorcycles, occasional "persongroup" crowds and an ego-vehicle hood;
- painter's order far-to-near, so occlusion in the images matches the polygons' drawing order;
- lighting (exposure, gamma, colour temperature, vignetting), vehicle shadows, sensor noise, blur and
  JPEG compression artefacts.

`render` returns the RGB image and the polygons in drawing order; label images are made from the
polygons by the official cityscapesscripts converters (see cityscapes.write_annotation), so images and
labels agree by construction. Everything random derives from the seed: same seed, same bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from instseg_core.data import shapes, textures
from instseg_core.data.cityscapes import polygon_mask
from instseg_core.data.street_layout import (
    CLASS_FREQUENCY,
    Actor,
    Camera,
    Facade,
    Scene,
    StreetThing,
    make_scene,
)

__all__ = ["CLASS_FREQUENCY", "Frame", "clip_polygon", "make_scene", "render"]

Polygon = np.ndarray  # (N, 2) int32 x, y in image pixels


# --- rendering ----------------------------------------------------------------------------------------

@dataclass
class Frame:
    """A rendered image: rgb (H, W, 3) uint8 and the annotation objects (label, polygon) in drawing order."""

    rgb: np.ndarray
    objects: list[tuple[str, Polygon]]


def render(scene: Scene, time_s: float = 0.0, frame_index: int = 0) -> Frame:
    """Render the scene at `time_s` seconds (the camera moves at scene.ego_speed, actors at theirs)."""
    cam = scene.camera
    z_cam = scene.ego_speed * time_s
    rng = np.random.default_rng([scene.seed, frame_index])
    canvas = np.zeros((cam.height, cam.width, 3), np.float32)
    objects: list[tuple[str, Polygon]] = []
    _draw_sky(scene, canvas, objects)
    _draw_ground(scene, canvas, objects, z_cam)
    for facade in sorted(scene.facades, key=lambda f: -f.z1):
        _draw_facade(scene, facade, canvas, objects, z_cam)
    items: list[tuple[float, int, StreetThing | Actor]] = []
    for thing in scene.things:
        items.append((thing.z - z_cam, 2 if thing.kind in ("sign", "light") else 0, thing))
    for actor in scene.actors:
        z = actor.z + actor.vz * time_s - z_cam
        items.append((z, actor.order, actor))
    for z, _, item in sorted(items, key=lambda entry: (-entry[0], entry[1])):
        if z < 2.5:
            continue
        if isinstance(item, StreetThing):
            _draw_thing(scene, item, z, canvas, objects)
        else:
            _draw_actor(scene, item, z, time_s, canvas, objects)
    if scene.ego_hood > 0:
        _draw_ego_hood(scene, canvas, objects)
    return Frame(_finish(scene, canvas, rng), objects)


def clip_polygon(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """Sutherland-Hodgman clip of an (N, 2) float polygon to [0, width-1] x [0, height-1]."""
    poly = [tuple(p) for p in np.asarray(points, np.float64)]
    for axis, limit, keep_below in ((0, 0.0, False), (0, width - 1.0, True), (1, 0.0, False),
                                    (1, height - 1.0, True)):
        if not poly:
            break
        out = []
        for i, current in enumerate(poly):
            previous = poly[i - 1]
            inside_c = current[axis] <= limit if keep_below else current[axis] >= limit
            inside_p = previous[axis] <= limit if keep_below else previous[axis] >= limit
            if inside_c != inside_p:
                t = (limit - previous[axis]) / (current[axis] - previous[axis])
                out.append(tuple(previous[k] + t * (current[k] - previous[k]) for k in range(2)))
            if inside_c:
                out.append(current)
        poly = out
    return np.asarray(poly, np.float64).reshape(-1, 2)


def _add_object(objects: list, label: str, points: np.ndarray, cam: Camera) -> Polygon | None:
    clipped = clip_polygon(points, cam.width, cam.height)
    if len(clipped) < 3:
        return None
    polygon = np.round(clipped).astype(np.int32)
    keep = np.ones(len(polygon), bool)
    keep[1:] = np.any(polygon[1:] != polygon[:-1], axis=1)
    polygon = polygon[keep]
    if len(polygon) < 3 or cv2.contourArea(polygon) < 1.0:
        return None
    objects.append((label, polygon))
    return polygon


def _paint(canvas: np.ndarray, polygon: Polygon | None, colour: np.ndarray) -> None:
    """Paint `colour` ((H, W, 3) image or (3,) colour) where the polygon's raster is."""
    if polygon is None:
        return
    mask = polygon_mask(polygon, canvas.shape[1], canvas.shape[0])
    canvas[mask] = colour[mask] if colour.ndim == 3 else colour


def _draw_sky(scene: Scene, canvas: np.ndarray, objects: list) -> None:
    cam, look = scene.camera, scene.look
    rows = np.linspace(0.0, 1.0, cam.height, dtype=np.float32)[:, None, None]
    clear_top = np.array([0.25, 0.45, 0.78], np.float32) * (0.7 + 0.5 * look["sky"])
    overcast = np.array([0.72, 0.74, 0.77], np.float32)
    top = clear_top * (1 - look["clouds"]) + overcast * look["clouds"]
    horizon = np.array([0.82, 0.86, 0.9], np.float32)
    sky = top * (1 - rows) + horizon * rows
    rng = np.random.default_rng([scene.seed, 1])
    clouds = textures.fractal_noise(rng, cam.height, cam.width, octaves=5, base_cells=3)
    amount = np.clip((clouds - (0.75 - 0.5 * look["clouds"])) * 3.0, 0, 1)[..., None]
    canvas[:] = sky * (1 - amount) + np.float32(0.95) * amount
    _add_object(objects, "sky", np.array([[0, 0], [cam.width - 1, 0], [cam.width - 1, cam.cy + 1],
                                          [0, cam.cy + 1]]), cam)


def _ground_textures(scene: Scene) -> dict[str, list[np.ndarray]]:
    """World-space ground textures (road, sidewalk, terrain), with a 3-level pyramid for distance."""
    if "ground" in scene.cache:
        return scene.cache["ground"]
    rng = np.random.default_rng([scene.seed, 2])
    asphalt_tone = rng.uniform(0.25, 0.42)
    road = textures.tinted(textures.photo_patch(rng, "gravel", 512, 512), (asphalt_tone,) * 3, 0.85)
    road *= 0.9 + 0.2 * textures.fractal_noise(rng, 512, 512, octaves=4)[..., None]
    paving = textures.tinted(textures.photo_patch(rng, "brick", 512, 512), tuple(rng.uniform(0.5, 0.7, 3)), 0.7)
    grass = textures.tinted(textures.photo_patch(rng, "grass", 512, 512), (0.3, 0.42, 0.18), 0.6)
    result = {}
    for name, texture in (("road", road), ("sidewalk", paving), ("terrain", grass)):
        levels = [np.ascontiguousarray(texture, np.float32)]
        for _ in range(3):
            levels.append(cv2.pyrUp(cv2.pyrDown(levels[-1])))
        result[name] = levels
    scene.cache["ground"] = result
    return result


def _draw_ground(scene: Scene, canvas: np.ndarray, objects: list, z_cam: float) -> None:
    cam = scene.camera
    top = math.floor(cam.cy) + 1
    ys, xs = np.mgrid[top:cam.height, 0:cam.width].astype(np.float32)
    depth = cam.focal * cam.mount_height / np.maximum(ys - cam.cy, 1e-3)
    world_x = (xs - cam.cx) * depth / cam.focal
    world_z = depth + z_cam
    tex = _ground_textures(scene)
    texels_per_m = {"road": 96.0, "sidewalk": 110.0, "terrain": 80.0}
    road_l, road_r = scene.road
    sw_l, sw_r = road_l - scene.sidewalk[0], road_r + scene.sidewalk[1]
    on_road = (world_x >= road_l) & (world_x <= road_r)
    region = np.where(on_road, 0, np.where((world_x >= sw_l) & (world_x <= sw_r), 1, 2))
    pixel_size = depth / cam.focal  # metres per image pixel at that depth
    ground = np.zeros((*xs.shape, 3), np.float32)
    for index, name in enumerate(("road", "sidewalk", "terrain")):
        select = region == index
        if not select.any():
            continue
        scale = texels_per_m[name]
        map_x = (world_x * scale).astype(np.float32)
        map_y = (world_z * scale).astype(np.float32)
        level = np.clip(np.log2(np.maximum(pixel_size * scale, 1e-6)).astype(int), 0, 3)
        for lv in np.unique(level[select]):
            pick = select & (level == lv)
            sampled = cv2.remap(tex[name][lv], map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
            ground[pick] = sampled[pick]
    # lane markings: dashed lines between lanes, solid at the road edges
    boundaries = np.arange(road_l + scene.lane_width, road_r - 0.5, scene.lane_width)
    half = np.maximum(0.07, pixel_size * 0.6)
    for bx in boundaries:
        dashes = (np.mod(world_z, 9.0) < 3.0) & (np.abs(world_x - bx) < half)
        ground[dashes] = 0.85
    for bx in (road_l + 0.25, road_r - 0.25):
        ground[np.abs(world_x - bx) < half] = 0.8
    for bx in (road_l, road_r):  # curbs
        ground[np.abs(world_x - bx) < np.maximum(0.1, pixel_size * 0.7)] = 0.62
    haze = np.clip(scene.look["haze"] * 8.0 / depth, 0, 1)[..., None]
    ground = ground * (1 - haze) + np.float32(0.8) * haze
    z_near = 0.5 * cam.focal * cam.mount_height / (cam.height - cam.cy)
    far = 2000.0
    strips = (("terrain", -1000.0, 1000.0), ("sidewalk", sw_l, sw_r), ("road", road_l, road_r))
    for label, x0, x1 in strips:
        xs_img, ys_img = cam.project(np.array([x0, x1, x1, x0]), 0.0, np.array([z_near, z_near, far, far]))
        _add_object(objects, label, np.stack([xs_img, ys_img], axis=1), cam)
    canvas[top:] = ground


def _facade_texture(scene: Scene, facade: Facade, px_per_m: float) -> np.ndarray:
    """Facade texture at `px_per_m` (a power of two, so sequences reuse it), cached per scene."""
    key = ("facade", facade.seed, px_per_m)
    if key in scene.cache:
        return scene.cache[key]
    rng = np.random.default_rng(facade.seed)
    length = facade.z1 - facade.z0
    tex_w = int(min(2048, max(16, length * px_per_m)))
    tex_h = int(min(1024, max(16, facade.height * px_per_m)))
    sx, sy = tex_w / length, tex_h / facade.height
    if rng.random() < 0.45:
        base = textures.tinted(textures.photo_patch(rng, "brick", tex_h, tex_w, scale=rng.uniform(0.4, 0.9)),
                               tuple(rng.uniform(0.35, 0.75, 3)), rng.uniform(0.3, 0.7))
    else:
        base = textures.noisy_colour(rng, tex_h, tex_w, tuple(rng.uniform(0.45, 0.9, 3)), amount=0.12)
    storey = rng.uniform(2.8, 3.6)
    spacing = rng.uniform(2.2, 4.0)
    win_w, win_h = spacing * rng.uniform(0.35, 0.6), storey * rng.uniform(0.4, 0.6)
    glass = np.array(shapes.GLASS, np.float32)
    for level in range(1, int(facade.height / storey)):
        y_top = facade.height - (level + 1) * storey + (storey - win_h) / 2
        for col in np.arange(spacing / 2, length - win_w, spacing):
            x0, y0 = int(col * sx), int(max(0.0, y_top) * sy)
            x1, y1 = int((col + win_w) * sx), int((y_top + win_h) * sy)
            shade = glass * rng.uniform(0.6, 2.2)
            base[y0:y1, x0:x1] = np.clip(shade, 0, 1)
            base[max(0, y0 - 1):y0 + 1, x0:x1] = 0.9
    ground_h = int(storey * 0.85 * sy)
    if rng.random() < 0.6:  # shop front with a real photograph as display / billboard
        shop_w = min(tex_w - 2, int(rng.uniform(3.0, 8.0) * sx))
        x0 = int(rng.integers(0, max(1, tex_w - shop_w)))
        name = str(rng.choice(textures.BILLBOARD_PHOTOS))
        board = textures.photo_patch(rng, name, max(4, ground_h), max(4, shop_w), scale=rng.uniform(0.3, 0.8))
        base[tex_h - ground_h:tex_h, x0:x0 + shop_w] = board[: ground_h, : shop_w]
    door_x = int(rng.uniform(0.1, 0.8) * tex_w)
    base[tex_h - int(2.2 * sy):, door_x:door_x + int(1.1 * sx)] = np.float32(0.15)
    scene.cache[key] = base
    return base


def _draw_facade(scene: Scene, facade: Facade, canvas: np.ndarray, objects: list, z_cam: float) -> None:
    cam = scene.camera
    z0, z1 = facade.z0 - z_cam, facade.z1 - z_cam
    if z1 < 1.0:
        return
    z0_clip = max(z0, 1.0)
    x_range = cam.project(facade.x, 0.0, np.array([z0_clip, z1]))[0]  # a vertical plane: x depends on Z only
    if x_range.max() < 0 or x_range.min() >= cam.width:
        return
    px_per_m = float(2 ** np.clip(np.round(np.log2(cam.focal / z0_clip)), 1, 5))
    texture = _facade_texture(scene, facade, px_per_m)
    u0 = (z0_clip - z0) / (z1 - z0) * texture.shape[1]
    world = [(z0_clip, 0.0), (z1, 0.0), (z1, facade.height), (z0_clip, facade.height)]
    xs, ys = cam.project(np.full(4, facade.x), np.array([w[1] for w in world]), np.array([w[0] for w in world]))
    quad = np.stack([xs, ys], axis=1).astype(np.float32)
    tex_h, tex_w = texture.shape[:2]
    source = np.array([[u0, tex_h], [tex_w, tex_h], [tex_w, 0], [u0, 0]], np.float32)
    polygon = _add_object(objects, "building", quad, cam)
    if polygon is None:
        return
    x0, y0 = np.maximum(polygon.min(axis=0), 0)
    x1, y1 = np.minimum(polygon.max(axis=0) + 1, (cam.width, cam.height))
    homography = cv2.getPerspectiveTransform(source, quad - np.array([x0, y0], np.float32))
    warped = cv2.warpPerspective(texture, homography, (int(x1 - x0), int(y1 - y0)), flags=cv2.INTER_AREA)
    depth = np.interp(np.arange(x0, x1), sorted(xs[:2]), [z0_clip, z1] if xs[0] < xs[1] else [z1, z0_clip])
    haze = np.clip(scene.look["haze"] * 8.0 / depth, 0, 1)[None, :, None].astype(np.float32)
    warped = warped * (1 - haze) + np.float32(0.8) * haze
    mask = polygon_mask(polygon, cam.width, cam.height)[y0:y1, x0:x1]
    canvas[y0:y1, x0:x1][mask] = warped[mask]


def _blob(rng: np.random.Generator, cx: float, cy: float, radius: float, points: int = 28) -> np.ndarray:
    angles = np.linspace(0, 2 * np.pi, points, endpoint=False)
    wobble = 1.0 + 0.18 * np.sin(angles * 3 + rng.uniform(0, 6)) + 0.1 * rng.standard_normal(points)
    return np.stack([cx + radius * wobble * np.cos(angles), cy + radius * 0.8 * wobble * np.sin(angles)], axis=1)


def _textured_fill(scene: Scene, canvas: np.ndarray, polygon: Polygon | None, fill: np.ndarray) -> None:
    """Paint `fill` (h, w, 3) into the polygon's bounding box where the polygon raster is."""
    if polygon is None:
        return
    cam = scene.camera
    x0, y0 = polygon.min(axis=0)
    x1, y1 = polygon.max(axis=0) + 1
    mask = polygon_mask(polygon, cam.width, cam.height)[y0:y1, x0:x1]
    canvas[y0:y1, x0:x1][mask] = fill[: y1 - y0, : x1 - x0][mask]


def _draw_thing(scene: Scene, thing: StreetThing, z: float, canvas: np.ndarray, objects: list) -> None:
    cam = scene.camera
    rng = np.random.default_rng(thing.seed)
    scale = cam.focal / z
    x_img, y_ground = cam.project(thing.x, 0.0, z)
    if thing.kind == "tree":
        trunk_w = 0.25 * scale
        trunk_top = cam.project(thing.x, thing.height * 0.55, z)[1]
        trunk = np.array([[x_img - trunk_w, y_ground], [x_img + trunk_w, y_ground], [x_img + trunk_w * 0.7, trunk_top],
                          [x_img - trunk_w * 0.7, trunk_top]])
        crown_y = cam.project(thing.x, thing.height * 0.55 + thing.size * 0.6, z)[1]
        for label, points in (("vegetation", trunk), ("vegetation", _blob(rng, x_img, crown_y, thing.size * scale))):
            polygon = _add_object(objects, label, points, cam)
            if polygon is None:
                continue
            h, w = (polygon.max(axis=0) - polygon.min(axis=0) + 1)[::-1]
            if points is trunk:
                fill = textures.noisy_colour(rng, h, w, (0.28, 0.2, 0.14), 0.2)
            else:
                fill = textures.tinted(textures.photo_patch(rng, "grass", h, w, scale=max(0.05, scale / 60)),
                                       tuple(rng.uniform([0.15, 0.25, 0.08], [0.3, 0.45, 0.18])), 0.7)
            _textured_fill(scene, canvas, polygon, fill)
        return
    if thing.kind == "pole":
        half = max(0.6, thing.size * scale / 2)
        top = cam.project(thing.x, thing.height, z)[1]
        points = np.array([[x_img - half, y_ground], [x_img + half, y_ground], [x_img + half, top],
                           [x_img - half, top]])
        _paint(canvas, _add_object(objects, "pole", points, cam), np.array([0.45, 0.46, 0.47], np.float32))
        return
    size = thing.size * scale
    centre_y = cam.project(thing.x, thing.height - thing.size * 0.6, z)[1]
    if thing.kind == "light":
        box = np.array([[x_img - size * 0.3, centre_y - size * 0.75], [x_img + size * 0.3, centre_y - size * 0.75],
                        [x_img + size * 0.3, centre_y + size * 0.75], [x_img - size * 0.3, centre_y + size * 0.75]])
        polygon = _add_object(objects, "traffic light", box, cam)
        _paint(canvas, polygon, np.array([0.1, 0.1, 0.1], np.float32))
        if polygon is not None and size > 6:
            lit = int(rng.integers(3))
            for k, colour in enumerate(((0.9, 0.1, 0.1), (0.95, 0.7, 0.1), (0.1, 0.85, 0.3))):
                c = np.array(colour, np.float32) * (1.0 if k == lit else 0.3)
                cy = int(centre_y - size * 0.45 + k * size * 0.45)
                cv2.circle(canvas, (int(x_img), cy), max(1, int(size * 0.17)), tuple(float(v) for v in c), -1)
        return
    if thing.shape == "circle":
        angles = np.linspace(0, 2 * np.pi, 20, endpoint=False)
        points = np.stack([x_img + size / 2 * np.cos(angles), centre_y + size / 2 * np.sin(angles)], axis=1)
    elif thing.shape == "triangle":
        points = np.array([[x_img, centre_y + size * 0.5], [x_img + size * 0.55, centre_y - size * 0.45],
                           [x_img - size * 0.55, centre_y - size * 0.45]])
    else:
        points = np.array([[x_img - size / 2, centre_y - size / 2], [x_img + size / 2, centre_y - size / 2],
                           [x_img + size / 2, centre_y + size / 2], [x_img - size / 2, centre_y + size / 2]])
    polygon = _add_object(objects, "traffic sign", points, cam)
    rim = np.array([0.8, 0.08, 0.08] if thing.shape != "square" else [0.1, 0.3, 0.75], np.float32)
    _paint(canvas, polygon, rim)
    if polygon is not None and size > 8:
        inner = (polygon - polygon.mean(axis=0)) * 0.7 + polygon.mean(axis=0)
        cv2.fillPoly(canvas, [np.round(inner).astype(np.int32)], (0.93, 0.93, 0.9))


_BUILDERS = {"car": shapes.car, "truck": shapes.truck, "bus": shapes.bus, "train": shapes.train}


def _actor_sprite(actor: Actor, scale: float, time_s: float) -> shapes.Sprite:
    rng = np.random.default_rng(actor.seed)
    if actor.kind in _BUILDERS:
        return _BUILDERS[actor.kind](rng, scale, actor.view, actor.flip)
    if actor.kind == "person":
        walked = math.hypot(actor.vx, actor.vz) * time_s
        return shapes.person(rng, scale, "side" if actor.view == "side" else actor.view,
                             phase=walked / 0.75 * math.pi + rng.uniform(0, 6.28), flip=actor.flip)
    if actor.kind == "bicycle":
        return shapes.bicycle(rng, scale, actor.flip)
    if actor.kind == "motorcycle":
        return shapes.motorcycle(rng, scale, actor.flip)
    if actor.kind == "rider":
        geometry = shapes.BICYCLE if actor.bike == "bicycle" else shapes.MOTORCYCLE
        return shapes.rider(rng, scale, geometry, actor.flip)
    if actor.kind == "persongroup":
        return _group_sprite(rng, actor.members, scale)
    raise ValueError(f"unknown actor kind {actor.kind!r}")


def _group_sprite(rng: np.random.Generator, members: int, scale: float) -> shapes.Sprite:
    views = rng.choice(["front", "back", "side"], size=members)
    people = [shapes.person(rng, scale, str(view), rng.uniform(0, 6)) for view in views]
    step = 0.45 * scale
    width = int(step * (members - 1) + max(p.rgb.shape[1] for p in people)) + 2
    height = max(p.rgb.shape[0] for p in people) + 2
    rgb = np.zeros((height, width, 3), np.float32)
    painted = np.zeros((height, width), bool)
    for k, sprite in enumerate(people):
        h, w = sprite.painted.shape
        x0, y0 = int(k * step), height - h
        region = sprite.painted
        rgb[y0:y0 + h, x0:x0 + w][region] = sprite.rgb[region]
        painted[y0:y0 + h, x0:x0 + w] |= region
    outline = shapes.outline_of(painted.astype(np.uint8) * 255)
    return shapes.Sprite(rgb, painted, outline, (width / 2.0, height - 3.0))


def _draw_actor(scene: Scene, actor: Actor, z: float, time_s: float, canvas: np.ndarray, objects: list) -> None:
    cam = scene.camera
    scale = cam.focal / z
    x_world = actor.x + actor.vx * time_s
    x_img, y_img = cam.project(x_world, 0.0, z)
    if not -0.5 * cam.width < x_img < 1.5 * cam.width:
        return
    sprite = _actor_sprite(actor, scale, time_s)
    if len(sprite.outline) < 3 or sprite.rgb.shape[0] < 8:
        return
    left, top = x_img - sprite.anchor[0], y_img - sprite.anchor[1]
    if actor.kind in ("car", "truck", "bus", "train"):
        w = sprite.rgb.shape[1]
        cv2.ellipse(canvas, (int(x_img), int(y_img)), (int(w * 0.5), max(1, int(0.12 * scale))), 0, 0, 360,
                    (0.05, 0.05, 0.05), -1)
    label = actor.kind
    polygon = _add_object(objects, label, sprite.outline + np.array([left, top], np.float32), cam)
    if polygon is None:
        return
    ix, iy = round(left), round(top)
    h, w = sprite.painted.shape
    x0, y0 = max(ix, 0), max(iy, 0)
    x1, y1 = min(ix + w, cam.width), min(iy + h, cam.height)
    if x1 <= x0 or y1 <= y0:
        return
    mask = polygon_mask(polygon, cam.width, cam.height)[y0:y1, x0:x1]
    local = (slice(y0 - iy, y1 - iy), slice(x0 - ix, x1 - ix))
    draw = mask & sprite.painted[local]
    canvas[y0:y1, x0:x1][draw] = sprite.rgb[local][draw]


def _draw_ego_hood(scene: Scene, canvas: np.ndarray, objects: list) -> None:
    cam = scene.camera
    top = cam.height * (1 - scene.ego_hood)
    xs = np.linspace(0, cam.width - 1, 24)
    ys = top + (cam.height - top) * ((xs - cam.width / 2) / (cam.width / 2)) ** 2 * 0.8
    points = np.concatenate([np.stack([xs, ys], axis=1), [[cam.width - 1, cam.height - 1], [0, cam.height - 1]]])
    polygon = _add_object(objects, "ego vehicle", points, cam)
    rng = np.random.default_rng([scene.seed, 3])
    if polygon is not None:
        paint = textures.noisy_colour(rng, cam.height, cam.width, shapes.random_paint(rng), 0.1)
        _textured_fill(scene, canvas, polygon, paint)


def _finish(scene: Scene, canvas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Camera effects: exposure, gamma, colour temperature, vignetting, blur, noise, JPEG artefacts."""
    look, cam = scene.look, scene.camera
    image = canvas * look["exposure"]
    image *= np.array([1 + look["temperature"], 1.0, 1 - look["temperature"]], np.float32)
    ys, xs = np.ogrid[0:cam.height, 0:cam.width]
    radius = ((xs - cam.width / 2) / (cam.width / 2)) ** 2 + ((ys - cam.height / 2) / (cam.height / 2)) ** 2
    image *= (1 - look["vignette"] * np.clip(radius / 2, 0, 1)).astype(np.float32)[..., None]
    image = np.clip(image, 0, 1) ** np.float32(look["gamma"])
    if look["motion_blur"] > 0:
        length = int(look["motion_blur"]) * 2 + 1
        kernel = np.zeros((length, length), np.float32)
        kernel[length // 2] = 1.0 / length
        image = cv2.filter2D(image, -1, kernel)
    if look["blur"] > 0.3:
        image = cv2.GaussianBlur(image, (0, 0), look["blur"])
    image = image + rng.normal(0, look["noise"], image.shape).astype(np.float32)
    rgb = np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
    if look["jpeg"] > 0:
        _, data = cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_QUALITY, int(look["jpeg"])])
        decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
        assert decoded is not None, "OpenCV decodes the JPEG it has just encoded"
        rgb = decoded
    return rgb
