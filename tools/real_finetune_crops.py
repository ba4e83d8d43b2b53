"""Training crops from one of the real evaluation sets, for the experiment "Fine-tuning on a few dozen real objects"
in docs/extreme_points_real_images.md. A model trained on them must never ship, because it trained on an
evaluation set. Such a run is measured only on the other real sets.

    .venv/bin/python tools/real_finetune_crops.py --real hand_labelled --out DIR
    .venv/bin/python tools/real_finetune_crops.py --real labelled_by_others --out DIR

DIR/train.npz gets `--synthetic` crops drawn (seeded) from the epoch-8 synthetic training crops, followed by
`--variants` crops of each real object. `--real none` writes the control: the same synthetic crops alone.
DIR/val.npz is a copy of the street val crops. Each real crop has its own margin, drawn uniformly from `--relax`,
and every second one is mirrored. Training adds its usual augmentation.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

from training.extreme_point_crops import CropSet, crops_of_labelled_objects
from training.extreme_point_proxies import REAL_PHOTOS_VAL, load_real_photos
from training.labelled_by_others import load_labelled_by_others
from training.photo_archives import ProxyObject

SYNTHETIC_CROPS = ("data/extreme_points_crops_relax/train.npz", "data/extreme_randomised/train_relax/crops.npz",
                   "data/extreme_randomised/truncated_relax/crops.npz")
STREET_VAL = "data/extreme_points_crops_relax/val.npz"


def real_objects(which: str) -> list[ProxyObject]:
    if which == "hand_labelled":
        return load_real_photos() + load_real_photos(REAL_PHOTOS_VAL)
    if which == "labelled_by_others":
        return load_labelled_by_others()
    return []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", choices=("hand_labelled", "labelled_by_others", "none"), required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--variants", type=int, default=100)
    parser.add_argument("--synthetic", type=int, default=7000)
    parser.add_argument("--relax", type=float, nargs=2, default=[0.1, 0.3])
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    synthetic = CropSet.concatenate([CropSet.load(path) for path in SYNTHETIC_CROPS])
    synthetic = synthetic.subset(np.random.default_rng(args.seed + 1).permutation(len(synthetic))[:args.synthetic])
    objects = real_objects(args.real)
    real = crops_of_labelled_objects([(obj.image, obj.mask) for obj in objects], args.variants, tuple(args.relax),
                                     args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    CropSet.concatenate([synthetic, real]).save(out / "train.npz")
    shutil.copy(STREET_VAL, out / "val.npz")
    print(f"{out}: {len(objects)} real objects x {args.variants} crops, {len(synthetic)} synthetic crops")


if __name__ == "__main__":
    main()
