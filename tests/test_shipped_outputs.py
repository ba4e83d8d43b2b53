"""The shipped models' outputs are pinned: a refactoring of the library must not change what they produce.

For each shipped network a fixed synthetic frame (generator seed 777, itself pinned by the data tests) goes
through the product path (ONNX Runtime on CPU, one thread, so reductions run in a fixed order) and the
discrete outputs are hashed: the id image, the classes, and the polygons. A deliberate change of a model, of
the decoding or of onnxruntime's version shows here and is re-pinned in the same commit, with the reason.

The int8 graphs of the streaming networks are not hashed: ONNX Runtime picks its int8 kernels by the CPU
(AVX2, AVX-VNNI, AVX512-VNNI), and on 2026-12-02 a machine with AVX512-VNNI gave other Spatial Embeddings and
Box2Pix int8 outputs than the pins made on earlier machines, with the same code. Their test checks what holds on
every CPU: the int8 graph finds the float32 graph's objects on the pinned frame.
"""

from __future__ import annotations

import hashlib
from typing import Any

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
# the model retrained on street + domain-randomised crops (issue 15); DCME re-pinned on 2026-12-02 for its
# fine-tuned model and its decoding with fragment joining; the extreme-point graphs re-pinned on 2026-12-02 for
# the model with the colour-prior input channel (issue 15), again for its fifth epoch (chosen on the real
# validation set), again for the pipeline's flip union (the network also sees the mirrored crop), and again for
# its seventh epoch, trained on and run with a wider crop margin (crop_relax 0.25), and again for its eighth epoch,
# trained on and run with the colour prior read from the points' box and their hull (colour_prior_foreground);
# Spatial Embeddings re-pinned on 2026-12-07 for the model on the real-data ESPNetv2 encoder (issue 35); the
# extreme-point graphs re-pinned on 2026-12-07 for the correction-click network (issue 36: two more input channels,
# fine-tuned from the 5-channel one; the masks from the points alone moved a little, see docs/models/extreme_points.md).
PINNED = {
    "spatial_embeddings": "5634d4d3bdbb55ff2bdb4cf32ef6a05e01b364f3aaca5070683caf302ca49940",
    "box2pix": "82ff30be260880627c2b6be1cd6f2a0f33ef76fe8356878e44cf34e6a532e172",
    "dcme": "5a2c51368df9b532bc435fe3d0b1504572929ceb24e23470c81e8edfd52afe9d",
    "extreme_unet_int8.onnx": "7988633afe7aedfc1c9cffc7b519d558f19eaabc926544a3fc936297eabf671c",
    "extreme_unet.onnx": "3a3ebd8915add6a3820cca360d5ff88d658e13e86ee1090d0b0130c255718e6d",
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


def segment_pinned_frame(frame: tuple[np.ndarray, list[np.ndarray]], model: str, int8: bool) -> Any:
    segmenter = create_segmenter(model, backend="onnxruntime", threads=1, input_size=(1024, 512),
                                 score_threshold=0.3, int8=int8)
    return segmenter(frame[0])


@pytest.mark.parametrize("model", ["spatial_embeddings", "box2pix", "dcme"])
def test_streaming_model_outputs_are_pinned(frame: tuple[np.ndarray, list[np.ndarray]], model: str) -> None:
    result = segment_pinned_frame(frame, model, int8=False)
    assert len(result.instances) >= 3, f"{model} finds almost nothing on the pinned frame"
    polygons = [np.asarray(p, np.int32) for p in result.polygons(1.0)]
    value = digest(result.instances.id_image, result.instances.classes, result.instances.boxes,
                   np.round(result.instances.scores, 3), *polygons)
    assert value == PINNED[model], f"{model}: outputs changed ({value})"


@pytest.mark.parametrize("model", ["spatial_embeddings", "box2pix", "dcme"])
def test_int8_graphs_find_the_float_graphs_objects(frame: tuple[np.ndarray, list[np.ndarray]], model: str) -> None:
    """At least 3 in 4 of the float32 graph's instances on the pinned frame have an int8 instance of the same class
    with IoU > 0.5, and the int8 graph finds no more than half as many again (2026-12-02, AVX512-VNNI: 9 of 10,
    6 of 7 and 4 of 4)."""
    reference = segment_pinned_frame(frame, model, int8=False).instances
    quantised = segment_pinned_frame(frame, model, int8=True).instances
    found = 0
    for mask, label in zip(reference.masks(), reference.classes, strict=True):
        same_class = [other for other, other_label in zip(quantised.masks(), quantised.classes, strict=True)
                      if other_label == label]
        found += any(np.count_nonzero(mask & other) > 0.5 * np.count_nonzero(mask | other) for other in same_class)
    assert found >= 0.75 * len(reference), f"{model} int8 finds {found} of the float graph's {len(reference)}"
    assert len(quantised) <= 1.5 * len(reference), f"{model} int8: {len(quantised)} vs {len(reference)} instances"


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
