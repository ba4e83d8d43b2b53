"""Pictures for docs/extreme_points_real_images.md: randomised training crops, and the shipped model on the real set.

    .venv/bin/python tools/real_images_preview.py [--model extreme_unet_int8.onnx]

docs/randomised_objects.jpg: 32 randomised crops (seed 0, the first of the training set; half of them from the
truncated set's recipe) with the target outline in red and the four extreme points in green.
docs/extreme_points_real.jpg: every object of eval_sets/real_photos.json, cropped around it: the ground truth
outline in turquoise, the shipped model's polygon in yellow, the four points in red, the IoU written on the tile.
docs/extreme_points_real_val.jpg: the same for eval_sets/real_photos_val.json (the validation set).
docs/extreme_points_real_by_others.jpg: the same for eval_sets/real_labelled_by_others.json (the second test set,
labelled by other people).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from instseg_core.annotate.encoding import extreme_points_from_mask
from instseg_core.annotate.segmenter import create_annotation_segmenter
from training.extreme_point_crops import randomised_crops
from training.extreme_point_proxies import REAL_PHOTOS_VAL, iou, load_real_photos
from training.labelled_by_others import load_labelled_by_others
from training.photo_archives import ProxyObject

TILE = 192


def randomised_grid(out: Path) -> None:
    images, masks, points = (np.concatenate(parts) for parts in zip(randomised_crops(0, 0, 16),
                                                                    randomised_crops(2, 0, 16, truncate=0.5),
                                                                    strict=True))
    tiles = []
    for image, mask, crop_points in zip(images, masks, points, strict=True):
        tile = image.copy()
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(tile, contours, -1, (255, 40, 40), 1)
        for u, v in crop_points:
            cv2.circle(tile, (round(float(u)), round(float(v))), 3, (40, 255, 40), -1)
        tiles.append(tile)
    rows = [np.concatenate(tiles[r * 8:(r + 1) * 8], axis=1) for r in range(len(tiles) // 8)]
    cv2.imwrite(str(out), cv2.cvtColor(np.concatenate(rows), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])


def real_grid(model: str, out: Path, objects: list[ProxyObject]) -> None:
    segmenter = create_annotation_segmenter(model)
    tiles = []
    for obj in objects:
        points = extreme_points_from_mask(obj.mask)
        result = segmenter.segment(obj.image, points)
        ys, xs = np.nonzero(obj.mask)
        margin = int(0.1 * max(np.ptp(ys), np.ptp(xs))) + 4
        y0, x0 = max(ys.min() - margin, 0), max(xs.min() - margin, 0)
        y1, x1 = min(ys.max() + margin, obj.mask.shape[0]), min(xs.max() + margin, obj.mask.shape[1])
        scale = TILE / max(y1 - y0, x1 - x0)
        view = cv2.resize(obj.image[y0:y1, x0:x1], None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        tile = np.zeros((TILE, TILE, 3), np.uint8)
        tile[:view.shape[0], :view.shape[1]] = view

        def draw(polygons: list[np.ndarray], colour: tuple[int, int, int], target: np.ndarray = tile,
                 s: float = scale, ox: int = x0, oy: int = y0) -> None:
            scaled = [np.round((p.reshape(-1, 2) - (ox, oy)) * s).astype(np.int32) for p in polygons if len(p)]
            cv2.polylines(target, scaled, True, colour, 1, cv2.LINE_AA)

        contours, _ = cv2.findContours(obj.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        draw(list(contours), (64, 224, 208))
        draw([result.polygon], (255, 230, 0))
        for x, y in points:
            cv2.circle(tile, (round((x - x0) * scale), round((y - y0) * scale)), 3, (230, 30, 30), -1)
        cv2.putText(tile, f"{iou(result.mask, obj.mask):.2f}", (4, TILE - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(tile)
    while len(tiles) % 6:
        tiles.append(np.zeros((TILE, TILE, 3), np.uint8))
    rows = [np.concatenate(tiles[r * 6:(r + 1) * 6], axis=1) for r in range(len(tiles) // 6)]
    cv2.imwrite(str(out), cv2.cvtColor(np.concatenate(rows), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="extreme_unet_int8.onnx", help="a path, or a file name in the model folders")
    parser.add_argument("--docs", type=Path, default=Path("docs"))
    args = parser.parse_args()
    randomised_grid(args.docs / "randomised_objects.jpg")
    written = {"extreme_points_real.jpg": load_real_photos(),
               "extreme_points_real_val.jpg": load_real_photos(REAL_PHOTOS_VAL),
               "extreme_points_real_by_others.jpg": load_labelled_by_others()}
    for name, objects in written.items():
        real_grid(args.model, args.docs / name, objects)
    print("wrote", ", ".join(str(args.docs / name) for name in ["randomised_objects.jpg", *written]))


if __name__ == "__main__":
    main()
