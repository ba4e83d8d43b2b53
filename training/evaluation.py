"""Evaluation shared by the dense instance networks' training commands: the deployed pipeline (a runtime
Segmenter) on a split, scored with the official Cityscapes evaluator."""

from __future__ import annotations

import os
import shutil
from collections.abc import Collection
from pathlib import Path

import cv2
import numpy as np

from instseg_core.base.instances import resize_instances
from instseg_core.data.cityscapes import CityscapesDataset
from instseg_core.eval.cityscapes_instances import evaluate_instances, write_predictions
from instseg_core.runtime.segmenter import Segmenter


def evaluate_network(segmenter: Segmenter, data: str | os.PathLike, out_dir: str | os.PathLike, *,
                     split: str = "val", limit: int | None = None, scale: float = 1.0, multiple: int = 8,
                     skip: Collection[str] = (), overlays: int = 0) -> dict:
    """Segment every image of the split, score with the official Cityscapes evaluator.

    Images are resized by `scale` (H and W rounded to multiples of `multiple`) for the network; instance masks are
    resized back to the ground truth's size (nearest). Returns {'ap', 'ap50', 'per_class', 'images',
    'network_ms', 'postprocess_ms'} (medians; post-processing = clustering and filtering). Of the first `limit`
    images, those named "city/stem" in `skip` (bad frames left out with --skip-bad) are not evaluated. With
    `overlays` N, the result also holds "overlays": the first N evaluated images with their predicted instances
    drawn ((H, W, 3) uint8 RGB, instseg_core.postprocess.overlay.render_overlay, as the node draws them), from the
    predictions evaluated (no image is segmented twice).
    """
    from instseg_core.postprocess.overlay import render_overlay

    dataset = CityscapesDataset(data, split)
    samples = [s for s in list(dataset)[:limit] if f"{s.city}/{s.stem}" not in skip]
    out = Path(out_dir)
    pred_dir = out / "predictions"
    if pred_dir.exists():
        shutil.rmtree(pred_dir)
    network_ms, postprocess_ms = [], []
    drawn: list[np.ndarray] = []
    for sample in samples:
        image = sample.image
        height, width = image.shape[:2]
        size = (max(multiple, round(width * scale / multiple) * multiple),
                max(multiple, round(height * scale / multiple) * multiple))
        if size != (width, height):
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        result = segmenter(image)
        network_ms.append(result.timing_ms["inference"])
        postprocess_ms.append(result.timing_ms["postprocess"])
        instances = resize_instances(result.instances, width, height)
        write_predictions(pred_dir, sample.stem, instances.masks(), result.label_ids, instances.scores)
        if len(drawn) < overlays:
            drawn.append(render_overlay(sample.image, instances.id_image))
    evaluation = evaluate_instances([s.paths["instance_ids"] for s in samples], pred_dir, out)
    return {"ap": evaluation.ap, "ap50": evaluation.ap50, "per_class": evaluation.per_class, "images": len(samples),
            "network_ms": float(np.median(network_ms)), "postprocess_ms": float(np.median(postprocess_ms)),
            **({"overlays": drawn} if overlays else {})}
