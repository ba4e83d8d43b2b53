"""Extreme-point annotation: encoding, pipeline, ONNX Runtime vs PyTorch parity, shipped model quality."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from instseg_core.annotate.encoding import (
    CropBox,
    colour_prior,
    crop,
    crop_box,
    encode,
    extreme_points_from_mask,
    paste_back,
    point_channel,
    points_in_crop,
)
from instseg_core.annotate.segmenter import (
    DEFAULT_RELAX_FRACTION,
    AnnotationError,
    ErrorCode,
    annotation_segmenter_from_module,
    create_annotation_segmenter,
    mask_to_polygon,
    validate_points,
)
from instseg_core.base.model_files import ModelFileError
from instseg_core.data.cityscapes import CityscapesDataset, read_polygons, visible_masks
from instseg_core.eval.binary_metrics import iou
from instseg_core.networks.extreme_unet import ExtremeUNet, PixelShuffleUpsample
from training.extreme_point_crops import ANNOTATION_CLASSES, augment, build_crops
from training.extreme_points import export_onnx

SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "models" / "extreme_unet.onnx"


@pytest.fixture(scope="module")
def untrained(tmp_path_factory: pytest.TempPathFactory) -> tuple[ExtremeUNet, Path]:
    """A randomly initialised extreme-point U-Net and its ONNX export (for plumbing and parity tests)."""
    torch.manual_seed(0)
    model = ExtremeUNet(4).eval()
    path = export_onnx(model, tmp_path_factory.mktemp("model") / "untrained.onnx")
    return model, path


def ellipse_mask(height: int = 200, width: int = 300) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    cv2.ellipse(mask, (150, 100), (60, 35), 20, 0, 360, 1, -1)
    return mask.astype(bool)


def test_extreme_points_from_mask() -> None:
    mask = np.zeros((10, 12), bool)
    mask[2:8, 3:9] = True
    mask[5, 1:3] = True  # a spur to the left at row 5
    left, top, right, bottom = extreme_points_from_mask(mask).tolist()
    assert left == [1, 5] and top[1] == 2 and right[0] == 8 and bottom[1] == 7
    with pytest.raises(ValueError):
        extreme_points_from_mask(np.zeros((3, 3), bool))


def test_crop_box_and_coordinates() -> None:
    points = np.array([[10, 50], [40, 20], [90, 60], [45, 100]])
    box = crop_box(points, relax_fraction=0.1, relax_min=4)
    assert (box.x0, box.y0, box.x1, box.y1) == (2.0, 12.0, 98.0, 108.0)
    corners = points_in_crop(np.array([[box.x0, box.y0], [box.x1, box.y1]]), box)
    np.testing.assert_allclose(corners, [[0, 0], [127, 127]], atol=1e-4)


def test_crop_and_paste_back_round_trip() -> None:
    mask = ellipse_mask()
    box = crop_box(extreme_points_from_mask(mask))
    cropped = crop(mask.astype(np.float32), box)
    region, (x0, y0) = paste_back(cropped, box, mask.shape)
    restored = np.zeros(mask.shape, bool)
    restored[y0:y0 + region.shape[0], x0:x0 + region.shape[1]] = region > 0.5
    assert iou(restored, mask) > 0.97


def test_crop_outside_image_is_zero() -> None:
    image = np.full((20, 20, 3), 200, np.uint8)
    cropped = crop(image, CropBox(-20.0, -20.0, 19.0, 19.0))
    assert cropped[:40].max() == 0 and cropped[-10:, -10:].min() == 200


def test_point_channel_modes() -> None:
    points = np.array([[10.0, 20.0], [64.0, 5.0], [120.0, 70.0], [60.0, 126.0]], np.float32)
    circles = point_channel(points, "circle", radius=4)
    assert circles[20, 10] == 1.0 and circles[20, 16] == 0.0
    assert 4 * 40 < circles.sum() < 4 * 60  # four discs of radius 4 (area ~50 each)
    gaussian = point_channel(points, "gaussian", sigma=3)
    assert gaussian[20, 10] == pytest.approx(1.0) and 0 < gaussian[20, 13] < 1
    with pytest.raises(ValueError):
        point_channel(points, "square")


def test_colour_prior_separates_the_objects_colours_from_the_margins() -> None:
    """A red disc on a blue-green ground, with some ground inside the points' box: the disc's colour scores
    high, the ground low (it fills the margin), the margin itself 0; black zero fill past the image border
    does not count as background colour."""
    rng = np.random.default_rng(0)
    crop_rgb = np.empty((128, 128, 3), np.uint8)
    crop_rgb[:] = (20, 120, 160)
    crop_rgb = np.clip(crop_rgb + rng.normal(0, 6, crop_rgb.shape), 0, 255).astype(np.uint8)
    disc = np.zeros((128, 128), np.uint8)
    cv2.circle(disc, (64, 64), 50, 1, -1)
    crop_rgb[disc > 0] = (200, 30, 40)
    points = np.array([[14, 64], [64, 14], [114, 64], [64, 114]], np.float32)
    prior = colour_prior(crop_rgb, points)
    assert prior.shape == (128, 128) and prior.dtype == np.float32
    assert prior[64, 64] > 0.9 and prior[20, 20] < 0.5  # disc vs. ground inside the box (a corner)
    assert prior[2, 2] == 0.0 and prior[125, 64] == 0.0  # the margin
    np.testing.assert_array_equal(prior, colour_prior(crop_rgb, points))
    # a black object at the image border: the zero fill in the margin must not make black look like background
    dark = crop_rgb.copy()
    dark[disc > 0] = 0
    dark[:, :10] = 0  # past the image's left border
    assert colour_prior(dark, points)[64, 64] > 0.9
    encoded = encode(crop_rgb, points, channels=5)
    assert encoded.shape == (5, 128, 128)
    np.testing.assert_array_equal(encoded[:4], encode(crop_rgb, points))
    np.testing.assert_array_equal(encoded[4], prior)
    with pytest.raises(ValueError, match="5 channels without points"):
        encode(crop_rgb, None, channels=5)


def test_colour_prior_foreground_regions() -> None:
    """A red diamond whose box corners are the same grey as half the margin: read from the whole box, grey looks
    half like foreground; read from the points' hull (the diamond), it is background; "box_and_hull" is the mean of
    the two; encode passes the choice on, and an unknown region is refused."""
    crop_rgb = np.full((128, 128, 3), (40, 160, 60), np.uint8)
    crop_rgb[:, :64] = (128, 128, 128)  # half of the margin is grey, like the box corners below
    crop_rgb[14:115, 14:115] = (128, 128, 128)
    points = np.array([[14, 64], [64, 14], [114, 64], [64, 114]], np.float32)
    diamond = np.zeros((128, 128), np.uint8)
    cv2.fillConvexPoly(diamond, points.astype(np.int32), 1)
    crop_rgb[diamond > 0] = (200, 30, 40)
    box, hull, both = (colour_prior(crop_rgb, points, foreground=f) for f in ("box", "hull", "box_and_hull"))
    np.testing.assert_array_equal(box, colour_prior(crop_rgb, points))  # "box" is the default
    corner = (20, 20)  # grey, inside the points' box, outside the diamond
    assert hull[corner] < 0.1 < box[corner]
    assert hull[64, 64] > 0.95 and box[64, 64] > 0.95
    np.testing.assert_allclose(both, 0.5 * (box + hull), rtol=1e-6)
    assert hull[2, 2] == both[2, 2] == 0.0  # the margin stays 0
    np.testing.assert_array_equal(encode(crop_rgb, points, channels=5, prior_foreground="hull")[4], hull)
    with pytest.raises(ValueError, match="foreground must be one of box, hull, box_and_hull"):
        colour_prior(crop_rgb, points, foreground="quad")


def test_five_channel_graph_gets_the_colour_prior(tmp_path: Path) -> None:
    """The segmenter reads the channel count from the graph and encodes the colour prior for 5."""
    torch.manual_seed(0)
    model = ExtremeUNet(5).eval()
    path = export_onnx(model, tmp_path / "prior.onnx")
    segmenter = create_annotation_segmenter(path)
    assert segmenter.channels == 5
    image = (np.random.default_rng(5).random((200, 260, 3)) * 255).astype(np.uint8)
    points = [[30, 100], [120, 20], [230, 90], [110, 180]]
    by_onnx = segmenter.segment(image, points)
    by_torch = annotation_segmenter_from_module(model).segment(image, points)
    assert by_onnx.image_shape == (200, 260)
    assert np.count_nonzero(by_onnx.mask != by_torch.mask) <= 2


def test_augment_keeps_points_on_the_object() -> None:
    crops_mask = np.zeros((128, 128), np.uint8)
    crops_mask[30:100, 20:90] = 1
    image = np.dstack([crops_mask * 255] * 3).astype(np.uint8)
    points = np.array([[20, 60], [55, 30], [89, 60], [55, 99]], np.float32)
    rng = np.random.default_rng(0)
    for _ in range(10):
        _, out_mask, out_points = augment(image, crops_mask, points, rng, jitter=0.0)
        assert int(out_mask.sum()) == pytest.approx(int(crops_mask.sum()), rel=0.05)
        for x, y in np.round(out_points).astype(int):
            assert out_mask[np.clip(y, 0, 127), np.clip(x, 0, 127)] or out_mask[
                max(0, y - 2):y + 3, max(0, x - 2):x + 3].any()
        assert out_points[0, 0] < out_points[2, 0], "left stays left of right after flips"


@pytest.mark.parametrize(
    ("points", "code", "words"),
    [
        ([1, 2, 3, 4, 5, 6], ErrorCode.BAD_POINTS, "got 6"),
        ([[10, 10], [20, 5], [30, 10], [20, 250]], ErrorCode.POINTS_OUTSIDE, "bottom (20, 250)"),
        ([[-1, 10], [20, 5], [30, 10], [20, 25]], ErrorCode.POINTS_OUTSIDE, "left"),
        ([[10, 10], [11, 10], [11, 11], [10, 11]], ErrorCode.DEGENERATE_BOX, "1 x 1"),
        ([[np.nan, 10], [20, 5], [30, 10], [20, 25]], ErrorCode.BAD_POINTS, "finite"),
    ],
)
def test_validate_points_errors(points: list, code: ErrorCode, words: str) -> None:
    with pytest.raises(AnnotationError) as info:
        validate_points(points, (200, 300))
    assert info.value.code == code and words in str(info.value)


def test_mask_to_polygon_keeps_iou_with_few_vertices() -> None:
    mask = ellipse_mask()
    raw, raw_iou = mask_to_polygon(mask, 0.0)
    simple, simple_iou = mask_to_polygon(mask, 1.0)
    assert len(simple) < len(raw) / 5
    assert simple_iou > 0.97 and raw_iou > 0.98
    assert mask_to_polygon(np.zeros((5, 5), bool), 1.0)[0].shape == (0, 2)


def test_model_load_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match=r"not found: .*nope\.onnx"):
        create_annotation_segmenter(tmp_path / "nope.onnx")
    with pytest.raises(ModelFileError, match=r"'nope\.onnx' not found \(searched"):
        create_annotation_segmenter("nope.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x01garbage" * 100)
    with pytest.raises(ModelFileError, match=r"corrupt\.onnx"):
        create_annotation_segmenter(corrupt)


def test_crop_relaxation_comes_from_the_manifest(untrained: tuple[ExtremeUNet, Path], tmp_path: Path) -> None:
    """The pipeline crops with the margin the graph's manifest names (crop_relax), 10 % without one, an explicit
    option wins, and a manifest with a value that is not a fraction is refused naming the file."""
    graph = tmp_path / "graph.onnx"
    shutil.copyfile(untrained[1], graph)
    assert create_annotation_segmenter(graph).relax[0] == DEFAULT_RELAX_FRACTION == 0.1
    graph.with_suffix(".json").write_text(json.dumps({"model": "extreme_unet", "crop_relax": 0.2}))
    assert create_annotation_segmenter(graph).relax[0] == 0.2
    assert create_annotation_segmenter(graph, relax_fraction=0.15).relax[0] == 0.15
    for bad in ("0.2", 0, 1.5, True, None):
        graph.with_suffix(".json").write_text(json.dumps({"crop_relax": bad}))
        with pytest.raises(ModelFileError, match=r"graph\.json: crop_relax"):
            create_annotation_segmenter(graph)
    graph.with_suffix(".json").write_text("{not json")
    with pytest.raises(ModelFileError, match=r"graph\.json"):
        create_annotation_segmenter(graph)


def test_colour_prior_foreground_comes_from_the_manifest(tmp_path: Path) -> None:
    """A 5-channel graph's colour prior reads its foreground where its manifest says (colour_prior_foreground),
    the whole box without one; an explicit option wins; an unknown region is refused naming the manifest."""
    torch.manual_seed(0)
    graph = export_onnx(ExtremeUNet(5).eval(), tmp_path / "graph.onnx")
    assert create_annotation_segmenter(graph).prior_foreground == "box"
    graph.with_suffix(".json").write_text(json.dumps({"colour_prior_foreground": "box_and_hull"}))
    segmenter = create_annotation_segmenter(graph)
    assert segmenter.prior_foreground == "box_and_hull"
    assert create_annotation_segmenter(graph, prior_foreground="hull").prior_foreground == "hull"
    with pytest.raises(ValueError, match="prior_foreground must be one of"):
        create_annotation_segmenter(graph, prior_foreground="quad")
    for bad in ("quad", 1, None):
        graph.with_suffix(".json").write_text(json.dumps({"colour_prior_foreground": bad}))
        with pytest.raises(ModelFileError, match=r"graph\.json: colour_prior_foreground"):
            create_annotation_segmenter(graph)


def test_onnx_runtime_matches_pytorch(untrained: tuple[ExtremeUNet, Path]) -> None:
    model, path = untrained
    rng = np.random.default_rng(1)
    inputs = rng.normal(size=(3, 4, 128, 128)).astype(np.float32)
    by_torch_segmenter = annotation_segmenter_from_module(model)
    by_onnx_segmenter = create_annotation_segmenter(path, threads=2)
    assert by_torch_segmenter.channels == by_onnx_segmenter.channels == 4
    torch_out = by_torch_segmenter.probabilities(inputs)
    onnx_out = by_onnx_segmenter.probabilities(inputs)
    assert onnx_out.shape == (3, 128, 128)
    np.testing.assert_allclose(onnx_out, torch_out, atol=2e-5)
    image = (rng.random((300, 400, 3)) * 255).astype(np.uint8)
    points = [[50, 150], [120, 60], [300, 140], [160, 260]]
    by_torch = by_torch_segmenter.segment(image, points)
    by_onnx = by_onnx_segmenter.segment(image, points)
    assert np.count_nonzero(by_torch.mask != by_onnx.mask) <= 2
    assert by_onnx.score == pytest.approx(by_torch.score, abs=1e-4)


def test_pixel_shuffle_upsample_equals_transposed_convolution() -> None:
    torch.manual_seed(3)
    transposed = torch.nn.ConvTranspose2d(8, 5, 2, stride=2)
    torch.nn.init.normal_(transposed.bias)
    x = torch.randn(2, 8, 6, 7)
    with torch.no_grad():
        torch.testing.assert_close(PixelShuffleUpsample(transposed)(x), transposed(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="2x2 stride-2"):
        PixelShuffleUpsample(torch.nn.ConvTranspose2d(8, 5, 3, stride=2))


@pytest.mark.parametrize("name", ["extreme_unet.onnx", "extreme_unet_int8.onnx"])
def test_shipped_graphs_have_no_transposed_convolution(name: str) -> None:
    """The int8 model quantises every convolution: ONNX Runtime has no int8 ConvTranspose, and a float one
    costs dequantise/quantise/layout round trips (see PixelShuffleUpsample)."""
    import onnx

    graph = onnx.load(SHIPPED_MODEL.with_name(name)).graph
    ops = [node.op_type for node in graph.node]
    assert "ConvTranspose" not in ops and ops.count("DepthToSpace") == 4
    if name.endswith("_int8.onnx"):
        quantised_inputs = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"}
        for node in graph.node:
            if node.op_type == "Conv":
                assert node.input[0] in quantised_inputs and node.input[1] in quantised_inputs, node.name


def test_result_roi_is_the_masks_tight_box(untrained: tuple[ExtremeUNet, Path]) -> None:
    image = (np.random.default_rng(4).random((240, 320, 3)) * 255).astype(np.uint8)
    result = create_annotation_segmenter(untrained[1]).segment(image, [[40, 120], [150, 30], [260, 110],
                                                                         [140, 200]])
    full = result.mask
    assert full.shape == (240, 320) and result.area == np.count_nonzero(full) > 0
    x, y, width, height = result.roi
    assert result.roi_mask.shape == (height, width)
    np.testing.assert_array_equal(full[y:y + height, x:x + width], result.roi_mask)
    assert full[y].any() and full[y + height - 1].any() and full[:, x].any() and full[:, x + width - 1].any()


def test_batch_equals_single_calls(untrained: tuple[ExtremeUNet, Path]) -> None:
    segmenter = create_annotation_segmenter(untrained[1])
    image = (np.random.default_rng(2).random((240, 320, 3)) * 255).astype(np.uint8)
    objects = [[[10, 50], [40, 20], [90, 60], [45, 100]], [[150, 120], [200, 80], [300, 130], [220, 230]]]
    batch = segmenter.segment_batch(image, objects)
    for points, result in zip(objects, batch, strict=True):
        single = segmenter.segment(image, points)
        np.testing.assert_array_equal(single.mask, result.mask)
        assert set(result.timing_ms) == {"encode", "network", "postprocess", "total"}
    with pytest.raises(AnnotationError):
        segmenter.segment(image.astype(np.float32), objects[0])


def test_flip_union_takes_the_larger_probability_of_crop_and_mirror() -> None:
    """flip "union" (the default): per pixel, the larger of the network's probability on the crop and on its mirror
    image mirrored back, so its mask holds the one-pass mask; a bad value is refused."""
    union = create_annotation_segmenter("extreme_unet_int8.onnx", threads=1)
    single = create_annotation_segmenter("extreme_unet_int8.onnx", threads=1, flip="none")
    assert union.flip == "union" and single.flip == "none"
    rng = np.random.default_rng(3)
    image = np.clip(rng.normal(90, 20, (200, 260, 3)), 0, 255).astype(np.uint8)
    cv2.ellipse(image, (120, 100), (70, 40), 20, 0, 360, (210, 170, 60), -1)
    points = np.array([[50, 100], [120, 60], [190, 100], [120, 140]], np.float64)
    box = crop_box(points)
    inputs = encode(crop(image, box), points_in_crop(points, box), channels=union.channels)[None]
    mirrored = single.probabilities(np.ascontiguousarray(inputs[..., ::-1]))[..., ::-1]
    np.testing.assert_allclose(union.crop_probabilities(inputs), np.maximum(single.probabilities(inputs), mirrored),
                               atol=1e-6)
    assert not np.allclose(mirrored, single.probabilities(inputs), atol=1e-3)  # the mirror sees something else
    with_union, one_pass = union.segment(image, points), single.segment(image, points)
    assert not np.any(one_pass.mask & ~with_union.mask)
    with pytest.raises(ValueError, match="flip"):
        create_annotation_segmenter("extreme_unet_int8.onnx", flip="both")


def test_crop_set_from_polygons_counts_signs_and_lights(synthetic_tree: Path) -> None:
    crops = build_crops(synthetic_tree, "val")
    assert len(crops) > 10 and crops.images.shape[1:] == (128, 128, 3) and crops.masks.max() == 1
    names = {ANNOTATION_CLASSES[c] for c in crops.classes}
    assert {"car", "person"} <= names
    assert names & {"traffic sign", "traffic light"}, "signs and lights come from the polygons JSON"
    # points lie on the object (within a pixel, after resampling)
    for mask, points in zip(crops.masks[:20], crops.points[:20], strict=True):
        for x, y in np.round(points).astype(int):
            assert mask[max(0, y - 1):y + 2, max(0, x - 1):x + 2].any()


@pytest.mark.parametrize("name", ["extreme_unet.onnx", "extreme_unet_int8.onnx"])
def test_shipped_model_segments_held_out_objects(synthetic_tree: Path, name: str) -> None:
    """The committed models (fp32 and int8) on objects of scenes they never saw (seed 7 here; trained on seed 0)."""
    path = SHIPPED_MODEL.with_name(name)
    assert path.is_file(), f"models/{name} is part of the repo"
    segmenter = create_annotation_segmenter(path)
    ious = []
    for sample in CityscapesDataset(synthetic_tree, "val"):
        height, width, objects = read_polygons(sample.paths["polygons"])
        for obj, mask in zip(objects, visible_masks(height, width, objects), strict=True):
            if obj.label in ("car", "person", "bus", "truck") and mask.sum() > 400:
                result = segmenter.segment(sample.image, extreme_points_from_mask(mask))
                ious.append(iou(result.mask, mask))
    assert len(ious) >= 5
    assert np.mean(ious) > 0.8, ious


def test_frame_cache_never_answers_on_an_ambiguous_frame() -> None:
    """Two clients sending frames with the default header, or one header with two images, must not make a
    request without pixels segment the wrong frame (it is refused, with the reason)."""
    from instseg_core.annotate.frame_cache import DEFAULT_KEY, FrameCache, FrameCacheMissError

    first, second = np.zeros((4, 6, 3), np.uint8), np.full((4, 6, 3), 9, np.uint8)
    cache = FrameCache(2)
    cache.store(DEFAULT_KEY, first)
    cache.store(DEFAULT_KEY, second)
    with pytest.raises(FrameCacheMissError, match="default header"):
        cache.lookup(DEFAULT_KEY)
    key = (17, 5, "camera")
    cache.store(key, first)
    assert cache.lookup(key) is first
    cache.store(key, first.copy())  # the same image again (a client that always sends pixels): still fine
    assert np.array_equal(cache.lookup(key), first)
    cache.store(key, second)
    with pytest.raises(FrameCacheMissError, match="ambiguous"):
        cache.lookup(key)
    cache.store(key, first)  # stays ambiguous until it leaves the cache
    with pytest.raises(FrameCacheMissError, match="ambiguous"):
        cache.lookup(key)
    cache.store((18, 0, "camera"), first)
    cache.store((19, 0, "camera"), second)  # capacity 2: the ambiguous key is evicted
    with pytest.raises(FrameCacheMissError, match="not cached"):
        cache.lookup(key)
    assert cache.lookup((19, 0, "camera")) is second and len(cache) == 2
    with pytest.raises(FrameCacheMissError, match="off"):
        FrameCache(0).lookup(key)


def test_points_in_any_order_give_the_mask_of_the_right_order() -> None:
    """validate_points keeps left, top, right, bottom as given and reorders a crossed order (the colour prior fills
    the points' quadrilateral in their order, so left, right, top, bottom drew a bow tie); the shipped pipeline then
    answers a crossed order exactly as the right one. Also: no objects is [], a non-array image and clicks passed
    by position (where polygon_tolerance goes) are refused clearly."""
    import cv2

    right_order = np.array([[40, 60], [100, 20], [160, 60], [100, 110]], np.float64)
    assert validate_points(right_order, (140, 200)) is not None
    np.testing.assert_array_equal(validate_points(right_order, (140, 200)), right_order)
    for order in ([0, 2, 1, 3], [3, 1, 0, 2], [1, 2, 3, 0]):
        np.testing.assert_array_equal(validate_points(right_order[order], (140, 200)), right_order)

    rgb = np.random.default_rng(0).integers(0, 90, (140, 200, 3), np.uint8)
    cv2.ellipse(rgb, (100, 65), (60, 45), 0, 0, 360, (200, 200, 200), -1)
    segmenter = create_annotation_segmenter(threads=1)
    expected = segmenter.segment(rgb, right_order).mask
    np.testing.assert_array_equal(segmenter.segment(rgb, right_order[[0, 2, 1, 3]]).mask, expected)
    assert segmenter.segment_batch(rgb, []) == []
    with pytest.raises(AnnotationError, match="numpy array") as info:
        segmenter.segment(rgb.tolist(), right_order)  # type: ignore[arg-type]
    assert info.value.code == ErrorCode.BAD_IMAGE
    with pytest.raises(AnnotationError, match="positive=") as info:
        segmenter.segment(rgb, right_order, [[100, 65]])  # type: ignore[arg-type]
    assert info.value.code == ErrorCode.BAD_POINTS
