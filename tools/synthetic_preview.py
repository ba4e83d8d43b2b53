"""Draw a few synthetic frames beside their instance masks (docs/synthetic_examples.jpg).

    .venv/bin/python tools/synthetic_preview.py [--out docs/synthetic_examples.jpg] [--count 3] [--seed 0]

Left: the generated image. Right: the gtFine colour image (official Cityscapes colours) with each
instance of the 8 instance classes outlined in its own random colour and group regions hatched.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np

from instseg_core.data import synth_cli
from instseg_core.data.cityscapes import CityscapesDataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/synthetic_examples.jpg"))
    parser.add_argument("--count", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        synth_cli.generate_images(Path(tmp), "val", args.count, seed=args.seed, progress=False)
        rows = []
        rng = np.random.default_rng(0)
        for sample in CityscapesDataset(tmp, "val"):
            colour = cv2.imread(str(sample.paths["color"]), cv2.IMREAD_COLOR_RGB)
            overlay = (0.55 * colour + 0.45 * sample.image).astype(np.uint8)
            for mask in sample.masks:
                contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
                tint = tuple(int(v) for v in rng.integers(60, 256, 3))
                overlay[mask] = (0.5 * overlay[mask] + 0.5 * np.array(tint)).astype(np.uint8)
                cv2.drawContours(overlay, contours, -1, (255, 255, 255), 1)
            hatch = sample.group_mask & ((np.add.outer(*map(np.arange, sample.group_mask.shape)) // 4) % 2 == 0)
            overlay[hatch] = 255
            rows.append(np.concatenate([sample.image, overlay], axis=1))
    sheet = np.concatenate(rows, axis=0)
    sheet = cv2.resize(sheet, (sheet.shape[1] // 2, sheet.shape[0] // 2), interpolation=cv2.INTER_AREA)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    print(f"wrote {args.out} ({sheet.shape[1]}x{sheet.shape[0]})")


if __name__ == "__main__":
    main()
