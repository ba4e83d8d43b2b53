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

# sha256 of the outputs below (onnxruntime 1.31.1). Pinned on 2026-12-01 before the core-layout move;
# re-pinned on 2026-12-02 when each network came to be shipped once with float16 weights and its ONNX graphs
# derived at set-up (the float32 graphs now hold the float16-rounded weights; the int8 graphs are new); DCME
# re-pinned on 2026-12-02 for its retrained model (48 epochs); the extreme-point graphs re-pinned on 2026-12-02 for
# the model retrained on street + domain-randomised crops (issue 15).
PINNED = {
    "spatial_embeddings": "916f4c27e315820206104e5a76ff4ab385585d0f6a3bd811219b9c5d2e21fa80",
    "box2pix": "82ff30be260880627c2b6be1cd6f2a0f33ef76fe8356878e44cf34e6a532e172",
    "spatial_embeddings_int8": "d304b40acf4c8d8785e4b273175b5065419248441f480f1e045952f1671f4786",
    "box2pix_int8": "bbaf3a20df852eac32dbb74328cf38009d4730f130a605a655d5c507d128d0f2",
    "dcme": "c9cffca60438db09b2714ce7b287e4bbeebd7563cb675fed038d567268e4fffe",
    "extreme_unet_int8.onnx": "d94992cd8a733a6082c1a3df0f82ba1a5b17dd855a92368e7da5c1a5c7c422a3",
    "extreme_unet.onnx": "359a2b1a511a77fc23054941b06afffef09c3e5e8c40ce4e00ca0d1ecf88f961",
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


@pytest.mark.parametrize(("model", "int8"), [("spatial_embeddings", False), ("box2pix", False), ("dcme", False),
                                            ("spatial_embeddings", True), ("box2pix", True)])
def test_streaming_model_outputs_are_pinned(frame: tuple[np.ndarray, list[np.ndarray]], model: str,
                                            int8: bool) -> None:
    segmenter = create_segmenter(model, backend="onnxruntime", threads=1, input_size=(1024, 512),
                                 score_threshold=0.3, int8=int8)
    model = model + ("_int8" if int8 else "")
    result = segmenter(frame[0])
    assert len(result.instances) >= (1 if model == "dcme" else 3), f"{model} finds almost nothing on the pinned frame"
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
