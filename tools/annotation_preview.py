"""Show the shipped extreme-point model on held-out objects (docs/extreme_points_examples.jpg).

    .venv/bin/python tools/annotation_preview.py [--model models/extreme_unet.onnx] [--seed 3]

Like the paper's Figure 4: the ground truth is filled in turquoise, the predicted polygon is drawn in
yellow, and the four clicked extreme points are red dots. Objects come from a scene generated with a
seed the model never saw.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from instseg_core.annotate.encoding import crop_box, extreme_points_from_mask
from instseg_core.annotate.segmenter import create_annotation_segmenter
from instseg_core.data.cityscapes import PolygonObject, visible_masks
from instseg_core.data.synthetic import make_scene, render
from instseg_core.eval.binary_metrics import iou

TILE = 192


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="extreme_unet.onnx", help="a path, or a file name in the model folders")
    parser.add_argument("--out", type=Path, default=Path("docs/extreme_points_examples.jpg"))
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--count", type=int, default=12)
    args = parser.parse_args()
    segmenter = create_annotation_segmenter(args.model)
    tiles, seed = [], args.seed
    while len(tiles) < args.count:
        frame = render(make_scene(np.random.SeedSequence([seed, 99]), 1024, 512))
        seed += 1
        objects = [PolygonObject(label, polygon) for label, polygon in frame.objects]
        for obj, mask in zip(objects, visible_masks(512, 1024, objects), strict=True):
            if obj.label not in ("car", "person", "rider", "bicycle", "bus", "truck", "motorcycle") or mask.sum() < 600:
                continue
            points = extreme_points_from_mask(mask)
            result = segmenter.segment(frame.rgb, points)
            view = frame.rgb.copy()
            view[mask] = (0.5 * view[mask] + 0.5 * np.array([64, 224, 208])).astype(np.uint8)
            box = crop_box(points, 0.25, 8)
            x0, y0 = max(int(box.x0), 0), max(int(box.y0), 0)
            x1, y1 = min(int(box.x1) + 1, 1024), min(int(box.y1) + 1, 512)
            tile = cv2.resize(view[y0:y1, x0:x1], (TILE, TILE), interpolation=cv2.INTER_CUBIC)
            scale, origin = np.array([TILE / (x1 - x0), TILE / (y1 - y0)]), np.array([x0, y0])
            polygon = np.round((result.polygon - origin + 0.5) * scale).astype(np.int32)
            cv2.polylines(tile, [polygon], True, (255, 230, 0), 2, cv2.LINE_AA)
            for x, y in np.round((points - origin + 0.5) * scale).astype(np.int32):
                cv2.circle(tile, (int(x), int(y)), 4, (255, 0, 0), -1, cv2.LINE_AA)
            cv2.putText(tile, f"{obj.label} IoU {iou(result.mask, mask):.2f}", (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                        (255, 255, 255), 1, cv2.LINE_AA)
            tiles.append(tile)
            if len(tiles) == args.count:
                break
    rows = [np.concatenate(tiles[i:i + 6], axis=1) for i in range(0, len(tiles), 6)]
    sheet = np.concatenate(rows, axis=0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
