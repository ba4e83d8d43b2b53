"""The shipped models' outputs are pinned: a refactoring of the library must not change what they produce.

For each shipped network a fixed synthetic frame (generator seed 777, itself pinned by the data tests) goes
through the product path (ONNX Runtime on CPU, one thread, so reductions run in a fixed order) and the
discrete outputs are hashed: the id image, the classes, and the polygons. A deliberate change of a model, of
the decoding or of onnxruntime's version shows here and is re-pinned in the same commit, with the reason.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from instseg_core.annotate.encoding import extreme_points_from_mask
from instseg_core.annotate.segmenter import create_annotation_segmenter
from instseg_core.data.cityscapes import PolygonObject, visible_masks
from instseg_core.data.street_layout import make_scene
from instseg_core.data.synthetic import render
from instseg_core.runtime import create_segmenter

# sha256 of the outputs below, pinned on 2026-12-01 before the core-layout move (onnxruntime 1.31.1).
PINNED = {
    "spatial_embeddings": "45f100218fb971c3e5644530150b71c0156adf0068c71cb7c99ffefe60e59fdf",
    "box2pix": "687d999df8323fd5fb2ad568a3ea4659b4988a1fe334e444d11820fb0e1eabfc",
    "extreme_unet_int8.onnx": "a69ba10a01fba11924d18975a92fa7462dfdb102fff970c1dd7f569d1a1c4740",
    "extreme_unet.onnx": "e931390b0418eec0b01a20a4fe0a151b86d595b3ece548dd04c5af28bc2869d7",
}


def digest(*arrays: np.ndarray) -> str:
    sha = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        sha.update(f"{array.dtype.str}{array.shape}".encode())
        sha.update(array.tobytes())
    return sha.hexdigest()


@pytest.fixture(scope="module")
def frame() -> tuple[np.ndarray, list[np.ndarray]]:
    """(rgb (512, 1024, 3) uint8, the visible (512, 1024) bool masks of its objects) of the pinned frame."""
    rendered = render(make_scene(777, 1024, 512))
    objects = [PolygonObject(label, polygon) for label, polygon in rendered.objects]
    return rendered.rgb, visible_masks(512, 1024, objects)


@pytest.mark.parametrize(("model", "size"), [("spatial_embeddings", (1024, 512)), ("box2pix", (1024, 512))])
def test_streaming_model_outputs_are_pinned(frame: tuple[np.ndarray, list[np.ndarray]], model: str,
                                            size: tuple[int, int]) -> None:
    segmenter = create_segmenter(model, backend="onnxruntime", threads=1, input_size=size, score_threshold=0.3)
    result = segmenter(frame[0])
    assert len(result.instances) >= 3, f"{model} finds almost nothing on the pinned frame"
    polygons = [np.asarray(p, np.int32) for p in result.polygons(1.0)]
    value = digest(result.instances.id_image, result.instances.classes, result.instances.boxes,
                   np.round(result.instances.scores, 3), *polygons)
    assert value == PINNED[model], f"{model}: outputs changed ({value})"


@pytest.mark.parametrize("file", ["extreme_unet_int8.onnx", "extreme_unet.onnx"])
def test_annotation_model_outputs_are_pinned(frame: tuple[np.ndarray, list[np.ndarray]], file: str) -> None:
    rgb, masks = frame
    segmenter = create_annotation_segmenter(file, threads=1)
    objects = [mask for mask in masks if np.count_nonzero(mask) >= 400][:5]
    assert len(objects) >= 3
    results = [segmenter.segment(rgb, extreme_points_from_mask(mask)) for mask in objects]
    value = digest(*[r.roi_mask for r in results], np.array([r.roi for r in results]),
                   *[r.polygon for r in results])
    assert value == PINNED[file], f"{file}: outputs changed ({value})"
